"""Tests for the VGG, PyramidNet(-ShakeDrop), Shake-Shake, Swin and CaiT model families."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _models import no_gc, numpy_variables

from gnreg import compilation
from gnreg.models import ShakeRegularized, available, create, rng_streams
from gnreg.models.pyramidnet import shake_drop, survival_probs
from gnreg.models.shake_shake import shake_shake
from gnreg.models.swin import SwinTransformer

CIFAR = (2, 32, 32, 3)
IMAGENET = (2, 224, 224, 3)

# Every model these families register.
ZOO = {
  "VGG16",
  "VGG19",
  "VGG16BN",
  "VGG19BN",
  "WideResNet_2_96_ShakeShake",
  "PyramidNet_164_48",
  "PyramidNet_164_270",
  "PyramidNet_200_240",
  "PyramidNet_272_200",
  "PyramidNet_164_48_ShakeDrop",
  "PyramidNet_272_200_ShakeDrop",
  "Swin_Tiny",
  "Swin_Small",
  "Swin_Base",
  *(f"CaiT_{size}" for size in ("XXS12", "XXS24", "XXS36", "XS12", "XS24", "S12", "S24", "S36")),
  *(f"CaiT_{size}" for size in ("M24", "M36", "M48")),
  *(f"{name}_GNP" for name in ("VGG16", "VGG19", "VGG16BN", "VGG19BN")),
  *(f"PyramidNet_{size}_GNP" for size in ("164_48", "164_270", "200_240", "272_200")),
  *(f"PyramidNet_{size}_ShakeDrop_GNP" for size in ("164_48", "272_200")),
  *(f"Swin_{size}_GNP" for size in ("Tiny", "Small", "Base")),
}

# Every GNP authors' architecture (github.com/zhaoyang-0204/gnp) at 32x32 and 10 classes,
# exact: the parameter counts of their own flax modules (models/available_models at their
# 2024.6.17 commit; Swin: their `*_Patch4` on jax_models 0.0.5), measured with jax.eval_shape
# on their init (2026-12-02). Their ShakeDrop rows, as released, pass their block a `prob`
# keyword it does not take (TypeError); renamed to its `mask_prob`, they give these counts,
# the plain rows' plus the 32 of a BN in the stem.
GNP_PARAM_COUNTS = {
  "ResNet18_GNP": 11_150_874,
  "ResNet34_GNP": 21_262_746,
  "ResNet50_GNP": 23_504_090,
  "ResNet101_GNP": 42_496_218,
  "ResNet152_GNP": 58_139_866,
  "ResNet200_GNP": 62_620_890,
  "WideResNet_16_4_GNP": 2_706_906,
  "WideResNet_28_10_GNP": 36_220_634,
  "WideResNet_40_10_GNP": 55_583_194,
  "PyramidNet_164_48_GNP": 1_715_410,
  "PyramidNet_164_270_GNP": 27_215_989,
  "PyramidNet_200_240_GNP": 26_752_670,
  "PyramidNet_272_200_GNP": 26_210_810,
  "PyramidNet_164_48_ShakeDrop_GNP": 1_715_442,
  "PyramidNet_272_200_ShakeDrop_GNP": 26_210_842,
  "VGG16_GNP": 33_638_218,
  "VGG19_GNP": 38_947_914,
  "VGG16BN_GNP": 33_646_666,
  "VGG19BN_GNP": 38_958_922,
  "ViT_Ti16_GNP": 5_362_762,
  "ViT_S16_GNP": 21_342_346,
  "ViT_B16_GNP": 85_152_010,
  "ViT_L16_GNP": 302_439_434,
  "Swin_Tiny_GNP": 27_505_300,
  "Swin_Small_GNP": 48_800_164,
  "Swin_Base_GNP": 86_693_762,
}

# (model, input shape, classes, published parameter count). Sources: Simonyan & Zisserman 2015
# / torchvision (VGG, ImageNet); Gastaldi 2017 (Shake-Shake 26 2x96d, CIFAR-10); Han et al.
# 2017 Table 4 (PyramidNet bottleneck, matched at CIFAR-10's 10 classes); Liu et al. 2021 Table
# 1 (Swin, ImageNet); Touvron et al. 2021 Table 3 (CaiT, ImageNet).
PARAM_TABLE = [
  ("VGG16", IMAGENET, 1000, 138.4e6),
  ("VGG19", IMAGENET, 1000, 143.7e6),
  ("VGG16BN", IMAGENET, 1000, 138.4e6),
  ("VGG19BN", IMAGENET, 1000, 143.7e6),
  ("WideResNet_2_96_ShakeShake", CIFAR, 10, 26.2e6),
  ("PyramidNet_164_48", CIFAR, 10, 1.7e6),
  ("PyramidNet_164_48_ShakeDrop", CIFAR, 10, 1.7e6),  # ShakeDrop adds no parameters.
  ("PyramidNet_164_270", CIFAR, 10, 27.0e6),
  ("PyramidNet_200_240", CIFAR, 10, 26.6e6),
  ("PyramidNet_272_200", CIFAR, 10, 26.0e6),
  ("PyramidNet_272_200_ShakeDrop", CIFAR, 10, 26.0e6),
  ("Swin_Tiny", IMAGENET, 1000, 28.3e6),
  ("Swin_Small", IMAGENET, 1000, 49.6e6),
  ("Swin_Base", IMAGENET, 1000, 87.8e6),
  ("CaiT_XXS24", IMAGENET, 1000, 12.0e6),
  ("CaiT_XXS36", IMAGENET, 1000, 17.3e6),
  ("CaiT_XS24", IMAGENET, 1000, 26.6e6),
  ("CaiT_S24", IMAGENET, 1000, 46.9e6),
  ("CaiT_S36", IMAGENET, 1000, 68.2e6),
  ("CaiT_M24", IMAGENET, 1000, 185.9e6),
  ("CaiT_M36", IMAGENET, 1000, 270.1e6),
  ("CaiT_M48", IMAGENET, 1000, 356.5e6),
]

# Small or shrunk configurations of every family that run real forward passes on CPU; the
# overrides keep each code path (BN, shake, shifted windows, class attention) with few layers.
REAL = {
  "VGG16BN": {"stage_sizes": (1, 1, 1, 1, 1)},
  "WideResNet_2_96_ShakeShake": {"blocks_per_group": 1, "channel_multiplier": 1},
  "PyramidNet_272_200_ShakeDrop": {"depth": 11, "alpha": 12},
  "Swin_Tiny": {"embed_dim": 12, "depths": (2, 2), "num_heads": (1, 2)},
  "CaiT_XXS12": {"embed_dim": 32, "depth": 1},
}
SHAKE = {"WideResNet_2_96_ShakeShake", "PyramidNet_272_200_ShakeDrop"}
# XLA's CPU backend spends most of a small model's test time optimising code that runs once.
FAST_COMPILE = compilation.run_once_options()


def _rngs(seed: int = 0, shake: int | None = None) -> dict[str, jax.Array]:
  key = jax.random.key(seed)
  rngs = {"params": key, **rng_streams(jax.random.fold_in(key, 1))}
  if shake is not None:
    rngs["shake"] = jax.random.fold_in(key, 100 + shake)
  return rngs


@functools.cache
def _abstract(name: str, shape: tuple[int, ...], classes: int):
  """Shapes of (logits, variables) of a training-mode init, traced but never computed."""
  model = create(name, num_classes=classes)
  images = jax.ShapeDtypeStruct(shape, jnp.float32)
  with no_gc():
    return jax.eval_shape(lambda x: model.init_with_output(_rngs(), x, train=True), images)


def _count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def test_every_family_model_is_registered():
  registered = set(available())
  assert ZOO <= registered, sorted(ZOO - registered)
  prefixes = ("VGG", "PyramidNet", "Swin", "CaiT")
  ours = {n for n in registered if n.startswith(prefixes) or n == "WideResNet_2_96_ShakeShake"}
  assert ours == ZOO


@pytest.mark.parametrize(("name", "shape", "classes", "published"), PARAM_TABLE)
def test_parameter_count_matches_paper(name, shape, classes, published):
  _, variables = _abstract(name, shape, classes)
  count = _count(variables["params"])
  assert abs(count - published) <= 0.01 * published, f"{name}: {count:,} vs {published:,.0f}"


def test_every_gnp_variant_is_counted():
  assert set(GNP_PARAM_COUNTS) == {n for n in available() if n.endswith("_GNP")}


@pytest.mark.parametrize(("name", "published"), sorted(GNP_PARAM_COUNTS.items()))
def test_parameter_count_matches_the_gnp_authors(name, published):
  logits, variables = _abstract(name, CIFAR, 10)
  assert _count(variables["params"]) == published
  assert logits.shape == (CIFAR[0], 10) and logits.dtype == jnp.float32


# Every model of these families; the GNP rows' forward is traced by their count test.
@pytest.mark.parametrize("name", sorted(ZOO - set(GNP_PARAM_COUNTS)))
def test_abstract_training_forward(name):
  # Models in the parameter table reuse its trace (one trace per deep model keeps this fast).
  shape, classes = next(((s, c) for n, s, c, _ in PARAM_TABLE if n == name), (CIFAR, 10))
  logits, variables = _abstract(name, shape, classes)
  assert logits.shape == (2, classes) and logits.dtype == jnp.float32
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_forward_twice_with_same_rngs(name):
  model = create(name, num_classes=10, **REAL[name])
  images = jax.random.normal(jax.random.key(1), CIFAR)
  variables = numpy_variables(model, images)

  def run(params, rngs):
    state = {**variables, "params": params}
    logits, updates = model.apply(state, images, train=True, mutable=["batch_stats"], rngs=rngs)
    return logits, updates, model.apply(state, images, train=False)

  params = variables["params"]
  run = jax.jit(run).lower(params, _rngs()).compile(FAST_COMPILE)
  logits, state, evaluated = run(params, _rngs(seed=3))
  for out in (logits, evaluated):
    assert out.shape == (2, 10) and out.dtype == jnp.float32
    assert np.all(np.isfinite(out))
  # The GNP trainer's second pass re-applies with the same rngs: identical randomness, at the
  # same parameters and at perturbed ones.
  again, state_again, _ = run(params, _rngs(seed=3))
  np.testing.assert_array_equal(logits, again)
  jax.tree.map(np.testing.assert_array_equal, state, state_again)
  perturbed = jax.tree.map(lambda p: p * 1.01, params)
  assert np.all(np.isfinite(run(perturbed, _rngs(seed=3))[0]))
  if name in SHAKE:
    assert not np.allclose(logits, run(params, _rngs(seed=3, shake=1))[0])


@pytest.mark.parametrize("name", sorted(SHAKE))
def test_true_gradient_keyword_keeps_forward_changes_backward(name):
  images = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  model = create(name, num_classes=10, **REAL[name])
  assert isinstance(model, ShakeRegularized)
  variables = numpy_variables(model, images)

  def logits_and_input_grad(true_gradient):
    def loss(x):
      logits, _ = model.apply(
        variables,
        x,
        train=True,
        mutable=["batch_stats"],
        rngs=_rngs(),
        true_gradient=true_gradient,
      )
      return jnp.sum(logits**2), logits

    (_, logits), grad = jax.value_and_grad(loss, has_aux=True)(images)
    return logits, grad

  both = lambda: [logits_and_input_grad(true_gradient) for true_gradient in (False, True)]
  (shaken, shaken_grad), (exact, exact_grad) = jax.jit(both).lower().compile(FAST_COMPILE)()
  np.testing.assert_allclose(shaken, exact, rtol=1e-6, atol=1e-6)
  assert not np.allclose(shaken_grad, exact_grad, rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("name", sorted(REAL))
def test_bfloat16_computation_keeps_float32_params_and_logits(name):
  model = create(name, num_classes=10, dtype=jnp.bfloat16, **REAL[name])
  with no_gc():
    logits, variables = jax.eval_shape(
      lambda x: model.init_with_output(_rngs(), x, train=True), jnp.ones(CIFAR)
    )
  assert logits.dtype == jnp.float32
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables["params"]))


@functools.partial(jax.jit, static_argnames="true_gradient")
def _shake_shake_vjp(a, b, key, true_gradient=False):
  """Shake-Shake's output and its gradients wrt both branches for an all-ones cotangent."""
  out, vjp = jax.vjp(lambda a, b: shake_shake(a, b, key, true_gradient=true_gradient), a, b)
  return out, *vjp(jnp.ones_like(out))


@functools.partial(jax.jit, static_argnames=("survival", "true_gradient"))
def _shake_drop_vjp(x, key, survival, true_gradient=False):
  out, vjp = jax.vjp(lambda x: shake_drop(x, key, survival, true_gradient=true_gradient), x)
  return out, vjp(jnp.ones_like(out))[0]


def test_shake_shake_forward_fixed_by_key_backward_coefficient_differs():
  # Toy branches a = 1, b = 0: the output is each example's forward coefficient alpha and
  # d out / d a its backward coefficient beta.
  n = 4000
  a, b, key = jnp.ones((n, 1)), jnp.zeros((n, 1)), jax.random.key(0)
  alpha, grad_a, grad_b = _shake_shake_vjp(a, b, key)
  np.testing.assert_array_equal(alpha, _shake_shake_vjp(a, b, key)[0])
  assert not np.allclose(alpha, _shake_shake_vjp(a, b, jax.random.key(1))[0])
  assert np.all((alpha >= 0) & (alpha <= 1)) and np.all((grad_a >= 0) & (grad_a <= 1))
  assert abs(float(alpha.mean()) - 0.5) < 0.03 and abs(float(grad_a.mean()) - 0.5) < 0.03
  assert np.all(np.abs(grad_a - alpha) > 1e-7)
  np.testing.assert_allclose(grad_b, 1 - grad_a, atol=1e-6)
  # true_gradient: the same forward draw, and the gradient the forward mix implies.
  exact, exact_a, exact_b = _shake_shake_vjp(a, b, key, true_gradient=True)
  np.testing.assert_array_equal(exact, alpha)
  np.testing.assert_allclose(exact_a, alpha, atol=1e-6)
  np.testing.assert_allclose(exact_b, 1 - alpha, atol=1e-6)


def test_shake_shake_evaluation_is_the_expectation():
  a, b = jax.random.normal(jax.random.key(0), (2, 3, 5))
  np.testing.assert_allclose(shake_shake(a, b, None, train=False), 0.5 * (a + b), atol=1e-6)
  with pytest.raises(ValueError, match="rng"):
    shake_shake(a, b, None)


def test_shake_drop_forward_fixed_by_key_backward_coefficient_differs():
  n, survival = 4000, 0.7
  x, key = jnp.ones((n, 1)), jax.random.key(0)
  forward, backward = _shake_drop_vjp(x, key, survival)
  np.testing.assert_array_equal(forward, _shake_drop_vjp(x, key, survival)[0])
  assert not np.allclose(forward, _shake_drop_vjp(x, jax.random.key(1), survival)[0])
  kept = np.asarray(forward == 1.0)
  # Kept branches (b = 1) pass unchanged both ways; dropped ones use alpha forward, beta backward.
  assert abs(kept.mean() - survival) < 0.03
  np.testing.assert_array_equal(backward[kept], 1.0)
  dropped_forward, dropped_backward = forward[~kept], backward[~kept]
  assert dropped_forward.min() < -0.9 and dropped_forward.max() > 0.9
  assert dropped_backward.min() >= 0.0 and dropped_backward.max() <= 1.0
  assert np.all(np.abs(dropped_forward - dropped_backward) > 1e-7)
  # Evaluation scales by E[b + alpha - b alpha] = p + (1 - p) E[alpha] = p for alpha ~ U[-1, 1].
  assert abs(float(forward.mean()) - survival) < 0.03
  np.testing.assert_allclose(shake_drop(x, None, survival, train=False), survival * x)
  exact, exact_grad = _shake_drop_vjp(x, key, survival, true_gradient=True)
  np.testing.assert_array_equal(exact, forward)
  np.testing.assert_allclose(exact_grad, forward, atol=1e-6)


def test_shake_drop_survival_decays_linearly_to_one_half():
  probs = np.array(survival_probs(90))
  assert probs[-1] == pytest.approx(0.5)
  assert probs[0] == pytest.approx(1 - 0.5 / 90)
  np.testing.assert_allclose(np.diff(probs), -0.5 / 90)
  with pytest.raises(ValueError, match="survival_prob"):
    shake_drop(jnp.ones(2), jax.random.key(0), 1.5)


def test_geometry_defaults_and_overrides():
  swin = create("Swin_Tiny", num_classes=10)
  assert swin.geometry(224, 224) == (4, 7)
  assert swin.geometry(32, 32) == (2, 4)
  assert create("Swin_Tiny", num_classes=10, patch_size=1, window_size=8).geometry(32, 32) == (1, 8)
  assert create("CaiT_S24", num_classes=10).patch_size_for(224, 224) == 16
  assert create("CaiT_S24", num_classes=10).patch_size_for(32, 32) == 4
  with pytest.raises(ValueError, match="window_size"):
    SwinTransformer(num_classes=10, window_size=5).geometry(32, 32)
  with pytest.raises(ValueError, match="patch_size"):
    create("CaiT_S24", num_classes=10, patch_size=5).patch_size_for(32, 32)


def test_vgg_layouts():
  imagenet = _abstract("VGG16", IMAGENET, 1000)[1]["params"]
  cifar = _abstract("VGG16", CIFAR, 10)[1]["params"]
  assert _count(cifar) == 14_719_818  # 512 -> classes head on 1x1x512 features.
  assert _count(imagenet) == 138_357_544  # torchvision's vgg16.
  forced = create("VGG16", num_classes=10, layout="imagenet")
  _, variables = jax.eval_shape(
    lambda x: forced.init_with_output(_rngs(), x, train=False), jnp.ones(CIFAR)
  )
  assert _count(variables["params"]) > 100e6
  # The authors' head reads the 1x1x512 map as it is: 512 -> 4096 -> 4096 -> classes.
  gnp = _abstract("VGG16_GNP", CIFAR, 10)[1]["params"]
  assert _count(gnp) - _count(cifar) == (512 + 1) * 4096 + (4096 + 1) * 4096 + 4096 * 10 - 5120


def test_gnp_swin_geometry_is_patch_4_window_4():
  assert create("Swin_Tiny_GNP", num_classes=10).geometry(32, 32) == (4, 4)


@pytest.mark.parametrize(
  ("name", "overrides", "match"),
  [
    ("PyramidNet_164_48", {"depth": 100}, "depth must be 9n"),
    ("PyramidNet_164_48", {"width_rounding": "ceil"}, "width_rounding must be one of"),
    ("VGG16", {"layout": "tiny"}, "layout must be one of"),
    ("VGG16", {"stage_sizes": (1, 1)}, "stage_sizes must have 5 entries"),
    ("WideResNet_2_96_ShakeShake", {"blocks_per_group": 0}, "blocks_per_group must be >= 1"),
    ("Swin_Tiny", {"num_heads": (3,)}, "equal lengths"),
    ("Swin_Tiny", {"drop_path_rate": 1.0}, "drop_path_rate must be in"),
    ("CaiT_S24", {"num_heads": 5}, "num_heads must divide"),
  ],
)
def test_bad_fields_raise_when_the_model_is_created(name, overrides, match):
  with pytest.raises(ValueError, match=match):
    create(name, num_classes=10, **overrides)
