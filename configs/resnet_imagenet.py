"""ResNet-18/34/50 on ImageNet, the recipe they share (its sources are in
`ekg_jax.config.imagenet_config`):

  python -m ekg_jax.main --config=configs/resnet_imagenet.py:resnet50 --workdir=W

or the per-model files resnet18_imagenet.py, resnet34_imagenet.py,
resnet50_imagenet.py. ImageNet is streamed with Grain (docs/data.md).
"""

from ekg_jax import config as config_lib


def get_config(model: str = 'resnet50'):
  return config_lib.imagenet_config(model)
