r"""The embedded demo: a CIFAR-style ResNet-20 on scikit-learn's `digits`, offline.

SGD with Nesterov momentum, a cosine schedule with warmup, global-norm clipping
and the gradient norm penalty, on 1,437 real 8x8 training images; it reaches
about 98% test accuracy in a few minutes on a 2-core CPU.

  python -m gnreg.main --config=configs/default.py --workdir=runs/default

`configs/default.py:smoke` is a seconds-long version for tests.
"""

from gnreg import configuration


def get_config(arg: str | None = None):
  config = configuration.base_config()
  config.model.name = "ResNet20"  # 0.27M parameters; its 3x3 stem keeps 8x8 inputs whole.

  config.data.name = "digits"  # Embedded: no download, prepared from scikit-learn.
  config.data.augment = False  # Digits are centred; crops and flips would change their class.

  config.batch_size = 64  # 22 steps per epoch on the 1,437 training images.
  config.num_epochs = 30
  config.l2_regularization = 5e-4
  config.label_smoothing = 0.0

  config.optimizer.name = "momentum"
  config.optimizer.learning_rate = 0.1
  config.optimizer.nesterov = True
  config.schedule.name = "cosine"
  config.schedule.warmup_epochs = 2.0

  config.clip.name = "global_norm"
  config.clip.max_norm = 5.0  # Fires only on the large gradients of the first steps.

  config.gnp.r = 0.05
  config.gnp.alpha = 0.5

  config.log_every_steps = 11
  config.eval_every_epochs = 5.0
  config.checkpoint_every_epochs = 5.0

  if arg == "smoke":
    config.num_epochs = 2
    config.batch_size = 32
    config.log_every_steps = 10
    config.eval_every_epochs = 1.0
    config.checkpoint_every_epochs = 1.0
    config.schedule.warmup_epochs = 0.5
  elif arg:
    raise ValueError(f"configs/default.py: unknown argument {arg!r}; valid: 'smoke'")
  return config
