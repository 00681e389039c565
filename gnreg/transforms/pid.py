"""A PID controller that drives an optimizer's learning rate from the gradient norm."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gnreg.transforms._common import (
  check_learning_rate,
  concrete_scalar,
  global_norm,
  is_inject_state,
)

__all__ = [
  "LAWS",
  "DEFAULT_SMOOTHING",
  "PIDState",
  "injected_learning_rate",
  "set_injected_learning_rate",
  "pid_lr",
]

LAWS = ("log", "linear")
# pid_lr's smoothing=None per law: the linear law is the reference's, which smooths nothing.
DEFAULT_SMOOTHING = {"log": 0.9, "linear": 0.0}
_TINY = float(jnp.finfo(jnp.float32).tiny)
_HUGE = float(jnp.finfo(jnp.float32).max)


class PIDState(NamedTuple):
  """State of :func:`pid_lr`; every field but ``inner_state`` is a scalar worth logging.

  Attributes:
    count: number of finite-gradient steps taken, ``t`` (int32).
    lr: the learning rate ``lr_t`` of the latest step (float32).
    base_lr: ``lr_0``, the wrapped optimizer's initial ``learning_rate`` (float32).
    grad_norm: the latest finite gradient norm ``n_t`` (float32).
    smoothed_norm: the EMA ``m_t`` before bias correction (float32).
    error: ``e_t`` (``log(target_norm) - log(mhat_t)`` for ``law='log'``,
      ``target_norm - mhat_t`` for ``law='linear'``); the next step's ``e_{t-1}``.
    integral: ``I_t`` (float32).
    inner_state: the wrapped optimizer's state, its ``learning_rate`` set to ``lr``.
  """

  count: jax.Array
  lr: jax.Array
  base_lr: jax.Array
  grad_norm: jax.Array
  smoothed_norm: jax.Array
  error: jax.Array
  integral: jax.Array
  inner_state: optax.OptState


def _inject_states(tree: Any) -> list[Any]:
  """Every ``inject_hyperparams`` state in ``tree``, nested ones included, outermost first."""
  found = []

  def visit(node: Any) -> None:
    if is_inject_state(node):
      found.append(node)
      jax.tree.map(visit, node.inner_state, is_leaf=is_inject_state)

  jax.tree.map(visit, tree, is_leaf=is_inject_state)
  return found


def injected_learning_rate(opt_state: optax.OptState, where: str) -> Any:
  """The one constant ``learning_rate`` that ``optax.inject_hyperparams`` put in ``opt_state``.

  ``pid_lr`` and the tuners (:func:`gnreg.tuning.find_lr`, :func:`gnreg.tuning.autotune_pid`)
  set that leaf to the rate they choose, so it must exist exactly once and must not be a
  schedule, which ``inject_hyperparams`` would re-evaluate over the value set every step.

  Args:
    opt_state: an optimizer state (concrete, traced, or ``jax.eval_shape``'s shapes).
    where: the caller's name, which starts every error message.

  Returns:
    The ``learning_rate`` leaf, as ``opt_state`` holds it.

  Raises:
    ValueError: when there is none, more than one, or a scheduled one.
  """
  holders = [s for s in _inject_states(opt_state) if "learning_rate" in s.hyperparams]
  if not holders:
    raise ValueError(
      f"{where}: optimizer has no injected learning_rate; build it with "
      "optax.inject_hyperparams(...)(learning_rate=<float>)"
    )
  if len(holders) > 1:
    raise ValueError(
      f"{where}: optimizer must hold exactly one injected learning_rate, found {len(holders)}"
    )
  if "learning_rate" in getattr(holders[0], "hyperparams_states", {}):
    raise ValueError(
      f"{where}: optimizer's injected learning_rate is a schedule, not a constant; inject "
      "a float, e.g. optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)"
    )
  return holders[0].hyperparams["learning_rate"]


def set_injected_learning_rate(opt_state: optax.OptState, lr: jax.Array) -> optax.OptState:
  """``opt_state`` with its injected ``learning_rate`` (see above) set to ``lr``.

  The leaf keeps its dtype (bfloat16 for bfloat16 params), so the state's types never change
  between steps, which ``lax.cond`` in ``MultiSteps`` and ``apply_if_finite`` require.
  """

  def visit(node: Any) -> Any:
    if not is_inject_state(node):
      return node
    hyperparams = node.hyperparams
    if "learning_rate" in hyperparams:
      dtype = jnp.asarray(hyperparams["learning_rate"]).dtype
      hyperparams = {**hyperparams, "learning_rate": jnp.asarray(lr).astype(dtype)}
    inner_state = jax.tree.map(visit, node.inner_state, is_leaf=is_inject_state)
    return node._replace(hyperparams=hyperparams, inner_state=inner_state)

  return jax.tree.map(visit, opt_state, is_leaf=is_inject_state)


def pid_lr(
  optimizer: optax.GradientTransformation,
  *,
  target_norm: float = 1.0,
  kp: float = 1.0,
  ki: float = 0.0,
  kd: float = 0.0,
  min_lr: float = 1e-6,
  max_lr: float = 1e-2,
  smoothing: float | None = None,
  integral_limit: float | None = None,
  law: str = "log",
) -> optax.GradientTransformationExtraArgs:
  r"""Sets ``optimizer``'s learning rate each step with a PID controller on the gradient norm.

  The idea is the ``GradientNormRegulator`` (a Keras callback): a
  proportional-integral-derivative controller that raises the learning rate
  while the gradient norm is below a target and lowers it while it is above,
  keeping the gradient norm near ``target_norm``. It acts inside the optimizer, on
  the very gradients it receives. With ``g_t`` the incoming updates at step
  ``t = 1, 2, ...``:

  - ``n_t = ||g_t||`` (global L2 norm, in float32);
    ``m_t = smoothing * m_{t-1} + (1 - smoothing) * n_t`` with ``m_0 = 0``,
    bias-corrected ``mhat_t = m_t / (1 - smoothing**t)`` (``smoothing = 0`` means
    ``mhat_t = n_t``). ``smoothing=None`` (default) is 0.9 for ``law='log'`` and 0 for
    ``law='linear'``, whose reference acts on each step's norm as it is measured.
  - ``D_t = e_t - e_{t-1}`` with ``D_1 = 0``, and ``u_t = kp * e_t + ki * I_t + kd * D_t``,
    where ``I_t = I_{t-1} + e_t``, clipped to ``±integral_limit`` when set.

  ``law='log'`` (default), multiplicative in log space:

  - ``e_t = log(target_norm) - log(mhat_t)``;
  - ``lr_t = clip(lr_0 * exp(u_t), min_lr, max_lr)``, with ``lr_0`` the inner optimizer's
    initial ``learning_rate``;
  - anti-windup: the integral is held (``I_t = I_{t-1}``) when ``lr_0 * exp(u_t)``
    computed with the candidate ``I_t`` (after the ``integral_limit`` clip) lies above
    ``max_lr`` with ``e_t > 0``, or below ``min_lr`` with ``e_t < 0``.

  ``law='linear'``, the GradientNormRegulator's own law as its code publishes it (with the
  default ``smoothing``, 0 for this law, the same numbers): the controller output is the rate,

  - ``e_t = target_norm - mhat_t``;
  - ``lr_t = clip(u_t, min_lr, max_lr)`` (``lr_0`` only sets the rate before the first
    step); no anti-windup, as published. An output that is NaN (``inf - inf`` from
    overflowing terms) sets ``min_lr``.

  Which law (measured by ``python scripts/pid_laws.py``: an MLP on ``digits``, SGD, 600 steps;
  the table is in the README). The linear law's rate is ``kp`` times how far the norm is
  *below* target (plus the I and D terms), so it lies above ``min_lr`` only while the norm is
  below target: with a target under the norms training starts with (0.3 there, first norms
  about 1) it sat at ``min_lr`` on 100% of the steps for every gain tried, and never trained.
  With a target above the norms (1.0), a gain small enough to stay inside the bounds
  (``kp=1``) reached a loss of 0.042 (a fixed rate of 0.3: 0.079), but the gain that reaches
  high rates (``kp=10``) threw the rate to ``max_lr``, where the norm passed the target, and
  then to ``min_lr``, where it stayed for 98% of the steps (a loss of 1.32: the norm stays above
  target at the floor, see below).
  The log law moves the rate by factors, smoothly (no step in any run changed it by more than
  2x), from either side of the target: with ``kp=0.5`` it held the norm within 17% of 0.3 at a
  loss of 0.188 (a fixed rate of 0.1: 0.169). So the log law is the default; the linear law is
  for reproducing the reference, or for a target that is a ceiling above the norms, with
  ``kp`` near ``lr_wanted / (target - norm)``. On that problem a higher rate *lowers* the
  gradient norm (fixed rates 0.1, 0.3 and 1.0 give 0.30, 0.25 and 0.17): a norm above target
  asks for a lower rate, which raises the norm, and both laws, given an integral term, drive
  the rate to the floor (the log law with ``ki=0.05``: 56% of the steps at ``min_lr``);
  :func:`gnreg.tuning.autotune_pid` reports it.

  In both, ``lr_t`` is used for this same step's update. ``log(mhat_t)`` is taken of
  ``mhat_t`` clipped to float32's normal range ``[tiny, max]``, so a zero gradient gives
  a large positive error, never NaN/inf. A non-finite ``n_t`` leaves every controller
  field of :class:`PIDState` (``count`` included) unchanged and runs the inner
  optimizer with the previous learning rate; skipping that update is the job of
  ``optax.apply_if_finite``. Before the first step ``lr`` is ``clip(lr_0, min_lr,
  max_lr)``, and the inner state's ``learning_rate`` is set to it, in that leaf's own
  dtype: for an optimizer injected in bfloat16 the rate applied is ``lr`` rounded to
  bfloat16, while :class:`PIDState` keeps it in float32.

  The wrapped optimizer must hold exactly one ``learning_rate`` injected as a
  constant by ``optax.inject_hyperparams``, anywhere in its state (so
  ``optax.chain(optax.inject_hyperparams(optax.sgd)(learning_rate=0.1), ...)``
  works), see :func:`injected_learning_rate`. An injected *schedule* is refused, since
  ``inject_hyperparams`` would overwrite the controller's value with it every step.

  Args:
    optimizer: the optimizer whose injected ``learning_rate`` is controlled.
    target_norm: the gradient norm to hold, > 0.
    kp: proportional gain, >= 0.
    ki: integral gain, >= 0.
    kd: derivative gain, >= 0.
    min_lr: lower learning-rate bound, > 0.
    max_lr: upper learning-rate bound, >= ``min_lr``.
    smoothing: EMA factor of the gradient norm, in [0, 1); None: 0.9 for ``law='log'``, 0 (the
      reference's unsmoothed norm) for ``law='linear'``.
    integral_limit: bound on ``|I_t|``, > 0, or None for none.
    law: ``'log'`` or ``'linear'``, see above.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a :class:`PIDState`;
    ``params`` and extra arguments are passed on to ``optimizer``.

  Raises:
    ValueError: for an argument out of range, and at ``init`` when ``optimizer``
      has no (or more than one, or a scheduled) injected ``learning_rate``.

  Example:

    >>> import jax.numpy as jnp
    >>> import optax
    >>> import gnreg
    >>> tx = gnreg.pid_lr(optax.inject_hyperparams(optax.sgd)(learning_rate=1e-3),
    ...                   target_norm=1.0, kp=0.5, smoothing=0.0)
    >>> params = jnp.zeros(4)
    >>> state = tx.init(params)
    >>> updates, state = tx.update(jnp.full(4, 0.125), state, params)  # ||g|| = 0.25
    >>> print(f"{float(state.lr):.4f}")  # 1e-3 * exp(0.5 * log(1 / 0.25))
    0.0020
    >>> print(updates)  # -lr * g
    [-0.00025 -0.00025 -0.00025 -0.00025]
    >>> linear = gnreg.pid_lr(optax.inject_hyperparams(optax.sgd)(learning_rate=1e-3),
    ...                       target_norm=1.0, kp=0.004, smoothing=0.0, law="linear")
    >>> _, state = linear.update(jnp.full(4, 0.125), linear.init(params), params)
    >>> print(f"{float(state.lr):.4f}")  # 0.004 * (1 - 0.25)
    0.0030
  """
  if law not in LAWS:
    raise ValueError(f"pid_lr: law must be one of {LAWS}, got {law!r}")
  if smoothing is None:
    smoothing = DEFAULT_SMOOTHING[law]
  for name, value in (("kp", kp), ("ki", ki), ("kd", kd)):
    v = concrete_scalar("pid_lr", name, value)
    if v is not None and not 0 <= v < math.inf:
      raise ValueError(f"pid_lr: {name} must be finite and >= 0, got {v}")
  v = concrete_scalar("pid_lr", "target_norm", target_norm)
  if v is not None and not 0 < v < math.inf:
    raise ValueError(f"pid_lr: target_norm must be finite and > 0, got {v}")
  check_learning_rate("pid_lr", "min_lr", min_lr)
  check_learning_rate("pid_lr", "max_lr", max_lr)
  lo = concrete_scalar("pid_lr", "min_lr", min_lr)
  hi = concrete_scalar("pid_lr", "max_lr", max_lr)
  if lo is not None and hi is not None and not lo <= hi:
    raise ValueError(f"pid_lr: min_lr ({lo}) must be <= max_lr ({hi})")
  v = concrete_scalar("pid_lr", "smoothing", smoothing)
  if v is not None and not 0 <= v < 1:
    raise ValueError(f"pid_lr: smoothing must be in [0, 1), got {v}")
  if integral_limit is not None:
    v = concrete_scalar("pid_lr", "integral_limit", integral_limit)
    if v is not None and not v > 0:
      raise ValueError(f"pid_lr: integral_limit must be > 0 or None, got {v}")

  inner = optax.with_extra_args_support(optimizer)
  f32 = lambda x: jnp.asarray(x, jnp.float32)

  def init_fn(params: optax.Params) -> PIDState:
    inner_state = inner.init(params)
    lr0 = injected_learning_rate(inner_state, "pid_lr")
    if not isinstance(lr0, jax.core.Tracer):  # A concrete array is checked by its value.
      check_learning_rate(
        "pid_lr",
        "the optimizer's injected learning_rate (lr_0, the rate the log law scales)",
        np.asarray(lr0),
      )
    base_lr = f32(lr0)
    lr = jnp.clip(base_lr, f32(min_lr), f32(max_lr))
    zero = jnp.zeros([], jnp.float32)
    return PIDState(
      count=jnp.zeros([], jnp.int32),
      lr=lr,
      base_lr=base_lr,
      grad_norm=zero,
      smoothed_norm=zero,
      error=zero,
      integral=zero,
      inner_state=set_injected_learning_rate(inner_state, lr),
    )

  def integrate(state: PIDState, e: jax.Array) -> jax.Array:
    integral = state.integral + e
    if integral_limit is not None:
      integral = jnp.clip(integral, -f32(integral_limit), f32(integral_limit))
    return integral

  def log_law(state: PIDState, mhat: jax.Array, first: jax.Array) -> tuple[jax.Array, ...]:
    # Clamped so that e is finite for any finite n: kp = 0 times an infinite e would be NaN.
    e = jnp.log(f32(target_norm)) - jnp.log(jnp.clip(mhat, _TINY, _HUGE))
    d = jnp.where(first, 0.0, e - state.error)
    integral = integrate(state, e)
    lo, hi = f32(min_lr), f32(max_lr)
    # exp may overflow to inf (or underflow to 0); the comparisons and the clip below
    # handle both, and base_lr is floored so inf * 0 cannot make a NaN.
    base_lr = jnp.maximum(state.base_lr, _TINY)
    pd = f32(kp) * e + f32(kd) * d
    candidate = base_lr * jnp.exp(pd + f32(ki) * integral)
    hold = ((candidate > hi) & (e > 0)) | ((candidate < lo) & (e < 0))
    integral = jnp.where(hold, state.integral, integral)
    return e, integral, jnp.clip(base_lr * jnp.exp(pd + f32(ki) * integral), lo, hi)

  def linear_law(state: PIDState, mhat: jax.Array, first: jax.Array) -> tuple[jax.Array, ...]:
    e = f32(target_norm) - mhat
    d = jnp.where(first, 0.0, e - state.error)
    # Kept finite so that ki * integral stays a number after a run of huge norms.
    integral = jnp.clip(integrate(state, e), -_HUGE, _HUGE)
    u = f32(kp) * e + f32(ki) * integral + f32(kd) * d
    lr = jnp.where(jnp.isnan(u), f32(min_lr), jnp.clip(u, f32(min_lr), f32(max_lr)))
    return e, integral, lr

  law_fn = log_law if law == "log" else linear_law

  def update_fn(
    updates: optax.Updates,
    state: PIDState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, PIDState]:
    s = f32(smoothing)
    n = f32(global_norm(updates))
    count = state.count + 1
    m = s * state.smoothed_norm + (1 - s) * n
    mhat = m / (1 - s ** count.astype(jnp.float32))
    e, integral, lr = law_fn(state, mhat, count == 1)

    finite = jnp.isfinite(n)
    keep = lambda new, old: jnp.where(finite, new, old).astype(old.dtype)
    new_state = PIDState(
      count=keep(count, state.count),
      lr=keep(lr, state.lr),
      base_lr=state.base_lr,
      grad_norm=keep(n, state.grad_norm),
      smoothed_norm=keep(m, state.smoothed_norm),
      error=keep(e, state.error),
      integral=keep(integral, state.integral),
      inner_state=state.inner_state,
    )
    inner_state = set_injected_learning_rate(state.inner_state, new_state.lr)
    updates, inner_state = inner.update(updates, inner_state, params, **extra_args)
    return updates, new_state._replace(inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
