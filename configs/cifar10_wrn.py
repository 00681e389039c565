r"""WideResNet-28-10 on CIFAR-10 with SGD-momentum and the gradient norm penalty.

The WRN recipe of SAM's and the GNP authors' code: batch 256, 200 epochs, cosine
decay, L2 5e-4, pad-crop-flip augmentation; r and alpha are starting points to tune.

  python -m gnreg.main --config=configs/cifar10_wrn.py --workdir=runs/cifar10_wrn28_10 \
      --config.data.data_dir=$HOME/tensorflow_datasets

Arguments: `:smoke` (a few steps of WRN-16-4 on `digits`, offline), or a registry
name such as `:WideResNet_16_4`.
"""

from gnreg import configuration


def get_config(arg: str | None = None):
  config = configuration.base_config()
  config.model.name = "WideResNet_28_10"

  config.data.name = "cifar10"
  config.data.augment = True

  config.batch_size = 256
  config.num_epochs = 200
  config.l2_regularization = 5e-4

  config.optimizer.name = "momentum"
  config.optimizer.learning_rate = 0.1
  config.schedule.name = "cosine"

  config.gnp.r = 0.1
  config.gnp.alpha = 0.8

  if arg == "smoke":
    config.model.name = "WideResNet_16_4"
    config.data.name = "digits"
    config.data.augment = False
    config.batch_size = 32
    config.num_epochs = 1
    config.log_every_steps = 10
  elif arg:
    config.model.name = arg
  return config
