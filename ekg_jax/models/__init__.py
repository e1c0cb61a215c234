"""Model registry: a config's `model.name` -> a supernet module."""

from __future__ import annotations

from typing import Any, Callable

from ekg_jax.supernet.model import Supernet
from ekg_jax.models.mobilenet_v2 import MobileNetV2
from ekg_jax.models.resnet_cifar import CifarResNet
from ekg_jax.models.resnet_imagenet import ImageNetResNet
from ekg_jax.models.vgg_cifar import CifarVGG
from ekg_jax.models.vit_cifar import CifarViT

VIT_SIZES = {
    'vit_cifar': dict(depth=6, embed_dim=192, num_heads=3, mlp_ratio=2),
    'vit_tiny': dict(depth=12, embed_dim=192, num_heads=3, mlp_ratio=4),
    'vit_small': dict(depth=12, embed_dim=384, num_heads=6, mlp_ratio=4),
}

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
    # ViTs for 32x32 images, patch 4; an attribute given (e.g. depth=2)
    # overrides the named size. 'vit_cifar' is small enough for a CPU.
    'vit_cifar': lambda **kw: CifarViT(**{**VIT_SIZES['vit_cifar'], **kw}),
    'vit_tiny': lambda **kw: CifarViT(**{**VIT_SIZES['vit_tiny'], **kw}),
    'vit_small': lambda **kw: CifarViT(**{**VIT_SIZES['vit_small'], **kw}),
}


def create_model(name: str, **kwargs: Any) -> Supernet:
  """Builds a registered model; `kwargs` are `Supernet` attributes."""
  if name not in MODELS:
    raise ValueError(f'unknown model.name {name!r}; choose one of '
                     f'{sorted(MODELS)}')
  return MODELS[name](**kwargs)
