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


# ---------------------------------------------------------------------------------------------
# gnp.method: which transform acts on each group's gradient.


def _local_state_types(config):
  local, _ = optimizers.create_parts(config, steps_per_epoch=10)
  return {type(s).__name__ for s in jax.tree.leaves(
    local.init({"w": jnp.ones(2)}), is_leaf=lambda s: hasattr(s, "_fields"))}  # fmt: skip


@pytest.mark.parametrize(
  "method, alpha, state",
  [
    ("gnp", 0.5, "GNPState"),
    ("looksam", 0.5, "LookSAMState"),
    ("gsam", 0.0, "GSAMState"),  # gsam reads gnp.gsam, not gnp.alpha.
    ("looksam", 0.0, "EmptyState"),  # alpha = 0: plain training, as gnp.
  ],
)
def test_gnp_method_picks_the_transform(method, alpha, state):
  config = smoke_config(**{"gnp.method": method, "gnp.alpha": alpha})
  configuration.validate(config, num_devices=1)
  assert state in _local_state_types(config)
  # The shake models' first pass asks gnp alone whether the step is penalised.
  tx = optimizers.create(config, steps_per_epoch=10)
  assert (gnreg.next_update_penalised(tx.init({"w": jnp.ones(2)})) is False) == (
    state != "GNPState"
  )


def test_exact_gnp_takes_lambda_alpha_times_r():
  config = smoke_config(**{"gnp.method": "exact_gnp", "gnp.r": 0.2, "gnp.alpha": 0.5})
  local, _ = optimizers.create_parts(config, steps_per_epoch=10)
  params = {"w": jnp.asarray([1.0, -2.0])}
  # On 0.5 * ||w||^2 (H = I) the penalty's gradient is g + lam * g / ||g||.
  updates, _ = local.update(params, local.init(params), params, grad_fn=lambda p: p)
  want = params["w"] * (1 + 0.1 / float(jnp.linalg.norm(params["w"])))
  np.testing.assert_allclose(updates["w"], want, rtol=1e-6)


def test_gsam_radius_follows_the_configured_schedule_from_its_peak_to_its_end():
  config = smoke_config(
    **{
      "gnp.method": "gsam",
      "gnp.gsam.rho_max": 0.6,
      "gnp.gsam.rho_min": 0.1,
      "gnp.gsam.alpha": 0.6,
      "schedule.name": "linear",
      "schedule.warmup_epochs": 0.5,
      "schedule.end_lr_fraction": 0.01,
      "num_epochs": 2,
    }
  )
  configuration.validate(config, num_devices=1)
  local, _ = optimizers.create_parts(config, steps_per_epoch=10)
  schedule = optimizers.learning_rate_schedule(config, steps_per_epoch=10)
  assert optimizers.lowest_rate(config, steps_per_epoch=10) == pytest.approx(0.001, rel=1e-5)
  params = {"w": jnp.asarray([1.0, -2.0])}
  state = local.init(params)
  step = jax.jit(lambda s: local.update(params, s, params, grad_fn=lambda p: p)[1])
  rhos = []
  for _ in range(20):
    state = step(state)
    rhos.append(float(state.rho))
  # The warmup ramps 0 -> 0.1 over 5 steps, then the rate decays linearly to 0.001 at step 20.
  want = [0.1 + 0.5 * (float(schedule(t)) - 0.001) / (0.1 - 0.001) for t in range(20)]
  np.testing.assert_allclose(rhos, want, rtol=1e-5)
  assert rhos[5] == pytest.approx(0.6) and rhos[0] == pytest.approx(0.1 - 0.5 * 0.001 / 0.099)
  assert float(schedule(5)) == pytest.approx(0.1) and float(schedule(20)) == pytest.approx(0.001)


def test_gsam_with_a_constant_rate_keeps_its_largest_radius():
  # float32(0.1) > 0.1: the lowest rate of a constant schedule must still be its peak.
  config = smoke_config(
    **{"gnp.method": "gsam", "schedule.name": "constant", "optimizer.learning_rate": 0.1}
  )
  configuration.validate(config, num_devices=1)
  assert optimizers.lowest_rate(config, steps_per_epoch=10) == 0.1
  local, _ = optimizers.create_parts(config, steps_per_epoch=10)
  params = {"w": jnp.asarray([1.0, -2.0])}
  _, state = local.update(params, local.init(params), params, grad_fn=lambda p: p)
  assert float(state.rho) == pytest.approx(config.gnp.gsam.rho_max)


@pytest.mark.parametrize(
  "changes, devices, message",
  [
    ({"gnp.method": "sam"}, 1, "gnp.method: must be one of 'gnp', 'looksam', 'exact_gnp', 'gsam', "
     "got 'sam'"),
    ({"gnp.method": "looksam", "gnp.warmup": "r", "gnp.warmup_epochs": 1.0}, 1,
     "gnp.warmup: only gnp.method='gnp' reads it (leave it at None); got 'r' with "
     "gnp.method='looksam'"),
    ({"gnp.method": "gsam", "gnp.adaptive": True}, 1,
     "gnp.adaptive: only gnp.method='gnp' reads it (leave it at False); got True with "
     "gnp.method='gsam'"),
    ({"gnp.method": "looksam", "gnp.looksam.k": 0}, 1,
     "gnp.looksam.k: must be a positive integer, got 0"),
    ({"gnp.method": "looksam"}, 2,
     "gnp.method: 'looksam' keeps the last perturbed gradient's orthogonal part as state, one "
     "per device and batch group, which the trainer does not share; run it on one device with "
     "batch_group_size=None (got 2 devices, batch_group_size=None)"),
    ({"gnp.method": "gsam", "gnp.gsam.rho_min": 0.5, "gnp.gsam.rho_max": 0.1}, 1,
     "gnp.gsam.rho_min: 0.5 must be <= gnp.gsam.rho_max (0.1)"),
    ({"gnp.method": "gsam", "gnp.gsam.alpha": -0.1}, 1,
     "gnp.gsam.alpha: must be finite and >= 0, got -0.1"),
    ({"gnp.method": "gsam", "pid.enabled": True, "schedule.name": "constant"}, 1,
     "gnp.method: 'gsam' takes its radius from the learning-rate schedule, which pid.enabled "
     "replaces; turn one of them off"),
  ],
)  # fmt: skip
def test_gnp_method_fields_are_validated_in_one_line(changes, devices, message):
  with pytest.raises(configuration.ConfigError) as error:
    configuration.validate(smoke_config(**changes), num_devices=devices)
  assert str(error.value) == message
