"""The pipeline: the configured phases in order, finished ones skipped, every
check before any compute, one summary.json per workdir.

The phases themselves live in `ekg_jax.run.phases`; where they keep their files
is `ekg_jax.run.workdir`'s.
"""

from __future__ import annotations

import logging
import os
import time

import jax
import ml_collections

from ekg_jax.runtime import breakdown
from ekg_jax.files import cache as cache_lib
from ekg_jax.files import checkpoint as ckpt_lib
from ekg_jax.runtime import distributed
from ekg_jax.run import phases as phases_lib
from ekg_jax.run import preflight
from ekg_jax.run import report as report_lib
from ekg_jax.run import validate
from ekg_jax.run import workdir as workdir_lib
from ekg_jax.run.phases import PHASES


def produced_phases(workdir: str, summary: dict) -> list[str]:
  """Phases that finished or left state behind in `workdir`."""
  return [p.name for p in workdir_lib.produced_phases(
      workdir, summary, PHASES.values())]


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the configured phases in order, skipping finished ones (a rerun
  resumes an interrupted phase); returns the summary. `config.redo` names
  phases to compute again: their results and those computed from them are
  removed first, and they run.

  Every check that the config, the data's sizes, the checkpoint and the
  model allow happens before any phase computes, and the workdir's config
  is pinned only for phases that produced something: a run that fails
  before that leaves the workdir reusable with a corrected config.
  """
  validate.validate_config(config)
  workdir_lib.validate_workdir_path(workdir)
  again = validate.parse_phases(config.redo) if config.redo else []
  redo = phases_lib.redone(again)
  redone = {p.name for p in redo}
  # A phase to redo runs whether config.phases names it or not.
  names = [name for name in PHASES
           if name in validate.parse_phases(config.phases) + again]
  cache_lib.enable_compilation_cache(cache_lib.resolve(config.cache_dir))
  breakdown.listen()
  with workdir_lib.lock(workdir):
    summary = workdir_lib.load_summary(workdir)
    # The checks see the workdir as the redo will leave it; nothing is
    # removed before they pass.
    produced = [p for p in workdir_lib.produced_phases(
        workdir, summary, PHASES.values()) if p.name not in redone]
    left = {k: v for k, v in summary.items()
            if not any(k in p.summary for p in redo)}
    workdir_lib.check_config(config, workdir, produced)
    phases_lib.validate_workdir(config, names, left)
    todo = [p.name for p in PHASES.values() if p.name in names
            and not p.finished(left) and p.wanted(config)]
    validate.validate_devices(config, jax.device_count(), todo)
    weights = preflight.check_weights(config, todo, workdir,
                                      workdir_lib.PRETRAINED)
    if produced and summary.get('weights', weights) != weights:
      raise workdir_lib.WorkdirError(
          f'{workdir} holds results computed from {summary["weights"]}; '
          f'this run would use {weights}: use a new --workdir')
    preflight.check_data(config, todo)  # sizes and labels: seconds
    if redo:  # before the setup, which reads pretrain's network
      logging.info('redo: removing the results of %s',
                   ', '.join(p.name for p in redo))
      summary = workdir_lib.remove(workdir, redo, summary)
    # The checkpoint and model checks.
    setup = phases_lib.make_setup(config, workdir)
    workdir_lib.save_config(config, workdir)
    if todo and summary.get('weights') != weights:
      summary = workdir_lib.record(workdir, {'weights': weights})
    for phase in PHASES.values():
      if phase.name not in names:
        continue
      if phase.name not in todo:
        logging.info('phase %s: finished earlier or not needed, skipped',
                     phase.name)
        continue
      logging.info('phase %s', phase.name)
      before, start = breakdown.snapshot(), time.perf_counter()
      try:
        results = phase.run(setup)
      except ckpt_lib.CheckpointError as e:  # the files it resumes from
        raise workdir_lib.WorkdirError(
            f'{e}; {workdir_lib.redo_hint(phase.name)}') from e
      record = results[phase.summary[0]]
      # A phase may add its own parts (the search: its steps' parts).
      record['breakdown'] = {**breakdown.since(
          before, time.perf_counter() - start), **record.get('breakdown', {})}
      # One write: the phase is done.
      summary = workdir_lib.record(workdir, results)
      if distributed.is_primary():  # process 0 reports and writes for all
        # One short line per entry; the whole record is in summary.json.
        for entry, record in results.items():
          print(f'{entry}: {report_lib.phase_cells(record, entry)}',
                flush=True)
    if distributed.is_primary():
      report = report_lib.write_report(workdir, summary, setup.gates)
      print(f'\n{report_lib.terminal_table(summary)}\n\nreport: {report}'
            f'\nsummary: {os.path.join(workdir, workdir_lib.SUMMARY)}',
            flush=True)
  return summary
