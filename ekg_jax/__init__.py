"""EKG filter pruning in JAX: the library API.

  (a) gates of a model:        layer_table, gate_specs
  (b) masks:                   masks_from_kept, ranks_from_scores
  (c) cost:                    count_flops, count_params, flops_rate
  (d) search with your data:   prune (any model following the gate protocol),
                               register (your own importance criterion)
  (e) physical pruning:        slim
  (f) ensemble knowledge:      build_memory_bank, finetune (from arrays;
                               BankOptions, TrainOptions, InputOptions)
The pipeline (pretrain, search, memory bank, fine-tuning) is `ekg_jax.main`.
"""

from ekg_jax.supernet.flops import count_flops, count_params, flops_rate
from ekg_jax.supernet.gates import (GateSpec, GatedBatchNorm, GatedConv,
                                    GatedDense, LayerSpec, gate_specs,
                                    layer_table, masks_from_kept,
                                    ranks_from_scores)
from ekg_jax.models import create_model
from ekg_jax.supernet.model import Supernet
from ekg_jax.search import Batches, SearchState, prune
from ekg_jax.search.importance import register
from ekg_jax.supernet.slimming import slim
from ekg_jax.knowledge.memory_bank import MemoryBank, build_memory_bank
from ekg_jax.knowledge.options import BankOptions
from ekg_jax.training.finetune import finetune
from ekg_jax.training.options import InputOptions, TrainOptions

__all__ = [
    'BankOptions', 'Batches', 'GateSpec', 'GatedBatchNorm', 'GatedConv',
    'GatedDense', 'InputOptions', 'LayerSpec', 'MemoryBank', 'SearchState',
    'Supernet', 'TrainOptions', 'build_memory_bank', 'count_flops',
    'count_params', 'create_model', 'finetune', 'flops_rate', 'gate_specs',
    'layer_table', 'masks_from_kept', 'prune', 'ranks_from_scores',
    'register', 'slim',
]
