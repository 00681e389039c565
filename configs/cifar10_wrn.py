r"""WideResNet-28-10 on CIFAR-10 with the gradient norm penalty, as the GNP authors train it.

Zhao, Zhang & Hu (ICML 2022), the CIFAR-10 WRN-28-10 of the authors' `recipes/wideresnet-cifar.sh`
(github.com/zhaoyang-0204/gnp), on their WRN (`WideResNet_28_10_GNP`: SAM's WRN, shortcuts by
average pooling and zero-padding, 36,220,634 parameters): batch 256, 200 epochs of SGD with
Nesterov momentum, lr 0.1 with cosine decay, L2 1e-3 on every parameter, crop and flip, r 0.1,
alpha 0.8; the rest is `configuration.follow_gnp_authors`. Differences from their run:
recipes/README.md.

  python -m gnreg.main --config=configs/cifar10_wrn.py --workdir=runs/cifar10_wrn28_10 \
      --config.data.data_dir=$HOME/tensorflow_datasets

Arguments (`configs/cifar10_wrn.py:ARG`, comma-separated, parsed by
`gnreg.configuration.parse_arg`):
  model=NAME  a registered model in place of WideResNet_28_10_GNP, e.g.
              `model=WideResNet_28_10` (1x1-convolution shortcuts).
  smoke       a few steps of WRN-16-4 on the embedded `digits`, offline.
"""

import ml_collections

from gnreg import configuration


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = configuration.parse_arg(arg, model="WideResNet_28_10_GNP", smoke=False)
  config = configuration.base_config()
  configuration.follow_gnp_authors(config)
  config.model.name = arg.model

  config.data.name = "cifar10"
  config.data.augment = True  # Pad-4 random crop and horizontal flip, their 'basic'.

  config.batch_size = 256
  # m, the examples each perturbation and BatchNorm statistic covers: the per-device batch of the
  # authors' runs, 256 over the four GPUs their scripts name (recipes/README.md).
  config.batch_group_size = 64
  config.num_epochs = 200
  config.l2_regularization = 1e-3

  config.optimizer.name = "momentum"
  config.optimizer.learning_rate = 0.1

  config.gnp.r = 0.1
  config.gnp.alpha = 0.8

  if arg.smoke:
    configuration.shrink_to_digits(config)
    config.model.name = "WideResNet_16_4_GNP"  # The smallest WRN compiles in seconds on a CPU.
  return config
