"""gnp, agc, pid_lr, monitor_clipping and monitor_updates composed with optax's machinery.

Each transform runs jitted, inside an ``optax.chain`` inside ``optax.MultiSteps`` or
``optax.apply_if_finite``, on a nested tree of mixed shapes in float32 and bfloat16,
and is compared with the bare transform run eagerly; agc also runs under
``optax.inject_hyperparams`` (pid_lr's injected form is exercised in test_pid.py).
Its state, wrapped in apply_if_finite, survives an orbax save/restore.

The transforms that call ``grad_fn`` (gnp, looksam, gsam, exact_gnp) cannot sit inside
``MultiSteps``, ``masked`` or ``multi_transform``: they refuse in one line, and the
compositions each refusal names instead are checked here to compute what they promise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import gnreg


def _sgd() -> optax.GradientTransformation:
  return optax.inject_hyperparams(optax.sgd)(learning_rate=1e-3, momentum=0.9)


def _gnp_on_a_quadratic(**kwargs) -> optax.GradientTransformationExtraArgs:
  """gnp whose grad_fn is the gradient of 0.5 * ||p||^2 (that is, p): it runs where the others
  run, without a grad_fn from the caller."""
  inner = gnreg.gnp(r=0.05, alpha=0.5, **kwargs)

  def update(updates, state, params=None, **extra_args):
    return inner.update(updates, state, params, grad_fn=lambda p: p)

  return optax.GradientTransformationExtraArgs(inner.init, update)


TRANSFORMS = {
  "gnp": _gnp_on_a_quadratic,
  "gnp_hybrid": lambda: _gnp_on_a_quadratic(probability=0.5, normalize_base_grad=True),
  "agc": lambda: gnreg.agc(clipping=0.01, exclude="head/*"),
  "agc_injected": lambda: optax.inject_hyperparams(gnreg.agc)(clipping=0.01, exclude="head/*"),
  "pid_lr": lambda: gnreg.pid_lr(_sgd(), kp=0.5, ki=0.1, kd=0.1),
  "monitor_clipping": lambda: gnreg.monitor_clipping(optax.clip_by_global_norm(1.0)),
  "monitor_clipping_agc": lambda: gnreg.monitor_clipping(gnreg.agc(clipping=0.01)),
  "monitor_updates": gnreg.monitor_updates,
}

SHAPES = {
  "conv": {"kernel": (3, 3, 2, 4), "bias": (4,)},
  "blocks": [{"kernel": (8, 5)}, {"kernel": (5, 5), "scale": ()}],
  "head": {"kernel": (5, 3), "bias": (3,)},
}


# Test data and checks use numpy: eager jax ops would compile once per shape and dtype.
def _tree(seed, dtype, scale):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda s: jnp.asarray(scale * rng.standard_normal(s), dtype),
    SHAPES,
    is_leaf=lambda x: isinstance(x, tuple),
  )


def _params(dtype):
  return _tree(0, dtype, 0.3)


def _grads(step, dtype):
  return _tree(step + 1, dtype, 0.5 * (step + 1))


def _signature(tree):
  return jax.tree.structure(tree), [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]


def _assert_close(actual, expected, dtype, name=""):
  rtol = 1e-5 if dtype == jnp.float32 else 2e-2
  # gnp rounds its perturbed parameters (~0.3 here) to bfloat16: its output carries an absolute
  # error of about alpha * ulp(0.3) = 0.5 * 2**-9, jitted or not, whatever the output's size.
  atol = 2e-3 if name.startswith("gnp") and dtype == jnp.bfloat16 else 1e-7
  assert _signature(actual) == _signature(expected)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(
      np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=rtol, atol=atol
    ),
    actual,
    expected,
  )


def _finite(tree) -> bool:
  return all(np.isfinite(np.asarray(x, np.float32)).all() for x in jax.tree.leaves(tree))


def _zero(tree) -> bool:
  return all((np.asarray(x, np.float32) == 0).all() for x in jax.tree.leaves(tree))


def _eager(name, grads_seq, params):
  """The bare transform, eagerly, on a sequence of gradients: its list of updates."""
  tx = TRANSFORMS[name]()
  state = tx.init(params)
  out = []
  for g in grads_seq:
    updates, state = tx.update(g, state, params)
    out.append(updates)
  return out


DTYPES = [jnp.float32, jnp.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
@pytest.mark.parametrize("name", [n for n in TRANSFORMS if not n.startswith("gnp")])
def test_multi_steps(name, dtype):
  params = _params(dtype)
  tx = optax.MultiSteps(optax.chain(optax.identity(), TRANSFORMS[name]()), every_k_schedule=2)
  state = tx.init(params)
  init_signature = _signature(state)
  step = jax.jit(tx.update)
  g0, g1 = _grads(0, dtype), _grads(1, dtype)
  first, state = step(g0, state, params)
  assert _zero(first)
  second, state = step(g1, state, params)
  assert _signature(state) == init_signature and _finite(second)
  # MultiSteps hands the inner transform the mean of the two gradients, in its
  # accumulator's dtype.
  mean = jax.tree.map(
    lambda a, b, acc: jnp.asarray(
      (np.asarray(a, np.float32) + np.asarray(b, np.float32)) / 2, acc.dtype
    ),
    g0,
    g1,
    state.acc_grads,
  )
  (want,) = _eager(name, [mean], params)
  _assert_close(second, jax.tree.map(lambda w, s: w.astype(s.dtype), want, second), dtype, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
@pytest.mark.parametrize("name", TRANSFORMS)
def test_apply_if_finite_and_orbax_round_trip(name, dtype, tmp_path):
  params = _params(dtype)
  tx = optax.apply_if_finite(
    optax.chain(TRANSFORMS[name](), optax.scale(1.0)), max_consecutive_errors=3
  )
  state = tx.init(params)
  init_signature = _signature(state)
  step = jax.jit(tx.update)
  g0, g2 = _grads(0, dtype), _grads(2, dtype)
  bad = jax.tree.map(
    lambda g: np.where(np.arange(g.size).reshape(g.shape) == 0, np.nan, g), _grads(1, dtype)
  )
  bad = jax.tree.map(lambda g: jnp.asarray(g, dtype), bad)
  want0, want2 = _eager(name, [g0, g2], params)
  u0, state = step(g0, state, params)
  _assert_close(u0, want0, dtype, name)
  inner_before = state.inner_state
  u1, state = step(bad, state, params)
  assert _zero(u1)
  jax.tree.map(np.testing.assert_array_equal, state.inner_state, inner_before)
  u2, state = step(g2, state, params)
  _assert_close(u2, want2, dtype, name)
  assert _signature(state) == init_signature and _finite(u2)

  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "state", state)
  checkpointer.wait_until_finished()
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  restored = checkpointer.restore(tmp_path / "state", abstract)
  checkpointer.close()
  assert _signature(restored) == _signature(state)
  jax.tree.map(np.testing.assert_array_equal, restored, state)
  assert gnreg.metrics(restored) == gnreg.metrics(state)
  # Training goes on from the restored state exactly as from the original.
  g3 = _grads(3, dtype)
  jax.tree.map(np.testing.assert_array_equal, step(g3, restored, params), step(g3, state, params))


# ---------------------------------------------------------------------------------------------
# The transforms that call grad_fn, in optax's wrappers.

# A 4-parameter tanh model and two micro-batches of 4 examples.
_RNG = np.random.default_rng(7)
_MICRO_BATCHES = [
  (
    jnp.asarray(_RNG.normal(size=(4, 3)), jnp.float32),
    jnp.asarray(_RNG.normal(size=4), jnp.float32),
  )
  for _ in range(2)
]
_MODEL_PARAMS = {
  "w": jnp.asarray([0.8, -0.5, 0.3], jnp.float32),
  "b": jnp.asarray(0.2, jnp.float32),
}


def _model_loss(params, batch):
  x, y = batch
  return jnp.mean((jnp.tanh(x @ params["w"] + params["b"]) - y) ** 2)


def _model_grad_fn(batch):
  return lambda p: jax.grad(_model_loss)(p, batch)


PENALTIES = {
  "gnp": lambda: gnreg.gnp(r=0.5, alpha=0.7),
  "looksam": lambda: gnreg.looksam(r=0.5, alpha=1.0, k=2),
  "gsam": lambda: gnreg.gsam(
    0.5, 0.1, 0.4, learning_rate=lambda t: 0.1 / (1 + t), lr_max=0.1, lr_min=0.01
  ),
  "exact_gnp": lambda: gnreg.exact_gnp(0.35),
}


def _one_line(error) -> str:
  message = str(error.value)
  assert "\n" not in message
  return message


@pytest.mark.parametrize("name", PENALTIES)
def test_inside_multi_steps_is_refused_in_one_line(name):
  for wrapped in (
    optax.MultiSteps(PENALTIES[name](), every_k_schedule=2),
    optax.MultiSteps(optax.chain(optax.identity(), PENALTIES[name]()), every_k_schedule=2),
  ):
    state = wrapped.init(_MODEL_PARAMS)
    grads = jax.grad(_model_loss)(_MODEL_PARAMS, _MICRO_BATCHES[0])
    with pytest.raises(ValueError) as error:
      wrapped.update(grads, state, _MODEL_PARAMS, grad_fn=_model_grad_fn(_MICRO_BATCHES[0]))
    assert _one_line(error).startswith(f"{name}: cannot run inside optax.MultiSteps")
    assert f"optax.chain(gnreg.{name}(...), optax.MultiSteps(...))" in str(error.value)
    assert "config.sequential_groups=True" in str(error.value)


@pytest.mark.parametrize("name", PENALTIES)
def test_before_multi_steps_each_micro_batch_is_penalised(name):
  lr = 0.1
  tx = optax.chain(PENALTIES[name](), optax.MultiSteps(optax.sgd(lr), every_k_schedule=2))
  state = tx.init(_MODEL_PARAMS)
  step = jax.jit(lambda g, s, batch: tx.update(g, s, _MODEL_PARAMS, grad_fn=_model_grad_fn(batch)))
  # The reference: the transform alone on each micro-batch in turn, its outputs averaged.
  alone = PENALTIES[name]()
  alone_state = alone.init(_MODEL_PARAMS)
  penalised = []
  for batch in _MICRO_BATCHES:
    grads = jax.grad(_model_loss)(_MODEL_PARAMS, batch)
    out, alone_state = alone.update(
      grads, alone_state, _MODEL_PARAMS, grad_fn=_model_grad_fn(batch)
    )
    penalised.append(out)
    updates, state = step(grads, state, batch)
  want = jax.tree.map(lambda a, b: -lr * (a + b) / 2, *penalised)
  jax.tree.map(lambda u, w: np.testing.assert_allclose(u, w, rtol=1e-5, atol=1e-7), updates, want)
  # What gnp inside MultiSteps computed: the mean first gradient, the last batch's grad_fn.
  mean = jax.tree.map(
    lambda a, b: (a + b) / 2, *[jax.grad(_model_loss)(_MODEL_PARAMS, b) for b in _MICRO_BATCHES]
  )
  wrong, _ = PENALTIES[name]().update(
    mean,
    PENALTIES[name]().init(_MODEL_PARAMS),
    _MODEL_PARAMS,
    grad_fn=_model_grad_fn(_MICRO_BATCHES[1]),
  )
  gap = optax.tree.norm(jax.tree.map(lambda a, b: -lr * a - b, wrong, want)) / optax.tree.norm(want)
  assert gap > 0.01, gap  # The data tells the two apart.


@pytest.mark.parametrize("name", PENALTIES)
def test_inside_masked_or_multi_transform_is_refused_in_one_line(name):
  labels = {"w": "penalised", "b": "plain"}
  for wrapped in (
    optax.masked(PENALTIES[name](), {"w": True, "b": False}),
    optax.multi_transform({"penalised": PENALTIES[name](), "plain": optax.sgd(0.1)}, labels),
  ):
    state = wrapped.init(_MODEL_PARAMS)
    grads = jax.grad(_model_loss)(_MODEL_PARAMS, _MICRO_BATCHES[0])
    with pytest.raises(ValueError) as error:
      wrapped.update(grads, state, _MODEL_PARAMS, grad_fn=_model_grad_fn(_MICRO_BATCHES[0]))
    message = _one_line(error)
    assert message.startswith(f"{name}: cannot run inside optax.masked or optax.multi_transform")
    assert f"gnreg.{name}(..., perturbation_mask=...)" in message
    assert f"optax.chain(gnreg.{name}(...), optax.multi_transform(...))" in message


@pytest.mark.parametrize("name", PENALTIES)
def test_before_multi_transform_every_group_gets_the_penalised_gradient(name):
  labels = {"w": "slow", "b": "fast"}
  tx = optax.chain(
    PENALTIES[name](),
    optax.multi_transform({"slow": optax.sgd(0.1), "fast": optax.sgd(0.3)}, labels),
  )
  grads = jax.grad(_model_loss)(_MODEL_PARAMS, _MICRO_BATCHES[0])
  grad_fn = _model_grad_fn(_MICRO_BATCHES[0])
  updates, _ = tx.update(grads, tx.init(_MODEL_PARAMS), _MODEL_PARAMS, grad_fn=grad_fn)
  alone = PENALTIES[name]()
  out, _ = alone.update(grads, alone.init(_MODEL_PARAMS), _MODEL_PARAMS, grad_fn=grad_fn)
  np.testing.assert_allclose(updates["w"], -0.1 * out["w"], rtol=1e-6)
  np.testing.assert_allclose(updates["b"], -0.3 * out["b"], rtol=1e-6)


@pytest.mark.parametrize("name", PENALTIES)
def test_apply_if_finite_around_and_inside_a_chain(name):
  grads = jax.grad(_model_loss)(_MODEL_PARAMS, _MICRO_BATCHES[0])
  grad_fn = _model_grad_fn(_MICRO_BATCHES[0])
  bad = jax.tree.map(lambda g: g.at[()].set(jnp.nan) if g.ndim == 0 else g, grads)
  alone = PENALTIES[name]()
  want, _ = alone.update(grads, alone.init(_MODEL_PARAMS), _MODEL_PARAMS, grad_fn=grad_fn)
  around = optax.apply_if_finite(optax.chain(PENALTIES[name](), optax.sgd(1.0)), 3)
  inside = optax.chain(PENALTIES[name](), optax.apply_if_finite(optax.sgd(1.0), 3))
  for tx, penalty_state in ((around, lambda s: s.inner_state[0]), (inside, lambda s: s[0])):
    step = jax.jit(lambda g, s, tx=tx: tx.update(g, s, _MODEL_PARAMS, grad_fn=grad_fn))
    state = tx.init(_MODEL_PARAMS)
    before = penalty_state(state)
    updates, state = step(bad, state)  # Skipped: no update, and the penalty's state holds.
    assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree.leaves(updates))
    jax.tree.map(np.testing.assert_array_equal, penalty_state(state), before)
    updates, state = step(grads, state)  # Then the first applied step is the first step.
    jax.tree.map(lambda u, w: np.testing.assert_allclose(u, -w, rtol=1e-6), updates, want)
