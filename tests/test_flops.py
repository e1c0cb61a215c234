import pytest

from conftest import HiddenDenseNet
from ekg_jax import flops, gates
from ekg_jax.models import create_model


def resnet56_table():
  return gates.layer_table(create_model('resnet56'), (32, 32, 3))


def test_resnet56_flops_by_hand():
  # Multiply-accumulates, written out layer by layer:
  stem = 32 * 32 * 9 * 3 * 16
  stage0 = 9 * 2 * (32 * 32 * 9 * 16 * 16)
  stage1 = (16 * 16 * 9 * 16 * 32 + 16 * 16 * 9 * 32 * 32  # block 0
            + 16 * 16 * 1 * 16 * 32  # projection shortcut
            + 8 * 2 * (16 * 16 * 9 * 32 * 32))
  stage2 = (8 * 8 * 9 * 32 * 64 + 8 * 8 * 9 * 64 * 64 + 8 * 8 * 1 * 32 * 64
            + 8 * 2 * (8 * 8 * 9 * 64 * 64))
  fc = 64 * 10
  assert flops.count_flops(resnet56_table()) == (stem + stage0 + stage1 +
                                                 stage2 + fc) == 125_747_840


def test_resnet56_params_by_hand():
  convs = (3 * 3 * 3 * 16 + 18 * 3 * 3 * 16 * 16
           + 3 * 3 * 16 * 32 + 17 * 3 * 3 * 32 * 32 + 16 * 32
           + 3 * 3 * 32 * 64 + 17 * 3 * 3 * 64 * 64 + 32 * 64)
  fc = 64 * 10 + 10
  bn = 2 * (16 + 18 * 16 + 19 * 32 + 19 * 64)  # scale + offset
  assert flops.count_params(resnet56_table()) == convs + fc + bn == 855_770


def test_bn_term_is_optional():
  table = resnet56_table()
  bn = sum(2 * l.out_hw[0] * l.out_hw[1] * l.out_channels
           for l in table if l.kind == 'bn')
  assert flops.count_flops(table, include_bn=True) == (
      flops.count_flops(table) + bn)


def test_pruned_counts_follow_kept_channels():
  table = resnet56_table()
  full = flops.count_flops(table)
  # Halving one inner gate halves conv1's outputs and conv2's inputs.
  kept = {'stage0/block0': 8}
  assert flops.count_flops(table, kept) == full - 2 * (32 * 32 * 9 * 16 * 8)
  assert flops.flops_rate(table, kept) == pytest.approx(
      flops.count_flops(table, kept) / full)


def test_bad_kept_counts_are_rejected():
  table = resnet56_table()
  with pytest.raises(KeyError, match='unknown gates'):
    flops.count_flops(table, {'stage9': 3})
  with pytest.raises(ValueError, match="gate 'stage0' is 17; allowed 1..16"):
    flops.count_flops(table, {'stage0': 17})
  with pytest.raises(ValueError, match='is 0'):
    flops.count_flops(table, {'stage0': 0})


def test_dense_out_gate_and_a_new_layer_kind_are_counted():
  # HiddenDenseNet: 8 -> fc1 (6, BN) -> fc2 (5, ChannelScale) -> fc3 (10).
  table = gates.layer_table(HiddenDenseNet(), (8,))
  # ChannelScale's cost is 1 per channel, always counted; BN 2 per channel
  # only with include_bn.
  assert flops.count_flops(table) == 8 * 6 + 6 * 5 + 5 + 5 * 10
  kept = {'h1': 2, 'h2': 3}
  assert flops.count_flops(table, kept) == 8 * 2 + 2 * 3 + 3 + 3 * 10
  assert flops.count_flops(table, kept, include_bn=True) == (
      8 * 2 + 2 * 3 + 3 + 3 * 10 + 2 * 2)
  assert flops.count_params(table, kept) == (
      8 * 2 + 2 + 2 * 2 + 2 * 3 + 3 + 3 + 3 * 10 + 10)
