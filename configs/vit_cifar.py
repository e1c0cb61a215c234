"""A ViT on CIFAR-10 (`vit_cifar`: depth 6, width 192, 3 heads, MLP x2,
patch 4) with EKG: the search prunes attention heads and MLP units.

No pretrained ViT is shipped, so the pipeline pretrains it. The training
recipe is the usual one for ViTs, not the ResNets' Nesterov SGD: AdamW
(weight decay 0.05 on kernels and embeddings), a linear warm-up then a
cosine decay, label smoothing 0.1, gradient clipping at norm 1, and the
light augmentation every recipe here has (reflect pad 4 and crop, flip; the
two fine-tuning views also colour-jittered). The search, memory bank and
ensemble-knowledge distillation are EKG's as for every model; without
BatchNorm there is no BN warm-up (search.warmup False) and the criterion is
EKG's own score. See docs/gates.md#vision-transformers.
  python -m ekg_jax.main --config=configs/vit_cifar.py --workdir=W
A smaller ViT for a CPU: --config.model.architecture=depth=2,embed_dim=64
"""

from ekg_jax import config as config_lib


def vit_recipe(recipe, learning_rate: float, warmup_fraction: float):
  """AdamW, warm-up then cosine, label smoothing: ViT training."""
  recipe.optimizer = 'adamw'
  recipe.learning_rate = learning_rate
  recipe.weight_decay = 0.05
  recipe.adam_betas = (0.9, 0.999)
  recipe.lr_schedule = 'cosine'
  recipe.lr_warmup_fraction = warmup_fraction
  recipe.label_smoothing = 0.1
  recipe.clip_grad_norm = 1.0
  recipe.batch_size = 128


def get_config():
  config = config_lib.default_config()
  config.model.name = 'vit_cifar'
  config.data.name = 'cifar10'
  config.data.mean = config_lib.CIFAR10_MEAN
  config.data.std = config_lib.CIFAR10_STD
  # LayerNorm only: no BN warm-up, no BN-scale criterion (both refused).
  config.search.warmup = False
  config.search.criterion = 'ekg'
  config.search.target_flops_rate = 0.5
  # From scratch: 200 epochs, lr 1e-3 at batch 128, 10 warm-up epochs.
  config.pretrain.epochs = 200
  vit_recipe(config.pretrain, learning_rate=1e-3, warmup_fraction=0.05)
  # The slimmed network starts from trained weights: a quarter of the rate,
  # 100 epochs, 5 warm-up epochs, with the memory bank's knowledge.
  config.finetune.epochs = 100
  vit_recipe(config.finetune, learning_rate=2.5e-4, warmup_fraction=0.05)
  # No inference padding: a head gate's channel is a whole head (64 wide),
  # not a narrow convolution; padding would add back the pruned heads.
  config.export.pad_to = 1
  return config
