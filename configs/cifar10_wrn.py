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
  config.model.name = "WideResNet_28_10"  # 36.5M parameters.

  config.data.name = "cifar10"  # Read with TFDS from data.data_dir.
  config.data.augment = True  # The dataset's standard training augmentation.

  config.batch_size = 256  # Global batch, split over every device.
  config.num_epochs = 200  # The standard CIFAR length.
  config.l2_regularization = 5e-4  # Coupled L2 on the kernels.

  config.optimizer.name = "momentum"  # SGD with heavy-ball momentum 0.9.
  config.optimizer.learning_rate = 0.1  # Peak learning rate.
  config.schedule.name = "cosine"  # Cosine decay over the whole run.

  config.gnp.r = 0.1  # Perturbation radius; a starting point to tune.
  config.gnp.alpha = 0.8  # Weight of the perturbed gradient (lambda = alpha * r).

  if arg == "smoke":
    configuration.shrink_to_digits(config)
    config.model.name = "WideResNet_16_4"  # 2.7M parameters: seconds to compile.
  elif arg:
    config.model.name = arg  # Any registered model, e.g. ':ResNet50'.
  return config
