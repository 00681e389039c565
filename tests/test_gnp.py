"""Tests for gnreg.gnp, the gradient norm penalty transformation."""

import functools
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gnreg
from gnreg.transforms.gnp import GNPState


# A separable, non-quadratic loss whose gradient is known in closed form, so that the
# expected outputs can be computed independently in NumPy.
def _loss(p):
  return sum(jnp.sum(jnp.sin(x) + 0.25 * x**4) for x in jax.tree.leaves(p))


def _np_grad(p):
  return jax.tree.map(lambda x: np.cos(x) + x**3, p)


_grad = jax.grad(_loss)


def _np_gnp(g1, params, r, alpha, *, normalize_base_grad=False, eps=1e-12):
  """The GNP formula, in float64 NumPy."""
  g1 = jax.tree.map(lambda x: np.asarray(x, np.float64), g1)
  params = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  norm = np.sqrt(sum(np.sum(x**2) for x in jax.tree.leaves(g1)))
  perturbed = jax.tree.map(lambda p, g: p + r * g / (norm + eps), params, g1)
  g2 = _np_grad(perturbed)
  base = jax.tree.map(lambda g: g / (norm + eps), g1) if normalize_base_grad else g1
  return jax.tree.map(lambda b, h: (1 - alpha) * b + alpha * h, base, g2)


def _params(dtype=jnp.float32):
  return {
    "a": jnp.array([0.3, -1.2, 0.7], dtype),
    "b": {"c": jnp.array([[0.5, -0.1], [1.1, 0.2]], dtype), "d": jnp.array(-0.4, dtype)},
  }


def _assert_tree_close(actual, expected, rtol=1e-5, atol=1e-6):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for x, y in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y), rtol=rtol, atol=atol)


class _CallCounter:
  """A grad_fn that counts how many times it is *executed* (not traced) under jit."""

  def __init__(self):
    self.calls = 0

  def _inc(self):
    self.calls += 1

  def __call__(self, p):
    jax.debug.callback(self._inc)
    return _grad(p)


def _run(opt, params, steps, grad_fn=_grad, grads=None):
  """Runs `steps` jitted updates at fixed params; returns the updates and states."""
  state = opt.init(params)
  g = _grad(params) if grads is None else grads
  step = jax.jit(lambda g, s, p: opt.update(g, s, p, grad_fn=grad_fn))
  outs, states = [], []
  for _ in range(steps):
    u, state = step(g, state, params)
    outs.append(u)
    states.append(state)
  jax.effects_barrier()
  return outs, states


# ---------------------------------------------------------------------------------------
# The formula.


def test_alpha_zero_returns_incoming_gradient_exactly_without_second_gradient():
  params = _params()
  grads = jax.tree.map(lambda x: x * 3.0 - 1.0, params)
  counter = _CallCounter()
  outs, states = _run(gnreg.gnp(r=0.1, alpha=0.0), params, 3, grad_fn=counter, grads=grads)
  for u in outs:
    for x, y in zip(jax.tree.leaves(u), jax.tree.leaves(grads), strict=True):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert counter.calls == 0
  assert float(states[-1].alpha) == 0.0


def test_alpha_positive_calls_grad_fn_once_per_step():
  counter = _CallCounter()
  _run(gnreg.gnp(r=0.1, alpha=0.5), _params(), 3, grad_fn=counter)
  assert counter.calls == 3


def test_alpha_one_with_sgd_matches_optax_sam_opaque():
  lr, r, steps = 0.05, 0.2, 6
  params0 = _params()
  gnp_opt = optax.chain(gnreg.gnp(r=r, alpha=1.0), optax.sgd(lr))
  # sam ascends by negating its adversarial updates: -(-r * g / ||g||) = +r * g / ||g||.
  sam_opt = optax.contrib.sam(
    optax.sgd(lr),
    optax.chain(optax.contrib.normalize(), optax.sgd(r)),
    opaque_mode=True,
  )

  @jax.jit
  def step(p_gnp, s_gnp, p_sam, s_sam):
    u, s_gnp = gnp_opt.update(_grad(p_gnp), s_gnp, p_gnp, grad_fn=_grad)
    u_sam, s_sam = sam_opt.update(_grad(p_sam), s_sam, p_sam, grad_fn=lambda p, _: _grad(p))
    return (optax.apply_updates(p_gnp, u), s_gnp, optax.apply_updates(p_sam, u_sam), s_sam)

  p_gnp, s_gnp = params0, gnp_opt.init(params0)
  p_sam, s_sam = params0, sam_opt.init(params0)
  for _ in range(steps):
    p_gnp, s_gnp, p_sam, s_sam = step(p_gnp, s_gnp, p_sam, s_sam)
    _assert_tree_close(p_gnp, p_sam, rtol=1e-6, atol=1e-6)
  # The comparison is meaningful only if the parameters moved, and moved differently from
  # plain SGD.
  p_sgd = params0
  for _ in range(steps):
    p_sgd = jax.tree.map(lambda p, g: p - lr * g, p_sgd, _grad(p_sgd))
  diff = max(
    float(jnp.max(jnp.abs(a - b)))
    for a, b in zip(jax.tree.leaves(p_gnp), jax.tree.leaves(p_sgd), strict=True)
  )
  assert diff > 1e-3


@jax.jit
def _gnp_step_traced(r, alpha, grads, params):
  # r and alpha are tracers here, as they are under optax.inject_hyperparams.
  opt = gnreg.gnp(r=r, alpha=alpha)
  return opt.update(grads, opt.init(params), params, grad_fn=_grad)


@settings(max_examples=30, deadline=None)
@given(
  r=st.floats(0.0, 2.0, width=32),
  alpha=st.floats(0.0, 1.0, width=32),
  seed=st.integers(0, 2**31 - 1),
  scale=st.sampled_from([1e-3, 1.0, 30.0]),
)
def test_general_alpha_matches_numpy_formula(r, alpha, seed, scale):
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), _params())
  grads = jax.tree.map(
    lambda x: jnp.asarray(scale * rng.normal(size=x.shape), jnp.float32), _params()
  )
  expected = _np_gnp(grads, params, r, alpha)
  updates, state = _gnp_step_traced(jnp.float32(r), jnp.float32(alpha), grads, params)
  _assert_tree_close(updates, expected, rtol=1e-4, atol=1e-5 * max(scale, 1.0))
  np.testing.assert_allclose(float(state.alpha), alpha, rtol=1e-6)
  np.testing.assert_allclose(float(state.r), r, rtol=1e-6)


def test_concrete_hyperparameters_match_numpy_formula():
  params = _params()
  grads = jax.tree.map(lambda x: 2.0 * x + 0.5, params)
  opt = gnreg.gnp(r=0.3, alpha=0.4)
  updates, _ = opt.update(grads, opt.init(params), params, grad_fn=_grad)
  _assert_tree_close(updates, _np_gnp(grads, params, 0.3, 0.4))


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_normalize_base_grad_matches_formula(alpha):
  params = _params()
  grads = jax.tree.map(lambda x: 5.0 * x - 0.2, params)
  opt = gnreg.gnp(r=0.2, alpha=alpha, normalize_base_grad=True)
  updates, _ = jax.jit(lambda g, s, p: opt.update(g, s, p, grad_fn=_grad))(
    grads, opt.init(params), params
  )
  _assert_tree_close(updates, _np_gnp(grads, params, 0.2, alpha, normalize_base_grad=True))
  norm = np.sqrt(sum(float(jnp.sum(u**2)) for u in jax.tree.leaves(updates)))
  if alpha == 0.0:
    np.testing.assert_allclose(norm, 1.0, rtol=1e-6)


@pytest.mark.parametrize("normalize_base_grad", [False, True])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_zero_gradient_gives_no_nan(normalize_base_grad, dtype):
  params = _params(dtype)
  zeros = jax.tree.map(jnp.zeros_like, params)
  opt = gnreg.gnp(r=0.1, alpha=0.5, normalize_base_grad=normalize_base_grad)
  updates, _ = opt.update(zeros, opt.init(params), params, grad_fn=_grad)
  # With g1 = 0 there is no perturbation: g = (1 - alpha) * b + alpha * grad(params).
  expected = jax.tree.map(
    lambda g: 0.5 * np.asarray(g, np.float64),
    _np_grad(jax.tree.map(lambda x: np.asarray(x, np.float64), params)),
  )
  for u in jax.tree.leaves(updates):
    assert u.dtype == dtype
    assert np.all(np.isfinite(np.asarray(u, np.float32)))
  _assert_tree_close(updates, expected, rtol=2e-2 if dtype == jnp.bfloat16 else 1e-5)


def test_zero_gradient_float16_under_inject_hyperparams_gives_no_nan():
  # inject_hyperparams casts eps=1e-12 to the float16 of the params, where it is 0.
  params = _params(jnp.float16)
  zeros = jax.tree.map(jnp.zeros_like, params)
  opt = optax.inject_hyperparams(gnreg.gnp)(r=0.1, alpha=0.5, warmup="r", warmup_steps=2)
  state = opt.init(params)
  assert float(state.hyperparams["eps"]) == 0.0
  for _ in range(2):
    updates, state = opt.update(zeros, state, params, grad_fn=_grad)
    for u in jax.tree.leaves(updates):
      assert u.dtype == jnp.float16 and np.all(np.isfinite(np.asarray(u, np.float32)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_nested_mixed_shapes_preserve_dtype(dtype):
  params = _params(dtype)
  grads = jax.tree.map(lambda x: (x * 2 + 1).astype(dtype), params)
  opt = gnreg.gnp(r=0.25, alpha=0.6, normalize_base_grad=False)
  updates, state = jax.jit(lambda g, s, p: opt.update(g, s, p, grad_fn=_grad))(
    grads, opt.init(params), params
  )
  assert jax.tree.structure(updates) == jax.tree.structure(grads)
  for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads), strict=True):
    assert u.dtype == dtype and u.shape == g.shape
  tol = dict(rtol=3e-2, atol=3e-2) if dtype == jnp.bfloat16 else {}
  _assert_tree_close(updates, _np_gnp(grads, params, 0.25, 0.6), **tol)
  assert state.count.dtype == jnp.int32 and state.key.dtype == jnp.uint32


# ---------------------------------------------------------------------------------------
# Warmups.

_W = 4


def _expected_warmup(warmup, step, r, alpha):
  ramp = min(1.0, step / _W)
  if warmup == "lambda":
    return r, alpha * ramp
  if warmup == "r":
    return r * ramp, alpha
  if warmup == "zero":
    return r, 0.0 if step < _W else alpha
  return r, alpha


@pytest.mark.parametrize("warmup", [None, "lambda", "r", "zero"])
def test_warmup_effective_values_and_updates(warmup):
  r, alpha = 0.4, 0.8
  params = _params()
  grads = _grad(params)
  opt = gnreg.gnp(r=r, alpha=alpha, warmup=warmup, warmup_steps=_W)
  outs, states = _run(opt, params, 2 * _W + 1, grads=grads)
  for step in (0, _W // 2, _W, 2 * _W):
    r_t, alpha_t = _expected_warmup(warmup, step, r, alpha)
    np.testing.assert_allclose(float(states[step].r), r_t, rtol=1e-6)
    np.testing.assert_allclose(float(states[step].alpha), alpha_t, rtol=1e-6)
    assert int(states[step].count) == step + 1
    _assert_tree_close(outs[step], _np_gnp(grads, params, r_t, alpha_t))


@pytest.mark.parametrize(
  "warmup, expected_calls",
  # 2W steps: zero-warmup skips steps 0..W-1, lambda-warmup only step 0, r-warmup none.
  [("zero", _W), ("lambda", 2 * _W - 1), ("r", 2 * _W), (None, 2 * _W)],
)
def test_warmup_steps_without_penalty_skip_second_gradient(warmup, expected_calls):
  counter = _CallCounter()
  _run(
    gnreg.gnp(r=0.1, alpha=0.5, warmup=warmup, warmup_steps=_W), _params(), 2 * _W, grad_fn=counter
  )
  assert counter.calls == expected_calls


# ---------------------------------------------------------------------------------------
# Hybrid training.


@functools.partial(jax.jit, static_argnames="steps")
def _penalised_flags_jit(probability, seed, steps):
  # probability and seed are traced, as under optax.inject_hyperparams.
  opt = gnreg.gnp(r=0.1, alpha=0.5, probability=probability, seed=seed)
  params = jnp.array([0.5, -0.3])
  grads = _grad(params)

  def body(state, _):
    _, state = opt.update(grads, state, params, grad_fn=_grad)
    return state, state.alpha != 0

  return jax.lax.scan(body, opt.init(params), None, length=steps)[1]


def _penalised_flags(probability, seed, steps):
  return np.asarray(_penalised_flags_jit(jnp.float32(probability), jnp.int32(seed), steps))


def test_probability_penalises_a_fraction_of_steps_deterministically():
  steps = 600
  flags = _penalised_flags(0.3, seed=7, steps=steps)
  # Binomial(600, 0.3) has sd ~0.019 in fraction; 0.07 is beyond 3.5 sd.
  assert abs(flags.mean() - 0.3) < 0.07
  np.testing.assert_array_equal(flags, _penalised_flags(0.3, seed=7, steps=steps))
  assert not np.array_equal(flags, _penalised_flags(0.3, seed=8, steps=steps))
  assert _penalised_flags(1.0, seed=7, steps=steps).all()


def test_skipped_hybrid_steps_do_not_call_grad_fn():
  counter = _CallCounter()
  opt = gnreg.gnp(r=0.1, alpha=0.5, probability=0.5, seed=3)
  _, states = _run(opt, _params(), 40, grad_fn=counter)
  penalised = sum(int(s.alpha != 0) for s in states)
  assert 0 < penalised < 40
  assert counter.calls == penalised


@pytest.mark.parametrize(
  "kwargs", [{"probability": 0.5, "seed": 3}, {"warmup": "zero", "warmup_steps": 4}]
)
def test_next_update_penalised_is_the_decision_the_next_update_takes(kwargs):
  opt = optax.chain(gnreg.gnp(r=0.1, alpha=0.5, **kwargs), optax.sgd(0.1))
  params = _params()
  state = opt.init(params)
  step = jax.jit(lambda s: opt.update(_grad(params), s, params, grad_fn=_grad)[1])
  announced, taken = [], []
  for _ in range(12):
    announced.append(bool(gnreg.next_update_penalised(state)))
    state = step(state)
    taken.append(bool(optax.tree_utils.tree_get(state, "alpha") != 0))
  assert announced == taken
  if "warmup" in kwargs:
    assert taken == [False] * 4 + [True] * 8
  else:
    assert 0 < sum(taken) < 12


def test_next_update_penalised_without_gnp_is_false_and_refuses_two():
  assert gnreg.next_update_penalised(optax.sgd(0.1).init(_params())) is False
  two = optax.chain(gnreg.gnp(r=0.1, alpha=0.5), gnreg.gnp(r=0.1, alpha=0.5))
  with pytest.raises(ValueError, match="opt_state holds 2 gnp states, not one"):
    gnreg.next_update_penalised(two.init(_params()))


# ---------------------------------------------------------------------------------------
# Data parallelism, in a subprocess with several CPU devices.

_SHARD_MAP_CODE = textwrap.dedent(
  """
    import functools, json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    import gnreg

    n_dev = 4
    assert jax.device_count() == n_dev, jax.devices()
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("d",))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)
    params = {"w": jnp.asarray([0.3, -0.5, 0.8], jnp.float32), "b": jnp.float32(0.1)}

    def loss(p, xb):  # a mean over examples, so gradients average over shards
      return jnp.mean(jnp.log(jnp.cosh(xb @ p["w"] + p["b"])) + 0.1 * (xb @ p["w"]) ** 2)

    def gnp_on(p, xb, normalize_base_grad):
      opt = gnreg.gnp(r=0.3, alpha=0.7, normalize_base_grad=normalize_base_grad)
      g = jax.grad(loss)(p, xb)
      u, _ = opt.update(g, opt.init(p), p, grad_fn=lambda q: jax.grad(loss)(q, xb))
      return u

    def sharded(p, x, check_vma=True, **kw):
      opt = gnreg.gnp(r=0.3, alpha=0.7, axis_name="d", **kw)

      def step(p, s, xb):
        if check_vma:
          # Under check_vma, the gradient with respect to replicated params is already
          # summed over "d"; device-varying params give the per-device gradients.
          p = jax.lax.pcast(p, "d", to="varying")
        g = jax.grad(loss)(p, xb)
        return opt.update(g, s, p, grad_fn=lambda q: jax.grad(loss)(q, xb))[0]

      f = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(), P("d")), out_specs=P(),
                        check_vma=check_vma)
      return f(p, opt.init(p), x)

    @jax.jit  # one compilation for every variant keeps this subprocess fast
    def compute(p, x):
      out = {}
      for norm in (False, True):
        out[f"local_{norm}"] = sharded(p, x, normalize_base_grad=norm)
        per_dev = [gnp_on(p, xb, norm) for xb in jnp.split(x, n_dev)]
        out[f"local_expected_{norm}"] = jax.tree.map(lambda *a: sum(a) / n_dev, *per_dev)
        out[f"single_device_{norm}"] = gnp_on(p, x, norm)
        out[f"sync_{norm}"] = sharded(p, x, normalize_base_grad=norm, sync_perturbation=True)
      # Without check_vma, jax.grad gives per-device gradients of replicated params directly.
      out["local_novma"] = sharded(p, x, False)
      out["sync_novma"] = sharded(p, x, False, sync_perturbation=True)
      # Through lax.cond: a hybrid step that is penalised, and a zero-warmup step that is not.
      out["local_cond"] = sharded(p, x, probability=0.9999)
      out["zero_warmup_skip"] = sharded(p, x, warmup="zero", warmup_steps=5)
      out["plain_grad"] = jax.grad(loss)(p, x)
      return out

    def tolist(t):
      return jax.tree.map(lambda a: np.asarray(a, np.float64).tolist(), t)

    out = tolist(compute(params, x))

    # pmap as well: same local-perturbation semantics.
    opt = gnreg.gnp(r=0.3, alpha=0.7, axis_name="d")
    def pstep(p, xb):
      g = jax.grad(loss)(p, xb)
      return opt.update(g, opt.init(p), p, grad_fn=lambda q: jax.grad(loss)(q, xb))[0]
    rep = jax.tree.map(lambda a: jnp.stack([a] * n_dev), params)
    pm = jax.pmap(pstep, axis_name="d")(rep, x.reshape(n_dev, -1, 3))
    out["pmap"] = tolist(jax.tree.map(lambda a: a[0], pm))
    print("RESULT" + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def shard_map_results():
  env = dict(os.environ)
  env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run(
    [sys.executable, "-c", _SHARD_MAP_CODE],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
  return json.loads(line[len("RESULT") :])


@pytest.mark.parametrize("norm", [False, True])
def test_shard_map_local_perturbation_is_mean_of_per_device_gnp(shard_map_results, norm):
  res = shard_map_results
  _assert_tree_close(res[f"local_{norm}"], res[f"local_expected_{norm}"])
  if not norm:
    _assert_tree_close(res["local_novma"], res["local_expected_False"])
  # Local perturbations differ from the full-batch GNP, which is what makes this a test.
  diff = max(
    abs(a - b)
    for a, b in zip(
      jax.tree.leaves(res[f"local_{norm}"]),
      jax.tree.leaves(res[f"single_device_{norm}"]),
      strict=True,
    )
  )
  assert diff > 1e-4


@pytest.mark.parametrize("norm", [False, True])
def test_shard_map_sync_perturbation_equals_full_batch_gnp(shard_map_results, norm):
  res = shard_map_results
  _assert_tree_close(res[f"sync_{norm}"], res[f"single_device_{norm}"])
  if not norm:
    _assert_tree_close(res["sync_novma"], res["single_device_False"])


def test_shard_map_through_lax_cond_penalises_or_skips_on_every_device(shard_map_results):
  res = shard_map_results
  _assert_tree_close(res["local_cond"], res["local_expected_False"])
  _assert_tree_close(res["zero_warmup_skip"], res["plain_grad"])


def test_pmap_local_perturbation_is_mean_of_per_device_gnp(shard_map_results):
  _assert_tree_close(shard_map_results["pmap"], shard_map_results["local_expected_False"])


# ---------------------------------------------------------------------------------------
# Composition with optax.


def test_chain_with_sgd_under_jit():
  lr = 0.1
  params = _params()
  opt = optax.chain(gnreg.gnp(r=0.2, alpha=0.5), optax.sgd(lr))
  state = opt.init(params)

  @jax.jit
  def step(p, s):
    u, s = opt.update(_grad(p), s, p, grad_fn=_grad)
    return optax.apply_updates(p, u), s

  p, expected = params, jax.tree.map(np.asarray, params)
  for _ in range(3):
    p, state = step(p, state)
    g = _np_gnp(_np_grad(expected), expected, 0.2, 0.5)
    expected = jax.tree.map(lambda x, u: x - lr * u, expected, g)
    _assert_tree_close(p, expected, rtol=1e-5, atol=1e-5)
  assert int(state[0].count) == 3


@pytest.mark.parametrize("warmup", [None, "lambda", "r", "zero"])
def test_inject_hyperparams_with_schedules(warmup):
  r_sched = optax.linear_schedule(0.1, 0.5, transition_steps=6)
  alpha_sched = optax.linear_schedule(0.9, 0.3, transition_steps=6)
  kwargs = {} if warmup is None else {"warmup": warmup, "warmup_steps": _W}
  opt = optax.inject_hyperparams(gnreg.gnp)(r=r_sched, alpha=alpha_sched, **kwargs)
  params = _params()
  grads = _grad(params)
  state = opt.init(params)
  step = jax.jit(lambda g, s, p: opt.update(g, s, p, grad_fn=_grad))
  for t in range(2 * _W + 1):
    updates, state = step(grads, state, params)
    r_t, alpha_t = _expected_warmup(warmup, t, float(r_sched(t)), float(alpha_sched(t)))
    inner = state.inner_state
    assert isinstance(inner, GNPState)
    np.testing.assert_allclose(float(state.hyperparams["r"]), float(r_sched(t)), rtol=1e-6)
    np.testing.assert_allclose(float(inner.r), r_t, rtol=1e-5)
    np.testing.assert_allclose(float(inner.alpha), alpha_t, rtol=1e-5)
    _assert_tree_close(updates, _np_gnp(grads, params, r_t, alpha_t), rtol=1e-4)


def test_inject_hyperparams_numeric_arguments_and_hybrid():
  opt = optax.inject_hyperparams(gnreg.gnp)(
    r=0.2, alpha=0.5, warmup="lambda", warmup_steps=2, probability=0.5, seed=5
  )
  params = _params()
  state = opt.init(params)
  assert state.inner_state.key.dtype == jnp.uint32
  step = jax.jit(lambda g, s, p: opt.update(g, s, p, grad_fn=_grad))
  alphas = []
  for _ in range(30):
    _, state = step(_grad(params), state, params)
    alphas.append(float(state.inner_state.alpha))
  assert alphas[0] == 0.0  # lambda warmup at step 0
  assert set(np.round(alphas[2:], 6)) == {0.0, 0.5}  # hybrid: skipped or full alpha
  # The same seed gives the same draws as the uninjected transformation.
  _, states = _run(
    gnreg.gnp(r=0.2, alpha=0.5, warmup="lambda", warmup_steps=2, probability=0.5, seed=5),
    params,
    30,
  )
  np.testing.assert_allclose(alphas, [float(s.alpha) for s in states], rtol=1e-6)


def test_state_fields_reach_gnreg_metrics():
  params = _params()
  opt = optax.chain(gnreg.gnp(r=0.2, alpha=0.5, warmup="lambda", warmup_steps=4), optax.sgd(0.1))
  _, states = _run(opt, params, 3)
  found = gnreg.metrics(states[-1])
  np.testing.assert_allclose(found["gnp/r"], 0.2, rtol=1e-6)
  np.testing.assert_allclose(found["gnp/alpha"], 0.5 * 2 / 4, rtol=1e-6)


def test_apply_if_finite():
  params = _params()
  opt = optax.apply_if_finite(gnreg.gnp(r=0.2, alpha=0.5), max_consecutive_errors=3)
  state = opt.init(params)
  step = jax.jit(lambda g, s, p: opt.update(g, s, p, grad_fn=_grad))
  grads = _grad(params)
  updates, state = step(grads, state, params)
  _assert_tree_close(updates, _np_gnp(grads, params, 0.2, 0.5))
  bad = jax.tree.map(lambda g: g.at[()].set(jnp.nan) if g.ndim == 0 else g, grads)
  updates, state = step(bad, state, params)
  assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree.leaves(updates))
  assert int(state.inner_state.count) == 1 and int(state.total_notfinite) == 1


def test_orbax_round_trip(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  params = _params()
  opt = gnreg.gnp(r=0.2, alpha=0.5, probability=0.5, seed=11)
  _, states = _run(opt, params, 3)
  state = states[-1]
  path = tmp_path / "gnp_state"
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, state)
    ckptr.wait_until_finished()
    restored = ckptr.restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, state))
  restored = GNPState(*restored) if not isinstance(restored, GNPState) else restored
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The restored state continues the same random stream.
  g = _grad(params)
  u1, s1 = opt.update(g, state, params, grad_fn=_grad)
  u2, s2 = opt.update(g, restored, params, grad_fn=_grad)
  np.testing.assert_array_equal(np.asarray(s1.key), np.asarray(s2.key))
  _assert_tree_close(u1, u2, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"r": -1.0}, r"r must be finite and >= 0, got -1.0"),
    ({"r": float("nan")}, r"r must be finite and >= 0"),
    ({"r": float("inf")}, r"r must be finite and >= 0, got inf"),
    ({"alpha": 1.5}, r"alpha must be in \[0, 1\], got 1.5"),
    ({"alpha": -0.1}, r"alpha must be in \[0, 1\], got -0.1"),
    ({"warmup": "linear", "warmup_steps": 10}, r"warmup must be one of None, 'lambda', 'r'"),
    ({"warmup": "zero"}, r"warmup_steps must be > 0 when warmup='zero', got 0"),
    ({"warmup": "r", "warmup_steps": -2}, r"warmup_steps must be >= 0, got -2"),
    ({"warmup_steps": -1}, r"warmup_steps must be >= 0, got -1"),
    ({"probability": 0.0}, r"probability must be in \(0, 1\], got 0.0"),
    ({"probability": 1.2}, r"probability must be in \(0, 1\], got 1.2"),
    ({"eps": 0.0}, r"eps must be finite and > 0, got 0.0"),
    ({"eps": -1e-8}, r"eps must be finite and > 0"),
    ({"eps": float("inf")}, r"eps must be finite and > 0, got inf"),
    ({"sync_perturbation": True}, r"sync_perturbation=True needs an axis_name"),
    ({"adaptive_eta": -0.1}, r"adaptive_eta must be finite and >= 0, got -0.1"),
    ({"r": np.array([0.1, 0.2])}, r"r must be a scalar"),
  ],
)
def test_bad_arguments_raise(kwargs, match):
  args = {"r": 0.1, "alpha": 0.5, **kwargs}
  with pytest.raises(ValueError, match="gnp: " + match):
    gnreg.gnp(**args)


def test_numpy_scalars_are_validated_and_accepted():
  with pytest.raises(ValueError, match="alpha must be in"):
    gnreg.gnp(r=np.float32(0.1), alpha=np.float64(2.0))
  gnreg.gnp(r=np.float32(0.1), alpha=np.array(0.5), warmup="r", warmup_steps=np.int64(3))


def test_update_without_grad_fn_raises():
  params = _params()
  opt = gnreg.gnp(r=0.1, alpha=0.5)
  with pytest.raises(ValueError, match="grad_fn"):
    opt.update(_grad(params), opt.init(params), params)
  with pytest.raises(ValueError, match="params"):
    opt.update(_grad(params), opt.init(params), None, grad_fn=_grad)


# ---------------------------------------------------------------------------------------
# Unpenalised steps are plain steps (the authors' semantics), whatever normalize_base_grad says.


def _exactly(actual, expected):
  for x, y in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_zero_warmup_steps_return_the_incoming_gradient_even_normalised():
  params = _params()
  grads = jax.tree.map(lambda x: 5.0 * x - 0.2, params)
  opt = gnreg.gnp(r=0.2, alpha=0.5, warmup="zero", warmup_steps=2, normalize_base_grad=True)
  outs, states = _run(opt, params, 3, grads=grads)
  _exactly(outs[0], grads)
  _exactly(outs[1], grads)
  _assert_tree_close(outs[2], _np_gnp(grads, params, 0.2, 0.5, normalize_base_grad=True))
  assert [float(s.alpha) for s in states] == [0.0, 0.0, 0.5]


def test_skipped_hybrid_steps_return_the_incoming_gradient_even_normalised():
  params = _params()
  grads = jax.tree.map(lambda x: 5.0 * x - 0.2, params)
  opt = gnreg.gnp(r=0.2, alpha=0.5, probability=0.5, seed=3, normalize_base_grad=True)
  outs, states = _run(opt, params, 12, grads=grads)
  penalised = [float(s.alpha) != 0 for s in states]
  assert 0 < sum(penalised) < 12
  expected = _np_gnp(grads, params, 0.2, 0.5, normalize_base_grad=True)
  for out, on in zip(outs, penalised, strict=True):
    if on:
      _assert_tree_close(out, expected)
    else:
      _exactly(out, grads)


def test_alpha_zero_on_the_penalty_path_is_the_normalised_gradient():
  # alpha_t = 0 with r > 0 is the formula's b, the authors' "penalty path with alpha 0":
  # a constant alpha = 0 and the lambda warmup's first step alike, without a second gradient.
  params = _params()
  grads = jax.tree.map(lambda x: 5.0 * x - 0.2, params)
  unit = jax.tree.map(
    lambda g: g / np.sqrt(sum(float(jnp.sum(x**2)) for x in jax.tree.leaves(grads))), grads
  )
  for opt in (
    gnreg.gnp(r=0.2, alpha=0.0, normalize_base_grad=True),
    gnreg.gnp(r=0.2, alpha=0.5, warmup="lambda", warmup_steps=4, normalize_base_grad=True),
  ):
    counter = _CallCounter()
    outs, _ = _run(opt, params, 1, grad_fn=counter, grads=grads)
    _assert_tree_close(outs[0], unit, rtol=1e-6)
    assert counter.calls == 0


# ---------------------------------------------------------------------------------------
# Numerics: overflow, precision, skipped steps.


@pytest.mark.parametrize("normalize_base_grad", [False, True])
def test_gradients_of_1e20_perturb_correctly(normalize_base_grad):
  params = _params()
  grads = jax.tree.map(lambda x: 1e20 * (x + 0.1), params)  # squares overflow float32
  opt = gnreg.gnp(r=0.3, alpha=0.5, normalize_base_grad=normalize_base_grad)
  updates, _ = opt.update(grads, opt.init(params), params, grad_fn=_grad)
  expected = _np_gnp(grads, params, 0.3, 0.5, normalize_base_grad=normalize_base_grad)
  for u in jax.tree.leaves(updates):
    assert np.all(np.isfinite(np.asarray(u)))
  scale = 1.0 if normalize_base_grad else 1e20
  _assert_tree_close(updates, expected, rtol=1e-5, atol=1e-6 * scale)
  # The perturbed gradient is there: not the base term alone.
  base = _np_gnp(grads, params, 0.3, 0.0, normalize_base_grad=normalize_base_grad)
  if normalize_base_grad:
    assert not np.allclose(jax.tree.leaves(updates)[0], jax.tree.leaves(base)[0], rtol=1e-3)


_FLOAT64_CODE = textwrap.dedent(
  """
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp, numpy as np, optax, gnreg

    loss = lambda p: sum(jnp.sum(jnp.sin(x) + 0.25 * x**4) for x in jax.tree.leaves(p))
    rng = np.random.default_rng(0)
    params = {"a": rng.normal(size=5), "b": rng.normal(size=(3, 2))}
    grads = {k: 3.0 * rng.normal(size=v.shape) for k, v in params.items()}
    worst = 0.0
    for kwargs in ({}, {"normalize_base_grad": True}, {"adaptive": True},
                   {"warmup": "lambda", "warmup_steps": 3}):
      opt = gnreg.gnp(r=0.3, alpha=0.7, **kwargs)
      state = opt.init(params)
      params64 = jax.tree.map(jnp.asarray, params)
      out, state = jax.jit(lambda g, s, p: opt.update(g, s, p, grad_fn=jax.grad(loss)))(
        jax.tree.map(jnp.asarray, grads), state, params64)
      assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(out))
      # The reference, in NumPy float64.
      norm = np.sqrt(sum(np.sum(g**2) for g in grads.values()))
      alpha = 0.7
      if kwargs.get("adaptive"):
        t = {k: np.abs(p) + 0.01 for k, p in params.items()}
        tnorm = np.sqrt(sum(np.sum((t[k] * grads[k]) ** 2) for k in grads))
        step = {k: 0.3 * t[k] ** 2 * grads[k] / (tnorm + 1e-12) for k in grads}
      else:
        step = {k: 0.3 * grads[k] / (norm + 1e-12) for k in grads}
      g2 = {k: np.cos(params[k] + step[k]) + (params[k] + step[k]) ** 3 for k in grads}
      if kwargs.get("normalize_base_grad"):
        base = {k: g / (norm + 1e-12) for k, g in grads.items()}
      else:
        base = grads
      for k in grads:
        want = (1 - alpha) * base[k] + alpha * g2[k]
        if kwargs.get("warmup"):  # the lambda ramp's first step: alpha_t = 0
          want = base[k]
        worst = max(worst, float(np.max(np.abs(np.asarray(out[k]) - want) / (np.abs(want) + 1e-3))))
    print(worst)
  """
)


def test_float64_gnp_agrees_with_a_float64_reference():
  out = subprocess.run(
    [sys.executable, "-c", _FLOAT64_CODE], capture_output=True, text=True, timeout=120, check=False
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert float(out.stdout.split()[-1]) < 1e-12


def test_the_warmup_counts_only_steps_that_apply_if_finite_applies():
  # As in the trainer: gnp in front, apply_if_finite around the rest of the chain.
  params = _params()
  grads = _grad(params)
  bad = jax.tree.map(lambda g: g.at[()].set(jnp.inf) if g.ndim == 0 else g, grads)
  opt = optax.chain(
    gnreg.gnp(r=0.4, alpha=0.8, warmup="lambda", warmup_steps=_W),
    optax.apply_if_finite(optax.sgd(0.1), max_consecutive_errors=100),
  )
  state = opt.init(params)
  step = jax.jit(lambda g, s, p: opt.update(g, s, p, grad_fn=_grad))
  alphas = []
  for g in (grads, bad, bad, grads, bad, grads):
    updates, state = step(g, state, params)
    alphas.append(float(state[0].alpha))
  assert int(state[0].count) == 3 and int(state[1].total_notfinite) == 3
  # The ramp after 0, 1 and 2 applied steps, whatever was skipped in between.
  np.testing.assert_allclose(alphas, [0.0, 0.0, 0.0, 0.2, 0.2, 0.4], rtol=1e-6)
  expected = _np_gnp(grads, params, 0.4, 0.8 * 2 / _W)
  _assert_tree_close(updates, jax.tree.map(lambda u: -0.1 * u, expected))


def test_a_non_finite_output_leaves_the_gnp_state_as_it_was():
  # The same guarantee without the wrapper: the trainer puts gnp in front of apply_if_finite.
  params = _params()
  grads = jax.tree.map(lambda g: g.at[()].set(jnp.nan) if g.ndim == 0 else g, _grad(params))
  opt = gnreg.gnp(r=0.4, alpha=0.8, probability=0.5, warmup="zero", warmup_steps=2)
  state = opt.init(params)
  _, new_state = opt.update(grads, state, params, grad_fn=_grad)
  for new, old in zip(new_state, state, strict=True):
    np.testing.assert_array_equal(np.asarray(new), np.asarray(old))


# ---------------------------------------------------------------------------------------
# ASAM.


def _np_asam_gradient(g1, params, r, eta, eps=1e-12):
  """Kwon et al. (2021): grad L(w + r T^2 g / ||T g||), T = |w| + eta, in float64 NumPy."""
  g1 = jax.tree.map(lambda x: np.asarray(x, np.float64), g1)
  params = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  t = jax.tree.map(lambda w: np.abs(w) + eta, params)
  leaves = zip(jax.tree.leaves(t), jax.tree.leaves(g1), strict=True)
  norm = np.sqrt(sum(np.sum((a * b) ** 2) for a, b in leaves))
  perturbed = jax.tree.map(lambda w, a, g: w + r * a**2 * g / (norm + eps), params, t, g1)
  return _np_grad(perturbed)


@pytest.mark.parametrize("eta", [0.01, 0.5])
def test_adaptive_alpha_one_is_asam(eta):
  params = _params()
  grads = jax.tree.map(lambda x: 2.0 * x + 0.5, params)
  opt = gnreg.gnp(r=0.3, alpha=1.0, adaptive=True, adaptive_eta=eta)
  updates, _ = jax.jit(lambda g, s, p: opt.update(g, s, p, grad_fn=_grad))(
    grads, opt.init(params), params
  )
  _assert_tree_close(updates, _np_asam_gradient(grads, params, 0.3, eta))
  # And not SAM's perturbation.
  sam = _np_gnp(grads, params, 0.3, 1.0)
  assert not np.allclose(jax.tree.leaves(updates)[0], jax.tree.leaves(sam)[0], rtol=1e-3)


def test_adaptive_mixes_like_gnp():
  params = _params()
  grads = jax.tree.map(lambda x: 2.0 * x + 0.5, params)
  opt = gnreg.gnp(r=0.3, alpha=0.4, adaptive=True, normalize_base_grad=True)
  updates, _ = opt.update(grads, opt.init(params), params, grad_fn=_grad)
  unit = _np_gnp(grads, params, 0.3, 0.0, normalize_base_grad=True)
  asam = _np_asam_gradient(grads, params, 0.3, 0.01)
  _assert_tree_close(updates, jax.tree.map(lambda b, h: 0.6 * b + 0.4 * h, unit, asam))


@pytest.mark.parametrize("sync", [False, True])
def test_a_tuple_of_axes_averages_over_devices_and_their_groups(sync):
  # Batch groups inside devices: vmap over 'group' inside vmap over 'data' stands for the
  # shard_map of the trainer; the mean over both axes equals the mean over all 6 groups.
  params = {"w": jnp.array([[0.3, -0.2], [0.1, 0.4]]), "b": jnp.array([0.05, -0.1])}
  shifts = jnp.linspace(-0.5, 0.5, 6).reshape(2, 3)

  def group_loss(p, shift):
    return jnp.sum(jnp.tanh(p["w"] + shift) ** 2) + jnp.sum((p["b"] - shift) ** 2)

  def per_group(axis_name, shift, sync_perturbation=False):
    opt = gnreg.gnp(0.2, 0.7, axis_name=axis_name, sync_perturbation=sync_perturbation)
    grad_fn = lambda p: jax.grad(group_loss)(p, shift)
    return opt.update(grad_fn(params), opt.init(params), params, grad_fn=grad_fn)[0]

  both = lambda s: per_group(("data", "group"), s, sync)
  averaged = jax.jit(jax.vmap(jax.vmap(both, axis_name="group"), axis_name="data"))(shifts)
  if sync:  # One perturbation from the mean gradient; the mean of the perturbed gradients.
    mean_loss = lambda p: jnp.mean(jax.vmap(lambda s: group_loss(p, s))(shifts.reshape(-1)))
    opt = gnreg.gnp(0.2, 0.7)
    want = opt.update(
      jax.grad(mean_loss)(params), opt.init(params), params, grad_fn=jax.grad(mean_loss)
    )[0]
  else:
    alone = [per_group(None, s) for s in shifts.reshape(-1)]
    want = jax.tree.map(lambda *u: np.mean(np.stack(u), axis=0), *alone)
  for k in want:
    for i in range(2):
      for j in range(3):
        np.testing.assert_allclose(averaged[k][i, j], want[k], rtol=1e-5, atol=1e-7)
