"""Tests for gnreg.agc: the unit-wise bound, the unit convention, and exclusion by path."""

from __future__ import annotations

import functools
import math
import re

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
  """Unit norms broadcast to x's shape, for a leaf with no name rule (gnreg.agc's table)."""
  x = np.asarray(x, np.float64)
  if x.ndim <= 1 or x.shape[0] == 1:
    axes = tuple(range(x.ndim))
  else:  # Flax's (fan-in..., out) layout: one unit per output
    axes = tuple(range(x.ndim - 1))
  return np.broadcast_to(np.sqrt(np.sum(x**2, axis=axes, keepdims=True)), x.shape)


def bits(x) -> np.ndarray:
  x = np.asarray(x)
  return x.view(np.dtype(f"u{x.dtype.itemsize}"))


# Ranks 0 to 5, singleton axes included; a fixed set keeps eager op compilation cached
# across examples.
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


@hypothesis.settings(max_examples=20, deadline=None)
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


# The zoo's parameters by NFNets' unit definition, written from the models' layouts: regex
# over the path, the rank it must have, and the axes of one unit. The first match decides.
_ZOO_UNITS = [
  (r"attention/(query|key|value)/kernel$", 3, (0,)),  # DenseGeneral (in, heads, head_dim)
  (r"attention/out/kernel$", 3, (0, 1)),  # DenseGeneral (heads, head_dim, out)
  (r"/(bias|scale)$", None, "all"),  # biases of any rank and norm scales: one unit
  (r"(^|/)(pos_embedding|pos_embed|cls|cls_token)$", 3, "all"),  # position embedding, token
  (r"/gamma_\d$", 1, "all"),  # CaiT's LayerScale
  (r"(conv\d?|Conv_\d|embedding|conv|stem_conv)/kernel$", 4, (0, 1, 2)),  # Conv HWIO
  (r"/kernel$", 2, (0,)),  # Dense (in, out)
]


def _zoo_units(path: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  for pattern, rank, axes in _ZOO_UNITS:
    if re.search(pattern, path):
      assert rank is None or len(shape) == rank, (path, shape)
      return tuple(range(len(shape))) if axes == "all" else axes
  raise AssertionError(f"no reference unit for {path} {shape}")


@pytest.mark.parametrize("name", ["ViT_Ti16", "ResNet20", "CaiT_XXS12"])
def test_every_leaf_of_the_zoo_is_clipped_in_nfnets_units(name):
  from gnreg import models

  model = models.create(name, num_classes=10)
  variables = jax.eval_shape(
    lambda: model.init(
      {"params": jax.random.key(0), "dropout": jax.random.key(1)},
      jnp.zeros((1, 32, 32, 3)),
      train=False,
    )
  )
  _check_units(variables["params"], _zoo_units)


class _Layers(nn.Module):
  """One of each Flax layer whose units gnreg.agc decides."""

  @nn.compact
  def __call__(self, tokens, image):
    x = nn.Embed(11, 8)(tokens)  # embedding (vocab, features)
    x = nn.Conv(6, (3,))(x)  # Conv1D (W, I, O)
    x = nn.MultiHeadDotProductAttention(num_heads=2, name="attention")(x)
    x = nn.LayerNorm()(x)
    y = nn.Conv(4, (3, 3))(image)
    y = nn.Conv(8, (3, 3), feature_group_count=4)(y)  # depthwise: (3, 3, 1, 8)
    y = nn.Conv(3, (2, 2, 2))(y[..., None, :].repeat(2, axis=-2))  # Conv3D (D, H, W, I, O)
    pos = self.param("pos_embedding", nn.initializers.normal(1.0), (1, x.shape[1], 6))
    return nn.Dense(3)(x + pos).sum() + y.sum()


# (path, the axes of one unit), by NFNets' definition: the fan-in of one output, or the whole.
_LAYER_UNITS = {
  "Embed_0/embedding": (1,),
  "Conv_0/kernel": (0, 1),
  "Conv_0/bias": (0,),
  "attention/query/kernel": (0,),
  "attention/key/kernel": (0,),
  "attention/value/kernel": (0,),
  "attention/query/bias": (0, 1),
  "attention/key/bias": (0, 1),
  "attention/value/bias": (0, 1),
  "attention/out/kernel": (0, 1),
  "attention/out/bias": (0,),
  "LayerNorm_0/scale": (0,),
  "LayerNorm_0/bias": (0,),
  "Conv_1/kernel": (0, 1, 2),
  "Conv_1/bias": (0,),
  "Conv_2/kernel": (0, 1, 2),
  "Conv_2/bias": (0,),
  "Conv_3/kernel": (0, 1, 2, 3),
  "Conv_3/bias": (0,),
  "pos_embedding": (0, 1, 2),
  "Dense_0/kernel": (0,),
  "Dense_0/bias": (0,),
}


def _np_agc(param, grad, axes, clipping, eps):
  """The NFNets clip of one parameter in float64 NumPy, units normed over ``axes``."""
  p, g = np.asarray(param, np.float64), np.asarray(grad, np.float64)
  p_norm = np.sqrt(np.sum(p**2, axis=axes, keepdims=True))
  g_norm = np.sqrt(np.sum(g**2, axis=axes, keepdims=True))
  bound = clipping * np.maximum(p_norm, eps)
  return np.where(g_norm < bound, g, g * bound / np.maximum(g_norm, 1e-6))


def _random_like(tree, seed, scale=1.0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda x: jnp.asarray(scale * rng.standard_normal(x.shape), jnp.float32), tree
  )


def _check_units(shapes, units, clipping=0.05, eps=1e-3):
  """gnreg.agc against _np_agc on every leaf of ``shapes``, with the reference ``units``."""
  params = _random_like(shapes, 0)
  grads = _random_like(shapes, 1, scale=10.0)  # most units above the bound
  tx = gnreg.agc(clipping=clipping, eps=eps)
  clipped, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  path = gnreg.transforms.agc.param_path
  checked = 0
  for (p, out), param, grad in zip(
    jax.tree_util.tree_leaves_with_path(clipped),
    jax.tree.leaves(params),
    jax.tree.leaves(grads),
    strict=True,
  ):
    axes = units(path(p), param.shape)
    expected = _np_agc(param, grad, axes, clipping, eps)
    np.testing.assert_allclose(out, expected, rtol=2e-5, atol=1e-7, err_msg=path(p))
    checked += 1
  assert checked == len(jax.tree.leaves(shapes))


def test_every_flax_layer_is_clipped_in_nfnets_units():
  variables = jax.eval_shape(
    lambda: _Layers().init(jax.random.key(0), jnp.zeros((2, 5), jnp.int32), jnp.zeros((1, 6, 6, 2)))
  )
  params = variables["params"]
  path = gnreg.transforms.agc.param_path
  assert {path(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)} == set(_LAYER_UNITS)
  assert params["Conv_2"]["kernel"].shape == (3, 3, 1, 8)  # depthwise
  assert params["attention"]["out"]["kernel"].ndim == 3
  _check_units(params, lambda p, shape: _LAYER_UNITS[p])


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


def test_fan_in_overrides_the_table_per_path():
  params = {"mix": {"kernel": jnp.ones((2, 3, 4))}, "other": {"kernel": jnp.ones((2, 3, 4))}}
  grads = _random_like(params, 2, scale=100.0)
  tx = gnreg.agc(clipping=0.05, eps=0.0, fan_in={"mix/*": (-1, 1)})
  clipped, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(
    clipped["mix"]["kernel"],
    _np_agc(params["mix"]["kernel"], grads["mix"]["kernel"], (1, 2), 0.05, 0.0),
    rtol=1e-5,
  )
  np.testing.assert_allclose(
    clipped["other"]["kernel"],
    _np_agc(params["other"]["kernel"], grads["other"]["kernel"], (0, 1), 0.05, 0.0),
    rtol=1e-5,
  )
  tx = gnreg.agc(clipping=0.05, eps=0.0, fan_in={"mix/*": ()})  # element-wise
  clipped, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(
    clipped["mix"]["kernel"],
    _np_agc(params["mix"]["kernel"], grads["mix"]["kernel"], (), 0.05, 0.0),
    rtol=1e-5,
  )


@pytest.mark.parametrize(
  ("fan_in", "message"),
  [
    ({"nothing/*": (0,)}, r"fan_in pattern 'nothing/\*' matches no parameter path"),
    ({"w": (2,)}, r"fan_in\['w'\] = \(2,\) names an axis that 'w' of shape \(2, 2\) does not have"),
  ],
)
def test_bad_fan_in_at_init(fan_in, message):
  with pytest.raises(ValueError, match=message):
    gnreg.agc(fan_in=fan_in).init({"w": jnp.ones((2, 2))})


@pytest.mark.parametrize("fan_in", [{"w": "0"}, {"w": (0.5,)}, {3: (0,)}, [("w", (0,))]])
def test_bad_fan_in_types(fan_in):
  with pytest.raises(ValueError, match="agc: fan_in must map glob"):
    gnreg.agc(fan_in=fan_in)
