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
  config.model.name = "VGG16BN"  # VGG-16 with BatchNorm.

  config.data.name = "imagenet2012"  # Read with TFDS from data.data_dir (or imagenet_folder).
  config.data.augment = True  # The dataset's standard training augmentation.

  config.batch_size = 1024  # Global batch, split over every device.
  config.num_epochs = 90  # The standard ImageNet length.
  config.label_smoothing = 0.1  # Smoothed targets, as the ImageNet and ViT recipes use.
  config.l2_regularization = 1e-4  # Coupled L2 on the kernels.
  config.half_precision = True  # bfloat16 activations on GPU/TPU; float32 parameters.

  config.optimizer.name = "momentum"  # SGD with heavy-ball momentum 0.9.
  config.optimizer.learning_rate = 0.04  # Peak learning rate.
  config.schedule.name = "cosine"  # Cosine decay over the whole run.
  config.schedule.warmup_epochs = 5.0  # Linear warmup for the large batch.

  config.gnp.r = 0.05  # Perturbation radius; a starting point to tune.
  config.gnp.alpha = 0.7  # Weight of the perturbed gradient (lambda = alpha * r).

  config.log_every_steps = 100  # A train line every 100 steps.

  if arg == "smoke":
    configuration.shrink_to_digits(config)
    config.data.image_size = 32  # Five 2x2 max-pools need at least 32x32 inputs.
    config.model.stage_sizes = (1, 1, 1, 1, 1)  # One convolution per stage, not two or three.
  elif arg:
    config.model.name = arg  # Any registered model, e.g. ':ResNet50'.
  return config
