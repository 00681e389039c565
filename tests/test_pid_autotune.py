"""Tests of the PID-gain auto-tuner."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gnreg
from gnreg.tuning import PIDAutotuneResult, autotune_pid
from gnreg.tuning.pid_autotune import search_points

STEPS, BATCH, DIM = 20, 16, 8


def loss_fn(w, batch):
  return 0.5 * jnp.mean((batch["x"] @ w - batch["y"]) ** 2)


@pytest.fixture(scope="module")
def problem():
  k = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(k[0], (STEPS, BATCH, DIM))
  y = x @ jax.random.normal(k[1], (DIM,)) + 0.1 * jax.random.normal(k[2], (STEPS, BATCH))
  # lr_0 = 1e-3 is far too small, and the gradient norms (~5 falling to ~0.1) sit below the
  # target, so only a controller with high gains raises the rate to max_lr in time: the
  # default gains (kp=1, ki=0, kd=0) leave the rate near 2e-3 and the loss barely moves.
  kwargs = dict(
    optimizer=optax.inject_hyperparams(optax.sgd)(learning_rate=1e-3),
    target_norm=10.0,
    min_lr=1e-4,
    max_lr=0.3,
  )
  return jnp.zeros(DIM), {"x": x, "y": y}, kwargs


@pytest.fixture(scope="module")
def grid_result(problem):
  w0, batches, kwargs = problem
  return autotune_pid(loss_fn, w0, batches, search="grid", n_trials=27, **kwargs)


def test_tuned_gains_beat_the_default_gains(problem, grid_result):
  w0, batches, kwargs = problem
  default = autotune_pid(loss_fn, w0, batches, space={}, n_trials=1, **kwargs)
  assert [(t["kp"], t["ki"], t["kd"]) for t in default.trials] == [(1.0, 0.0, 0.0)]
  default_score = default.trials[0]["score"]
  best = grid_result.trials[grid_result.best_index]
  assert len(grid_result.trials) == 27
  assert best["score"] < 0.05 * default_score
  assert grid_result.best == {"kp": best["kp"], "ki": best["ki"], "kd": best["kd"]}
  assert grid_result.best["kp"] > 1.0
  assert best["score"] == min(t["score"] for t in grid_result.trials)


def test_score_and_tracking_error_follow_their_definitions(grid_result):
  r = grid_result
  assert r.losses.shape == r.grad_norms.shape == r.lrs.shape == (27, STEPS)
  for i in (0, r.best_index, 26):
    t = r.trials[i]
    assert t["score"] == pytest.approx(r.losses[i, -5:].mean(), rel=1e-6)  # last ceil(20/4)
    assert t["tracking_error"] == pytest.approx(
      np.abs(np.log(r.grad_norms[i] / 10.0)).mean(), rel=1e-5
    )
  assert np.all((r.lrs >= 1e-4 * (1 - 1e-6)) & (r.lrs <= 0.3 * (1 + 1e-6)))


def test_batched_trials_equal_one_by_one(problem):
  w0, batches, kwargs = problem
  common = dict(search="random", n_trials=5, seed=3, **kwargs)
  batched = autotune_pid(loss_fn, w0, batches, chunk_size=2, **common)
  serial = autotune_pid(loss_fn, w0, batches, batched=False, **common)
  np.testing.assert_allclose(
    [t["score"] for t in batched.trials], [t["score"] for t in serial.trials], rtol=1e-5
  )
  np.testing.assert_allclose(batched.lrs, serial.lrs, rtol=1e-5)
  np.testing.assert_allclose(batched.grad_norms, serial.grad_norms, rtol=1e-5)
  assert [t["kp"] for t in batched.trials] == [t["kp"] for t in serial.trials]


def test_every_trial_is_a_plain_pid_lr_training_run(problem):
  """Each trial's history equals gnreg.pid_lr stepped by hand, batch by batch."""
  w0, batches, kwargs = problem
  result = autotune_pid(
    loss_fn,
    w0,
    iter([{k: v[t] for k, v in batches.items()} for t in range(STEPS)]),
    search="random",
    n_trials=3,
    seed=4,
    **kwargs,
  )
  optimizer, target_norm = kwargs["optimizer"], kwargs["target_norm"]
  for i, trial in enumerate(result.trials):
    tx = gnreg.pid_lr(
      optimizer,
      target_norm=target_norm,
      kp=trial["kp"],
      ki=trial["ki"],
      kd=trial["kd"],
      min_lr=kwargs["min_lr"],
      max_lr=kwargs["max_lr"],
    )
    w, state, losses, lrs = w0, tx.init(w0), [], []
    for t in range(STEPS):
      batch = {k: v[t] for k, v in batches.items()}
      loss, grads = jax.value_and_grad(loss_fn)(w, batch)
      updates, state = tx.update(grads, state, w)
      w = optax.apply_updates(w, updates)
      losses.append(float(loss))
      lrs.append(float(state.lr))
    np.testing.assert_allclose(result.losses[i], losses, rtol=1e-5)
    np.testing.assert_allclose(result.lrs[i], lrs, rtol=1e-5)
    assert trial["score"] == pytest.approx(np.mean(losses[-5:]), rel=1e-5)


def test_an_empty_stream_of_batches_raises(problem):
  w0, _, base = problem
  with pytest.raises(ValueError, match="no batch"):
    autotune_pid(loss_fn, w0, iter([]), **base)


def test_diverged_trials_score_infinity(problem):
  w0, batches, kwargs = problem
  kwargs = {**kwargs, "min_lr": 100.0, "max_lr": 100.0}  # every step far beyond 2 / curvature
  with pytest.warns(UserWarning, match="every trial diverged"):
    r = autotune_pid(loss_fn, w0, batches, space={"kp": (0.5, 1.0)}, n_trials=2, **kwargs)
  assert [t["score"] for t in r.trials] == [math.inf, math.inf]
  assert not np.isfinite(r.losses).all()


def test_grid_and_random_points():
  grid = search_points("grid", None, 50)
  assert grid.shape == (64, 3)  # 4 values per gain: the smallest k with k**3 >= 50
  np.testing.assert_allclose(np.unique(grid[:, 0]), np.linspace(0.1, 5.0, 4))
  np.testing.assert_allclose(np.unique(grid[:, 2]), np.linspace(0.0, 0.5, 4))
  assert search_points("grid", None, 27).shape == (27, 3)
  one_axis = search_points("grid", {"kp": (0.5, 2.5)}, 5)
  np.testing.assert_allclose(one_axis, [[kp, 0.0, 0.0] for kp in np.linspace(0.5, 2.5, 5)])
  rand = search_points("random", {"kp": (1.0, 2.0), "ki": (0.0, 0.1), "kd": (0.2, 0.2)}, 7, seed=1)
  assert rand.shape == (7, 3)
  assert np.all((rand[:, 0] >= 1.0) & (rand[:, 0] <= 2.0) & (rand[:, 1] <= 0.1))
  np.testing.assert_array_equal(rand[:, 2], 0.2)
  np.testing.assert_array_equal(
    rand, search_points("random", {"kp": (1.0, 2.0), "ki": (0.0, 0.1), "kd": (0.2, 0.2)}, 7, seed=1)
  )
  assert not np.array_equal(
    search_points("random", None, 7, seed=1), search_points("random", None, 7, seed=2)
  )


def test_plot_and_json_write_files(grid_result, tmp_path):
  png, js = tmp_path / "pid.png", tmp_path / "pid.json"
  grid_result.plot(str(png))
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  grid_result.to_json(str(js))
  payload = json.loads(js.read_text())
  assert payload["best"] == pytest.approx(grid_result.best)
  assert payload["target_norm"] == 10.0
  assert len(payload["trials"]) == 27
  assert payload["trials"][5] == pytest.approx(grid_result.trials[5])
  np.testing.assert_allclose(payload["best_history"]["lr"], grid_result.lrs[grid_result.best_index])


def test_json_writes_null_for_diverged_scores(tmp_path):
  nan_row = np.array([[1.0, np.nan]])
  r = PIDAutotuneResult(
    trials=[{"kp": 1.0, "ki": 0.0, "kd": 0.0, "score": math.inf, "tracking_error": math.inf}],
    losses=nan_row,
    grad_norms=nan_row,
    lrs=np.array([[1e-3, 1e-3]]),
    target_norm=1.0,
  )
  r.to_json(str(tmp_path / "d.json"))
  payload = json.loads((tmp_path / "d.json").read_text())
  assert payload["best_score"] is None and payload["trials"][0]["score"] is None
  assert payload["best_history"]["loss"] == [1.0, None]


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(search="bayes"), "search must be one of"),
    (dict(n_trials=0), "n_trials must be an integer >= 1"),
    (dict(space={"kx": (0.0, 1.0)}), "space keys must be in"),
    (dict(space={"kp": (2.0, 1.0)}), r"0 <= low <= high, got \(2.0, 1.0\)"),
    (dict(space={"ki": (-1.0, 1.0)}), "0 <= low <= high"),
    (dict(space={"kd": 0.5}), r"must be a \(low, high\) pair"),
    (dict(optimizer=optax.sgd(1e-3)), "inject_hyperparams"),
    (dict(kp=2.0), "set them through space"),
    (dict(min_lr=0.5, max_lr=0.1), "min_lr"),
    (dict(target_norm=-1.0), "target_norm"),
    (dict(chunk_size=0), "chunk_size must be >= 1"),
  ],
)
def test_bad_arguments_raise_value_error(problem, kwargs, message):
  w0, batches, base = problem
  with pytest.raises(ValueError, match=message):
    autotune_pid(loss_fn, w0, batches, **{**base, **kwargs})


def test_batches_with_mismatched_steps_raise(problem):
  w0, _, base = problem
  bad = {"x": jnp.zeros((4, 2, DIM)), "y": jnp.zeros((3, 2))}
  with pytest.raises(ValueError, match="leading steps axis"):
    autotune_pid(loss_fn, w0, bad, **base)
