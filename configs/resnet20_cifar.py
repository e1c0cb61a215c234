"""ResNet-20 on CIFAR-10: a small model for quick experiments."""

from ekg_jax import config as config_lib


def get_config():
  config = config_lib.default_config()
  config.model.name = 'resnet20'
  config.data.name = 'cifar10'
  return config
