r"""ResNet-50 on ImageNet with SGD-momentum and the gradient norm penalty.

The standard ImageNet recipe (as in SAM's code): global batch 1024 over every
device of every host, 90 epochs, lr 0.4 with 5 warmup epochs and cosine decay,
L2 1e-4, label smoothing 0.1, inception crop and flip, bfloat16 activations.
r and alpha are starting points to tune.

  python -m gnreg.main --config=configs/imagenet_resnet.py --workdir=runs/r50 \
      --config.data.data_dir=gs://bucket/tensorflow_datasets

For a local copy laid out as one folder per class, add
`--config.data.name=imagenet_folder --config.data.data_dir=/data/imagenet`.

Arguments (`configs/imagenet_resnet.py:ARG`, comma-separated, parsed by
`gnreg.configuration.parse_arg`):
  model=NAME  a registered model in place of ResNet50, e.g. `model=ResNet101`.
  smoke       a few steps of ResNet-18 on the embedded `digits`, offline.
"""

import ml_collections

from gnreg import configuration


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = configuration.parse_arg(arg, model="ResNet50", smoke=False)
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
  config.optimizer.learning_rate = 0.4  # Linear scaling: 0.1 per 256 images.
  config.schedule.name = "cosine"
  config.schedule.warmup_epochs = 5.0  # Goyal et al.'s remedy for a large batch's first steps.

  config.gnp.r = 0.05  # A starting point: the paper sweeps r and alpha per network.
  config.gnp.alpha = 0.7

  config.log_every_steps = 100  # 1,251 steps an epoch: a line every 100 is enough.

  if arg.smoke:
    configuration.shrink_to_digits(config)
    config.model.name = "ResNet18"
    config.model.stem = "cifar"  # A 7x7 stride-2 stem and max-pool would leave 8x8 digits 2x2.
  return config
