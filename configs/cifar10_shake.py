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
  config.model.name = "WideResNet_2_96_ShakeShake"  # Shake-Shake 26 2x96d, 26.2M parameters.

  config.data.name = "cifar10"  # Read with TFDS from data.data_dir.
  config.data.augment = True  # The dataset's standard training augmentation.
  config.data.autoaugment = "cifar10"  # AutoAugment's CIFAR-10 policy.
  config.data.cutout = 16  # Cutout of a 16x16 square.

  config.batch_size = 128  # Global batch, split over every device.
  config.num_epochs = 1800  # The Shake-Shake and ShakeDrop recipes' length.
  config.l2_regularization = 1e-4  # Coupled L2 on the kernels.

  config.optimizer.name = "momentum"  # SGD with heavy-ball momentum 0.9.
  config.optimizer.learning_rate = 0.2  # Peak learning rate for batch 128.
  config.schedule.name = "cosine"  # Cosine decay over the whole run.

  config.gnp.r = 0.05  # Perturbation radius; a starting point to tune.
  config.gnp.alpha = 0.8  # Weight of the perturbed gradient (lambda = alpha * r).

  parts = [part for part in (arg or "").split(",") if part]
  for part in parts:
    if part == "shake_shake":
      config.model.name = "WideResNet_2_96_ShakeShake"  # Shake-Shake 26 2x96d, 26.2M parameters.
    elif part == "shakedrop":
      config.model.name = "PyramidNet_272_200_ShakeDrop"  # PyramidNet-272 alpha 200.
      config.optimizer.learning_rate = 0.1  # Peak learning rate.
      config.l2_regularization = 5e-5  # Coupled L2 on the kernels.
    elif part != "smoke":
      raise ValueError(
        f"configs/cifar10_shake.py: unknown argument {part!r}; valid: shake_shake, shakedrop, smoke"
      )
  if "smoke" in parts:
    _smoke(config)
  return config


def _smoke(config):
  configuration.shrink_to_digits(config)
  if config.model.name == "WideResNet_2_96_ShakeShake":
    config.model.blocks_per_group = 1  # One block per stage, not four.
    config.model.channel_multiplier = 1  # 16 filters in the first stage, not 96.
  else:
    config.model.depth = 11  # One bottleneck block per stage.
    config.model.alpha = 12  # Channels grow by 12 over the network, not 200.
