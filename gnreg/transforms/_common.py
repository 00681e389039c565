"""What the transforms and the tuners share: argument checks, the float32 norm, injected states.

Each helper exists once here so that every transform reports a bad argument in the same words
and computes a gradient norm the same way.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

# The states that optax.inject_hyperparams and inject_stateful_hyperparams leave in a chain.
INJECT_STATES = (optax.InjectStatefulHyperparamsState, optax.InjectHyperparamsState)


def concrete_scalar(where: str, name: str, value: Any) -> float | None:
  """``value`` as a float when it is a concrete number; ``None`` when it is a ``jax.Array``.

  ``optax.inject_hyperparams`` re-creates a transformation with (often traced) array
  hyperparameters, which cannot be checked in Python: only Python and NumPy numbers are
  validated. Anything else, or an array of more than one element, is a ``ValueError``
  that names ``where`` (the function) and ``name`` (the argument).
  """
  if isinstance(value, jax.Array):
    return None
  if isinstance(value, (bool, np.bool_)):
    raise ValueError(f"{where}: {name} must be a number, got {value!r}")
  if isinstance(value, (int, float, np.number, np.ndarray)):
    if np.ndim(value) != 0:
      raise ValueError(f"{where}: {name} must be a scalar, got shape {np.shape(value)}")
    return float(value)
  raise ValueError(f"{where}: {name} must be a number, got {value!r}")


def check_learning_rate(where: str, name: str, value: Any) -> None:
  """Refuses a concrete learning rate that is not finite and > 0 (traced values pass)."""
  v = concrete_scalar(where, name, value)
  if v is not None and not 0 < v < math.inf:
    raise ValueError(f"{where}: {name} must be a learning rate, finite and > 0, got {v}")


def require_grad_fn(where: str, grad_fn: Any, params: Any) -> None:
  """Refuses an ``update`` call of a transform that evaluates gradients elsewhere without them.

  gnp, looksam and exact_gnp need ``params`` (where the extra gradient is taken) and the
  keyword argument ``grad_fn: params -> grads`` on the same batch.
  """
  if grad_fn is None:
    raise ValueError(f"{where}: update needs grad_fn=<params -> grads>, got None")
  if params is None:
    raise ValueError(f"{where}: update needs params, where the second gradient is taken, got None")


def is_inject_state(node: Any) -> bool:
  """Whether ``node`` is the state of an ``optax.inject_hyperparams`` transformation."""
  return isinstance(node, INJECT_STATES)


def global_norm(tree: Any) -> jax.Array:
  """The global L2 norm of ``tree`` in at least float32, whatever the leaves' dtype, overflow-safe.

  bfloat16 and float16 leaves are cast up and float64 leaves keep their precision. The tree is
  divided by its largest magnitude before squaring (the norm is ``m * ||tree / m||`` with
  ``m = max |x|``), so that float32 gradients above about 1e19, whose squares overflow, and
  tiny ones, whose squares underflow, still have their norm. An infinite or NaN element gives
  an infinite or NaN norm, as the plain formula does.
  """
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros([], jnp.float32)
  dtype = jnp.result_type(jnp.float32, *leaves)
  tree = optax.tree.cast(tree, dtype)
  largest = jnp.asarray(optax.tree.norm(tree, ord="inf"), dtype)
  scale = jnp.where(jnp.isfinite(largest) & (largest > 0), largest, 1)
  norm = scale * optax.tree.norm(jax.tree.map(lambda x: x / scale, tree))
  return jnp.where(jnp.isfinite(largest), norm, largest).astype(dtype)
