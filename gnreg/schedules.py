"""Learning-rate schedules: ``step -> learning rate`` functions (``optax.Schedule``).

Every argument counted in time is in optimizer steps. Where optax has the
schedule these are named, validated wrappers around it; :func:`cyclic` and
:func:`sam_exponential` are written here because optax lacks them.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

__all__ = [
  "CYCLIC_MODES",
  "cyclic",
  "exponential_decay",
  "multistep_decay",
  "sam_exponential",
  "warmup_cosine",
]

CYCLIC_MODES = ("triangular", "triangular2", "exp_range")


def _check(ok: bool, where: str, name: str, value: object, allowed: str) -> None:
  if not ok:
    raise ValueError(f"schedules.{where}: {name} must be {allowed}, got {value!r}")


def _check_rate(where: str, name: str, value: float, *, positive: bool = True) -> None:
  """Learning rates: finite and > 0 (or >= 0 when ``positive`` is False)."""
  ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
  ok = ok and (value > 0 if positive else value >= 0)
  _check(ok, where, name, value, "a finite number > 0" if positive else "a finite number >= 0")


def _check_steps(where: str, name: str, value: int, *, positive: bool = True) -> None:
  ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
  ok = ok and (value > 0 if positive else value >= 0)
  _check(ok, where, name, value, "an int > 0" if positive else "an int >= 0")


def _check_factor(where: str, name: str, value: float) -> None:
  ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 < value <= 1
  _check(ok, where, name, value, "in (0, 1]")


def multistep_decay(
  init_value: float, boundaries: Sequence[int], gamma: float = 0.1
) -> optax.Schedule:
  """Multiplies the rate by ``gamma`` at each step in ``boundaries`` (PyTorch's ``MultiStepLR``).

  ``lr(step) = init_value * gamma ** #{b in boundaries : b <= step}``, computed by
  ``optax.piecewise_constant_schedule``; ``boundaries`` must be strictly
  increasing positive ints.

  Example:

    >>> sched = multistep_decay(1.0, boundaries=[100, 150], gamma=0.1)
    >>> print(sched(99), sched(100), sched(150))
    1.0 0.1 0.01
  """
  _check_rate("multistep_decay", "init_value", init_value, positive=False)
  _check_factor("multistep_decay", "gamma", gamma)
  bounds = list(boundaries)
  ok = all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in bounds)
  ok = ok and all(a < b for a, b in zip(bounds[:-1], bounds[1:], strict=True))
  _check(ok, "multistep_decay", "boundaries", boundaries, "strictly increasing ints > 0")
  return optax.piecewise_constant_schedule(init_value, {b: gamma for b in bounds})


def exponential_decay(
  init_value: float, decay_rate: float, decay_steps: int = 1, *, staircase: bool = False
) -> optax.Schedule:
  """Exponential decay, ``lr(step) = init_value * decay_rate ** (step / decay_steps)``.

  Computed by ``optax.exponential_decay``.
  With ``staircase=True`` the exponent is ``floor(step / decay_steps)``; with
  ``decay_steps`` = steps per epoch that is PyTorch's per-epoch ``ExponentialLR``.

  Example:

    >>> sched = exponential_decay(1.0, decay_rate=0.5, decay_steps=10)
    >>> print(sched(0), sched(5), sched(20))
    1.0 0.70710677 0.25
  """
  _check_rate("exponential_decay", "init_value", init_value, positive=False)
  _check_factor("exponential_decay", "decay_rate", decay_rate)
  _check_steps("exponential_decay", "decay_steps", decay_steps)
  return optax.exponential_decay(
    init_value, transition_steps=decay_steps, decay_rate=decay_rate, staircase=staircase
  )


def warmup_cosine(
  peak_value: float,
  total_steps: int,
  warmup_steps: int = 0,
  init_value: float = 0.0,
  end_value: float = 0.0,
) -> optax.Schedule:
  r"""Linear warmup to ``peak_value``, then cosine decay to ``end_value`` at ``total_steps``.

  Via ``optax.warmup_cosine_decay_schedule`` (whose ``decay_steps`` is
  ``total_steps``, warmup included). With ``w = warmup_steps``, ``T = total_steps``:

  - ``step < w``: ``init_value + (peak_value - init_value) * step / w``;
  - ``step >= w``: ``end_value + (peak_value - end_value) * (1 + cos(pi * s)) / 2``
    with ``s = min(step - w, T - w) / (T - w)``.

  Example:

    >>> sched = warmup_cosine(1.0, total_steps=110, warmup_steps=10)
    >>> print(sched(5), sched(10), sched(60), sched(110))
    0.5 1.0 0.5 0.0
  """
  _check_rate("warmup_cosine", "peak_value", peak_value)
  _check_steps("warmup_cosine", "total_steps", total_steps)
  _check_steps("warmup_cosine", "warmup_steps", warmup_steps, positive=False)
  _check(
    warmup_steps < total_steps,
    "warmup_cosine",
    "warmup_steps",
    warmup_steps,
    f"< total_steps ({total_steps})",
  )
  _check_rate("warmup_cosine", "init_value", init_value, positive=False)
  _check_rate("warmup_cosine", "end_value", end_value, positive=False)
  return optax.warmup_cosine_decay_schedule(
    init_value=init_value,
    peak_value=peak_value,
    warmup_steps=warmup_steps,
    decay_steps=total_steps,
    end_value=end_value,
  )


def sam_exponential(
  base_lr: float, total_steps: int, warmup_steps: int = 0, end_lr_ratio: float = 0.012
) -> optax.Schedule:
  r"""The "exponential" schedule of the SAM code (google-research/sam, ``sam_jax``).

  .. math::

     \mathrm{lr}(s) = \mathrm{base\_lr} \cdot
       \mathrm{end\_lr\_ratio}^{\,s / \mathrm{total\_steps}} \cdot
       \min(s / \mathrm{warmup\_steps},\ 1)

  (the warmup factor is 1 when ``warmup_steps`` = 0). The SAM code (Foret et al.
  2021, https://arxiv.org/abs/2010.01412, ``create_exponential_learning_rate_schedule``)
  writes it per epoch as ``base_lr * exp(-t / lamba) * min(t / warmup_epochs, 1)``,
  ``t = step / steps_per_epoch``, ``lamba = -num_epochs / log(0.012)``, "to mimic
  EfficientNet": a smooth, not stepwise, decay that reaches 1.2% of ``base_lr``
  at the end of training. The same schedule here takes
  ``total_steps = num_epochs * steps_per_epoch`` and
  ``warmup_steps = warmup_epochs * steps_per_epoch``. The warmup multiplies the
  decay rather than replacing it, as in the original. Built from
  ``optax.exponential_decay`` and ``optax.linear_schedule``.

  Example:

    >>> sched = sam_exponential(1.0, total_steps=100, warmup_steps=10, end_lr_ratio=0.25)
    >>> print(sched(0), sched(5), sched(50), sched(100))
    0.0 0.4665165 0.5 0.25
  """
  _check_rate("sam_exponential", "base_lr", base_lr)
  _check_steps("sam_exponential", "total_steps", total_steps)
  _check_steps("sam_exponential", "warmup_steps", warmup_steps, positive=False)
  ok = isinstance(end_lr_ratio, (int, float)) and 0 < end_lr_ratio <= 1
  _check(ok, "sam_exponential", "end_lr_ratio", end_lr_ratio, "in (0, 1]")
  decay = optax.exponential_decay(base_lr, transition_steps=total_steps, decay_rate=end_lr_ratio)
  if warmup_steps == 0:
    return decay
  warmup = optax.linear_schedule(0.0, 1.0, transition_steps=warmup_steps)
  return lambda step: decay(step) * warmup(step)


def cyclic(
  base_lr: float,
  max_lr: float,
  step_size: int,
  mode: str = "triangular",
  gamma: float = 1.0,
) -> optax.Schedule:
  r"""Cyclical learning rates (Smith 2017, https://arxiv.org/abs/1506.01186).

  The rate goes linearly from ``base_lr`` up to ``max_lr`` in ``step_size`` steps
  and back down in as many (a cycle is ``2 * step_size`` steps), as in the paper
  and the Keras ``CyclicLR`` callback:

  - ``cycle = floor(1 + step / (2 * step_size))``;
  - ``x = |step / step_size - 2 * cycle + 1|``;
  - ``lr = base_lr + (max_lr - base_lr) * max(0, 1 - x) * scale``, where ``scale``
    is 1 for ``'triangular'``, ``1 / 2**(cycle - 1)`` for ``'triangular2'`` (the
    amplitude halves each cycle) and ``gamma**step`` for ``'exp_range'``.

  Args:
    base_lr: the lower bound, >= 0.
    max_lr: the upper bound, >= ``base_lr``.
    step_size: steps per half cycle, an int > 0.
    mode: ``'triangular'``, ``'triangular2'`` or ``'exp_range'``.
    gamma: the per-step amplitude decay of ``'exp_range'``, in (0, 1].

  Returns:
    The schedule.

  Example:

    >>> sched = cyclic(0.1, 1.0, step_size=10, mode='triangular2')
    >>> print(sched(0), sched(10), sched(20), sched(30))
    0.1 1.0 0.1 0.55
  """
  _check_rate("cyclic", "base_lr", base_lr, positive=False)
  ok = isinstance(max_lr, (int, float)) and math.isfinite(max_lr) and max_lr >= base_lr
  _check(ok, "cyclic", "max_lr", max_lr, f"a finite number >= base_lr ({base_lr})")
  _check_steps("cyclic", "step_size", step_size)
  _check(mode in CYCLIC_MODES, "cyclic", "mode", mode, f"one of {CYCLIC_MODES}")
  _check_factor("cyclic", "gamma", gamma)

  def schedule(step: jax.typing.ArrayLike) -> jax.Array:
    step = jnp.asarray(step)
    cycle = 1 + jnp.floor_divide(step, 2 * step_size)
    # Kept as (step - k * step_size) / step_size so integer steps stay exact.
    x = jnp.abs(step - (2 * cycle - 1) * step_size).astype(jnp.float32) / step_size
    if mode == "triangular":
      scale = 1.0
    elif mode == "triangular2":
      scale = jnp.power(0.5, (cycle - 1).astype(jnp.float32))
    else:
      # exp(step * log(gamma)) with log taken in float64: float32(gamma) ** step would
      # carry gamma's rounding error times step (a 1e-4 relative error at 1e4 steps).
      scale = jnp.exp(step.astype(jnp.float32) * math.log(gamma))
    return base_lr + (max_lr - base_lr) * jnp.maximum(0.0, 1.0 - x) * scale

  return schedule
