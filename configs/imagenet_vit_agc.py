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
  config.model.name = "ViT_B16"  # ViT-B/16, 86.6M parameters, no BatchNorm.

  config.data.name = "imagenet2012"  # Read with TFDS from data.data_dir (or imagenet_folder).
  config.data.augment = True  # The dataset's standard training augmentation.

  config.batch_size = 4096  # AGC's large-batch setting.
  config.num_epochs = 300  # The ViT training length.
  config.half_precision = True  # bfloat16 activations on GPU/TPU; float32 parameters.

  config.optimizer.name = "adamw"  # Adam with decoupled weight decay.
  config.optimizer.learning_rate = 3e-3  # Peak learning rate for batch 4096.
  config.optimizer.weight_decay = 0.3  # Decoupled weight decay on the kernels.
  config.schedule.name = "cosine"  # Cosine decay over the whole run.
  config.schedule.warmup_epochs = 32.0  # 10k steps of 4096 images.

  config.clip.name = "agc"  # Adaptive gradient clipping, unit-wise.
  config.clip.agc_clipping = 0.01  # NFNets' clipping for batch 4096.
  config.clip.agc_exclude = ("head/*",)  # Whole-path globs: the classifier's kernel and bias.

  config.gnp.alpha = 0.0  # No gradient norm penalty.

  config.log_every_steps = 100  # A train line every 100 steps.

  if arg == "smoke":
    configuration.shrink_to_digits(config)
    config.model.name = "ViT_Ti16"  # The smallest ViT.
    config.model.patch_size = 2  # 4x4 tokens from an 8x8 digit.
  elif arg:
    config.model.name = arg  # Any registered model, e.g. ':ResNet50'.
  return config
