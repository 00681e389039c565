"""Adaptive gradient clipping (AGC) with parameters excluded by path.

Brock, De, Smith and Simonyan, "High-Performance Large-Scale Image Recognition
Without Normalization" (NFNets), 2021, https://arxiv.org/abs/2102.06171.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

import jax
import optax

from gnreg.transforms._common import concrete_scalar

__all__ = ["agc", "param_path"]


def param_path(path: tuple[Any, ...]) -> str:
  """Joins a JAX key path with '/'.

  For example the leaf ``tree['params']['Dense_0']['kernel']`` has the path
  ``'params/Dense_0/kernel'``.

  Dict keys and attribute names appear as themselves, sequence positions as their
  integer index (a list ``[w, b]`` has paths ``'0'`` and ``'1'``).
  """
  return jax.tree_util.keystr(path, simple=True, separator="/")


def agc(
  clipping: float = 0.01,
  eps: float = 1e-3,
  exclude: str | Sequence[str] = (),
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
  zero-initialised parameters, such as biases, from being frozen). The maths is
  ``optax.adaptive_grad_clip(clipping, eps)``, which divides by
  :math:`\max(\|G_i\|, 10^{-6})`, so a clipped unit whose gradient norm is below
  :math:`10^{-6}` ends below the bound rather than on it. It is applied through
  ``optax.masked`` to every leaf whose path matches no ``exclude`` pattern; excluded leaves are
  returned as the very same arrays (bit-identical). NFNets leave the final
  classifier unclipped, e.g. ``exclude=('head/*',)``.

  **Units.** ``optax.adaptive_grad_clip`` (optax 0.2.8) picks the norm axes from
  the rank of each array, which for Flax's layouts means:

  * rank 2, Dense kernels ``(in, out)``: norm over axis 0, one unit per output
    feature;
  * rank 4, Conv2D kernels ``HWIO``: norm over axes (0, 1, 2), one unit per
    output channel;
  * rank 5, Conv3D kernels ``DHWIO``: norm over axes (0, 1, 2, 3), one unit per
    output channel;
  * rank 3: norm over axis 0 **only** (optax assumes a multi-head
    ``DenseGeneral`` kernel ``(in, heads, head_dim)``, one unit per
    ``(head, head_dim)``); a Conv1D kernel ``(W, I, O)`` therefore gets one unit
    per ``(I, O)`` pair, not one per output channel;
  * scalars, vectors (biases, norm scales) and any array with at most one
    non-singleton axis (e.g. a ``(1, out)`` Dense kernel): the whole array is one
    unit;
  * rank 6 and above: optax raises a ``ValueError``.

  So for rank 2, 4 and 5 the unit is "one per output channel: the norm over all
  axes but the last", as in NFNets.

  **Exclusion patterns.** Each pattern is an ``fnmatch`` glob matched,
  case-sensitively, against the whole '/'-joined key path of a leaf, e.g.
  ``'Dense_0/kernel'`` for ``{'Dense_0': {'kernel': ...}}`` (see
  :func:`param_path`). ``*`` matches any run of characters, '/' included, so
  ``'head/*'`` matches ``'head/kernel'`` and ``'head/bias'`` but not
  ``'params/head/kernel'``; write ``'*head/*'`` to match at any depth. A leaf is
  excluded if any pattern matches. ``init`` raises ``ValueError`` when a pattern
  matches no parameter, since a mistyped pattern would otherwise silently clip
  the layer it meant to spare.

  Args:
    clipping: :math:`\lambda > 0`, the largest allowed ratio of unit gradient norm
      to unit parameter norm.
    eps: :math:`\epsilon \ge 0`, the floor on the unit parameter norm.
    exclude: one glob or a sequence of globs over parameter paths.

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
  patterns = (exclude,) if isinstance(exclude, str) else tuple(exclude)
  for pattern in patterns:
    if not isinstance(pattern, str):
      raise ValueError(f"agc: exclude must hold glob strings, got {pattern!r}")
  clipping_value = concrete_scalar("agc", "clipping", clipping)
  if clipping_value is not None and not clipping_value > 0:
    raise ValueError(f"agc: clipping must be > 0, got {clipping_value}")
  eps_value = concrete_scalar("agc", "eps", eps)
  if eps_value is not None and not eps_value >= 0:
    raise ValueError(f"agc: eps must be >= 0, got {eps_value}")

  def is_excluded(path: str) -> bool:
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)

  def clip_mask(tree: Any) -> Any:
    return jax.tree_util.tree_map_with_path(lambda p, _: not is_excluded(param_path(p)), tree)

  masked = optax.masked(optax.adaptive_grad_clip(clipping, eps), clip_mask)

  def init_fn(params: optax.Params) -> optax.OptState:
    leaves = jax.tree_util.tree_leaves_with_path(params)
    # optax.tree_map_params calls init with a non-array placeholder; there are no paths to check.
    if patterns and leaves and all(hasattr(leaf, "shape") for _, leaf in leaves):
      paths = [param_path(p) for p, _ in leaves]
      for pattern in patterns:
        if not any(fnmatch.fnmatchcase(path, pattern) for path in paths):
          shown = ", ".join(repr(p) for p in paths[:6]) + (", ..." if len(paths) > 6 else "")
          raise ValueError(
            f"agc: exclude pattern {pattern!r} matches no parameter path; the paths are {shown}"
          )
    return masked.init(params)

  return optax.GradientTransformationExtraArgs(init_fn, masked.update)
