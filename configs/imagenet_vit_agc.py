r"""ViT-B/16 on ImageNet at batch 4096 with adaptive gradient clipping instead of global-norm.

A BatchNorm-free network trained at large batch with AGC (Brock et al., NFNets, 2021,
arXiv:2102.06171): unit-wise clipping of ||g|| / ||w|| at 0.01, the value NFNets use at
batch 4096, with the classifier head left unclipped. The rest is the ViT paper's ImageNet
recipe (Dosovitskiy et al. 2021): 300 epochs, AdamW at 3e-3 with about 10k warmup steps and
cosine decay, weight decay 0.3, bfloat16 activations. gnp is off: AGC is the experiment.

  python -m gnreg.main --config=configs/imagenet_vit_agc.py --workdir=runs/vit_b16_agc \
      --config.data.data_dir=gs://bucket/tensorflow_datasets

Arguments: a ViT name (`:ViT_S16`), or `:smoke` (a few steps of a tiny ViT on `digits`).
"""

from gnreg import configuration


def get_config(arg: str | None = None):
  config = configuration.base_config()
  config.model.name = "ViT_B16"

  config.data.name = "imagenet2012"
  config.data.augment = True

  config.batch_size = 4096
  config.num_epochs = 300
  config.half_precision = True

  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 3e-3
  config.optimizer.weight_decay = 0.3
  config.schedule.name = "cosine"
  config.schedule.warmup_epochs = 32.0  # 10k steps of 4096 images.

  config.clip.name = "agc"
  config.clip.agc_clipping = 0.01
  config.clip.agc_exclude = ("head/*",)  # Whole-path globs: the classifier's kernel and bias.

  config.gnp.alpha = 0.0

  config.log_every_steps = 100

  if arg == "smoke":
    config.model.name = "ViT_Ti16"
    config.model.patch_size = 2
    config.data.name = "digits"
    config.data.augment = False
    config.half_precision = False
    config.batch_size = 32
    config.num_epochs = 1
    config.schedule.warmup_epochs = 0.5
    config.log_every_steps = 10
  elif arg:
    config.model.name = arg
  return config
