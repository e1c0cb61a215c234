"""ResNet-50 on ImageNet with EKG: the shared ImageNet recipe of
resnet_imagenet.py (sources in its comments), streamed with Grain.

  python -m ekg_jax.main --config=configs/resnet50_imagenet.py --workdir=W
"""

import importlib.util
import pathlib


def _shared():
  path = pathlib.Path(__file__).with_name('resnet_imagenet.py')
  spec = importlib.util.spec_from_file_location('resnet_imagenet', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config():
  config = _shared().get_config('resnet50')
  # Paper: about 45% of FLOPs removed with no accuracy drop.
  config.search.target_flops_rate = 0.55
  return config
