"""The evidence study: the paper's feasibility and ablation tables rerun.

Every arm is a normal CLI run (`python -m ekg_jax.main`) of the official
ResNet-56 on the shared CIFAR-10 in its own workdir under
`workdirs/evidence/<arm>`, in pieces: search + landscape, then the memory
bank when the arm distils, then fine-tuning. After each piece the arm's
results are copied to `experiments/results/evidence/<arm>/` and committed, so
the study survives being stopped anywhere and resumes from a fresh clone:
finished pieces are read back from the committed files (a committed search
state seeds a new workdir, so a search never runs twice), unfinished ones
resume from their workdir or start again.

Arms that differ from another only in their fine-tuning knowledge (`base`)
start from a copy of that arm's search, landscape and memory bank (when it
has one): the search is deterministic, so running it again would give the
same network.

  python experiments/evidence_study.py            # run or resume every arm
  python experiments/evidence_study.py --arms=ekg,l1 --no-commit
  python experiments/evidence_study.py --status   # what is done
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import subprocess
import sys
import time

import evidence_report  # experiments/, beside this file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, 'experiments', 'results', 'evidence')
WORKDIRS = os.path.join(REPO, 'workdirs', 'evidence')
OFFICIAL = os.path.join(REPO, '..', 'shared', 'pretrained',
                        'ekg_official_resnet56_cifar10.pkl')
# One full epoch per arm, the reference schedule's shape (lr 0.01, x0.2 at
# 30/60/80% of the steps) compressed to it: 10 arms of 10-20 minutes each
# fit the 2-core budget; two epochs would double the study to ~7 hours.
EPOCHS = 1


@dataclasses.dataclass(frozen=True)
class Arm:
  name: str
  search: tuple = ()  # search.* overrides
  knowledge: str = 'none'  # finetune.knowledge
  base: str = ''  # an arm whose search (and bank) this one reuses
  what: str = ''
  seed: int = 0  # config.seed: fine-tuning's batch order and augmentation

  def overrides(self) -> list[str]:
    flags = [f'--config.search.{k}={v}' for k, v in self.search]
    flags += [f'--config.seed={self.seed}'] if self.seed else []
    return flags + [f'--config.finetune.knowledge={self.knowledge}',
                    f'--config.finetune.epochs={EPOCHS}']


ARMS = [
    Arm('ekg', what='feasibility EKG; ablation ensemble / none'),
    Arm('ekg_ft_ensemble', knowledge='ensemble', base='ekg',
        what='ablation ensemble / ensemble (the paper\'s EKG)'),
    Arm('l1', (('criterion', 'l1'),), what='feasibility L1'),
    Arm('fpgm', (('criterion', 'fpgm'),), what='feasibility FPGM'),
    Arm('gbn', (('criterion', 'gbn'),), what='feasibility GBN'),
    Arm('teacher_none', (('teacher', 'none'),), what='ablation none / none'),
    Arm('teacher_single', (('teacher', 'single'),),
        what='ablation single / none'),
    Arm('ekg_ft_single', knowledge='single', base='ekg_ft_ensemble',
        what='ablation ensemble / single'),
    Arm('l1_uniform', (('criterion', 'l1'), ('allocation', 'uniform')),
        what='classic baseline: L1 scores, uniform allocation'),
    Arm('per_channel', (('marking', 'per_channel'),), knowledge='ensemble',
        what='marking variant: per-channel removal cost, ensemble KD'),
    # How far one epoch's accuracy moves with the seed alone, to read the
    # single-run gaps above against (the search is deterministic).
    *(Arm(f'ekg_seed{seed}', base='ekg', seed=seed,
          what=f'seed spread: `ekg` fine-tuned with seed {seed}')
      for seed in (1, 2)),
]
BY_NAME = {a.name: a for a in ARMS}


def results_dir(arm: Arm) -> str:
  return os.path.join(RESULTS, arm.name)


def _write_json(path: str, obj: dict) -> None:
  """Atomic: a kill leaves the old file or the new one."""
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def committed_summary(arm: Arm) -> dict:
  return evidence_report.read_json(
      os.path.join(results_dir(arm), 'summary.json'))


def command(arm: Arm, phases: str) -> list[str]:
  return [sys.executable, '-m', 'ekg_jax.main',
          '--config=configs/resnet56_cifar.py',
          f'--workdir={os.path.relpath(workdir(arm), REPO)}',
          f'--config.init_checkpoint={os.path.relpath(OFFICIAL, REPO)}',
          f'--config.phases={phases}', '--config.quiet=True',
          *arm.overrides()]


def workdir(arm: Arm) -> str:
  return os.path.join(WORKDIRS, arm.name)


def seed_workdir(arm: Arm, source_dir: str, summary: dict) -> None:
  """Copies finished phases (search, landscape, memory bank: folder and
  summary entry, only where both exist) into the arm's new workdir."""
  os.makedirs(workdir(arm), exist_ok=True)
  mine = {}
  for key in ('search', 'landscape', 'memory_bank'):
    src = os.path.join(source_dir, key)
    if key not in summary or not os.path.isdir(src):
      continue
    dst = os.path.join(workdir(arm), key)
    if os.path.abspath(src) != os.path.abspath(dst):
      shutil.copytree(src, dst, dirs_exist_ok=True)
    mine[key] = summary[key]
  _write_json(os.path.join(workdir(arm), 'summary.json'), mine)


def restore_from_commit(arm: Arm) -> None:
  """A fresh clone: rebuild the arm's finished search from the committed
  state (the warm-up is recomputed, deterministically); the landscape
  entry comes back too, so neither runs again."""
  saved = committed_summary(arm)
  state = os.path.join(results_dir(arm), 'search_state.npz')
  if ('search' not in saved or not os.path.exists(state)
      or os.path.exists(os.path.join(workdir(arm), 'summary.json'))):
    return
  folder = os.path.join(workdir(arm), 'search')
  os.makedirs(folder, exist_ok=True)
  shutil.copy(state, os.path.join(folder, 'state.npz'))
  os.makedirs(os.path.join(workdir(arm), 'landscape'), exist_ok=True)
  seed_workdir(arm, workdir(arm), {k: v for k, v in saved.items()
                                   if k in ('search', 'landscape')})


def read_summary(arm: Arm) -> dict:
  return evidence_report.read_json(
      os.path.join(workdir(arm), 'summary.json'))


def run_piece(arm: Arm, phases: str, log) -> float:
  start = time.time()
  cmd = command(arm, phases)
  log.write(f'$ {" ".join(cmd)}\n')
  log.flush()
  env = dict(os.environ, TFDS_DATA_DIR=os.environ.get(
      'TFDS_DATA_DIR', os.path.join(REPO, '..', 'shared', 'tfds')))
  result = subprocess.run(cmd, cwd=REPO, env=env, stdout=log,
                          stderr=subprocess.STDOUT)
  if result.returncode:
    raise SystemExit(f'arm {arm.name}: {phases} failed (exit '
                     f'{result.returncode}); see {log.name}')
  return round(time.time() - start, 1)


def save_results(arm: Arm, wall: dict, commit: bool) -> None:
  out = results_dir(arm)
  os.makedirs(out, exist_ok=True)
  summary = read_summary(arm)
  copies = {'search/history.json': 'search_history.json',
            'search/state.npz': 'search_state.npz',
            'landscape/landscape.json': 'landscape.json',
            'landscape/landscape.png': 'landscape.png',
            'finetune/metrics.jsonl': 'finetune_metrics.jsonl'}
  for src, dst in copies.items():
    if os.path.exists(os.path.join(workdir(arm), src)):
      shutil.copy(os.path.join(workdir(arm), src), os.path.join(out, dst))
  record = committed_summary(arm).get('study', {})
  record = {**record, 'arm': arm.name, 'what': arm.what,
            'base': arm.base or None,
            'commands': {**record.get('commands', {}),
                         **{p: ' '.join(command(arm, p)[1:])
                            for p in wall}},
            'wall_seconds': {**record.get('wall_seconds', {}), **wall},
            'date': datetime.date.today().isoformat(),
            'machine': 'cpu2 (2 CPU cores, 24 GB, no GPU)'}
  _write_json(os.path.join(out, 'summary.json'),
              {**summary, 'study': record})
  # The tables and the figure follow every finished piece, so what is
  # committed always agrees with them (tests/test_evidence_report.py).
  evidence_report.main(quiet=True)
  if commit:
    git_commit([out, evidence_report.FIGURE, evidence_report.README],
               f'evidence study: arm {arm.name} '
               f'({", ".join(wall) or "results"} finished)')


def git_commit(paths: list[str], message: str) -> None:
  """Commits only `paths`; retries while another commit holds the index."""
  for attempt in range(30):
    add = subprocess.run(['git', 'add', *paths], cwd=REPO,
                         capture_output=True, text=True)
    done = add.returncode == 0 and subprocess.run(
        ['git', 'commit', '-q', '-m', message, '--', *paths], cwd=REPO,
        capture_output=True, text=True).returncode == 0
    if done:
      return
    time.sleep(10)
  print(f'could not commit {paths}; commit them by hand', file=sys.stderr)


def run_arm(arm: Arm, commit: bool) -> None:
  if 'finetune' in committed_summary(arm):
    return
  os.makedirs(workdir(arm), exist_ok=True)
  restore_from_commit(arm)
  if arm.base and not read_summary(arm):
    base = BY_NAME[arm.base]
    run_arm(base, commit)
    restore_from_commit(base)
    seed_workdir(arm, workdir(base), read_summary(base))
  with open(os.path.join(workdir(arm), 'study.log'), 'a') as log:
    pieces = ['search,landscape'] + (
        ['memory_bank'] if arm.knowledge != 'none' else []) + ['finetune']
    for piece in pieces:
      if piece.split(',')[-1] in read_summary(arm):
        continue
      save_results(arm, {piece: run_piece(arm, piece, log)}, commit)
  # A stop between a piece's end and its commit: commit what is missing.
  if set(read_summary(arm)) - set(committed_summary(arm)):
    save_results(arm, {}, commit)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--arms', default=','.join(a.name for a in ARMS))
  parser.add_argument('--no-commit', action='store_true')
  parser.add_argument('--status', action='store_true')
  args = parser.parse_args()
  arms = [BY_NAME[n] for n in args.arms.split(',')]
  if args.status:
    for arm in arms:
      print(f'{arm.name:16s} {sorted(committed_summary(arm))}')
    return
  for arm in arms:
    print(f'{datetime.datetime.now():%H:%M} arm {arm.name}', flush=True)
    run_arm(arm, commit=not args.no_commit)


if __name__ == '__main__':
  main()
