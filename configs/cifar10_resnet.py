r"""ResNet-50 on CIFAR-10 with the gradient norm penalty, as the GNP authors train it.

Zhao, Zhang & Hu, "Penalizing Gradient Norm for Efficiently Improving Generalization in
Deep Learning" (ICML 2022): the CIFAR-10 ResNet-50 of the authors' `recipes/resnet-cifar.sh`
(github.com/zhaoyang-0204/gnp), on their CIFAR ResNet (`ResNet50_GNP`: a 16-channel 3x3
stem): batch 256, 200 epochs of SGD with Nesterov momentum, lr 0.1 with cosine decay, L2
1e-3 on every parameter, crop and flip, r 0.1, alpha 0.8; the rest is
`configuration.follow_gnp_authors`. Differences from their run: recipes/README.md.

  python -m gnreg.main --config=configs/cifar10_resnet.py --workdir=runs/cifar10_resnet50 \
      --config.data.data_dir=$HOME/tensorflow_datasets

Arguments (`configs/cifar10_resnet.py:ARG`, comma-separated, parsed by
`gnreg.configuration.parse_arg`):
  model=NAME  a ResNet in place of ResNet50_GNP (it takes the CIFAR stem), e.g.
              `model=ResNet18_GNP`.
  pid         the PID regulator (gnreg.pid_lr) sets the learning rate from the gradient
              norm, within [1e-4, 0.1], in place of the schedule (gnreg's, not the paper's).
  smoke       a few steps of ResNet18_GNP on the embedded `digits`, offline.
e.g. `configs/cifar10_resnet.py:pid,model=ResNet18`.
"""

import ml_collections

from gnreg import configuration


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = configuration.parse_arg(arg, model="ResNet50_GNP", pid=False, smoke=False)
  config = configuration.base_config()
  configuration.follow_gnp_authors(config)
  config.model.name = arg.model
  config.model.stem = "cifar"  # 3x3 stride-1, no max-pool: 32x32 images are small already.

  config.data.name = "cifar10"
  config.data.augment = True  # Pad-4 random crop and horizontal flip, their 'basic'.

  config.batch_size = 256
  # m, the examples each perturbation and BatchNorm statistic covers: the per-device batch of the
  # authors' runs, 256 over the four GPUs their scripts name (recipes/README.md).
  config.batch_group_size = 64
  config.num_epochs = 200
  config.l2_regularization = 1e-3

  config.optimizer.name = "momentum"
  config.optimizer.learning_rate = 0.1

  config.gnp.r = 0.1
  config.gnp.alpha = 0.8

  if arg.pid:
    config.pid.enabled = True
    config.schedule.name = "constant"  # The regulator owns the learning rate.
    # No higher than the schedule's peak, so that the two runs compare; low enough to settle.
    config.pid.min_lr = 1e-4
    config.pid.max_lr = 0.1
  if arg.smoke:
    configuration.shrink_to_digits(config)
    config.model.name = "ResNet18_GNP"  # Basic blocks compile in seconds on a CPU.
  return config
