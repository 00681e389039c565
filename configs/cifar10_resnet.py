r"""ResNet-18 on CIFAR-10 with SGD-momentum and the gradient norm penalty.

The usual CIFAR recipe of SAM's and the GNP authors' code: batch 256, 200 epochs,
cosine decay, L2 5e-4, pad-crop-flip. r and alpha are starting points to tune
(Zhao, Zhang & Hu, ICML 2022, sweep both). Needs CIFAR-10 prepared by TFDS.

  python -m gnreg.main --config=configs/cifar10_resnet.py --workdir=runs/cifar10_resnet18 \
      --config.data.data_dir=$HOME/tensorflow_datasets

Arguments (`configs/cifar10_resnet.py:ARG`, comma-separated, parsed by
`gnreg.configuration.parse_arg`):
  model=NAME  a registered model in place of ResNet18, e.g. `model=ResNet50`.
  pid         the PID regulator (gnreg.pid_lr) sets the learning rate from the gradient
              norm, within [1e-4, 0.1], in place of the schedule.
  smoke       a few steps on the embedded `digits`, offline.
e.g. `configs/cifar10_resnet.py:pid,smoke`.
"""

import ml_collections

from gnreg import configuration


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = configuration.parse_arg(arg, model="ResNet18", pid=False, smoke=False)
  config = configuration.base_config()
  config.model.name = arg.model
  config.model.stem = "cifar"  # 3x3 stride-1, no max-pool: 32x32 images are small already.

  config.data.name = "cifar10"
  config.data.augment = True  # Pad-4 random crop and horizontal flip.

  config.batch_size = 256
  config.num_epochs = 200
  config.l2_regularization = 5e-4

  config.optimizer.name = "momentum"
  config.optimizer.learning_rate = 0.1
  config.schedule.name = "cosine"

  config.gnp.r = 0.05  # A starting point: the paper sweeps r and alpha per network.
  config.gnp.alpha = 0.8

  if arg.pid:
    config.pid.enabled = True
    config.schedule.name = "constant"  # The regulator owns the learning rate.
    # No higher than the schedule's peak, so that the two runs compare; low enough to settle.
    config.pid.min_lr = 1e-4
    config.pid.max_lr = 0.1
  if arg.smoke:
    configuration.shrink_to_digits(config)
  return config
