"""GSAM: sharpness-aware minimisation guided by the surrogate gap, as an optax transformation.

Zhuang, Gong, Yuan, Cui, Adam, Dvornek, Tatikonda, Duncan and Liu, "Surrogate Gap Minimization
Improves Sharpness-Aware Training", ICLR 2022 (arXiv:2203.08065), Algorithm 1; the radius
follows the learning rate as in the authors' JAX code in big_vision
(``big_vision/trainers/proj/gsam``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gnreg.transforms._common import (
  all_finite,
  concrete_scalar,
  move_marked,
  only_marked,
  over_norm,
  perturbation_marks,
  require_grad_fn,
  tree_vdot,
)

__all__ = ["GSAMState", "gsam"]


class GSAMState(NamedTuple):
  """State of :func:`gsam`.

  Attributes:
    count: number of updates applied so far (int32), the step ``t`` at which
      ``learning_rate`` is read. A step whose output is not finite, which
      ``optax.apply_if_finite`` skips, leaves the state as it was, so that ``t`` keeps pace
      with the schedule of an optimizer inside ``apply_if_finite``. Nothing else is kept: the
      state advances alike whatever the data.
    rho: the radius :math:`\\rho_t` of the last update (float32, 0 before the first).
  """

  count: jax.Array
  rho: jax.Array


def _check(name: str, value: Any, *, low: float, strict: bool = False) -> float | None:
  """A concrete ``value`` finite and ``> low`` (``strict``) or ``>= low``; traced: None."""
  v = concrete_scalar("gsam", name, value)
  if v is not None and not (low < v < math.inf if strict else low <= v < math.inf):
    raise ValueError(f"gsam: {name} must be finite and {'>' if strict else '>='} {low:g}, got {v}")
  return v


def gsam(
  rho_max: float | jax.Array,
  rho_min: float | jax.Array,
  alpha: float | jax.Array,
  *,
  learning_rate: float | jax.Array | optax.Schedule,
  lr_max: float | jax.Array,
  lr_min: float | jax.Array,
  minimize_fp: bool = True,
  adaptive: bool = False,
  eps: float | jax.Array = 1e-12,
  axis_name: Hashable | tuple[Hashable, ...] | None = None,
  perturbation_mask: Any | Callable[[optax.Params], Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""GSAM: SAM's perturbed gradient, with a step that lowers the surrogate gap.

  With :math:`g = \nabla L(\theta)` the incoming gradient, the radius follows the learning
  rate linearly,

  .. math::

    \rho_t = \rho_{\min} + (\rho_{\max} - \rho_{\min})
             \frac{\eta_t - \eta_{\min}}{\eta_{\max} - \eta_{\min}}
    \quad (\rho_t = \rho_{\max} \text{ when } \eta_{\max} = \eta_{\min}),

  with :math:`\eta_t` = ``learning_rate(t)`` for a schedule (``t`` the transform's own update
  count, from 0) or the constant ``learning_rate``, and the gradient is taken at the perturbed
  point

  .. math::

    g_p = \nabla L\!\left(\theta + \rho_t \frac{g}{\|g\|_2 + \epsilon}\right)
    \quad\text{or, with } \texttt{adaptive}, \quad
    g_p = \nabla L\!\left(\theta + |\theta| \odot \rho_t \frac{g}{\|g\|_2 + \epsilon}\right).

  ``minimize_fp=True`` (the paper's Algorithm 1) descends the perturbed loss :math:`f_p` and
  ascends the surrogate gap :math:`h = f_p - f` only across :math:`g_p`, with
  :math:`u_p = g_p / \|g_p\|_2`:

  .. math::

    \text{update} = g_p - \alpha \left(g - \langle g, u_p \rangle u_p\right);

  ``minimize_fp=False`` descends :math:`f` itself, with :math:`u = g / \|g\|_2`:

  .. math::

    \text{update} = g + \alpha \left(g_p - \langle g_p, u \rangle u\right).

  Norms and inner products are global, over all leaves. ``rho_max = rho_min`` with
  ``alpha = 0`` and ``minimize_fp=True`` is SAM: the update is :math:`g_p`, what
  ``gnreg.gnp(r=rho_max, alpha=1.0)`` returns (with ``minimize_fp=False`` it is :math:`g`,
  plain training at twice the cost). The formula for :math:`\rho_t` holds outside
  :math:`[\eta_{\min}, \eta_{\max}]` too, as in big_vision: a warmup from a rate of 0 starts at
  :math:`\rho_{\min} - (\rho_{\max} - \rho_{\min})\, \eta_{\min} / (\eta_{\max} - \eta_{\min})`.
  ``adaptive`` is big_vision's ``adaptive_perturbation``, the step scaled by :math:`|\theta|`
  over the plain norm of :math:`g`; it is not ASAM's (``gnreg.gnp(..., adaptive=True)``).

  ``grad_fn``, passed to ``update`` as an extra argument, evaluates the gradient of the same
  loss on the same batch at other parameters (the convention of :func:`gnreg.gnp`); it is
  called once per update. Under ``shard_map`` or ``pmap``, ``axis_name`` (one name or a tuple)
  names the data-parallel axes: each device perturbs with its own gradient and the updates are
  averaged over the axes, as big_vision's trainer averages its per-device GSAM gradients. The
  arithmetic runs in float32, or in the inputs' precision when higher; the output has the
  incoming gradient's dtype.

  **Perturbing part of the parameters.** ``perturbation_mask`` (as optax's masks: a pytree of
  bools with the structure of ``params`` or a prefix of it, or a callable ``params -> such a
  pytree``) keeps the leaves marked ``False`` at ``params`` in the ascent step, whose norm and
  direction are then those of the marked leaves alone (``g`` with the other leaves set to
  zero). :math:`g_p` is the gradient at that partly perturbed point, and the decomposition
  above, over all leaves, gives every leaf its update.

  **Composition.** As :func:`gnreg.gnp`, gsam refuses to run inside ``optax.masked``,
  ``optax.multi_transform`` and ``optax.MultiSteps`` (each would hand it part of the
  parameters, or a mean gradient that its ``grad_fn`` does not match). Before ``MultiSteps``,
  ``optax.chain(gnreg.gsam(...), optax.MultiSteps(opt, every_k_schedule=k))`` applies GSAM to
  each micro-batch; its count then advances once per micro-batch, so give it the optimizer's
  schedule as ``learning_rate=lambda t: schedule(t // k)``. The trainer's sequential batch
  groups (``config.sequential_groups=True`` with ``config.batch_group_size``) do the same in
  bounded memory.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import gnreg
    >>> loss = lambda p: jnp.sum(jnp.cos(p))
    >>> params = jnp.array([0.5, 1.0])
    >>> schedule = optax.linear_schedule(0.1, 0.001, transition_steps=10)
    >>> opt = gnreg.gsam(0.5, 0.1, 0.3, learning_rate=schedule, lr_max=0.1, lr_min=0.001)
    >>> state = opt.init(params)
    >>> updates, state = opt.update(jax.grad(loss)(params), state, params, grad_fn=jax.grad(loss))
    >>> float(state.rho)  # rho_max at the peak rate
    0.5
    >>> [round(float(u), 4) for u in updates]  # g_p less 0.3 times the part of g across g_p
    [-0.2283, -0.5459]

  Args:
    rho_max: the radius at the rate ``lr_max``, finite and ``>= rho_min``.
    rho_min: the radius at the rate ``lr_min``, finite and ``>= 0``.
    alpha: :math:`\alpha`, the weight of the surrogate-gap step, finite and ``>= 0``.
    learning_rate: the optimizer's learning rate: a schedule ``step -> rate`` (read at the
      transform's own count) or a constant.
    lr_max: the rate at which the radius is ``rho_max`` (a schedule's peak), finite, ``> 0``.
    lr_min: the rate at which the radius is ``rho_min`` (a schedule's end), in
      ``[0, lr_max]``.
    minimize_fp: ``True``: descend the perturbed loss (Algorithm 1); ``False``: the loss.
    adaptive: big_vision's perturbation scaled by :math:`|\theta|` (see above).
    eps: added to :math:`\|g\|` in the perturbation, so that a zero gradient gives no NaN.
    axis_name: the data-parallel axis name, or a tuple of names, to average the updates over.
    perturbation_mask: the leaves the ascent step moves (see above); ``None`` moves all.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose state is a :class:`GSAMState`
    and whose ``update`` takes ``grads, state, params`` and the keyword argument
    ``grad_fn: params -> grads``.

  Raises:
    ValueError: for out-of-range arguments, a ``perturbation_mask`` that does not fit the
      parameters, and an ``update`` inside ``optax.masked``, ``optax.multi_transform`` or
      ``optax.MultiSteps``.

  References:
    Zhuang, Gong, Yuan, Cui, Adam, Dvornek, Tatikonda, Duncan and Liu, `Surrogate Gap
    Minimization Improves Sharpness-Aware Training <https://arxiv.org/abs/2203.08065>`_,
    ICLR 2022.

    Foret, Kleiner, Mobahi and Neyshabur, `Sharpness-Aware Minimization for Efficiently
    Improving Generalization <https://arxiv.org/abs/2010.01412>`_, ICLR 2021.
  """
  static_rho_max = _check("rho_max", rho_max, low=0)
  static_rho_min = _check("rho_min", rho_min, low=0)
  if None not in (static_rho_max, static_rho_min) and static_rho_min > static_rho_max:
    raise ValueError(f"gsam: rho_min must be <= rho_max, got {static_rho_min} > {static_rho_max}")
  _check("alpha", alpha, low=0)
  static_lr_max = _check("lr_max", lr_max, low=0, strict=True)
  static_lr_min = _check("lr_min", lr_min, low=0)
  if None not in (static_lr_max, static_lr_min) and static_lr_min > static_lr_max:
    raise ValueError(f"gsam: lr_min must be <= lr_max, got {static_lr_min} > {static_lr_max}")
  if not callable(learning_rate):
    _check("learning_rate", learning_rate, low=0)
  _check("eps", eps, low=0, strict=True)
  for name, flag in (("minimize_fp", minimize_fp), ("adaptive", adaptive)):
    if not isinstance(flag, bool):
      raise ValueError(f"gsam: {name} must be True or False, got {flag!r}")
  same_rates = (
    static_lr_max == static_lr_min if None not in (static_lr_max, static_lr_min) else None
  )

  def radius(count: jax.Array, dtype: Any) -> jax.Array:
    """:math:`\\rho_t` at update number ``count``."""
    top = jnp.asarray(rho_max, dtype)
    if same_rates:
      return top
    rate = learning_rate(count) if callable(learning_rate) else learning_rate
    low_lr, span = jnp.asarray(lr_min, dtype), jnp.asarray(lr_max, dtype) - lr_min
    bottom = jnp.asarray(rho_min, dtype)
    # lr_max > lr_min when concrete; the guard only protects traced values.
    fraction = (jnp.asarray(rate, dtype) - low_lr) / jnp.where(span > 0, span, 1)
    return jnp.where(span > 0, bottom + (top - bottom) * fraction, top)

  def init_fn(params: optax.Params) -> GSAMState:
    if all(hasattr(x, "shape") for x in jax.tree.leaves(params)):  # Not tree_map_params's.
      perturbation_marks("gsam", perturbation_mask, params)  # A mask that does not fit: now.
    return GSAMState(count=jnp.zeros([], jnp.int32), rho=jnp.zeros([], jnp.float32))

  def update_fn(
    updates: optax.Updates,
    state: GSAMState,
    params: optax.Params | None = None,
    *,
    grad_fn: Callable[[optax.Params], optax.Updates] | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, GSAMState]:
    del extra_args  # optax.chain hands every extra argument to every member.
    require_grad_fn("gsam", grad_fn, params)
    dtype = jnp.result_type(jnp.float32, *jax.tree.leaves(params), *jax.tree.leaves(updates))
    rho_t = radius(state.count, dtype)

    marks = perturbation_marks("gsam", perturbation_mask, params)
    direction = over_norm(only_marked(updates, marks), eps, dtype)  # g_M / (||g_M|| + eps)
    if adaptive:
      direction = jax.tree.map(lambda p, d: jnp.abs(p.astype(dtype)) * d, params, direction)
    step = jax.tree.map(lambda d: rho_t * d, direction)
    perturbed_grads = grad_fn(move_marked(params, step, marks, dtype))

    g = jax.tree.map(lambda x: x.astype(dtype), updates)
    g_p = jax.tree.map(lambda x: x.astype(dtype), perturbed_grads)
    alpha_ = jnp.asarray(alpha, dtype)
    if minimize_fp:  # g_p - alpha * (the part of g orthogonal to g_p)
      unit = over_norm(g_p, 0, dtype)
      along = tree_vdot(g, unit, dtype)
      mixed = jax.tree.map(lambda p, x, u: p - alpha_ * (x - along * u), g_p, g, unit)
    else:  # g + alpha * (the part of g_p orthogonal to g)
      unit = over_norm(g, 0, dtype)
      along = tree_vdot(g_p, unit, dtype)
      mixed = jax.tree.map(lambda x, p, u: x + alpha_ * (p - along * u), g, g_p, unit)
    new_updates = jax.tree.map(lambda m, u: m.astype(u.dtype), mixed, updates)
    if axis_name is not None:
      new_updates = jax.lax.pmean(new_updates, axis_name)

    new_state = GSAMState(count=optax.safe_increment(state.count), rho=rho_t.astype(jnp.float32))
    # optax.apply_if_finite skips a step whose gradient is not finite: the count must not
    # advance on it either, or the radius would run ahead of the optimizer's schedule.
    applied = all_finite(new_updates)
    new_state = jax.tree.map(lambda new, old: jnp.where(applied, new, old), new_state, state)
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
