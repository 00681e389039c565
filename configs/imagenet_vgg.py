r"""VGG-16 with batch norm on ImageNet with the gradient norm penalty, as the GNP authors train it.

Zhao, Zhang & Hu (ICML 2022), the ImageNet VGG-16-BN of the authors' `recipes/vggbn-imagenet.sh`
(github.com/zhaoyang-0204/gnp), on their VGG (`VGG16BN_GNP`, which at 224x224 is the paper's
VGG head): global batch 256, 100 epochs of SGD with Nesterov momentum, lr 0.1 with cosine
decay and no warmup, L2 1e-4 on every parameter, inception crop and flip, r 0.05, alpha 0.8;
the rest is `configuration.follow_gnp_authors`. Differences from their run: recipes/README.md.

  python -m gnreg.main --config=configs/imagenet_vgg.py --workdir=runs/vgg16bn \
      --config.data.data_dir=gs://bucket/tensorflow_datasets

Arguments (`configs/imagenet_vgg.py:ARG`, comma-separated, parsed by
`gnreg.configuration.parse_arg`):
  model=NAME  a registered model in place of VGG16BN_GNP, e.g. `model=VGG19BN_GNP`.
  smoke       a few steps of a VGG-BN with one convolution per stage on `digits` at 32x32.
"""

import ml_collections

from gnreg import configuration


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = configuration.parse_arg(arg, model="VGG16BN_GNP", smoke=False)
  config = configuration.base_config()
  configuration.follow_gnp_authors(config)
  config.model.name = arg.model

  config.data.name = "imagenet2012"
  config.data.augment = True  # Inception crop and horizontal flip.

  config.batch_size = 256
  # m, the examples each perturbation and BatchNorm statistic covers: the per-device batch of the
  # authors' runs, 256 over the four GPUs their scripts name (recipes/README.md).
  config.batch_group_size = 64
  config.num_epochs = 100
  config.l2_regularization = 1e-4

  config.optimizer.name = "momentum"
  config.optimizer.learning_rate = 0.1

  config.gnp.r = 0.05
  config.gnp.alpha = 0.8

  config.log_every_steps = 100  # 5,004 steps an epoch: a line every 100 is enough.

  if arg.smoke:
    configuration.shrink_to_digits(config)
    config.data.image_size = 32  # Five 2x2 max-pools need at least 32x32 inputs.
    config.model.stage_sizes = (1, 1, 1, 1, 1)  # One convolution per stage: seconds to compile.
  return config
