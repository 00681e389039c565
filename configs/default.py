r"""The embedded demo: a CIFAR-style ResNet-20 on scikit-learn's `digits`, offline.

SGD with Nesterov momentum, a cosine schedule with warmup, global-norm clipping
and the gradient norm penalty, on 1,437 real 8x8 training images; it reaches
99.4% test accuracy in 57 s on a quiet 2-core CPU (measured with the command below).

  python -m gnreg.main --config=configs/default.py --workdir=runs/default

Arguments (`configs/default.py:ARG`, parsed by `gnreg.configuration.parse_arg`):
  smoke  a seconds-long version of the same run, for tests.
  pid    gnreg.pid_lr in place of the schedule and its warmup: a constant peak rate of 0.4
         that the regulator lowers whenever the smoothed gradient norm would pass 1.0 (the
         README's worked example; `:pid --config.pid.enabled=False` is its fixed rate).
"""

import ml_collections

from gnreg import configuration


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = configuration.parse_arg(arg, smoke=False, pid=False)
  config = configuration.base_config()
  config.model.name = "ResNet20"  # Its 3x3 stride-1 stem keeps the 8x8 digits whole.

  config.data.name = "digits"  # Embedded: the demo must run without a download.
  config.data.augment = False  # Digits are centred; crops and flips would change their class.

  config.batch_size = 64  # 22 steps per epoch of the 1,437 training images.
  config.num_epochs = 30  # 660 steps: enough for 99% test accuracy in about a minute on 2 cores.
  config.l2_regularization = 5e-4
  config.label_smoothing = 0.0

  config.optimizer.name = "momentum"
  config.optimizer.learning_rate = 0.1
  config.optimizer.nesterov = True
  config.schedule.name = "cosine"
  config.schedule.warmup_epochs = 2.0  # Ramps up while the first, largest gradients pass.

  config.clip.name = "global_norm"
  config.clip.max_norm = 5.0  # Fires only on the large gradients of the first steps.

  config.gnp.r = 0.05
  config.gnp.alpha = 0.5

  config.log_every_steps = 11  # Two train lines per epoch.
  config.eval_every_epochs = 5.0
  config.checkpoint_every_epochs = 5.0  # With every evaluation, so a resume repeats none.

  if arg.pid:
    config.schedule.name = "constant"  # The regulator owns the rate; no warmup either.
    config.schedule.warmup_epochs = 0.0
    # A rate 4x the schedule's peak: at 0.1 the norm never passes the target, so the
    # regulator would never act; at 0.4 it must, in the first epochs and at the spikes.
    config.optimizer.learning_rate = 0.4
    config.pid.enabled = True
    config.pid.target_norm = 1.0  # Above the usual norms: a ceiling, not a set point.
    config.pid.kp = 1.0  # The rate scales as target / norm while the norm is above target.
    config.pid.ki = 0.0  # Here a higher rate lowers the norm: an integral would sink the rate.
    config.pid.min_lr = 0.004
    config.pid.max_lr = 0.4  # = lr_0: the regulator only ever lowers the rate.
    # python -m gnreg.autotune on this config: in the first epoch (22 steps) the gains act on
    # the first steps' large norms alone; five epochs (a sixth of the run) see the later spikes.
    config.pid.autotune_steps = 110
  if arg.smoke:
    # One block per stage, a ResNet-8: a third of ResNet-20's compile, the same code paths.
    config.model.stage_sizes = (1, 1, 1)
    config.num_epochs = 2  # Two epochs already learn most digits: a test sees real learning.
    config.batch_size = 32  # 44 steps per epoch.
    config.log_every_steps = 10
    config.eval_every_epochs = 1.0
    config.checkpoint_every_epochs = 1.0  # Tests resume from the first epoch's checkpoint.
    config.schedule.warmup_epochs = 0.5
  return config
