"""Tests for gnreg.exact_gnp: the exact gradient norm penalty, against a dense Hessian and gnp."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import gnreg


def _mlp_params(dtype):
  rng = np.random.default_rng(0)
  shapes = {"hidden": {"kernel": (3, 4), "bias": (4,)}, "out": {"kernel": (4, 2)}}
  return jax.tree.map(
    lambda s: jnp.asarray(rng.normal(size=s), dtype), shapes, is_leaf=lambda s: isinstance(s, tuple)
  )


def _mlp_loss(params, batch):
  """A small tanh MLP with a squared error: its third derivative is far from zero."""
  hidden = jnp.tanh(batch["x"] @ params["hidden"]["kernel"] + params["hidden"]["bias"])
  return 0.5 * jnp.mean(jnp.sum((hidden @ params["out"]["kernel"] - batch["y"]) ** 2, -1))


def _batch(dtype):
  rng = np.random.default_rng(1)
  return {
    "x": jnp.asarray(rng.normal(size=(6, 3)), dtype),
    "y": jnp.asarray(rng.normal(size=(6, 2)), dtype),
  }


def _dense_reference(params, batch, lam):
  """``g + lam * H g / ||g||`` with H the dense Hessian of the flattened loss."""
  flat, unravel = ravel_pytree(params)
  loss = lambda v: _mlp_loss(unravel(v), batch)
  g = np.asarray(jax.grad(loss)(flat), np.float64)
  hessian = np.asarray(jax.hessian(loss)(flat), np.float64)
  return g + lam * hessian @ g / np.linalg.norm(g)


def _apply(opt, params, grad_fn):
  updates, _ = jax.jit(lambda p: opt.update(grad_fn(p), opt.init(p), p, grad_fn=grad_fn))(params)
  return updates


def _flat(tree):
  return np.asarray(ravel_pytree(tree)[0], np.float64)


class _CallCounter:
  """A grad_fn that counts how many times it is executed (not traced) under jit."""

  def __init__(self, grad_fn):
    self.grad_fn, self.calls = grad_fn, 0

  def _inc(self):
    self.calls += 1

  def __call__(self, p):
    jax.debug.callback(self._inc)
    return self.grad_fn(p)


def test_matches_dense_hessian_in_float64():
  with jax.enable_x64(True):
    params, batch = _mlp_params(jnp.float64), _batch(jnp.float64)
    grad_fn = jax.grad(lambda p: _mlp_loss(p, batch))
    for lam in (0.01, 0.3):
      updates = _apply(gnreg.exact_gnp(lam), params, grad_fn)
      assert all(u.dtype == jnp.float64 for u in jax.tree.leaves(updates))
      np.testing.assert_allclose(
        _flat(updates), _dense_reference(params, batch, lam), rtol=1e-12, atol=1e-13
      )


def test_matches_dense_hessian_in_float32_and_keeps_the_dtype():
  params, batch = _mlp_params(jnp.float32), _batch(jnp.float32)
  grad_fn = jax.grad(lambda p: _mlp_loss(p, batch))
  updates = _apply(gnreg.exact_gnp(0.3), params, grad_fn)
  assert all(u.dtype == jnp.float32 for u in jax.tree.leaves(updates))
  np.testing.assert_allclose(
    _flat(updates), _dense_reference(params, batch, 0.3), rtol=1e-5, atol=1e-6
  )


@pytest.mark.parametrize("r, alpha", [(0.5, 0.5), (0.05, 0.2), (2.0, 0.9)])
def test_gnp_with_r_and_alpha_is_exact_gnp_with_lam_alpha_times_r_on_a_quadratic(r, alpha):
  # A quadratic's gradient is linear, so the finite difference has no error: the only way
  # the two agree for every r and alpha is lam = alpha * r (the paper's alpha = lambda / r).
  # (gnp computes its mix in float32 today, hence the float32 tolerance.)
  with jax.enable_x64(True):
    a = jnp.asarray(np.random.default_rng(2).normal(size=(5, 5)), jnp.float64)
    curvature = a @ a.T + jnp.eye(5)
    loss = lambda p: 0.5 * p["w"] @ curvature @ p["w"] + jnp.sum(p["w"])
    params = {"w": jnp.linspace(-1.0, 2.0, 5, dtype=jnp.float64)}
    grad_fn = jax.grad(loss)
    fd = _apply(gnreg.gnp(r=r, alpha=alpha), params, grad_fn)
    exact = _apply(gnreg.exact_gnp(alpha * r), params, grad_fn)
    np.testing.assert_allclose(_flat(fd), _flat(exact), rtol=1e-6, atol=1e-6)


def test_finite_difference_gnp_converges_to_it_at_first_order_in_r():
  lam, radii = 0.01, (0.16, 0.08, 0.04, 0.02, 0.01)
  with jax.enable_x64(True):
    params, batch = _mlp_params(jnp.float64), _batch(jnp.float64)
    grad_fn = jax.grad(lambda p: _mlp_loss(p, batch))
    exact = _flat(_apply(gnreg.exact_gnp(lam), params, grad_fn))
    np.testing.assert_allclose(exact, _dense_reference(params, batch, lam), rtol=1e-12)
    errors = np.array(
      [
        np.linalg.norm(_flat(_apply(gnreg.gnp(r=r, alpha=lam / r), params, grad_fn)) - exact)
        for r in radii
      ]
    )
    penalty_term = np.linalg.norm(exact - _flat(grad_fn(params)))
  # Halving r halves the bias: the error is first order, (lam * r / 2) * D3L[v, v] + O(r^2).
  ratios = errors[:-1] / errors[1:]
  np.testing.assert_allclose(ratios, 2.0, rtol=0.1)
  # And it is the finite difference's bias, not noise: well above float64 rounding.
  assert errors[-1] > 1e-8
  assert errors[-1] < 0.01 * penalty_term


def test_lam_zero_returns_the_gradient_without_evaluating_grad_fn():
  params, batch = _mlp_params(jnp.float32), _batch(jnp.float32)
  counter = _CallCounter(jax.grad(lambda p: _mlp_loss(p, batch)))
  grads = counter.grad_fn(params)
  opt = gnreg.exact_gnp(0.0)
  updates, _ = jax.jit(lambda g, p: opt.update(g, opt.init(p), p, grad_fn=counter))(grads, params)
  jax.effects_barrier()
  assert counter.calls == 0
  for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads), strict=True):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(g))


def test_zero_gradient_gives_no_nan():
  loss = lambda p: jnp.sum(p["w"] ** 4)  # Stationary and flat at 0.
  params = {"w": jnp.zeros(3)}
  updates = _apply(gnreg.exact_gnp(0.5), params, jax.grad(loss))
  np.testing.assert_array_equal(np.asarray(updates["w"]), np.zeros(3))


def test_mixed_precision_leaves_keep_their_dtype():
  params = {"a": jnp.array([0.5, -1.0], jnp.bfloat16), "b": jnp.array([2.0], jnp.float32)}
  loss = lambda p: jnp.sum(jnp.sin(p["a"].astype(jnp.float32))) + jnp.sum(p["b"] ** 3)
  updates = _apply(gnreg.exact_gnp(0.1), params, jax.grad(loss))
  assert updates["a"].dtype == jnp.bfloat16 and updates["b"].dtype == jnp.float32
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


def test_chain_with_sgd_and_injected_lam_schedule():
  params, batch = _mlp_params(jnp.float32), _batch(jnp.float32)
  grad_fn = jax.grad(lambda p: _mlp_loss(p, batch))
  schedule = optax.linear_schedule(0.0, 0.4, transition_steps=4)
  opt = optax.chain(optax.inject_hyperparams(gnreg.exact_gnp)(lam=schedule), optax.sgd(0.1))
  state = opt.init(params)

  @jax.jit
  def step(p, s):
    u, s = opt.update(grad_fn(p), s, p, grad_fn=grad_fn)
    return optax.apply_updates(p, u), s

  expected = params
  for t in range(4):
    params, state = step(params, state)
    direction = _dense_reference(expected, batch, float(schedule(t)))
    flat, unravel = ravel_pytree(expected)
    expected = unravel(flat - 0.1 * jnp.asarray(direction, jnp.float32))
    np.testing.assert_allclose(_flat(params), _flat(expected), rtol=1e-5, atol=1e-6)
  # The last update (t = 3) ran with the schedule's value at 3.
  np.testing.assert_allclose(float(state[0].hyperparams["lam"]), float(schedule(3)), rtol=1e-6)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"lam": -0.1}, r"lam must be finite and >= 0, got -0.1"),
    ({"lam": float("inf")}, r"lam must be finite and >= 0, got inf"),
    ({"lam": float("nan")}, r"lam must be finite and >= 0, got nan"),
    ({"lam": np.array([0.1, 0.2])}, r"lam must be a scalar"),
    ({"lam": "0.1"}, r"lam must be a number"),
    ({"lam": 0.1, "eps": 0.0}, r"eps must be finite and > 0, got 0.0"),
  ],
)
def test_bad_arguments_raise(kwargs, match):
  with pytest.raises(ValueError, match="exact_gnp: " + match):
    gnreg.exact_gnp(**kwargs)


def test_update_needs_grad_fn_and_params():
  params = {"w": jnp.ones(2)}
  opt = gnreg.exact_gnp(0.1)
  with pytest.raises(ValueError, match="exact_gnp: update needs grad_fn"):
    opt.update(params, opt.init(params), params)
  with pytest.raises(ValueError, match="exact_gnp: update needs params"):
    opt.update(params, opt.init(params), None, grad_fn=lambda p: p)
