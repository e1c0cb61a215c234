"""The whole pipeline in minutes: ResNet-20 on a CIFAR-10 subset, on CPU.

Pretrains the dense network (no init checkpoint), evaluates it, searches a
sub-network with half the FLOPs, builds the memory bank and fine-tunes the
slimmed network with ensemble knowledge. Small numbers everywhere, so the
accuracy is far from the paper's; the pipeline is the same.
  python -m ekg_jax.main --config=configs/quickstart.py --workdir=workdirs/quickstart
"""

from ekg_jax import config as config_lib


def get_config():
  config = config_lib.default_config()
  config.model.name = 'resnet20'
  config.data.name = 'cifar10'
  config.data.mean = config_lib.CIFAR10_MEAN  # a new network: usual stats
  config.data.std = config_lib.CIFAR10_STD
  config.data.train_split = 'train[:5000]'  # 10% of CIFAR-10
  config.data.test_split = 'test[:1000]'
  config.data.warmup_per_class = 64
  # Short schedules: each phase takes a minute or two on 2 CPU cores.
  config.pretrain.epochs = 6
  config.pretrain.lr_decay_epochs_fraction = (0.67,)
  config.search.target_flops_rate = 0.5
  config.finetune.epochs = 3  # the reference recipe's shape, compressed
  return config
