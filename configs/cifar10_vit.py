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
  config.model.name = "ViT_S16"
  config.model.patch_size = 4  # 8x8 tokens from a 32x32 image.

  config.data.name = "cifar10"
  config.data.augment = True

  config.batch_size = 256
  config.num_epochs = 300
  config.label_smoothing = 0.1

  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  config.schedule.name = "cosine"
  config.schedule.warmup_epochs = 20.0

  config.clip.name = "global_norm"
  config.clip.max_norm = 1.0

  config.gnp.r = 0.05
  config.gnp.alpha = 0.8
  config.gnp.warmup = "zero"
  config.gnp.warmup_epochs = 20.0  # The same length as the learning-rate warmup.

  for part in (arg or "").split(","):
    if not part:
      continue
    if part in _WARMUPS:
      config.gnp.warmup = _WARMUPS[part]
    elif part == "basic":
      config.gnp.alpha = 0.0
      config.gnp.warmup = None
    elif part.startswith("ViT_"):
      config.model.name = part
    elif part == "smoke":
      config.model.name = "ViT_Ti16"
      config.model.patch_size = 2
      config.model.depth = 2  # Two encoder blocks: seconds to compile on a CPU.
      config.data.name = "digits"
      config.data.augment = False
      config.batch_size = 32
      config.num_epochs = 2
      config.schedule.warmup_epochs = 1.0
      config.gnp.warmup_epochs = 1.0
      config.log_every_steps = 10
    else:
      raise ValueError(
          f"configs/cifar10_vit.py: unknown argument {part!r}; valid: none, lambda, r, zero, "
          "basic, smoke, or a ViT_* model name")
  return config
