"""Section 4: the learning-rate finder against its Keras original, autolrtuner.

``gnreg.tuning.find_lr`` (100 rates x 100 subsamples, batch 32, a 64-128-10 MLP on
scikit-learn's ``digits``) against ``autolrtuner`` on the same grid, model, initial weights and
data, end to end (compilation included) and warm (a second call); and against a JAX loop that
evaluates one rate at a time. The section then runs ``autotune`` (PID autotune, batched
against sequential) on the same weights.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench import autotune, common, workload
from gnreg.tuning import find_lr


def keras_mlp():
  """The same MLP in Keras, compiled as ``autolrtuner`` wants (a callable loss, SGD)."""
  import tensorflow as tf

  keras = tf.keras
  model = keras.Sequential(
    [keras.Input((64,)), keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10)]
  )
  model.compile(
    optimizer=keras.optimizers.SGD(learning_rate=0.01),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
  )
  return model


def flax_params_from_keras(model) -> dict[str, Any]:
  """The Keras model's initial weights as Flax parameters (both store kernels ``(in, out)``)."""
  w1, b1, w2, b2 = (jnp.asarray(w) for w in model.get_weights())
  return {"hidden": {"kernel": w1, "bias": b1}, "out": {"kernel": w2, "bias": b2}}


def one_rate_loop(params, data_, indices: np.ndarray, lrs: np.ndarray) -> np.ndarray:
  """The finder one rate at a time: a jitted gradient per subsample and a jitted step per rate.

  The structure of ``autolrtuner``'s loop, in JAX: ``K * M`` calls of a compiled single-rate
  step instead of one compiled call for the whole grid.
  """
  grad = jax.jit(jax.value_and_grad(workload.mlp_loss))

  @jax.jit
  def post_loss(params, grads, batch, lr):
    return workload.mlp_loss(jax.tree.map(lambda p, g: p - lr * g, params, grads), batch)

  deltas = np.empty((len(indices), len(lrs)), np.float32)
  for m, idx in enumerate(indices):
    batch = {k: v[idx] for k, v in data_.items()}
    pre, grads = grad(params, batch)
    row_ = [post_loss(params, grads, batch, lr) for lr in lrs]
    deltas[m] = np.asarray(jax.device_get(row_)) - float(pre)
  return deltas


def section(settings: common.Settings, details: dict[str, Any]) -> list[dict[str, Any]]:
  """Section 4's rows: the finder's comparisons, then PID autotune's (``autotune``) on the
  same initial weights; the raw numbers go to ``details["tuning"]``."""
  x, y = workload.digits_arrays()
  k, m, b = settings.lr_num_lrs, settings.lr_num_subsamples, settings.lr_batch_size
  lr_min, lr_max = 1e-8, 1.0  # autolrtuner's default lr_space, a linear grid.
  keras_model = None
  keras_error = ""
  if settings.autolrtuner:
    try:
      from autolrtuner import AutoLRTuner  # noqa: F401

      keras_model = keras_mlp()
      keras_model(x[:1])
    except Exception as e:  # ImportError, or Keras refusing the model: reported, not raised.
      keras_error = f"autolrtuner unavailable: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
  else:
    keras_error = "autolrtuner not run (common.Settings.autolrtuner=False)"
  if keras_model is not None:
    params = flax_params_from_keras(keras_model)
  else:
    params = workload.MLP().init(jax.random.PRNGKey(0), jnp.zeros((1, 64)))["params"]
  data_ = {"x": jnp.asarray(x), "y": jnp.asarray(y)}
  # XLA's one-time start-up (its first compilation) is not the finder's, as TensorFlow's is
  # not the tuner's: building and calling the Keras model above already paid that.
  jax.block_until_ready(jax.jit(lambda a: a + 1)(data_["x"][0]))
  optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=lr_max)
  finder = lambda: find_lr(
    workload.mlp_loss,
    params,
    data_,
    optimizer=optimizer,
    min_lr=lr_min,
    max_lr=lr_max,
    num_lrs=k,
    num_subsamples=m,
    batch_size=b,
    grid="linear",
    progress=False,
  )
  gnreg_e2e, result = common.timed(finder)
  gnreg_warm, _ = common.timed(finder)
  lrs = np.linspace(lr_min, lr_max, k)
  indices = result.indices
  host_data = {"x": x, "y": y}
  loop_e2e, loop_deltas = common.timed(lambda: one_rate_loop(params, host_data, indices, lrs))
  loop_warm, _ = common.timed(lambda: one_rate_loop(params, host_data, indices, lrs))
  # The loop evaluates the same differentials: a check that the comparison is like for like.
  loop_gap = float(np.nanmax(np.abs(loop_deltas - result.deltas)))

  keras = {"error": keras_error}
  if keras_model is not None:
    try:
      from autolrtuner import AutoLRTuner

      def tune():
        tuner = AutoLRTuner(keras_model)
        tuner.Tune(x, y, lr_space=(lr_min, lr_max), num_subsamples=m, num_evals=k, batch_size=b)
        return tuner

      keras_e2e, tuner = common.timed(tune)
      start = time.perf_counter()
      tuner.Tune(x, y, lr_space=(lr_min, lr_max), num_subsamples=m, num_evals=k, batch_size=b)
      keras_warm = time.perf_counter() - start
      keras.update(e2e_s=keras_e2e, warm_s=keras_warm, best_mean=tuner.GetBestLR("mean"))
    except Exception as e:  # A Keras/TF incompatibility: reported with its reason.
      keras["error"] = f"autolrtuner failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"

  sec = "4 lr finder"
  grid = f"{k} rates x {m} subsamples, batch {b}"
  rows = [
    common.row(sec, "gnreg find_lr end to end (incl. compile)", gnreg_e2e, "s", detail=grid),
    common.row(sec, "gnreg find_lr warm (second call)", gnreg_warm, "s"),
  ]
  if "e2e_s" in keras:
    rows += [
      common.row(
        sec,
        "autolrtuner (Keras) end to end",
        keras["e2e_s"],
        "s",
        detail=f"best 'mean' lr {keras['best_mean']:.3g} vs gnreg {result.best('mean'):.3g}",
      ),
      common.row(
        sec, "speed-up vs autolrtuner, end to end", keras["e2e_s"] / gnreg_e2e, "x", target="lr_e2e"
      ),
      common.row(
        sec,
        "speed-up vs autolrtuner, warm",
        keras["warm_s"] / gnreg_warm,
        "x",
        target="lr_warm",
        detail=f"autolrtuner warm {keras['warm_s']:.1f} s",
      ),
    ]
  else:
    rows += [
      common.row(sec, "autolrtuner (Keras) end to end", None, "s", note=keras["error"]),
      common.row(
        sec, "speed-up vs autolrtuner, end to end", None, "x", target="lr_e2e", note=keras["error"]
      ),
      common.row(
        sec, "speed-up vs autolrtuner, warm", None, "x", target="lr_warm", note=keras["error"]
      ),
    ]
  rows += [
    common.row(
      sec,
      "speed-up vs one-rate-at-a-time JAX loop, end to end",
      loop_e2e / gnreg_e2e,
      "x",
      detail=f"loop {loop_e2e:.2f} s, {k * m} jitted calls; max |dL gap| {loop_gap:.1e}",
    ),
    common.row(
      sec,
      "speed-up vs one-rate-at-a-time JAX loop, warm",
      loop_warm / gnreg_warm,
      "x",
      detail=f"loop {loop_warm:.2f} s",
    ),
  ]

  tuned = autotune.measure(settings, params, x, y)
  rows += tuned.pop("rows")
  details["tuning"] = {
    "gnreg_e2e_s": gnreg_e2e,
    "gnreg_warm_s": gnreg_warm,
    "loop_e2e_s": loop_e2e,
    "loop_warm_s": loop_warm,
    "loop_gap": loop_gap,
    "keras": keras,
    "gnreg_best_mean": result.best("mean"),
    "autotune": tuned,
  }
  return rows
