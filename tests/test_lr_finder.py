"""Tests of the subsampled loss-differential learning-rate finder."""

import json
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gnreg.tuning import LRFinderResult, find_lr
from gnreg.tuning.lr_finder import subsample_indices

A = 3.0  # Hessian a * I: one SGD step scales the loss gap by (1 - lr a)^2.


def quadratic_loss(x, batch):
  return 0.5 * A * jnp.mean(jnp.sum((x[None, :] - batch) ** 2, axis=-1))


@pytest.fixture(scope="module")
def quadratic():
  targets = jax.random.normal(jax.random.key(1), (64, 5))
  x0 = jnp.full((5,), 2.0)
  result = find_lr(
    quadratic_loss,
    x0,
    targets,
    min_lr=1e-3,
    max_lr=10.0,
    num_lrs=41,
    num_subsamples=6,
    batch_size=16,
    seed=3,
    progress=False,
  )
  return x0, targets, result


def test_quadratic_choices_match_closed_form(quadratic):
  _, _, r = quadratic
  lrs = r.lrs
  assert r.deltas.shape == (6, 41) and lrs.shape == (41,)
  np.testing.assert_allclose(lrs, np.geomspace(1e-3, 10.0, 41))
  expected_mean = lrs[np.argmin(np.abs(lrs - 1.0 / A))]
  # No grid point sits so close to 2/a that float32 rounding could flip the sign of dL.
  assert np.min(np.abs(lrs - 2.0 / A)) > 1e-2
  expected_max = lrs[lrs <= 2.0 / A].max()
  assert r.best("mean") == pytest.approx(expected_mean)
  assert r.best("median") == pytest.approx(expected_mean)
  assert r.best("max") == pytest.approx(expected_max)
  # Every rate in (0, 2/a) lowers the loss on every subsample, every larger rate raises it.
  assert np.all(r.deltas[:, lrs < 2.0 / A] < 0)
  assert np.all(r.deltas[:, lrs > 2.0 / A] > 0)


def test_quadratic_deltas_equal_the_formula(quadratic):
  x0, targets, r = quadratic
  for m, idx in enumerate(r.indices):
    gap = 0.5 * A * np.sum((np.asarray(x0) - np.asarray(targets)[idx].mean(axis=0)) ** 2)
    np.testing.assert_allclose(r.deltas[m], gap * ((1 - r.lrs * A) ** 2 - 1), rtol=1e-4, atol=1e-4)


def test_subsamples_are_without_replacement_and_reproducible(quadratic):
  _, _, r = quadratic
  assert r.indices.shape == (6, 16)
  assert all(len(set(row.tolist())) == 16 for row in r.indices)
  assert r.indices.min() >= 0 and r.indices.max() < 64
  np.testing.assert_array_equal(r.indices, subsample_indices(3, 64, 6, 16))
  assert not np.array_equal(r.indices, subsample_indices(4, 64, 6, 16))


def mlp_loss(params, batch):
  h = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
  logits = h @ params["w2"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()


@pytest.fixture(scope="module")
def mlp_problem():
  k = jax.random.split(jax.random.key(0), 4)
  data = {"x": jax.random.normal(k[0], (40, 6)), "y": jax.random.randint(k[1], (40,), 0, 3)}
  params = {
    "w1": 0.5 * jax.random.normal(k[2], (6, 8)),
    "b1": jnp.zeros(8),
    "w2": 0.5 * jax.random.normal(k[3], (8, 3)),
  }
  return params, data


def test_batched_deltas_equal_a_plain_loop(mlp_problem):
  params, data = mlp_problem
  adam = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
  kwargs = dict(
    optimizer=adam, min_lr=1e-3, max_lr=3.0, num_lrs=7, num_subsamples=3, batch_size=10, seed=5
  )
  r = find_lr(mlp_loss, params, data, progress=False, **kwargs)

  @jax.jit
  def one_step_delta(lr, batch):
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=lr)
    pre, grads = jax.value_and_grad(mlp_loss)(params, batch)
    updates, _ = opt.update(grads, opt.init(params), params)
    return mlp_loss(optax.apply_updates(params, updates), batch) - pre

  expected = np.array(
    [
      [one_step_delta(lr, jax.tree.map(lambda x, i=idx: x[i], data)) for lr in r.lrs]
      for idx in r.indices
    ]
  )
  np.testing.assert_allclose(r.deltas, expected, rtol=1e-5, atol=1e-6)
  # Evaluating the rates a few at a time (lax.map over vmapped chunks), and the subsamples in
  # calls of one each (as with the progress bar), changes nothing.
  chunked = find_lr(mlp_loss, params, data, chunk_size=2, progress=True, **kwargs)
  np.testing.assert_allclose(chunked.deltas, r.deltas, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(chunked.pre_losses, r.pre_losses, rtol=1e-6)


def test_linear_spacing(mlp_problem):
  params, data = mlp_problem
  r = find_lr(
    mlp_loss,
    params,
    data,
    min_lr=0.0,
    max_lr=1.0,
    num_lrs=5,
    num_subsamples=2,
    batch_size=8,
    grid="linear",
    progress=False,
  )
  np.testing.assert_allclose(r.lrs, [0.0, 0.25, 0.5, 0.75, 1.0])
  # A zero rate leaves the parameters alone; only float32 rounding of the two evaluations remains.
  np.testing.assert_allclose(r.deltas[:, 0], 0.0, atol=1e-6)
  assert r.grid == "linear" and not r.lowers_loss()[0]  # rounding never counts as a decrease


def make_result(deltas, lrs=None, grid="log", pre_loss=1.0):
  deltas = np.asarray(deltas, dtype=np.float64)
  if lrs is None:
    lrs = np.geomspace(1e-3, 1.0, deltas.shape[1])
  return LRFinderResult(
    lrs=np.asarray(lrs, dtype=np.float64),
    deltas=deltas,
    indices=np.zeros((deltas.shape[0], 1), dtype=np.int32),
    pre_losses=np.full(deltas.shape[0], pre_loss),
    grid=grid,
  )


def test_best_methods_on_known_differentials():
  lrs = [0.1, 0.2, 0.3, 0.4]
  deltas = [[-1.0, -3.0, -1.0, 0.5], [-1.2, -0.5, -2.0, -1.0], [-0.8, -0.4, -2.2, -9.0]]
  r = make_result(deltas, lrs)
  # means: -1.0, -1.3, -1.733, -3.167; medians: -1.0, -0.5, -2.0, -1.0
  with pytest.warns(UserWarning, match=r"'mean' chose 0.4, the upper edge of the grid"):
    assert r.best("mean") == 0.4
  assert r.best("median") == 0.3
  # Upper band edges mean + 1.96 s / sqrt(3): -0.774, 0.367, -1.005, 2.61; only 0.1 and 0.3
  # lie wholly below 0, and 0.3's decrease holds with the larger margin.
  _, _, upper = r.confidence_band()
  np.testing.assert_allclose(upper, [-0.7737, 0.3667, -1.0055, 2.6122], atol=1e-3)
  assert r.best("variance") == 0.3
  assert r.best("max") == 0.3  # 0.4 raised the loss on the first subsample
  with pytest.raises(ValueError, match="method must be one of"):
    r.best("nope")


def test_variance_is_not_the_smallest_rate():
  """Small rates have small spreads (both scale with the rate): the smallest-spread rule picked
  the grid's first rate; the upper confidence bound picks the best-supported decrease."""
  lrs = np.linspace(0.0, 1.0, 11)
  rng = np.random.default_rng(0)
  slopes = 1.0 + 0.3 * rng.normal(size=(20, 1))  # each subsample's own gradient norm
  deltas = slopes * (-2 * lrs + 1.5 * lrs**2)  # SGD on a quadratic: least at lr = 2/3
  r = make_result(deltas, lrs, grid="linear")
  assert not r.lowers_loss()[0]  # the zero rate has no spread, and no decrease either
  assert 0.4 <= r.best("variance") <= r.best("mean") == pytest.approx(0.7)


def test_no_rate_lowering_the_loss_returns_zero_with_a_warning():
  r = make_result([[0.1, -1.0, 2.0], [-0.1, 0.3, 1.0]], [0.1, 0.2, 0.3])
  with pytest.warns(UserWarning, match="'max' returns 0.0"):
    assert r.best("max") == 0.0
  r = make_result([[1.0, 0.2, 5.0], [3.0, 0.3, 9.0]], [0.1, 0.2, 0.3])
  for method in ("mean", "median", "variance", "max"):
    with pytest.warns(UserWarning, match="no learning rate in \\[0.1, 0.3\\] lowers"):
      assert r.best(method) == 0.0


def test_a_decrease_within_float_rounding_does_not_count():
  # With L_pre = 10 in float32, 16 eps * 10 = 1.9e-5: a mean dL of -1e-5 is rounding.
  r = make_result([[-1e-5, -1e-5, 1.0]] * 2, [0.1, 0.2, 0.3], pre_loss=10.0)
  assert r.rounding == pytest.approx(16 * np.finfo(np.float32).eps * 10.0)
  np.testing.assert_array_equal(r.lowers_loss(), [False, False, False])
  with pytest.warns(UserWarning, match="lowers the loss by 'mean' beyond float rounding"):
    assert r.best("mean") == 0.0
  r = make_result([[-1e-5, -1e-3, 1.0]] * 2, [0.1, 0.2, 0.3], pre_loss=10.0)
  assert r.best("mean") == 0.2 and r.best("max") == 0.2


@pytest.mark.parametrize(
  ("grid", "lrs", "deltas", "message"),
  [
    ("log", [1e-3, 1e-2, 1e-1], [-1.0, -2.0, -3.0], r"upper edge .* find_lr\(max_lr=10\)"),
    ("log", [1e-3, 1e-2, 1e-1], [-3.0, -2.0, 1.0], r"lower edge .*lr_finder.min_lr=1e-05"),
    ("linear", [0.5, 1.0, 1.5], [-1.0, -2.0, -3.0], r"upper edge .*lr_finder.max_lr=2.5"),
    ("linear", [0.5, 1.0, 1.5], [-3.0, -2.0, 1.0], r"lower edge .*lr_finder.min_lr=0"),
  ],
)
def test_a_choice_at_the_edge_of_the_grid_warns_with_the_widened_grid(grid, lrs, deltas, message):
  r = make_result([deltas, deltas], lrs, grid=grid)
  with pytest.warns(UserWarning, match=message):
    r.best("mean")
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # an inner choice is silent
    make_result([[-1.0, -3.0, -1.0]] * 2, lrs, grid=grid).best("mean")


def test_a_choice_at_an_edge_widens_the_grid_by_itself(quadratic, capsys):
  """'mean' picks the upper edge of [1e-3, 0.1] (every rate lowers the loss, 1/a = 1/3 most):
  the grid grows 100 times at its own spacing, on the same subsamples, and the choice lands
  inside; one line says so."""
  x0, targets, _ = quadratic
  common = dict(num_subsamples=6, batch_size=16, seed=3, widen_for="mean")
  r = find_lr(quadratic_loss, x0, targets, min_lr=1e-3, max_lr=0.1, num_lrs=11, **common)
  lines = [line for line in capsys.readouterr().err.splitlines() if "widening" in line]
  assert len(lines) == 1 and lines[0].startswith("find_lr: 'mean' chose 0.1, an edge of the grid")
  np.testing.assert_allclose(r.lrs, np.geomspace(1e-3, 10.0, 21), rtol=1e-6)
  for m, idx in enumerate(r.indices):  # The new rates' differentials are the formula's too.
    gap = 0.5 * A * np.sum((np.asarray(x0) - np.asarray(targets)[idx].mean(axis=0)) ** 2)
    np.testing.assert_allclose(r.deltas[m], gap * ((1 - r.lrs * A) ** 2 - 1), rtol=1e-4, atol=1e-4)
  assert r.lrs[0] < r.best("mean") < r.lrs[-1]
  # A linear grid far below the best grows by its own span, at most max_widenings times.
  linear = dict(common, min_lr=0.01, max_lr=0.05, num_lrs=5, grid="linear", progress=False)
  bounded = find_lr(quadratic_loss, x0, targets, max_widenings=2, **linear)
  np.testing.assert_allclose(bounded.lrs, np.linspace(0.01, 0.17, 17), rtol=1e-6)  # 5, 9, 17
  with pytest.warns(UserWarning, match="upper edge"):
    assert bounded.best("mean") == pytest.approx(0.17)
  unwidened = find_lr(quadratic_loss, x0, targets, **{**linear, "widen_for": None})
  assert unwidened.lrs.size == 5


def test_non_finite_differentials_count_as_worst():
  r = make_result([[-1.0, -2.0, np.nan], [-1.0, -2.0, np.inf]], [0.1, 0.2, 0.3])
  assert r.best("mean") == 0.2
  assert r.best("max") == 0.2


def test_confidence_band_is_the_normal_approximation():
  rng = np.random.default_rng(0)
  deltas = rng.normal(size=(25, 4))
  mean, lower, upper = make_result(deltas).confidence_band(alpha=0.05)
  half = 1.959964 * deltas.std(axis=0, ddof=1) / 5.0
  np.testing.assert_allclose(mean, deltas.mean(axis=0))
  np.testing.assert_allclose(upper - mean, half, rtol=1e-5)
  np.testing.assert_allclose(mean - lower, half, rtol=1e-5)
  _, lo90, _ = make_result(deltas).confidence_band(alpha=0.1)
  assert np.all(lo90 > lower)
  with pytest.raises(ValueError, match="alpha must be in"):
    make_result(deltas).confidence_band(alpha=1.5)


def test_plot_and_json_write_files(quadratic, tmp_path):
  _, _, r = quadratic
  png, js = tmp_path / "lr.png", tmp_path / "lr.json"
  r.plot(str(png))
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert r.figure().axes[0].get_xscale() == "log"
  r.to_json(str(js))
  payload = json.loads(js.read_text())
  np.testing.assert_allclose(payload["lrs"], r.lrs)
  np.testing.assert_allclose(np.array(payload["deltas"], dtype=float), r.deltas)
  assert payload["best"] == {
    m: pytest.approx(r.best(m)) for m in ("mean", "median", "variance", "max")
  }


def test_plot_axes_follow_the_grid_and_show_the_whole_band():
  rng = np.random.default_rng(1)
  lrs = np.linspace(0.1, 1.0, 10)
  r = make_result(-lrs + 1.2 * lrs**2 + 0.2 * rng.normal(size=(8, 10)), lrs, grid="linear")
  ax = r.figure().axes[0]
  assert ax.get_xscale() == "linear"
  _, lower, upper = r.confidence_band()
  bottom, top = ax.get_ylim()
  assert bottom < lower.min() and top > upper.max()
  # Rises far beyond the decreases: the whole band still shows, on a symmetric-log axis.
  diverging = make_result([[-1.0, -2.0, 1e4], [-1.2, -1.8, 3e4]], [0.1, 0.2, 0.3])
  ax = diverging.figure().axes[0]
  _, lower, upper = diverging.confidence_band()
  assert ax.get_yscale() == "symlog"
  assert ax.get_ylim()[0] < lower.min() and ax.get_ylim()[1] > upper.max()


def test_progress_says_what_it_will_do(mlp_problem, capsys):
  params, data = mlp_problem
  find_lr(mlp_loss, params, data, num_lrs=5, num_subsamples=3, batch_size=8, max_lr=0.5)
  err = capsys.readouterr().err
  first = err.splitlines()[0]
  assert first.startswith("find_lr: 5 rates (log grid, 1e-06 to 0.5) x 3 subsamples of 8 examples")
  assert "3/3" in err  # the bar reached its end


def test_a_second_call_reuses_the_compiled_function(mlp_problem):
  params, data = mlp_problem
  traces = []

  def counting_loss(p, batch):
    traces.append(1)  # runs only while jax traces the function
    return mlp_loss(p, batch)

  call = lambda: find_lr(counting_loss, params, data, num_lrs=3, num_subsamples=2, batch_size=4)
  first = call()
  traced = len(traces)
  second = call()
  assert traced > 0 and len(traces) == traced
  np.testing.assert_array_equal(first.deltas, second.deltas)


def test_json_writes_null_for_diverged_steps(tmp_path):
  r = make_result([[-1.0, np.inf]], [0.1, 0.2])
  r.to_json(str(tmp_path / "d.json"))
  assert json.loads((tmp_path / "d.json").read_text())["deltas"] == [[-1.0, None]]


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(min_lr=1.0, max_lr=0.5), "min_lr must be < max_lr"),
    (dict(min_lr=0.0, max_lr=1.0), r"min_lr \(0 only on a linear grid, here 'log'\) must be"),
    (dict(max_lr=math.inf), "max_lr must be a learning rate, finite and > 0, got inf"),
    (dict(batch_size=65), r"batch_size must be in \[1, 64\]"),
    (dict(batch_size=0), r"batch_size must be in \[1, 64\]"),
    (dict(grid="cubic"), "grid must be one of"),
    (dict(num_lrs=0), "num_lrs must be >= 1"),
    (dict(num_subsamples=0), "num_subsamples must be >= 1"),
    (dict(optimizer=optax.sgd(0.1)), "inject_hyperparams"),
    (
      dict(
        optimizer=optax.inject_hyperparams(optax.sgd)(
          learning_rate=optax.linear_schedule(0.1, 0.0, 10)
        )
      ),
      "a schedule, not a constant",
    ),
    (dict(chunk_size=0), "chunk_size must be >= 1"),
  ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
  with pytest.raises(ValueError, match=message):
    find_lr(quadratic_loss, jnp.zeros(5), jnp.zeros((64, 5)), **kwargs)


def test_data_with_mismatched_leading_axes_raises():
  with pytest.raises(ValueError, match="same leading example axis"):
    find_lr(quadratic_loss, jnp.zeros(5), {"a": jnp.zeros((4, 5)), "b": jnp.zeros((3,))})
