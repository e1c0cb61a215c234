"""ResNet-56 on CIFAR-10, the paper's main setting (ekg_algorithm.md).

Every value is the reference code's; see ekg_jax/config.py for each key.
  python -m ekg_jax.main --config=configs/resnet56_cifar.py --workdir=W \
    --config.init_checkpoint=../shared/pretrained/ekg_official_resnet56_cifar10.pkl
"""

from ekg_jax import config as config_lib


def get_config():
  config = config_lib.default_config()
  config.model.name = 'resnet56'
  config.data.name = 'cifar10'
  config.search.target_flops_rate = 0.45  # reference command: ~55% removed
  return config
