"""ResNet-50 on ImageNet with EKG, streamed with Grain: the shared ImageNet
recipe (`ekg_jax.config.imagenet_config`, sources in its comments).

  python -m ekg_jax.main --config=configs/resnet50_imagenet.py --workdir=W
"""

from ekg_jax import config as config_lib


def get_config():
  # Paper: about 45% of FLOPs removed with no accuracy drop (target 0.55).
  return config_lib.imagenet_config('resnet50')
