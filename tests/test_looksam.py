"""Tests for gnreg.looksam: LookSAM's reuse of the perturbed gradient, against a NumPy loop."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gnreg
from gnreg.transforms.looksam import LookSAMState


# A separable, non-quadratic loss with a closed-form gradient for the NumPy reference.
def _loss(p):
  return sum(jnp.sum(jnp.sin(x) + 0.25 * x**4) for x in jax.tree.leaves(p))


_grad = jax.grad(_loss)


def _np_grad(p):
  return {name: np.cos(x) + x**3 for name, x in p.items()}


def _params(dtype=jnp.float32):
  return {
    "a": jnp.array([0.3, -1.2, 0.7], dtype),
    "b": jnp.array([[0.5, -0.1], [1.1, 0.2]], dtype),
    "c": jnp.array(-0.4, dtype),
  }


def _np_looksam_sgd(params, steps, *, r, alpha, k, reuse_weight, lr, eps=1e-12):
  """Liu et al.'s Algorithm 1 with gnp's alpha, then SGD, in float64 NumPy: the trajectory."""
  p = {name: np.asarray(x, np.float64) for name, x in params.items()}
  dot = lambda a, b: sum(float(np.sum(a[n] * b[n])) for n in a)
  g_v = {name: np.zeros_like(x) for name, x in p.items()}
  trajectory, evaluations = [], 0
  for t in range(steps):
    g = _np_grad(p)
    g_norm = np.sqrt(dot(g, g))
    if t % k == 0:
      g_s = _np_grad({n: p[n] + r * g[n] / (g_norm + eps) for n in p})
      evaluations += 1
      # g_v = g_s - ||g_s|| cos(g, g_s) g / ||g||
      cosine = dot(g, g_s) / (g_norm * np.sqrt(dot(g_s, g_s)))
      g_v = {n: g_s[n] - np.sqrt(dot(g_s, g_s)) * cosine * g[n] / g_norm for n in p}
      update = {n: (1 - alpha) * g[n] + alpha * g_s[n] for n in p}
    else:
      g_s = {n: g[n] + reuse_weight * g_norm / np.sqrt(dot(g_v, g_v)) * g_v[n] for n in p}
      update = {n: (1 - alpha) * g[n] + alpha * g_s[n] for n in p}
    p = {n: p[n] - lr * update[n] for n in p}
    trajectory.append(p)
  return trajectory, evaluations


class _CallCounter:
  """A grad_fn that counts how many times it is executed (not traced) under jit."""

  def __init__(self):
    self.calls = 0

  def _inc(self):
    self.calls += 1

  def __call__(self, p):
    jax.debug.callback(self._inc)
    return _grad(p)


def _train(opt, params, steps, grad_fn=_grad, lr=0.05):
  """``steps`` jitted steps of ``chain(opt, sgd(lr))``: the parameters after each, the states."""
  tx = optax.chain(opt, optax.sgd(lr))
  state = tx.init(params)

  @jax.jit
  def step(p, s):
    u, s = tx.update(_grad(p), s, p, grad_fn=grad_fn)
    return optax.apply_updates(p, u), s

  trajectory, states = [], []
  for _ in range(steps):
    params, state = step(params, state)
    trajectory.append(params)
    states.append(state[0])
  jax.effects_barrier()
  return trajectory, states


@pytest.mark.parametrize("alpha, k, reuse_weight", [(1.0, 3, 0.7), (0.5, 2, 1.0), (0.3, 4, 0.0)])
def test_matches_the_numpy_loop_in_float64(alpha, k, reuse_weight):
  kwargs = {"r": 0.3, "alpha": alpha, "k": k, "reuse_weight": reuse_weight}
  with jax.enable_x64(True):
    counter = _CallCounter()
    params = _params(jnp.float64)
    trajectory, states = _train(gnreg.looksam(**kwargs), params, 9, counter)
  expected, evaluations = _np_looksam_sgd(params, 9, lr=0.05, **kwargs)
  for t, (actual, wanted) in enumerate(zip(trajectory, expected, strict=True)):
    for name in wanted:
      np.testing.assert_allclose(
        np.asarray(actual[name]), wanted[name], rtol=1e-9, atol=1e-11, err_msg=f"step {t}"
      )
  # grad_fn ran on steps 0, k, 2k, ... only: the reuse steps cost one gradient.
  assert counter.calls == evaluations == len(range(0, 9, k))
  assert [int(s.count) for s in states] == list(range(1, 10))


def test_the_kept_component_is_orthogonal_to_its_steps_gradient():
  params = _params()
  opt = gnreg.looksam(r=0.5, alpha=1.0, k=3)
  _, state = opt.update(_grad(params), opt.init(params), params, grad_fn=_grad)
  g, g_v = _grad(params), state.orthogonal
  inner = float(optax.tree.vdot(g, g_v))
  assert abs(inner) < 1e-5 * float(optax.tree.norm(g)) * float(optax.tree.norm(g_v))
  assert float(optax.tree.norm(g_v)) > 1e-2  # The loss is not quadratic: g_s turns.


def test_k_one_is_gnp():
  looksam, _ = _train(gnreg.looksam(r=0.3, alpha=0.6, k=1), _params(), 4)
  gnp, _ = _train(gnreg.gnp(r=0.3, alpha=0.6), _params(), 4)
  for a, b in zip(jax.tree.leaves(looksam), jax.tree.leaves(gnp), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_alpha_zero_is_the_plain_gradient_without_grad_fn():
  counter = _CallCounter()
  looksam, _ = _train(gnreg.looksam(r=0.3, alpha=0.0, k=2), _params(), 3, counter)
  plain, _ = _train(optax.identity(), _params(), 3)
  assert counter.calls == 0
  for a, b in zip(jax.tree.leaves(looksam), jax.tree.leaves(plain), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_injected_hyperparameters_follow_the_same_schedule():
  counter = _CallCounter()
  injected = optax.inject_hyperparams(gnreg.looksam)(r=0.3, alpha=0.5, k=3)
  trajectory, _ = _train(injected, _params(), 7, counter)
  expected, _ = _train(gnreg.looksam(r=0.3, alpha=0.5, k=3), _params(), 7)
  assert counter.calls == 3
  for a, b in zip(jax.tree.leaves(trajectory), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_zero_gradient_gives_no_nan():
  loss = lambda p: jnp.sum(p**4)
  opt = gnreg.looksam(r=0.5, alpha=1.0, k=2)
  params, state = jnp.zeros(3), opt.init(jnp.zeros(3))
  for _ in range(2):
    updates, state = opt.update(jax.grad(loss)(params), state, params, grad_fn=jax.grad(loss))
    np.testing.assert_array_equal(np.asarray(updates), np.zeros(3))
  assert isinstance(state, LookSAMState)


def test_bfloat16_params_keep_their_dtype_and_the_state_is_float32():
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _params())
  grad_fn = lambda p: jax.tree.map(lambda g: g.astype(jnp.bfloat16), _grad(p))
  opt = gnreg.looksam(r=0.3, alpha=1.0, k=2)
  state = opt.init(params)
  for _ in range(2):
    updates, state = opt.update(grad_fn(params), state, params, grad_fn=grad_fn)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
  assert all(o.dtype == jnp.float32 for o in jax.tree.leaves(state.orthogonal))


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"r": -0.1}, r"r must be finite and >= 0, got -0.1"),
    ({"r": float("inf")}, r"r must be finite and >= 0, got inf"),
    ({"alpha": 1.5}, r"alpha must be in \[0, 1\], got 1.5"),
    ({"k": 0}, r"k must be an integer >= 1, got 0"),
    ({"k": 2.5}, r"k must be an integer >= 1, got 2.5"),
    ({"k": "5"}, r"k must be a number"),
    ({"reuse_weight": -1.0}, r"reuse_weight must be finite and >= 0, got -1.0"),
    ({"eps": 0.0}, r"eps must be finite and > 0, got 0.0"),
  ],
)
def test_bad_arguments_raise(kwargs, match):
  args = {"r": 0.1, "alpha": 1.0, "k": 5, **kwargs}
  with pytest.raises(ValueError, match="looksam: " + match):
    gnreg.looksam(**args)


def test_update_needs_grad_fn_and_params():
  params = _params()
  opt = gnreg.looksam(r=0.1, alpha=1.0, k=5)
  with pytest.raises(ValueError, match="looksam: update needs grad_fn"):
    opt.update(_grad(params), opt.init(params), params)
  with pytest.raises(ValueError, match="looksam: update needs params"):
    opt.update(_grad(params), opt.init(params), None, grad_fn=_grad)
