"""Section 1: the step time of each transform against the bare optimizer step.

A jitted Flax train step (BatchNorm through mutable ``batch_stats``): clip-by-global-norm, AGC,
``pid_lr``, monitoring and all of them chained against the bare SGD-momentum step; ``gnp`` and
``gnp`` in its zero-warmup phase against that same plain step; a penalised gnp step through
``lax.cond``; ``exact_gnp``, ASAM and LookSAM against the plain and the gnp steps. Section 3
(``memory``) reads the compiled memory of the programs compiled here.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import optax

import gnreg
from bench import common, workload


def _agc_exclude(params: Any) -> tuple[str, ...]:
  """NFNets leave the classifier unclipped: ``head/*`` when the model has a ``head``."""
  return ("head/*",) if "head" in params else ()


def transform_variants(params: Any) -> dict[str, optax.GradientTransformation]:
  """Section 1's optimizers; every one ends in SGD with momentum 0.9 at rate 0.1."""
  sgd = lambda: optax.sgd(0.1, momentum=0.9)
  injected = lambda: optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)
  pid = lambda: gnreg.pid_lr(injected(), target_norm=1.0, kp=0.5, min_lr=1e-4, max_lr=1.0)
  agc = lambda: gnreg.agc(clipping=0.01, exclude=_agc_exclude(params))
  return {
    "bare": sgd(),
    # The same step compiled again: its ratio to "bare" is the measurement's noise floor.
    "bare_again": sgd(),
    "clip_by_global_norm": optax.chain(optax.clip_by_global_norm(1.0), sgd()),
    "agc": optax.chain(agc(), sgd()),
    "pid_lr": pid(),
    "monitoring": optax.chain(
      gnreg.monitor_clipping(optax.identity()), sgd(), gnreg.monitor_updates()
    ),
    "all_chained": optax.chain(
      gnreg.monitor_clipping(optax.chain(optax.clip_by_global_norm(1.0), agc())),
      pid(),
      gnreg.monitor_updates(),
    ),
    "gnp": optax.chain(gnreg.gnp(r=0.05, alpha=0.5), sgd()),
    # A warmup longer than any benchmark: every measured step is in the zero phase.
    "gnp_zero_warmup": optax.chain(
      gnreg.gnp(r=0.05, alpha=0.5, warmup="zero", warmup_steps=10**9), sgd()
    ),
  }


TRANSFORM_LABELS = {
  "clip_by_global_norm": "clip_by_global_norm / bare",
  "agc": "agc / bare",
  "pid_lr": "pid_lr / bare",
  "monitoring": "monitor_clipping(identity)+monitor_updates / bare",
  "all_chained": "clip+agc+pid_lr+monitors chained / bare",
}


def section(settings: common.Settings, details: dict[str, Any]) -> list[dict[str, Any]]:
  """Section 1's rows; each variant's compiled memory goes to ``details`` for section 3."""
  model = workload.build_model(settings.model, settings.num_classes)
  variables = workload.init_variables(model, settings.image_shape)
  batch = workload.synthetic_batch(settings.image_shape, settings.num_classes, settings.batch_size)
  params, stats = variables["params"], variables["batch_stats"]
  loops, costs, memory, compile_s = {}, {}, {}, {}
  for name, tx in transform_variants(params).items():
    state = (params, stats, tx.init(params))
    start = time.perf_counter()
    compiled = jax.jit(workload.make_step(model, tx)).lower(state, batch).compile()
    compile_s[name] = time.perf_counter() - start
    costs[name], memory[name] = workload.compiled_cost(compiled), workload.compiled_memory(compiled)
    loops[name] = common.Loop(compiled, state, batch)
  times = common.time_interleaved(loops, settings)
  num_params = sum(x.size for x in jax.tree.leaves(params))
  details["transforms"] = {
    "times_s": times,
    "cost": costs,
    "memory": memory,
    "compile_s": compile_s,
    "num_params": int(num_params),
  }

  sec = "1 step"
  base_ms = common.ms(times["bare"])
  rows = [
    common.row(
      sec,
      "bare step: SGD momentum",
      base_ms,
      "ms",
      detail=f"{common.model_label(settings.model)}, {num_params / 1e6:.2f}M params, "
      f"{costs['bare']['flops'] / 1e9:.2f} GFLOP",
    )
  ]
  param_bytes = 4 * num_params
  rows.append(
    common.row(
      sec,
      "bare step again / bare (noise floor)",
      common.paired_ratio(times, "bare_again", "bare"),
      "x",
      detail=f"{common.ms(times['bare_again']):.2f} ms, min-ratio "
      f"{common.min_ratio(times, 'bare_again', 'bare'):.3f}; the same program "
      "compiled twice",
    )
  )
  for name, label in TRANSFORM_LABELS.items():
    extra = costs[name]["bytes_accessed"] - costs["bare"]["bytes_accessed"]
    fusions = costs[name]["entry_fusions"] - costs["bare"]["entry_fusions"]
    rows.append(
      common.row(
        sec,
        label,
        common.paired_ratio(times, name, "bare"),
        "x",
        target="transform",
        detail=f"{common.ms(times[name]):.2f} ms, min-ratio "
        f"{common.min_ratio(times, name, 'bare'):.3f}; +{extra / param_bytes:.1f} "
        f"param-sized "
        f"memory passes, +{fusions} fusions (XLA)",
      )
    )
  rows.append(
    common.row(
      sec,
      "gnp / plain",
      common.paired_ratio(times, "gnp", "bare"),
      "x",
      target="gnp",
      detail=f"{common.ms(times['gnp']):.2f} ms, min-ratio "
      f"{common.min_ratio(times, 'gnp', 'bare'):.3f}; flops "
      f"{costs['gnp']['flops'] / max(costs['bare']['flops'], 1):.3f}x",
    )
  )
  rows.append(
    common.row(
      sec,
      "gnp zero-warmup phase / plain",
      common.paired_ratio(times, "gnp_zero_warmup", "bare"),
      "x",
      target="gnp_zero",
      detail=f"{common.ms(times['gnp_zero_warmup']):.2f} ms, min-ratio "
      f"{common.min_ratio(times, 'gnp_zero_warmup', 'bare'):.3f}",
    )
  )
  rows.append(gnp_cond_row(model, params, stats, batch, settings, details))
  rows += regularisation_rows(model, params, stats, batch, loops, settings, details)

  return rows


def gnp_cond_row(
  model, params, stats, batch, settings: common.Settings, details: dict[str, Any]
) -> dict[str, Any]:
  """A penalised gnp step that goes through ``lax.cond`` (a zero warmup of one step, over).

  The lambda and zero warmups, hybrid steps and an injected ``alpha`` decide per step whether
  to take the second gradient, so they keep the ``lax.cond`` that the plain ``gnp`` step no
  longer has; on CPU that branch is slow (see ``gnreg.gnp``). No target: a diagnosis.
  """
  sec = "1 step"
  label = "gnp penalised through lax.cond / plain"
  if (
    jax.default_backend() == "cpu"
    and statistics.median(details["transforms"]["times_s"]["bare"]) > 1.0
  ):
    return common.row(
      sec,
      label,
      None,
      "x",
      note="not measured: on this CPU one such step of this model takes minutes; see --quick",
    )
  txs = {
    "bare": optax.sgd(0.1, momentum=0.9),
    "gnp_cond": optax.chain(
      gnreg.gnp(r=0.05, alpha=0.5, warmup="zero", warmup_steps=1), optax.sgd(0.1, momentum=0.9)
    ),
  }
  loops = {
    name: common.Loop(
      jax.jit(workload.make_step(model, tx)), (params, stats, tx.init(params)), batch
    )
    for name, tx in txs.items()
  }
  quick = dataclasses.replace(
    settings, rounds=min(settings.rounds, 3), steps_per_round=1, min_round_seconds=0.0
  )
  times = common.time_interleaved(loops, quick)  # The warm-up step is the zero-warmup one.
  details["transforms"]["gnp_cond_times_s"] = times
  return common.row(
    sec,
    label,
    common.paired_ratio(times, "gnp_cond", "bare"),
    "x",
    detail=f"{common.ms(times['gnp_cond']):.2f} ms; the lambda/zero warmups (once the "
    "penalty is on), probability < 1 and injected alpha take this path",
  )


LOOKSAM_K = 5


def regularisation_rows(
  model,
  params,
  stats,
  batch,
  loops: dict[str, common.Loop],
  settings: common.Settings,
  details: dict[str, Any],
) -> list[dict[str, Any]]:
  """Exact gradient regularisation and LookSAM against the plain and the gnp steps.

  ``exact_gnp(lam=0.025)`` is the exact gradient that section 1's ``gnp(r=0.05, alpha=0.5)``
  approximates (lambda = alpha * r); ``gnp(..., adaptive=True)`` is the same gnp with ASAM's
  perturbation. ``looksam(r=0.05, alpha=0.5, k=5)`` evaluates gnp's second
  gradient on one step in five, behind a ``lax.cond``: one timed call runs a whole cycle of five
  steps, and its time is divided by five. The reuse step is timed alone too, from a state past
  a cycle's first step with ``k`` beyond any benchmark. ``loops`` holds section 1's compiled
  plain and gnp steps. No targets: the ratios are reported. On a CPU where the plain step takes
  over a second, the LookSAM cycle is not run: its penalised step, a convolutional network's
  gradient inside ``lax.cond``, takes minutes there (see ``gnreg.gnp``).
  """
  sec = "1 step"
  k = LOOKSAM_K
  sgd = lambda: optax.sgd(0.1, momentum=0.9)
  variants = {
    "exact_gnp": optax.chain(gnreg.exact_gnp(lam=0.5 * 0.05), sgd()),
    "asam": optax.chain(gnreg.gnp(r=0.05, alpha=0.5, adaptive=True), sgd()),
    "looksam": optax.chain(gnreg.looksam(r=0.05, alpha=0.5, k=k), sgd()),
    "looksam_reuse": optax.chain(gnreg.looksam(r=0.05, alpha=0.5, k=10**9), sgd()),
  }
  slow_cond = (
    jax.default_backend() == "cpu"
    and statistics.median(details["transforms"]["times_s"]["bare"]) > 1.0
  )
  if slow_cond:
    del variants["looksam"]
  timed = {"bare": loops["bare"], "gnp": loops["gnp"]}
  costs = {}
  for name, tx in variants.items():
    opt_state = tx.init(params)
    if name == "looksam_reuse":
      # Step 1 of the cycle: only step 0 evaluates the second gradient.
      opt_state = (opt_state[0]._replace(count=jnp.ones([], jnp.int32)), *opt_state[1:])
    state = (params, stats, opt_state)
    compiled = jax.jit(workload.make_step(model, tx)).lower(state, batch).compile()
    costs[name] = workload.compiled_cost(compiled)

    def cycle(s, b, step=compiled):
      for _ in range(k):
        s = step(s, b)
      return s

    timed[name] = common.Loop(cycle if name == "looksam" else compiled, state, batch)
  times = common.time_interleaved(timed, settings)
  if "looksam" in times:
    times["looksam"] = [t / k for t in times["looksam"]]
  details["regularisation"] = {"times_s": times, "cost": costs, "looksam_k": k}

  def ratio_row(name: str, label: str, baseline: str, extra: str = "") -> dict[str, Any]:
    base_label = "plain" if baseline == "bare" else baseline
    return common.row(
      sec,
      f"{label} / {base_label}",
      common.paired_ratio(times, name, baseline),
      "x",
      detail=f"{common.ms(times[name]):.2f} ms vs {common.ms(times[baseline]):.2f} ms, min-ratio "
      f"{common.min_ratio(times, name, baseline):.3f}{extra}",
    )

  flops = costs["exact_gnp"]["flops"] / max(details["transforms"]["cost"]["bare"]["flops"], 1)
  rows = [
    ratio_row("exact_gnp", "exact_gnp (Hessian-vector product)", "bare", f"; flops {flops:.2f}x"),
    ratio_row("exact_gnp", "exact_gnp (Hessian-vector product)", "gnp"),
    ratio_row("asam", "gnp adaptive=True (ASAM)", "gnp", "; the |w| + eta scaling's cost"),
  ]
  label = f"looksam k={k}"
  if slow_cond:
    note = "not measured: on this CPU its penalised step under lax.cond takes minutes; see --quick"
    rows += [common.row(sec, f"{label} / {b}", None, "x", note=note) for b in ("plain", "gnp")]
  else:
    per_cycle = f"; per step over cycles of {k} (1 + 1/{k} gradients per step)"
    rows += [ratio_row("looksam", label, "bare", per_cycle), ratio_row("looksam", label, "gnp")]
  rows.append(ratio_row("looksam_reuse", "looksam reuse step", "bare", "; no second gradient"))
  return rows


# ---------------------------------------------------------------------------------------------
# Section 2: the trainer against a hand-written step, and the input pipeline.
