"""ResNet-18/34/50 on ImageNet: --config=configs/resnet_imagenet.py:resnet50.

The ImageNet input pipeline is not built yet (another issue): these configs
load and validate, and name every value a run would use. Paper: ResNet-50
with about 45% of FLOPs removed and no accuracy drop.
"""

from ekg_jax import config as config_lib


def get_config(model: str = 'resnet50'):
  config = config_lib.default_config()
  config.model.name = model
  config.data.name = 'imagenet2012'
  config.data.image_size = 224
  config.data.mean = config_lib.IMAGENET_MEAN
  config.data.std = config_lib.IMAGENET_STD
  config.data.train_split = 'train'
  config.data.test_split = 'validation'
  config.data.eval_batch_size = 250
  config.search.target_flops_rate = 0.55  # ~45% removed (paper, ResNet-50)
  config.finetune.temperature = 10.0  # section 8: 10 for ImageNet
  # Standard ImageNet recipe for the dense network: 90 epochs, lr 0.1 per
  # 256 images, x0.1 at epochs 30 and 60 (He et al. 2016).
  config.pretrain.epochs = 90
  config.pretrain.batch_size = 256
  config.pretrain.lr_decay_epochs_fraction = (1 / 3, 2 / 3)
  return config
