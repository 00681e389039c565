"""gnp, agc, pid_lr, monitor_clipping and monitor_updates composed with optax's machinery.

Each transform runs jitted, inside an ``optax.chain`` inside ``optax.MultiSteps`` or
``optax.apply_if_finite``, on a nested tree of mixed shapes in float32 and bfloat16,
and is compared with the bare transform run eagerly; agc also runs under
``optax.inject_hyperparams`` (pid_lr's injected form is exercised in test_pid.py).
Its state, wrapped in apply_if_finite, survives an orbax save/restore.
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
@pytest.mark.parametrize("name", TRANSFORMS)
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
