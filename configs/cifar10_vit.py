r"""ViT on CIFAR-10 with Adam and gradient regularisation, with the three GR warmups.

"When Will Gradient Regularization Be Harmful?" (Zhao, Zhang & Hu, ICML 2024):
with adaptive optimisers and a learning-rate warmup, GR destabilises Adam's
statistics early on; warming GR up (lambda, r, or zero) fixes it. Patch 4 on
32x32 inputs, batch 256, 300 epochs, Adam at 1e-3 with 20 warmup epochs, and the
GR warmup as long as the learning-rate warmup.

  python -m gnreg.main --config=configs/cifar10_vit.py:zero --workdir=runs/vit_s_zero \
      --config.data.data_dir=$HOME/tensorflow_datasets

Argument: a comma-separated list of `none` | `lambda` | `r` | `zero` (the GR warmup;
default `zero`), a model (`ViT_Ti16`, `ViT_S16`, `ViT_B16`), `basic` (no GR) and
`smoke` (a few steps of a tiny ViT on `digits`), e.g. `:ViT_B16,lambda`.
"""

from gnreg import configuration

_WARMUPS = {"none": None, "lambda": "lambda", "r": "r", "zero": "zero"}


def get_config(arg: str | None = None):
  config = configuration.base_config()
  config.model.name = "ViT_S16"  # ViT-S; the patch size is set below.
  config.model.patch_size = 4  # 8x8 tokens from a 32x32 image.

  config.data.name = "cifar10"  # Read with TFDS from data.data_dir.
  config.data.augment = True  # The dataset's standard training augmentation.

  config.batch_size = 256  # Global batch, split over every device.
  config.num_epochs = 300  # The ViT training length.
  config.label_smoothing = 0.1  # Smoothed targets, as the ImageNet and ViT recipes use.

  config.optimizer.name = "adam"  # Adam, where GR needs its warmups.
  config.optimizer.learning_rate = 1e-3  # Peak learning rate.
  config.schedule.name = "cosine"  # Cosine decay over the whole run.
  config.schedule.warmup_epochs = 20.0  # Adam's learning-rate warmup.

  config.clip.name = "global_norm"  # Clip the averaged gradient's global norm.
  config.clip.max_norm = 1.0  # The largest global gradient norm let through.

  config.gnp.r = 0.05  # Perturbation radius; a starting point to tune.
  config.gnp.alpha = 0.8  # Weight of the perturbed gradient (lambda = alpha * r).
  config.gnp.warmup = "zero"  # No GR at all until the warmup ends.
  config.gnp.warmup_epochs = 20.0  # The same length as the learning-rate warmup.

  for part in (arg or "").split(","):
    if not part:
      continue
    if part in _WARMUPS:
      config.gnp.warmup = _WARMUPS[part]  # The GR warmup named by the argument.
    elif part == "basic":
      config.gnp.alpha = 0.0  # No gradient norm penalty.
      config.gnp.warmup = None  # No GR warmup.
    elif part.startswith("ViT_"):
      config.model.name = part  # A ViT_* model from the argument.
    elif part == "smoke":
      configuration.shrink_to_digits(config, num_epochs=2)  # Warmups: the first epoch.
      config.model.name = "ViT_Ti16"  # The smallest ViT.
      config.model.patch_size = 2  # 4x4 tokens from an 8x8 digit.
      config.model.depth = 2  # Two encoder blocks: seconds to compile on a CPU.
    else:
      raise ValueError(
        f"configs/cifar10_vit.py: unknown argument {part!r}; valid: none, lambda, r, zero, "
        "basic, smoke, or a ViT_* model name"
      )
  return config
