"""The trainer's configuration: every field with its default, and validation.

Each file in ``configs/`` starts from :func:`base_config` and changes what its
experiment needs; ``python -m gnreg.main`` validates the result with
:func:`validate` before it touches the workdir or compiles anything, so that a
mistake costs one clear line instead of a traceback.
"""

from __future__ import annotations

import math

import ml_collections

from gnreg import data, models, optimizers, schedules
from gnreg.data import config as data_config
from gnreg.transforms import gnp as gnp_transform
from gnreg.transforms import pid as pid_transform
from gnreg.tuning import lr_finder, pid_autotune

__all__ = [
  "OPTIMIZERS",
  "SCHEDULES",
  "CLIPS",
  "GNP_WARMUPS",
  "GNP_METHODS",
  "CYCLIC_MODES",
  "LR_FINDER_METHODS",
  "AUTOTUNE_SEARCHES",
  "NONFINITE",
  "ConfigError",
  "parse_arg",
  "base_config",
  "follow_gnp_authors",
  "shrink_to_digits",
  "check_against_data",
  "validate",
]

# The choices are declared where they are implemented; these are only their config names.
OPTIMIZERS = optimizers.OPTIMIZERS
SCHEDULES = optimizers.SCHEDULES
CLIPS = optimizers.CLIPS
GNP_WARMUPS = gnp_transform.WARMUPS
GNP_METHODS = optimizers.GNP_METHODS
CYCLIC_MODES = schedules.CYCLIC_MODES
LR_FINDER_METHODS = lr_finder.METHODS
AUTOTUNE_SEARCHES = pid_autotune.SEARCHES
NONFINITE = ("skip", "halt")  # What the trainer does with a non-finite step.


class ConfigError(ValueError):
  """A configuration field holds a value the trainer cannot run with."""


def _describe(name: str, default) -> str:
  """How ``name`` is written in a config argument, for the error that lists them."""
  if isinstance(default, bool):
    return name
  if isinstance(default, tuple):
    return f"{name}={'|'.join(default)}"
  return f"{name}=<{type(default).__name__}>"


def _parse_value(name: str, text: str, default, allowed: str):
  """``text`` as the type of ``default``, or a :class:`ConfigError` that names ``name``."""
  if isinstance(default, bool):
    words = {"true": True, "1": True, "false": False, "0": False}
    if text.lower() in words:
      return words[text.lower()]
    expected = "True or False"
  elif isinstance(default, tuple):
    if text in default:
      return text
    expected = "one of " + ", ".join(default)
  else:
    try:
      return type(default)(text)
    except ValueError:
      expected = {int: "an integer", float: "a number"}[type(default)]
  raise ConfigError(f"config argument {name}: {text!r} is not {expected}; allowed: {allowed}")


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """The argument of a config file (``configs/x.py:ARG``) as named values, big_vision's way.

  ``ARG`` is a comma-separated list of ``name=value`` items; a bare ``name`` sets a flag
  (a ``bool`` default) to True. Each value takes the type of its default (``bool``,
  ``int``, ``float`` or ``str``); a default that is a tuple of strings lists the allowed
  values, the first being the default. Names not given keep their defaults.

  >>> arg = parse_arg("smoke,warmup=r", smoke=False, warmup=("zero", "r"), steps=10)
  >>> arg.smoke, arg.warmup, arg.steps
  (True, 'r', 10)
  >>> parse_arg("lr=fast", lr=0.1)
  Traceback (most recent call last):
  ...
  gnreg.configuration.ConfigError: config argument lr: 'fast' is not a number; allowed: lr=<float>

  Raises:
    ConfigError: for a name not in ``defaults`` or a value that does not parse, in one
      line that lists the allowed arguments.
  """
  for name, default in defaults.items():
    if not isinstance(default, (bool, int, float, str, tuple)):
      raise TypeError(
        f"parse_arg: the default of {name} must be a bool, int, float, str or "
        f"tuple of allowed strings, got {default!r}"
      )
  allowed = ", ".join(_describe(name, default) for name, default in defaults.items())
  values = {k: v[0] if isinstance(v, tuple) else v for k, v in defaults.items()}
  for item in (arg or "").split(","):
    name, has_value, text = (part.strip() for part in item.partition("="))
    if not name:
      continue
    if name not in defaults:
      raise ConfigError(f"config argument {name}: unknown; allowed: {allowed}")
    if not has_value and not isinstance(defaults[name], bool):
      raise ConfigError(f"config argument {name}: needs a value ({name}=...); allowed: {allowed}")
    values[name] = _parse_value(name, text, defaults[name], allowed) if has_value else True
  return ml_collections.ConfigDict(values)


def base_config() -> ml_collections.ConfigDict:
  """Every field the trainer reads, with a default that runs.

  Each comment says what a field means and, where it is not obvious, why its default is
  what it is; the allowed names of a choice are the constants at the top of this module.
  """
  config = ml_collections.ConfigDict()
  config.seed = 0  # One seed for init, data order, augmentation, dropout and gnp: a run repeats.

  config.model = ml_collections.ConfigDict()
  # A name from gnreg.models.available(); any other model.* field overrides the family's default.
  config.model.name = "ResNet18"

  config.data = data.default_config()

  config.batch_size = 128  # Global: split evenly over every device of every host.
  # m: each device's share of the batch is split into groups of m consecutive examples, and
  # everything the GNP authors do per device (BatchNorm batch statistics, gnp's perturbation,
  # dropout / drop-path / shake draws) is done per group, so that a run computes the same on
  # any number of devices and processes. None: one group per device (the authors' semantics).
  config.batch_group_size = ml_collections.FieldReference(None, field_type=int)
  # Process each device's groups one after another instead of side by side: gradient
  # accumulation with the same algorithm, in the memory of one group. Needs batch_group_size.
  config.sequential_groups = False
  config.num_epochs = 200.0  # Passes over the training split; fractions are allowed.
  config.label_smoothing = 0.0  # In [0, 1): the weight moved from the label to all classes.
  config.l2_regularization = 0.0  # c in the loss term 0.5 * c * ||w||^2 (coupled L2).
  # L2 and weight decay on kernels only, not on norms, biases, tokens or position embeddings,
  # as timm and big_vision do; False regularises every parameter, as the GNP authors' code.
  config.regularize_kernels_only = True
  config.half_precision = False  # bfloat16 activations; parameters and optimizer state float32.

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "momentum"  # From OPTIMIZERS: sgd, momentum, adam, adamw, rmsprop.
  config.optimizer.learning_rate = 0.1  # The peak: schedules warm up to it and decay from it.
  config.optimizer.momentum = 0.9  # Read by 'momentum' and 'rmsprop' only.
  config.optimizer.nesterov = False  # Read by 'momentum' only.
  config.optimizer.b1 = 0.9  # Adam's first-moment decay.
  config.optimizer.b2 = 0.999  # Adam's second-moment decay.
  config.optimizer.eps = 1e-8  # Adam's and RMSProp's floor under the denominator.
  config.optimizer.rms_decay = 0.9  # RMSProp's squared-gradient decay.
  # Decoupled (AdamW-style) decay, w -= lr * wd * w, outside any preconditioner; any optimizer.
  config.optimizer.weight_decay = 0.0

  config.schedule = ml_collections.ConfigDict()
  config.schedule.name = "cosine"  # From SCHEDULES; ignored under pid.enabled.
  config.schedule.warmup_epochs = 0.0  # Linear ramp from 0 to the peak, before any schedule.
  # cosine, linear and sam_exponential: the final rate as a fraction of the peak; None keeps
  # each schedule's own end (0 for cosine and linear, SAM's 0.012 for sam_exponential).
  config.schedule.end_lr_fraction = ml_collections.FieldReference(None, field_type=float)
  config.schedule.decay_epochs = (60, 120, 160)  # step: 30%, 60%, 80% of the default 200 epochs.
  config.schedule.decay_factor = 0.2  # step: the rate is multiplied by it at each decay epoch.
  config.schedule.epoch_decay_factor = 0.97  # exponential: the rate's multiplier per epoch.
  config.schedule.cycle_epochs = 4.0  # cyclic: half a cycle (Smith's step_size), in epochs.
  config.schedule.min_lr_fraction = 0.1  # cyclic: the cycle's low rate, as a fraction of the peak.
  config.schedule.cyclic_mode = "triangular"  # cyclic: from CYCLIC_MODES (gnreg.schedules).
  config.schedule.amplitude_decay_factor = 1.0  # cyclic exp_range: the amplitude's per-step factor.

  config.clip = ml_collections.ConfigDict()
  config.clip.name = "none"  # From CLIPS; acts on the gradient after the device mean.
  config.clip.max_norm = 1.0  # global_norm: the largest global norm let through.
  config.clip.max_value = 1.0  # value: each entry is clipped to [-max_value, max_value].
  config.clip.max_ratio = 0.01  # agc: the largest unit-wise ||g|| / ||w|| (NFNets' lambda).
  config.clip.min_param_norm = 1e-3  # agc: ||w|| is floored here, so zero-init units still move.
  config.clip.exclude = ("head/*",)  # agc: path globs left unclipped; NFNets spare the classifier.

  config.gnp = ml_collections.ConfigDict()
  # The finite-difference step along g / ||g||; the penalty is alpha * r, so 0 is plain training
  # (as in the GNP authors' code).
  config.gnp.r = 0.05
  config.gnp.alpha = 0.0  # In [0, 1]: the perturbed gradient's weight; 0 is plain training.
  # The GR warmup of Zhao et al. 2024, from GNP_WARMUPS: None, lambda, r or zero.
  config.gnp.warmup = ml_collections.FieldReference(None, field_type=str)
  config.gnp.warmup_epochs = 0.0  # Must be > 0 when gnp.warmup is set.
  # g / ||g|| in the first term of the mix, the authors' norm_perturbations (their default).
  config.gnp.normalize_base_grad = False
  # Perturb with the all-device mean gradient; the authors perturb each device with its own.
  config.gnp.sync_perturbation = False
  config.gnp.probability = 1.0  # Fraction of steps that pay for the penalty (hybrid training).
  # ASAM's ascent step (Kwon et al. 2021), scaled per weight by |w| + adaptive_eta.
  config.gnp.adaptive = False
  config.gnp.adaptive_eta = 0.01  # ASAM's eta >= 0: keeps zero weights perturbed.
  # What acts on each group's gradient, from GNP_METHODS: gnp (SAM at alpha = 1, ASAM with
  # adaptive), looksam (gnp's second gradient every gnp.looksam.k-th step only), exact_gnp (the
  # Hessian-vector product gnp approximates, lambda = alpha * r) or gsam (gnp.gsam, not r or
  # alpha). warmup, probability, normalize_base_grad, sync_perturbation, adaptive: gnp's alone.
  config.gnp.method = "gnp"
  # Parameter path globs (clip.exclude's syntax) that the ascent step leaves where they are, e.g.
  # ("*BatchNorm*", "head/*"); they still get the penalised gradient. Any gnp.method.
  config.gnp.perturbation_exclude = ()
  config.gnp.looksam = ml_collections.ConfigDict()
  config.gnp.looksam.k = 5  # The perturbed gradient every k-th step, reused between.
  config.gnp.looksam.reuse_weight = 0.7  # LookSAM's alpha: the reused part's weight (its ViTs').
  config.gnp.gsam = ml_collections.ConfigDict()
  # The radius at the schedule's peak rate; it follows the rate linearly down to rho_min at the
  # schedule's lowest rate after warmup (Zhuang et al. 2022). rho_min = rho_max, alpha = 0: SAM.
  config.gnp.gsam.rho_max = 0.05
  config.gnp.gsam.rho_min = 0.05  # The radius at the schedule's lowest rate.
  config.gnp.gsam.alpha = 0.0  # The surrogate-gap step's weight, >= 0 (big_vision's ViT: 0.6).
  config.gnp.gsam.minimize_fp = True  # Descend the perturbed loss (the paper's); False: the loss.
  config.gnp.gsam.adaptive = False  # big_vision's adaptive_perturbation: the step scaled by |w|.

  config.pid = ml_collections.ConfigDict()
  config.pid.enabled = False  # Let gnreg.pid_lr set the learning rate from the gradient norm.
  config.pid.target_norm = 1.0  # The gradient norm the controller steers towards.
  config.pid.kp = 1.0  # Proportional gain.
  config.pid.ki = 0.0  # Integral gain.
  config.pid.kd = 0.0  # Derivative gain.
  config.pid.min_lr = 1e-6  # Lowest learning rate the controller may set.
  config.pid.max_lr = 1e-2  # Highest learning rate the controller may set.
  # EMA factor of the measured gradient norm; None: 0.9 for the log law, 0 for the linear law
  # (the reference's own, which acts on each step's norm).
  config.pid.smoothing = ml_collections.FieldReference(None, field_type=float)
  config.pid.law = "log"  # log: the rate moves by factors; linear: the reference's own (bang-bang).
  config.pid.autotune = False  # Tune kp, ki, kd on the first epoch before training.
  config.pid.autotune_search = "grid"  # From AUTOTUNE_SEARCHES (gnreg.tuning.pid_autotune).
  config.pid.autotune_trials = 27  # A 3x3x3 grid of (kp, ki, kd), trained in lockstep.
  config.pid.autotune_steps = 0  # Tuning steps, from the first batch on; 0: one epoch.
  # (low, high) per searched dimension; () holds it at the value above. target_norm too.
  config.pid.autotune_space = ml_collections.ConfigDict(
    {"kp": (0.1, 5.0), "ki": (0.0, 0.5), "kd": (0.0, 0.5), "target_norm": ()}
  )
  # train_loss, or heldout_loss: the loss on a tenth of the epoch that no trial trains on.
  config.pid.autotune_objective = "train_loss"

  config.lr_finder = ml_collections.ConfigDict()
  config.lr_finder.enabled = False  # Pick optimizer.learning_rate by the finder before training.
  config.lr_finder.method = "max"  # From LR_FINDER_METHODS (see gnreg.tuning.find_lr).
  config.lr_finder.min_lr = 1e-5  # Lowest rate of the grid.
  config.lr_finder.max_lr = 1.0  # Highest rate of the grid.
  config.lr_finder.num_lrs = 100  # Rates in the grid.
  config.lr_finder.grid = "log"  # log or linear spacing; linear lets min_lr be 0.
  config.lr_finder.num_subsamples = 100  # Random subsamples each rate is tried on.
  config.lr_finder.batch_size = 32  # Examples per subsample.
  config.lr_finder.num_examples = 4096  # Training examples the subsamples are drawn from.
  # While lr_finder.method's rate sits at an edge of the grid, the grid grows beyond it (a log
  # grid 100 times further) so many times at most, measuring only the new rates.
  config.lr_finder.max_widenings = 2

  # skip: leave parameters and optimizer state as they were; halt: stop at the first, saving
  # its batch, to debug a divergence.
  config.nonfinite = "skip"
  config.max_consecutive_nonfinite = 10  # skip: so many in a row means divergence: stop.

  config.log_every_steps = 50  # Train metrics are averaged over these steps, then written.
  config.eval_every_epochs = 1.0  # And at the end.
  config.checkpoint_every_epochs = 1.0  # And at the end, and on SIGTERM.
  config.keep_checkpoints = 3  # The newest ones; older are deleted.
  # Resume even though model, optimizer, schedule, clip, gnp or pid differ from the saved run.
  config.allow_config_change = False
  return config


# Counts and sizes reach XLA, tf.data and the step counters as 32-bit integers.
_INT_MAX = 2**31 - 1
# jax.random.PRNGKey keeps 32 bits of a seed (2**32 and 0 make the same key), and NumPy's
# generators take no negative seed.
_SEED_MAX = 2**32 - 1


def _integer_fields(config: ml_collections.ConfigDict, prefix: str = ""):
  """``(dotted name, value)`` of every int-typed field of ``config``, in nested sections too."""
  for name in config.keys():
    value = config[name]
    if isinstance(value, ml_collections.ConfigDict):
      yield from _integer_fields(value, f"{prefix}{name}.")
    elif config.get_type(name) is int:
      yield f"{prefix}{name}", value


def _check_integers(config: ml_collections.ConfigDict) -> None:
  """Every int field (None where its default allows it) is a Python int in its range: ``seed``
  in ``[0, 2**32 - 1]``, every other, all counts and sizes, in ``[0, 2**31 - 1]``."""
  for field, value in _integer_fields(config):
    if value is None:  # Only a field declared with a None default may hold it.
      continue
    top = _SEED_MAX if field == "seed" else _INT_MAX
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
      why = " (jax.random.PRNGKey keeps 32 bits)" if field == "seed" else ""
      raise ConfigError(f"{field}: must be an integer in [0, {top}]{why}, got {value!r}")


def _choice(field: str, value, choices) -> None:
  if value not in choices:
    shown = ", ".join(repr(c) for c in choices)
    raise ConfigError(f"{field}: must be one of {shown}, got {value!r}")


def _finite(value) -> bool:
  """Whether ``value`` is a finite int or float (a bool is not a number here)."""
  number = isinstance(value, (int, float)) and not isinstance(value, bool)
  return number and math.isfinite(value)


def _positive(field: str, value, *, allow_zero: bool = False) -> None:
  """The transforms' and schedules' rule, in their words: finite and > 0 (or >= 0)."""
  if not (_finite(value) and (value >= 0 if allow_zero else value > 0)):
    bound = ">= 0" if allow_zero else "> 0"
    raise ConfigError(f"{field}: must be finite and {bound}, got {value!r}")


def follow_gnp_authors(config: ml_collections.ConfigDict) -> None:
  """Sets, in place, what every recipe of the GNP authors' code shares.

  Read from github.com/zhaoyang-0204/gnp (``config/base_config.py``, ``optimizer/``,
  ``training/``): Nesterov momentum 0.9 for their ``Momentum``; L2 (and AdamW's decay) on
  every parameter; no label smoothing; the device-averaged gradient clipped to global norm 5
  (their ``gradient_clipping``); the base gradient normalised in the penalty's mix (their
  ``norm_perturbations=True``); cosine decay to 0 after an optional linear warmup; float32;
  Mixup with one weight per batch, where a recipe mixes. Each config then sets its recipe's
  model, batch, rate, length, L2, r and alpha.
  """
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  config.regularize_kernels_only = False
  config.label_smoothing = 0.0
  config.clip.name = "global_norm"
  config.clip.max_norm = 5.0
  config.gnp.normalize_base_grad = True
  config.schedule.name = "cosine"
  config.half_precision = False
  # Their Mixup, where a recipe turns it on: one weight for the whole batch.
  config.data.mix_mode = "batch"


def shrink_to_digits(config: ml_collections.ConfigDict, num_epochs: float = 1) -> None:
  """Turns an experiment config, in place, into a seconds-long run on the embedded ``digits``.

  What every config's ``:smoke`` argument shares; each config then shrinks its own model.
  Warmups that the experiment has are kept, at half the shortened run.
  """
  config.data.name = "digits"  # Embedded and offline: no download.
  config.data.augment = False  # No crop or flip: the digits are centred 8x8 images.
  config.data.autoaugment = None  # Nor AutoAugment or Cutout.
  config.data.cutout = 0
  config.data.mixup_alpha = 0.0  # Nor batch mixing.
  config.data.cutmix_alpha = 0.0
  config.half_precision = False  # float32 throughout, for the CPU.
  config.batch_size = 32  # 44 steps per epoch of digits.
  config.num_epochs = num_epochs
  if config.schedule.warmup_epochs:
    config.schedule.warmup_epochs = num_epochs / 2
  if config.gnp.warmup is not None:
    config.gnp.warmup_epochs = num_epochs / 2
  config.log_every_steps = 10  # A train line every 10 steps.
  if config.batch_group_size is not None:
    config.batch_group_size = 8  # Groups as the experiment has them: four per batch of 32.


def check_against_data(config: ml_collections.ConfigDict, info: data.DatasetInfo) -> None:
  """Raises :class:`ConfigError` for a field that does not fit the dataset ``info`` describes.

  The dataset's size makes the epochs steps: the run must take at least one, and a warmup and
  step decays that lie in order in epochs must still do so in whole steps, which is how the
  trainer and its schedules (:func:`gnreg.optimizers.learning_rate_schedule`) count them.
  """
  if config.batch_size > info.num_train:
    raise ConfigError(
      f"batch_size: {config.batch_size} is more than the {info.num_train} training examples "
      f"of {info.name}; an epoch needs at least one whole batch"
    )
  per_epoch = data.steps_per_epoch(info, config.batch_size)
  steps = lambda epochs: int(epochs * per_epoch)  # As the trainer rounds them: down.
  epoch = f"an epoch of {info.name} is {per_epoch} steps of batch_size {config.batch_size}"
  total = steps(config.num_epochs)
  if total < 1:
    raise ConfigError(
      f"num_epochs: {config.num_epochs} is {total} steps ({epoch}); the run needs at least one "
      f"step, num_epochs >= {1 / per_epoch:.4g}"
    )
  sched = config.schedule
  warmup = steps(sched.warmup_epochs)
  if warmup and warmup >= total:
    raise ConfigError(
      f"schedule.warmup_epochs: {sched.warmup_epochs} is {warmup} steps, not fewer than the "
      f"run's {total} (num_epochs {config.num_epochs}; {epoch})"
    )
  if sched.name == "step" and not config.pid.enabled:
    boundaries = [steps(e) for e in sched.decay_epochs]
    points = [warmup, *boundaries]
    if any(a >= b for a, b in zip(points[:-1], points[1:], strict=True)):
      raise ConfigError(
        f"schedule.decay_epochs: {tuple(sched.decay_epochs)} fall on steps {tuple(boundaries)} "
        f"({epoch}); each must come after the warmup's {warmup} steps and after the one before"
      )


def _check_batch_groups(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """``batch_group_size`` divides each device's share of the batch; sequential needs groups."""
  m = config.batch_group_size
  if (
    not isinstance(config.batch_size, int)
    or config.batch_size < 1
    or config.batch_size % num_devices
  ):
    return  # batch_size's own check explains it.
  per_device = config.batch_size // num_devices
  layout = f"batch_size {config.batch_size} over {num_devices} device{'s' * (num_devices > 1)}"
  if m is not None and (not isinstance(m, int) or isinstance(m, bool) or m < 1):
    raise ConfigError(
      f"batch_group_size: must be a positive integer or None, got {m!r} (the per-device batch "
      f"is {per_device}: {layout})"
    )
  if m is not None and m > per_device:
    most = config.batch_size // m
    raise ConfigError(
      f"batch_group_size: {m} is more than the per-device batch of {per_device} ({layout}), and a "
      f"group cannot span devices; train on at most {most} device{'s' * (most > 1)}, raise "
      f"batch_size, or choose "
      f"a divisor of {per_device} (another m: another algorithm)"
    )
  if m is not None and per_device % m:
    divisors = [d for d in range(1, per_device + 1) if per_device % d == 0]
    raise ConfigError(
      f"batch_group_size: {m} does not divide the per-device batch of {per_device} "
      f"({layout}); use one of {', '.join(map(str, divisors))}"
    )
  if config.sequential_groups and m is None:
    raise ConfigError(
      "sequential_groups: needs batch_group_size, the size of the groups processed one after "
      "another; got batch_group_size=None"
    )


def _check_gnp_method(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """``gnp.method``, the fields it reads, and the gnp-only fields it does not."""
  gnp = config.gnp
  _choice("gnp.method", gnp.method, GNP_METHODS)
  globs = gnp.perturbation_exclude
  if not (isinstance(globs, (tuple, list)) and all(isinstance(g, str) for g in globs)):
    raise ConfigError(
      f"gnp.perturbation_exclude: must be a tuple of glob strings over parameter paths "
      f"(as clip.exclude), got {globs!r}"
    )
  if gnp.method != "gnp":
    only_gnp = (
      ("warmup", None),
      ("probability", 1.0),
      ("normalize_base_grad", False),
      ("sync_perturbation", False),
      ("adaptive", False),
    )
    for field, plain in only_gnp:
      if gnp[field] != plain:
        raise ConfigError(
          f"gnp.{field}: only gnp.method='gnp' reads it (leave it at {plain!r}); got "
          f"{gnp[field]!r} with gnp.method={gnp.method!r}"
        )
  if gnp.method == "looksam":
    if gnp.looksam.k < 1:
      raise ConfigError(f"gnp.looksam.k: must be a positive integer, got {gnp.looksam.k!r}")
    _positive("gnp.looksam.reuse_weight", gnp.looksam.reuse_weight, allow_zero=True)
    if num_devices > 1 or config.batch_group_size is not None:
      raise ConfigError(
        f"gnp.method: 'looksam' keeps the last perturbed gradient's orthogonal part as state, "
        f"one per device and batch group, which the trainer does not share; run it on one "
        f"device with batch_group_size=None (got {num_devices} devices, batch_group_size="
        f"{config.batch_group_size!r})"
      )
  if gnp.method == "gsam":
    gsam = gnp.gsam
    _positive("gnp.gsam.rho_max", gsam.rho_max, allow_zero=True)
    _positive("gnp.gsam.rho_min", gsam.rho_min, allow_zero=True)
    if gsam.rho_min > gsam.rho_max:
      raise ConfigError(
        f"gnp.gsam.rho_min: {gsam.rho_min} must be <= gnp.gsam.rho_max ({gsam.rho_max})"
      )
    _positive("gnp.gsam.alpha", gsam.alpha, allow_zero=True)
    if config.pid.enabled:
      raise ConfigError(
        "gnp.method: 'gsam' takes its radius from the learning-rate schedule, which "
        "pid.enabled replaces; turn one of them off"
      )


def validate(config: ml_collections.ConfigDict, *, num_devices: int) -> None:
  """Raises :class:`ConfigError` naming the first field that cannot run.

  Cheap: reads no data and compiles nothing (the dataset's own checks run when
  the trainer asks for its :func:`gnreg.data.dataset_info`).
  """
  # Before the generic integer check: a bad group size is explained with the batch it splits.
  _check_batch_groups(config, num_devices)
  _check_integers(config)
  try:  # The data fields, without TensorFlow: reading the dataset comes later.
    data_config.resolve(config.data)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  try:  # Any case; an unknown name suggests the closest ones.
    models.resolve(config.model.name)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if config.batch_size < 1:
    raise ConfigError(f"batch_size: must be a positive integer, got {config.batch_size!r}")
  if config.batch_size % num_devices:
    raise ConfigError(
      f"batch_size: {config.batch_size} does not divide evenly over {num_devices} devices; "
      f"use a multiple of {num_devices}"
    )
  _positive("num_epochs", config.num_epochs)
  if not 0 <= config.label_smoothing < 1:
    raise ConfigError(f"label_smoothing: must be in [0, 1), got {config.label_smoothing!r}")
  _positive("l2_regularization", config.l2_regularization, allow_zero=True)

  opt = config.optimizer
  _choice("optimizer.name", opt.name, OPTIMIZERS)
  _positive("optimizer.learning_rate", opt.learning_rate)
  _positive("optimizer.weight_decay", opt.weight_decay, allow_zero=True)
  if not 0 <= opt.momentum < 1:
    raise ConfigError(f"optimizer.momentum: must be in [0, 1), got {opt.momentum!r}")

  sched = config.schedule
  _choice("schedule.name", sched.name, SCHEDULES)
  _positive("schedule.warmup_epochs", sched.warmup_epochs, allow_zero=True)
  if sched.warmup_epochs >= config.num_epochs:
    raise ConfigError(
      f"schedule.warmup_epochs: {sched.warmup_epochs} must be shorter than "
      f"num_epochs ({config.num_epochs})"
    )
  if sched.name == "cyclic":
    _choice("schedule.cyclic_mode", sched.cyclic_mode, CYCLIC_MODES)
    _positive("schedule.cycle_epochs", sched.cycle_epochs)
    if not 0 <= sched.min_lr_fraction <= 1:  # The low rate may be 0, never above the peak.
      raise ConfigError(
        f"schedule.min_lr_fraction: must be in [0, 1], got {sched.min_lr_fraction!r}"
      )
    if not 0 < sched.amplitude_decay_factor <= 1:
      raise ConfigError(
        f"schedule.amplitude_decay_factor: must be in (0, 1], got {sched.amplitude_decay_factor!r}"
      )
  fraction = sched.end_lr_fraction
  if fraction is not None:  # sam_exponential decays exponentially: it never reaches 0.
    sam = sched.name == "sam_exponential"
    if not (0 < fraction <= 1 if sam else 0 <= fraction <= 1):
      raise ConfigError(
        f"schedule.end_lr_fraction: must be in {'(0, 1]' if sam else '[0, 1]'} for "
        f"schedule.name={sched.name!r}, got {fraction!r}"
      )
  if sched.name == "step" and any(e <= sched.warmup_epochs for e in sched.decay_epochs):
    raise ConfigError(
      f"schedule.decay_epochs: each must come after warmup_epochs ({sched.warmup_epochs}), "
      f"got {tuple(sched.decay_epochs)}"
    )
  if sched.name == "exponential" and not 0 < sched.epoch_decay_factor <= 1:
    raise ConfigError(
      f"schedule.epoch_decay_factor: must be in (0, 1], got {sched.epoch_decay_factor!r}"
    )

  clip = config.clip
  _choice("clip.name", clip.name, CLIPS)
  if clip.name == "global_norm":
    _positive("clip.max_norm", clip.max_norm)
  elif clip.name == "value":
    _positive("clip.max_value", clip.max_value)
  elif clip.name == "agc":
    _positive("clip.max_ratio", clip.max_ratio)

  gnp = config.gnp
  _positive("gnp.r", gnp.r, allow_zero=True)
  if not 0 <= gnp.alpha <= 1:
    raise ConfigError(f"gnp.alpha: must be in [0, 1], got {gnp.alpha!r}")
  _choice("gnp.warmup", gnp.warmup, GNP_WARMUPS)
  if gnp.warmup is not None and not gnp.warmup_epochs > 0:
    raise ConfigError(
      f"gnp.warmup_epochs: must be > 0 when gnp.warmup is {gnp.warmup!r}, got {gnp.warmup_epochs!r}"
    )
  if not 0 < gnp.probability <= 1:
    raise ConfigError(f"gnp.probability: must be in (0, 1], got {gnp.probability!r}")
  _positive("gnp.adaptive_eta", gnp.adaptive_eta, allow_zero=True)
  _check_gnp_method(config, num_devices)

  # The regulator's and the tuners' fields are checked whether or not they are switched on:
  # python -m gnreg.lr_find and python -m gnreg.autotune run them on any config.
  pid = config.pid
  if pid.enabled and sched.name != "constant":
    raise ConfigError(
      f"schedule.name: must be 'constant' when pid.enabled (the PID regulator sets the "
      f"learning rate), got {sched.name!r}"
    )
  _positive("pid.target_norm", pid.target_norm)
  _choice("pid.law", pid.law, pid_transform.LAWS)
  for gain in pid_autotune.GAINS:
    _positive(f"pid.{gain}", pid[gain], allow_zero=True)
  _positive("pid.min_lr", pid.min_lr)
  _positive("pid.max_lr", pid.max_lr)
  if pid.min_lr > pid.max_lr:
    raise ConfigError(f"pid.min_lr: {pid.min_lr} must be <= pid.max_lr ({pid.max_lr})")
  if pid.smoothing is not None and not 0 <= pid.smoothing < 1:
    raise ConfigError(f"pid.smoothing: must be in [0, 1) or None, got {pid.smoothing!r}")
  if pid.autotune and not pid.enabled:
    raise ConfigError(
      "pid.autotune: needs pid.enabled=True, since the gains it tunes are the "
      "PID regulator's; got pid.enabled=False"
    )
  _choice("pid.autotune_search", pid.autotune_search, AUTOTUNE_SEARCHES)
  _choice("pid.autotune_objective", pid.autotune_objective, pid_autotune.OBJECTIVES)
  for name, bounds in pid.autotune_space.items():
    if name not in pid_autotune.DIMENSIONS:
      raise ConfigError(
        f"pid.autotune_space.{name}: not a dimension; choose from {pid_autotune.DIMENSIONS}"
      )
    pair = isinstance(bounds, tuple) and len(bounds) == 2 and all(map(_finite, bounds))
    floor = "0 < low" if name == "target_norm" else "0 <= low"
    low_ok = pair and (bounds[0] > 0 if name == "target_norm" else bounds[0] >= 0)
    if bounds != () and not (low_ok and bounds[0] <= bounds[1]):
      raise ConfigError(
        f"pid.autotune_space.{name}: must be () or a finite (low, high) pair with {floor} <= "
        f"high, got {bounds!r}"
      )
  if pid.autotune_trials < 1:
    raise ConfigError(
      f"pid.autotune_trials: must be a positive integer, got {pid.autotune_trials!r}"
    )

  finder = config.lr_finder
  _choice("lr_finder.method", finder.method, LR_FINDER_METHODS)
  _choice("lr_finder.grid", finder.grid, lr_finder.GRIDS)
  _positive("lr_finder.min_lr", finder.min_lr, allow_zero=finder.grid == "linear")
  _positive("lr_finder.max_lr", finder.max_lr)
  if finder.min_lr >= finder.max_lr:
    raise ConfigError(
      f"lr_finder.min_lr: {finder.min_lr} must be below lr_finder.max_lr ({finder.max_lr})"
    )
  for field in ("num_lrs", "num_subsamples", "batch_size", "num_examples"):
    if finder[field] < 1:
      raise ConfigError(f"lr_finder.{field}: must be a positive integer, got {finder[field]!r}")

  _choice("nonfinite", config.nonfinite, NONFINITE)
  for field in ("log_every_steps", "keep_checkpoints", "max_consecutive_nonfinite"):
    if config[field] < 1:
      raise ConfigError(f"{field}: must be a positive integer, got {config[field]!r}")
  _positive("eval_every_epochs", config.eval_every_epochs)
  _positive("checkpoint_every_epochs", config.checkpoint_every_epochs)
