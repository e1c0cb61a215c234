"""The evidence study: the paper's feasibility and ablation tables rerun.

Every arm (evidence_arms.py: what each one runs) is a normal CLI run
(`python -m ekg_jax.main`) of the official ResNet-56 on the shared CIFAR-10
in its own workdir under `workdirs/evidence/<arm>`, in pieces: search +
landscape, then the memory bank when the arm distils, then fine-tuning.
After each piece the arm's results are copied to
`experiments/results/evidence/<arm>/` and committed, so the study survives
being stopped anywhere and resumes from a fresh clone: finished pieces are
read back from the committed files (a committed search state seeds a new
workdir, so a search never runs twice), unfinished ones resume from their
workdir or start again.

Arms that differ from another only in their fine-tuning knowledge (`base`)
start from a copy of that arm's search, landscape and memory bank (when it
has one): the search is deterministic, so running it again would give the
same network.

Every piece runs from the study's own clean git worktree
(`workdirs/evidence-code`) checked out at a recorded commit, not from the
working checkout that other work changes: the commit is pinned in the
committed `results/evidence/code.json` and each piece's summary records the
commit it ran at. The study moves to another commit only between pieces:
`--code=REF` at start, or a ref written to `workdirs/evidence/move-to` while
it runs.

  python experiments/evidence_study.py            # run or resume every arm
  python experiments/evidence_study.py --arms=ekg,l1 --no-commit
  python experiments/evidence_study.py --status   # what is done
  python experiments/evidence_study.py --code=HEAD  # move to a new commit
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time

import evidence_report  # experiments/, beside this file
from evidence_arms import ARMS, BY_NAME, Arm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, 'experiments', 'results', 'evidence')
WORKDIRS = os.path.join(REPO, 'workdirs', 'evidence')
OFFICIAL = os.path.join(REPO, '..', 'shared', 'pretrained',
                        'ekg_official_resnet56_cifar10.pkl')
CODE_TREE = os.path.join(REPO, 'workdirs', 'evidence-code')


def waiting_for(arm: Arm) -> str:
  """What the arm cannot start without ('' when it can)."""
  if arm.masks.endswith('.json') and not os.path.exists(
      os.path.join(REPO, arm.masks)):
    return arm.masks
  config = os.path.join(CODE_TREE, 'ekg_jax', 'config.py')
  if arm.landscape and (not os.path.exists(config) or 'landscape.subset'
                        not in open(config).read()):
    return ('code that has landscape.subset (move the study to a newer '
            'commit: --code=REF)')
  return ''


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


def command(arm: Arm, phases: str, tree: str = '') -> list[str]:
  """The piece's command as run from the root of a checkout (`tree`: the
  code tree's path, which runs it from there with the working directory
  here)."""
  return [sys.executable, *(['-P'] if tree else []), '-m', 'ekg_jax.main',
          f'--config={os.path.join(tree, "configs", "resnet56_cifar.py")}',
          f'--workdir={os.path.relpath(workdir(arm), REPO)}',
          f'--config.init_checkpoint={os.path.relpath(OFFICIAL, REPO)}',
          f'--config.phases={phases}', '--config.quiet=True',
          *arm.overrides()]


def workdir(arm: Arm) -> str:
  return os.path.join(WORKDIRS, arm.name)


def seed_workdir(arm: Arm, source_dir: str, summary: dict) -> None:
  """Copies finished phases (search, landscape, memory bank: folder and
  summary entry, only where both exist; a landscape repeat measures
  again) into the arm's new workdir."""
  os.makedirs(workdir(arm), exist_ok=True)
  mine = {}
  for key in ('search', 'landscape', 'memory_bank'):
    if key == 'landscape' and arm.landscape and source_dir != workdir(arm):
      continue
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


def git(*args, cwd: str = '') -> str:
  return subprocess.run(['git', *args], cwd=cwd or REPO, check=True,
                        capture_output=True, text=True).stdout.strip()


def code_env() -> dict:
  """The environment that runs `ekg_jax` from the code tree: `python -P`
  does not put the working directory (this checkout) on the path, and
  PYTHONPATH puts the tree before the editable install."""
  return dict(os.environ, PYTHONPATH=CODE_TREE, TFDS_DATA_DIR=os.environ.get(
      'TFDS_DATA_DIR', os.path.join(REPO, '..', 'shared', 'tfds')))


def code_file() -> str:
  """The pinned commit and its moves (committed with the results)."""
  return os.path.join(RESULTS, 'code.json')


def pinned() -> dict:
  return evidence_report.read_json(code_file())


def checkout(ref: str, commit: bool) -> str:
  """Puts the code tree (a clean worktree, made on first use) at `ref`'s
  commit, records a move in code.json, and checks that `ekg_jax` is
  imported from it. Only between pieces."""
  sha = git('rev-parse', '--verify', f'{ref}^{{commit}}')
  if not os.path.isdir(os.path.join(CODE_TREE, 'ekg_jax')):
    git('worktree', 'prune')
    shutil.rmtree(CODE_TREE, ignore_errors=True)
    git('worktree', 'add', '--detach', CODE_TREE, sha)
  if git('status', '--porcelain', cwd=CODE_TREE):
    raise SystemExit(f'{CODE_TREE} has changes; the study runs only from '
                     'a clean checkout: remove the folder to remake it')
  if git('rev-parse', 'HEAD', cwd=CODE_TREE) != sha:
    git('checkout', '-q', '--detach', sha, cwd=CODE_TREE)
  where = subprocess.run(
      [sys.executable, '-P', '-c', 'import ekg_jax; print(ekg_jax.__file__)'],
      cwd=REPO, env=code_env(), capture_output=True, text=True,
      check=True).stdout.strip()
  if not where.startswith(os.path.join(CODE_TREE, '')):
    raise SystemExit(f'the code tree is not what runs: ekg_jax from {where}')
  code = pinned()
  if code.get('commit') != sha:
    moves = code.get('moves', []) + [{
        'commit': sha, 'date': datetime.datetime.now().isoformat(
            timespec='minutes')}]
    os.makedirs(RESULTS, exist_ok=True)
    _write_json(code_file(), {'commit': sha, 'moves': moves})
    if commit:
      git_commit([code_file()], f'evidence study: code pinned at {sha[:10]}')
  return sha


def run_piece(arm: Arm, phases: str, log) -> float:
  start = time.time()
  cmd = command(arm, phases, CODE_TREE)
  log.write(f'$ {" ".join(cmd)}  # at {pinned().get("commit")}\n')
  log.flush()
  result = subprocess.run(cmd, cwd=REPO, env=code_env(), stdout=log,
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
  if arm.landscape:  # a repeat: its search's files are its base's
    copies = {'landscape/landscape.json': 'landscape.json'}
  elif arm.base and arm.seed:  # likewise, a seed
    copies = {'finetune/metrics.jsonl': 'finetune_metrics.jsonl'}
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
            # The commit each piece ran at (absent: before it was recorded).
            'commits': {**record.get('commits', {}),
                        **{p: pinned().get('commit') for p in wall}},
            'environment': environment(),
            'date': datetime.date.today().isoformat(),
            'machine': 'cpu2 (2 CPU cores, 24 GB, no GPU)'}
  _write_json(os.path.join(out, 'summary.json'),
              {**summary, 'study': record})
  # The tables and the figure follow every finished piece, so what is
  # committed always agrees with them (tests/project/test_evidence_report.py); in a
  # process of their own, so the report's newest code makes them.
  make_report()
  if commit:
    git_commit([out, evidence_report.FIGURE, evidence_report.README],
               f'evidence study: arm {arm.name} '
               f'({", ".join(wall) or "results"} finished)')


def environment() -> dict:
  """What else decides the numbers: the packages the code tree runs with
  and the processor (XLA's CPU kernels differ between instruction sets)."""
  probe = ('import json, sys, jax, jaxlib, flax, optax, numpy; print(json.dumps('
           '{"python": sys.version.split()[0], "jax": jax.__version__, '
           '"jaxlib": jaxlib.__version__, "flax": flax.__version__, '
           '"optax": optax.__version__, "numpy": numpy.__version__}))')
  found = json.loads(subprocess.run(
      [sys.executable, '-P', '-c', probe], cwd=REPO, env=code_env(),
      capture_output=True, text=True, check=True).stdout)
  with open('/proc/cpuinfo') as f:
    cpu = next((l.split(':', 1)[1].strip() for l in f
                if l.startswith('model name')), 'unknown')
  return {**found, 'cpu': cpu}


def make_report() -> None:
  subprocess.run([sys.executable, os.path.join(REPO, 'experiments',
                                               'evidence_report.py'),
                  '--quiet'], check=True)


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
  if arm.pieces[-1] in committed_summary(arm):
    return
  if waiting_for(arm):
    print(f'arm {arm.name}: waits for {waiting_for(arm)}', flush=True)
    return
  os.makedirs(workdir(arm), exist_ok=True)
  restore_from_commit(arm)
  with open(os.path.join(workdir(arm), 'study.log'), 'a') as log:
    if arm.base and not read_summary(arm):
      base = BY_NAME[arm.base]
      run_arm(base, commit)
      restore_from_commit(base)
      if (arm.seed and 'memory_bank' in arm.pieces
          and 'memory_bank' not in read_summary(base)):
        # A seed distils from its base's bank: on a fresh clone the bank is
        # rebuilt once, in the base, not once per seed.
        between_pieces(commit)
        run_piece(base, 'memory_bank', log)
      seed_workdir(arm, workdir(base), read_summary(base))
    for piece in arm.pieces:
      if piece.split(',')[-1] in read_summary(arm):
        continue
      between_pieces(commit)
      save_results(arm, {piece: run_piece(arm, piece, log)}, commit)
  # A stop between a piece's end and its commit: commit what is missing.
  if set(read_summary(arm)) - set(committed_summary(arm)):
    save_results(arm, {}, commit)


def between_pieces(commit: bool) -> None:
  """The only place the code tree may move: to a ref written in
  workdirs/evidence/move-to while the study runs."""
  move_to = os.path.join(WORKDIRS, 'move-to')
  if os.path.exists(move_to):
    with open(move_to) as f:
      ref = f.read().strip()
    checkout(ref, commit)
    os.remove(move_to)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--arms', default=','.join(a.name for a in ARMS))
  parser.add_argument('--no-commit', action='store_true')
  parser.add_argument('--status', action='store_true')
  parser.add_argument('--code', default='',
                      help='a git ref to run the code of (default: the '
                      'pinned commit, else HEAD)')
  args = parser.parse_args()
  arms = [BY_NAME[n] for n in args.arms.split(',')]
  if args.status:
    print(f'code: {pinned().get("commit", "not pinned yet")}')
    for arm in arms:
      commits = sorted({c[:10] for c in committed_summary(arm).get(
          'study', {}).get('commits', {}).values()})
      print(f'{arm.name:24s} {sorted(committed_summary(arm))} {commits}')
    return
  os.makedirs(WORKDIRS, exist_ok=True)
  checkout(args.code or pinned().get('commit', 'HEAD'),
           commit=not args.no_commit)
  for arm in arms:
    print(f'{datetime.datetime.now():%H:%M} arm {arm.name}', flush=True)
    run_arm(arm, commit=not args.no_commit)


if __name__ == '__main__':
  main()
