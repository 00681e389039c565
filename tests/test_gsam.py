"""Tests for gnreg.gsam: against a float64 transcription of the paper's Algorithm 1, its SAM
reduction, the radius schedule, perturbation masks, data-parallel axes and bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gnreg
from gnreg.transforms.gsam import GSAMState


# A separable, non-quadratic loss whose gradient is known in closed form, so that the
# reference below needs no JAX.
def _loss(p):
  return sum(jnp.sum(jnp.sin(x) + 0.25 * x**4) for x in jax.tree.leaves(p))


_grad = jax.grad(_loss)


def _np_grad(p):
  return {k: np.cos(x) + x**3 for k, x in p.items()}


def _params(dtype=jnp.float32):
  return {
    "a": jnp.asarray([0.3, -1.2, 0.7], dtype),
    "b": jnp.asarray([[0.5, -0.1], [1.1, 0.2]], dtype),
    "c": jnp.asarray(-0.4, dtype),
  }


def _paper_gsam(w, lr_t, rho_max, rho_min, alpha, lr_max, lr_min, minimize_fp, adaptive,
                marked=None, eps=1e-12):  # fmt: skip
  """One GSAM direction, in float64 NumPy: Algorithm 1 of Zhuang et al. (ICLR 2022), the
  radius following the learning rate as in big_vision, written from the paper's symbols.

  ``marked``: the names of the leaves the ascent step moves (all when None).
  """
  dot = lambda a, b: sum(float(np.sum(a[k] * b[k])) for k in a)
  g = _np_grad(w)
  rho = (
    rho_max
    if lr_max == lr_min
    else rho_min + (rho_max - rho_min) * (lr_t - lr_min) / (lr_max - lr_min)
  )
  g_m = {k: g[k] if marked is None or k in marked else np.zeros_like(g[k]) for k in g}
  norm_m = np.sqrt(dot(g_m, g_m))
  w_adv = {k: w[k] + (np.abs(w[k]) if adaptive else 1.0) * rho * g_m[k] / (norm_m + eps) for k in w}
  g_p = _np_grad(w_adv)
  if minimize_fp:  # g = g_par + g_perp with g_par along g_p; descend g_p - alpha g_perp.
    g_par = {k: dot(g, g_p) / dot(g_p, g_p) * g_p[k] for k in g}
    return {k: g_p[k] - alpha * (g[k] - g_par[k]) for k in g}, rho, w_adv
  # g_p = g_p_par + g_p_perp with g_p_par along g; descend g + alpha g_p_perp.
  g_p_par = {k: dot(g_p, g) / dot(g, g) * g[k] for k in g}
  return {k: g[k] + alpha * (g_p[k] - g_p_par[k]) for k in g}, rho, w_adv


MODES = [(m, a) for m in (True, False) for a in (False, True)]
MODE_IDS = [f"minimize_fp={m},adaptive={a}" for m, a in MODES]


@pytest.mark.parametrize("minimize_fp, adaptive", MODES, ids=MODE_IDS)
def test_matches_the_papers_algorithm_in_float64(minimize_fp, adaptive):
  schedule = lambda t: 0.1 - 0.015 * t  # 0.1, 0.085, ...: the radius moves every step.
  hyper = dict(rho_max=0.4, rho_min=0.1, alpha=0.3, lr_max=0.1, lr_min=0.01)
  with jax.enable_x64(True):
    opt = gnreg.gsam(**hyper, learning_rate=schedule, minimize_fp=minimize_fp, adaptive=adaptive)
    step = jax.jit(lambda p, s: opt.update(_grad(p), s, p, grad_fn=_grad))
    params = _params(jnp.float64)
    state = opt.init(params)
    w = {k: np.asarray(v, np.float64) for k, v in params.items()}
    for t in range(5):
      updates, state = step(params, state)
      want, rho, _ = _paper_gsam(w, schedule(t), **hyper, minimize_fp=minimize_fp,
                                 adaptive=adaptive)  # fmt: skip
      for k in want:
        assert updates[k].dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(updates[k]), want[k], rtol=1e-9, atol=1e-12)
      np.testing.assert_allclose(float(state.rho), rho, rtol=1e-6)  # Logged in float32.
      assert int(state.count) == t + 1
      lr_t = schedule(t)
      params = jax.tree.map(lambda p, u, lr_t=lr_t: p - lr_t * u, params, updates)
      w = {k: w[k] - lr_t * want[k] for k in w}


@pytest.mark.parametrize("masked", [False, True], ids=["whole", "masked"])
def test_rho_max_equal_rho_min_and_alpha_zero_is_gnp_alpha_one(masked):
  # SAM: the same trajectory as gnp(alpha=1) under SGD, the learning rate moving or not.
  mask = {"a": True, "b": False, "c": True} if masked else None
  lr = optax.linear_schedule(0.1, 0.01, 6)
  sam = gnreg.gsam(0.3, 0.3, 0.0, learning_rate=lr, lr_max=0.1, lr_min=0.01,
                   perturbation_mask=mask)  # fmt: skip
  gnp = gnreg.gnp(r=0.3, alpha=1.0, perturbation_mask=mask)
  chains = [optax.chain(t, optax.sgd(lr)) for t in (sam, gnp)]
  params = [_params(), _params()]
  states = [tx.init(p) for tx, p in zip(chains, params, strict=True)]
  steps = [jax.jit(lambda p, s, tx=tx: tx.update(_grad(p), s, p, grad_fn=_grad)) for tx in chains]
  for _ in range(6):
    for i in range(2):
      updates, states[i] = steps[i](params[i], states[i])
      params[i] = optax.apply_updates(params[i], updates)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), *params)
  start = jax.tree.leaves(_params())
  moved = max(
    float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(params[0]), start, strict=True)
  )
  assert moved > 0.05  # The comparison is not between parameters that stood still.


def test_the_radius_follows_the_learning_rate():
  lrs = [0.1, 0.055, 0.01, 0.0]
  opt = gnreg.gsam(0.6, 0.1, 0.5, learning_rate=lambda t: jnp.asarray(lrs)[t], lr_max=0.1,
                   lr_min=0.01)  # fmt: skip
  params = _params()
  state = opt.init(params)
  rhos = []
  for _ in lrs:
    _, state = opt.update(_grad(params), state, params, grad_fn=_grad)
    rhos.append(float(state.rho))
  # rho_max at lr_max, halfway at halfway, rho_min at lr_min, and below it under lr_min
  # (a warmup from 0), as big_vision's formula has it.
  np.testing.assert_allclose(rhos, [0.6, 0.35, 0.1, 0.1 - 0.5 * 0.01 / 0.09], rtol=1e-6)
  # lr_max == lr_min: rho_max whatever the rate; a constant rate at lr_min: rho_min.
  for lr_max, want in ((0.05, 0.6), (0.1, 0.1)):
    opt = gnreg.gsam(0.6, 0.1, 0.5, learning_rate=0.05, lr_max=lr_max, lr_min=0.05)
    _, state = opt.update(_grad(params), opt.init(params), params, grad_fn=_grad)
    np.testing.assert_allclose(float(state.rho), want, rtol=1e-6)


@pytest.mark.parametrize("minimize_fp, adaptive", MODES, ids=MODE_IDS)
def test_a_perturbation_mask_keeps_the_unmarked_leaves_out_of_the_ascent_step(
  minimize_fp, adaptive
):
  params = _params()
  points = []

  def grad_fn(p):
    points.append(p)
    return _grad(p)

  opt = gnreg.gsam(0.4, 0.1, 0.3, learning_rate=0.07, lr_max=0.1, lr_min=0.01,
                   minimize_fp=minimize_fp, adaptive=adaptive,
                   perturbation_mask=lambda p: {"a": True, "b": False, "c": True})  # fmt: skip
  updates, state = opt.update(_grad(params), opt.init(params), params, grad_fn=grad_fn)
  w = {k: np.asarray(v, np.float64) for k, v in params.items()}
  want, rho, w_adv = _paper_gsam(w, 0.07, 0.4, 0.1, 0.3, 0.1, 0.01, minimize_fp, adaptive,
                                 marked={"a", "c"})  # fmt: skip
  (point,) = points
  np.testing.assert_array_equal(point["b"], params["b"])  # Not moved at all.
  for k in ("a", "c"):
    np.testing.assert_allclose(point[k], w_adv[k], rtol=1e-6)
  if not adaptive:  # The whole move is the radius, taken over the marked leaves alone.
    moved = np.sqrt(sum(np.sum((np.asarray(point[k], np.float64) - w[k]) ** 2) for k in w))
    np.testing.assert_allclose(moved, rho, rtol=1e-6)
  for k in want:  # Every leaf, the unmarked one too, gets its GSAM update.
    np.testing.assert_allclose(updates[k], want[k], rtol=2e-5, atol=1e-6)
  assert not np.allclose(updates["b"], _np_grad(w)["b"], rtol=1e-3)


def test_axis_names_average_the_per_device_updates():
  # Two nested named axes (vmap here, shard_map's device and group axes in a trainer).
  rng = np.random.default_rng(0)
  shifts = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)  # Each device's own data.
  params = _params()

  def device_loss(p, shift):
    return _loss(jax.tree.map(lambda x: x + shift, p))

  def per_device(axis_name, shift):
    opt = gnreg.gsam(0.4, 0.1, 0.3, learning_rate=0.05, lr_max=0.1, lr_min=0.01,
                     axis_name=axis_name)  # fmt: skip
    grad_fn = lambda p: jax.grad(device_loss)(p, shift)
    return opt.update(grad_fn(params), opt.init(params), params, grad_fn=grad_fn)

  averaged, states = jax.jit(jax.vmap(jax.vmap(lambda s: per_device(("i", "j"), s),
                                                axis_name="j"), axis_name="i"))(shifts)  # fmt: skip
  alone = jax.jit(jax.vmap(lambda s: per_device(None, s)[0]))(shifts.reshape(-1))
  alone = [jax.tree.map(lambda x, i=i: x[i], alone) for i in range(6)]
  want = jax.tree.map(lambda *u: np.mean(np.stack(u), axis=0), *alone)
  for k in want:
    for i in range(2):
      for j in range(3):
        np.testing.assert_allclose(averaged[k][i, j], want[k], rtol=1e-5, atol=1e-7)
  assert (np.asarray(states.count) == 1).all()  # The state does not depend on the data.


def test_grad_fn_once_per_step_and_a_non_finite_step_keeps_the_state():
  calls = []
  opt = gnreg.gsam(0.4, 0.1, 0.3, learning_rate=lambda t: 0.1 - 0.01 * t, lr_max=0.1,
                   lr_min=0.01)  # fmt: skip
  params = _params()

  def grad_fn(p):
    jax.debug.callback(lambda: calls.append(1))
    return _grad(p)

  step = jax.jit(lambda g, s: opt.update(g, s, params, grad_fn=grad_fn))
  state = opt.init(params)
  _, state = step(_grad(params), state)
  bad = jax.tree.map(lambda g: g.at[()].set(jnp.nan) if g.ndim == 0 else g, _grad(params))
  _, after_bad = step(bad, state)
  jax.effects_barrier()
  assert len(calls) == 2
  assert isinstance(after_bad, GSAMState)
  jax.tree.map(np.testing.assert_array_equal, after_bad, state)  # Held: the count and rho.


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"rho_max": -0.1}, "rho_max must be finite and >= 0, got -0.1"),
    ({"rho_min": float("nan")}, "rho_min must be finite and >= 0, got nan"),
    ({"rho_min": 0.7}, "rho_min must be <= rho_max, got 0.7 > 0.6"),
    ({"alpha": -1.0}, "alpha must be finite and >= 0, got -1.0"),
    ({"lr_max": 0.0}, "lr_max must be finite and > 0, got 0.0"),
    ({"lr_min": 0.2}, "lr_min must be <= lr_max, got 0.2 > 0.1"),
    ({"learning_rate": float("inf")}, "learning_rate must be finite and >= 0, got inf"),
    ({"learning_rate": "cosine"}, "learning_rate must be a number, got 'cosine'"),
    ({"eps": 0.0}, "eps must be finite and > 0, got 0.0"),
    ({"minimize_fp": 1}, "minimize_fp must be True or False, got 1"),
    ({"adaptive": "yes"}, "adaptive must be True or False, got 'yes'"),
  ],
)
def test_bad_arguments_are_refused_in_one_line(kwargs, message):
  args = {"rho_max": 0.6, "rho_min": 0.1, "alpha": 0.6, "learning_rate": 0.1, "lr_max": 0.1,
          "lr_min": 0.001, **kwargs}  # fmt: skip
  with pytest.raises(ValueError) as error:
    gnreg.gsam(**args)
  assert str(error.value) == f"gsam: {message}"


def test_a_mask_that_does_not_fit_is_refused_at_init():
  opt = gnreg.gsam(0.6, 0.1, 0.6, learning_rate=0.1, lr_max=0.1, lr_min=0.001,
                   perturbation_mask={"a": True, "b": False})  # fmt: skip
  with pytest.raises(ValueError, match=r"^gsam: perturbation_mask must be a pytree of bools"):
    opt.init(_params())
  opt = gnreg.gsam(0.6, 0.1, 0.6, learning_rate=0.1, lr_max=0.1, lr_min=0.001,
                   perturbation_mask={"a": 1, "b": True, "c": True})  # fmt: skip
  with pytest.raises(ValueError, match=r"got the leaf 1$"):
    opt.init(_params())


def test_the_radius_reaches_gnreg_metrics():
  tx = optax.chain(
    gnreg.gsam(0.6, 0.1, 0.5, learning_rate=0.055, lr_max=0.1, lr_min=0.01), optax.sgd(0.1)
  )
  params = _params()
  _, state = tx.update(_grad(params), tx.init(params), params, grad_fn=_grad)
  assert gnreg.metrics(state) == {"gsam/rho": pytest.approx(0.35)}
