"""The search state: an immutable record that stores each fact once, and
its file (atomic writes, the previous copy kept)."""

from __future__ import annotations

import dataclasses
import json
from typing import Mapping, Optional, Sequence, TypedDict

import jax
import jax.numpy as jnp
import numpy as np

from ekg_jax.files import checkpoint
from ekg_jax.supernet import gates as gates_lib
from ekg_jax.search import teacher as teacher_lib


class HistoryEntry(TypedDict):
  """One accepted network (entry 0: the dense start). A dict, so the
  history is the JSON the summary and the memory bank read."""
  step: int
  gate: Optional[str]  # the gate this step shrank (None: the start)
  kept: dict[str, int]
  val_loss: float
  val_accuracy: float
  objective: float
  flops_rate: float
  flops: int
  candidates: int
  seconds: float
  # Where the step's seconds went (0 for the start): the importance pass
  # (with the segment inputs it keeps), the candidates' evaluation, and the
  # rest is host work (ranking, marking, FLOPs arithmetic, teacher update).
  importance_seconds: float
  candidates_seconds: float


def history_entry(step, gate, kept, result, flops_rate, flops, candidates,
                  seconds, importance_seconds=0.0,
                  candidates_seconds=0.0) -> HistoryEntry:
  return HistoryEntry(step=step, gate=gate, kept=dict(kept),
                      val_loss=float(result['loss']),
                      val_accuracy=float(result['accuracy']),
                      objective=float(result['objective']),
                      flops_rate=flops_rate, flops=flops,
                      candidates=candidates, seconds=round(seconds, 3),
                      importance_seconds=round(importance_seconds, 3),
                      candidates_seconds=round(candidates_seconds, 3))


@dataclasses.dataclass(frozen=True)
class SearchState:
  """Everything a resumed search needs. `rates` is where the search stands
  (floats: the next step's arithmetic needs them; kept counts follow from
  them). `history[i]` records accepted network i and `ranks_history[i]` its
  channel ranks (its masks are `rank < kept`), which the memory bank reads.
  The step, the current ranks and kept counts are read off the last
  entries, not stored again."""
  rates: Mapping[str, float]
  teacher: teacher_lib.Teacher
  history: tuple[HistoryEntry, ...]
  ranks_history: tuple[Mapping[str, np.ndarray], ...]

  @property
  def step(self) -> int:
    return self.history[-1]['step']

  @property
  def ranks(self) -> Mapping[str, np.ndarray]:
    """Channel ranks of the current network."""
    return self.ranks_history[-1]

  @property
  def kept(self) -> dict[str, int]:
    """Kept channels per gate of the current network."""
    return dict(self.history[-1]['kept'])

  def masks(self, index: int = -1) -> dict[str, jax.Array]:
    """0/1 masks of history entry `index` (default: the current network)."""
    return gates_lib.masks_from_kept(self.history[index]['kept'],
                                     self.ranks_history[index])

  def accept(self, rates: Mapping[str, float], ranks, teacher,
             entry: HistoryEntry) -> 'SearchState':
    """The state after accepting the network `entry` records."""
    return SearchState(dict(rates), teacher, (*self.history, entry),
                       (*self.ranks_history, ranks))


def save_state(path: str, state: SearchState,
               gate_names: Sequence[str]) -> None:
  arrays = {'teacher_logits': np.asarray(state.teacher.logits),
            'teacher_count': np.asarray(state.teacher.count),
            'rates': np.asarray([state.rates[g] for g in gate_names]),
            'step': np.asarray(state.step),
            'history': np.asarray(json.dumps(state.history))}
  for i, ranks in enumerate(state.ranks_history):
    arrays[f'ranks_{i}'] = np.concatenate([ranks[g] for g in gate_names])
  checkpoint.write_npz_atomic(path, **arrays)


def load_state(path: str, specs) -> SearchState:
  """The newest readable state (the previous one if the newest is
  damaged)."""
  return checkpoint.read_npz_with_fallback(
      path, lambda p: _read_state(p, specs))


def _read_state(path: str, specs) -> SearchState:
  names = list(specs)
  with np.load(path) as z:
    history = json.loads(str(z['history']))
    bounds = np.cumsum([0] + [specs[g].channels for g in names])
    ranks_history = [
        {g: z[f'ranks_{i}'][a:b].astype(np.int32)
         for g, a, b in zip(names, bounds[:-1], bounds[1:])}
        for i in range(len(history))]
    state = SearchState(
        rates={g: float(r) for g, r in zip(names, z['rates'])},
        teacher=teacher_lib.Teacher(jnp.asarray(z['teacher_logits']),
                                    jnp.asarray(z['teacher_count'])),
        history=tuple(history), ranks_history=tuple(ranks_history))
    step = int(z['step'])
  if state.step != step:  # the file is not one this module wrote
    raise checkpoint.CheckpointError(
        f'{path}: step {step}, but its history ends at {state.step}')
  return state

