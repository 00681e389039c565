"""Tests for the ResNet, WideResNet and ViT families in the model registry."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _models import numpy_variables

from gnreg.models import available, create, resnet, resolve, rng_streams, vit, wide_resnet

# Published parameter counts (weights only, no BatchNorm running statistics), checked to 1%.
# model, input height = width, classes, published count, source.
PARAM_COUNTS = [
  ("ResNet18", 224, 1000, 11.69e6, "torchvision; He et al. 2016"),
  ("ResNet34", 224, 1000, 21.80e6, "torchvision; He et al. 2016"),
  ("ResNet50", 224, 1000, 25.56e6, "torchvision; He et al. 2016"),
  ("ResNet101", 224, 1000, 44.55e6, "torchvision; He et al. 2016"),
  ("ResNet152", 224, 1000, 60.19e6, "torchvision; He et al. 2016"),
  ("ResNet20", 32, 10, 0.27e6, "He et al. 2016, Table 6"),
  ("ResNet56", 32, 10, 0.85e6, "He et al. 2016, Table 6"),
  ("WideResNet_16_4", 32, 10, 2.75e6, "Zagoruyko & Komodakis 2016, Table 4"),
  ("WideResNet_16_8", 32, 10, 11.0e6, "Zagoruyko & Komodakis 2016, Table 4"),
  ("WideResNet_28_10", 32, 10, 36.5e6, "Zagoruyko & Komodakis 2016, Table 4"),
  ("ViT_Ti16", 224, 1000, 5.72e6, "Touvron et al. 2021 (DeiT), Table 1; timm"),
  ("ViT_S16", 224, 1000, 22.05e6, "Touvron et al. 2021 (DeiT), Table 1; timm"),
  ("ViT_B16", 224, 1000, 86.6e6, "Dosovitskiy et al. 2021, Table 1; timm"),
  ("ViT_L16", 224, 1000, 304.3e6, "Dosovitskiy et al. 2021, Table 1; timm"),
]

# Models run for real in train and eval mode: name, input (height, width, channels), overrides.
# One per code path (stem, block type, shortcut type, family). On CPU each new tensor shape costs
# an XLA compilation, so inputs are as small as the architecture allows: the CIFAR ResNets and
# WRNs see 8x8 images (ResNet20 single-channel, like the embedded `digits` demo), the
# ImageNet-stem ResNets 32x32, and the ViTs 32x32 in 8x8 patches.
FORWARD = [
  ("ResNet18", (32, 32, 3), {}),
  ("ResNet50", (32, 32, 3), {}),
  ("ResNet20", (8, 8, 1), {}),
  ("WideResNet_16_4", (8, 8, 3), {}),
  ("ViT_Ti16", (32, 32, 3), {"patch_size": 8}),
]
# Models traced in train and eval mode with jax.eval_shape only (init, forward, BatchNorm updates;
# every shape and dtype, no numbers). Each differs from a FORWARD model only in depth or width;
# compiling their distinct shapes (or, for the big ones, running them) would take minutes on a
# shared 2-core CPU.
SHAPE_ONLY = [
  ("ResNet34", (32, 32, 3), {}),
  ("ResNet101", (32, 32, 3), {}),
  ("ResNet152", (32, 32, 3), {}),
  ("ResNet200", (32, 32, 3), {}),
  ("ResNet56", (8, 8, 1), {}),
  ("ResNet110", (8, 8, 1), {}),
  ("WideResNet_16_8", (32, 32, 3), {}),
  ("WideResNet_28_2", (32, 32, 3), {}),
  ("WideResNet_28_10", (32, 32, 3), {}),
  ("WideResNet_40_10", (32, 32, 3), {}),
  ("ViT_S16", (32, 32, 3), {"patch_size": 4}),
  ("ViT_B16", (32, 32, 3), {"patch_size": 4}),
  ("ViT_L16", (32, 32, 3), {"patch_size": 4}),
]
BATCH = 2
CLASSES = 10


def _param_count(params) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def _variable_shapes(model, input_shape):
  x = jax.ShapeDtypeStruct((BATCH, *input_shape), jnp.float32)
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)


def _variables(model, input_shape):
  return numpy_variables(model, jax.ShapeDtypeStruct((BATCH, *input_shape), jnp.float32))


def _images(input_shape, seed=0):
  images = np.random.default_rng(seed).standard_normal((BATCH, *input_shape))
  return jnp.asarray(images, jnp.float32)


def _registered_by_these_files() -> set[str]:
  """The paper tables of these families; the GNP authors' variants are counted in the zoo test."""
  names = set(resnet.VARIANTS) | set(wide_resnet.VARIANTS) | set(vit.VARIANTS)
  return {n for n in names if not n.endswith("_GNP")}


@pytest.mark.parametrize(("name", "size", "classes", "published", "source"), PARAM_COUNTS)
def test_parameter_count_matches_published(name, size, classes, published, source):
  model = create(name, num_classes=classes)
  params = _variable_shapes(model, (size, size, 3))["params"]
  count = _param_count(params)
  assert abs(count - published) <= 0.01 * published, f"{name}: {count} vs {published} ({source})"


def test_tables_cover_every_registered_model():
  names = _registered_by_these_files()
  assert names <= set(available())
  assert {n for n, _, _ in FORWARD} | {n for n, _, _ in SHAPE_ONLY} == names


@pytest.mark.parametrize(("name", "input_shape", "overrides"), FORWARD)
def test_forward_train_and_eval(name, input_shape, overrides):
  model = create(name, num_classes=CLASSES, **overrides)
  variables = _variables(model, input_shape)
  images = _images(input_shape)
  rngs = rng_streams(jax.random.key(1))

  logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"], rngs=rngs)
  assert logits.shape == (BATCH, CLASSES) and logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  if name.startswith("ViT"):
    assert "batch_stats" not in variables and not updates
  else:
    old = jax.tree.leaves(variables["batch_stats"])
    new = jax.tree.leaves(updates["batch_stats"])
    assert len(old) == len(new) > 0
    assert all(not np.allclose(a, b) for a, b in zip(old, new, strict=True))

  # Eval mode must neither need a mutable collection nor an rng.
  eval_logits = model.apply(variables, images, train=False)
  assert eval_logits.shape == (BATCH, CLASSES) and eval_logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(eval_logits)))


@pytest.mark.parametrize(("name", "input_shape", "overrides"), SHAPE_ONLY)
def test_forward_shapes(name, input_shape, overrides):
  model = create(name, num_classes=CLASSES, **overrides)
  images = jax.ShapeDtypeStruct((BATCH, *input_shape), jnp.float32)

  def init_train_eval(images):
    variables = model.init(jax.random.key(0), images, train=False)
    train_logits, updates = model.apply(
      variables, images, train=True, mutable=["batch_stats"], rngs=rng_streams(jax.random.key(1))
    )
    return variables, train_logits, updates, model.apply(variables, images, train=False)

  # One trace for all three: tracing a 200-layer network is itself the cost here.
  variables, train_logits, updates, eval_logits = jax.eval_shape(init_train_eval, images)
  for logits in (train_logits, eval_logits):
    assert logits.shape == (BATCH, CLASSES) and logits.dtype == jnp.float32
  if name.startswith("ViT"):
    assert "batch_stats" not in variables and not updates
  else:
    stats = jax.tree.map(jnp.shape, variables["batch_stats"])
    assert stats and jax.tree.map(jnp.shape, updates["batch_stats"]) == stats


def test_unknown_name_suggests_the_closest_models():
  with pytest.raises(ValueError, match=r"unknown model 'ResNet19'; did you mean ResNet18") as e:
    create("ResNet19", num_classes=10)
  assert "\n" not in str(e.value) and "ViT" not in str(e.value)
  with pytest.raises(ValueError, match=r"unknown model 'Transformer'; no close name"):
    create("Transformer", num_classes=10)


def test_lookup_ignores_case_so_the_authors_names_work():
  assert resolve("ViT_TI16") == "ViT_Ti16"
  assert resolve("resnet18_gnp") == "ResNet18_GNP"
  assert create("WIDERESNET_16_4", num_classes=10).width == 4


@pytest.mark.parametrize(
  ("name", "input_shape", "overrides"),
  [
    ("ResNet50", (32, 32, 3), {}),
    ("ResNet20", (8, 8, 1), {}),
    ("WideResNet_16_4", (8, 8, 3), {}),
    ("ViT_Ti16", (32, 32, 3), {"patch_size": 8}),
  ],
)
def test_bfloat16_computes_in_bfloat16_and_returns_float32_logits(name, input_shape, overrides):
  model = create(name, num_classes=CLASSES, dtype=jnp.bfloat16, **overrides)
  images = jax.ShapeDtypeStruct((BATCH, *input_shape), jnp.float32)

  def init_and_apply(images):
    variables = model.init(jax.random.key(0), images, train=False)
    logits, state = model.apply(
      variables,
      images,
      train=True,
      mutable=["batch_stats", "intermediates"],
      capture_intermediates=True,
      rngs=rng_streams(jax.random.key(1)),
    )
    return variables, logits, state

  # Dtypes are static, so an abstract evaluation shows exactly what a real run computes in.
  variables, logits, state = jax.eval_shape(init_and_apply, images)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  stats = jax.tree.leaves(state.get("batch_stats", {}))
  assert {leaf.dtype for leaf in stats} <= {jnp.dtype(jnp.float32)}
  assert logits.dtype == jnp.float32
  # Every submodule's output except the float32 classifier (and the model's own, the logits).
  outputs = {
    jax.tree_util.keystr(path): leaf.dtype
    for path, leaf in jax.tree_util.tree_leaves_with_path(state["intermediates"])
    if path[0].key not in ("head", "__call__")
  }
  assert len(outputs) > 5
  assert set(outputs.values()) == {jnp.dtype(jnp.bfloat16)}, outputs


@pytest.mark.parametrize(("stem", "kernel", "stage1_size"), [("imagenet", 7, 8), ("cifar", 3, 32)])
def test_resnet_stem(stem, kernel, stage1_size):
  model = create("ResNet18", num_classes=CLASSES, stem=stem)
  x = jax.ShapeDtypeStruct((BATCH, 32, 32, 3), jnp.float32)
  variables = _variable_shapes(model, (32, 32, 3))
  assert variables["params"]["stem_conv"]["kernel"].shape == (kernel, kernel, 3, 64)
  _, state = jax.eval_shape(
    functools.partial(
      model.apply, train=False, capture_intermediates=True, mutable=["intermediates"]
    ),
    variables,
    x,
  )
  stage1 = state["intermediates"]["stage1_block1"]["__call__"][0]
  assert stage1.shape == (BATCH, stage1_size, stage1_size, 64)


def test_resnet_defaults_per_family():
  assert create("ResNet50", num_classes=CLASSES).stem == "imagenet"
  cifar = create("ResNet20", num_classes=CLASSES)
  assert (cifar.stem, cifar.shortcut, tuple(cifar.widths)) == ("cifar", "pad", (16, 32, 64))


def test_resnet_init_is_he_fan_out_with_identity_blocks():
  # One 32-channel stage: few distinct shapes, so few initialiser compilations.
  model = create("ResNet20", num_classes=CLASSES, stage_sizes=(1,), widths=(32,))
  images = _images((8, 8, 1))
  variables = model.init(jax.random.key(0), images, train=False)
  block = variables["params"]["stage1_block1"]
  # He et al. 2015: std = sqrt(2 / fan_out), fan_out = 3 * 3 * 32.
  np.testing.assert_allclose(np.std(block["conv1"]["kernel"]), math.sqrt(2 / 288), rtol=0.1)
  np.testing.assert_array_equal(block["bn1"]["scale"], 1.0)
  # Goyal et al. 2017: the residual branch ends in a zero-scale BN.
  np.testing.assert_array_equal(block["bn2"]["scale"], 0.0)
  _, state = model.apply(
    variables, images, train=False, capture_intermediates=True, mutable=["intermediates"]
  )
  stem = state["intermediates"]["stem_bn"]["__call__"][0]
  block_out = state["intermediates"]["stage1_block1"]["__call__"][0]
  # The block input is relu(stem), so the block is the identity at init.
  np.testing.assert_allclose(block_out, jax.nn.relu(stem), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
  ("name", "overrides", "match"),
  [
    ("ResNet18", {"stem": "tiny"}, "stem must be one of"),
    ("ResNet18", {"block": "dense"}, "block must be one of"),
    ("WideResNet_16_4", {"depth": 17}, "depth must be 6n \\+ 4"),
    ("WideResNet_16_4", {"dropout_rate": 1.0}, "dropout_rate must be in"),
    ("WideResNet_16_4", {"shortcut": "conv"}, "shortcut must be one of"),
    ("ViT_Ti16", {"drop_path_rate": -0.1}, "drop_path_rate must be in"),
    ("ViT_Ti16", {"attention_dropout_rate": 1.5}, "attention_dropout_rate must be in"),
    ("ViT_Ti16", {"embed_dim": 100}, "embed_dim must be divisible by num_heads"),
  ],
)
def test_bad_fields_raise(name, overrides, match):
  with pytest.raises(ValueError, match=match):
    create(name, num_classes=CLASSES, **overrides)


def test_vit_position_embedding_follows_input_and_patch_size():
  model = create("ViT_S16", num_classes=CLASSES, patch_size=4)
  params = _variable_shapes(model, (32, 32, 3))["params"]
  assert params["pos_embedding"].shape == (1, 8 * 8 + 1, 384)
  assert params["embedding"]["kernel"].shape == (4, 4, 3, 384)
  with pytest.raises(ValueError, match="multiples of patch_size=4"):
    _variable_shapes(model, (30, 30, 3))


def test_vit_head_is_zero_initialised():
  # No encoder blocks: only the head's initialiser matters, and each initialised shape costs a
  # compilation.
  model = create("ViT_Ti16", num_classes=CLASSES, patch_size=8, depth=0)
  images = _images((32, 32, 3))
  variables = model.init(jax.random.key(0), images, train=False)
  assert not np.any(variables["params"]["head"]["kernel"])
  np.testing.assert_array_equal(model.apply(variables, images, train=False), 0.0)
  # ... while the layers below it are not.
  assert np.std(variables["params"]["pos_embedding"]) > 0.01


@pytest.mark.parametrize(
  ("name", "input_shape", "overrides", "stream"),
  [
    ("WideResNet_16_4", (8, 8, 3), {"dropout_rate": 0.3}, "dropout"),
    ("ViT_Ti16", (32, 32, 3), {"patch_size": 8, "depth": 2, "dropout_rate": 0.1}, "dropout"),
    (
      "ViT_Ti16",
      (32, 32, 3),
      {"patch_size": 8, "depth": 2, "attention_dropout_rate": 0.3},
      "dropout",
    ),
    ("ViT_Ti16", (32, 32, 3), {"patch_size": 8, "depth": 2, "drop_path_rate": 0.5}, "drop_path"),
  ],
)
def test_dropout_draws_from_its_stream_in_train_and_is_off_in_eval(
  name, input_shape, overrides, stream
):
  model = create(name, num_classes=CLASSES, **overrides)
  baseline = create(
    name, num_classes=CLASSES, **{k: v for k, v in overrides.items() if k not in _DROPOUTS}
  )
  variables = _variables(model, input_shape)
  images = _images(input_shape)

  @jax.jit
  def train(rngs):
    return model.apply(variables, images, train=True, mutable=["batch_stats"], rngs=rngs)[0]

  rngs = rng_streams(jax.random.key(0))
  reseeded = lambda streams: {**rngs, **{s: jax.random.key(7) for s in streams}}
  assert not np.allclose(train(rngs), train(reseeded([stream])))
  np.testing.assert_allclose(train(rngs), train(rngs))
  others = [s for s in rngs if s != stream]
  np.testing.assert_array_equal(train(rngs), train(reseeded(others)))
  np.testing.assert_allclose(
    model.apply(variables, images, train=False),
    baseline.apply(variables, images, train=False),
  )


_DROPOUTS = ("dropout_rate", "attention_dropout_rate", "drop_path_rate")
