r"""ResNet-18 on CIFAR-10 with SGD-momentum and the gradient norm penalty.

The usual CIFAR recipe of SAM's and the GNP authors' code: batch 256, 200 epochs,
cosine decay, L2 5e-4, pad-crop-flip. r and alpha are starting points to tune
(Zhao, Zhang & Hu, ICML 2022, sweep both). Needs CIFAR-10 prepared by TFDS.

  python -m gnreg.main --config=configs/cifar10_resnet.py --workdir=runs/cifar10_resnet18 \
      --config.data.data_dir=$HOME/tensorflow_datasets

Arguments: `:smoke` trains a few steps on `digits` instead (offline); any other
argument names the ResNet (`:ResNet50`).
"""

from gnreg import configuration


def get_config(arg: str | None = None):
  config = configuration.base_config()
  config.model.name = "ResNet18"  # 11.2M parameters with a CIFAR stem.
  config.model.stem = "cifar"  # 3x3 stride-1 stem, no max-pool: 32x32 inputs stay 32x32.

  config.data.name = "cifar10"  # Read with TFDS from data.data_dir.
  config.data.augment = True  # Pad-4 random crop and horizontal flip.

  config.batch_size = 256  # Global batch, split over every device.
  config.num_epochs = 200  # The standard CIFAR length.
  config.l2_regularization = 5e-4  # Coupled L2 on the kernels.

  config.optimizer.name = "momentum"  # SGD with heavy-ball momentum 0.9.
  config.optimizer.learning_rate = 0.1  # Peak learning rate.
  config.schedule.name = "cosine"  # Cosine decay over the whole run.

  config.gnp.r = 0.05  # Perturbation radius; a starting point to tune.
  config.gnp.alpha = 0.8  # Weight of the perturbed gradient (lambda = alpha * r).

  if arg == "smoke":
    configuration.shrink_to_digits(config)
  elif arg:
    config.model.name = arg  # Any registered model, e.g. ':ResNet50'.
  return config
