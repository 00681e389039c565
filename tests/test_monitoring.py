"""Tests for monitor_clipping, monitor_updates and metrics()."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gnreg

PARAMS = {"w": jnp.ones((3, 2)), "b": jnp.ones(2), "s": jnp.ones(())}


def grads_with(values: list[float]) -> dict[str, jax.Array]:
  """A gradient tree holding ``values`` (9 numbers) spread over PARAMS's leaves."""
  v = jnp.asarray(values, jnp.float32)
  return {"w": v[:6].reshape(3, 2), "b": v[6:8], "s": v[8]}


def np_norm(tree) -> float:
  return float(np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(tree))))


def test_clip_by_global_norm_fires_only_above_threshold():
  tx = gnreg.monitor_clipping(optax.clip_by_global_norm(1.0))
  big = grads_with([1.0, -2.0, 0.5, 0.0, 3.0, 1.0, -1.0, 0.25, 2.0])
  clipped, state = tx.update(big, tx.init(PARAMS))
  np.testing.assert_allclose(state.grad_norm, np_norm(big), rtol=1e-6)
  np.testing.assert_allclose(state.clipped_grad_norm, np_norm(clipped), rtol=1e-6)
  np.testing.assert_allclose(state.clipped_grad_norm, 1.0, rtol=1e-6)
  assert state.clip_fired.dtype == jnp.bool_ and bool(state.clip_fired)

  small = jax.tree.map(lambda g: 0.1 * g, big)
  clipped, state = tx.update(small, state)
  jax.tree.map(np.testing.assert_array_equal, clipped, small)
  assert state.grad_norm == state.clipped_grad_norm
  assert not bool(state.clip_fired)


def test_clip_by_value_fires_on_any_clipped_element():
  tx = gnreg.monitor_clipping(optax.clip(0.5))
  inside = grads_with([0.5, -0.5, 0.1, 0.0, 0.2, -0.3, 0.4, 0.25, -0.1])
  _, state = tx.update(inside, tx.init(PARAMS))
  assert not bool(state.clip_fired)
  # One element barely above: the norm moves by ~1e-8 relative, but the clip fired.
  barely = grads_with([0.50001, -0.5, 0.1, 0.0, 0.2, -0.3, 0.4, 0.25, -0.1])
  clipped, state = tx.update(barely, state)
  assert bool(state.clip_fired)
  assert float(clipped["w"][0, 0]) == 0.5


def test_identity_never_fires_even_with_nan():
  tx = gnreg.monitor_clipping(optax.identity())
  g = grads_with([1.0, 2.0, jnp.nan, 0.0, 3.0, 1.0, -1.0, 0.25, 2.0])
  _, state = tx.update(g, tx.init(PARAMS))
  assert not bool(state.clip_fired)
  assert np.isnan(state.grad_norm) and np.isnan(state.clipped_grad_norm)


def test_agc_gets_params_and_extra_args_are_passed_on():
  tx = gnreg.monitor_clipping(gnreg.agc(clipping=0.01))
  g = jax.tree.map(lambda p: 10 * p, PARAMS)
  clipped, state = tx.update(g, tx.init(PARAMS), PARAMS)
  assert bool(state.clip_fired)
  np.testing.assert_allclose(state.clipped_grad_norm, np_norm(clipped), rtol=1e-6)
  np.testing.assert_allclose(state.clipped_grad_norm, 0.01 * np_norm(PARAMS), rtol=1e-5)

  def scale_by_extra() -> optax.GradientTransformationExtraArgs:
    def update(updates, state, params=None, *, factor):
      return jax.tree.map(lambda u: factor * u, updates), state

    return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)

  tx = gnreg.monitor_clipping(scale_by_extra())
  _, state = tx.update(g, tx.init(PARAMS), PARAMS, factor=0.5)
  np.testing.assert_allclose(state.clipped_grad_norm, 0.5 * state.grad_norm, rtol=1e-6)


def test_norms_accumulate_in_float32_for_bfloat16():
  g = {"w": jnp.full((4096,), 1.0, jnp.bfloat16), "b": jnp.full((3,), 0.5, jnp.bfloat16)}
  tx = optax.chain(gnreg.monitor_clipping(optax.identity()), gnreg.monitor_updates())
  updates, (clip_state, update_state) = jax.jit(tx.update)(g, tx.init(g))
  assert updates["w"].dtype == jnp.bfloat16
  for norm in (
    clip_state.grad_norm,
    clip_state.clipped_grad_norm,
    optax.tree.get(update_state, "update_norm"),
  ):
    assert norm.dtype == jnp.float32
    np.testing.assert_allclose(norm, np_norm(g), rtol=1e-6)


def test_monitor_updates_is_identity_and_records_the_norm():
  tx = gnreg.monitor_updates()
  g = grads_with([1.0, -2.0, 0.5, 0.0, 3.0, 1.0, -1.0, 0.25, 2.0])
  state = tx.init(PARAMS)
  assert optax.tree.get(state, "update_norm") == 0.0
  out, state = jax.jit(tx.update)(g, state)
  jax.tree.map(np.testing.assert_array_equal, out, g)
  np.testing.assert_allclose(optax.tree.get(state, "update_norm"), np_norm(g), rtol=1e-6)


def gnp_like(r: float = 0.01, alpha: float = 0.5) -> optax.GradientTransformation:
  def init(params):
    del params
    return gnreg.GNPState(
      jnp.zeros([], jnp.int32),
      jax.random.PRNGKey(0),
      jnp.asarray(r),
      jnp.asarray(alpha),
      jnp.asarray(True),
    )

  def update(updates, state, params=None):
    del params
    return updates, state._replace(count=state.count + 1)

  return optax.GradientTransformation(init, update)


def realistic_chain() -> optax.GradientTransformation:
  return optax.chain(
    optax.inject_hyperparams(gnp_like)(r=0.05, alpha=0.3),
    gnreg.monitor_clipping(optax.clip_by_global_norm(1.0)),
    gnreg.pid_lr(optax.inject_hyperparams(optax.sgd)(learning_rate=1e-3, momentum=0.9)),
    gnreg.monitor_updates(),
  )


REALISTIC_KEYS = [
  "gnp/r",
  "gnp/alpha",
  "grad_norm",
  "clipped_grad_norm",
  "clip_fired",
  "pid/grad_norm",
  "pid/error",
  "pid/integral",
  "learning_rate",
  "momentum",
  "update_norm",
]


def test_metrics_on_a_realistic_chain():
  tx = realistic_chain()
  g = grads_with([1.0, -2.0, 0.5, 0.0, 3.0, 1.0, -1.0, 0.25, 2.0])
  updates, state = jax.jit(tx.update)(g, tx.init(PARAMS), PARAMS)
  m = gnreg.metrics(state)
  assert list(m) == REALISTIC_KEYS
  assert all(type(v) is float for v in m.values())
  np.testing.assert_allclose(m["gnp/r"], 0.05, rtol=1e-6)
  np.testing.assert_allclose(m["gnp/alpha"], 0.3, rtol=1e-6)
  np.testing.assert_allclose(m["grad_norm"], np_norm(g), rtol=1e-6)
  np.testing.assert_allclose(m["clipped_grad_norm"], 1.0, rtol=1e-6)
  assert m["clip_fired"] == 1.0
  np.testing.assert_allclose(m["pid/grad_norm"], m["clipped_grad_norm"], rtol=1e-6)
  # The rate PID sets, under its one name; the norm equals the target, so it stays put.
  np.testing.assert_allclose(m["learning_rate"], 1e-3, rtol=1e-5)
  np.testing.assert_allclose(m["momentum"], 0.9, rtol=1e-6)
  np.testing.assert_allclose(m["update_norm"], np_norm(updates), rtol=1e-6)


@pytest.mark.parametrize(
  "wrap",
  [
    lambda tx: optax.MultiSteps(tx, every_k_schedule=2),
    lambda tx: optax.apply_if_finite(tx, max_consecutive_errors=3),
    lambda tx: optax.masked(tx, jax.tree.map(lambda _: True, PARAMS)),
    lambda tx: optax.partition({"all": tx}, jax.tree.map(lambda _: "all", PARAMS)),
  ],
  ids=["MultiSteps", "apply_if_finite", "masked", "partition"],
)
def test_metrics_through_wrappers(wrap):
  tx = wrap(realistic_chain())
  state = tx.init(PARAMS)
  g = grads_with([1.0, -2.0, 0.5, 0.0, 3.0, 1.0, -1.0, 0.25, 2.0])
  for _ in range(2):
    _, state = tx.update(g, state, PARAMS)
  m = gnreg.metrics(state)
  assert list(m) == REALISTIC_KEYS
  np.testing.assert_allclose(m["grad_norm"], np_norm(g), rtol=1e-6)


def test_repeated_keys_get_their_state_path():
  tx = optax.chain(
    optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
    gnreg.monitor_clipping(optax.identity()),
    optax.chain(gnreg.monitor_clipping(optax.clip(1.0)), optax.inject_hyperparams(optax.sgd)(0.2)),
  )
  m = gnreg.metrics(tx.init(PARAMS))
  assert list(m) == [
    "learning_rate",
    "grad_norm",
    "clipped_grad_norm",
    "clip_fired",
    "2/0/grad_norm",
    "2/0/clipped_grad_norm",
    "2/0/clip_fired",
    "2/1/learning_rate",
  ]
  np.testing.assert_allclose([m["learning_rate"], m["2/1/learning_rate"]], [0.1, 0.2], rtol=1e-6)


def test_metrics_of_a_monitor_nested_in_a_monitor():
  tx = gnreg.monitor_clipping(gnreg.monitor_clipping(optax.clip_by_global_norm(1.0)))
  _, state = tx.update(grads_with([3.0] * 9), tx.init(PARAMS))
  m = gnreg.metrics(state)
  assert list(m)[:3] == ["grad_norm", "clipped_grad_norm", "clip_fired"]
  assert m["inner_state/grad_norm"] == m["grad_norm"] == pytest.approx(9.0)


def test_non_scalars_are_skipped():
  batched = jax.tree.map(lambda p: jnp.stack([p, 2 * p]), PARAMS)
  tx = realistic_chain()
  assert gnreg.metrics(jax.vmap(tx.init)(batched)) == {}
  tx = optax.chain(
    optax.inject_hyperparams(optax.scale)(step_size=jnp.ones(3)),
    optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
  )
  assert list(gnreg.metrics(tx.init(PARAMS))) == ["learning_rate"]


def test_metrics_fetches_once(monkeypatch):
  calls = []
  device_get = jax.device_get

  def counting(x):
    calls.append(x)
    return device_get(x)

  monkeypatch.setattr(jax, "device_get", counting)
  m = gnreg.metrics(realistic_chain().init(PARAMS))
  assert len(m) == len(REALISTIC_KEYS) and len(calls) == 1


def test_metrics_of_a_state_without_monitors():
  assert gnreg.metrics(optax.adam(1e-3).init(PARAMS)) == {}


def test_metrics_reads_optax_monitor_and_snapshot_and_skips_constants():
  tx = optax.chain(
    optax.monitor({"raw_norm": optax.tree.norm}),
    optax.inject_hyperparams(gnreg.gnp)(r=0.1, alpha=0.5, seed=3),
    optax.snapshot("gnp_norm", optax.tree.norm),
    optax.inject_hyperparams(optax.adam)(learning_rate=0.01),
  )
  params = jnp.zeros(2)
  _, state = tx.update(
    jnp.array([3.0, 4.0]), tx.init(params), params, grad_fn=lambda p: jnp.array([3.0, 4.0])
  )
  logged = gnreg.metrics(state)
  assert logged["raw_norm"] == pytest.approx(5.0)
  assert logged["gnp_norm"] == pytest.approx(5.0)  # g1 and g2 agree on a constant gradient.
  assert logged["learning_rate"] == pytest.approx(0.01)
  # gnp's r and alpha under one name each, its other hyperparameters with its prefix.
  assert logged["gnp/alpha"] == 0.5 and logged["gnp/r"] == pytest.approx(0.1)
  assert logged["gnp/probability"] == 1.0
  assert not {"r", "alpha", "probability", "pid/lr"} & set(logged)
  # A seed, a warmup length and eps are constants of the method, not curves.
  assert not {"seed", "warmup_steps", "eps"} & set(logged)
