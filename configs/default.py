r"""The embedded demo: a CIFAR-style ResNet-20 on scikit-learn's `digits`, offline.

SGD with Nesterov momentum, a cosine schedule with warmup, global-norm clipping
and the gradient norm penalty, on 1,437 real 8x8 training images; it reaches
99.2% test accuracy in 34 s on a 2-core CPU (measured with the command below).

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
  config.num_epochs = 30  # 660 steps: about 35 s on a 2-core CPU.
  config.l2_regularization = 5e-4  # Coupled L2 on the kernels.
  config.label_smoothing = 0.0  # Plain cross-entropy.

  config.optimizer.name = "momentum"  # SGD with heavy-ball momentum 0.9.
  config.optimizer.learning_rate = 0.1  # Peak learning rate.
  config.optimizer.nesterov = True  # Nesterov momentum.
  config.schedule.name = "cosine"  # Cosine decay over the whole run.
  config.schedule.warmup_epochs = 2.0  # Linear warmup over the first 44 steps.

  config.clip.name = "global_norm"  # Clip the averaged gradient's global norm.
  config.clip.max_norm = 5.0  # Fires only on the large gradients of the first steps.

  config.gnp.r = 0.05  # Perturbation radius; a starting point to tune.
  config.gnp.alpha = 0.5  # Weight of the perturbed gradient (lambda = alpha * r).

  config.log_every_steps = 11  # Two train lines per epoch.
  config.eval_every_epochs = 5.0  # Six evaluations over the run.
  config.checkpoint_every_epochs = 5.0  # A checkpoint at every evaluation.

  if arg == "smoke":
    config.num_epochs = 2  # Two epochs learn most digits.
    config.batch_size = 32  # 32 images a step: 44 steps per epoch of digits.
    config.log_every_steps = 10  # A train line every 10 steps.
    config.eval_every_epochs = 1.0  # An evaluation every epoch.
    config.checkpoint_every_epochs = 1.0  # A checkpoint every epoch.
    config.schedule.warmup_epochs = 0.5  # Half an epoch of linear warmup.
  elif arg:
    raise ValueError(f"configs/default.py: unknown argument {arg!r}; valid: 'smoke'")
  return config
