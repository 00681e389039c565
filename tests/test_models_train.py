"""Every model family goes through the trainer's gnp step: two gradients, rngs, BatchNorm.

One registered model per distinct architecture (each block type, stem, layout and shake
regulariser; the others differ only in depth and width, whose forward passes the zoo tests
trace) has its gnp step traced with ``jax.eval_shape``: tracing all 43 at full depth costs
minutes of CPU, mostly in the 272-layer PyramidNets. The trainer tests run real steps end
to end. Tracing catches what a model can get wrong here: a missing rng stream, a collection
that is not mutable, a shape that does not fit, a gradient that cannot be taken through the
shake regularisers.
"""

from __future__ import annotations

import gc
import re

import jax
import jax.numpy as jnp
import pytest
from _runs import smoke_config

import gnreg
from gnreg import models, train

FAMILIES = {
    "ResNet20": {},  # CIFAR stem, basic blocks, parameter-free shortcuts.
    "ResNet18": {},  # ImageNet stem, basic blocks.
    "ResNet50": {},  # Bottleneck blocks.
    "WideResNet_16_4": {},
    "WideResNet_2_96_ShakeShake": {},
    "PyramidNet_164_48": {},
    "PyramidNet_164_48_ShakeDrop": {},
    "VGG16": {"layout": "imagenet"},
    "VGG16BN": {},  # CIFAR layout at 32x32.
    "ViT_Ti16": {"patch_size": 4},
    "Swin_Tiny": {},
    "CaiT_XXS12": {},
}


def test_every_family_is_covered():
  def family(name):
    return re.sub(r"\d", "", name.split("_")[0]) + ("_Shake" if "Shake" in name else "")

  assert {family(n) for n in models.available()} == {family(n) for n in FAMILIES}


@pytest.fixture(autouse=True)
def no_gc_while_tracing():
  # Tracing a deep flax model allocates many small objects; collection triples the time.
  gc.disable()
  yield
  gc.enable()


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_gnp_train_step_traces(name):
  model = models.create(name, num_classes=10, **FAMILIES[name])
  loss_fn = train.make_loss_fn(model, smoke_config())
  gnp = gnreg.gnp(r=0.05, alpha=0.5)
  images, labels = jnp.zeros((2, 32, 32, 3)), jnp.zeros((2,), jnp.int32)

  def step(images, labels):
    variables = model.init(jax.random.PRNGKey(0), images, train=False)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    rngs = {"dropout": jax.random.PRNGKey(1), "shake": jax.random.PRNGKey(2)}
    loss = lambda p: loss_fn(p, batch_stats, images, labels, rngs)[0]
    (value, (logits, new_stats)), grads = jax.value_and_grad(
        lambda p: loss_fn(p, batch_stats, images, labels, rngs), has_aux=True)(params)
    updates, _ = gnp.update(grads, gnp.init(params), params, grad_fn=jax.grad(loss))
    return params, updates, value, logits, new_stats, batch_stats

  params, updates, value, logits, new_stats, batch_stats = jax.eval_shape(step, images, labels)
  assert jax.tree.structure(updates) == jax.tree.structure(params)
  assert all(u.shape == p.shape and u.dtype == p.dtype
             for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True))
  assert value.shape == () and logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert jax.tree.structure(new_stats) == jax.tree.structure(batch_stats)
