"""The benchmark suite's smoke run: every section end to end at tiny sizes,
with the PyTorch reference checked to compute the toolkit's function."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, needs_cifar10

TORCH_PYTHON = REPO / '.venv-torch' / 'bin' / 'python'
SECTIONS = ('train', 'conv_kernels', 'ablation', 'profile', 'search_step',
            'search_e2e', 'inference', 'memory_bank', 'memory')


@pytest.mark.slow
@needs_cifar10
def test_quick_benchmark_runs_every_section(tmp_path):
  if os.environ.get('CI') and not TORCH_PYTHON.exists():
    pytest.fail('CI builds the PyTorch virtualenv first (make torch-venv)')
  subprocess.run([sys.executable, 'benchmarks/run.py', '--quick',
                  f'--out-dir={tmp_path}', '--machine=smoke'], cwd=REPO,
                 check=True, timeout=900)
  results = json.loads((tmp_path / 'smoke.json').read_text())
  assert set(SECTIONS) <= set(results)
  sides = {'jax', 'jax_before'} | ({'torch_eager'} if TORCH_PYTHON.exists()
                                   else set())
  for kind in ('finetune', 'dense'):
    assert set(results['train'][kind]['sides']) == sides
    assert not results['train'][kind]['errors']
  if TORCH_PYTHON.exists():
    check = results['train']['finetune']['same_function']
    assert check['max_abs_logit_diff'] <= 1e-4 * max(1.0,
                                                     check['max_abs_logit'])
    assert check['loss_torch'] == pytest.approx(check['loss_jax'], rel=1e-4)
  assert results['search_step']['variants']['jax'][
      'recompiles_while_timed'] == 0
  e2e = results['search_e2e']
  assert e2e['compiles_after_step_1'] == 0
  assert e2e['flops_rate'] <= results['options']['target']
  inference = results['inference']
  assert inference['macs']['slimmed'] < inference['macs']['dense']
  table = (tmp_path / 'smoke.md').read_text()
  for heading in ('Training step', 'One 3x3 conv', 'one at a time',
                  'Profile', 'Search step',
                  'End-to-end search', 'Inference', 'Memory bank',
                  'Peak memory'):
    assert heading in table


@pytest.mark.slow
def test_speedup_benchmark_runs_every_path(tmp_path):
  """benchmarks/speedup.py --quick: every deployment path times the dense
  network, a slimmed one and the same padded for inference, and the slimmed
  ones have fewer MACs."""
  from ekg_jax.deploy import export_onnx  # pylint: disable=g-import-not-at-top
  onnx = not export_onnx.missing()
  if os.environ.get('CI') and not (TORCH_PYTHON.exists() and onnx):
    pytest.fail('CI builds the torch virtualenv and installs the [onnx] '
                'extra first (make torch-venv onnx)')
  subprocess.run([sys.executable, 'benchmarks/speedup.py', '--quick',
                  f'--out-dir={tmp_path}', '--machine=smoke'], cwd=REPO,
                 check=True, timeout=900)
  results = json.loads((tmp_path / 'speedup-smoke.json').read_text())
  want = {'xla'} | (
      {'torch'} if TORCH_PYTHON.exists() else set()) | (
          {'onnxruntime'} if onnx else set())
  assert set(results['latency']) == want
  macs = results['macs']
  # The padded network's MACs are its real widths' (round_to_1's).
  assert macs['round_to_1'] == macs['round_to_1_pad8'] < macs['dense']
  for side in want:
    assert set(results['latency'][side]['1']) >= {
        'dense', 'round_to_1', 'round_to_1_pad8', 'round_to_1_pad8_speedup'}
  assert 'Narrow convolutions' in (tmp_path / 'speedup-smoke.md').read_text()


def test_sides_take_turns_and_speedups_are_per_repetition(monkeypatch):
  """benchmarks/workers.py's timing loop (speedup.py and the ViT demo's
  latency stage): sides alternate their order, `also` times in a side's
  turn after each batch, and a speed-up is dense / network per repetition."""
  sys.path.insert(0, str(REPO / 'benchmarks'))
  import workers
  monkeypatch.setattr(workers, 'settle', lambda seconds=1.0: None)
  order = []

  class Fake:  # repetition r times dense at 2 (r + 1) x, the other at r + 1
    def __init__(self, side, scale):
      self.side, self.scale, self.closed = side, scale, False

    def __call__(self, cmd, net, batch, calls):
      rep = sum(1 for o in order if o[0] == self.side) // 4  # 2 x 2 a turn
      order.append((self.side, batch, net))
      factor = 2 if net == 'dense' else 1
      return {'seconds': self.scale * (rep + 1) * factor * batch}

    def close(self):
      self.closed = True

  fakes = {'a': Fake('a', 1.0), 'b': Fake('b', 3.0)}
  also = []
  o = {'repeats': 2, 'batches': [1, 4], 'calls': {1: 1, 4: 1}}
  times = workers.time_in_turns(fakes, o, ['dense', 'slim'], lambda _: None,
                                also=lambda side, w, b: also.append((side, b)))
  assert [c[0] for c in order[::4]] == ['a', 'b', 'b', 'a']
  assert also == [('a', 1), ('a', 4), ('b', 1), ('b', 4),
                  ('b', 1), ('b', 4), ('a', 1), ('a', 4)]
  assert all(f.closed for f in fakes.values())
  assert times[('b', 4, 'slim')] == [12.0, 24.0]
  table = workers.latencies(times, {'slim': 4.0})
  assert table['b']['4']['dense']['median'] == 36.0
  assert table['b']['4']['slim_speedup'] == {'median': 2.0, 'min': 2.0,
                                             'max': 2.0, 'n': 2}
  assert table['a']['1']['slim_of_ideal'] == 0.5
  assert 'slim_of_ideal' not in workers.latencies(times)['a']['1']


def test_authors_tf_reads_both_sides_step_lines():
  """benchmarks/authors_tf.py's reading of each side's output (the lines as
  the authors' pruning.py and ekg_jax print them): step times, and the
  choices it compares (their gate index, width and loss in ekg_jax's terms)."""
  sys.path.insert(0, str(REPO / 'benchmarks'))
  import authors_tf_sides as sides
  widths = ['1.0'] * 30
  widths[29] = '0.8'
  tf_lines = ['# of layers to evaluated is 19/30 (63.33)',
              ' 97%|#########7| 29/30 [01:31<00:01,  1.46s/it]',
              'Step: 2', f"[{', '.join(widths)}] 29",
              'Ori Acc.: 91.25, Current Acc.: 90.94 Ori Loss.: 0.2127, '
              'Current Loss.: 0.2104']
  jax_line = ('I1126 07:50:51.314669 140469395725184 search.py:668] search '
              'step 2: stage2/block8 -> 52 channels | FLOPs rate 0.9860 | val '
              'loss 0.3362 acc 0.909 objective 0.4516 | 19 candidates | 10.1s')
  tf, jax = sides.Reader('tf'), sides.Reader('jax')
  for t, line in enumerate(tf_lines):
    tf.feed(line, float(t))
  jax.feed(jax_line, 7.0)
  assert tf.times == [2.0] and jax.times == [7.0]
  assert tf.done() == [{'candidates': 19, 'gate': 'stage2/block8',
                        'kept': 52, 'val_loss': 0.3366}]
  assert jax.done() == [{'gate': 'stage2/block8', 'kept': 52,
                         'val_loss': 0.3362, 'candidates': 19}]
  # Their fine search's widths print as np.float64(0.2) under NumPy 2.
  tf = sides.Reader('tf')
  for t, line in enumerate([tf_lines[0], 'Step: 77',
                            '[1.0, np.float64(0.2), 0.0] 1', tf_lines[4]]):
    tf.feed(line, float(t))
  assert tf.done()[0]['gate'] == 'stage0/block0'
  assert tf.done()[0]['kept'] == 4  # 0.2 of 16 channels: rank < 3.2
  assert sides.tf_kept(0.8, 16) == 13  # their mask: rank < 12.8
  assert sides.GATES[0] == ('stage0', 16)
  assert sides.GATES[10] == ('stage1', 32)


def test_authors_tf_records_no_folder_of_this_machine():
  """Results files name paths inside the repository relative to it, and
  others by their last part only (issue 27, item 6)."""
  sys.path.insert(0, str(REPO / 'benchmarks'))
  import authors_tf_sides as sides
  assert sides.portable(f'--out-dir={REPO}/workdirs/x') == \
      '--out-dir=workdirs/x'
  assert sides.portable('--tf-python=/opt/tf/.venv-tf/bin/python') == \
      '--tf-python=<elsewhere>/python'
  assert sides.portable('--steps=10') == '--steps=10'
  for result in (REPO / 'benchmarks' / 'results').glob('authors-tf-*.json'):
    recorded = json.loads(result.read_text())
    for command in recorded.get('commands', [recorded.get('command')]):
      assert '=/' not in command, result
    assert not recorded['authors'].startswith('/'), result


def test_authors_tf_tables_are_what_their_results_make():
  """Each committed authors-tf table is what `authors_tf_report.markdown`
  makes of the committed results beside it, byte for byte."""
  sys.path.insert(0, str(REPO / 'benchmarks'))
  import authors_tf_report as authors_report
  found = sorted((REPO / 'benchmarks' / 'results').glob('authors-tf-*.json'))
  assert found
  for result in found:
    table = result.with_suffix('.md').read_text()
    assert authors_report.markdown(json.loads(result.read_text())) == table


def test_authors_tf_whole_searches_end_at_each_sides_own_end(tmp_path):
  """--steps=all: each side is read until the line that ends its search
  (the sides may end at different step counts), the fidelity counts the
  steps on which they agreed, and the table and figure say so."""
  sys.path.insert(0, str(REPO / 'benchmarks'))
  import authors_tf_sides as sides
  import authors_tf_report as authors_report
  line = ('search step {}: stage0/block{} -> 8 channels | FLOPs rate 0.9 | '
          'val loss 0.3{} acc 0.9 objective 0.4 | 19 candidates | 1.0s')
  def fake_jax(gates):  # prints its steps, its end, then would hang
    printed = [line.format(i + 1, g, i) for i, g in enumerate(gates)]
    return [sys.executable, '-c', 'import time; print("warm-up: 10 images"); '
            + ''.join(f'print({p!r}); time.sleep(0.05); ' for p in printed)
            + 'print("search: 0.45"); time.sleep(60)']
  runs = [sides.run_side('jax', fake_jax(g), dict(os.environ), REPO,
                              None, str(tmp_path / f'{i}.log'), 30)
          for i, g in enumerate([[1, 2, 3], [1, 5]])]
  assert [r['steps'] for r in runs] == [3, 2]
  assert all(r['e2e_s'] > r['step_times'][-1] for r in runs)
  assert all(r['e2e_s'] < 30 for r in runs)  # killed at its end line
  # The second stands in for the authors' side: agree on step 1 only.
  reps = [{'jax': runs[0], 'tf': runs[1]}]
  fidelity = authors_report.fidelity(reps)
  assert fidelity['agreeing_steps'] == [1]
  assert fidelity['max_abs_val_loss_diff'] == 0.0
  results = {'commands': ['python benchmarks/authors_tf.py --steps=all'],
             'machine': {'cpu': 'test', 'cpus': 2},
             'versions': {'tensorflow': '-', 'tf_keras': '-', 'jax': '-'},
             'authors': 'x', 'options': {'steps': 'all', 'reps': 1,
                                         'target': 0.45},
             'summary': authors_report.summarize(
                 [{**r, 'tf': {**r['tf'], 'data_done': 1.0,
                               'warmup_done': 1.0}} for r in reps]),
             'fidelity': fidelity, 'runs': reps}
  table = authors_report.markdown(results)
  assert 'whole searches to FLOPs rate 0.45' in table
  assert '| search steps to the target | 2 (2-2) | 3 (3-3) |' in table
  assert 'for the first 1 steps' in table
  authors_report.figure(results, str(tmp_path / 'all.png'))
  assert (tmp_path / 'all.png').stat().st_size > 1000

  # --append: a later session adds repetitions to the same file only.
  import argparse
  parser = argparse.ArgumentParser()
  path = tmp_path / 'all.json'
  path.write_text(json.dumps({**results, 'weights_sha256': 'w'}))
  later = {'commands': ['python benchmarks/authors_tf.py --append'],
           'machine': results['machine'], 'versions': results['versions'],
           'authors': 'x', 'weights_sha256': 'w',
           'options': {'steps': 'all', 'target': 0.45}}
  runs, commands = authors_report.appended(str(path), later, parser)
  assert runs == json.loads(path.read_text())['runs']
  assert commands == results['commands'] + later['commands']
  for changed in ({'versions': {'jax': 'other'}}, {'authors': 'y'},
                  {'machine': {'cpu': 'other', 'cpus': 2}}):
    with pytest.raises(SystemExit):
      authors_report.appended(str(path), {**later, **changed}, parser)


@pytest.mark.slow  # ~30 s: compiles a search of its own
def test_step_profile_floor_and_profiled_step_on_a_small_search():
  """benchmarks/step_profile.py: the floor counts the importance pass as
  twice the forward and each candidate's suffix from its first segment;
  the profiled step (every call waited on) chooses what a plain step
  chooses and runs each candidate's suffix once."""
  sys.path.insert(0, str(REPO / 'benchmarks'))
  import step_profile
  from small import search_problem
  from ekg_jax import search
  from ekg_jax.search import marking
  from ekg_jax.supernet import flops
  problem = search_problem()
  ev = problem.evaluator
  images = sum(problem.batches.sizes)
  rates = {step_profile.shape(l): 1e9 for l in ev.table if l.kind == 'conv'}
  dense = flops.count_flops(ev.table) * images
  first = next(g for g, s in ev.first_segment.items() if s == 0)
  last = max(ev.first_segment, key=ev.first_segment.get)
  state = search.init_state(problem)
  kept = marking.kept_from_rates(problem.specs, state.rates)
  fl = step_profile.floor(ev, kept, {first: kept[first] - 1}, rates, images)
  assert fl['supernet']['importance_macs'] == 2 * dense
  assert fl['supernet']['candidates_macs'] == dense  # the whole network
  assert fl['supernet']['floor_s'] == pytest.approx(3 * dense / 1e9)
  assert fl['kept']['candidates_macs'] == flops.count_flops(
      ev.table, {**kept, first: kept[first] - 1}) * images
  fl = step_profile.floor(ev, kept, {last: kept[last] - 1}, rates, images)
  assert 0 < fl['supernet']['candidates_macs'] < dense  # a suffix only

  with step_profile.recording(ev, []) as seen:
    plain = search.search_step(problem, state, 'segments')
    profiled, seconds, spent = step_profile.profiled_step(problem, state)
  assert 'evaluate_candidates' not in vars(ev)  # the method again
  assert [e['kept'] for e in profiled.history] == \
      [e['kept'] for e in plain.history]
  assert len(seen) == 2 and seen[0] == seen[1]
  segments = len(ev.segment_programs)
  candidates = seen[0][1]
  assert sum(calls for k, (calls, _) in spent.items() if k != 'summarise') \
      == sum(segments - ev.first_segment[g] for g in candidates)
  assert spent['summarise'][0] == len(candidates) and seconds > 0


def test_bn_hlo_lists_each_convolution_then_its_statistics_and_one_pass():
  """benchmarks/bn_hlo.py, whose reading docs/performance.md states: after
  each convolution, XLA:CPU reduces the per-channel statistics (mean and
  mean of squares apart) and writes the activation once more."""
  sys.path.insert(0, str(REPO / 'benchmarks'))
  import bn_hlo
  found = bn_hlo.instructions((8, 8, 8, 16))
  big = [i for i, (_, _, shape) in enumerate(found)
         if shape.startswith('f32[8,8,8,16]')]
  kinds = [found[i][1] for i in big]
  assert kinds == ['convolution', 'fusion'] * 2, found
  for conv, after in zip(big[::2], big[1::2]):
    per_channel = found[conv + 1:after]
    assert all(shape.startswith('f32[16]') for _, _, shape in per_channel)
    assert len(per_channel) == 3, found  # two reductions and the rsqrt
