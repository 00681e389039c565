r"""ViT-B/16 on ImageNet at batch 4096 with adaptive gradient clipping instead of global-norm.

A BatchNorm-free network trained at large batch with AGC (Brock et al., NFNets, 2021,
arXiv:2102.06171): unit-wise clipping of ||g|| / ||w|| at 0.01, the value NFNets use at
batch 4096, with the classifier head left unclipped. The rest is the ViT paper's ImageNet
recipe (Dosovitskiy et al. 2021): 300 epochs, AdamW at 3e-3 with about 10k warmup steps and
cosine decay, weight decay 0.3, bfloat16 activations. gnp is off: AGC is the experiment.

  python -m gnreg.main --config=configs/imagenet_vit_agc.py --workdir=runs/vit_b16_agc \
      --config.data.data_dir=gs://bucket/tensorflow_datasets

Arguments (`configs/imagenet_vit_agc.py:ARG`, comma-separated, parsed by
`gnreg.configuration.parse_arg`):
  model=NAME  a ViT in place of ViT_B16, e.g. `model=ViT_S16`.
  smoke       a few steps of a ViT-Ti on the embedded `digits`, offline.
"""

import ml_collections

from gnreg import configuration


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = configuration.parse_arg(arg, model="ViT_B16", smoke=False)
  config = configuration.base_config()
  config.model.name = arg.model  # No BatchNorm: AGC is what NFNets use in its place.

  config.data.name = "imagenet2012"
  config.data.augment = True  # Inception crop and horizontal flip.

  config.batch_size = 4096  # The batch at which NFNets need AGC to train stably.
  config.num_epochs = 300
  config.half_precision = True  # For speed on GPU/TPU; parameters and updates stay float32.

  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 3e-3
  config.optimizer.weight_decay = 0.3
  config.schedule.name = "cosine"
  config.schedule.warmup_epochs = 32.0  # The ViT paper's 10k steps of 4096 images.

  config.clip.name = "agc"
  config.clip.max_ratio = 0.01  # NFNets' value at batch 4096.
  config.clip.exclude = ("head/*",)  # NFNets leave the classifier unclipped.

  config.gnp.alpha = 0.0  # AGC alone is the experiment.

  config.log_every_steps = 100  # 312 steps an epoch.

  if arg.smoke:
    configuration.shrink_to_digits(config)
    config.model.name = "ViT_Ti16"
    config.model.patch_size = 2  # 4x4 tokens from an 8x8 digit.
  return config
