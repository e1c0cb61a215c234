"""The default configuration: every hyper-parameter of ekg_algorithm.md.

Config files in `configs/` start from `default_config()` and change what
their setting needs, big_vision style. Values are the reference code's for
ResNet-56 on CIFAR-10 unless a comment says otherwise.
"""

from __future__ import annotations

import ml_collections

from ekg_jax.rules import ConfigError  # noqa: F401  (config files catch it)
from ekg_jax.deploy import options as export_options
from ekg_jax.knowledge import options as bank_options
from ekg_jax.search import options as search_options
from ekg_jax.training import options as training_options


# The reference code's per-channel statistics, applied to R, G, B in this
# order (shared README): the official checkpoint was trained with them.
REFERENCE_MEAN = (113.9, 123.0, 125.3)
REFERENCE_STD = (66.7, 62.1, 63.0)
# The usual CIFAR-10 RGB statistics.
CIFAR10_MEAN = (125.3, 123.0, 113.9)
CIFAR10_STD = (63.0, 62.1, 66.7)
# The usual CIFAR-100 RGB statistics.
CIFAR100_MEAN = (129.3, 124.1, 112.4)
CIFAR100_STD = (68.2, 65.4, 70.4)
# ImageNet RGB statistics, as the authors' dataloader/ILSVRC.py has them.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

PHASES = ('pretrain', 'evaluate', 'search', 'landscape', 'memory_bank',
          'finetune', 'export')
# What a run does unless config.phases says otherwise: 'landscape' (Hessian
# measures of the searched network, minutes) runs only when asked for.
DEFAULT_PHASES = ('pretrain', 'evaluate', 'search', 'memory_bank',
                  'finetune', 'export')


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # initialisation, data order, augmentation, the random criterion
  # Comma-separated phases, run in pipeline order; finished ones are skipped
  # on a rerun. 'pretrain' runs only without init_checkpoint; 'evaluate'
  # measures the dense network on the test split.
  c.phases = ','.join(DEFAULT_PHASES)
  # Comma-separated phases to compute again ('' = none): their results, and
  # those of the phases computed from them, are removed from the workdir,
  # then they run with config.phases. The way out of a damaged result.
  c.redo = ''
  # The official `.pkl` or a checkpoint directory written by this project.
  c.init_checkpoint = ''
  c.quiet = False  # no progress bars (CI logs)
  # Decoded splits and compiled programs kept between runs
  # (ekg_jax/files/cache.py): 'auto' = $EKG_JAX_CACHE or ~/.cache/ekg_jax;
  # '' = none.
  c.cache_dir = 'auto'
  # Multi-host: call jax.distributed.initialize() first (its settings come
  # from the cluster environment, e.g. Cloud TPU or SLURM); the data mesh
  # then spans every host's devices.
  c.distributed = False

  c.model = ml_collections.ConfigDict()
  c.model.name = 'resnet56'  # a registered model (ekg_jax/models)
  # Overrides of the registered size's architecture attributes, as
  # 'name=value,...' (a ViT's depth, embed_dim, num_heads, mlp_ratio,
  # patch_size, pool; e.g. 'depth=2,embed_dim=32'); '' = the size as named.
  c.model.architecture = ''
  c.model.renormalize = True  # section 7: rescale pruned kernels' L2 norm
  c.model.straight_through = True  # section 3: dx = dy through the gates
  c.model.bn_momentum = 0.9  # of the running statistics
  c.model.bn_epsilon = 1e-5  # shared README: BN epsilon of the checkpoint
  c.model.dtype = 'float32'  # compute dtype: 'float32' | 'bfloat16'

  c.data = ml_collections.ConfigDict()
  c.data.name = 'cifar10'  # a prepared TFDS dataset
  c.data.data_dir = ''  # '' = $TFDS_DATA_DIR, else TFDS's default
  c.data.train_split = 'train'  # a TFDS split; slices ('train[:5000]') work
  c.data.test_split = 'test'  # likewise
  c.data.image_size = 32  # the model's input side (CIFAR: 32, ImageNet: 224)
  c.data.mean = REFERENCE_MEAN  # per channel, R, G, B, on the 0-255 scale
  c.data.std = REFERENCE_STD  # likewise
  c.data.val_per_class = 32  # search validation: last 32 train images/class
  c.data.warmup_per_class = 256  # warm-up: first 256 train images/class
  c.data.subset_seed = 1  # np.random.seed(1); np.random.shuffle(idx)
  c.data.eval_batch_size = 500  # test-split evaluation (clamped to the split)
  # How images reach the steps (ekg_jax/training/input_pipeline.py):
  # 'memory' (splits decoded once, the train split on the device; CIFAR) or
  # 'grain' (streamed: ImageNet and other datasets of any size).
  c.data.pipeline = 'memory'
  # 'grain' only: decoding worker processes (0 = threads of this process),
  # batches put on the devices ahead of the step, and the train crop
  # (Inception-style random-resized crop: area fraction, aspect ratio).
  c.data.decode_workers = 0
  c.data.prefetch = 2  # batches
  c.data.crop_scale = (0.08, 1.0)  # area fraction
  c.data.crop_ratio = (3 / 4, 4 / 3)  # aspect ratio

  c.augment = ml_collections.ConfigDict()  # section 8
  c.augment.pad = 4  # reflect pad, then random crop back to image_size
  c.augment.color_jitter = True  # brightness, contrast, saturation; 2 views
  c.augment.contrast = (0.8, 1.2)  # factor range
  c.augment.saturation = (0.8, 1.2)  # factor range
  # Shift on the 0-255 scale: the reference's tf.image.random_brightness(x,
  # 0.2) on 0-255 pixels, i.e. in effect none.
  c.augment.brightness = 0.2

  c.warmup = ml_collections.ConfigDict()  # section 1.2 (on: search.warmup)
  c.warmup.batch_size = 256
  c.warmup.learning_rate = 1e-3  # one pass over the warm-up images, in order
  c.warmup.momentum = 0.9  # Nesterov
  c.warmup.weight_decay = 5e-4  # added to every gradient, BN included
  c.warmup.loss_divisor = 128  # quirk: summed CE / 128 on batches of 256

  # Sections 3-5. The options and their defaults (with what each means) are
  # `search.SearchConfig`'s, the ones `prune` takes; the pipeline adds the
  # validation batch size and the warm-up switch.
  c.search = ml_collections.ConfigDict(search_options.defaults())
  c.search.batch_size = 256  # validation batches (objective: sum / this)
  c.search.warmup = True  # run the warm-up before the search

  # Loss-landscape measures of the searched network (phase 'landscape';
  # ekg_jax/search/landscape.py): Lanczos on Hessian-vector products,
  # Hutchinson's trace, loss slices along filter-normalised directions, on
  # the search's validation batches.
  c.landscape = ml_collections.ConfigDict()
  # At most (see the tolerance); 20 with the defaults below take ~4 minutes
  # for the searched ResNet-56 on 2 CPU cores.
  c.landscape.lanczos_iterations = 20
  # 0: exactly lanczos_iterations steps; > 0: stop once lambda_min moves by
  # at most this fraction of itself per step, two steps running.
  c.landscape.lanczos_tolerance = 0.0
  c.landscape.num_eigenvalues = 3  # the top ones, besides the most negative
  c.landscape.trace_samples = 20  # Hutchinson's Rademacher vectors
  c.landscape.slice_points = 21  # along each 1-D slice
  c.landscape.grid_points = 9  # per side of the 2-D grid
  c.landscape.bn = 'batch'  # 'batch' (as the search) | 'running'
  c.landscape.seed = 0  # Lanczos' start vector, the trace's, the slices'
  # 0: the search's validation batches; k >= 1: the k-th disjoint subset of
  # as many train images, held out from the search (repeats of the measure).
  c.landscape.subset = 0

  # Section 6. The options and their defaults (with what each means) are
  # `knowledge.BankOptions`', the ones `ekg_jax.build_memory_bank` takes.
  c.memory_bank = ml_collections.ConfigDict(bank_options.defaults())

  # The fine-tuned network as deployable artifacts (ekg_jax/deploy/export.py): a
  # jax.export program for these platforms, and widths + arrays; with onnx,
  # also model.onnx (ekg_jax/deploy/export_onnx.py, needs the [onnx] extra).
  # The options and their defaults are `deploy.ExportOptions`'.
  c.export = ml_collections.ConfigDict(export_options.defaults())

  # Plain supervised training of the dense network, run only when there is
  # no init_checkpoint. The usual CIFAR ResNet recipe (He et al. 2016: lr
  # 0.1, x0.1 at 50% and 75% of 164 epochs, weight decay 1e-4, batch 128),
  # one augmented view, cross-entropy.
  c.pretrain = training_recipe(epochs=164, learning_rate=0.1,
                               lr_decay_epochs_fraction=(0.5, 0.75))

  # Section 8: the reference pipeline's recipe (train_cifar.py: lr 0.01,
  # x0.2 at 30/60/80% of 100 epochs, weight decay 5e-4), two views in one
  # batch, ensemble distillation.
  c.finetune = training_recipe(epochs=100, learning_rate=0.01,
                               lr_decay_epochs_fraction=(0.3, 0.6, 0.8),
                               lr_decay_factor=0.2, weight_decay=5e-4)
  c.finetune.knowledge = 'ensemble'  # 'ensemble' | 'single' | 'none'
  # Augmented views per image in one batch: 0 follows the reference (two
  # colour-jittered views with knowledge, one plain view without); 1 or 2
  # sets it apart from the knowledge, e.g. the two-view control without it.
  c.finetune.views = 0
  # The network to fine-tune: 'search' (the search's kept channels),
  # 'dense' (nothing pruned: the baseline), or a .json kept-channels file
  # {gate: [kept channel indices]} (gates not named stay dense) standing in
  # for the search, e.g. another tool's pruning carried over.
  c.finetune.masks = 'search'
  c.finetune.temperature = 4.0  # 4 for CIFAR, 10 for ImageNet
  return c


def imagenet_config(model: str) -> ml_collections.ConfigDict:
  """ResNet-18/34/50 on ImageNet with EKG, streamed with Grain (the
  prepared TFDS `imagenet2012` needs a manual download: docs/data.md).
  Paper: ResNet-50 with about 45% of FLOPs removed, no accuracy drop."""
  config = default_config()
  config.model.name = model
  config.data.name = 'imagenet2012'
  config.data.pipeline = 'grain'
  config.data.decode_workers = 8  # results do not depend on it (tested)
  config.data.image_size = 224
  # The authors' dataloader/ILSVRC.py: its statistics on R, G, B, and
  # evaluation on the shorter side resized to 256 and the centre 224x224.
  config.data.mean, config.data.std = IMAGENET_MEAN, IMAGENET_STD
  config.data.train_split = 'train'
  config.data.test_split = 'validation'
  config.data.eval_batch_size = 250  # the authors' val_batch_size
  # The search's subsets (section 5) per class. Our choice (the authors'
  # code has no ImageNet search): the validation batches live on the device
  # as float32, so 32 per class (CIFAR's) would be 32,000 images, 19 GB;
  # 3 per class is 3,000 images (1.8 GB). Warm-up: 10 per class.
  config.data.val_per_class = 3
  config.data.warmup_per_class = 10
  config.search.target_flops_rate = 0.55  # ~45% removed (paper, ResNet-50)
  # Fine-tuning: the authors' train.py defaults (their repository has no
  # ImageNet fine-tuning script): lr 0.05, x0.1 at 30/60/90% of 100 epochs,
  # weight decay 1e-4, batch 256; section 8's temperature for ImageNet.
  config.finetune.epochs = 100
  config.finetune.batch_size = 256
  config.finetune.learning_rate = 0.05
  config.finetune.lr_decay_epochs_fraction = (0.3, 0.6, 0.9)
  config.finetune.lr_decay_factor = 0.1
  config.finetune.weight_decay = 1e-4
  config.finetune.temperature = 10.0
  # Standard ImageNet recipe for the dense network: 90 epochs, lr 0.1 per
  # 256 images, x0.1 at epochs 30 and 60 (He et al. 2016).
  config.pretrain.epochs = 90
  config.pretrain.batch_size = 256
  config.pretrain.lr_decay_epochs_fraction = (1 / 3, 2 / 3)
  return config


def training_recipe(epochs: int, learning_rate: float,
                    lr_decay_epochs_fraction: tuple,
                    lr_decay_factor: float = 0.1,
                    weight_decay: float = 1e-4) -> ml_collections.ConfigDict:
  """The keys every training phase (pretrain, finetune) has: the recipe of
  `training.TrainOptions` (its fields say what each means), with these
  values in place of its defaults."""
  r = ml_collections.ConfigDict(training_options.recipe_defaults())
  r.update(epochs=epochs, learning_rate=learning_rate,
           lr_decay_epochs_fraction=lr_decay_epochs_fraction,
           lr_decay_factor=lr_decay_factor, weight_decay=weight_decay)
  return r


def model_kwargs(config: ml_collections.ConfigDict, num_classes: int) -> dict:
  """Supernet attributes from a config."""
  import jax.numpy as jnp
  m = config.model
  return dict(num_classes=num_classes, renormalize=m.renormalize,
              straight_through=m.straight_through, bn_momentum=m.bn_momentum,
              bn_epsilon=m.bn_epsilon,
              dtype=None if m.dtype == 'float32' else jnp.dtype(m.dtype),
              **parse_architecture(m.get('architecture', '')))


def parse_architecture(text: str) -> dict:
  """'depth=2,pool=mean' -> {'depth': 2, 'pool': 'mean'} (integers where
  a value is one); ValueError names a malformed item."""
  out = {}
  for item in (i.strip() for i in text.split(',')):
    if not item:
      continue
    name, eq, value = (p.strip() for p in item.partition('='))
    if not eq or not name.isidentifier() or not value:
      raise ValueError(f'{item!r} is not name=value')
    out[name] = int(value) if value.lstrip('-').isdigit() else value
  return out
