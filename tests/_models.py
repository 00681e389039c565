"""Shared by the model tests: a model's variables without running its initialisers."""

from __future__ import annotations

import contextlib
import functools
import gc

import jax
import jax.numpy as jnp
import numpy as np

from gnreg.models import rng_streams


@contextlib.contextmanager
def no_gc():
  """Pauses the cyclic garbage collector: tracing a deep flax model allocates so many objects
  that full collections during the trace cost more than the trace itself."""
  enabled = gc.isenabled()
  gc.disable()
  try:
    yield
  finally:
    if enabled:
      gc.enable()


def numpy_variables(model, images, seed: int = 0) -> dict:
  """Variables with the model's shapes for ``images`` (an array or a ``ShapeDtypeStruct``),
  filled from numpy instead of running ``model.init``.

  Running the initialisers (threefry, truncated normals) costs seconds of compilation per
  model, more than the forward or gradient under test, which needs only well-scaled values.
  Kernels get ``N(0, 1 / fan_in)``, norm scales and variances 1, LayerScale gains 0.1, other
  vectors and tables 0.
  """
  key = jax.random.key(0)
  rngs = {"params": key, **rng_streams(jax.random.fold_in(key, 1))}
  with no_gc():
    shapes = jax.eval_shape(functools.partial(model.init, train=False), rngs, images)
  rs = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name in ("scale", "var"):
      value = np.ones(leaf.shape)
    elif name.startswith("gamma"):
      value = np.full(leaf.shape, 0.1)
    elif len(leaf.shape) >= 2 and name != "relative_position_bias_table":
      value = rs.normal(0.0, np.prod(leaf.shape[:-1]) ** -0.5, leaf.shape)
    else:
      value = np.zeros(leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)
