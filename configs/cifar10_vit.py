r"""ViT on CIFAR-10 with Adam and gradient regularisation, with the three GR warmups.

"When Will Gradient Regularization Be Harmful?" (Zhao, Zhang & Hu, ICML 2024):
with adaptive optimisers and a learning-rate warmup, GR destabilises Adam's
statistics early on; warming GR up (lambda, r, or zero) fixes it. Patch 4 on
32x32 inputs, batch 256, 300 epochs, Adam at 1e-3 with 20 warmup epochs, and the
GR warmup as long as the learning-rate warmup.

  python -m gnreg.main --config=configs/cifar10_vit.py:variant=zero --workdir=runs/vit_s_zero \
      --config.data.data_dir=$HOME/tensorflow_datasets

Arguments (`configs/cifar10_vit.py:ARG`, comma-separated, parsed by
`gnreg.configuration.parse_arg`):
  variant=zero|lambda|r|no_warmup|basic
              GR under the zero (the default), lambda or r warmup; GR from the first
              step (no_warmup); or Adam alone, without GR (basic).
  model=NAME  a ViT in place of ViT_S16, e.g. `model=ViT_B16`.
  heavy_aug   AutoAugment (CIFAR-10 policy) and Cutout 16 on top of crop and flip.
  smoke       a few steps of a two-block ViT-Ti on the embedded `digits`, offline.
e.g. `configs/cifar10_vit.py:variant=lambda,model=ViT_B16`.
"""

import ml_collections

from gnreg import configuration

VARIANTS = ("zero", "lambda", "r", "no_warmup", "basic")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = configuration.parse_arg(
    arg, variant=VARIANTS, model="ViT_S16", heavy_aug=False, smoke=False
  )
  config = configuration.base_config()
  config.model.name = arg.model
  config.model.patch_size = 4  # 64 tokens from a 32x32 image; patch 16 would leave 4.

  config.data.name = "cifar10"
  config.data.augment = True  # Pad-4 random crop and horizontal flip.

  config.batch_size = 256
  config.num_epochs = 300  # Without ImageNet pre-training a ViT needs a long run.
  config.label_smoothing = 0.1

  config.optimizer.name = "adam"  # The adaptive optimiser whose statistics GR disturbs.
  config.optimizer.learning_rate = 1e-3
  config.schedule.name = "cosine"
  config.schedule.warmup_epochs = 20.0  # The warmup under which GR hurts Adam.

  config.clip.name = "global_norm"
  config.clip.max_norm = 1.0

  config.gnp.r = 0.05
  config.gnp.alpha = 0.8
  config.gnp.warmup = None if arg.variant in ("no_warmup", "basic") else arg.variant
  config.gnp.warmup_epochs = config.schedule.warmup_epochs  # One length for both, as the authors.
  if arg.variant == "basic":
    config.gnp.alpha = 0.0

  if arg.heavy_aug:
    config.data.autoaugment = "cifar10"
    config.data.cutout = 16
  if arg.smoke:
    configuration.shrink_to_digits(config, num_epochs=2)  # Warmups: the first epoch.
    config.model.name = "ViT_Ti16"
    config.model.patch_size = 2  # 4x4 tokens from an 8x8 digit.
    config.model.depth = 2  # Two encoder blocks: seconds to compile on a CPU.
  return config
