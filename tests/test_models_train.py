"""Every model family goes through the trainer's gnp step: two gradients, rngs, BatchNorm.

One registered model per distinct architecture (each block type, stem, layout and shake
regulariser; the others differ only in depth and width, whose forward passes the zoo tests
trace at full size) runs a real, compiled gnp step on a batch of two 32x32 images, shrunk to
one block or convolution per stage so that the whole table costs seconds. A step catches what
a model can get wrong here: a missing rng stream, a collection that is not mutable, a shape
that does not fit, a gradient that cannot be taken through the shake regularisers, a NaN.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _models import numpy_variables
from _runs import smoke_config
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import gnreg
from gnreg import compilation, data, models, optimizers, task, train

FAMILIES = {
  "ResNet20": {"stage_sizes": (1, 1, 1)},  # CIFAR stem, basic blocks, parameter-free shortcuts.
  "ResNet18": {"stage_sizes": (1, 1, 1, 1)},  # ImageNet stem, basic blocks.
  "ResNet50": {"stage_sizes": (1, 1, 1, 1)},  # Bottleneck blocks.
  "WideResNet_16_4": {"depth": 10},
  "WideResNet_16_4_GNP": {"depth": 10},  # Average-pool and zero-pad shortcuts.
  "WideResNet_2_96_ShakeShake": {"blocks_per_group": 1, "channel_multiplier": 1},
  "PyramidNet_164_48": {"depth": 11},
  "PyramidNet_164_48_ShakeDrop": {"depth": 11},
  # CIFAR layout: a step through the ImageNet head's two 4096-wide layers (120M parameters)
  # takes 8 s here alone; the zoo tests trace that head.
  "VGG16": {"stage_sizes": (1, 1, 1, 1, 1)},
  "VGG16BN": {"stage_sizes": (1, 1, 1, 1, 1)},
  "ViT_Ti16": {"patch_size": 4, "depth": 1},
  "Swin_Tiny": {"embed_dim": 12, "depths": (2, 2), "num_heads": (1, 2)},
  "CaiT_XXS12": {"embed_dim": 32, "depth": 1},
}


def test_every_family_is_covered():
  def family(name):
    return re.sub(r"\d", "", name.split("_")[0]) + ("_Shake" if "Shake" in name else "")

  assert {family(n) for n in models.available()} == {family(n) for n in FAMILIES}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_gnp_train_step_runs(name):
  model = models.create(name, num_classes=10, **FAMILIES[name])
  loss_fn = task.make_loss_fn(model, smoke_config())
  gnp = gnreg.gnp(r=0.05, alpha=0.5)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.standard_normal((2, 32, 32, 3)), jnp.float32)
  labels = jnp.asarray([3, 7], jnp.int32)

  # The initialisers run in every training and the core tests; numpy values keep this program
  # to the step.
  variables = numpy_variables(model, images)

  def step(variables, images, labels):
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    rngs = models.rng_streams(jax.random.PRNGKey(1))
    loss = lambda p: loss_fn(p, batch_stats, images, labels, rngs)[0]
    (value, (logits, new_stats)), grads = jax.value_and_grad(
      lambda p: loss_fn(p, batch_stats, images, labels, rngs), has_aux=True
    )(params)
    updates, _ = gnp.update(grads, gnp.init(params), params, grad_fn=jax.grad(loss))
    return params, updates, value, logits, new_stats, batch_stats

  compiled = jax.jit(step).lower(variables, images, labels).compile(compilation.run_once_options())
  params, updates, value, logits, new_stats, batch_stats = compiled(variables, images, labels)
  assert jax.tree.structure(updates) == jax.tree.structure(params)
  assert all(
    u.shape == p.shape and u.dtype == p.dtype
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True)
  )
  assert value.shape == () and np.isfinite(value)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert all(np.isfinite(u).all() for u in jax.tree.leaves(updates))
  assert any(np.abs(u).max() > 0 for u in jax.tree.leaves(updates))
  assert jax.tree.structure(new_stats) == jax.tree.structure(batch_stats)


def _info(images) -> data.DatasetInfo:
  return data.DatasetInfo(
    name="synthetic",
    num_classes=10,
    image_shape=images.shape[1:],
    num_train=len(images),
    num_test=len(images),
  )


def _one_trainer_step(config, model, images, labels):
  """The trainer's own jitted step, once, on one device; returns the parameters before and
  after it."""
  mesh = jax.make_mesh((1,), (train.AXIS,))
  tx = optimizers.create(config, steps_per_epoch=10, axis_name=train.AXIS)
  # The trainer's own step 0, one program (built leaf by leaf, it compiled some 40 small ones).
  state = train.initial_state(model, config, _info(images), tx, NamedSharding(mesh, P()))
  step = train.make_train_step(model, config, mesh, steps_per_epoch=10)
  batch = jax.device_put({"image": images, "label": labels}, NamedSharding(mesh, P(train.AXIS)))
  initial = jax.device_get(state.params)  # Before the step, which may donate the state.
  # One step: XLA:CPU's backend optimisations would cost more than they save.
  new_state, _ = step.lower(state, batch).compile(compilation.run_once_options())(state, batch)
  return initial, jax.device_get(new_state.params)


def test_loss_fn_takes_the_true_gradient_switch_to_shake_models():
  config = smoke_config(**{"l2_regularization": 0.0})
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.standard_normal((4, 8, 8, 3)), jnp.float32)
  labels = jnp.asarray([1, 2, 3, 4], jnp.int32)
  shake = models.create(
    "WideResNet_2_96_ShakeShake", num_classes=10, blocks_per_group=1, channel_multiplier=1
  )
  plain = models.create("ResNet20", num_classes=10, stage_sizes=(1, 1, 1))

  def value_and_grads(model):
    loss_fn = task.make_loss_fn(model, config)
    variables = model.init(jax.random.PRNGKey(0), images[:1], train=False)
    rngs = models.rng_streams(jax.random.PRNGKey(1))

    def loss(params, true_gradient):
      stats = variables["batch_stats"]
      return loss_fn(params, stats, images, labels, rngs, true_gradient=true_gradient)[0]

    return [jax.value_and_grad(loss)(variables["params"], t) for t in (False, True)]

  compiled = jax.jit(lambda: [value_and_grads(m) for m in (shake, plain)])
  (shaken, exact), (plain_false, plain_true) = compiled.lower().compile(
    compilation.run_once_options()
  )()
  # Shake: the same forward value, another backward coefficient; other models: no difference.
  np.testing.assert_allclose(shaken[0], exact[0], rtol=1e-6)
  assert any(
    np.abs(a - b).max() > 1e-4
    for a, b in zip(jax.tree.leaves(shaken[1]), jax.tree.leaves(exact[1]), strict=True)
  )
  jax.tree.map(np.testing.assert_array_equal, plain_false, plain_true)


def test_trainer_gnp_passes_use_the_authors_true_gradient_and_the_same_shake_draws():
  # With r -> 0 (1e-30 moves no float32 parameter), gnp's update is (1 - alpha) g1 + alpha g2
  # with g1 the first pass's gradient and g2 the second pass's at the same parameters. The
  # authors take g1 with true_gradient=True and g2 with False; plain training takes False.
  # One momentum-SGD step is linear in the update, so with alpha = 1 the step is the plain step
  # if and only if the second pass draws the first pass's shake coefficients and uses False;
  # with alpha = 1/2 it differs from the plain step as g1 differs from the plain gradient.
  model = models.create(
    "WideResNet_2_96_ShakeShake", num_classes=10, blocks_per_group=1, channel_multiplier=1
  )
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.standard_normal((4, 8, 8, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, 4), jnp.int32)
  common = {
    "clip.name": "none",
    "l2_regularization": 0.0,
    "schedule.name": "constant",
    "schedule.warmup_epochs": 0.0,
    "gnp.r": 1e-30,
    "gnp.normalize_base_grad": False,
  }
  step = lambda alpha: _one_trainer_step(
    smoke_config(**common, **{"gnp.alpha": alpha}), model, images, labels
  )
  (initial, plain), (_, second), (_, mixed) = step(0.0), step(1.0), step(0.5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), second, plain)
  # A step the zero warmup holds off is the authors' plain step, first pass included: the
  # shaken backward (true_gradient=False), not the penalty path's true gradient.
  _, held_off = _one_trainer_step(
    smoke_config(**common, **{"gnp.alpha": 0.5, "gnp.warmup": "zero", "gnp.warmup_epochs": 1.0}),
    model,
    images,
    labels,
  )
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), held_off, plain)
  # 2 (mixed - initial) - (plain - initial) is the step g1 alone would take.
  first = jax.tree.map(lambda m, p, w: 2 * m - p - w, mixed, plain, initial)
  plain_step = jax.tree.map(lambda p, w: p - w, plain, initial)
  assert any(
    np.abs(a - b).max() > 1e-4
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(plain_step), strict=True)
  )
