"""Tests for gnreg.pid_lr against a plain-Python transcription of its control law."""

from __future__ import annotations

import functools
import math

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gnreg

TINY = float(np.finfo(np.float32).tiny)
PARAMS = {"a": jnp.zeros(3), "b": {"c": jnp.zeros((2, 2))}}
# A fixed unit-norm direction with the structure of PARAMS; gradient t is norms[t] * UNIT.
_DIRECTION = {"a": jnp.array([1.0, -2.0, 0.5]), "b": {"c": jnp.array([[0.3, 1.0], [-1.5, 2.0]])}}
UNIT = jax.tree.map(lambda x: x / optax.tree.norm(_DIRECTION), _DIRECTION)
DEFAULTS = dict(
  target_norm=1.0,
  kp=1.0,
  ki=0.0,
  kd=0.0,
  min_lr=1e-6,
  max_lr=1e-2,
  smoothing=0.9,
  integral_limit=None,
)


def _exp(x: float) -> float:
  return math.exp(min(x, 700.0))  # beyond that the result is clipped to max_lr anyway


def reference(norms, *, lr0, target_norm, kp, ki, kd, min_lr, max_lr, smoothing, integral_limit):
  """The documented law, step by step; returns per step (lr, integral, held, near_tie)."""
  m = integral = prev_error = 0.0
  t = 0
  lr = min(max(lr0, min_lr), max_lr)
  out = []
  for n in norms:
    if not math.isfinite(n):
      out.append((lr, integral, False, False))
      continue
    t += 1
    m = smoothing * m + (1 - smoothing) * n
    mhat = m / (1 - smoothing**t)
    e = math.log(target_norm) - math.log(max(mhat, TINY))
    d = 0.0 if t == 1 else e - prev_error
    candidate = integral + e
    if integral_limit is not None:
      candidate = min(max(candidate, -integral_limit), integral_limit)
    lr_candidate = lr0 * _exp(kp * e + ki * candidate + kd * d)
    held = (lr_candidate > max_lr and e > 0) or (lr_candidate < min_lr and e < 0)
    # float32 cannot decide these comparisons the way float64 does when they are this close.
    near_tie = (
      min(abs(math.log(lr_candidate / max_lr)), abs(math.log(lr_candidate / min_lr))) < 1e-4
    )
    near_tie = near_tie or abs(e) < 1e-5
    if not held:
      integral = candidate
    lr = min(max(lr0 * _exp(kp * e + ki * integral + kd * d), min_lr), max_lr)
    prev_error = e
    out.append((lr, integral, held, near_tie))
  return out


def sgd(lr0: float) -> optax.GradientTransformationExtraArgs:
  return optax.inject_hyperparams(optax.sgd)(learning_rate=lr0)


def _grads(norms):
  norms = jnp.asarray(norms, jnp.float32)
  return jax.tree.map(lambda u: norms.reshape((-1,) + (1,) * u.ndim) * u, UNIT)


@functools.partial(jax.jit, static_argnums=0)
def _scan(tx, state, grads):
  def step(state, g):
    updates, state = tx.update(g, state, PARAMS)
    pid = state if isinstance(state, gnreg.PIDState) else state.inner_state
    return state, (pid.lr, pid.integral, updates)

  return jax.lax.scan(step, state, grads)


def run(tx, norms, state=None):
  """Feeds gradients with the given norms; returns (final state, lrs, integrals, updates)."""
  state = tx.init(PARAMS) if state is None else state
  state, (lrs, integrals, updates) = _scan(tx, state, _grads(norms))
  return state, np.asarray(lrs), np.asarray(integrals), updates


def check_against_reference(norms, lr0, **kwargs):
  config = {**DEFAULTS, **kwargs}
  ref = reference(norms, lr0=lr0, **config)
  _, lrs, integrals, updates = run(gnreg.pid_lr(sgd(lr0), **config), norms)
  np.testing.assert_allclose(lrs, [r[0] for r in ref], rtol=1e-4)
  np.testing.assert_allclose(integrals, [r[1] for r in ref], rtol=1e-4, atol=1e-4)
  # lr_t is used for step t's own update: sgd gives -lr_t * g_t.
  expected = jax.tree.map(lambda g: -lrs.reshape((-1,) + (1,) * (g.ndim - 1)) * g, _grads(norms))
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-12), updates, expected
  )
  return ref


MIXED = [0.5, 2.0, 3.0, 0.2, 1.5, 1.0, 0.1, 5.0, 0.8, 1.2, 0.05, 7.0]


def test_proportional_only_matches_reference():
  check_against_reference(MIXED, lr0=1e-3)


def test_full_pid_matches_reference():
  check_against_reference(MIXED, lr0=2e-3, kp=0.7, ki=0.3, kd=0.5, smoothing=0.5, target_norm=0.8)


def test_no_smoothing_uses_raw_norm():
  ref = check_against_reference(MIXED, lr0=1e-3, kp=0.5, smoothing=0.0)
  # With smoothing = 0 and kp only, lr_t = lr0 * (target / n_t) ** kp, clipped.
  expected = [min(max(1e-3 * n**-0.5, 1e-6), 1e-2) for n in MIXED]
  np.testing.assert_allclose([r[0] for r in ref], expected, rtol=1e-12)


def test_anti_windup_holds_integral_at_both_bounds():
  # Small norms push the rate to max_lr, then large ones to min_lr.
  norms = [0.5] * 14 + [3.0] * 20
  ref = check_against_reference(
    norms, lr0=1e-3, kp=0.5, ki=0.3, min_lr=1e-4, max_lr=1e-2, smoothing=0.0
  )
  held = [r[2] for r in ref]
  assert any(held[:14]) and any(held[14:])  # the cases this test is about really occur
  assert not any(r[3] for r in ref)
  # While held, the integral does not move.
  for i in range(1, len(ref)):
    if held[i]:
      assert ref[i][1] == ref[i - 1][1]


def test_integral_limit_clips_integral():
  norms = [0.3] * 10 + [4.0] * 10
  ref = check_against_reference(
    norms, lr0=1e-4, kp=0.2, ki=0.3, max_lr=1.0, integral_limit=1.0, smoothing=0.5
  )
  integrals = [r[1] for r in ref]
  assert max(integrals) == 1.0 and min(integrals) == -1.0  # the limit was reached both ways


_INJECTED = {
  # A number for smoothing (its default, None, is not one), so that it is injected too.
  without_limit: optax.inject_hyperparams(gnreg.pid_lr)(
    sgd(1e-3),
    min_lr=1e-5,
    max_lr=1e-1,
    smoothing=0.9,
    integral_limit=None if without_limit else 1.0,
  )
  for without_limit in (True, False)
}


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
  log_norms=st.lists(st.floats(-4.0, 4.0), min_size=12, max_size=12),
  kp=st.floats(0.0, 2.0),
  ki=st.floats(0.0, 1.0),
  kd=st.floats(0.0, 1.0),
  smoothing=st.sampled_from([0.0, 0.5, 0.9]),
  log_target=st.floats(-2.0, 2.0),
  limit=st.one_of(st.none(), st.floats(0.1, 5.0)),
)
def test_random_trajectories_match_reference(log_norms, kp, ki, kd, smoothing, log_target, limit):
  norms = [math.exp(x) for x in log_norms]
  config = dict(
    target_norm=math.exp(log_target),
    kp=kp,
    ki=ki,
    kd=kd,
    min_lr=1e-5,
    max_lr=1e-1,
    smoothing=smoothing,
    integral_limit=limit,
  )
  ref = reference(norms, lr0=1e-3, **config)
  hypothesis.assume(not any(r[3] for r in ref))
  # The gains go in as injected hyperparameters, so one compilation serves every example.
  tx = _INJECTED[limit is None]
  state = tx.init(PARAMS)
  dynamic = {k: jnp.float32(v) for k, v in config.items() if k in state.hyperparams}
  state = state._replace(hyperparams={**state.hyperparams, **dynamic})
  _, lrs, _, _ = run(tx, norms, state)
  np.testing.assert_allclose(lrs, [r[0] for r in ref], rtol=2e-4)


@pytest.mark.parametrize("exponent", [0.5, 1.0])
def test_closed_loop_settles_near_target(exponent):
  """A plant whose gradient norm grows with the learning rate: n = c * lr**p * (1 +- 5%)."""
  target, min_lr, max_lr, lr0 = 1.0, 1e-6, 1e-2, 1e-4
  c = target / 2.5e-3**exponent  # the target is reached at lr = 2.5e-3
  tx = gnreg.pid_lr(
    sgd(lr0), target_norm=target, kp=0.5, ki=0.1, min_lr=min_lr, max_lr=max_lr, smoothing=0.9
  )
  params = {"w": jnp.zeros(5)}

  @jax.jit
  def simulate(key):
    def step(state, key):
      k1, k2 = jax.random.split(key)
      norm = c * state.lr**exponent * (1 + 0.05 * jax.random.uniform(k1, minval=-1, maxval=1))
      direction = jax.random.normal(k2, (5,))
      g = {"w": norm * direction / jnp.linalg.norm(direction)}
      _, state = tx.update(g, state, params)
      mhat = state.smoothed_norm / (1 - 0.9 ** state.count.astype(jnp.float32))
      return state, (state.lr, mhat)

    return jax.lax.scan(step, tx.init(params), jax.random.split(key, 300))[1]

  lrs, mhat = map(np.asarray, simulate(jax.random.key(0)))
  assert np.all(lrs >= np.float32(min_lr)) and np.all(lrs <= np.float32(max_lr))
  np.testing.assert_allclose(mhat[-50:], target, rtol=0.1)
  assert mhat[0] < 0.5 * target  # it did start far from the target


def test_non_finite_gradients_leave_state_unchanged():
  tx = gnreg.pid_lr(sgd(1e-3), ki=0.2, kd=0.3)
  state, *_ = run(tx, [0.5, 2.0, 1.5])
  for bad in (math.nan, math.inf):
    new_state, lrs, _, _ = run(tx, [bad], state)
    # The controller is untouched; the inner optimizer still ran (its own count moved on).
    controller = lambda s: s._replace(inner_state=None)
    jax.tree.map(np.testing.assert_array_equal, controller(new_state), controller(state))
    assert lrs[0] == state.lr
    lr_of = lambda s: optax.tree_utils.tree_get(s.inner_state, "learning_rate")
    assert lr_of(new_state) == lr_of(state) == state.lr
  # A trajectory with non-finite steps equals the one without them.
  config = dict(ki=0.2, kd=0.3, smoothing=0.5)
  norms = [0.5, math.nan, 2.0, math.inf, 1.5, math.nan, 0.3]
  check_against_reference(norms, lr0=1e-3, **config)
  _, with_bad, _, _ = run(gnreg.pid_lr(sgd(1e-3), **config), norms)
  _, without, _, _ = run(gnreg.pid_lr(sgd(1e-3), **config), [n for n in norms if math.isfinite(n)])
  np.testing.assert_array_equal(with_bad[[0, 2, 4, 6]], without)


def test_zero_gradient_gives_finite_state():
  tx = gnreg.pid_lr(sgd(1e-3), kp=2.0, ki=0.5, kd=0.5, smoothing=0.0)
  state, lrs, _, _ = run(tx, [0.0, 0.0, 1.0, 0.0])
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))
  assert lrs[0] == np.float32(1e-2)  # a zero norm is far below target: the rate goes to max_lr
  check_against_reference([0.0, 0.0, 1.0, 0.0], lr0=1e-3, kp=2.0, ki=0.5, kd=0.5, smoothing=0.0)


def test_initial_rate_is_clipped_into_bounds():
  state = gnreg.pid_lr(sgd(0.5), max_lr=1e-2).init(PARAMS)
  assert state.lr == np.float32(1e-2) and state.base_lr == np.float32(0.5)
  assert optax.tree_utils.tree_get(state.inner_state, "learning_rate") == np.float32(1e-2)


def test_state_fields_after_a_step():
  tx = gnreg.pid_lr(sgd(1e-3), target_norm=2.0, smoothing=0.5)
  state, *_ = run(tx, [4.0])
  assert int(state.count) == 1
  np.testing.assert_allclose(state.grad_norm, 4.0, rtol=1e-6)
  np.testing.assert_allclose(state.smoothed_norm, 2.0, rtol=1e-6)  # (1 - 0.5) * 4
  np.testing.assert_allclose(state.error, math.log(2.0) - math.log(4.0), rtol=1e-6)
  np.testing.assert_allclose(state.lr, 1e-3 * 0.5, rtol=1e-6)
  assert optax.tree_utils.tree_get(state.inner_state, "learning_rate") == state.lr


def test_optimizer_inside_a_chain():
  inner = optax.chain(optax.identity(), optax.chain(sgd(1e-3), optax.scale(0.5)))
  tx = gnreg.pid_lr(inner, kp=1.0, smoothing=0.0)
  g = jax.tree.map(lambda u: 4.0 * u, UNIT)
  updates, state = tx.update(g, tx.init(PARAMS), PARAMS)
  np.testing.assert_allclose(state.lr, 1e-3 / 4.0, rtol=1e-6)
  jax.tree.map(
    lambda u, g: np.testing.assert_allclose(u, -0.5 * state.lr * g, rtol=1e-6), updates, g
  )
  assert optax.tree_utils.tree_get(state.inner_state, "learning_rate") == state.lr


def test_extra_args_reach_the_inner_optimizer():
  def scale_by_loss() -> optax.GradientTransformationExtraArgs:
    def update(updates, state, params=None, *, loss):
      return jax.tree.map(lambda u: loss * u, updates), state

    return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)

  tx = gnreg.pid_lr(optax.chain(sgd(1e-3), scale_by_loss()), smoothing=0.0)
  g = jax.tree.map(lambda u: 1.0 * u, UNIT)
  updates, state = tx.update(g, tx.init(PARAMS), PARAMS, loss=3.0)
  jax.tree.map(lambda u, g: np.testing.assert_allclose(u, -3.0 * 1e-3 * g, rtol=1e-6), updates, g)


def test_optimizer_without_injected_learning_rate():
  with pytest.raises(ValueError, match="no injected learning_rate"):
    gnreg.pid_lr(optax.sgd(0.1)).init(PARAMS)
  with pytest.raises(ValueError, match="no injected learning_rate"):
    gnreg.pid_lr(optax.inject_hyperparams(optax.scale_by_adam)(b1=0.9)).init(PARAMS)


@pytest.mark.parametrize("lr0", [0.0, -0.1, math.inf])
def test_injected_learning_rate_must_be_a_positive_lr0(lr0):
  with pytest.raises(ValueError, match=rf"learning_rate \(lr_0.*> 0, got {lr0}"):
    gnreg.pid_lr(sgd(lr0)).init(PARAMS)


def test_scheduled_or_repeated_learning_rate_is_refused():
  scheduled = optax.inject_hyperparams(optax.sgd)(learning_rate=optax.linear_schedule(0.1, 0.0, 10))
  with pytest.raises(ValueError, match="schedule"):
    gnreg.pid_lr(scheduled).init(PARAMS)
  with pytest.raises(ValueError, match="exactly one"):
    gnreg.pid_lr(optax.chain(sgd(0.1), sgd(0.2))).init(PARAMS)


@pytest.mark.parametrize(
  ("kwargs", "message"),
  [
    (dict(target_norm=0.0), r"pid_lr: target_norm must be finite and > 0, got 0.0"),
    (dict(target_norm=math.nan), r"pid_lr: target_norm must be finite and > 0, got nan"),
    (dict(min_lr=0.0), r"pid_lr: min_lr must be a learning rate, finite and > 0, got 0.0"),
    (dict(max_lr=-1.0), r"pid_lr: max_lr must be a learning rate, finite and > 0, got -1.0"),
    (dict(law="exp"), r"pid_lr: law must be one of \('log', 'linear'\), got 'exp'"),
    (dict(min_lr=0.1, max_lr=0.01), r"pid_lr: min_lr \(0.1\) must be <= max_lr \(0.01\)"),
    (dict(smoothing=1.0), r"pid_lr: smoothing must be in \[0, 1\), got 1.0"),
    (dict(smoothing=-0.1), r"pid_lr: smoothing must be in \[0, 1\), got -0.1"),
    (dict(kp=-1.0), r"pid_lr: kp must be finite and >= 0, got -1.0"),
    (dict(ki=-0.5), r"pid_lr: ki must be finite and >= 0, got -0.5"),
    (dict(kd=math.inf), r"pid_lr: kd must be finite and >= 0, got inf"),
    (dict(integral_limit=0.0), r"pid_lr: integral_limit must be > 0 or None, got 0.0"),
  ],
)
def test_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=f"^{message}$"):
    gnreg.pid_lr(sgd(1e-3), **kwargs)


def test_huge_gradient_gives_finite_rate_even_without_proportional_gain():
  # 1e19 is about the largest norm whose square still fits in float32.
  tx = gnreg.pid_lr(sgd(1e-3), kp=0.0, ki=0.5, kd=0.5, smoothing=0.0)
  state, lrs, _, _ = run(tx, [1.0, 1e19])
  assert np.all(np.isfinite(lrs)) and lrs[-1] == np.float32(1e-6)
  assert np.isfinite(float(state.error)) and np.isfinite(float(state.integral))


class GradientNormRegulator:
  """The reference's law, transcribed from its published code: the output is the rate."""

  def __init__(self, kp, ki, kd, target_grad_norm, min_lr, max_lr):
    self.kp, self.ki, self.kd = kp, ki, kd
    self.target, self.min_lr, self.max_lr = target_grad_norm, min_lr, max_lr
    self.integral = self.prev_error = 0.0
    self.steps = 0

  def update(self, grad_norm):
    error = self.target - grad_norm
    self.integral += error
    derivative = 0.0 if self.steps == 0 else error - self.prev_error
    self.steps += 1
    self.prev_error = error
    lr = self.kp * error + self.ki * self.integral + self.kd * derivative
    return min(max(lr, self.min_lr), self.max_lr)


LINEAR_GAINS = dict(kp=0.004, ki=0.001, kd=0.002, min_lr=1e-6, max_lr=1e-2)


@pytest.mark.parametrize("target", [1.0, 3.0])
def test_linear_law_matches_the_gradient_norm_regulator(target):
  regulator = GradientNormRegulator(target_grad_norm=target, **LINEAR_GAINS)
  reference_lrs = [regulator.update(n) for n in MIXED]
  # The default smoothing of the linear law is the reference's: none.
  tx = gnreg.pid_lr(sgd(1e-3), target_norm=target, law="linear", **LINEAR_GAINS)
  _, lrs, integrals, updates = run(tx, MIXED)
  np.testing.assert_allclose(lrs, reference_lrs, rtol=1e-4)
  np.testing.assert_allclose(integrals, np.cumsum([target - n for n in MIXED]), rtol=1e-5)
  # Both cases of the clip occur: pinned at min_lr and strictly inside the bounds.
  inside = [1e-6 < lr < 1e-2 for lr in reference_lrs]
  assert any(inside) and not all(inside) and min(reference_lrs) == 1e-6
  expected = jax.tree.map(lambda g: -lrs.reshape((-1,) + (1,) * (g.ndim - 1)) * g, _grads(MIXED))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4), updates, expected)


def test_linear_law_smooths_and_skips_like_the_log_law():
  """With smoothing the error is target - mhat_t; a non-finite norm changes nothing."""
  norms = [0.5, math.nan, 2.0, 1.5, math.inf, 0.3, 0.8]
  tx = gnreg.pid_lr(sgd(1e-3), target_norm=1.0, smoothing=0.5, law="linear", **LINEAR_GAINS)
  _, lrs, _, _ = run(tx, norms)
  m, t, lr, integral, prev, expected = 0.0, 0, 1e-3, 0.0, 0.0, []
  for n in norms:
    if math.isfinite(n):
      t += 1
      m = 0.5 * m + 0.5 * n
      e = 1.0 - m / (1 - 0.5**t)
      integral += e
      u = 0.004 * e + 0.001 * integral + 0.002 * (0.0 if t == 1 else e - prev)
      lr, prev = min(max(u, 1e-6), 1e-2), e
    expected.append(lr)
  np.testing.assert_allclose(lrs, expected, rtol=1e-4)


def test_linear_law_survives_huge_and_zero_gradients():
  tx = gnreg.pid_lr(sgd(1e-3), kp=2.0, ki=2.0, kd=2.0, smoothing=0.0, law="linear")
  state, lrs, _, _ = run(tx, [1e19, 1e19, 0.0, 1e19])
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))
  np.testing.assert_array_equal(lrs, np.float32([1e-6, 1e-6, 1e-6, 1e-6]))
