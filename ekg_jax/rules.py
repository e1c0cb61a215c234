"""Rules for option values, and the error that names a refused one.

A rule returns why a value is refused (None when it is fine); the caller
names the key. The options records (`search.options`, ...) and the whole-
config check (`run.validate`) are built from these. A leaf module: it
imports nothing of the package, so every layer may use it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional

import numpy as np


class ConfigError(ValueError):
  """A config value the toolkit refuses, named with what is allowed."""


def check_divides(batch_size: int, count: int, key: str,
                  over: str = 'devices') -> None:
  """Batches are split evenly over every device (or process)."""
  if batch_size % count:
    raise ConfigError(f'config.{key}={batch_size}: does not divide over the '
                      f'{count} {over}; use a multiple of {count}')


Rule = Callable[[Any], Optional[str]]


def check_record(record: Any, table: Mapping[str, Rule]) -> None:
  """An options record's fields against its rules (`table`: field -> rule),
  so the config file's rules hold for library calls too: the first field
  that breaks one is a ConfigError naming it, its value and why."""
  for name, rule in table.items():
    value = getattr(record, name)
    why = rule(value)
    if why:
      raise ConfigError(f'{name}={value!r}: {why}')


def is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def is_finite(v) -> bool:
  return (isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
          and math.isfinite(float(v)))


def choice(allowed) -> Rule:
  """One of `allowed`, read at check time (a registry can grow)."""
  return lambda v: None if v in allowed else (
      f'allowed: {", ".join(map(str, allowed))}')


def integer(low: int = 0) -> Rule:
  what = 'a positive integer' if low == 1 else f'an integer >= {low}'
  return lambda v: None if is_int(v) and v >= low else f'must be {what}'


def number(low=-math.inf, high=math.inf, low_open=False,
           high_open=False) -> Rule:
  if high == math.inf:
    span = f'{">" if low_open else ">="} {low}'
  else:
    left, right = '(' if low_open else '[', ')' if high_open else ']'
    span = f'in {left}{low}, {high}{right}'

  def rule(v):
    if not is_finite(v):
      return f'must be a finite number {span}'
    v = float(v)
    if v < low or v > high or (low_open and v == low) or (
        high_open and v == high):
      return f'must be {span}'
    return None
  return rule


def boolean(v) -> Optional[str]:
  return None if isinstance(v, bool) else 'must be True or False'


def text(v) -> Optional[str]:
  return None if isinstance(v, str) and v.strip() else (
      'must be a non-empty string')


def numbers(count: Optional[int], each: Rule, ordered=False) -> Rule:
  def rule(v):
    if not isinstance(v, (tuple, list)) or (count and len(v) != count):
      return (f'needs {count} values' if count else 'needs a list of values')
    for x in v:
      why = each(x)
      if why:
        return f'every value {why}'
    if ordered and list(v) != sorted(v):
      return 'needs (low, high) with low <= high'
    return None
  return rule



def existing(exists: Callable[[str], bool], what: str) -> Rule:
  """A path that is empty (not used) or names an existing `what`."""
  def rule(v):
    if not isinstance(v, str):
      return f'must be the path of a {what}'
    return f'no such {what}' if v and not exists(v) else None
  return rule
