r"""VGG-16 with batch norm on ImageNet with SGD-momentum and the gradient norm penalty.

torchvision's VGG-BN recipe (SGD-momentum, lr 0.01 per 256 images, L2 1e-4, 90 epochs)
at the global batch of configs/imagenet_resnet.py: batch 1024 with the linearly scaled lr
0.04, 5 warmup epochs and cosine decay, label smoothing 0.1, inception crop and flip,
bfloat16 activations. r and alpha are starting points to tune.

  python -m gnreg.main --config=configs/imagenet_vgg.py --workdir=runs/vgg16bn \
      --config.data.data_dir=gs://bucket/tensorflow_datasets

Arguments (`configs/imagenet_vgg.py:ARG`, comma-separated, parsed by
`gnreg.configuration.parse_arg`):
  model=NAME  a registered model in place of VGG16BN, e.g. `model=VGG19BN`.
  smoke       a few steps of a VGG-BN with one convolution per stage on `digits` at 32x32.
"""

import ml_collections

from gnreg import configuration


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = configuration.parse_arg(arg, model="VGG16BN", smoke=False)
  config = configuration.base_config()
  config.model.name = arg.model

  config.data.name = "imagenet2012"
  config.data.augment = True  # Inception crop and horizontal flip.

  config.batch_size = 1024
  config.num_epochs = 90
  config.label_smoothing = 0.1
  config.l2_regularization = 1e-4
  config.half_precision = True  # For speed on GPU/TPU; parameters and updates stay float32.

  config.optimizer.name = "momentum"
  config.optimizer.learning_rate = 0.04  # Linear scaling of torchvision's 0.01 per 256.
  config.schedule.name = "cosine"
  config.schedule.warmup_epochs = 5.0  # Goyal et al.'s remedy for a large batch's first steps.

  config.gnp.r = 0.05  # A starting point: the paper sweeps r and alpha per network.
  config.gnp.alpha = 0.7

  config.log_every_steps = 100  # 1,251 steps an epoch: a line every 100 is enough.

  if arg.smoke:
    configuration.shrink_to_digits(config)
    config.data.image_size = 32  # Five 2x2 max-pools need at least 32x32 inputs.
    config.model.stage_sizes = (1, 1, 1, 1, 1)  # One convolution per stage: seconds to compile.
  return config
