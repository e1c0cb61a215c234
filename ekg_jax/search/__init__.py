"""EKG sub-network search (ekg_algorithm.md sections 3-5):

- `options`: `SearchConfig`, the validated options and their defaults;
- `inputs`: what the search takes (`PrunableModel`, `Batches`);
- `importance`: the channel-importance criteria, entries of a table;
- `teacher`: the ensemble, single and no-teacher modes (section 5);
- `marking`: rates, kept counts, removal costs and trimmed-Otsu marking
  (host-side arithmetic, as the reference computes it);
- `evaluate`: the compiled scoring of sub-networks, its strategies (vmap,
  prefix, segments, loop) entries of a table;
- `state`: `SearchState`, an immutable record, and its file;
- `greedy`: the greedy loop, the uniform baseline and `prune`;
- `warmup`, `landscape`: the BN warm-up before the search, and the loss
  landscape measures of a searched network.
"""

from ekg_jax.search.evaluate import STRATEGIES, Evaluator
from ekg_jax.search.greedy import (ALLOCATIONS, SearchError, SearchProblem,
                                   done, init_state, prune, run_search,
                                   search_step, uniform_allocation)
from ekg_jax.search.inputs import Batches, PrunableModel
from ekg_jax.search.marking import (MARKINGS, candidate_rate, kept_count,
                                    kept_from_rates, mark_candidates,
                                    otsu_threshold, per_channel_cost,
                                    reference_cost, step_size)
from ekg_jax.search.options import (EVALUATIONS, SearchConfig,
                                    resolve_evaluation)
from ekg_jax.search.state import (HistoryEntry, SearchState, history_entry,
                                  load_state, save_state)

__all__ = [
    'ALLOCATIONS', 'Batches', 'EVALUATIONS', 'Evaluator', 'HistoryEntry',
    'MARKINGS', 'PrunableModel', 'STRATEGIES', 'SearchConfig', 'SearchError',
    'SearchProblem', 'SearchState', 'candidate_rate', 'done',
    'history_entry', 'init_state', 'kept_count', 'kept_from_rates',
    'load_state', 'mark_candidates', 'otsu_threshold', 'per_channel_cost',
    'prune', 'reference_cost', 'resolve_evaluation', 'run_search',
    'save_state', 'search_step', 'step_size', 'uniform_allocation']
