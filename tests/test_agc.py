"""Tests for gnreg.agc: the unit-wise bound, the unit convention, and exclusion by path."""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gnreg


def unit_norms(x: np.ndarray) -> np.ndarray:
  """Unit norms broadcast to x's shape, by the rules documented in gnreg.agc."""
  x = np.asarray(x, np.float64)
  if np.squeeze(x).ndim <= 1:
    axes = tuple(range(x.ndim))
  elif x.ndim in (2, 3):
    axes = (0,)
  else:  # rank 4 and 5: all axes but the last
    axes = tuple(range(x.ndim - 1))
  return np.broadcast_to(np.sqrt(np.sum(x**2, axis=axes, keepdims=True)), x.shape)


def bits(x) -> np.ndarray:
  x = np.asarray(x)
  return x.view(np.dtype(f"u{x.dtype.itemsize}"))


# Every rank optax distinguishes, singleton axes included; a fixed set keeps eager op
# compilation cached across examples.
SHAPES = [
  (),
  (1,),
  (4,),
  (1, 3),
  (3, 1),
  (4, 3),
  (2, 3, 4),
  (1, 1, 3),
  (3, 3, 2, 4),
  (2, 2, 1, 2, 3),
]


@st.composite
def leaves(draw):
  shape = draw(st.sampled_from(SHAPES))
  seed = draw(st.integers(0, 2**31 - 1))
  rng = np.random.default_rng(seed)
  param_scale = draw(st.sampled_from([0.0, 1e-4, 1e-2, 1.0, 30.0]))
  grad_scale = 10.0 ** draw(st.floats(-4, 3))
  param = np.asarray(param_scale * rng.standard_normal(shape), np.float32)
  grad = np.asarray(grad_scale * rng.standard_normal(shape), np.float32)
  return param, grad


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
  pairs=st.lists(leaves(), min_size=1, max_size=3),
  clipping=st.floats(1e-3, 1.0),
  eps=st.sampled_from([0.0, 1e-3, 1e-1]),
)
def test_every_unit_is_within_the_bound(pairs, clipping, eps):
  params = {f"layer{i}": p for i, (p, _) in enumerate(pairs)}
  grads = {f"layer{i}": g for i, (_, g) in enumerate(pairs)}
  tx = gnreg.agc(clipping=clipping, eps=eps)
  clipped, _ = tx.update(grads, tx.init(params), params)
  for name, param in params.items():
    out = np.asarray(clipped[name], np.float64)
    bound = clipping * np.maximum(unit_norms(param), eps)
    assert np.all(unit_norms(out) <= bound * (1 + 1e-5) + 1e-30)
    # Units within the bound are left as they are; the others are only rescaled.
    # (Units within float32 rounding of the bound may go either way.)
    ratio = unit_norms(grads[name]) / np.maximum(bound, 1e-300)
    inside, outside = ratio < 1 - 1e-5, ratio > 1 + 1e-5
    np.testing.assert_array_equal(out[inside], grads[name][inside])
    # optax divides by max(||g||, 1e-6): a unit whose gradient is smaller than that ends
    # below the bound rather than on it.
    rescaled = grads[name] * bound / np.maximum(unit_norms(grads[name]), 1e-6)
    np.testing.assert_allclose(out[outside], rescaled[outside], rtol=1e-5)
  # And it is optax.adaptive_grad_clip, exactly.
  expected, _ = optax.adaptive_grad_clip(clipping, eps).update(grads, optax.EmptyState(), params)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(bits(a), bits(b)), clipped, expected)


def test_flax_kernels_have_one_unit_per_output_channel():
  rng = np.random.default_rng(0)
  dense = rng.standard_normal((5, 3)).astype(np.float32)  # (in, out)
  conv = rng.standard_normal((3, 3, 2, 4)).astype(np.float32)  # HWIO
  conv3d = rng.standard_normal((2, 2, 2, 2, 3)).astype(np.float32)  # DHWIO
  params = {"dense": dense, "conv": conv, "conv3d": conv3d}
  grads = jax.tree.map(lambda p: 100 * p[..., ::-1], params)  # every unit far above the bound
  tx = gnreg.agc(clipping=0.05, eps=0.0)
  clipped, _ = tx.update(grads, tx.init(params), params)
  for name, param in params.items():
    for channel in range(param.shape[-1]):
      w = np.linalg.norm(param[..., channel])
      g = np.linalg.norm(np.asarray(clipped[name])[..., channel])
      np.testing.assert_allclose(g, 0.05 * w, rtol=1e-5)


def test_vectors_and_singleton_kernels_are_one_unit():
  params = {"bias": jnp.array([3.0, 4.0]), "narrow": jnp.array([[3.0, 4.0]])}  # (1, out) kernel
  grads = {"bias": jnp.array([30.0, 0.0]), "narrow": jnp.array([[30.0, 0.0]])}
  tx = gnreg.agc(clipping=0.1, eps=0.0)
  clipped, _ = tx.update(grads, tx.init(params), params)
  # The whole array is one unit of norm 5: the gradient is scaled to norm 0.5.
  np.testing.assert_allclose(clipped["bias"], [0.5, 0.0], rtol=1e-6)
  np.testing.assert_allclose(clipped["narrow"], [[0.5, 0.0]], rtol=1e-6)


def test_eps_protects_zero_initialised_parameters():
  params = {"bias": jnp.zeros(4)}
  grads = {"bias": jnp.full(4, 1.0)}
  tx = gnreg.agc(clipping=0.01, eps=1e-3)
  clipped, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(np.linalg.norm(clipped["bias"]), 0.01 * 1e-3, rtol=1e-5)


class _Net(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.Dense(6)(x.reshape((x.shape[0], -1)))
    return nn.Dense(3, name="head")(x)


@functools.cache
def _flax_params():
  variables = _Net().init(jax.random.key(0), jnp.ones((1, 4, 4, 2)))
  return variables["params"]


def test_excluded_leaves_are_bit_identical_and_the_rest_match_optax():
  params = _flax_params()
  grads = jax.tree.map(lambda p: 1e3 * jnp.ones_like(p), params)
  tx = gnreg.agc(clipping=0.01, exclude=("head/*",))
  state = tx.init(params)
  expected, _ = optax.adaptive_grad_clip(0.01).update(grads, optax.EmptyState(), params)
  for jitted in (False, True):
    clipped, _ = (jax.jit(tx.update) if jitted else tx.update)(grads, state, params)
    for leaf in ("kernel", "bias"):
      np.testing.assert_array_equal(bits(clipped["head"][leaf]), bits(grads["head"][leaf]))
    for layer in ("Conv_0", "Dense_0"):
      for leaf in ("kernel", "bias"):
        a, b = clipped[layer][leaf], expected[layer][leaf]
        if jitted:  # XLA's fusion may move the last bit
          np.testing.assert_allclose(a, b, rtol=1e-6)
        else:
          np.testing.assert_array_equal(bits(a), bits(b))
    assert not np.array_equal(clipped["Dense_0"]["kernel"], grads["Dense_0"]["kernel"])
  # Outside jit the excluded arrays are passed through as the same objects.
  clipped, _ = tx.update(grads, state, params)
  assert clipped["head"]["kernel"] is grads["head"]["kernel"]


@pytest.mark.parametrize(
  ("exclude", "untouched"),
  [
    ("head/*", {"head/kernel", "head/bias"}),
    (["head/kernel"], {"head/kernel"}),
    (("*/bias",), {"Conv_0/bias", "Dense_0/bias", "head/bias"}),
    (("*kernel",), {"Conv_0/kernel", "Dense_0/kernel", "head/kernel"}),
    (("Dense_?/*", "head/bias"), {"Dense_0/kernel", "Dense_0/bias", "head/bias"}),
    (
      ("*",),
      {
        "Conv_0/kernel",
        "Conv_0/bias",
        "Dense_0/kernel",
        "Dense_0/bias",
        "head/kernel",
        "head/bias",
      },
    ),
  ],
)
def test_exclude_patterns_are_globs_over_whole_paths(exclude, untouched):
  params = _flax_params()
  grads = jax.tree.map(lambda p: 1e3 * jnp.ones_like(p), params)
  tx = gnreg.agc(clipping=0.01, exclude=exclude)
  clipped, _ = tx.update(grads, tx.init(params), params)
  path = gnreg.transforms.agc.param_path
  changed = {
    path(p)
    for (p, a), b in zip(
      jax.tree_util.tree_leaves_with_path(clipped), jax.tree.leaves(grads), strict=True
    )
    if not np.array_equal(a, b)
  }
  all_paths = {
    gnreg.transforms.agc.param_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)
  }
  assert changed == all_paths - untouched


def test_paths_of_nested_containers():
  params = {"params": {"blocks": [{"w": jnp.ones((2, 2))}, {"w": jnp.ones((2, 2))}]}}
  grads = jax.tree.map(lambda p: 10 * p, params)
  tx = gnreg.agc(clipping=0.1, exclude="params/blocks/1/w")
  clipped, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_array_equal(
    clipped["params"]["blocks"][1]["w"], grads["params"]["blocks"][1]["w"]
  )
  np.testing.assert_allclose(clipped["params"]["blocks"][0]["w"], 0.1, rtol=1e-6)


def test_pattern_matching_nothing_is_an_error():
  params = _flax_params()
  with pytest.raises(ValueError, match=r"exclude pattern 'Head/\*' matches no parameter path"):
    gnreg.agc(exclude="Head/*").init(params)  # matching is case-sensitive
  with pytest.raises(ValueError, match="matches no parameter path"):
    gnreg.agc(exclude="head").init(params)  # a pattern must match the whole path


@pytest.mark.parametrize(
  ("kwargs", "message"),
  [
    (dict(clipping=0.0), "agc: clipping must be > 0, got 0.0"),
    (dict(clipping=-1.0), "agc: clipping must be > 0, got -1.0"),
    (dict(clipping=math.nan), "agc: clipping must be > 0, got nan"),
    (dict(eps=-1e-3), "agc: eps must be >= 0, got -0.001"),
    (dict(exclude=("head/*", 3)), "agc: exclude must hold glob strings, got 3"),
  ],
)
def test_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=f"^{message}$"):
    gnreg.agc(**kwargs)


def test_update_needs_params():
  tx = gnreg.agc()
  with pytest.raises(ValueError):
    tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}))
