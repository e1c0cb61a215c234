"""Model registry: a config's `model.name` -> a supernet module."""

from __future__ import annotations

from typing import Any, Callable

from ekg_jax.supernet.model import Supernet
from ekg_jax.models.mobilenet_v2 import MobileNetV2
from ekg_jax.models.resnet_cifar import CifarResNet
from ekg_jax.models.resnet_imagenet import ImageNetResNet
from ekg_jax.models.vgg_cifar import CifarVGG

MODELS: dict[str, Callable[..., Supernet]] = {
    'resnet20': lambda **kw: CifarResNet(depth=20, **kw),
    'resnet32': lambda **kw: CifarResNet(depth=32, **kw),
    'resnet56': lambda **kw: CifarResNet(depth=56, **kw),
    'resnet110': lambda **kw: CifarResNet(depth=110, **kw),
    'mobilenet_v2': lambda **kw: MobileNetV2(**kw),
    'resnet18': lambda **kw: ImageNetResNet(depth=18, **kw),
    'resnet34': lambda **kw: ImageNetResNet(depth=34, **kw),
    'resnet50': lambda **kw: ImageNetResNet(depth=50, **kw),
    'vgg16': lambda **kw: CifarVGG(**kw),
}


def create_model(name: str, **kwargs: Any) -> Supernet:
  """Builds a registered model; `kwargs` are `Supernet` attributes."""
  if name not in MODELS:
    raise ValueError(f'unknown model.name {name!r}; choose one of '
                     f'{sorted(MODELS)}')
  return MODELS[name](**kwargs)
