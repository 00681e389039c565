r"""WideResNet-28-10 on CIFAR-10 with SGD-momentum and the gradient norm penalty.

The WRN recipe of SAM's and the GNP authors' code: batch 256, 200 epochs, cosine
decay, L2 5e-4, pad-crop-flip augmentation; r and alpha are starting points to tune.

  python -m gnreg.main --config=configs/cifar10_wrn.py --workdir=runs/cifar10_wrn28_10 \
      --config.data.data_dir=$HOME/tensorflow_datasets

Arguments (`configs/cifar10_wrn.py:ARG`, comma-separated, parsed by
`gnreg.configuration.parse_arg`):
  model=NAME  a registered model in place of WideResNet_28_10, e.g. `model=WideResNet_16_8`.
  smoke       a few steps of WRN-16-4 on the embedded `digits`, offline.
"""

import ml_collections

from gnreg import configuration


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = configuration.parse_arg(arg, model="WideResNet_28_10", smoke=False)
  config = configuration.base_config()
  config.model.name = arg.model

  config.data.name = "cifar10"
  config.data.augment = True  # Pad-4 random crop and horizontal flip.

  config.batch_size = 256
  config.num_epochs = 200
  config.l2_regularization = 5e-4

  config.optimizer.name = "momentum"
  config.optimizer.learning_rate = 0.1
  config.schedule.name = "cosine"

  config.gnp.r = 0.1  # A starting point: the paper sweeps r and alpha per network.
  config.gnp.alpha = 0.8

  if arg.smoke:
    configuration.shrink_to_digits(config)
    config.model.name = "WideResNet_16_4"  # The smallest WRN compiles in seconds on a CPU.
  return config
