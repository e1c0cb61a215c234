"""The ViT demonstration (issue 28, item 4): EKG on the small CIFAR ViT,
from scratch on these 2 CPU cores, against a uniform L1 allocation.

Prepared, not yet run at full size: it needs about 2 hours of quiet cores
for pretraining (plus the searches, the memory bank and the fine-tunings),
so it waits until the evidence study has finished with them.

  python experiments/vit_demo.py           # run or resume every stage
  python experiments/vit_demo.py --status  # what is done
  python experiments/vit_demo.py --tiny    # smoke run (tiny ViT, 256 images)

Stages, each a normal CLI run (`python -m ekg_jax.main`) in a subprocess
and skipped when its workdir's summary.json says it finished (the pipeline
itself resumes a phase that was stopped half-way):

1. `pretrain`: configs/vit_cifar.py (depth 6, width 192, 3 heads, MLP x2;
   AdamW, warm-up + cosine) trained from scratch for PRETRAIN_EPOCHS on
   CIFAR-10, then its test accuracy (`workdirs/vit_demo/ekg`, phases
   pretrain,evaluate).
2. `ekg`: the EKG search to FLOPs rate 0.5 (heads and MLP units), the memory
   bank, FINETUNE_EPOCHS of fine-tuning with ensemble knowledge (the
   config's recipe at a quarter of the pretraining rate), export (same
   workdir).
3. `uniform_l1`: from the same pretrained network (init_checkpoint),
   pruning by ratio, as Torch-Pruning does: heads by their own ratio
   (`search.uniform_fixed=heads=0.5`: ceil(0.5 x 3) = 2 of 3 heads kept in
   every block, as Torch-Pruning's head_pruning_ratio=0.5 prunes
   int(0.5 x 3) = 1), the MLP units of every block by the one largest
   fraction that meets the same target (`search.allocation=uniform`: 115 of
   384 units, FLOPs rate 0.4998, a shape-only count), heads and units
   ranked by L1 norm (`search.criterion=l1`). One fraction for every gate
   could not land near the target: 3 heads per block make ceil(3 r) jump,
   so it kept 1 head and 128 units (0.3365) where the next fraction up
   keeps 2 heads and 129 units (0.5165, over it). Fine-tuned for the same
   epochs with the same recipe, as a Torch-Pruning user would: without
   knowledge, but with two views per image like the EKG arm (the evidence
   study's Torch-Pruning arms do the same), so the two arms differ in the
   network and the knowledge only (`workdirs/vit_demo/uniform_l1`).
4. `speedup`: dense vs each slimmed network, latency of the exported forward
   (uint8 images -> logits) on XLA:CPU (`deploy.export.forward`, jitted with
   the toolkit's CPU flags) and ONNX Runtime (`deploy.export_onnx.to_onnx`),
   at batch 1 and 128: one worker process per path, the paths taking turns,
   REPEATS alternating repetitions of median-of-`calls` timings
   (benchmarks/speedup.py's timing and benchmarks/workers.py's plumbing).
   Dense: the pretrained weights; slimmed: the fine-tuned export.
5. `report` (always): experiments/results/vit_demo/summary.json, table.md
   (dense / EKG / uniform-L1 rows: test accuracy, FLOPs, parameters,
   speed-ups) and kept.png (heads and MLP units kept per block, both arms),
   with the command (repository-relative) and the date.

`--commit` commits the results folder at the end (git add + commit).

Sizing (PRETRAIN_EPOCHS), measured 2026-12-02 20:50-20:57 UTC on this
machine (2 cores, AMD EPYC), whose cores were shared with the evidence
study and other runs (load average 6-10), so two measures:
- the CLI itself, `python -m ekg_jax.main --config=configs/vit_cifar.py
  --workdir=W --config.phases=pretrain --config.data.train_split='train[:3840]'
  --config.data.test_split='test[:100]' --config.pretrain.epochs=1`:
  36.8 images/s (summary.json's pretrain.images_per_second: train steps
  only, batch 128, compiling excluded) with the cores shared about 3 ways;
- the same train step (configs/vit_cifar.py's model and pretraining
  recipe, batch 128, jitted, 12 steps after a warm-up call) timed in CPU
  time rather than wall-clock: 50.3 images per CPU-second, i.e. at most
  ~100 images/s wall-clock when both cores are this step's alone.
2 hours at 83-100 images/s is 1.2-1.4 x 50,000 images x 7,200 s / 50,000 =
12-14 epochs; PRETRAIN_EPOCHS = 12 (1 h 40 min at 100 images/s, 2 h at 83;
XLA:CPU rarely keeps both cores fully busy, hence the lower number).
What comes after pretraining, at the same speed: the EKG search (greedy
steps over 12 gates, on 320 validation images; minutes), the memory bank
(5 teachers' forward passes over the 50,000 images, ~10 min), and per arm
FINETUNE_EPOCHS of fine-tuning with two views (twice the images per step):
about 3 x 100,000 / 100 s = 50 min each, so about 4 hours in all.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(REPO, 'benchmarks')
CONFIG = 'configs/vit_cifar.py'
TARGET = 0.5
# See the docstring: ~2 h of pretraining at the measured speed.
PRETRAIN_EPOCHS = 12
FINETUNE_EPOCHS = 3
ARMS = ('ekg', 'uniform_l1')
# The uniform arm's head ratio (stage 3): 2 of 3 heads, 1 of the tiny's 2.
UNIFORM_HEADS = 0.5
LABELS = {'dense': 'dense', 'ekg': 'EKG', 'uniform_l1': 'uniform L1'}
SIDES = ('xla', 'onnxruntime')
ONNX_MODULES = ('jax2onnx', 'onnx', 'onnxruntime')
FULL = dict(batches=[1, 128], repeats=5, calls={1: 20, 128: 3})
# The smoke run: the tiny ViT of tests/models/test_vit.py on a CIFAR-10 slice.
TINY_ARCHITECTURE = 'depth=2,embed_dim=32,num_heads=2,mlp_ratio=2'
TINY = dict(batches=[1, 8], repeats=1, calls={1: 2, 8: 1})
TINY_FLAGS = (
    f'--config.model.architecture={TINY_ARCHITECTURE}',
    '--config.data.train_split=train[:256]',
    '--config.data.test_split=test[:100]',
    '--config.data.val_per_class=4', '--config.search.batch_size=40',
    '--config.memory_bank.num_teachers=2',
    '--config.memory_bank.batch_size=128',
    '--config.pretrain.batch_size=64', '--config.finetune.batch_size=64')


def rel(path: str) -> str:
  """Repository-relative where the path is inside the repository."""
  path = os.path.abspath(path)
  inside = os.path.commonpath([path, REPO]) == REPO
  return os.path.relpath(path, REPO) if inside else path


def log(message: str) -> None:
  print(f'{time.strftime("%H:%M:%S")} {message}', flush=True)


# ---------------------------------------------------------------------------
# Stages 1-3: CLI runs.


def flags(tiny: bool) -> list[str]:
  """The overrides every CLI run of the demonstration shares."""
  out = ['--config.quiet=True', '--config.export.platforms=cpu',
         f'--config.search.target_flops_rate={TARGET}',
         f'--config.pretrain.epochs={1 if tiny else PRETRAIN_EPOCHS}',
         f'--config.finetune.epochs={1 if tiny else FINETUNE_EPOCHS}']
  return out + (list(TINY_FLAGS) if tiny else [])


def stage_runs(workdir: str, tiny: bool) -> dict:
  """Stage -> (its workdir, its CLI overrides, the summary key that says it
  finished)."""
  ekg = os.path.join(workdir, 'ekg')
  uniform = os.path.join(workdir, 'uniform_l1')
  common = flags(tiny)
  return {
      'pretrain': (ekg, common + ['--config.phases=pretrain,evaluate'],
                   'base'),
      'ekg': (ekg, common + ['--config.phases=search,memory_bank,finetune,'
                             'export'], 'export'),
      'uniform_l1': (uniform, common + [
          f'--config.init_checkpoint={rel(os.path.join(ekg, "pretrain", "final"))}',
          '--config.phases=search,finetune,export',
          '--config.search.allocation=uniform',
          f'--config.search.uniform_fixed=heads={UNIFORM_HEADS}',
          '--config.search.criterion=l1',
          '--config.finetune.knowledge=none', '--config.finetune.views=2'],
                     'export'),
  }


def read_summary(workdir: str) -> dict:
  try:
    with open(os.path.join(workdir, 'summary.json')) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def cli(workdir: str, overrides: list[str]) -> list[str]:
  return [sys.executable, '-m', 'ekg_jax.main', f'--config={CONFIG}',
          f'--workdir={rel(workdir)}', *overrides]


def run_stage(name: str, workdir: str, overrides: list[str],
              done_key: str, record: dict) -> None:
  if done_key in read_summary(workdir):
    log(f'{name}: finished before, skipped')
    return
  argv = cli(workdir, overrides)
  shown = ' '.join(['python'] + argv[1:])
  log(f'{name}: {shown}')
  start = time.time()
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join(
      [REPO] + [p for p in [os.environ.get('PYTHONPATH')] if p])}
  result = subprocess.run(argv, cwd=REPO, env=env)
  if result.returncode:
    sys.exit(f'{name} failed (exit {result.returncode}); the same command '
             'resumes it')
  record[name] = {'command': shown, 'seconds': round(time.time() - start, 1),
                  'finished': _now()}
  log(f'{name}: done in {time.time() - start:.0f} s')


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime(
      '%Y-%m-%d %H:%M UTC')


# ---------------------------------------------------------------------------
# Stage 4: latency, dense vs slimmed (worker processes).


def _networks(nets: dict):
  """{name: (model, variables, network.json)}: 'dense' from the pretrained
  checkpoint at the export's architecture, the arms from their exports."""
  import jax
  import jax.numpy as jnp
  from ekg_jax.deploy import export
  from ekg_jax.files import checkpoint
  out = {}
  for name, spec in nets.items():
    model, variables = export.load(spec['export'])
    with open(os.path.join(spec['export'], export.NETWORK)) as f:
      network = json.load(f)
    if spec.get('checkpoint'):  # the dense network, pretrained weights
      model = model.clone(widths=())
      reference = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(
          (1, *network['input_shape']), jnp.float32))
      variables = checkpoint.load_model_variables(spec['checkpoint'],
                                                  reference)
    out[name] = (model, variables, network)
  return out


def _build_xla(nets):
  import jax
  from ekg_jax.deploy import export
  runs = {}
  for name, (model, variables, network) in _networks(nets).items():
    fn = jax.jit(export.forward(model, variables, network['mean'],
                                network['std']))
    runs[name] = lambda x, fn=fn: jax.block_until_ready(fn(x))
  return runs


def _build_onnxruntime(nets):
  import tempfile
  import onnxruntime as ort
  from ekg_jax.deploy import export_onnx
  runs = {}
  for name, (model, variables, network) in _networks(nets).items():
    path = os.path.join(tempfile.mkdtemp(), 'model.onnx')
    export_onnx.to_onnx(model, variables, path, network['input_shape'],
                        network['mean'], network['std'])
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    runs[name] = lambda x, s=session: s.run(['logits'], {'images': x})
  return runs


def worker(side: str) -> None:
  """Answers `build` and `time` requests on stdin, one JSON line each."""
  import numpy as np
  sys.path.insert(0, BENCHMARKS)
  from speedup import _time
  if side == 'xla':
    from ekg_jax.runtime import xla_config
    xla_config.set_fast_cpu_flags()
  runs, inputs = {}, {}
  for line in sys.stdin:
    request = json.loads(line)
    if request['cmd'] == 'build':
      start = time.perf_counter()
      runs = globals()[f'_build_{side}'](request['nets'])
      reply = {'build_s': time.perf_counter() - start}
    else:
      b = request['batch']
      x = inputs.setdefault(b, np.random.default_rng(0).integers(
          0, 256, (b, 32, 32, 3), np.uint8))
      reply = {'seconds': _time(lambda: runs[request['net']](x),
                                request['calls'])}
    print(json.dumps(reply), flush=True)


def measure_speedup(nets: dict, o: dict) -> dict:
  """Latency per path, batch and network; speed-ups per repetition."""
  import importlib.util
  sys.path.insert(0, BENCHMARKS)
  from workers import Worker, in_turn, settle, stats
  onnx = all(importlib.util.find_spec(m) for m in ONNX_MODULES)
  sides = [s for s in SIDES if s != 'onnxruntime' or onnx]
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join(
      [REPO] + [p for p in [os.environ.get('PYTHONPATH')] if p])}
  workers = {s: Worker(s, [sys.executable, os.path.abspath(__file__),
                           f'--worker={s}'], env=env) for s in sides}
  out = {'sides': sides, 'missing': sorted(set(SIDES) - set(sides)),
         'options': {**o, 'calls': {str(k): v for k, v in o['calls'].items()}},
         'build_s': {}, 'latency': {}}
  for side, w in workers.items():
    out['build_s'][side] = round(w('build', nets=nets)['build_s'], 1)
    log(f'speedup: {side} built in {out["build_s"][side]} s')
  times = {}
  for rep in range(o['repeats']):
    for side, w in in_turn(workers, rep):
      for b in o['batches']:
        for net in nets:
          t = w('time', net=net, batch=b, calls=o['calls'][b])['seconds']
          times.setdefault((side, b, net), []).append(t)
      settle()
    log(f'speedup: repetition {rep + 1}/{o["repeats"]} done')
  for w in workers.values():
    w.close()
  for (side, b, net), t in times.items():
    entry = out['latency'].setdefault(side, {}).setdefault(str(b), {})
    entry[net] = stats(t)
    if net != 'dense':
      dense = times[(side, b, 'dense')]
      entry[f'{net}_speedup'] = stats([d / s for d, s in zip(dense, t)])
  return out


# ---------------------------------------------------------------------------
# Stage 5: the report.


def arm_rows(workdir: str) -> dict:
  """Network -> its accuracy, FLOPs, parameters, kept widths."""
  ekg = read_summary(os.path.join(workdir, 'ekg'))
  rows = {'dense': {'test_accuracy': ekg['base']['test_accuracy'],
                    'flops': ekg['base']['flops'],
                    'params': ekg['base']['params'], 'flops_rate': 1.0}}
  for arm in ARMS:
    s = read_summary(os.path.join(workdir, arm))
    rows[arm] = {'test_accuracy': s['final']['test_accuracy'],
                 'flops': s['final']['flops'], 'params': s['final']['params'],
                 'flops_rate': s['search']['flops_rate'],
                 'search_steps': s['search']['steps'],
                 'kept': s['search']['kept_channels'],
                 'knowledge': s['finetune']['knowledge'],
                 'views': s['finetune']['views']}
  return rows


def architecture(workdir: str) -> dict:
  with open(os.path.join(workdir, 'ekg', 'export', 'network.json')) as f:
    a = json.load(f)['attributes']
  return {k: a[k] for k in ('depth', 'embed_dim', 'num_heads', 'mlp_ratio',
                            'patch_size', 'pool')}


def per_block(kept: dict, arch: dict) -> tuple[list, list]:
  """(heads kept, MLP units kept) per block (an unpruned gate is whole)."""
  heads = [kept.get(f'block{i}/heads', arch['num_heads'])
           for i in range(arch['depth'])]
  mlp = [kept.get(f'block{i}/mlp', arch['embed_dim'] * arch['mlp_ratio'])
         for i in range(arch['depth'])]
  return heads, mlp


def figure(path: str, rows: dict, arch: dict) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  import numpy as np
  blocks = np.arange(arch['depth'])
  full = (arch['num_heads'], arch['embed_dim'] * arch['mlp_ratio'])
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  for k, (ax, what) in enumerate(zip(axes, ('attention heads',
                                            'MLP hidden units'))):
    for j, arm in enumerate(ARMS):
      kept = per_block(rows[arm]['kept'], arch)[k]
      ax.bar(blocks + (j - 0.5) * 0.38, kept, 0.38,
             label=f"{LABELS[arm]} (FLOPs rate {rows[arm]['flops_rate']:.3f})")
    ax.axhline(full[k], color='k', lw=0.8, ls='--', label='dense')
    ax.set_xticks(blocks, [f'block{i}' for i in blocks])
    ax.set_title(f'{what} kept')
    ax.set_ylim(0, full[k] * 1.25)
    if k == 0:
      ax.set_yticks(range(full[0] + 1))
  fig.legend(*axes[1].get_legend_handles_labels(), loc='lower center',
             ncol=3, fontsize=8, frameon=False)
  fig.suptitle(f"ViT (depth {arch['depth']}, width {arch['embed_dim']}) on "
               f'CIFAR-10, FLOPs target {TARGET}')
  fig.tight_layout(rect=(0, 0.07, 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)


def table(result: dict) -> str:
  rows, speed = result['networks'], result['speedup']
  batches = speed['options']['batches']
  cols = [(side, b) for side in speed['sides'] for b in batches]
  lines = [
      f"{result['command']}, {result['date']}, {result['machine']}. "
      f"Test accuracy on {result['test_images']:,} CIFAR-10 test images; "
      'FLOPs: multiply-accumulates of one image; speed-up: dense latency / '
      'slimmed latency of the exported forward (uint8 images -> logits), '
      f"median of {speed['options']['repeats']} alternating repetitions; "
      "the dense row gives the dense network's latency instead.",
      '',
      '| network | test acc. % | FLOPs | FLOPs rate | params | ' + ' | '.join(
          f'{"XLA" if s == "xla" else "ONNX Runtime"}, batch {b}'
          for s, b in cols) + ' |',
      '|---|---|---|---|---|' + '---|' * len(cols)]
  for net, r in rows.items():
    cells = [f"{r['test_accuracy']:.2f}", f"{r['flops']:,}",
             f"{r['flops_rate']:.3f}", f"{r['params']:,}"]
    for side, b in cols:
      e = speed['latency'][side][str(b)]
      cells.append(f"{e['dense']['median'] * 1e3:.2f} ms" if net == 'dense'
                   else f"{e[f'{net}_speedup']['median']:.2f}x")
    lines.append(f'| {LABELS[net]} | ' + ' | '.join(cells) + ' |')
  if speed['missing']:
    lines += ['', f"Not measured (missing modules): "
              f"{', '.join(speed['missing'])}."]
  return '\n'.join(lines) + '\n'


def report(workdir: str, out: str, command: str, stages: dict) -> dict:
  ekg = read_summary(os.path.join(workdir, 'ekg'))
  rows = arm_rows(workdir)
  arch = architecture(workdir)
  with open(os.path.join(workdir, 'speedup.json')) as f:
    speed = json.load(f)
  result = {
      'command': command, 'date': _now(),
      'machine': f'{platform.processor() or platform.machine()}, '
                 f'{os.cpu_count()} cores',
      'commit': _git('rev-parse', 'HEAD'),
      'architecture': arch, 'target_flops_rate': TARGET,
      'pretrain': {k: ekg['pretrain'][k] for k in
                   ('test_accuracy', 'epochs', 'seconds', 'images_per_second')},
      'test_images': ekg['base']['test_images'],
      'networks': rows,
      'per_block': {arm: dict(zip(('heads', 'mlp'),
                                  per_block(rows[arm]['kept'], arch)))
                    for arm in ARMS},
      'phase_seconds': {arm: {k: v['seconds'] for k, v in
                              read_summary(os.path.join(workdir, arm)).items()
                              if isinstance(v, dict) and 'seconds' in v}
                        for arm in ARMS},
      'stages': stages, 'speedup': speed}
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'summary.json'), 'w') as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(out, 'table.md'), 'w') as f:
    f.write(table(result))
  figure(os.path.join(out, 'kept.png'), rows, arch)
  return result


def _git(*args) -> str:
  r = subprocess.run(['git', *args], cwd=REPO, capture_output=True,
                     text=True)
  return r.stdout.strip()


# ---------------------------------------------------------------------------


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--tiny', action='store_true',
                      help='smoke run: tiny ViT, 256 images, 1 epoch')
  parser.add_argument('--workdir', help='default workdirs/vit_demo '
                      '(workdirs/vit_demo_tiny with --tiny)')
  parser.add_argument('--out', help='default experiments/results/vit_demo '
                      '(<workdir>/results with --tiny)')
  parser.add_argument('--status', action='store_true')
  parser.add_argument('--commit', action='store_true',
                      help='git add + commit the results folder at the end')
  parser.add_argument('--worker', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    return worker(args.worker)
  workdir = os.path.abspath(args.workdir or os.path.join(
      REPO, 'workdirs', 'vit_demo_tiny' if args.tiny else 'vit_demo'))
  out = os.path.abspath(args.out or (
      os.path.join(workdir, 'results') if args.tiny else
      os.path.join(REPO, 'experiments', 'results', 'vit_demo')))
  command = ' '.join(['python', 'experiments/vit_demo.py'] + [
      a for a in (argv if argv is not None else sys.argv[1:])
      if a != '--commit'] )
  runs = stage_runs(workdir, args.tiny)
  if args.status:
    for name, (w, _, key) in runs.items():
      print(f'{name}: {"done" if key in read_summary(w) else "to do"}')
    print(f"speedup: {'done' if os.path.exists(os.path.join(workdir, 'speedup.json')) else 'to do'}")
    return
  os.makedirs(workdir, exist_ok=True)
  record_path = os.path.join(workdir, 'stages.json')
  stages = read_summary_file(record_path)
  for name, (w, overrides, key) in runs.items():
    run_stage(name, w, overrides, key, stages)
    with open(record_path, 'w') as f:
      json.dump(stages, f, indent=1)
  speed_path = os.path.join(workdir, 'speedup.json')
  if os.path.exists(speed_path):
    log('speedup: finished before, skipped')
  else:
    start = time.time()
    nets = {'dense': {'export': os.path.join(workdir, 'ekg', 'export'),
                      'checkpoint': os.path.join(workdir, 'ekg', 'pretrain',
                                                 'final')},
            **{arm: {'export': os.path.join(workdir, arm, 'export')}
               for arm in ARMS}}
    speed = measure_speedup(nets, TINY if args.tiny else FULL)
    with open(speed_path, 'w') as f:
      json.dump(speed, f, indent=1)
    stages['speedup'] = {'seconds': round(time.time() - start, 1),
                         'finished': _now()}
    with open(record_path, 'w') as f:
      json.dump(stages, f, indent=1)
  result = report(workdir, out, command, stages)
  print(table(result))
  log(f'report: {rel(out)}/summary.json, table.md, kept.png')
  if args.commit:
    _git('add', rel(out))
    r = subprocess.run(['git', 'commit', '-m', f'ViT demonstration results: '
                        f'`{command}` ({result["date"]})', '--', rel(out)],
                       cwd=REPO)
    if r.returncode:
      sys.exit('git commit failed')


def read_summary_file(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


if __name__ == '__main__':
  main()
