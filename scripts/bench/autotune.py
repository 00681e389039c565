"""Section 4: PID autotune, all trials batched against the same trials one after another.

``gnreg.tuning.autotune_pid`` (16 trials of random search, 44 steps each: the first epoch of
``digits`` at batch 32) on ``lr_finder``'s MLP and initial weights, which calls it.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench import common, workload
from gnreg.tuning import autotune_pid


def measure(settings: common.Settings, params, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
  """PID autotune on the MLP: all trials in lockstep against one trial after another; the
  raw numbers, and their rows under ``"rows"``.

  Both paths call a jitted step once per batch: the batched one steps every trial at once,
  the sequential one trains each trial in turn (as the Keras tuner fits one model per
  candidate). End to end includes compiling each path's step (a fresh loss function each
  time, so nothing compiled is reused); warm is the median of ``rounds`` interleaved calls.
  """
  b, steps = settings.lr_batch_size, settings.autotune_steps
  order = np.random.default_rng(0).permutation(len(x))[: steps * b]
  batches = {
    "x": jnp.asarray(x[order].reshape(steps, b, -1)),
    "y": jnp.asarray(y[order].reshape(steps, b)),
  }
  optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=0.05)

  def tune(batched: bool, loss=workload.mlp_loss):
    return autotune_pid(
      loss,
      params,
      batches,
      optimizer=optimizer,
      target_norm=1.0,
      search_type="random",
      n_trials=settings.autotune_trials,
      batched=batched,
      min_lr=1e-4,
      max_lr=1.0,
    )

  # lambda: a loss function of its own, whose steps are compiled afresh.
  t_seq_e2e, res_s = common.timed(lambda: tune(False, lambda p, batch: workload.mlp_loss(p, batch)))
  t_batched_e2e, res_b = common.timed(
    lambda: tune(True, lambda p, batch: workload.mlp_loss(p, batch))
  )
  tune(True), tune(False)  # Compiled once for the warm rounds.
  warm = {"batched": [], "sequential": []}
  for _ in range(max(5, settings.rounds)):
    for name, batched in (("batched", True), ("sequential", False)):
      warm[name].append(common.timed(lambda batched=batched: tune(batched))[0])
  t_batched_warm, t_seq_warm = (statistics.median(warm[k]) for k in ("batched", "sequential"))
  gap = float(np.nanmax(np.abs(res_b.losses - res_s.losses)))
  grad_one, grad_all = _gradient_costs(
    params, {k: v[0] for k, v in batches.items()}, settings.autotune_trials, settings.rounds
  )
  sec = "4 autotune"
  what = f"{settings.autotune_trials} trials x {steps} steps"
  return {
    "batched_e2e_s": t_batched_e2e,
    "batched_warm_s": t_batched_warm,
    "sequential_e2e_s": t_seq_e2e,
    "sequential_warm_s": t_seq_warm,
    "loss_gap": gap,
    "warm_rounds_s": warm,
    "rows": [
      common.row(sec, "autotune_pid batched, end to end", t_batched_e2e, "s", detail=what),
      common.row(
        sec,
        "speed-up batched vs sequential, end to end",
        t_seq_e2e / t_batched_e2e,
        "x",
        detail=f"sequential {t_seq_e2e:.2f} s; each is mostly its step's compilation",
      ),
      common.row(
        sec,
        "speed-up batched vs sequential, warm",
        t_seq_warm / t_batched_warm,
        "x",
        target="autotune",
        detail=f"{t_batched_warm * 1e3:.1f} ms vs "
        f"{t_seq_warm * 1e3:.1f} ms per tune; "
        f"max |loss gap| {gap:.1e}",
      ),
      common.row(
        sec,
        f"gradient of {settings.autotune_trials} trials vmapped / of one",
        grad_all / grad_one,
        "x",
        detail=f"{grad_all * 1e3:.3f} ms vs {grad_one * 1e3:.3f} ms: what a CPU gains "
        "by batching the trials' compute",
      ),
    ],
  }


def _gradient_costs(params, batch, trials: int, rounds: int) -> tuple[float, float]:
  """Seconds per jitted MLP gradient, for one trial and for ``trials`` vmapped together."""
  one = jax.jit(jax.value_and_grad(workload.mlp_loss))
  stacked = jax.tree.map(lambda p: jnp.stack([p] * trials), params)
  every = jax.jit(jax.vmap(jax.value_and_grad(workload.mlp_loss), in_axes=(0, None)))
  costs = []
  for fn, p in ((one, params), (every, stacked)):
    jax.block_until_ready(fn(p, batch))
    per_call = []
    for _ in range(max(5, rounds)):
      start = time.perf_counter()
      for _ in range(200):
        out = fn(p, batch)
      jax.block_until_ready(out)
      per_call.append((time.perf_counter() - start) / 200)
    costs.append(statistics.median(per_call))
  return costs[0], costs[1]


# ---------------------------------------------------------------------------------------------
# Section 5: compile time per model.
