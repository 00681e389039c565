r"""ResNet-50 on ImageNet with the gradient norm penalty, as the GNP authors train it.

Zhao, Zhang & Hu (ICML 2022), the ImageNet ResNet-50 of the authors' `recipes/resnet-imagenet.sh`
(github.com/zhaoyang-0204/gnp): global batch 512 over every device of every host, 100 epochs
of SGD with Nesterov momentum, lr 0.2 with cosine decay and no warmup, L2 1e-4 on every
parameter, inception crop and flip, r 0.05, alpha 0.8; the rest is
`configuration.follow_gnp_authors` (float32, no label smoothing, clipping at norm 5).
Differences from their run: recipes/README.md.

  python -m gnreg.main --config=configs/imagenet_resnet.py --workdir=runs/r50 \
      --config.data.data_dir=gs://bucket/tensorflow_datasets

For a local copy laid out as one folder per class, as the authors read it, add
`--config.data.name=imagenet_folder --config.data.data_dir=/data/imagenet`.

Arguments (`configs/imagenet_resnet.py:ARG`, comma-separated, parsed by
`gnreg.configuration.parse_arg`):
  model=NAME  a registered model in place of ResNet50, e.g. `model=ResNet101`.
  smoke       a few steps of ResNet-18 on the embedded `digits`, offline.
"""

import ml_collections

from gnreg import configuration


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = configuration.parse_arg(arg, model="ResNet50", smoke=False)
  config = configuration.base_config()
  configuration.follow_gnp_authors(config)
  config.model.name = arg.model

  config.data.name = "imagenet2012"
  config.data.augment = True  # Inception crop and horizontal flip.

  config.batch_size = 512
  # m, the examples each perturbation and BatchNorm statistic covers: the per-device batch of the
  # authors' runs, 512 over the four GPUs their scripts name (recipes/README.md).
  config.batch_group_size = 128
  config.num_epochs = 100
  config.l2_regularization = 1e-4

  config.optimizer.name = "momentum"
  config.optimizer.learning_rate = 0.2  # 0.1 per 256 images.

  config.gnp.r = 0.05
  config.gnp.alpha = 0.8

  config.log_every_steps = 100  # 2,502 steps an epoch: a line every 100 is enough.

  if arg.smoke:
    configuration.shrink_to_digits(config)
    config.model.name = "ResNet18"
    config.model.stem = "cifar"  # A 7x7 stride-2 stem and max-pool would leave 8x8 digits 2x2.
  return config
