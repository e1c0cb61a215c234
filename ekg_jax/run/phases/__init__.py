"""The pipeline's phases, each `(Setup) -> {summary key: results}`:
`common` (what every phase needs), `training` (pretrain, evaluate,
finetune, export) and `searching` (search, landscape, memory_bank)."""

from typing import Callable

from ekg_jax.run.phases.common import (Setup, build_model, class_subset,
                                       init_variables, input_shape, make_setup)
from ekg_jax.run.phases.searching import (landscape_phase, memory_bank_phase,
                                          search_phase)
from ekg_jax.run.phases.training import (evaluate_phase, export_phase,
                                         finetune_phase, pretrain_phase)

# Phase name -> (the summary key that marks it finished, the phase).
PHASES: dict[str, tuple[str, Callable[[Setup], dict]]] = {
    'pretrain': ('pretrain', pretrain_phase),
    'evaluate': ('base', evaluate_phase),
    'search': ('search', search_phase),
    'landscape': ('landscape', landscape_phase),
    'memory_bank': ('memory_bank', memory_bank_phase),
    'finetune': ('finetune', finetune_phase),
    'export': ('export', export_phase),
}

__all__ = ['PHASES', 'Setup', 'build_model', 'class_subset',
           'init_variables', 'input_shape', 'make_setup']
