"""Adaptive gradient clipping (AGC) in NFNets' units, with parameters excluded by path.

Brock, De, Smith and Simonyan, "High-Performance Large-Scale Image Recognition
Without Normalization" (NFNets), 2021, https://arxiv.org/abs/2102.06171.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import optax

from gnreg.transforms._common import (
  check_patterns_match,
  concrete_scalar,
  glob_patterns,
  param_path,
  path_matches,
)

__all__ = ["agc", "fan_in_axes", "param_path"]

# Flax's MultiHeadDotProductAttention projects with DenseGeneral kernels (in, heads, head_dim).
_HEAD_PROJECTIONS = ("query", "key", "value")
_WHOLE = ("bias", "scale")


def fan_in_axes(path: str, shape: Sequence[int]) -> tuple[int, ...]:
  """The axes a parameter's unit norm runs over (its fan-in), from its path and shape.

  See the table in :func:`agc`. For example ``'Dense_0/kernel'`` of shape ``(3, 4)`` has
  ``(0,)``, four units of three values.

  >>> fan_in_axes('encoder_block0/attention/out/kernel', (3, 64, 192))
  (0, 1)
  """
  rank = len(shape)
  names = path.split("/")
  leaf, module = names[-1], (names[-2] if len(names) > 1 else "")
  everything, all_but_last = tuple(range(rank)), tuple(range(rank - 1))
  if rank <= 1:
    return everything
  if leaf == "kernel":
    if module in _HEAD_PROJECTIONS and rank == 3:
      return (0,)
    return all_but_last
  if leaf in _WHOLE:
    return everything
  if leaf == "embedding" or leaf.endswith("_table"):
    return tuple(range(1, rank))
  if shape[0] == 1:
    return everything
  return all_but_last


def agc(
  clipping: float = 0.01,
  eps: float = 1e-3,
  exclude: str | Sequence[str] = (),
  fan_in: Mapping[str, Sequence[int]] | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Adaptive gradient clipping, unit-wise, leaving the ``exclude``\ d parameters untouched.

  For every unit :math:`i` of every parameter (Brock et al. 2021, eq. 3):

  .. math::

     G_i \leftarrow \begin{cases}
       \lambda \dfrac{\max(\|W_i\|, \epsilon)}{\|G_i\|} G_i
         & \text{if } \dfrac{\|G_i\|}{\max(\|W_i\|, \epsilon)} > \lambda, \\
       G_i & \text{otherwise,}
     \end{cases}

  with :math:`\lambda` = ``clipping`` and :math:`\epsilon` = ``eps`` (which keeps
  zero-initialised parameters, such as biases, from being frozen). Each leaf is clipped by
  ``optax.adaptive_grad_clip(clipping, eps, axis=<its fan-in axes>)``, which divides by
  :math:`\max(\|G_i\|, 10^{-6})`, so a clipped unit whose gradient norm is below
  :math:`10^{-6}` ends below the bound rather than on it. Excluded leaves are returned as
  the very same arrays (bit-identical). NFNets leave the final classifier unclipped, e.g.
  ``exclude=('head/*',)``.

  **Units.** A unit is what NFNets call one: the weights feeding one output (its fan-in),
  or the whole array where an array has no output axis. They are decided from the
  parameter's name (the last part of its path, see :func:`param_path`), the name of its
  module and its shape, for Flax's layouts (:func:`fan_in_axes`):

  .. list-table::
     :header-rows: 1

     * - parameter
       - one unit
       - norm over
     * - any scalar or vector (biases, norm scales, LayerScale's ``gamma``)
       - the whole array
       - all axes
     * - ``kernel`` of ``query``/``key``/``value``, rank 3 (``DenseGeneral`` in attention,
         ``(in, heads, head_dim)``)
       - one output (head, dim)
       - axis 0
     * - any other ``kernel``: ``Dense`` ``(in, out)``, ``Conv`` 1-3 D
         ``(*window, in / groups, out)`` (depthwise too), attention ``out``
         ``(heads, head_dim, features)``
       - one output channel
       - all axes but the last
     * - ``bias``, ``scale`` of any rank (norm scales, q/k/v biases ``(heads, head_dim)``)
       - the whole array
       - all axes
     * - ``embedding`` (``nn.Embed``, ``(vocab, features)``) and ``*_table`` (Swin's
         ``relative_position_bias_table``)
       - one row (token, offset)
       - all axes but the first
     * - any other leaf whose first axis is 1 (position embeddings ``(1, N, E)``, class
         tokens ``(1, 1, E)``)
       - the whole array
       - all axes
     * - any other leaf (Flax's ``(fan-in..., out)`` layout)
       - one output
       - all axes but the last

  ``fan_in`` overrides the table per path: a mapping from glob pattern to the axes to norm
  over (negative axes count from the end; all the axes make the array one unit, ``()``
  clips element-wise). The first pattern that matches a leaf's path decides it, e.g.
  ``fan_in={'*/my_einsum/kernel': (0, 1)}`` for a ``DenseGeneral`` with two input axes.

  **Patterns.** Each ``exclude`` and ``fan_in`` pattern is an ``fnmatch`` glob matched,
  case-sensitively, against the whole '/'-joined key path of a leaf, e.g.
  ``'Dense_0/kernel'`` for ``{'Dense_0': {'kernel': ...}}``. ``*`` matches any run of
  characters, '/' included, so ``'head/*'`` matches ``'head/kernel'`` and ``'head/bias'``
  but not ``'params/head/kernel'``; write ``'*head/*'`` to match at any depth. A leaf is
  excluded if any pattern matches. ``init`` raises ``ValueError`` when a pattern matches no
  parameter, since a mistyped pattern would otherwise silently clip the layer it meant to
  spare, and when ``fan_in`` names an axis that a matched parameter does not have.

  Args:
    clipping: :math:`\lambda > 0`, the largest allowed ratio of unit gradient norm
      to unit parameter norm.
    eps: :math:`\epsilon \ge 0`, the floor on the unit parameter norm.
    exclude: one glob or a sequence of globs over parameter paths.
    fan_in: glob over parameter paths -> the axes of one unit, overriding the table.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

  Example:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import gnreg
    >>> params = {'body': {'kernel': jnp.ones((2, 3))}, 'head': {'kernel': jnp.ones((3, 1))}}
    >>> grads = jax.tree.map(lambda p: 10 * p, params)
    >>> tx = gnreg.agc(clipping=0.1, exclude='head/*')
    >>> clipped, _ = tx.update(grads, tx.init(params), params)
    >>> print(clipped['body']['kernel'][0, 0], clipped['head']['kernel'][0, 0])
    0.1 10.0
  """
  patterns = glob_patterns("agc", "exclude", exclude)
  overrides = _checked_fan_in(fan_in)
  clipping_value = concrete_scalar("agc", "clipping", clipping)
  if clipping_value is not None and not clipping_value > 0:
    raise ValueError(f"agc: clipping must be > 0, got {clipping_value}")
  eps_value = concrete_scalar("agc", "eps", eps)
  if eps_value is not None and not eps_value >= 0:
    raise ValueError(f"agc: eps must be >= 0, got {eps_value}")

  def axes_of(path: str, shape: Sequence[int]) -> tuple[int, ...]:
    for pattern, axes in overrides:
      if path_matches(path, (pattern,)):
        rank = len(shape)
        if any(not -rank <= a < rank for a in axes):
          raise ValueError(
            f"agc: fan_in[{pattern!r}] = {axes} names an axis that {path!r} of shape "
            f"{tuple(shape)} does not have"
          )
        return tuple(sorted({a % rank for a in axes}))
    return fan_in_axes(path, shape)

  def init_fn(params: optax.Params) -> optax.EmptyState:
    check_patterns_match("agc: exclude", patterns, params)
    check_patterns_match("agc: fan_in", [p for p, _ in overrides], params)
    leaves = jax.tree_util.tree_leaves_with_path(params)
    # optax.tree_map_params calls init with a non-array placeholder; there are no shapes to check.
    if leaves and all(hasattr(leaf, "shape") for _, leaf in leaves):
      for path, leaf in leaves:
        axes_of(param_path(path), leaf.shape)
    return optax.EmptyState()

  def update_fn(
    updates: optax.Updates,
    state: optax.EmptyState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, optax.EmptyState]:
    del extra_args
    if params is None:
      raise ValueError("agc: update needs params, the unit norms are relative to them")

    def clip(path: tuple[Any, ...], grad: jax.Array, param: jax.Array) -> jax.Array:
      name = param_path(path)
      if path_matches(name, patterns):
        return grad
      unit_clip = optax.adaptive_grad_clip(clipping, eps, axis=axes_of(name, param.shape))
      return unit_clip.update(grad, optax.EmptyState(), param)[0]

    return jax.tree_util.tree_map_with_path(clip, updates, params), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _checked_fan_in(
  fan_in: Mapping[str, Sequence[int]] | None,
) -> tuple[tuple[str, tuple[int, ...]], ...]:
  if fan_in is None:
    return ()
  if not isinstance(fan_in, Mapping):
    raise ValueError(f"agc: fan_in must map glob patterns to axes, got {fan_in!r}")
  checked = []
  for pattern, axes in fan_in.items():
    ok = isinstance(pattern, str) and isinstance(axes, Sequence) and not isinstance(axes, str)
    ok = ok and all(isinstance(a, int) and not isinstance(a, bool) for a in axes)
    if not ok:
      raise ValueError(
        f"agc: fan_in must map glob strings to sequences of ints, got {pattern!r}: {axes!r}"
      )
    checked.append((pattern, tuple(axes)))
  return tuple(checked)
