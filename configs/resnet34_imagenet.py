"""ResNet-34 on ImageNet with EKG, streamed with Grain: the shared ImageNet
recipe (`ekg_jax.config.imagenet_config`, sources in its comments).

  python -m ekg_jax.main --config=configs/resnet34_imagenet.py --workdir=W
"""

from ekg_jax import config as config_lib


def get_config():
  # The paper reports ImageNet numbers for ResNet-50 only; ResNet-34 takes
  # its FLOPs target (0.55).
  return config_lib.imagenet_config('resnet34')
