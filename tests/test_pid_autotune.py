"""Tests of the PID-gain auto-tuner."""

import json
import math
import warnings

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


def tune(*args, **kwargs) -> PIDAutotuneResult:
  """``autotune_pid``, whose warnings must be exactly the problems it reports: the tests'
  problem is a degenerate search by the tuner's standards (its target is never reached)."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    result = autotune_pid(*args, **kwargs)
  assert [str(w.message) for w in caught] == result.problems()
  return result


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
  return tune(loss_fn, w0, batches, search_type="grid", n_trials=27, progress=False, **kwargs)


def test_tuned_gains_beat_the_default_gains(problem, grid_result):
  w0, batches, kwargs = problem
  default = tune(loss_fn, w0, batches, search_space={}, n_trials=1, **kwargs)
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
  common = dict(search_type="random", n_trials=5, seed=3, **kwargs)
  batched = tune(loss_fn, w0, batches, chunk_size=2, **common)
  serial = tune(loss_fn, w0, batches, batched=False, **common)
  np.testing.assert_allclose(
    [t["score"] for t in batched.trials], [t["score"] for t in serial.trials], rtol=1e-5
  )
  np.testing.assert_allclose(batched.lrs, serial.lrs, rtol=1e-5)
  np.testing.assert_allclose(batched.grad_norms, serial.grad_norms, rtol=1e-5)
  assert [t["kp"] for t in batched.trials] == [t["kp"] for t in serial.trials]


def test_every_trial_is_a_plain_pid_lr_training_run(problem):
  """Each trial's history equals gnreg.pid_lr stepped by hand, batch by batch."""
  w0, batches, kwargs = problem
  result = tune(
    loss_fn,
    w0,
    iter([{k: v[t] for k, v in batches.items()} for t in range(STEPS)]),
    search_type="random",
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
  with pytest.warns(UserWarning) as caught:
    r = autotune_pid(loss_fn, w0, batches, search_space={"kp": (0.5, 1.0)}, n_trials=2, **kwargs)
  said = [str(w.message) for w in caught]
  assert len(said) == 2 and "lies outside [min_lr, max_lr]" in said[0]
  assert said[1:] == r.problems() and "every trial diverged" in said[1]
  assert [t["score"] for t in r.trials] == [math.inf, math.inf]
  assert not np.isfinite(r.losses).all()


def test_grid_and_random_points():
  grid = search_points("grid", None, 50)
  assert grid.shape == (64, 4)  # 4 values per gain: the smallest k with k**3 >= 50
  np.testing.assert_allclose(np.unique(grid[:, 0]), np.linspace(0.1, 5.0, 4))
  np.testing.assert_allclose(np.unique(grid[:, 2]), np.linspace(0.0, 0.5, 4))
  assert search_points("grid", None, 27).shape == (27, 4)
  one_axis = search_points("grid", {"kp": (0.5, 2.5)}, 5)
  np.testing.assert_allclose(one_axis, [[kp, 0.0, 0.0, 1.0] for kp in np.linspace(0.5, 2.5, 5)])
  targets = search_points("grid", {"Target_Norm": (0.5, 8.0)}, 5, target_norm=3.0)
  np.testing.assert_allclose(targets[:, 3], [0.5, 1.0, 2.0, 4.0, 8.0])  # geometric
  np.testing.assert_allclose(targets[:, :3], [[1.0, 0.0, 0.0]] * 5)
  rand = search_points("random", {"kp": (1.0, 2.0), "ki": (0.0, 0.1), "kd": (0.2, 0.2)}, 7, seed=1)
  assert rand.shape == (7, 4)
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
    trials=[
      {
        "kp": 1.0,
        "ki": 0.0,
        "kd": 0.0,
        "target_norm": 1.0,
        "score": math.inf,
        "train_loss": math.inf,
        "tracking_error": math.inf,
      }
    ],
    losses=nan_row,
    grad_norms=nan_row,
    lrs=np.array([[1e-3, 1e-3]]),
    target_norm=1.0,
  )
  r.to_json(str(tmp_path / "d.json"))
  payload = json.loads((tmp_path / "d.json").read_text())
  assert payload["best_score"] is None and payload["trials"][0]["score"] is None
  assert payload["problems"] == [
    "autotune_pid: every trial diverged; lower max_lr (pid.max_lr) or the initial rate"
  ]
  assert payload["best_history"]["loss"] == [1.0, None]


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(search_type="bayes"), "search_type must be one of"),
    (dict(n_trials=0), "n_trials must be an integer >= 1"),
    (dict(search_space={"kx": (0.0, 1.0)}), "search_space keys must be in"),
    (dict(search_space={"kp": (2.0, 1.0)}), r"0 <= low <= high, got \(2.0, 1.0\)"),
    (dict(search_space={"ki": (-1.0, 1.0)}), "0 <= low <= high"),
    (dict(search_space={"kd": 0.5}), r"must be a \(low, high\) pair"),
    (dict(search_space={"kp": (0, 1), "Kp": (0, 2)}), "names 'kp' twice"),
    (dict(search_space={"target_norm": (0.0, 1.0)}), "0 < low <= high"),
    (dict(optimizer=optax.sgd(1e-3)), "inject_hyperparams"),
    (dict(kp=2.0), r"kp is searched; set its range through search_space"),
    (dict(Kd=2.0), r"Kd is searched"),
    (dict(learning_rate=0.1), r"unknown argument 'learning_rate'; .* min_lr, max_lr, smoothing"),
    (dict(initial_lr=-1.0), "initial_lr must be a learning rate"),
    (dict(law="cubic"), "law must be one of"),
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


def test_the_reference_call_shape(problem):
  """GradientNormRegulator.auto_tune's arguments: Kp/Ki/Kd keys, search_type, initial_lr."""
  w0, batches, kwargs = problem
  space = {"Kp": (2.0, 4.0), "Ki": (0.0, 0.1), "Kd": (0.0, 0.1)}
  r = tune(
    loss_fn,
    w0,
    batches,
    initial_lr=1e-3,
    search_type="random",
    search_space=space,
    n_trials=4,
    target_norm=10.0,
    min_lr=1e-4,
    max_lr=0.3,
    progress=False,
  )
  with_optimizer = tune(
    loss_fn,
    w0,
    batches,
    search_type="random",
    search_space={k.lower(): v for k, v in space.items()},
    n_trials=4,
    progress=False,
    **kwargs,
  )
  assert r.trials == with_optimizer.trials and r.initial_lr == pytest.approx(1e-3)
  assert all(2.0 <= t["kp"] <= 4.0 for t in r.trials)


def test_initial_lr_replaces_the_optimizers_rate(problem):
  w0, batches, kwargs = problem
  r = tune(
    loss_fn, w0, batches, search_space={}, n_trials=1, initial_lr=0.05, progress=False, **kwargs
  )
  assert r.initial_lr == pytest.approx(0.05)
  g = jax.grad(loss_fn)(w0, {k: v[0] for k, v in batches.items()})
  # kp = 1 on the log law: lr_1 = lr_0 * target / ||g_1||, for the first step's raw norm.
  expected = min(max(0.05 * 10.0 / float(jnp.linalg.norm(g)), 1e-4), 0.3)
  assert r.lrs[0, 0] == pytest.approx(expected, rel=1e-4)


def test_a_rate_outside_the_bounds_warns_naming_the_field(problem):
  w0, batches, kwargs = problem
  kwargs = {**kwargs, "optimizer": optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)}
  with pytest.warns(UserWarning) as caught:
    r = autotune_pid(loss_fn, w0, batches, **{**kwargs, "max_lr": 0.01}, n_trials=2, progress=False)
  said = [str(w.message) for w in caught]
  assert "optimizer.learning_rate in a config) lies outside" in said[0]
  assert said[1:] == r.problems()


def test_a_degenerate_search_says_so(problem):
  """The demo's failure: the rate stuck at max_lr, the norm far below target, equal scores."""
  w0, batches, kwargs = problem
  kwargs = {**kwargs, "max_lr": 1e-3, "target_norm": 100.0}
  with pytest.warns(UserWarning) as caught:
    r = autotune_pid(loss_fn, w0, batches, n_trials=8, progress=False, **kwargs)
  lines = [str(w.message) for w in caught]
  assert lines == r.problems() and len(lines) == 3
  assert "all 8 trials score the same within noise" in lines[0]
  assert "sits at max_lr=0.001 for 100% of its steps" in lines[1] and "raise pid.max_lr" in lines[1]
  # Started at max_lr, the target is a ceiling that no norm came near: the gains never acted.
  assert "no trial's gradient norm came within 10% of its target, a ceiling" in lines[2]
  # Starting at max_lr, the regulator can only lower the rate: the report says so.
  ceiling = tune(
    loss_fn, w0, batches, n_trials=1, initial_lr=1e-3, progress=False, **kwargs
  ).problems()
  assert any(
    "the initial rate is max_lr, so the regulator only ever lowers it" in line for line in ceiling
  )
  # The tests' own search (rate at max_lr most of the time, by design) tells its gains apart.
  healthy = tune(loss_fn, w0, batches, n_trials=8, progress=False, **problem[2])
  assert not any("score the same" in line for line in healthy.problems())


def test_a_ceiling_that_acts_is_a_sound_search(problem):
  """Started at max_lr, the regulator lowers the rate only while the norm passes the target
  (the first steps here): the rate at max_lr most of the time and the norm below the target
  afterwards are its design, not problems, and the gains, which act early, are told apart."""
  w0, batches, kwargs = problem
  r = tune(
    loss_fn,
    w0,
    batches,
    **{**kwargs, "target_norm": 2.0},
    initial_lr=0.3,
    n_trials=8,
    progress=False,
  )
  assert r.problems() == []
  assert np.mean(np.isclose(r.lrs[r.best_index], 0.3)) > 0.5
  assert r.grad_norms[r.best_index, 0] > 2.0 > r.grad_norms[r.best_index, -5:].max()


def _scored(losses: np.ndarray) -> PIDAutotuneResult:
  """A result of trials with these ``(trials, steps)`` losses, rates inside the bounds and norms
  at the target: only the scores can be a problem."""
  tail = math.ceil(losses.shape[1] / 4)
  trials = [
    {"kp": 1.0, "ki": 0.0, "kd": 0.0, "target_norm": 1.0, "score": float(row[-tail:].mean())}
    for row in losses
  ]
  ones = np.ones_like(losses)
  return PIDAutotuneResult(trials, losses, ones, 0.01 * ones, 1.0, {}, 1e-3, 1.0, 0.01)


def test_trials_on_the_same_batches_are_compared_step_by_step():
  """Every trial sees the same batches: their common ups and downs are not noise between
  trials. A steady gap far smaller than those swings tells two trials apart; the same gap
  between trials whose swings differ does not."""
  swings = np.random.default_rng(0).normal(0.0, 0.5, size=40)
  steady = _scored(np.stack([1.0 + swings, 1.02 + swings]))
  assert steady.problems() == []
  apart = np.random.default_rng(1).normal(0.0, 0.5, size=40)
  unrelated = _scored(np.stack([1.0 + swings, 1.02 + apart]))
  assert "score the same within noise" in unrelated.problems()[0]


def test_a_rate_driven_to_the_floor_names_the_regime():
  """A higher rate lowers the gradient norm here (SGD far below its stability limit): the
  norm sits above target, the controller lowers the rate, the norm rises, down to min_lr."""
  x = jax.random.normal(jax.random.key(0), (30, 16, 4))
  batches = {"x": x, "y": x @ jnp.ones(4)}
  with pytest.warns(UserWarning) as caught:
    r = autotune_pid(
      loss_fn,
      jnp.zeros(4),
      batches,
      optimizer=optax.inject_hyperparams(optax.sgd)(learning_rate=0.01),
      target_norm=0.5,
      search_space={"kp": (0.5, 1.0), "ki": (0.2, 0.5)},
      n_trials=4,
      min_lr=1e-3,
      max_lr=0.5,
      smoothing=0.0,
      progress=False,
    )
  floor = [str(w.message) for w in caught if "sits at min_lr" in str(w.message)]
  assert len(floor) == 1 and "a higher rate lowers the gradient norm" in floor[0]
  assert np.median(r.lrs[r.best_index, -10:]) == np.float32(1e-3)


def test_heldout_objective_scores_the_final_parameters(problem):
  w0, batches, kwargs = problem
  heldout = {"x": batches["x"][-1], "y": batches["y"][-1]}
  train = {k: v[:-1] for k, v in batches.items()}
  error = lambda w, b: jnp.mean(jnp.abs(b["x"] @ w - b["y"]))
  r = tune(
    loss_fn,
    w0,
    train,
    search_type="random",
    n_trials=3,
    heldout=heldout,
    heldout_fn=error,
    progress=False,
    **kwargs,
  )
  for trial in r.trials:
    tx = gnreg.pid_lr(
      kwargs["optimizer"],
      target_norm=10.0,
      kp=trial["kp"],
      ki=trial["ki"],
      kd=trial["kd"],
      min_lr=1e-4,
      max_lr=0.3,
    )
    w, state = w0, tx.init(w0)
    for t in range(STEPS - 1):
      grads = jax.grad(loss_fn)(w, {k: v[t] for k, v in train.items()})
      updates, state = tx.update(grads, state, w)
      w = optax.apply_updates(w, updates)
    assert trial["score"] == trial["heldout_loss"] == pytest.approx(float(error(w, heldout)), 1e-5)
    assert trial["train_loss"] == pytest.approx(r.losses[r.trials.index(trial), -5:].mean())
  assert r.best_index == int(np.argmin([t["heldout_loss"] for t in r.trials]))


def test_target_norm_can_be_searched(problem):
  w0, batches, kwargs = problem
  r = tune(
    loss_fn,
    w0,
    batches,
    search_space={"kp": (2.0, 4.0), "target_norm": (1.0, 10.0)},
    n_trials=4,
    progress=False,
    **kwargs,
  )
  assert sorted({t["target_norm"] for t in r.trials}) == pytest.approx([1.0, 10.0])
  assert set(r.best) == {"kp", "ki", "kd", "target_norm"}
  for i, t in enumerate(r.trials):
    assert t["tracking_error"] == pytest.approx(
      np.abs(np.log(r.grad_norms[i] / t["target_norm"])).mean(), rel=1e-5
    )
  low, high = (r.lrs[[t["target_norm"] for t in r.trials].index(v)] for v in (1.0, 10.0))
  assert low.mean() < high.mean()  # a lower target asks for lower rates


def test_progress_says_what_it_will_do(problem, capsys):
  w0, batches, kwargs = problem
  tune(loss_fn, w0, batches, search_space={"kp": (1.0, 2.0)}, n_trials=2, **kwargs)
  err = capsys.readouterr().err
  assert err.splitlines()[0] == (
    "autotune_pid: 2 trials (grid over kp) x 20 steps, all in lockstep, scored on the late "
    "training loss"
  )
  assert "20/20" in err
  stream = iter([{k: v[t] for k, v in batches.items()} for t in range(STEPS)])
  tune(loss_fn, w0, stream, search_space={}, n_trials=1, num_steps=STEPS, **kwargs)
  err = capsys.readouterr().err
  assert "x 20 steps" in err.splitlines()[0] and "20/20" in err
