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

from gnreg.transforms._common import (
  all_finite,
  concrete_scalar,
  move_marked,
  only_marked,
  over_norm,
  perturbation_marks,
  require_grad_fn,
)

__all__ = ["WARMUPS", "GNPState", "gnp", "next_update_penalised"]

WARMUPS = (None, "lambda", "r", "zero")


class GNPState(NamedTuple):
  """State of :func:`gnp`.

  Attributes:
    count: number of updates applied so far (int32); the warmups count from it. A step
      whose output is not finite, which ``optax.apply_if_finite`` skips, leaves the
      whole state as it was.
    key: raw ``uint32`` PRNG key that draws the hybrid-training coin flips.
    r: the perturbation radius used by the last update, after warmup (float32,
      0 before the first update).
    alpha: the penalty weight used by the last update, after warmup and the
      hybrid coin flip (float32, 0 before the first update and on every
      unpenalised step).
    penalise_next: whether the next update takes the penalty path (bool): its hybrid
      coin flip, drawn ahead, came up and the ``'zero'`` warmup no longer holds it off.
      A trainer reads it (:func:`next_update_penalised`) before computing the gradient that
      update receives, to give a shake-regularised model's first pass the form the
      penalty path wants.
  """

  count: jax.Array
  key: jax.Array
  r: jax.Array
  alpha: jax.Array
  penalise_next: jax.Array


def next_update_penalised(opt_state: optax.OptState) -> jax.Array | bool:
  """Whether the :func:`gnp` inside ``opt_state`` takes the penalty path on its next update.

  ``False`` (a Python bool) when ``opt_state`` holds no gnp state. The GNP authors give
  shake-regularised models (Shake-Shake, ShakeDrop) their true gradient on the first pass
  of a penalised step and the randomised one on a plain step; this tells a trainer which,
  before it computes the gradient it hands to ``update``.

  >>> import jax.numpy as jnp, optax, gnreg
  >>> tx = optax.chain(gnreg.gnp(r=0.1, alpha=0.5, warmup="zero", warmup_steps=1), optax.sgd(0.1))
  >>> bool(next_update_penalised(tx.init(jnp.zeros(2))))
  False
  """
  found = optax.tree_utils.tree_get_all_with_path(opt_state, "penalise_next")
  if not found:
    return False
  if len(found) > 1:
    raise ValueError(f"next_update_penalised: opt_state holds {len(found)} gnp states, not one")
  return found[0][1]


def _validate(
  r: Any,
  alpha: Any,
  warmup: str | None,
  warmup_steps: Any,
  axis_name: Hashable | None,
  sync_perturbation: bool,
  probability: Any,
  eps: Any,
  adaptive_eta: Any,
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
  eta_ = concrete_scalar("gnp", "adaptive_eta", adaptive_eta)
  if eta_ is not None and not 0 <= eta_ < np.inf:
    raise ValueError(f"gnp: adaptive_eta must be finite and >= 0, got {eta_}")
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
  axis_name: Hashable | tuple[Hashable, ...] | None = None,
  sync_perturbation: bool = False,
  probability: float | jax.Array = 1.0,
  seed: int | jax.Array = 0,
  eps: float | jax.Array = 1e-12,
  adaptive: bool = False,
  adaptive_eta: float | jax.Array = 0.01,
  perturbation_mask: Any | Callable[[optax.Params], Any] | None = None,
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
  that produced ``grads``. When the effective ``alpha`` of a step is 0 the
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
  (the authors' "hybrid training"). The coin for each update is flipped one update ahead,
  with the ``probability`` of the update before (at ``init`` for the first), and kept in
  :attr:`GNPState.penalise_next`, so that a trainer knows before it computes a step's
  gradient whether the step is penalised (:func:`next_update_penalised`).

  **Unpenalised steps.** A step that the ``'zero'`` warmup holds off or the hybrid coin
  skips is a plain step, as in the authors' code: it returns the incoming gradient
  unchanged (only averaged over ``axis_name``), whatever ``normalize_base_grad`` says,
  and costs one gradient. A penalised step whose ``alpha_t`` is 0 (``alpha = 0``, or the
  ``'lambda'`` warmup's first step) follows the formula, which is then :math:`b`, so
  with ``normalize_base_grad=True`` it returns :math:`g_1 / (\|g_1\|_2 + \epsilon)`,
  as the authors' penalty path with ``alpha = 0`` does; it costs one gradient as well.
  For plain training leave gnp out (gnreg's config does when ``gnp.alpha`` or ``gnp.r`` is 0).
  ``r = 0`` is the formula with a zero perturbation, :math:`(1 - \alpha) b + \alpha g_1`
  (the authors' code trains plainly at ``r = 0``).

  **Perturbing part of the parameters.** ``perturbation_mask`` (as optax's masks: a pytree of
  bools with the structure of ``params`` or a prefix of it, or a callable ``params -> such a
  pytree``) names the leaves the ascent step moves, to keep BatchNorm scales and biases, other
  biases or the head out of it. The leaves marked ``False`` stay at ``params``; the norm and the
  ascent direction are those of the marked leaves only, :math:`g_{1,M}` (``g1`` with the other
  leaves set to zero), so the perturbed point is :math:`\theta + r g_{1,M} / (\|g_{1,M}\|_2 +
  \epsilon)` (ASAM's likewise, over the marked leaves). Every leaf still receives the mix
  :math:`(1 - \alpha) b + \alpha g_2`, with :math:`g_2` the gradient at that partly perturbed
  point. With ``normalize_base_grad=True``, :math:`b = g_1 / (\|g_1\|_2 + \epsilon)` is
  normalised by the norm of the whole gradient, whatever the mask: the mask changes the ascent
  step only. A mask that marks every leaf is the same as none.

  **Composition.** gnp calls ``grad_fn`` on the whole parameter tree, so it refuses to run
  inside ``optax.masked`` or ``optax.multi_transform`` (use ``perturbation_mask``, or put gnp
  before the split: ``optax.chain(gnreg.gnp(...), optax.multi_transform(...))``), and inside
  ``optax.MultiSteps``, which would hand it the micro-batches' mean gradient with the last
  micro-batch's ``grad_fn``. For gradient accumulation put gnp before:
  ``optax.chain(gnreg.gnp(...), optax.MultiSteps(opt, every_k_schedule=k))`` penalises each
  micro-batch with its own ``grad_fn`` and accumulates the penalised gradients; gnp's count,
  and so its warmups (``warmup_steps``) and hybrid draws, then advance once per micro-batch,
  ``k`` times per optimizer step. For the penalty of the whole batch in the memory of one
  micro-batch, the trainer has sequential batch groups (``config.sequential_groups=True`` with
  ``config.batch_group_size``, and ``gnp.sync_perturbation=True`` to perturb once with the whole
  batch's gradient). ``optax.apply_if_finite`` works around gnp or inside a chain
  with it.

  **Data parallelism: what m is.** The perturbation's gradient ``g1`` is taken over the
  examples of one call, SAM's *m-sharpness*: in a plain ``jax.jit`` step ``m`` is the batch;
  with ``axis_name`` under ``pmap`` or ``shard_map`` it is each device's share; inside
  ``jax.vmap(..., axis_name='group')`` over groups of ``m`` examples (with
  ``axis_name='group'``, or ``('data', 'group')`` inside a ``shard_map``) it is ``m``, whatever
  the device count; with ``sync_perturbation=True`` it is every example the axis covers. The
  trainer's ``config.batch_group_size`` sets ``m`` (default: the per-device batch). Each call
  then averages its output over ``axis_name``, so every group and device leaves with the same
  update and state. See the documentation's page on batch groups.

  **ASAM.** ``adaptive=True`` replaces the ascent step by the adaptive one of ASAM
  (Kwon et al., 2021), scale-invariant in each weight:

  .. math::

    \theta + r\, \frac{T^2 g_1}{\|T g_1\|_2 + \epsilon}, \qquad
    T = \mathrm{diag}(|\theta| + \eta),

  with :math:`\eta` = ``adaptive_eta``, on every parameter (the GNP authors'
  ``asam_vector`` utility takes :math:`\eta = 0`; ASAM's own code keeps :math:`T = 1` on
  biases). With ``alpha = 1`` the update is ASAM's gradient
  :math:`\nabla L(\theta + \epsilon_{\mathrm{ASAM}})`.

  **Numerics.** The norms are overflow-safe (gradients of 1e20 and beyond are scaled
  before squaring) and the perturbation and the mix are computed in float32, or in
  the inputs' precision when it is higher (float64 under ``jax_enable_x64``); the
  output has the dtype of the incoming gradient. A step whose output is not finite,
  which ``optax.apply_if_finite`` then skips, leaves the state (the warmup count and
  the hybrid key) as it was, so the warmups count applied steps only.

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
    axis_name: under ``shard_map``, ``pmap`` or ``vmap``, the data-parallel axis (or a
      tuple of axes, such as devices and the groups of each); ``grads`` are then each
      device's (or group's) gradients and the output is averaged over it.
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
    adaptive: ASAM's scale-invariant perturbation (see above).
    adaptive_eta: ASAM's :math:`\eta \ge 0`, which keeps zero weights perturbed.
    perturbation_mask: the leaves the ascent step moves (see above); ``None`` moves all.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose ``update`` takes
    ``grads, state, params`` and the keyword argument
    ``grad_fn: params -> grads``.

  Raises:
    ValueError: for out-of-range arguments, a ``perturbation_mask`` that does not fit the
      parameters, and an ``update`` inside ``optax.masked``, ``optax.multi_transform`` or
      ``optax.MultiSteps`` (see above).

  References:
    Zhao, Zhang and Hu, `Penalizing Gradient Norm for Efficiently Improving
    Generalization in Deep Learning <https://arxiv.org/abs/2202.03599>`_,
    ICML 2022.

    Zhao, Zhang and Hu, `When Will Gradient Regularization Be Harmful?
    <https://arxiv.org/abs/2406.09723>`_, ICML 2024.

    Kwon, Kim, Park and Choi, `ASAM: Adaptive Sharpness-Aware Minimization for
    Scale-Invariant Learning of Deep Neural Networks <https://arxiv.org/abs/2102.11600>`_,
    ICML 2021.

    Foret, Kleiner, Mobahi and Neyshabur, `Sharpness-Aware Minimization for
    Efficiently Improving Generalization <https://arxiv.org/abs/2010.01412>`_,
    ICLR 2021.
  """
  _validate(
    r, alpha, warmup, warmup_steps, axis_name, sync_perturbation, probability, eps, adaptive_eta
  )
  # Known at trace time: whether the second gradient is never needed, or needed on every step.
  static_alpha = concrete_scalar("gnp", "alpha", alpha)
  static_probability = concrete_scalar("gnp", "probability", probability)
  never_second_gradient = static_alpha == 0
  always_penalised = (
    static_alpha is not None
    and static_alpha > 0
    and static_probability == 1.0
    and warmup in (None, "r")
  )

  def penalises(count: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Whether update number ``count`` is penalised (hybrid draw from ``key``, ``'zero'``
    warmup), and the key left for the draws after it."""
    key, subkey = jax.random.split(key)
    drawn = jax.random.uniform(subkey) < jnp.asarray(probability, jnp.float32)
    if warmup == "zero":
      drawn &= count.astype(jnp.float32) >= jnp.asarray(warmup_steps, jnp.float32)
    return drawn, key

  def init_fn(params: optax.Params) -> GNPState:
    if all(hasattr(x, "shape") for x in jax.tree.leaves(params)):  # Not tree_map_params's.
      perturbation_marks("gnp", perturbation_mask, params)  # A mask that does not fit: now.
    count = jnp.zeros([], jnp.int32)
    penalise_next, key = penalises(count, jax.random.PRNGKey(seed))
    return GNPState(
      count=count,
      key=key,
      r=jnp.zeros([], jnp.float32),
      alpha=jnp.zeros([], jnp.float32),
      penalise_next=penalise_next,
    )

  def warmed_up(count: jax.Array, dtype: Any) -> tuple[jax.Array, jax.Array]:
    """``r_t`` and ``alpha_t`` after the ``'lambda'`` or ``'r'`` warmup."""
    r_t = jnp.asarray(r, dtype)
    alpha_t = jnp.asarray(alpha, dtype)
    if warmup not in ("lambda", "r"):
      return r_t, alpha_t
    t = count.astype(dtype)
    steps = jnp.asarray(warmup_steps, dtype)
    # warmup_steps is validated > 0 when concrete; the guard only protects traced values.
    ramp = jnp.where(steps > 0, jnp.minimum(1, t / jnp.where(steps > 0, steps, 1)), 1)
    if warmup == "lambda":
      return r_t, alpha_t * ramp
    return r_t * ramp, alpha_t

  def ascent_direction(
    g1: optax.Updates, unit: optax.Updates, params: optax.Params, dtype: Any
  ) -> optax.Updates:
    """``unit = g1 / ||g1||``, or ASAM's ``T^2 g1 / ||T g1||`` with ``T = |params| + eta``."""
    if not adaptive:
      return unit
    eta = jnp.asarray(adaptive_eta, dtype)
    scale = jax.tree.map(lambda p: jnp.abs(p.astype(dtype)) + eta, params)
    scaled = jax.tree.map(lambda t, g: t * g.astype(dtype), scale, g1)
    return jax.tree.map(jnp.multiply, scale, over_norm(scaled, eps, dtype))

  def update_fn(
    updates: optax.Updates,
    state: GNPState,
    params: optax.Params | None = None,
    *,
    grad_fn: Callable[[optax.Params], optax.Updates] | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, GNPState]:
    del extra_args  # optax.chain hands every extra argument to every member.
    require_grad_fn("gnp", grad_fn, params)

    # The precision of the arithmetic: float32, or the inputs' own when it is higher.
    dtype = jnp.result_type(jnp.float32, *jax.tree.leaves(params), *jax.tree.leaves(updates))
    r_t, alpha_t = warmed_up(state.count, dtype)
    # An unpenalised step is the authors' plain step: the incoming gradient, untouched.
    penalised = state.penalise_next
    alpha_t = jnp.where(penalised, alpha_t, 0)

    g1 = jax.lax.pmean(updates, axis_name) if sync_perturbation else updates
    marks = perturbation_marks("gnp", perturbation_mask, params)
    g1_marked = only_marked(g1, marks)  # The ascent step's gradient: the marked leaves alone.
    unit = over_norm(g1_marked, eps, dtype)
    if not normalize_base_grad:
      base = g1
    else:  # Normalised by the whole gradient's norm, whatever the mask.
      base = unit if marks is None else over_norm(g1, eps, dtype)

    def average(tree: optax.Updates) -> optax.Updates:
      # Inside the branches so both return values of the same (device-invariant) kind
      # under shard_map; the predicate is the same on every device.
      return tree if axis_name is None else jax.lax.pmean(tree, axis_name)

    def with_penalty(_: None) -> optax.Updates:
      step = jax.tree.map(lambda d: r_t * d, ascent_direction(g1_marked, unit, params, dtype))
      g2 = grad_fn(move_marked(params, step, marks, dtype))
      return average(
        jax.tree.map(
          lambda b, h, u: ((1 - alpha_t) * b.astype(dtype) + alpha_t * h.astype(dtype)).astype(
            u.dtype
          ),
          base,
          g2,
          updates,
        )
      )

    def without_second_gradient(_: None) -> optax.Updates:
      # alpha_t = 0 on a penalised step is the formula's b; an unpenalised step returns g1.
      if not normalize_base_grad:
        return average(updates)
      return average(
        jax.tree.map(lambda b, u: jnp.where(penalised, b.astype(u.dtype), u), base, updates)
      )

    if never_second_gradient:
      new_updates = without_second_gradient(None)
    elif always_penalised:
      new_updates = with_penalty(None)
    else:
      new_updates = jax.lax.cond(alpha_t != 0, with_penalty, without_second_gradient, None)
    count = optax.safe_increment(state.count)
    penalise_next, key = penalises(count, state.key)
    new_state = GNPState(
      count=count,
      key=key,
      r=r_t.astype(jnp.float32),
      alpha=alpha_t.astype(jnp.float32),
      penalise_next=penalise_next,
    )
    # optax.apply_if_finite skips a step whose gradient is not finite: the warmups and the
    # hybrid draws must not advance on it either.
    applied = all_finite(new_updates)
    new_state = jax.tree.map(lambda new, old: jnp.where(applied, new, old), new_state, state)
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
