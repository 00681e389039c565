"""Gradient norm penalty (GNP) as an optax gradient transformation.

Implements the finite-difference gradient of the gradient-norm-penalised loss of
Zhao, Zhang and Hu (ICML 2022, arXiv:2202.03599), together with the gradient
regularisation warmups of Zhao, Zhang and Hu (ICML 2024, arXiv:2406.09723).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gnreg.transforms._common import concrete_scalar, global_norm

__all__ = ["WARMUPS", "GNPState", "gnp"]

WARMUPS = (None, "lambda", "r", "zero")


class GNPState(NamedTuple):
  """State of :func:`gnp`.

  Attributes:
    count: number of updates done so far (int32); the warmups count from it.
    key: raw ``uint32`` PRNG key that draws the hybrid-training coin flips.
    r: the perturbation radius used by the last update, after warmup (float32,
      0 before the first update).
    alpha: the penalty weight used by the last update, after warmup and the
      hybrid coin flip (float32, 0 before the first update and on every step
      where the penalty was skipped).
  """

  count: jax.Array
  key: jax.Array
  r: jax.Array
  alpha: jax.Array


def _validate(
  r: Any,
  alpha: Any,
  warmup: str | None,
  warmup_steps: Any,
  axis_name: Hashable | None,
  sync_perturbation: bool,
  probability: Any,
  eps: Any,
) -> None:
  r_ = concrete_scalar("gnp", "r", r)
  if r_ is not None and not 0 <= r_ < np.inf:
    raise ValueError(f"gnp: r must be finite and >= 0, got {r_}")
  alpha_ = concrete_scalar("gnp", "alpha", alpha)
  if alpha_ is not None and not 0 <= alpha_ <= 1:
    raise ValueError(f"gnp: alpha must be in [0, 1], got {alpha_}")
  if warmup not in WARMUPS:
    raise ValueError(f"gnp: warmup must be one of None, 'lambda', 'r', 'zero', got {warmup!r}")
  steps_ = concrete_scalar("gnp", "warmup_steps", warmup_steps)
  if steps_ is not None:
    if not steps_ >= 0:
      raise ValueError(f"gnp: warmup_steps must be >= 0, got {warmup_steps}")
    if warmup is not None and steps_ <= 0:
      raise ValueError(f"gnp: warmup_steps must be > 0 when warmup={warmup!r}, got {warmup_steps}")
  probability_ = concrete_scalar("gnp", "probability", probability)
  if probability_ is not None and not 0 < probability_ <= 1:
    raise ValueError(f"gnp: probability must be in (0, 1], got {probability_}")
  eps_ = concrete_scalar("gnp", "eps", eps)
  if eps_ is not None and not 0 < eps_ < np.inf:
    raise ValueError(f"gnp: eps must be finite and > 0, got {eps_}")
  if sync_perturbation and axis_name is None:
    raise ValueError(
      "gnp: sync_perturbation=True needs an axis_name to average over, got axis_name=None"
    )


def gnp(
  r: float | jax.Array,
  alpha: float | jax.Array,
  *,
  warmup: str | None = None,
  warmup_steps: int | jax.Array = 0,
  normalize_base_grad: bool = False,
  axis_name: Hashable | None = None,
  sync_perturbation: bool = False,
  probability: float | jax.Array = 1.0,
  seed: int | jax.Array = 0,
  eps: float | jax.Array = 1e-12,
) -> optax.GradientTransformationExtraArgs:
  r"""Gradient norm penalty (GNP) by a finite difference.

  Replaces the gradient ``g1`` of the loss :math:`L` by the gradient of the
  penalised loss :math:`L(\theta) + \lambda \|\nabla L(\theta)\|_2`. Its exact
  gradient needs a Hessian-vector product, :math:`\nabla L + \lambda H
  \nabla L / \|\nabla L\|`, which a forward finite difference of step ``r``
  along the normalised gradient replaces by a second gradient evaluation:

  .. math::

    g = (1 - \alpha)\, b + \alpha\, \nabla L\!\left(\theta + r\,
        \frac{g_1}{\|g_1\|_2 + \epsilon}\right),
    \qquad \alpha = \lambda / r,

  with :math:`b = g_1` or, when ``normalize_base_grad=True`` (the default of
  the authors' reference code), :math:`b = g_1 / (\|g_1\|_2 + \epsilon)`.
  The norm is global, over all leaves. With ``alpha = 1`` this is SAM (Foret
  et al., 2021) with a normalised ascent step of radius ``r``; the paper's
  penalty coefficient is ``lambda = alpha * r``.

  The second gradient comes from ``grad_fn``, passed to ``update`` as an extra
  argument; it must evaluate the gradient of the same loss on the same batch
  that produced ``grads``. (So put gnp inside ``optax.MultiSteps`` only with a
  ``grad_fn`` of the micro-batch whose ``grads`` it receives: it then penalises
  each micro-batch and the accumulation averages the results. Around
  ``MultiSteps``, ``grads`` are already an average over micro-batches that
  ``grad_fn`` would have to cover too.) When the effective ``alpha`` of a step is 0 the
  second gradient is not computed at all (``lax.cond``), so that step costs a
  single gradient. When the arguments fix the effective ``alpha`` for every
  step (a concrete ``alpha`` and ``probability == 1``, with no warmup or the
  ``'r'`` warmup) there is no ``lax.cond``: both gradients sit in the top-level
  computation. That matters on CPU, where XLA leaves the weight-gradient
  convolutions inside a conditional branch in a layout its fast convolution
  kernels do not take, which makes a penalised step of a convolutional network
  an order of magnitude slower (jax-ml/jax#12868); the schedules that need the
  ``lax.cond`` (``'lambda'`` and ``'zero'`` warmups, ``probability < 1``,
  injected ``alpha``) still pay that on CPU, not on GPU or TPU.

  Gradient regularisation warmups (arXiv:2406.09723), with ``t`` the step
  counted from 0 and ``W = warmup_steps``:

  * ``'lambda'``: ``alpha_t = alpha * min(1, t / W)``;
  * ``'r'``: ``r_t = r * min(1, t / W)``;
  * ``'zero'``: ``alpha_t = 0`` while ``t < W``, then ``alpha``;
  * ``None``: no warmup.

  ``probability < 1`` applies the penalty on a random fraction of the steps
  (the authors' "hybrid training"); the other steps return :math:`b`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import gnreg
    >>> loss = lambda p: 0.5 * jnp.sum(p ** 2)
    >>> params = jnp.array([3.0, 4.0])
    >>> opt = gnreg.gnp(r=0.5, alpha=0.5)
    >>> state = opt.init(params)
    >>> grads = jax.grad(loss)(params)
    >>> updates, state = opt.update(grads, state, params, grad_fn=jax.grad(loss))
    >>> updates  # g1 + alpha * r * g1 / ||g1|| for this quadratic
    Array([3.15, 4.2 ], dtype=float32)

  Args:
    r: radius of the finite-difference step, ``>= 0``.
    alpha: weight of the perturbed gradient, in ``[0, 1]``; ``lambda / r`` in
      the paper's notation.
    warmup: ``None``, ``'lambda'``, ``'r'`` or ``'zero'`` (see above).
    warmup_steps: length ``W`` of the warmup, ``> 0`` when ``warmup`` is set.
    normalize_base_grad: use ``g1 / ||g1||`` instead of ``g1`` as the first
      term, as the authors' code does.
    axis_name: under ``shard_map`` or ``pmap``, the data-parallel axis; ``grads``
      are then the per-device gradients and the output is averaged over it.
      Under ``shard_map`` with ``check_vma=True``, ``jax.grad`` with respect to
      replicated params already sums over the axis: make the params
      device-varying first (``jax.lax.pcast(params, axis_name, to='varying')``)
      so that ``grads`` and ``grad_fn`` are per device.
    sync_perturbation: average ``g1`` over ``axis_name`` before building the
      perturbation (and the first term). The default perturbs each device with
      its own gradient, as in the paper.
    probability: chance, in ``(0, 1]``, that a step is penalised.
    seed: seed of the PRNG key that draws the penalised steps.
    eps: added to the gradient norm so that a zero gradient gives no NaN.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose ``update`` takes
    ``grads, state, params`` and the keyword argument
    ``grad_fn: params -> grads``.

  Raises:
    ValueError: for out-of-range arguments.

  References:
    Zhao, Zhang and Hu, `Penalizing Gradient Norm for Efficiently Improving
    Generalization in Deep Learning <https://arxiv.org/abs/2202.03599>`_,
    ICML 2022.

    Zhao, Zhang and Hu, `When Will Gradient Regularization Be Harmful?
    <https://arxiv.org/abs/2406.09723>`_, ICML 2024.

    Foret, Kleiner, Mobahi and Neyshabur, `Sharpness-Aware Minimization for
    Efficiently Improving Generalization <https://arxiv.org/abs/2010.01412>`_,
    ICLR 2021.
  """
  _validate(r, alpha, warmup, warmup_steps, axis_name, sync_perturbation, probability, eps)
  # Known at trace time: whether every step is penalised (alpha > 0 on every step) or none is.
  static_alpha = concrete_scalar("gnp", "alpha", alpha)
  static_probability = concrete_scalar("gnp", "probability", probability)
  always_penalised = (
    static_alpha is not None
    and static_alpha > 0
    and static_probability == 1.0
    and warmup in (None, "r")
  )

  def init_fn(params: optax.Params) -> GNPState:
    del params
    return GNPState(
      count=jnp.zeros([], jnp.int32),
      key=jax.random.PRNGKey(seed),
      r=jnp.zeros([], jnp.float32),
      alpha=jnp.zeros([], jnp.float32),
    )

  def effective_hyperparams(count: jax.Array) -> tuple[jax.Array, jax.Array]:
    r_t = jnp.asarray(r, jnp.float32)
    alpha_t = jnp.asarray(alpha, jnp.float32)
    if warmup is None:
      return r_t, alpha_t
    t = count.astype(jnp.float32)
    steps = jnp.asarray(warmup_steps, jnp.float32)
    # warmup_steps is validated > 0 when concrete; the guard only protects traced values.
    ramp = jnp.where(steps > 0, jnp.minimum(1.0, t / jnp.where(steps > 0, steps, 1.0)), 1.0)
    if warmup == "lambda":
      alpha_t = alpha_t * ramp
    elif warmup == "r":
      r_t = r_t * ramp
    else:
      alpha_t = jnp.where(t < steps, 0.0, alpha_t)
    return r_t, alpha_t

  def update_fn(
    updates: optax.Updates,
    state: GNPState,
    params: optax.Params | None = None,
    *,
    grad_fn: Callable[[optax.Params], optax.Updates] | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, GNPState]:
    del extra_args  # optax.chain hands every extra argument to every member.
    if grad_fn is None:
      raise ValueError("gnp: update needs grad_fn=<params -> grads>, got None")
    if params is None:
      raise ValueError("gnp: update needs params to perturb, got None")

    r_t, alpha_t = effective_hyperparams(state.count)
    key, subkey = jax.random.split(state.key)
    penalised = jax.random.uniform(subkey) < jnp.asarray(probability, jnp.float32)
    alpha_t = jnp.where(penalised, alpha_t, 0.0)

    g1 = updates
    if sync_perturbation:
      g1 = jax.lax.pmean(g1, axis_name)
    denom = global_norm(g1) + jnp.asarray(eps, jnp.float32)
    # eps can round to 0 when inject_hyperparams casts it to float16; a zero g1 must still
    # give a zero perturbation rather than 0 * inf = NaN.
    inv_norm = jnp.where(denom > 0, 1.0 / jnp.where(denom > 0, denom, 1.0), 0.0)
    if normalize_base_grad:
      base = jax.tree.map(lambda g: g.astype(jnp.float32) * inv_norm, g1)
    else:
      base = g1

    def average(tree):
      # Inside the branches so both return values of the same (device-invariant) kind
      # under shard_map; the predicate is the same on every device.
      return tree if axis_name is None else jax.lax.pmean(tree, axis_name)

    def with_penalty(_):
      step = r_t * inv_norm
      perturbed = jax.tree.map(
        lambda p, g: (p.astype(jnp.float32) + step * g.astype(jnp.float32)).astype(p.dtype),
        params,
        g1,
      )
      g2 = grad_fn(perturbed)
      mixed = jax.tree.map(
        lambda b, h, u: (
          (1.0 - alpha_t) * b.astype(jnp.float32) + alpha_t * h.astype(jnp.float32)
        ).astype(u.dtype),
        base,
        g2,
        updates,
      )
      return average(mixed)

    def without_penalty(_):
      return average(jax.tree.map(lambda b, u: b.astype(u.dtype), base, updates))

    if static_alpha is not None and static_alpha == 0:
      new_updates = without_penalty(None)
    elif always_penalised:
      new_updates = with_penalty(None)
    else:
      new_updates = jax.lax.cond(alpha_t != 0, with_penalty, without_penalty, None)
    new_state = GNPState(
      count=optax.safe_increment(state.count),
      key=key,
      r=r_t,
      alpha=alpha_t,
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
