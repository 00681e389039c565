"""Tests for gnreg.schedules, each against its formula written out in plain Python."""

from __future__ import annotations

import math

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gnreg import schedules

STEPS = [0, 1, 5, 9, 10, 11, 19, 20, 21, 37, 99, 100, 101, 250]


def check(schedule, formula, steps=STEPS, rtol=1e-6):
  np.testing.assert_allclose(
    [float(schedule(s)) for s in steps], [formula(s) for s in steps], rtol=rtol, atol=1e-12
  )
  # The same values from a jitted int32 step counter, as inside an optimizer.
  jitted = jax.jit(schedule)
  np.testing.assert_allclose(
    [float(jitted(jnp.int32(s))) for s in steps], [formula(s) for s in steps], rtol=rtol, atol=1e-12
  )


def test_multistep_decay():
  check(
    schedules.multistep_decay(0.4, boundaries=[10, 100], gamma=0.2),
    lambda s: 0.4 * 0.2 ** sum(s >= b for b in (10, 100)),
  )


@pytest.mark.parametrize("staircase", [False, True])
def test_exponential_decay(staircase):
  exponent = (lambda s: s // 20) if staircase else (lambda s: s / 20)
  check(
    schedules.exponential_decay(0.3, decay_rate=0.9, decay_steps=20, staircase=staircase),
    lambda s: 0.3 * 0.9 ** exponent(s),
    rtol=1e-5,
  )


@pytest.mark.parametrize("warmup", [0, 10])
def test_warmup_cosine(warmup):
  total, peak, init, end = 200, 0.5, 0.01, 0.001

  def formula(s):
    if s < warmup:
      return init + (peak - init) * s / warmup
    frac = min(s - warmup, total - warmup) / (total - warmup)
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * frac))

  sched = schedules.warmup_cosine(
    peak, total_steps=total, warmup_steps=warmup, init_value=init, end_value=end
  )
  check(sched, formula, steps=STEPS + [199, 200, 300], rtol=1e-5)


@pytest.mark.parametrize("warmup_epochs", [0, 2])
def test_sam_exponential_matches_the_sam_code(warmup_epochs):
  """Against google-research/sam's per-epoch formula, with its default 1.2% end ratio."""
  base_lr, steps_per_epoch, num_epochs = 0.1, 10, 20
  lamba = -num_epochs / math.log(0.012)

  def sam_code(step):
    t = step / steps_per_epoch
    warm = min(t / warmup_epochs, 1) if warmup_epochs else 1.0
    return base_lr * math.exp(-t / lamba) * warm

  sched = schedules.sam_exponential(
    base_lr,
    total_steps=steps_per_epoch * num_epochs,
    warmup_steps=warmup_epochs * steps_per_epoch,
  )
  check(sched, sam_code, rtol=1e-5)
  np.testing.assert_allclose(sched(num_epochs * steps_per_epoch), 0.012 * base_lr, rtol=1e-5)


def cyclic_reference(step, base_lr, max_lr, step_size, mode, gamma):
  cycle = math.floor(1 + step / (2 * step_size))
  x = abs(step / step_size - 2 * cycle + 1)
  scale = {"triangular": 1.0, "triangular2": 1 / 2 ** (cycle - 1), "exp_range": gamma**step}[mode]
  return base_lr + (max_lr - base_lr) * max(0.0, 1 - x) * scale


@pytest.mark.parametrize("mode", ["triangular", "triangular2", "exp_range"])
@pytest.mark.parametrize("step_size", [1, 4, 7])
def test_cyclic_modes(mode, step_size):
  args = dict(base_lr=0.001, max_lr=0.006, step_size=step_size, mode=mode, gamma=0.99)
  check(
    schedules.cyclic(**args),
    lambda s: cyclic_reference(s, **args),
    steps=range(0, 60),
    rtol=1e-5,
  )


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
  step=st.integers(0, 100_000),
  step_size=st.integers(1, 5000),
  mode=st.sampled_from(["triangular", "triangular2", "exp_range"]),
  gamma=st.floats(0.99, 1.0),
)
def test_cyclic_any_step(step, step_size, mode, gamma):
  args = dict(base_lr=0.01, max_lr=0.1, step_size=step_size, mode=mode, gamma=gamma)
  np.testing.assert_allclose(
    float(schedules.cyclic(**args)(step)), cyclic_reference(step, **args), rtol=1e-4, atol=1e-9
  )


def test_cyclic_shape():
  sched = schedules.cyclic(0.1, 1.0, step_size=10)
  assert float(sched(0)) == pytest.approx(0.1)
  assert float(sched(10)) == pytest.approx(1.0)
  assert float(sched(20)) == pytest.approx(0.1)
  assert float(sched(5)) == pytest.approx(0.55)


def test_schedules_drive_an_optimizer():
  tx = optax.sgd(schedules.cyclic(0.0, 1.0, step_size=2))
  params = jnp.zeros(1)
  state = tx.init(params)
  steps = []
  for _ in range(5):
    updates, state = tx.update(jnp.ones(1), state)
    steps.append(float(-updates[0]))
  np.testing.assert_allclose(steps, [0.0, 0.5, 1.0, 0.5, 0.0])


def test_numpy_scalars_are_numbers():
  schedule = schedules.cyclic(np.float32(0.01), np.float64(0.1), np.int64(10))
  assert float(schedule(10)) == pytest.approx(0.1)


@pytest.mark.parametrize(
  ("make", "message"),
  [
    (
      lambda: schedules.multistep_decay(0.1, [10, 5]),
      r"multistep_decay: boundaries must be strictly increasing ints > 0, got \[10, 5\]",
    ),
    (
      lambda: schedules.exponential_decay(0.1, decay_rate=1.5),
      r"exponential_decay: decay_rate must be in \(0, 1\], got 1.5",
    ),
    (
      lambda: schedules.exponential_decay(0.1, 0.9, decay_steps=2.5),
      r"exponential_decay: decay_steps must be an int > 0, got 2.5",
    ),
    (
      lambda: schedules.warmup_cosine(0.1, total_steps=10, warmup_steps=10),
      r"warmup_cosine: warmup_steps must be < total_steps \(10\), got 10",
    ),
    (lambda: schedules.warmup_cosine(0.0, 10), r"warmup_cosine: peak_value must be a finite"),
    (
      lambda: schedules.sam_exponential(0.1, 100, end_lr_ratio=0.0),
      r"sam_exponential: end_lr_ratio must be in \(0, 1\], got 0.0",
    ),
    (lambda: schedules.sam_exponential(0.1, 100, -1), r"sam_exponential: warmup_steps must be"),
    (
      lambda: schedules.cyclic(0.1, 0.01, 10),
      r"cyclic: max_lr must be a finite number >= base_lr \(0.1\), got 0.01",
    ),
    (lambda: schedules.cyclic(0.01, 0.1, 0), r"cyclic: step_size must be an int > 0, got 0"),
    (lambda: schedules.cyclic(0.01, 0.1, 10, mode="sine"), r"cyclic: mode must be one of"),
    (
      lambda: schedules.cyclic(0.01, 0.1, 10, "exp_range", gamma=0.0),
      r"cyclic: gamma must be in \(0, 1\], got 0.0",
    ),
  ],
)
def test_bad_arguments(make, message):
  with pytest.raises(ValueError, match=message):
    make()
