"""The trainer's optax chain, built from a config in one readable place.

Order of the chain, and why:

1. ``gnreg.gnp`` (or the method ``gnp.method`` names: ``looksam``, ``exact_gnp``, ``gsam``)
   turns each device's gradient into the gradient of the gradient-norm-penalised loss; it
   perturbs with the local gradient, as the authors' code does, so it must see per-device
   gradients;
2. the cross-device mean (done by gnp and gsam themselves when they are on);
3. clipping or AGC, on the averaged gradient, watched by ``monitor_clipping``;
4. the optimizer with its injected (scheduled) learning rate, driven by
   ``gnreg.pid_lr`` when the PID regulator is on;
5. ``monitor_updates``, so the logged update norm is what reaches the parameters.

Steps 3 to 5 sit inside ``optax.apply_if_finite``: a non-finite averaged
gradient leaves the parameters and every optimizer state unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

import gnreg
from gnreg import schedules
from gnreg.transforms._common import excluding

__all__ = [
  "OPTIMIZERS",
  "SCHEDULES",
  "CLIPS",
  "GNP_METHODS",
  "NEVER_APPLY",
  "kernels_only",
  "learning_rate_schedule",
  "injected_optimizer",
  "pid_arguments",
  "ChainParts",
  "lowest_rate",
  "uses_gnp",
  "syncs_perturbation",
  "create_parts",
  "create",
]

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "cosine", "linear", "step", "exponential", "sam_exponential", "cyclic")
CLIPS = ("none", "global_norm", "value", "agc")
# What acts on each group's gradient (config.gnp.method): gnreg.gnp, gnreg.looksam and
# gnreg.exact_gnp with gnp.r and gnp.alpha, or gnreg.gsam with gnp.gsam.
GNP_METHODS = ("gnp", "looksam", "exact_gnp", "gsam")

# apply_if_finite applies a non-finite update after this many in a row; the trainer stops
# the run long before (config.max_consecutive_nonfinite), so that never happens.
NEVER_APPLY = 2**31 - 1


def kernels_only(params):
  """True on the leaves L2 and weight decay act on under ``regularize_kernels_only``: kernels.

  The weights of dense and convolution layers (flax names them ``kernel``) are decayed;
  biases, normalisation scales and offsets, class tokens, position embeddings, relative
  position tables and layer-scale gains are not, as in timm's and big_vision's recipes.
  Going by the name rather than the rank keeps out the 2-D biases of attention layers.
  """
  return jax.tree_util.tree_map_with_path(
    lambda path, _: getattr(path[-1], "key", None) == "kernel", params
  )


def _optimizer(
  name: str,
  learning_rate,
  momentum=None,
  nesterov: bool = False,
  b1=None,
  b2=None,
  eps=None,
  rms_decay=None,
  weight_decay=None,
  decay_mask: Callable | None = None,
) -> optax.GradientTransformation:
  """One optimizer by name; its hyperparameters arrive injected as arrays.

  Unused hyperparameters stay ``None`` so that ``inject_hyperparams`` neither
  carries nor logs them.
  """
  if name == "adamw":
    return optax.adamw(learning_rate, b1, b2, eps, weight_decay=weight_decay, mask=decay_mask)
  base = {
    "sgd": lambda: optax.sgd(learning_rate),
    "momentum": lambda: optax.sgd(learning_rate, momentum, nesterov=nesterov),
    "adam": lambda: optax.adam(learning_rate, b1, b2, eps),
    "rmsprop": lambda: optax.rmsprop(learning_rate, rms_decay, eps, momentum=momentum),
  }[name]()
  if weight_decay is None:
    return base
  # Decoupled decay (Loshchilov & Hutter 2019): w -= lr * wd * w, outside the preconditioner.
  # The updates are already negated, so adding -lr * wd * w is that subtraction.
  return optax.chain(base, optax.add_decayed_weights(-learning_rate * weight_decay, decay_mask))


def _hyperparameters(opt: ml_collections.ConfigDict) -> dict:
  """The config fields that ``opt.name`` reads."""
  used = {
    "sgd": (),
    "momentum": ("momentum", "nesterov"),
    "adam": ("b1", "b2", "eps"),
    "adamw": ("b1", "b2", "eps"),
    "rmsprop": ("momentum", "rms_decay", "eps"),
  }[opt.name]
  hparams = {k: opt[k] for k in used}
  if opt.weight_decay or opt.name == "adamw":
    hparams["weight_decay"] = opt.weight_decay
  return hparams


def _with_warmup(schedule: optax.Schedule, peak: float, warmup_steps: int) -> optax.Schedule:
  """A linear ramp from 0 to ``peak`` over ``warmup_steps``, then ``schedule`` from its step 0."""
  if not warmup_steps:
    return schedule
  ramp = optax.linear_schedule(0.0, peak, warmup_steps)
  return optax.join_schedules([ramp, schedule], [warmup_steps])


def learning_rate_schedule(
  config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.Schedule:
  """The schedule ``config.schedule.name``, peaking at ``config.optimizer.learning_rate``."""
  sched = config.schedule
  peak = config.optimizer.learning_rate
  total = int(config.num_epochs * steps_per_epoch)
  warmup = int(sched.warmup_epochs * steps_per_epoch)
  if sched.name == "constant":
    return _with_warmup(optax.constant_schedule(peak), peak, warmup)
  fraction = sched.end_lr_fraction  # None: the schedule's own default.
  if sched.name == "cosine":
    end = {} if fraction is None else {"end_value": peak * fraction}
    return schedules.warmup_cosine(peak, total, warmup, **end)
  if sched.name == "linear":  # big_vision's 'linear' decay: from the peak to its end, linearly.
    end = peak * (fraction or 0.0)
    return _with_warmup(optax.linear_schedule(peak, end, max(1, total - warmup)), peak, warmup)
  if sched.name == "step":
    boundaries = [int(e * steps_per_epoch) - warmup for e in sched.decay_epochs]
    return _with_warmup(
      schedules.multistep_decay(peak, boundaries, sched.decay_factor), peak, warmup
    )
  if sched.name == "exponential":
    decay = schedules.exponential_decay(
      peak, sched.epoch_decay_factor, steps_per_epoch, staircase=True
    )
    return _with_warmup(decay, peak, warmup)
  if sched.name == "sam_exponential":
    end = {} if fraction is None else {"end_lr_ratio": fraction}
    return schedules.sam_exponential(peak, total, warmup, **end)
  if sched.name == "cyclic":
    return schedules.cyclic(
      peak * sched.min_lr_fraction,
      peak,
      max(1, int(sched.cycle_epochs * steps_per_epoch)),
      mode=sched.cyclic_mode,
      gamma=sched.amplitude_decay_factor,
    )
  raise ValueError(f"schedule.name: unknown schedule {sched.name!r}")


def pid_arguments(config: ml_collections.ConfigDict, *, gains: bool) -> dict:
  """The keyword arguments of ``gnreg.pid_lr`` that ``config.pid`` sets, besides the target.

  ``gains=False`` leaves out kp, ki and kd, for the autotuner that searches them.
  """
  pid = config.pid
  names = ("min_lr", "max_lr", "smoothing", "law") + (("kp", "ki", "kd") if gains else ())
  return {name: pid[name] for name in names}


def injected_optimizer(
  config: ml_collections.ConfigDict, learning_rate: float | optax.Schedule
) -> optax.GradientTransformation:
  """``config.optimizer`` alone, its hyperparameters injected (what PID and the tuners drive)."""
  opt = config.optimizer
  return optax.inject_hyperparams(_optimizer, static_args=("name", "nesterov", "decay_mask"))(
    name=opt.name,
    learning_rate=learning_rate,
    **_hyperparameters(opt),
    decay_mask=kernels_only if config.regularize_kernels_only else None,
  )


class ChainParts(NamedTuple):
  """The trainer's chain in its two parts: ``optax.chain(local, shared)`` is the whole.

  ``local`` sees the gradient of one group of examples (one device's share of the batch, or a
  batch group of ``config.batch_group_size``) and ends with the mean over ``axis_name``: it is
  gnp, whose perturbation comes from that gradient, or the plain mean. ``shared`` acts on the
  mean once per step: non-finite check, clipping, the optimizer, monitoring. The trainer calls
  ``local`` once per group and ``shared`` once; the state is the chain's ``(local, shared)``.
  """

  local: optax.GradientTransformationExtraArgs
  shared: optax.GradientTransformation


def syncs_perturbation(config: ml_collections.ConfigDict) -> bool:
  """Whether gnp is on and perturbs with the gradient averaged over all devices (and groups)."""
  return uses_gnp(config) and bool(config.gnp.sync_perturbation)


def uses_gnp(config: ml_collections.ConfigDict) -> bool:
  """Whether the chain has gnp: ``gnp.method`` is ``'gnp'`` and neither ``gnp.alpha`` nor
  ``gnp.r`` is 0, which is plain training (the GNP authors' code trains plainly at ``r = 0``)."""
  return config.gnp.method == "gnp" and _penalised(config)


def _penalised(config: ml_collections.ConfigDict) -> bool:
  """gnp, looksam and exact_gnp are on: neither ``gnp.alpha`` nor ``gnp.r`` is 0."""
  return config.gnp.alpha > 0 and config.gnp.r > 0


def lowest_rate(config: ml_collections.ConfigDict, steps_per_epoch: int) -> float:
  """The lowest rate of the learning-rate schedule after its warmup, up to the run's last step
  (a decaying schedule's end, a cyclic one's low rate, a constant one's peak): where
  ``gnp.method='gsam'`` reaches ``gnp.gsam.rho_min``."""
  schedule = learning_rate_schedule(config, steps_per_epoch)
  total = int(config.num_epochs * steps_per_epoch)
  warmup = min(int(config.schedule.warmup_epochs * steps_per_epoch), total)
  with jax.ensure_compile_time_eval():  # Concrete even when a caller traces the chain.
    rates = jax.vmap(schedule)(jnp.arange(warmup, total + 1))
  # The schedule computes in float32: a constant 0.1 comes back as 0.10000000149, above the
  # configured peak, which gsam refuses as lr_min > lr_max.
  return min(float(jnp.min(rates)), float(config.optimizer.learning_rate))


def create_parts(
  config: ml_collections.ConfigDict,
  steps_per_epoch: int,
  *,
  axis_name: Hashable | tuple[Hashable, ...] | None = None,
) -> ChainParts:
  """The two parts of :func:`create`'s chain, for a trainer that maps ``local`` over groups."""
  gnp_cfg, clip_cfg, opt = config.gnp, config.clip, config.optimizer

  mean = (
    optax.identity()
    if axis_name is None
    else optax.stateless(lambda grads, params: jax.lax.pmean(grads, axis_name))
  )
  # The parameters the ascent step leaves where they are, by the globs of clip.exclude's syntax.
  mask = None
  if gnp_cfg.perturbation_exclude:
    mask = excluding("gnp.perturbation_exclude:", tuple(gnp_cfg.perturbation_exclude))
  if gnp_cfg.method == "gsam":  # Its radius follows the schedule, from its peak to its lowest.
    gsam_cfg = gnp_cfg.gsam
    local = gnreg.gsam(
      gsam_cfg.rho_max,
      gsam_cfg.rho_min,
      gsam_cfg.alpha,
      learning_rate=learning_rate_schedule(config, steps_per_epoch),
      lr_max=opt.learning_rate,
      lr_min=lowest_rate(config, steps_per_epoch),
      minimize_fp=gsam_cfg.minimize_fp,
      adaptive=gsam_cfg.adaptive,
      axis_name=axis_name,
      perturbation_mask=mask,
    )
  elif not _penalised(config):
    local = mean
  elif gnp_cfg.method == "looksam":
    # Its state is per device; configuration.validate keeps it to one device and group.
    looksam_cfg = gnp_cfg.looksam
    local = optax.chain(
      gnreg.looksam(
        gnp_cfg.r,
        gnp_cfg.alpha,
        looksam_cfg.k,
        reuse_weight=looksam_cfg.reuse_weight,
        perturbation_mask=mask,
      ),
      mean,
    )
  elif gnp_cfg.method == "exact_gnp":  # The penalty gnp approximates: lam = alpha * r.
    local = optax.chain(gnreg.exact_gnp(gnp_cfg.alpha * gnp_cfg.r, perturbation_mask=mask), mean)
  else:
    local = gnreg.gnp(
      gnp_cfg.r,
      gnp_cfg.alpha,
      warmup=gnp_cfg.warmup,
      warmup_steps=max(1, round(gnp_cfg.warmup_epochs * steps_per_epoch)),
      normalize_base_grad=gnp_cfg.normalize_base_grad,
      axis_name=axis_name,
      sync_perturbation=gnp_cfg.sync_perturbation,
      probability=gnp_cfg.probability,
      seed=config.seed,
      adaptive=gnp_cfg.adaptive,
      adaptive_eta=gnp_cfg.adaptive_eta,
      perturbation_mask=mask,
    )

  clip = {
    "none": optax.identity,
    "global_norm": lambda: optax.clip_by_global_norm(clip_cfg.max_norm),
    "value": lambda: optax.clip(clip_cfg.max_value),
    "agc": lambda: gnreg.agc(
      clip_cfg.max_ratio, clip_cfg.min_param_norm, exclude=tuple(clip_cfg.exclude)
    ),
  }[clip_cfg.name]()

  # Under PID the controller owns the learning rate, so it starts from the constant peak.
  learning_rate = (
    opt.learning_rate if config.pid.enabled else learning_rate_schedule(config, steps_per_epoch)
  )
  optimizer = injected_optimizer(config, learning_rate)
  if config.pid.enabled:
    optimizer = gnreg.pid_lr(
      optimizer, target_norm=config.pid.target_norm, **pid_arguments(config, gains=True)
    )

  # After the mean, every device takes the same skip decision on a non-finite gradient:
  # parameters, optimizer and PID state stay as they were for that step.
  step = optax.chain(gnreg.monitor_clipping(clip), optimizer, gnreg.monitor_updates())
  shared = optax.apply_if_finite(step, max_consecutive_errors=NEVER_APPLY)
  return ChainParts(optax.with_extra_args_support(local), shared)


def create(
  config: ml_collections.ConfigDict,
  steps_per_epoch: int,
  *,
  axis_name: Hashable | tuple[Hashable, ...] | None = None,
) -> optax.GradientTransformationExtraArgs:
  """The full chain for ``config``; ``axis_name`` is the axis (or axes) the gradient is averaged
  over: the device axis of a train step, and the group axis with batch groups."""
  return optax.chain(*create_parts(config, steps_per_epoch, axis_name=axis_name))
