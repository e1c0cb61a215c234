"""MobileNet-v2 on CIFAR-10 (poster: baseline 94.21, EKG 94.52).

CIFAR-100: --config=configs/mobilenetv2_cifar.py:cifar100 (poster: 76.07,
76.29). No pretrained MobileNet-v2 is shipped, so the pipeline pretrains it.
  python -m ekg_jax.main --config=configs/mobilenetv2_cifar.py --workdir=W
"""

from ekg_jax import config as config_lib


def get_config(dataset: str = 'cifar10'):
  config = config_lib.default_config()
  config.model.name = 'mobilenet_v2'
  config.data.name = dataset
  if dataset == 'cifar100':
    config.data.mean = config_lib.CIFAR100_MEAN
    config.data.std = config_lib.CIFAR100_STD
  else:
    config.data.mean = config_lib.CIFAR10_MEAN
    config.data.std = config_lib.CIFAR10_STD
  # The shared docs give no MobileNet-v2 FLOPs target (MobileNet-v2 is not
  # in the reference code): we use the ResNet-56 command's 0.45.
  config.search.target_flops_rate = 0.45
  # A common MobileNet-v2 CIFAR recipe (200 epochs, weight decay 4e-5); the
  # paper's baseline recipe is not in the shared docs.
  config.pretrain.epochs = 200
  config.pretrain.weight_decay = 4e-5
  return config
