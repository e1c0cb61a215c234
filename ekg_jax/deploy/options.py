"""The export's options: one validated record that owns its rules, the
single source of the defaults of `config.py`'s `export` section."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from ekg_jax import rules
from ekg_jax.deploy.export import PLATFORMS


@dataclasses.dataclass(frozen=True)
class ExportOptions:
  """The fine-tuned network as deployable artifacts
  (ekg_jax/deploy/export.py): a jax.export program for these platforms, and
  widths + arrays; with onnx, also model.onnx (ekg_jax/deploy/export_onnx.py,
  needs the [onnx] extra)."""
  platforms: str = 'cpu,cuda,tpu'  # comma-separated
  onnx: bool = False
  # Inside model.jax only, gates narrower than this are widened to it with
  # zero channels (the same logits): XLA:CPU runs convolutions with fewer
  # than 8 output channels in slow emitted loops. The arrays, `load`,
  # model.onnx, FLOPs and parameters keep the real widths. 1: no padding
  # (configs/vit_cifar.py: a head gate's channel is a whole head).
  pad_to: int = 8

  def __post_init__(self):
    rules.check_record(self, RULES)

  @classmethod
  def from_config(cls, section: Mapping[str, Any]) -> 'ExportOptions':
    return cls(**{f.name: section[f.name] for f in dataclasses.fields(cls)})

  @property
  def platform_list(self) -> list[str]:
    return [p.strip() for p in self.platforms.split(',') if p.strip()]


def _platforms(v) -> Optional[str]:
  names = [p.strip() for p in str(v).split(',') if p.strip()]
  if not isinstance(v, str) or not names or not set(names) <= set(PLATFORMS):
    return (f'must be a comma-separated list of {", ".join(PLATFORMS)}'
            ' (jax.export platforms)')
  return None


def _onnx(v) -> Optional[str]:
  from ekg_jax.deploy import export_onnx  # its extra is checked, not loaded
  return rules.boolean(v) or (v and export_onnx.missing()) or None


RULES: dict[str, rules.Rule] = {'platforms': _platforms, 'onnx': _onnx,
                                'pad_to': rules.integer(1)}


def defaults() -> dict:
  """The keys of a config's `export` section."""
  return {f.name: f.default for f in dataclasses.fields(ExportOptions)}
