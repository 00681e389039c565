"""The README's BatchNorm train steps (Flax linen and NNX) take the trainer's step.

Each README example is run up to its training loop (tests/test_readme.py runs it whole); one
step of its ``train_step`` is then compared with one step of ``gnreg.train``'s own jitted step
on the same model, weights and batch: the parameters after the step, and the BatchNorm running
averages, which only the first pass may move.
"""

from __future__ import annotations

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
from _runs import smoke_config
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gnreg import optimizers, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
LOOP = "\nfirst = None\n"  # Where each example's training loop starts.

# The README's chain, chain(gnp(r=0.05, alpha=0.8, perturbation_mask=<not BatchNorm>),
# sgd(0.3, 0.9)), and its loss (plain cross-entropy), as trainer fields.
TRAINER_FIELDS = {
  "gnp.method": "gnp",
  "gnp.r": 0.05,
  "gnp.alpha": 0.8,
  "gnp.normalize_base_grad": False,
  "gnp.perturbation_exclude": ("BatchNorm_0/*",),
  "optimizer.name": "momentum",
  "optimizer.learning_rate": 0.3,
  "optimizer.momentum": 0.9,
  "optimizer.nesterov": False,
  "schedule.name": "constant",
  "schedule.warmup_epochs": 0.0,
  "clip.name": "none",
  "l2_regularization": 0.0,
  "label_smoothing": 0.0,
}


def _definitions(marker: str) -> dict:
  """The README example that holds ``marker``, run up to its training loop: its namespace."""
  (code,) = [c for c in EXAMPLES if marker in c]
  assert LOOP in code
  namespace = {"__name__": "readme"}
  exec(compile(code.split(LOOP)[0], f"README.md ({marker})", "exec"), namespace)
  return namespace


def _trainer_step(model, params, batch_stats, images, labels):
  """One step of the trainer's jitted step on one device: the new params and batch_stats."""
  config = smoke_config(**TRAINER_FIELDS)
  mesh = jax.make_mesh((1,), (train.AXIS,))
  tx = optimizers.create(config, steps_per_epoch=10, axis_name=train.AXIS)
  state = train.TrainState(
    step=jnp.zeros([], jnp.int32),
    params=params,
    batch_stats=batch_stats,
    opt_state=tx.init(params),
    metric_sums={k: jnp.zeros([], jnp.float32) for k in (*train.TRAIN_METRICS, train.FINITE_STEPS)},
  )
  step = train.make_train_step(model, config, mesh, steps_per_epoch=10)  # The trainer's call.
  state = jax.device_put(jax.tree.map(jnp.copy, state), NamedSharding(mesh, P()))
  batch = jax.device_put({"image": images, "label": labels}, NamedSharding(mesh, P(train.AXIS)))
  new_state, _ = step(state, batch)
  return jax.device_get(new_state.params), jax.device_get(new_state.batch_stats)


def _assert_close(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), actual, expected
  )


def _moved(before, after) -> float:
  pairs = zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
  return max(float(np.max(np.abs(a - b))) for a, b in pairs)


def test_the_linen_batchnorm_step_is_the_trainers():
  ns = _definitions("nn.BatchNorm(")
  params, batch_stats, x, y = ns["params"], ns["batch_stats"], ns["x"], ns["y"]
  new_params, new_stats, _, _ = ns["train_step"](params, batch_stats, ns["opt_state"], x, y)
  want_params, want_stats = _trainer_step(ns["model"], params, batch_stats, x, y.astype(jnp.int32))
  _assert_close(new_params, want_params)
  _assert_close(new_stats, want_stats)
  assert _moved(params, new_params) > 1e-3 and _moved(batch_stats, new_stats) > 1e-3


def test_the_nnx_batchnorm_step_is_the_trainers():
  ns = _definitions("nnx.BatchNorm(")
  linen = _definitions("nn.BatchNorm(")  # The same network in linen, for the trainer.
  params, batch_stats, x, y = ns["params"], ns["batch_stats"], ns["x"], ns["y"]
  new_params, new_stats, _, _ = ns["train_step"](params, batch_stats, ns["opt_state"], x, y)

  def to_linen(p, s):
    p, s = p.to_pure_dict(), s.to_pure_dict()
    variables = {
      "params": {
        "Dense_0": p["hidden"],
        "BatchNorm_0": p["norm"],
        "Dense_1": p["out"],
      },
      "batch_stats": {"BatchNorm_0": s["norm"]},
    }
    return jax.tree.map(np.asarray, variables)

  start = to_linen(params, batch_stats)
  assert jax.tree.structure(start["params"]) == jax.tree.structure(linen["params"])
  want_params, want_stats = _trainer_step(
    linen["model"], start["params"], start["batch_stats"], x, y.astype(jnp.int32)
  )
  got = to_linen(new_params, new_stats)
  _assert_close(got["params"], want_params)
  _assert_close(got["batch_stats"], want_stats)
  assert _moved(start["batch_stats"], got["batch_stats"]) > 1e-3
