"""What the tuners share: the optimizer check, memory-bounded vmapping, compiled-function reuse,
JSON numbers and the progress bar.

:func:`gnreg.tuning.find_lr` and :func:`gnreg.tuning.autotune_pid` evaluate many copies of one
training step (rates, trials) at once; the helpers here are written once for both.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax
import tqdm

from gnreg.transforms.pid import injected_learning_rate

__all__ = [
  "PyTree",
  "check_tunable_optimizer",
  "tree_bytes",
  "auto_chunk_size",
  "batched_map",
  "cached_jit",
  "json_float",
  "progress_bar",
]

PyTree = Any


def check_tunable_optimizer(
  optimizer: optax.GradientTransformation, params: PyTree, where: str
) -> None:
  """Raises ``ValueError`` unless ``optimizer`` holds exactly one constant injected rate.

  The tuners set that rate with :func:`gnreg.transforms.pid.set_injected_learning_rate`, so
  it must come from ``optax.inject_hyperparams(...)(learning_rate=<number>)``; the state is
  only traced (``jax.eval_shape``), never allocated.
  """
  if not hasattr(optimizer, "init") or not hasattr(optimizer, "update"):
    raise ValueError(
      f"{where}: optimizer must be an optax GradientTransformation, got {type(optimizer).__name__}"
    )
  injected_learning_rate(jax.eval_shape(optimizer.init, params), where)


def tree_bytes(tree: PyTree) -> int:
  """The bytes of the arrays (or shape structs) in ``tree``."""
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def auto_chunk_size(per_item_bytes: int, total: int, memory_budget_bytes: int) -> int:
  """The number of items (rates, trials) to vmap together so that they fit the budget.

  ``per_item_bytes`` is the extra memory one vmapped item needs; the result lies in
  ``[1, total]``. Activations are not counted, so pass a smaller budget for wide models.
  """
  if per_item_bytes <= 0:
    return total
  return int(max(1, min(total, memory_budget_bytes // per_item_bytes)))


def batched_map(f: Callable[[Any], Any], xs: PyTree, chunk_size: int) -> PyTree:
  """``jax.vmap(f)(xs)``, evaluated ``chunk_size`` items at a time when the batch is larger."""
  n = jax.tree.leaves(xs)[0].shape[0]
  if chunk_size >= n:
    return jax.vmap(f)(xs)
  return jax.lax.map(f, xs, batch_size=chunk_size)


@functools.lru_cache(maxsize=16)
def _build_once(build: Callable[..., Callable], *key: Any) -> Callable:
  return build(*key)


def cached_jit(build: Callable[..., Callable], *key: Any) -> Callable:
  """``build(*key)``, reused across calls with the same (hashable) ``key``.

  ``build`` returns a ``jax.jit``-ed function. A tuner rebuilding its jitted closure on every
  call would retrace and recompile it every time, since ``jax.jit`` caches per function object;
  reusing it makes a second call with the same ``loss_fn`` and optimizer (and array shapes)
  skip compilation. An unhashable ``key`` (say a callable object with ``__eq__`` but no
  ``__hash__``) just builds afresh.
  """
  try:
    hash(key)
  except TypeError:
    return build(*key)
  return _build_once(build, *key)


def json_float(x: float) -> float | None:
  """``x`` for JSON: ``None`` (``null``) when it is not finite, which JSON cannot hold."""
  return float(x) if math.isfinite(x) else None


def progress_bar(total: int, description: str, enabled: bool) -> tqdm.tqdm:
  """A ``tqdm`` bar on stderr (``disable`` when not ``enabled``), in the tuners' one style."""
  return tqdm.tqdm(
    total=total, desc=description, unit="step", file=sys.stderr, disable=not enabled, leave=True
  )
