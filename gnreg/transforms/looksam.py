"""LookSAM: the gradient norm penalty's second gradient once every ``k`` steps, reused between."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gnreg.transforms._common import (
  all_finite,
  concrete_scalar,
  global_norm,
  move_marked,
  only_marked,
  perturbation_marks,
  require_grad_fn,
  tree_vdot,
)

__all__ = ["LookSAMState", "looksam"]


class LookSAMState(NamedTuple):
  """State of :func:`looksam`.

  Attributes:
    count: number of updates done so far (int32); steps with ``count % k == 0`` evaluate
      the perturbed gradient.
    orthogonal: :math:`g_v`, the component of the last perturbed gradient orthogonal to
      the gradient of its step; a tree like the params, in at least float32.

  A step whose output is not finite, which ``optax.apply_if_finite`` skips, leaves the whole
  state as it was (a non-finite :math:`g_v` would otherwise spoil every reuse step after it).
  """

  count: jax.Array
  orthogonal: optax.Updates


def looksam(
  r: float | jax.Array,
  alpha: float | jax.Array,
  k: int | jax.Array,
  *,
  reuse_weight: float | jax.Array = 0.7,
  eps: float | jax.Array = 1e-12,
  perturbation_mask: Any | Callable[[optax.Params], Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Gradient norm penalty (SAM when ``alpha = 1``) with LookSAM's reuse over ``k`` steps.

  Every ``k``-th step (``t % k == 0``, ``t`` counted from 0) is a :func:`gnreg.gnp` step
  (with ``normalize_base_grad=False``): with :math:`g` the incoming gradient,

  .. math::

    g_s = \nabla L\!\left(\theta + r \frac{g}{\|g\|_2 + \epsilon}\right), \qquad
    \text{update} = (1 - \alpha)\, g + \alpha\, g_s,

  and it keeps :math:`g_v`, the component of :math:`g_s` orthogonal to :math:`g`
  (the part of SAM's gradient that LookSAM finds to change slowly):

  .. math::

    g_v = g_s - \frac{\langle g, g_s \rangle}{\|g\|_2^2}\, g .

  The other steps evaluate no second gradient: LookSAM's estimate
  :math:`\hat g_s = g + w \,\frac{\|g\|_2}{\|g_v\|_2}\, g_v` of the perturbed gradient,
  with :math:`g` the step's own gradient and ``w = reuse_weight``, replaces :math:`g_s`:

  .. math::

    \text{update} = (1 - \alpha)\, g + \alpha\, \hat g_s
                  = g + \alpha\, w\, \frac{\|g\|_2}{\|g_v\|_2}\, g_v .

  The ratio :math:`\|g\|/\|g_v\|` is LookSAM's adaptive scaling: the reused term has norm
  :math:`\alpha w \|g\|` whatever the size of the stored :math:`g_v`. With ``alpha = 1``
  this is Algorithm 1 of Liu et al. (their :math:`\rho` is ``r`` and their :math:`\alpha`
  is ``reuse_weight``); with ``alpha < 1`` it is the gnp mixture of the incoming and the
  (estimated) perturbed gradient, so ``k = 1`` is exactly ``gnreg.gnp(r, alpha)``. Norms
  and the projection are global, over all leaves, as in the paper's algorithm (some public
  PyTorch versions project each tensor separately); Look-LayerSAM's layer-wise perturbation
  is not implemented.

  ``perturbation_mask`` (optax's mask form, as :func:`gnreg.gnp`'s) keeps the leaves marked
  ``False`` at ``params`` in the ascent step, whose norm and direction are then those of the
  marked leaves, :math:`g_M`: :math:`g_s = \nabla L(\theta + r g_M / (\|g_M\|_2 +
  \epsilon))`. The rest is unchanged: every leaf receives the mix, and :math:`g_v`, its norm
  and the scaling :math:`\|g\|/\|g_v\|` are over all leaves (:math:`g_v` is the part of
  the perturbed gradient that :math:`g` does not explain, wherever it lies).

  ``grad_fn`` (the convention of :func:`gnreg.gnp`: the gradient of the same loss on the
  same batch at other parameters) is evaluated only on the ``k``-th steps, behind a
  ``lax.cond``, so a run costs about :math:`1 + 1/k` gradients per step instead of gnp's
  2. On CPU, XLA runs convolutions inside a conditional branch much more slowly
  (jax-ml/jax#12868, see :func:`gnreg.gnp`): there the penalised steps of a convolutional
  network are slow (GPUs and TPUs are not known to have that problem; not measured). The norms
  are those of ``grads`` as given: under ``jit`` with a sharded batch they are global; there
  is no per-device variant (``gnreg.gnp``'s ``axis_name``). As gnp, looksam refuses to run
  inside ``optax.masked``, ``optax.multi_transform`` and ``optax.MultiSteps``; before
  ``MultiSteps`` it penalises each micro-batch, and ``k`` counts micro-batches.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import gnreg
    >>> loss = lambda p: jnp.sum(jnp.cos(p))
    >>> params = jnp.array([0.5, 1.0])
    >>> opt = gnreg.looksam(r=0.5, alpha=1.0, k=2, reuse_weight=1.0)
    >>> state = opt.init(params)
    >>> step = jax.jit(lambda p, s: opt.update(jax.grad(loss)(p), s, p, grad_fn=jax.grad(loss)))
    >>> updates, state = step(params, state)  # t = 0: the SAM gradient, g_v kept
    >>> updates, state = step(params, state)  # t = 1: g + ||g|| g_v / ||g_v||, no grad_fn
    >>> updates.round(4)
    Array([ 0.362 , -1.3209], dtype=float32)

  Args:
    r: radius of the perturbation, ``>= 0``.
    alpha: weight of the perturbed gradient, in ``[0, 1]``; ``1`` is SAM.
    k: the perturbed gradient is evaluated every ``k`` steps, an integer ``>= 1``.
    reuse_weight: ``w``, the weight of the reused orthogonal component, ``>= 0``
      (LookSAM's :math:`\alpha`; the paper trains ViTs with 0.7).
    eps: added to norms so that a zero gradient gives no NaN.
    perturbation_mask: the leaves the ascent step moves (see above); ``None`` moves all.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose state is a
    :class:`LookSAMState` and whose ``update`` takes ``grads, state, params`` and the
    keyword argument ``grad_fn: params -> grads``.

  Raises:
    ValueError: for out-of-range arguments, a ``perturbation_mask`` that does not fit the
      parameters, and an ``update`` inside ``optax.masked``, ``optax.multi_transform`` or
      ``optax.MultiSteps``.

  References:
    Liu, Mai, Chen, Hsieh and You, `Towards Efficient and Scalable Sharpness-Aware
    Minimization <https://arxiv.org/abs/2203.02714>`_, CVPR 2022.

    Zhao, Zhang and Hu, `Penalizing Gradient Norm for Efficiently Improving
    Generalization in Deep Learning <https://arxiv.org/abs/2202.03599>`_, ICML 2022.
  """
  static_r = concrete_scalar("looksam", "r", r)
  if static_r is not None and not 0 <= static_r < math.inf:
    raise ValueError(f"looksam: r must be finite and >= 0, got {static_r}")
  static_alpha = concrete_scalar("looksam", "alpha", alpha)
  if static_alpha is not None and not 0 <= static_alpha <= 1:
    raise ValueError(f"looksam: alpha must be in [0, 1], got {static_alpha}")
  static_k = concrete_scalar("looksam", "k", k)
  if static_k is not None and not (static_k >= 1 and float(static_k).is_integer()):
    raise ValueError(f"looksam: k must be an integer >= 1, got {k}")
  static_weight = concrete_scalar("looksam", "reuse_weight", reuse_weight)
  if static_weight is not None and not 0 <= static_weight < math.inf:
    raise ValueError(f"looksam: reuse_weight must be finite and >= 0, got {static_weight}")
  static_eps = concrete_scalar("looksam", "eps", eps)
  if static_eps is not None and not 0 < static_eps < math.inf:
    raise ValueError(f"looksam: eps must be finite and > 0, got {static_eps}")

  def init_fn(params: optax.Params) -> LookSAMState:
    if all(hasattr(x, "shape") for x in jax.tree.leaves(params)):  # Not tree_map_params's.
      perturbation_marks("looksam", perturbation_mask, params)  # A mask that does not fit: now.
    return LookSAMState(
      count=jnp.zeros([], jnp.int32),
      orthogonal=jax.tree.map(
        lambda p: jnp.zeros(p.shape, jnp.result_type(jnp.float32, p.dtype)), params
      ),
    )

  def update_fn(
    updates: optax.Updates,
    state: LookSAMState,
    params: optax.Params | None = None,
    *,
    grad_fn: Callable[[optax.Params], optax.Updates] | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, LookSAMState]:
    del extra_args  # optax.chain hands every extra argument to every member.
    require_grad_fn("looksam", grad_fn, params)
    count = optax.safe_increment(state.count)
    if static_alpha == 0:
      return updates, LookSAMState(count, state.orthogonal)

    norm = global_norm(updates)
    dtype = norm.dtype

    def inverse(norm: jax.Array) -> jax.Array:
      # A zero gradient has no direction: no perturbation and no projection, not 0 * inf.
      denom = norm + jnp.asarray(eps, dtype)
      return jnp.where(denom > 0, 1.0 / jnp.where(denom > 0, denom, 1.0), 0.0)

    inv_norm = inverse(norm)
    alpha_ = jnp.asarray(alpha, dtype)
    leaves, treedef = jax.tree.flatten(updates)
    marks = perturbation_marks("looksam", perturbation_mask, params)

    def perturbed_step(orthogonal: list[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
      marked = only_marked(updates, marks)  # The ascent step's gradient: the marked leaves.
      inv_marked = inv_norm if marks is None else inverse(global_norm(marked).astype(dtype))
      step = jax.tree.map(lambda g: jnp.asarray(r, dtype) * inv_marked * g.astype(dtype), marked)
      perturbed_grads = treedef.flatten_up_to(grad_fn(move_marked(params, step, marks, dtype)))
      along = tree_vdot(leaves, perturbed_grads, dtype) * jnp.square(inv_norm)
      new_orthogonal = [
        (h.astype(dtype) - along * g.astype(dtype)).astype(o.dtype)
        for g, h, o in zip(leaves, perturbed_grads, orthogonal, strict=True)
      ]
      mixed = [
        ((1 - alpha_) * g.astype(dtype) + alpha_ * h.astype(dtype)).astype(g.dtype)
        for g, h in zip(leaves, perturbed_grads, strict=True)
      ]
      return mixed, new_orthogonal

    def reused_step(orthogonal: list[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
      ortho_denom = global_norm(orthogonal).astype(dtype) + jnp.asarray(eps, dtype)
      scale = alpha_ * jnp.asarray(reuse_weight, dtype) * norm / ortho_denom
      mixed = [
        (g.astype(dtype) + scale * o.astype(dtype)).astype(g.dtype)
        for g, o in zip(leaves, orthogonal, strict=True)
      ]
      return mixed, orthogonal

    orthogonal_leaves = treedef.flatten_up_to(state.orthogonal)
    if static_k == 1:
      mixed, orthogonal = perturbed_step(orthogonal_leaves)
    else:
      due = jnp.remainder(state.count, jnp.asarray(k).astype(jnp.int32)) == 0
      mixed, orthogonal = jax.lax.cond(due, perturbed_step, reused_step, orthogonal_leaves)
    new_state = LookSAMState(count, jax.tree.unflatten(treedef, orthogonal))
    applied = all_finite(mixed)
    new_state = jax.tree.map(lambda new, old: jnp.where(applied, new, old), new_state, state)
    return jax.tree.unflatten(treedef, mixed), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
