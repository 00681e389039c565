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
  config.model.name = "ResNet18"
  config.model.stem = "cifar"  # 3x3 stride-1 stem, no max-pool: 32x32 inputs stay 32x32.

  config.data.name = "cifar10"
  config.data.augment = True  # Pad-4 random crop and horizontal flip.

  config.batch_size = 256
  config.num_epochs = 200
  config.l2_regularization = 5e-4

  config.optimizer.name = "momentum"
  config.optimizer.learning_rate = 0.1
  config.schedule.name = "cosine"

  config.gnp.r = 0.05
  config.gnp.alpha = 0.8

  if arg == "smoke":
    _smoke(config)
  elif arg:
    config.model.name = arg
  return config


def _smoke(config):
  config.data.name = "digits"
  config.data.augment = False
  config.data.image_size = 8
  config.model.name = "ResNet18"
  config.batch_size = 32
  config.num_epochs = 1
  config.log_every_steps = 10
