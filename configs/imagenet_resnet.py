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
  config.model.name = "ResNet50"

  config.data.name = "imagenet2012"
  config.data.augment = True

  config.batch_size = 1024
  config.num_epochs = 90
  config.label_smoothing = 0.1
  config.l2_regularization = 1e-4
  config.half_precision = True

  config.optimizer.name = "momentum"
  config.optimizer.learning_rate = 0.4
  config.schedule.name = "cosine"
  config.schedule.warmup_epochs = 5.0

  config.gnp.r = 0.05
  config.gnp.alpha = 0.7

  config.log_every_steps = 100
  config.checkpoint_every_epochs = 1.0

  if arg == "smoke":
    config.model.name = "ResNet18"
    config.model.stem = "cifar"
    config.data.name = "digits"
    config.data.augment = False
    config.half_precision = False
    config.batch_size = 32
    config.num_epochs = 1
    config.schedule.warmup_epochs = 0.5
    config.log_every_steps = 10
  elif arg:
    config.model.name = arg
  return config
