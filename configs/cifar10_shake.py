r"""Shake-Shake 26 2x96d or PyramidNet-272 (alpha 200) + ShakeDrop on CIFAR-10, with GNP.

Zhao, Zhang & Hu (ICML 2022), the shake-regularised CIFAR-10 networks as the GNP authors
train them (github.com/zhaoyang-0204/gnp), 1800 epochs of SGD with Nesterov momentum and
cosine decay, r 0.1, alpha 0.8, the rest `configuration.follow_gnp_authors`:

* `variant=shake_shake`, their `recipes/wideresnet-ss-cifar.sh`: WideResNet_2_96_ShakeShake,
  batch 256, lr 0.1, L2 1e-3, crop and flip only;
* `variant=shakedrop`, their `recipes/pyramidnet-sd-cifar.sh`: their PyramidNet
  (`PyramidNet_272_200_ShakeDrop_GNP`, widths rounded), batch 128, lr 0.05, L2 5e-4,
  AutoAugment (CIFAR-10 policy) and their 'mixcut': Mixup (alpha 1) and Cutout 16.

Differences from their runs: recipes/README.md. Needs CIFAR-10 prepared by TFDS.

  python -m gnreg.main --config=configs/cifar10_shake.py:variant=shakedrop \
      --workdir=runs/cifar10_pyramidnet272_shakedrop \
      --config.data.data_dir=$HOME/tensorflow_datasets

Arguments (`configs/cifar10_shake.py:ARG`, comma-separated, parsed by
`gnreg.configuration.parse_arg`):
  variant=shake_shake|shakedrop  the network and its recipe, as above (default shake_shake).
  smoke                          a few steps of a one-block-per-stage version on `digits`.
e.g. `configs/cifar10_shake.py:variant=shakedrop,smoke`.
"""

import ml_collections

from gnreg import configuration


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = configuration.parse_arg(arg, variant=("shake_shake", "shakedrop"), smoke=False)
  config = configuration.base_config()
  configuration.follow_gnp_authors(config)
  config.model.name = "WideResNet_2_96_ShakeShake"

  config.data.name = "cifar10"
  config.data.augment = True  # Pad-4 random crop and horizontal flip, their 'basic'.

  config.batch_size = 256
  # m, the examples each perturbation and BatchNorm statistic covers: the per-device batch of the
  # authors' runs, 256 over the four GPUs their scripts name (recipes/README.md).
  config.batch_group_size = 64
  config.num_epochs = 1800  # Shake noise slows fitting: Gastaldi and Yamada et al. train 1800.
  config.l2_regularization = 1e-3

  config.optimizer.name = "momentum"
  config.optimizer.learning_rate = 0.1

  config.gnp.r = 0.1
  config.gnp.alpha = 0.8

  if arg.variant == "shakedrop":
    config.model.name = "PyramidNet_272_200_ShakeDrop_GNP"
    config.batch_size = 128
    config.batch_group_size = 32  # 128 over their four GPUs.
    config.optimizer.learning_rate = 0.05
    config.l2_regularization = 5e-4
    config.data.autoaugment = "cifar10"
    config.data.mixup_alpha = 1.0  # Their 'mixcut' is Mixup, then Cutout.
    config.data.cutout = 16
  if arg.smoke:
    configuration.shrink_to_digits(config)
    if arg.variant == "shake_shake":
      config.model.blocks_per_group = 1  # One block per stage: seconds to compile.
      config.model.channel_multiplier = 1  # 16 filters in the first stage, not 96.
    else:
      config.model.depth = 11  # One bottleneck block per stage: seconds to compile.
      config.model.alpha = 12  # Channels grow by 12 over the network, not 200.
  return config
