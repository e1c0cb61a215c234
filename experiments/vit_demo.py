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
4. `speedup` (vit_latency.py): dense vs each slimmed network, latency of
   the exported forward (uint8 images -> logits) on XLA:CPU and ONNX
   Runtime at batch 1 and 128, the paths taking turns over alternating
   repetitions. Dense: the pretrained weights; slimmed: the fine-tuned
   export.
5. `report` (always, vit_report.py): experiments/results/vit_demo/
   summary.json, table.md (dense / EKG / uniform-L1 rows: test accuracy,
   FLOPs, parameters, speed-ups) and kept.png (heads and MLP units kept per
   block, both arms), with the command (repository-relative) and the date.

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
import json
import os
import subprocess
import sys
import time

# experiments/, beside this file: stage 4 and stage 5.
from vit_latency import measure_speedup
from vit_report import ARMS, REPO, TARGET, git, now, read_json, report, table

CONFIG = 'configs/vit_cifar.py'
# See the docstring: ~2 h of pretraining at the measured speed.
PRETRAIN_EPOCHS = 12
FINETUNE_EPOCHS = 3
# The uniform arm's head ratio (stage 3): 2 of 3 heads, 1 of the tiny's 2.
UNIFORM_HEADS = 0.5
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
  return read_json(os.path.join(workdir, 'summary.json'))


def log(message: str) -> None:
  print(f'{time.strftime("%H:%M:%S")} {message}', flush=True)


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
                  'finished': now()}
  log(f'{name}: done in {time.time() - start:.0f} s')


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
  args = parser.parse_args(argv)
  workdir = os.path.abspath(args.workdir or os.path.join(
      REPO, 'workdirs', 'vit_demo_tiny' if args.tiny else 'vit_demo'))
  out = os.path.abspath(args.out or (
      os.path.join(workdir, 'results') if args.tiny else
      os.path.join(REPO, 'experiments', 'results', 'vit_demo')))
  command = ' '.join(['python', 'experiments/vit_demo.py'] + [
      a for a in (argv if argv is not None else sys.argv[1:])
      if a != '--commit'])
  runs = stage_runs(workdir, args.tiny)
  if args.status:
    for name, (w, _, key) in runs.items():
      print(f'{name}: {"done" if key in read_summary(w) else "to do"}')
    measured = os.path.exists(os.path.join(workdir, 'speedup.json'))
    print(f"speedup: {'done' if measured else 'to do'}")
    return
  os.makedirs(workdir, exist_ok=True)
  record_path = os.path.join(workdir, 'stages.json')
  stages = read_json(record_path)
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
    speed = measure_speedup(nets, TINY if args.tiny else FULL, log)
    with open(speed_path, 'w') as f:
      json.dump(speed, f, indent=1)
    stages['speedup'] = {'seconds': round(time.time() - start, 1),
                         'finished': now()}
    with open(record_path, 'w') as f:
      json.dump(stages, f, indent=1)
  result = report(workdir, out, command, stages)
  print(table(result))
  log(f'report: {rel(out)}/summary.json, table.md, kept.png')
  if args.commit:
    git('add', rel(out))
    r = subprocess.run(['git', 'commit', '-m', f'ViT demonstration results: '
                        f'`{command}` ({result["date"]})', '--', rel(out)],
                       cwd=REPO)
    if r.returncode:
      sys.exit('git commit failed')


if __name__ == '__main__':
  main()
