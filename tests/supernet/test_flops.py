import pytest

from conftest import HiddenDenseNet
from ekg_jax.supernet import flops, gates
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


# The CIFAR VGG-16 configuration, written out here rather than read from
# the model: 'M' is a 2x2 max-pool.
VGG16_CFG = [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M',
             512, 512, 512, 'M', 512, 512, 512, 'M']


def vgg16_by_hand():
  """(MACs, parameters) of VGG-16 at 32x32: every 3x3 conv at its input's
  size (SAME padding, stride 1), BN on each conv, then fc1 512 -> 512 with
  BN and the classifier 512 -> 10, both with biases."""
  macs = params = 0
  size, c_in = 32, 3
  for v in VGG16_CFG:
    if v == 'M':
      size //= 2
      continue
    macs += size * size * 3 * 3 * c_in * v
    params += 3 * 3 * c_in * v + 2 * v  # kernel; BN scale + offset
    c_in = v
  macs += 512 * 512 + 512 * 10
  params += 512 * 512 + 512 + 2 * 512 + 512 * 10 + 10
  return macs, params


def test_vgg16_flops_by_hand():
  macs, params = vgg16_by_hand()
  # The same total, one term per resolution (32, 16, 8, 4, 2):
  assert macs == (32 * 32 * 9 * (3 * 64 + 64 * 64)
                  + 16 * 16 * 9 * (64 * 128 + 128 * 128)
                  + 8 * 8 * 9 * (128 * 256 + 2 * 256 * 256)
                  + 4 * 4 * 9 * (256 * 512 + 2 * 512 * 512)
                  + 2 * 2 * 9 * 3 * 512 * 512
                  + 512 * 512 + 512 * 10) == 313_463_808  # ~313M
  table = gates.layer_table(create_model('vgg16'), (32, 32, 3))
  assert flops.count_flops(table) == macs
  assert flops.count_params(table) == params == 14_987_722
  # Pruning the hidden layer's gate to k channels leaves k of fc1's
  # outputs and of the classifier's inputs.
  assert flops.count_flops(table, {'fc1': 100}) == (
      macs - 412 * 512 - 412 * 10)
  assert flops.count_params(table, {'fc1': 100}) == (
      params - 412 * (512 + 1 + 2 + 10))


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


def _imagenet_resnet_by_hand(blocks, bottleneck):
  """Multiply-accumulates of an ImageNet ResNet at 224 (torchvision's v1.5:
  the stride sits in the 3x3 conv), convs and the classifier, block by
  block."""
  total = 112 * 112 * 7 * 7 * 3 * 64  # stem; max-pool to 56x56
  size, cin = 56, 64
  for stage, count in enumerate(blocks):
    inner = 64 * 2 ** stage
    out = inner * 4 if bottleneck else inner
    for block in range(count):
      stride = 2 if stage > 0 and block == 0 else 1
      o = size // stride  # output side
      if bottleneck:
        total += (size * size * cin * inner + o * o * 9 * inner * inner
                  + o * o * inner * out)
      else:
        total += o * o * 9 * cin * inner + o * o * 9 * inner * out
      if cin != out or stride > 1:
        total += o * o * cin * out  # projection shortcut
      size, cin = o, out
  return total + cin * 1000


@pytest.mark.parametrize('name,blocks,bottleneck,published', [
    ('resnet18', (2, 2, 2, 2), False, 1_814_073_344),
    ('resnet50', (3, 4, 6, 3), True, 4_089_184_256)])
def test_imagenet_resnet_flops_by_hand(name, blocks, bottleneck, published):
  # `published`: torchvision's count of the same networks (1.81 / 4.09
  # GMACs), convolutions and classifier only.
  table = gates.layer_table(create_model(name), (224, 224, 3))
  by_hand = _imagenet_resnet_by_hand(blocks, bottleneck)
  assert flops.count_flops(table) == by_hand == published
