r"""Shake-Shake 26 2x96d or PyramidNet-272 (alpha 200) + ShakeDrop on CIFAR-10, with GNP.

The long schedule that SAM (Foret et al., ICLR 2021) and the GNP authors use for the
shake-regularised networks: 1800 epochs of SGD-momentum with cosine decay, pad-crop-flip
plus AutoAugment (CIFAR-10 policy) and Cutout 16. Batch, learning rate and L2 are those of
the networks' own papers (Gastaldi 2017; Yamada et al. 2019 with AutoAugment's L2); r and
alpha are starting points to tune. Needs CIFAR-10 prepared by TFDS.

  python -m gnreg.main --config=configs/cifar10_shake.py:variant=shakedrop \
      --workdir=runs/cifar10_pyramidnet272_shakedrop \
      --config.data.data_dir=$HOME/tensorflow_datasets

Arguments (`configs/cifar10_shake.py:ARG`, comma-separated, parsed by
`gnreg.configuration.parse_arg`):
  variant=shake_shake|shakedrop  WideResNet_2_96_ShakeShake (the default) or
                                 PyramidNet_272_200_ShakeDrop with its own lr and L2.
  smoke                          a few steps of a one-block-per-stage version on `digits`.
e.g. `configs/cifar10_shake.py:variant=shakedrop,smoke`.
"""

import ml_collections

from gnreg import configuration


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = configuration.parse_arg(arg, variant=("shake_shake", "shakedrop"), smoke=False)
  config = configuration.base_config()
  config.model.name = "WideResNet_2_96_ShakeShake"

  config.data.name = "cifar10"
  config.data.augment = True  # Pad-4 random crop and horizontal flip, under the policies.
  config.data.autoaugment = "cifar10"
  config.data.cutout = 16

  config.batch_size = 128
  config.num_epochs = 1800  # Gastaldi's and Yamada et al.'s length: the shake noise slows fitting.
  config.l2_regularization = 1e-4

  config.optimizer.name = "momentum"
  config.optimizer.learning_rate = 0.2  # Gastaldi's 0.2 at batch 128.
  config.schedule.name = "cosine"

  config.gnp.r = 0.05  # A starting point: the paper sweeps r and alpha per network.
  config.gnp.alpha = 0.8

  if arg.variant == "shakedrop":
    config.model.name = "PyramidNet_272_200_ShakeDrop"
    config.optimizer.learning_rate = 0.1  # Yamada et al.'s rate at batch 128.
    config.l2_regularization = 5e-5  # AutoAugment's setting for this network.
  if arg.smoke:
    configuration.shrink_to_digits(config)
    if arg.variant == "shake_shake":
      config.model.blocks_per_group = 1  # One block per stage: seconds to compile.
      config.model.channel_multiplier = 1  # 16 filters in the first stage, not 96.
    else:
      config.model.depth = 11  # One bottleneck block per stage: seconds to compile.
      config.model.alpha = 12  # Channels grow by 12 over the network, not 200.
  return config
