r"""ViT-B/32 on ImageNet with GSAM, after big_vision's `configs/proj/gsam/vit_i1k_gsam_no_aug.py`.

The run of Zhuang et al. ("Surrogate Gap Minimization Improves Sharpness-Aware Training",
ICLR 2022, arXiv:2203.08065) that big_vision ships: a ViT-B/32 from scratch on ImageNet-1k
with inception crop and flip only, batch 4096, 300 epochs, Adam (0.9, 0.999) at 3e-3 with
10k warmup steps and a linear decay to 1% of the peak, decoupled weight decay on the kernels,
the gradient clipped to global norm 1, and GSAM whose radius goes from 0.6 at the peak rate to
0.1 at the last, with alpha 0.6 (`gnreg.gsam`, `gnp.method='gsam'`).

  python -m gnreg.main --config=configs/imagenet_vit_gsam.py --workdir=runs/vit_b32_gsam \
      --config.data.data_dir=gs://bucket/tensorflow_datasets

Arguments (`configs/imagenet_vit_gsam.py:ARG`, comma-separated, parsed by
`gnreg.configuration.parse_arg`):
  model=NAME  a ViT in place of ViT_B16, cut into 32x32 patches (`model=ViT_S16`: a ViT-S/32).
  smoke       a few steps of a ViT-Ti on the embedded `digits`, offline.

Differences from big_vision's run (also listed in recipes/README.md):
  - loss: softmax cross-entropy with the zero-initialised head of gnreg's ViT, where big_vision
    trains a sigmoid cross-entropy (`sigmoid_xent`) with the head's bias initialised to -10;
  - pooling: gnreg's ViT classifies its class token; big_vision's averages the tokens
    (`pool_type='gap'`, no class token);
  - data: the whole `train` split, where big_vision holds out 1% (`train[:99%]`) as minival;
    gnreg's own inception crop, flip and per-channel normalisation, not compared line by line
    with big_vision's `decode_jpeg_and_inception_crop(224)|flip_lr|value_range(-1, 1)`; no
    few-shot, ImageNet-ReaL or v2 evaluations;
  - warmup: 32 epochs of 312 steps, 9,984 steps rather than 10,000;
  - weight decay: big_vision's `wd=0.001` multiplies the schedule's fraction of the peak, which
    is AdamW's decay `0.001 / 3e-3 = 1/3` multiplying the rate itself, as here;
  - step count: big_vision reads the rate for GSAM's radius at steps 1, 2, ... and its
    optimizer's schedule at 0, 1, ...; gnreg reads both at the same step.
"""

import ml_collections

from gnreg import configuration


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = configuration.parse_arg(arg, model="ViT_B16", smoke=False)
  config = configuration.base_config()
  config.model.name = arg.model
  config.model.patch_size = 32  # B/32: big_vision's variant='B/32'.

  config.data.name = "imagenet2012"
  config.data.augment = True  # Inception crop and horizontal flip: big_vision's "no_aug".

  config.batch_size = 4096
  # m, the examples each perturbation covers: big_vision's config leaves it to the slice it runs
  # on; gnreg fixes it at 128, 4096 over 32 devices (recipes/README.md).
  config.batch_group_size = 128
  config.num_epochs = 300
  config.half_precision = False  # big_vision's ViT computes in float32, its Adam moments too.

  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 3e-3
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  # big_vision's wd=0.001 times the schedule's fraction of the peak rate, written as AdamW's
  # decay times the rate itself: 0.001 / 3e-3.
  config.optimizer.weight_decay = 0.001 / 3e-3
  config.regularize_kernels_only = True  # big_vision decays '.*/kernel$' alone.
  config.schedule.name = "linear"
  config.schedule.warmup_epochs = 32.0  # 9,984 steps of 4096 images; big_vision's 10,000.
  config.schedule.end_lr_fraction = 0.01  # big_vision's linear_end.

  config.clip.name = "global_norm"
  config.clip.max_norm = 1.0  # big_vision's grad_clip_norm.

  config.gnp.method = "gsam"
  config.gnp.gsam.rho_max = 0.6  # At the peak rate, 3e-3.
  config.gnp.gsam.rho_min = 0.1  # At the last rate, 3e-5.
  config.gnp.gsam.alpha = 0.6
  config.gnp.gsam.minimize_fp = True  # The paper's Algorithm 1, big_vision's default.
  config.gnp.gsam.adaptive = False  # big_vision's default adaptive_perturbation.

  config.log_every_steps = 100  # 312 steps an epoch.

  if arg.smoke:
    configuration.shrink_to_digits(config)
    config.model.name = "ViT_Ti16"
    config.model.patch_size = 2  # 4x4 tokens from an 8x8 digit.
  return config
