r"""ResNet-50 on ImageNet with SGD-momentum and the gradient norm penalty.

The standard ImageNet recipe (as in SAM's code): global batch 1024 over every
device of every host, 90 epochs, lr 0.4 with 5 warmup epochs and cosine decay,
L2 1e-4, label smoothing 0.1, inception crop and flip, bfloat16 activations.
r and alpha are starting points to tune.

  python -m gnreg.main --config=configs/imagenet_resnet.py --workdir=runs/r50 \
      --config.data.data_dir=gs://bucket/tensorflow_datasets

For a local copy laid out as one folder per class, add
`--config.data.name=imagenet_folder --config.data.data_dir=/data/imagenet`.
Arguments: a ResNet name (`:ResNet101`), or `:smoke` (a few steps on `digits`).
"""

from gnreg import configuration


def get_config(arg: str | None = None):
  config = configuration.base_config()
  config.model.name = "ResNet50"  # 25.6M parameters.

  config.data.name = "imagenet2012"  # Read with TFDS from data.data_dir (or imagenet_folder).
  config.data.augment = True  # The dataset's standard training augmentation.

  config.batch_size = 1024  # Global batch, split over every device.
  config.num_epochs = 90  # The standard ImageNet length.
  config.label_smoothing = 0.1  # Smoothed targets, as the ImageNet and ViT recipes use.
  config.l2_regularization = 1e-4  # Coupled L2 on the kernels.
  config.half_precision = True  # bfloat16 activations on GPU/TPU; float32 parameters.

  config.optimizer.name = "momentum"  # SGD with heavy-ball momentum 0.9.
  config.optimizer.learning_rate = 0.4  # Linear scaling: 0.1 per 256 images.
  config.schedule.name = "cosine"  # Cosine decay over the whole run.
  config.schedule.warmup_epochs = 5.0  # Linear warmup for the large batch.

  config.gnp.r = 0.05  # Perturbation radius; a starting point to tune.
  config.gnp.alpha = 0.7  # Weight of the perturbed gradient (lambda = alpha * r).

  config.log_every_steps = 100  # A train line every 100 steps.
  config.checkpoint_every_epochs = 1.0  # A checkpoint every epoch.

  if arg == "smoke":
    configuration.shrink_to_digits(config)
    config.model.name = "ResNet18"  # 11.2M parameters with a CIFAR stem.
    config.model.stem = "cifar"  # 3x3 stride-1 stem: 8x8 digits are not shrunk to 2x2.
  elif arg:
    config.model.name = arg  # Any registered model, e.g. ':ResNet50'.
  return config
