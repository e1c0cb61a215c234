"""The paper's full schedule on an accelerator (issue 25, item 6), arm by
arm, across device lendings of a few minutes each.

ResNet-56 from the official weights, FLOPs target 0.45, 100 fine-tuning
epochs with the reference recipe, for the arms of `ARMS` in order. A lending
gives about 15 minutes of device time and at most 10 per command, so an arm
runs for a time budget, is interrupted (SIGINT: the CLI stops at its last
atomic checkpoint) and packed into `$OUT/<arm>.tar.gz` with
`progress.json`; those come back, are committed under
`experiments/results/full_schedule/`, and the next lending unpacks them and
goes on where the arm stopped.

  # here, once: data in parts, wheels, weights, into the ignored .device/
  python experiments/full_schedule.py stage
  # there (experiments/README.md, "The full schedule on an accelerator",
  # lists the device calls that carry the parts first):
  python experiments/full_schedule.py run --budget=420 --out=$OUT
  # here, with what came back:
  python experiments/full_schedule.py collect FILES_AT

`--tiny` runs a ResNet-20 on a slice of the data for a few steps: the CPU
test of the whole cycle (tests/project/test_full_schedule.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, 'experiments', 'results', 'full_schedule')
WORKDIRS = os.path.join(REPO, 'workdirs', 'full_schedule')
STAGE = os.path.join(REPO, '.device')  # ignored (.gitignore): travels by carry
README = os.path.join(REPO, 'experiments', 'README.md')
MARKERS = ('<!-- full-schedule:start -->', '<!-- full-schedule:end -->')
EPOCHS = 100
# A file that comes back through $OUT may hold at most 16 MiB.
MAX_PACK = 16 * 2 ** 20
# Packages the device image lacks (the device README lists what it has).
WHEELS = ['grain', 'tensorflow-datasets', 'ml-collections', 'array-record',
          'tensorboardX', 'dm-tree', 'promise', 'simple-parsing',
          'tensorflow-metadata', 'termcolor', 'toml', 'immutabledict',
          'googleapis-common-protos', 'docstring-parser', 'etils']


@dataclasses.dataclass(frozen=True)
class Arm:
  name: str
  flags: tuple = ()  # --config.* overrides beyond the schedule's
  knowledge: str = 'none'

  @property
  def phases(self) -> str:
    searched = not any('finetune.masks=' in f for f in self.flags)
    return ','.join((['search'] if searched else [])
                    + (['memory_bank'] if self.knowledge != 'none' else [])
                    + ['finetune'])


_BASE = [
    Arm('ekg', knowledge='ensemble'),
    Arm('dense', ('--config.finetune.masks=dense', '--config.finetune.views=2')),
    Arm('ekg_2view', ('--config.finetune.views=2',)),
    Arm('fpgm', ('--config.search.criterion=fpgm',)),
    Arm('l1', ('--config.search.criterion=l1',)),
    Arm('gbn', ('--config.search.criterion=gbn',)),
]
# Then seeds 1 and 2 of the two arms the paper's claims rest on.
ARMS = _BASE + [
    dataclasses.replace(a, name=f'{a.name}_seed{s}',
                        flags=a.flags + (f'--config.seed={s}',))
    for s in (1, 2) for a in (_BASE[0], _BASE[2])]
TINY = ('--config=configs/resnet20_cifar.py',
        '--config.data.train_split=train[:256]',
        '--config.data.test_split=test[:64]',
        '--config.data.warmup_per_class=4', '--config.data.val_per_class=8',
        '--config.search.batch_size=40',
        '--config.search.target_flops_rate=0.9',
        '--config.search.evaluation=loop', '--config.memory_bank.num_teachers=2',
        '--config.memory_bank.batch_size=64', '--config.finetune.batch_size=32',
        '--config.finetune.checkpoint_every_steps=2')


def command(arm: Arm, weights: str, tiny: bool) -> list[str]:
  schedule = (list(TINY) + ['--config.finetune.epochs=12'] if tiny else
              ['--config=configs/resnet56_cifar.py',
               f'--config.init_checkpoint={weights}',
               f'--config.finetune.epochs={EPOCHS}'])
  return [sys.executable, '-m', 'ekg_jax.main', *schedule,
          f'--workdir={os.path.relpath(workdir(arm), REPO)}',
          f'--config.phases={arm.phases}', '--config.quiet=True',
          f'--config.finetune.knowledge={arm.knowledge}', *arm.flags]


def workdir(arm: Arm) -> str:
  return os.path.join(WORKDIRS, arm.name)


def read_json(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def progress(arm: Arm) -> dict:
  """Epochs done (lines of finetune/metrics.jsonl) and the last accuracy."""
  metrics = os.path.join(workdir(arm), 'finetune', 'metrics.jsonl')
  lines = []
  if os.path.exists(metrics):
    with open(metrics) as f:
      lines = [json.loads(l) for l in f if l.strip()]
  summary = read_json(os.path.join(workdir(arm), 'summary.json'))
  return {'epochs_done': len(lines), 'finished': 'finetune' in summary,
          'test_accuracy': lines[-1].get('test_accuracy') if lines else None,
          'phases_done': [k for k in ('search', 'memory_bank', 'finetune')
                          if k in summary]}


def pack(arm: Arm, out: str) -> str:
  """The arm's resumable state (no TensorBoard files, the newest
  fine-tuning checkpoint only) as out/<arm>.tar.gz."""
  root = workdir(arm)
  # Everything under checkpoints/ but the newest finished step goes,
  # including a step a kill left half-written (<step>.orbax-checkpoint-tmp).
  checkpoints = glob.glob(os.path.join(root, 'finetune', 'checkpoints', '*'))
  keep = sorted((c for c in checkpoints if os.path.basename(c).isdigit()),
                key=lambda p: int(os.path.basename(p)))[-1:]

  def wanted(info):
    path = os.path.join(os.path.dirname(root), info.name)
    if 'events.out.tfevents' in info.name:
      return None
    if any(path.startswith(c + os.sep) or path == c for c in checkpoints
           if c not in keep):
      return None
    return info
  target = os.path.join(out, f'{arm.name}.tar.gz')
  with tarfile.open(target, 'w:gz') as tar:
    tar.add(root, arcname=arm.name, filter=wanted)
  if os.path.getsize(target) > MAX_PACK:
    raise SystemExit(f'{target}: {os.path.getsize(target)} bytes, more than '
                     'a file that comes back from the device may hold')
  return target


def unpack(arm: Arm) -> None:
  """A committed pack into an arm's workdir that does not exist yet."""
  source = os.path.join(RESULTS, f'{arm.name}.tar.gz')
  if os.path.exists(source) and not os.path.exists(workdir(arm)):
    os.makedirs(WORKDIRS, exist_ok=True)
    with tarfile.open(source) as tar:
      tar.extractall(WORKDIRS, filter='data')


def run(args) -> None:
  """Arms in order until the budget is spent; the arm running then is
  interrupted at a checkpoint and packed with the others touched."""
  deadline = time.time() + args.budget
  touched, record = [], read_json(os.path.join(RESULTS, 'progress.json'))
  for arm in ARMS:
    unpack(arm)
    if progress(arm)['finished']:
      continue
    left = deadline - time.time()
    if left < 30:
      break
    touched.append(arm)
    started = time.time()
    proc = subprocess.Popen(command(arm, args.weights, args.tiny), cwd=REPO)
    try:
      proc.wait(timeout=left)
    except subprocess.TimeoutExpired:
      proc.send_signal(signal.SIGINT)  # stops at its last checkpoint
      try:
        proc.wait(timeout=240)
      except subprocess.TimeoutExpired:  # checkpoints are atomic: the last
        proc.kill()  # complete one survives a kill too
        proc.wait()
    # 130: stopped at a checkpoint; -SIGINT: interrupted while starting,
    # before the CLI's handler (nothing written yet is lost either way).
    interrupted = proc.returncode in (130, -signal.SIGINT, -signal.SIGKILL)
    if proc.returncode != 0 and not interrupted:
      raise SystemExit(f'arm {arm.name}: exit {proc.returncode}; see '
                       f'{workdir(arm)}/log.txt')
    entry = record.get(arm.name, {})
    record[arm.name] = {
        **progress(arm), 'device': args.device or device_name(),
        'commit': args.commit,
        'lendings': entry.get('lendings', []) + [{
            'date': datetime.datetime.now().isoformat(timespec='minutes'),
            'seconds': round(time.time() - started, 1)}],
        'command': ' '.join(['python'] + command(arm, args.weights,
                                                 args.tiny)[1:])}
    if interrupted:
      break
  os.makedirs(args.out, exist_ok=True)
  for arm in touched:
    if os.path.isdir(workdir(arm)):  # else stopped before it wrote anything
      pack(arm, args.out)
  with open(os.path.join(args.out, 'progress.json'), 'w') as f:
    json.dump(record, f, indent=2)
  print(json.dumps({a: {k: r[k] for k in ('epochs_done', 'finished')}
                    for a, r in record.items()}))


def device_name() -> str:
  import jax
  return f'{jax.devices()[0].device_kind} ({jax.default_backend()})'


def collect(args) -> None:
  """What came back: packs and progress into results/full_schedule/, and
  the table in experiments/README.md."""
  os.makedirs(RESULTS, exist_ok=True)
  for path in glob.glob(os.path.join(args.folder, '*.tar.gz')):
    shutil.copy(path, RESULTS)
  shutil.copy(os.path.join(args.folder, 'progress.json'), RESULTS)
  write_table()


def table() -> str:
  record = read_json(os.path.join(RESULTS, 'progress.json'))
  lines = [f'| arm | epochs done / {EPOCHS} | test accuracy, % (last epoch) '
           '| device | lendings (date, seconds) | commit |',
           '|---|---|---|---|---|---|']
  for arm in ARMS:
    r = record.get(arm.name)
    if not r:
      lines.append(f'| `{arm.name}` | not started | | | | |')
      continue
    lendings = '; '.join(f"{l['date']}, {l['seconds']:.0f}"
                         for l in r['lendings'])
    accuracy = '-' if r['test_accuracy'] is None else r['test_accuracy']
    lines.append(f"| `{arm.name}` | {r['epochs_done']} | {accuracy} | "
                 f"{r['device']} | {lendings} | {r['commit'][:10]} |")
  return '\n'.join(lines)


def write_table() -> None:
  with open(README) as f:
    text = f.read()
  start, end = text.index(MARKERS[0]), text.index(MARKERS[1])
  text = (text[:start] + MARKERS[0] + '\n\n' + table() + '\n\n'
          + text[end:])
  with open(README, 'w') as f:
    f.write(text)


def stage(args) -> None:
  """Here: what the device lacks, into .device/ (ignored), each part small
  enough for one call's 64 MiB with the working tree: the prepared
  CIFAR-10 folder as a tar in parts, the official weights, wheels."""
  os.makedirs(STAGE, exist_ok=True)
  data = os.path.join(STAGE, 'cifar10.tar')
  with tarfile.open(data, 'w') as tar:
    tar.add(os.path.join(args.tfds, 'cifar10'), arcname='cifar10')
  subprocess.run(['split', '-b', f'{args.part_mb}m', '-d', data,
                  os.path.join(STAGE, 'cifar10.tar.part')], check=True)
  os.remove(data)
  shutil.copy(args.weights_file, os.path.join(STAGE, 'weights.pkl'))
  subprocess.run([sys.executable, '-m', 'pip', 'download', '-q', '--no-deps',
                  '--only-binary=:all:', '--python-version', '3.12',
                  '--implementation', 'cp', '--platform',
                  'manylinux_2_28_x86_64', '--platform',
                  'manylinux_2_17_x86_64', '--platform', 'manylinux2014_x86_64',
                  '-d', os.path.join(STAGE, 'wheels'), *WHEELS], check=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest='verb', required=True)
  r = sub.add_parser('run')
  r.add_argument('--budget', type=float, required=True, help='seconds')
  r.add_argument('--out', required=True)
  r.add_argument('--weights', default='.device/weights.pkl')
  r.add_argument('--commit', default='not given')
  r.add_argument('--device', default='')
  r.add_argument('--tiny', action='store_true')
  c = sub.add_parser('collect')
  c.add_argument('folder')
  s = sub.add_parser('stage')
  s.add_argument('--tfds', default=os.path.join(REPO, '..', 'shared', 'tfds'))
  s.add_argument('--weights-file', default=os.path.join(
      REPO, '..', 'shared', 'pretrained', 'ekg_official_resnet56_cifar10.pkl'))
  s.add_argument('--part-mb', type=int, default=40)
  args = parser.parse_args()
  {'run': run, 'collect': collect, 'stage': stage}[args.verb](args)


if __name__ == '__main__':
  main()
