r"""Shake-Shake 26 2x96d or PyramidNet-272 (alpha 200) + ShakeDrop on CIFAR-10, with GNP.

The long schedule that SAM (Foret et al., ICLR 2021) and the GNP authors use for the
shake-regularised networks: 1800 epochs of SGD-momentum with cosine decay, pad-crop-flip
plus AutoAugment (CIFAR-10 policy) and Cutout 16. Batch, learning rate and L2 are those of
the networks' own papers (Gastaldi 2017; Yamada et al. 2019 with AutoAugment's L2); r and
alpha are starting points to tune. Needs CIFAR-10 prepared by TFDS.

  python -m gnreg.main --config=configs/cifar10_shake.py:shakedrop \
      --workdir=runs/cifar10_pyramidnet272_shakedrop \
      --config.data.data_dir=$HOME/tensorflow_datasets

Argument: a comma-separated list of `shake_shake` (WideResNet_2_96_ShakeShake, the
default) or `shakedrop` (PyramidNet_272_200_ShakeDrop), and `smoke` (a few steps of a
one-block-per-stage version on `digits`, offline), e.g. `:shakedrop,smoke`.
"""

from gnreg import configuration


def get_config(arg: str | None = None):
  config = configuration.base_config()
  config.model.name = "WideResNet_2_96_ShakeShake"

  config.data.name = "cifar10"
  config.data.augment = True
  config.data.autoaugment = "cifar10"
  config.data.cutout = 16

  config.batch_size = 128
  config.num_epochs = 1800
  config.l2_regularization = 1e-4

  config.optimizer.name = "momentum"
  config.optimizer.learning_rate = 0.2
  config.schedule.name = "cosine"

  config.gnp.r = 0.05
  config.gnp.alpha = 0.8

  parts = [part for part in (arg or "").split(",") if part]
  for part in parts:
    if part == "shake_shake":
      config.model.name = "WideResNet_2_96_ShakeShake"
    elif part == "shakedrop":
      config.model.name = "PyramidNet_272_200_ShakeDrop"
      config.optimizer.learning_rate = 0.1
      config.l2_regularization = 5e-5
    elif part != "smoke":
      raise ValueError(
          f"configs/cifar10_shake.py: unknown argument {part!r}; valid: shake_shake, "
          "shakedrop, smoke")
  if "smoke" in parts:
    _smoke(config)
  return config


def _smoke(config):
  config.data.name = "digits"
  config.data.augment = False
  config.data.autoaugment = None
  config.data.cutout = 0
  if config.model.name == "WideResNet_2_96_ShakeShake":
    config.model.blocks_per_group = 1
    config.model.channel_multiplier = 1
  else:
    config.model.depth = 11  # One bottleneck block per stage.
    config.model.alpha = 12
  config.batch_size = 32
  config.num_epochs = 1
  config.log_every_steps = 10
