r"""ViT on CIFAR-10 with AdamW and gradient regularisation (GR), with the three GR warmups.

Zhao, Zhang & Hu, "When Will Gradient Regularization Be Harmful?" (ICML 2024): with an
adaptive optimiser and a learning-rate warmup, GR destabilises Adam's statistics early on;
warming GR up (lambda, r or zero) fixes it. The authors' `recipes/vit-cifar-basic-grwarmup.sh`
(github.com/zhaoyang-0204/gnp) on their CIFAR ViT (`ViT_S16_GNP`: patch 4, dropout and
attention dropout 0.1): batch 256, 300 epochs of AdamW (weight decay 0.3 on every parameter)
at 1e-3 with 40 warmup epochs and cosine decay, crop and flip, r 0.1, alpha 1.0, the GR
warmup as long as the learning-rate warmup; the rest is `configuration.follow_gnp_authors`.
Differences from their runs: recipes/README.md.

  python -m gnreg.main --config=configs/cifar10_vit.py:variant=zero --workdir=runs/vit_s_zero \
      --config.data.data_dir=$HOME/tensorflow_datasets

Arguments (`configs/cifar10_vit.py:ARG`, comma-separated, parsed by
`gnreg.configuration.parse_arg`):
  variant=zero|lambda|r|no_warmup|basic|heavy_aug
              GR under the zero (the default), lambda or r warmup; GR from the first step
              (no_warmup); AdamW alone (basic); or the authors' heavy-augmentation recipe
              (`recipes/vit_cifar_heavy.sh`: Mixup, lr 5e-4, weight decay 0.03, 1200 epochs,
              alpha 0.8, no warmup).
  model=NAME  a ViT in place of ViT_S16_GNP, e.g. `model=ViT_B16_GNP`.
  smoke       a few steps of a two-block ViT-Ti on the embedded `digits`, offline.
e.g. `configs/cifar10_vit.py:variant=lambda,model=ViT_B16_GNP`.
"""

import ml_collections

from gnreg import configuration

VARIANTS = ("zero", "lambda", "r", "no_warmup", "basic", "heavy_aug")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = configuration.parse_arg(arg, variant=VARIANTS, model="ViT_S16_GNP", smoke=False)
  config = configuration.base_config()
  configuration.follow_gnp_authors(config)
  config.model.name = arg.model

  config.data.name = "cifar10"
  config.data.augment = True  # Pad-4 random crop and horizontal flip, their 'basic'.

  config.batch_size = 256
  # m, the examples each perturbation and BatchNorm statistic covers: the per-device batch of the
  # authors' runs, 256 over the four GPUs their scripts name (recipes/README.md).
  config.batch_group_size = 64
  config.num_epochs = 300  # Without pre-training a ViT needs a long run.

  config.optimizer.name = "adamw"  # The adaptive optimiser whose statistics GR disturbs.
  config.optimizer.learning_rate = 1e-3
  config.optimizer.weight_decay = 0.3
  config.schedule.warmup_epochs = 40.0  # The warmup under which GR hurts Adam.

  config.gnp.r = 0.1
  config.gnp.alpha = 1.0
  config.gnp.warmup = arg.variant if arg.variant in ("zero", "lambda", "r") else None
  config.gnp.warmup_epochs = config.schedule.warmup_epochs  # The authors use one length for both.

  if arg.variant == "basic":
    config.gnp.alpha = 0.0
  if arg.variant == "heavy_aug":  # The authors' tuned values for it, in their recipe.
    config.data.mixup_alpha = 1.0
    config.num_epochs = 1200
    config.optimizer.learning_rate = 5e-4
    config.optimizer.weight_decay = 0.03
    config.schedule.warmup_epochs = 0.0
    config.gnp.alpha = 0.8
  if arg.smoke:
    configuration.shrink_to_digits(config, num_epochs=2)  # Warmups: the first epoch.
    config.model.name = "ViT_Ti16"
    config.model.patch_size = 2  # 4x4 tokens from an 8x8 digit.
    config.model.depth = 2  # Two encoder blocks: seconds to compile on a CPU.
  return config
