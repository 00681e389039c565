r"""VGG-16 with batch norm on ImageNet with SGD-momentum and the gradient norm penalty.

torchvision's VGG-BN recipe (SGD-momentum, lr 0.01 per 256 images, L2 1e-4, 90 epochs)
at the global batch of configs/imagenet_resnet.py: batch 1024 with the linearly scaled lr
0.04, 5 warmup epochs and cosine decay, label smoothing 0.1, inception crop and flip,
bfloat16 activations. r and alpha are starting points to tune.

  python -m gnreg.main --config=configs/imagenet_vgg.py --workdir=runs/vgg16bn \
      --config.data.data_dir=gs://bucket/tensorflow_datasets

Arguments: a VGG name (`:VGG19BN`), or `:smoke` (a few steps of a VGG-BN with one
convolution per stage on `digits` at 32x32).
"""

from gnreg import configuration


def get_config(arg: str | None = None):
  config = configuration.base_config()
  config.model.name = "VGG16BN"

  config.data.name = "imagenet2012"
  config.data.augment = True

  config.batch_size = 1024
  config.num_epochs = 90
  config.label_smoothing = 0.1
  config.l2_regularization = 1e-4
  config.half_precision = True

  config.optimizer.name = "momentum"
  config.optimizer.learning_rate = 0.04
  config.schedule.name = "cosine"
  config.schedule.warmup_epochs = 5.0

  config.gnp.r = 0.05
  config.gnp.alpha = 0.7

  config.log_every_steps = 100

  if arg == "smoke":
    config.data.name = "digits"
    config.data.augment = False
    config.data.image_size = 32  # Five 2x2 max-pools need at least 32x32 inputs.
    config.model.stage_sizes = (1, 1, 1, 1, 1)  # One convolution per stage, not two or three.
    config.half_precision = False
    config.batch_size = 32
    config.num_epochs = 1
    config.schedule.warmup_epochs = 0.5
    config.log_every_steps = 10
  elif arg:
    config.model.name = arg
  return config
