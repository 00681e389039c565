"""A PID controller that drives an optimizer's learning rate from the gradient norm."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

_INJECT_STATE_NAMES = ("InjectStatefulHyperparamsState", "InjectHyperparamsState")
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
    error: ``e_t = log(target_norm) - log(mhat_t)``; the next step's ``e_{t-1}``.
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


def _concrete_float(value: Any) -> float | None:
  """``float(value)``, or None when ``value`` is traced (inside ``inject_hyperparams``/jit)."""
  try:
    return float(value)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return None


def _in_hyperparams(path: tuple[Any, ...], _: Any) -> bool:
  """Selects ``hyperparams['learning_rate']`` of an ``inject_hyperparams`` state."""
  return _is_inject_field(path, "hyperparams")


def _in_hyperparams_states(path: tuple[Any, ...], _: Any) -> bool:
  """Selects ``hyperparams_states['learning_rate']``, present when the rate is a schedule."""
  return _is_inject_field(path, "hyperparams_states")


def _is_inject_field(path: tuple[Any, ...], field: str) -> bool:
  if len(path) < 2:
    return False
  parent = path[-2]
  return (
    isinstance(parent, optax.tree_utils.NamedTupleKey)
    and parent.tuple_name in _INJECT_STATE_NAMES
    and parent.name == field
  )


def pid_lr(
  optimizer: optax.GradientTransformation,
  *,
  target_norm: float = 1.0,
  kp: float = 1.0,
  ki: float = 0.0,
  kd: float = 0.0,
  min_lr: float = 1e-6,
  max_lr: float = 1e-2,
  smoothing: float = 0.9,
  integral_limit: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Sets ``optimizer``'s learning rate each step with a PID controller on the gradient norm.

  The idea is the ``GradientNormRegulator`` (a Keras callback): a
  proportional-integral-derivative controller that raises the learning rate
  while the gradient norm is below a target and lowers it while it is above,
  keeping the gradient norm near ``target_norm``. Here it acts in log space and
  inside the optimizer, on the very gradients it receives. With ``g_t`` the
  incoming updates at step ``t = 1, 2, ...``:

  - ``n_t = ||g_t||`` (global L2 norm, in float32);
    ``m_t = smoothing * m_{t-1} + (1 - smoothing) * n_t`` with ``m_0 = 0``,
    bias-corrected ``mhat_t = m_t / (1 - smoothing**t)`` (``smoothing = 0`` means
    ``mhat_t = n_t``).
  - ``e_t = log(target_norm) - log(mhat_t)``; ``D_t = e_t - e_{t-1}`` with ``D_1 = 0``.
  - ``u_t = kp * e_t + ki * I_t + kd * D_t``, where ``I_t = I_{t-1} + e_t`` (clipped to
    ``±integral_limit`` when set) except that the integral is held
    (``I_t = I_{t-1}``) when ``lr_0 * exp(u_t)`` computed with that candidate
    ``I_t`` (after the ``integral_limit`` clip) lies above ``max_lr`` with
    ``e_t > 0``, or below ``min_lr`` with ``e_t < 0`` (anti-windup).
  - ``lr_t = clip(lr_0 * exp(u_t), min_lr, max_lr)``, with ``lr_0`` the inner
    optimizer's initial ``learning_rate``; ``lr_t`` is used for this same step's
    update.

  ``log(mhat_t)`` is taken of ``mhat_t`` clipped to float32's normal range
  ``[tiny, max]``, so a zero gradient gives a large positive error, never NaN/inf. A
  non-finite ``n_t`` leaves every controller field of :class:`PIDState`
  (``count`` included) unchanged and runs the inner optimizer with the previous
  learning rate; skipping that update is the job of ``optax.apply_if_finite``.
  Before the first step ``lr`` is ``clip(lr_0, min_lr, max_lr)``, and the inner
  state's ``learning_rate`` is set to it, in that leaf's own dtype: for an
  optimizer injected in bfloat16 the rate applied is ``lr`` rounded to bfloat16,
  while :class:`PIDState` keeps it in float32.

  The wrapped optimizer must hold exactly one ``learning_rate`` injected as a
  constant by ``optax.inject_hyperparams``, anywhere in its state (so
  ``optax.chain(optax.inject_hyperparams(optax.sgd)(learning_rate=0.1), ...)``
  works); it is found and set with ``optax.tree_utils.tree_get``/``tree_set``. An
  injected *schedule* is refused, since ``inject_hyperparams`` would overwrite the
  controller's value with it every step.

  Args:
    optimizer: the optimizer whose injected ``learning_rate`` is controlled.
    target_norm: the gradient norm to hold, > 0.
    kp: proportional gain, >= 0.
    ki: integral gain, >= 0.
    kd: derivative gain, >= 0.
    min_lr: lower learning-rate bound, > 0.
    max_lr: upper learning-rate bound, >= ``min_lr``.
    smoothing: EMA factor of the gradient norm, in [0, 1).
    integral_limit: bound on ``|I_t|``, > 0, or None for none.

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
  """
  for name, value in (("kp", kp), ("ki", ki), ("kd", kd)):
    v = _concrete_float(value)
    if v is not None and not 0 <= v < math.inf:
      raise ValueError(f"pid_lr: {name} must be finite and >= 0, got {v}")
  for name, value in (("target_norm", target_norm), ("min_lr", min_lr), ("max_lr", max_lr)):
    v = _concrete_float(value)
    if v is not None and not 0 < v < math.inf:
      raise ValueError(f"pid_lr: {name} must be finite and > 0, got {v}")
  lo, hi = _concrete_float(min_lr), _concrete_float(max_lr)
  if lo is not None and hi is not None and not lo <= hi:
    raise ValueError(f"pid_lr: min_lr ({lo}) must be <= max_lr ({hi})")
  v = _concrete_float(smoothing)
  if v is not None and not 0 <= v < 1:
    raise ValueError(f"pid_lr: smoothing must be in [0, 1), got {v}")
  if integral_limit is not None:
    v = _concrete_float(integral_limit)
    if v is not None and not v > 0:
      raise ValueError(f"pid_lr: integral_limit must be > 0 or None, got {v}")

  inner = optax.with_extra_args_support(optimizer)
  f32 = lambda x: jnp.asarray(x, jnp.float32)

  def set_lr(inner_state: optax.OptState, lr: jax.Array) -> optax.OptState:
    # Keep the leaf's dtype (bfloat16 for bfloat16 params) so the state's types never
    # change between steps, which lax.cond in MultiSteps and apply_if_finite require.
    old = optax.tree_utils.tree_get(inner_state, "learning_rate", filtering=_in_hyperparams)
    return optax.tree_utils.tree_set(
      inner_state, _in_hyperparams, learning_rate=lr.astype(jnp.asarray(old).dtype)
    )

  def init_fn(params: optax.Params) -> PIDState:
    inner_state = inner.init(params)
    found = optax.tree_utils.tree_get_all_with_path(
      inner_state, "learning_rate", filtering=_in_hyperparams
    )
    if not found:
      raise ValueError(
        "pid_lr: optimizer has no injected learning_rate; build it with "
        "optax.inject_hyperparams(...)(learning_rate=<float>)"
      )
    if len(found) > 1:
      raise ValueError(
        f"pid_lr: optimizer must hold exactly one injected learning_rate, found {len(found)}"
      )
    if optax.tree_utils.tree_get_all_with_path(
      inner_state, "learning_rate", filtering=_in_hyperparams_states
    ):
      raise ValueError(
        "pid_lr: optimizer's injected learning_rate is a schedule; inject a constant float, "
        "which pid_lr then controls"
      )
    v = _concrete_float(found[0][1])
    if v is not None and not 0 < v < math.inf:
      raise ValueError(
        f"pid_lr: the optimizer's injected learning_rate is lr_0, the rate the control law "
        f"scales, so it must be finite and > 0, got {v}"
      )
    base_lr = f32(found[0][1])
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
      inner_state=set_lr(inner_state, lr),
    )

  def update_fn(
    updates: optax.Updates,
    state: PIDState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, PIDState]:
    s = f32(smoothing)
    n = f32(optax.tree.norm(optax.tree.cast(updates, jnp.float32)))
    count = state.count + 1
    t = count.astype(jnp.float32)
    m = s * state.smoothed_norm + (1 - s) * n
    mhat = m / (1 - s**t)
    # Clamped so that e is finite for any finite n: kp = 0 times an infinite e would be NaN.
    e = jnp.log(f32(target_norm)) - jnp.log(jnp.clip(mhat, _TINY, _HUGE))
    d = jnp.where(count == 1, 0.0, e - state.error)
    integral = state.integral + e
    if integral_limit is not None:
      integral = jnp.clip(integral, -f32(integral_limit), f32(integral_limit))
    lo, hi = f32(min_lr), f32(max_lr)
    # exp may overflow to inf (or underflow to 0); the comparisons and the clip below
    # handle both, and base_lr is floored so inf * 0 cannot make a NaN.
    base_lr = jnp.maximum(state.base_lr, _TINY)
    pd = f32(kp) * e + f32(kd) * d
    candidate = base_lr * jnp.exp(pd + f32(ki) * integral)
    hold = ((candidate > hi) & (e > 0)) | ((candidate < lo) & (e < 0))
    integral = jnp.where(hold, state.integral, integral)
    lr = jnp.clip(base_lr * jnp.exp(pd + f32(ki) * integral), lo, hi)

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
    inner_state = set_lr(state.inner_state, new_state.lr)
    updates, inner_state = inner.update(updates, inner_state, params, **extra_args)
    return updates, new_state._replace(inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
