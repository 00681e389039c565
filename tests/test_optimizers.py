"""The trainer's optax chain: which leaves L2 and weight decay touch, and the decoupled decay."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _runs import smoke_config

import gnreg
from gnreg import configuration, models, optimizers, task


def _vit_params():
  model = models.create("ViT_Ti16", num_classes=10, patch_size=4, depth=1)
  return jax.eval_shape(
    lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False)
  )["params"]


def test_only_kernels_are_decayed_not_attention_biases_tokens_or_norms():
  params = _vit_params()
  mask = {
    jax.tree_util.keystr(path): on
    for path, on in jax.tree_util.tree_leaves_with_path(optimizers.kernels_only(params))
  }
  attention = "['encoder_block0']['attention']"
  assert mask[f"{attention}['query']['kernel']"]
  assert mask["['head']['kernel']"] and mask["['embedding']['kernel']"]
  # A 2-D bias, (heads, head_dim), is still a bias; tokens and embeddings are not kernels.
  assert jax.tree.leaves(params["encoder_block0"]["attention"]["query"]["bias"])[0].ndim == 2
  for name in (
    f"{attention}['query']['bias']",
    "['cls']",
    "['pos_embedding']",
    "['encoder_block0']['ln1']['scale']",
    "['encoder_block0']['ln1']['bias']",
  ):
    assert not mask[name], name


def test_l2_penalty_sums_the_kernels_or_everything():
  params = {
    "conv": {"kernel": jnp.full((3, 3, 1, 2), 2.0), "bias": jnp.ones((2,))},
    "attention": {"bias": jnp.ones((2, 4))},
    "cls": jnp.ones((1, 1, 4)),
  }
  assert float(task.l2_penalty(params, kernels_only=True)) == pytest.approx(0.5 * 18 * 4.0)
  assert float(task.l2_penalty(params, kernels_only=False)) == pytest.approx(
    0.5 * (18 * 4.0 + 2 + 8 + 4)
  )


@pytest.mark.parametrize("name", ["momentum", "adamw"])
def test_decoupled_weight_decay_shrinks_kernels_only(name):
  config = smoke_config(
    **{
      "optimizer.name": name,
      "optimizer.weight_decay": 0.1,
      "optimizer.learning_rate": 0.5,
      "schedule.name": "constant",
      "schedule.warmup_epochs": 0.0,
      "clip.name": "none",
      "gnp.alpha": 0.0,
    }
  )
  tx = optimizers.create(config, steps_per_epoch=10)
  params = {
    "dense": {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.full((3,), 2.0)},
    "attention": {"bias": jnp.full((2, 3), 2.0)},
  }
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params, grad_fn=lambda p: zeros)
  new = optax.apply_updates(params, updates)
  # w <- w - lr * wd * w with a zero gradient: 2 - 0.5 * 0.1 * 2 = 1.9.
  np.testing.assert_allclose(new["dense"]["kernel"], 1.9, rtol=1e-6)
  np.testing.assert_array_equal(new["dense"]["bias"], 2.0)
  np.testing.assert_array_equal(new["attention"]["bias"], 2.0)


@pytest.mark.parametrize("changes", [{"gnp.alpha": 0.0}, {"gnp.r": 0.0, "gnp.alpha": 0.8}])
def test_gnp_alpha_or_r_zero_is_plain_training(changes):
  # The GNP authors' code trains plainly at r = 0, whatever alpha is.
  tx = optimizers.create(smoke_config(**changes), steps_per_epoch=10)
  # False (not an array) only when the chain holds no gnp state at all.
  assert gnreg.next_update_penalised(tx.init({"w": jnp.ones(2)})) is False


@pytest.mark.parametrize(
  "schedule, fraction, end",
  [("cosine", None, 0.0), ("cosine", 0.1, 0.05), ("sam_exponential", None, 0.5 * 0.012)],
)
def test_end_lr_fraction_sets_the_final_rate_of_either_schedule(schedule, fraction, end):
  config = smoke_config(
    **{"schedule.name": schedule, "schedule.end_lr_fraction": fraction, "num_epochs": 2}
  )
  config.optimizer.learning_rate = 0.5
  sched = optimizers.learning_rate_schedule(config, steps_per_epoch=10)
  assert float(sched(20)) == pytest.approx(end, rel=1e-5)


@pytest.mark.parametrize(
  "changes, message",
  [
    (
      {"schedule.name": "sam_exponential", "schedule.end_lr_fraction": 0.0},
      "schedule.end_lr_fraction: must be in (0, 1] for schedule.name='sam_exponential', got 0.0",
    ),
    (
      {"schedule.name": "cosine", "schedule.end_lr_fraction": 1.5},
      "schedule.end_lr_fraction: must be in [0, 1] for schedule.name='cosine', got 1.5",
    ),
    (
      {"schedule.name": "exponential", "schedule.epoch_decay_factor": 1.5},
      "schedule.epoch_decay_factor: must be in (0, 1], got 1.5",
    ),
    (
      {"clip.name": "agc", "clip.max_ratio": 0.0},
      "clip.max_ratio: must be finite and > 0, got 0.0",
    ),
    (
      {"schedule.name": "cyclic", "schedule.amplitude_decay_factor": 0.0},
      "schedule.amplitude_decay_factor: must be in (0, 1], got 0.0",
    ),
    (
      {"schedule.name": "cyclic", "schedule.min_lr_fraction": 1.5},
      "schedule.min_lr_fraction: must be in [0, 1], got 1.5",
    ),
    (
      {"lr_finder.enabled": True, "lr_finder.min_lr": 1.0, "lr_finder.max_lr": 0.5},
      "lr_finder.min_lr: 1.0 must be below lr_finder.max_lr (0.5)",
    ),
  ],
)
def test_validation_names_the_renamed_fields(changes, message):
  with pytest.raises(configuration.ConfigError) as error:
    configuration.validate(smoke_config(**changes), num_devices=1)
  assert str(error.value) == message
