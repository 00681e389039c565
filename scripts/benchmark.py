r"""Measures every cost of gnreg side by side, in one process, and checks them against targets.

  python scripts/benchmark.py [--quick] [--out benchmark.json] [--sections 1,2,3,4,5]

Sections:

1. Step-time ratios of a jitted Flax train step (BatchNorm through mutable ``batch_stats``):
   clip-by-global-norm, AGC, ``pid_lr``, monitoring and all of them chained against the bare
   optimizer step (SGD momentum); ``gnp`` and ``gnp`` in its zero-warmup phase against that
   same plain step.
2. The trainer's steady-state step (``gnreg.train.make_train_step`` on ``configs/default.py``
   with gnp off and no clipping) against a minimal hand-written ``jax.jit`` Flax+optax step of
   the same model, loss, batch and optimizer; and the input pipeline's rate
   (``prefetch_to_device(data.train_iterator(...))`` on ``digits``) against the step rate.
3. The compiled memory of the gnp step against the plain step (``memory_analysis()``).
4. The learning-rate finder (100 rates x 100 subsamples, batch 32, a 64-128-10 MLP on
   scikit-learn's ``digits``) against its Keras original ``autolrtuner`` on the same grid,
   model, initial weights and data, end to end (compilation included) and warm (a second
   call); and against a JAX loop that evaluates one rate at a time. PID autotune (16 trials)
   batched against the same trials run one after another.
5. The compile time (``lower()`` + ``compile()``) of the plain train step per model size.

Timing: every measured function is compiled and run once before timing; then ``--rounds``
rounds each time every variant of a section for a number of steps, synchronised with
``jax.block_until_ready``. Variants are interleaved within a round (in alternating order), so
that load from other processes falls on all of them alike, and a ratio is the median over the
rounds of the per-round ratio. Timings are wall-clock and include dispatch.

Each ratio is printed next to the bound the project sets for it, with PASS or MISS; the hardware,
the command line and every raw number go to the JSON file.
"""

from __future__ import annotations

import os

# Before TensorFlow (imported by gnreg.data) and tqdm (autolrtuner's progress bar) start.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import gnreg  # noqa: E402
from gnreg import data, models, optimizers, task, train  # noqa: E402
from gnreg.tuning import autotune_pid, find_lr  # noqa: E402

SECTIONS = (1, 2, 3, 4, 5)
# The project's bounds: (comparison, bound). A ratio is "variant time / baseline time" for
# "<=" targets and "baseline time / variant time" (a speed-up) for ">=" targets.
TARGETS = {
  "transform": ("<=", 1.05),
  "gnp": ("<=", 2.05),
  "gnp_zero": ("<=", 1.03),
  "trainer": ("<=", 1.05),
  "pipeline": (">=", 1.0),
  "memory": ("<=", 1.3),
  "lr_e2e": (">=", 30.0),
  "lr_warm": (">=", 100.0),
  "autotune": (">=", 4.0),
}


@dataclasses.dataclass(frozen=True)
class CompileCase:
  """One model of the compile-time table."""

  model: str
  image_shape: tuple[int, int, int]
  num_classes: int
  batch_size: int


@dataclasses.dataclass(frozen=True)
class Settings:
  """What one benchmark run measures, and how long.

  Attributes:
    mode: a label for the report ('quick', 'full' or a caller's own).
    model: a ``gnreg.models`` name, or a callable ``(num_classes=...) -> nn.Module`` whose
      ``__call__(images, *, train)`` uses BatchNorm's ``batch_stats`` collection.
    image_shape: ``(H, W, C)`` of the step-time workload (sections 1 to 3).
    num_classes: classes of that workload.
    batch_size: its batch size.
    rounds: timing rounds; each reported time is a median over them.
    steps_per_round: the least number of steps a variant runs per round.
    min_round_seconds: more steps per round when one step is shorter than this allows.
    lr_num_lrs, lr_num_subsamples, lr_batch_size: the learning-rate finder's grid.
    autotune_trials: PID autotune candidates (random search).
    autotune_steps: PID autotune training steps per trial (the first epoch of ``digits``).
    pipeline_batches: batches timed from the input pipeline.
    compile_cases: the models of the compile-time table.
    autolrtuner: run the Keras original (needs ``pip install -e '.[bench]'``).
  """

  mode: str
  model: str | Callable[..., nn.Module]
  image_shape: tuple[int, int, int]
  num_classes: int
  batch_size: int
  rounds: int
  steps_per_round: int
  min_round_seconds: float
  lr_num_lrs: int = 100
  lr_num_subsamples: int = 100
  lr_batch_size: int = 32
  autotune_trials: int = 16
  autotune_steps: int = 44
  pipeline_batches: int = 50
  compile_cases: tuple[CompileCase, ...] = ()
  autolrtuner: bool = True


def tiny_settings(mode: str, model: str | Callable[..., nn.Module], **overrides: Any) -> Settings:
  """Seconds-long settings on 8x8 images, for the tests that keep a benchmark from rotting."""
  fields = dict(
    image_shape=(8, 8, 3),
    num_classes=10,
    batch_size=4,
    rounds=2,
    steps_per_round=1,
    min_round_seconds=0.0,
    lr_num_lrs=5,
    lr_num_subsamples=3,
    lr_batch_size=8,
    autotune_trials=2,
    autotune_steps=3,
    pipeline_batches=2,
  )
  return Settings(mode=mode, model=model, **{**fields, **overrides})


CIFAR = (32, 32, 3)
IMAGENET = (224, 224, 3)
SMALL_CASES = (
  CompileCase("ResNet20", CIFAR, 10, 32),
  CompileCase("WideResNet_16_4", CIFAR, 10, 128),
)
# A shared 2-core CPU drifts by several percent within seconds: many short, interleaved rounds
# measure a ratio better than a few long ones.
QUICK = Settings(
  mode="quick",
  model="ResNet20",
  image_shape=CIFAR,
  num_classes=10,
  batch_size=32,
  rounds=15,
  steps_per_round=1,
  min_round_seconds=0.2,
  compile_cases=SMALL_CASES,
)
FULL = Settings(
  mode="full",
  model="WideResNet_16_4",
  image_shape=CIFAR,
  num_classes=10,
  batch_size=128,
  rounds=4,
  steps_per_round=1,
  min_round_seconds=0.5,
  compile_cases=SMALL_CASES
  + (CompileCase("WideResNet_28_10", CIFAR, 10, 128), CompileCase("ResNet50", IMAGENET, 1000, 128)),
)


# ---------------------------------------------------------------------------------------------
# Rows of the report.


def row(
  section: str,
  name: str,
  value: float | None,
  unit: str,
  *,
  target: str | None = None,
  detail: str = "",
  note: str = "",
  targets: dict[str, tuple[str, float]] = TARGETS,
) -> dict[str, Any]:
  """One line of the table; ``target`` is a key of ``targets`` checked against ``value``."""
  verdict = None
  bound = None
  if target is not None:
    op, limit = targets[target]
    bound = f"{op} {limit:g}"
    if value is not None and math.isfinite(value):
      verdict = value <= limit if op == "<=" else value >= limit
  return {
    "section": section,
    "name": name,
    "value": value,
    "unit": unit,
    "target": bound,
    "pass": verdict,
    "detail": detail,
    "note": note,
  }


def _fmt(value: float | None, unit: str) -> str:
  if value is None:
    return "-"
  if unit == "x":
    return f"{value:.3f}x" if value < 10 else f"{value:.1f}x"
  if unit == "s":
    return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
  if unit == "ms":
    return f"{value:.2f} ms"
  if unit == "MiB":
    return f"{value:.1f} MiB"
  return f"{value:.4g} {unit}".strip()


def format_table(report: dict[str, Any]) -> str:
  """The report as a fixed-width text table, hardware and command first."""
  hw = report["hardware"]
  lines = [
    f"command: {report['command']}",
    f"hardware: {hw['summary']}",
    f"mode: {report['settings']['mode']}, model {report['settings']['model']}, "
    f"batch {report['settings']['batch_size']}, image {report['settings']['image_shape']}",
    "",
  ]
  header = ("section", "measurement", "value", "target", "result", "detail")
  table = [header]
  for r in report["rows"]:
    result = {True: "PASS", False: "MISS", None: "-"}[r["pass"]]
    if r["value"] is None and r["note"]:
      result = "n/a"
    detail = r["detail"] + (f" [{r['note']}]" if r["note"] else "")
    table.append(
      (r["section"], r["name"], _fmt(r["value"], r["unit"]), r["target"] or "", result, detail)
    )
  widths = [max(len(t[i]) for t in table) for i in range(len(header) - 1)]
  for t in table:
    cells = [c.ljust(w) for c, w in zip(t[:-1], widths, strict=True)]
    lines.append("  ".join(cells + [t[-1]]).rstrip())
    if t is header:
      lines.append("  ".join("-" * w for w in widths) + "  ------")
  return "\n".join(lines)


def hardware() -> dict[str, Any]:
  """The devices, platform and software versions the numbers belong to."""
  cpu_model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu_model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  devices = [str(d) for d in jax.devices()]
  kinds = sorted({d.device_kind for d in jax.devices()})
  versions = {
    "python": platform.python_version(),
    "jax": jax.__version__,
    "jaxlib": _version("jaxlib"),
    "flax": _version("flax"),
    "optax": optax.__version__,
    "tensorflow": _version("tensorflow"),
  }
  summary = (
    f"{jax.default_backend()}: {len(devices)} x {', '.join(kinds)}; host CPU "
    f"{cpu_model}, {usable} usable of {os.cpu_count()} cores; {platform.system()} "
    f"{platform.release()}; jax {jax.__version__}, flax {versions['flax']}, "
    f"optax {optax.__version__}"
  )
  return {
    "summary": summary,
    "platform": jax.default_backend(),
    "devices": devices,
    "device_kinds": kinds,
    "cpu_model": cpu_model,
    "cpu_count": os.cpu_count(),
    "usable_cpus": usable,
    "os": f"{platform.system()} {platform.release()}",
    "versions": versions,
  }


def _version(package: str) -> str:
  from importlib import metadata

  for name in (package, f"{package}-cpu"):
    try:
      return metadata.version(name)
    except metadata.PackageNotFoundError:
      continue
  return ""


# ---------------------------------------------------------------------------------------------
# Timing.


class Loop:
  """A jitted ``fn(state, batch) -> state`` with its state carried from call to call."""

  def __init__(self, fn: Callable[[Any, Any], Any], state: Any, batch: Any):
    self.fn, self.state, self.batch = fn, state, batch

  def run(self, steps: int) -> float:
    """Runs ``steps`` steps and returns the wall-clock seconds per step, device work included."""
    start = time.perf_counter()
    state = self.state
    for _ in range(steps):
      state = self.fn(state, self.batch)
    jax.block_until_ready(state)
    self.state = state
    return (time.perf_counter() - start) / steps


def time_interleaved(loops: dict[str, Loop], settings: Settings) -> dict[str, list[float]]:
  """Per-round seconds per step of each loop; the loops take turns within each round.

  Each loop runs once first (warm-up). A round gives every loop the same number of steps,
  enough for the slowest to last ``min_round_seconds``, and the order alternates from round
  to round so that a trend in the machine's load does not favour one side.
  """
  warm = {name: loop.run(1) for name, loop in loops.items()}
  steps = max(
    settings.steps_per_round, math.ceil(settings.min_round_seconds / max(min(warm.values()), 1e-6))
  )
  steps = min(steps, max(settings.steps_per_round, 1000))
  times: dict[str, list[float]] = {name: [] for name in loops}
  names = list(loops)
  for r in range(settings.rounds):
    for name in names if r % 2 == 0 else reversed(names):
      times[name].append(loops[name].run(steps))
  return times


def paired_ratio(times: dict[str, list[float]], name: str, baseline: str) -> float:
  """The median over rounds of ``time[name] / time[baseline]`` measured in the same round."""
  return statistics.median(a / b for a, b in zip(times[name], times[baseline], strict=True))


def min_ratio(times: dict[str, list[float]], name: str, baseline: str) -> float:
  """``min(time[name]) / min(time[baseline])``: the ratio of the least disturbed rounds.

  Other processes only ever add time, so on a shared machine this is the steadier estimate;
  it is shown beside the median, which the targets are judged on.
  """
  return min(times[name]) / min(times[baseline])


def _ms(times: list[float]) -> float:
  return 1e3 * statistics.median(times)


def _cost(compiled) -> dict[str, float]:
  """XLA's cost analysis of a compiled step: flops and bytes accessed."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # Older JAX: one dict per device program.
    analysis = analysis[0] if analysis else {}
  analysis = analysis or {}
  text = compiled.as_text() or ""
  entry = text[text.find("\nENTRY") :] if "\nENTRY" in text else ""
  return {
    "flops": float(analysis.get("flops", 0.0)),
    "bytes_accessed": float(analysis.get("bytes accessed", 0.0)),
    # Each fusion is one kernel launch on a GPU and one loop nest on a CPU.
    "entry_fusions": entry.count(" fusion("),
  }


def _memory(compiled) -> dict[str, int] | None:
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  fields = (
    "argument_size_in_bytes",
    "output_size_in_bytes",
    "alias_size_in_bytes",
    "temp_size_in_bytes",
    "generated_code_size_in_bytes",
  )
  out = {f: int(getattr(stats, f, 0) or 0) for f in fields}
  out["total_bytes"] = (
    out["argument_size_in_bytes"]
    + out["output_size_in_bytes"]
    + out["temp_size_in_bytes"]
    - out["alias_size_in_bytes"]
  )
  return out


# ---------------------------------------------------------------------------------------------
# The workload of sections 1 to 3 and 5.


def build_model(model: str | Callable[..., nn.Module], num_classes: int) -> nn.Module:
  if isinstance(model, str):
    return models.create(model, num_classes=num_classes)
  return model(num_classes=num_classes)


def model_label(model: str | Callable[..., nn.Module]) -> str:
  return model if isinstance(model, str) else getattr(model, "__name__", repr(model))


def synthetic_batch(
  image_shape: Sequence[int], num_classes: int, batch_size: int, seed: int = 0
) -> dict[str, jax.Array]:
  """A fixed batch of standard-normal images and uniform labels."""
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  return {
    "image": jax.random.normal(k1, (batch_size, *image_shape), jnp.float32),
    "label": jax.random.randint(k2, (batch_size,), 0, num_classes, jnp.int32),
  }


RNGS = models.rng_streams(jax.random.PRNGKey(1))


def make_loss(model: nn.Module, config: Any = None):
  """``loss(params, batch_stats, batch) -> (loss, new batch_stats)``: the trainer's loss.

  ``gnreg.task.make_loss_fn`` on ``config`` (cross-entropy, label smoothing, L2); ``None``:
  plain cross-entropy, for the transform comparisons.
  """
  if config is None:
    config = ml_collections.ConfigDict(
      {"label_smoothing": 0.0, "l2_regularization": 0.0, "regularize_kernels_only": False}
    )
  loss_fn = task.make_loss_fn(model, config)

  def loss(params, batch_stats, batch):
    value, (_, new_stats) = loss_fn(params, batch_stats, batch["image"], batch["label"], RNGS)
    return value, new_stats

  return loss


def make_step(model: nn.Module, tx: optax.GradientTransformation):
  """The section-1 step: ``(params, batch_stats, opt_state), batch -> same``.

  ``grad_fn`` is the gradient on the same batch at other parameters (gnp's second pass,
  BatchNorm statistics of that pass discarded); other transforms ignore it.
  """
  loss = make_loss(model)

  def step(state, batch):
    params, batch_stats, opt_state = state
    (_, new_stats), grads = jax.value_and_grad(loss, has_aux=True)(params, batch_stats, batch)
    grad_fn = lambda p: jax.grad(loss, has_aux=True)(p, batch_stats, batch)[0]
    updates, opt_state = tx.update(grads, opt_state, params, grad_fn=grad_fn)
    return optax.apply_updates(params, updates), new_stats, opt_state

  return step


def init_variables(model: nn.Module, image_shape: Sequence[int]) -> dict[str, Any]:
  variables = model.init(
    jax.random.PRNGKey(0), jnp.zeros((1, *image_shape), jnp.float32), train=False
  )
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


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


def section_transforms(settings: Settings, details: dict[str, Any]) -> list[dict[str, Any]]:
  """Sections 1 and 3: step-time ratios of the transforms and gnp, and gnp's compiled memory."""
  model = build_model(settings.model, settings.num_classes)
  variables = init_variables(model, settings.image_shape)
  batch = synthetic_batch(settings.image_shape, settings.num_classes, settings.batch_size)
  params, stats = variables["params"], variables["batch_stats"]
  loops, costs, memory, compile_s = {}, {}, {}, {}
  for name, tx in transform_variants(params).items():
    state = (params, stats, tx.init(params))
    start = time.perf_counter()
    compiled = jax.jit(make_step(model, tx)).lower(state, batch).compile()
    compile_s[name] = time.perf_counter() - start
    costs[name], memory[name] = _cost(compiled), _memory(compiled)
    loops[name] = Loop(compiled, state, batch)
  times = time_interleaved(loops, settings)
  num_params = sum(x.size for x in jax.tree.leaves(params))
  details["transforms"] = {
    "times_s": times,
    "cost": costs,
    "memory": memory,
    "compile_s": compile_s,
    "num_params": int(num_params),
  }

  sec = "1 step"
  base_ms = _ms(times["bare"])
  rows = [
    row(
      sec,
      "bare step: SGD momentum",
      base_ms,
      "ms",
      detail=f"{model_label(settings.model)}, {num_params / 1e6:.2f}M params, "
      f"{costs['bare']['flops'] / 1e9:.2f} GFLOP",
    )
  ]
  param_bytes = 4 * num_params
  rows.append(
    row(
      sec,
      "bare step again / bare (noise floor)",
      paired_ratio(times, "bare_again", "bare"),
      "x",
      detail=f"{_ms(times['bare_again']):.2f} ms, min-ratio "
      f"{min_ratio(times, 'bare_again', 'bare'):.3f}; the same program "
      "compiled twice",
    )
  )
  for name, label in TRANSFORM_LABELS.items():
    extra = costs[name]["bytes_accessed"] - costs["bare"]["bytes_accessed"]
    fusions = costs[name]["entry_fusions"] - costs["bare"]["entry_fusions"]
    rows.append(
      row(
        sec,
        label,
        paired_ratio(times, name, "bare"),
        "x",
        target="transform",
        detail=f"{_ms(times[name]):.2f} ms, min-ratio "
        f"{min_ratio(times, name, 'bare'):.3f}; +{extra / param_bytes:.1f} "
        f"param-sized "
        f"memory passes, +{fusions} fusions (XLA)",
      )
    )
  rows.append(
    row(
      sec,
      "gnp / plain",
      paired_ratio(times, "gnp", "bare"),
      "x",
      target="gnp",
      detail=f"{_ms(times['gnp']):.2f} ms, min-ratio "
      f"{min_ratio(times, 'gnp', 'bare'):.3f}; flops "
      f"{costs['gnp']['flops'] / max(costs['bare']['flops'], 1):.3f}x",
    )
  )
  rows.append(
    row(
      sec,
      "gnp zero-warmup phase / plain",
      paired_ratio(times, "gnp_zero_warmup", "bare"),
      "x",
      target="gnp_zero",
      detail=f"{_ms(times['gnp_zero_warmup']):.2f} ms, min-ratio "
      f"{min_ratio(times, 'gnp_zero_warmup', 'bare'):.3f}",
    )
  )

  rows.append(gnp_cond_row(model, params, stats, batch, settings, details))
  rows += regularisation_rows(model, params, stats, batch, loops, settings, details)

  sec = "3 memory"
  plain, gnp = memory["bare"], memory["gnp"]
  if plain is None or gnp is None:
    rows.append(
      row(
        sec,
        "gnp compiled memory / plain",
        None,
        "x",
        target="memory",
        note=f"memory_analysis() unavailable on {jax.default_backend()}",
      )
    )
  else:
    rows.append(
      row(
        sec,
        "gnp compiled memory / plain (args+out+temp)",
        gnp["total_bytes"] / plain["total_bytes"],
        "x",
        target="memory",
        detail=f"{gnp['total_bytes'] / 2**20:.1f} vs {plain['total_bytes'] / 2**20:.1f} MiB",
      )
    )
    temp_ratio = gnp["temp_size_in_bytes"] / max(plain["temp_size_in_bytes"], 1)
    rows.append(
      row(
        sec,
        "gnp temp_size_in_bytes / plain",
        temp_ratio,
        "x",
        detail=f"{gnp['temp_size_in_bytes'] / 2**20:.1f} vs "
        f"{plain['temp_size_in_bytes'] / 2**20:.1f} MiB",
      )
    )
  return rows


def gnp_cond_row(
  model, params, stats, batch, settings: Settings, details: dict[str, Any]
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
    return row(
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
    name: Loop(jax.jit(make_step(model, tx)), (params, stats, tx.init(params)), batch)
    for name, tx in txs.items()
  }
  quick = dataclasses.replace(
    settings, rounds=min(settings.rounds, 3), steps_per_round=1, min_round_seconds=0.0
  )
  times = time_interleaved(loops, quick)  # The warm-up step is the zero-warmup one.
  details["transforms"]["gnp_cond_times_s"] = times
  return row(
    sec,
    label,
    paired_ratio(times, "gnp_cond", "bare"),
    "x",
    detail=f"{_ms(times['gnp_cond']):.2f} ms; the lambda/zero warmups (once the "
    "penalty is on), probability < 1 and injected alpha take this path",
  )


LOOKSAM_K = 5


def regularisation_rows(
  model, params, stats, batch, loops: dict[str, Loop], settings: Settings, details: dict[str, Any]
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
    compiled = jax.jit(make_step(model, tx)).lower(state, batch).compile()
    costs[name] = _cost(compiled)

    def cycle(s, b, step=compiled):
      for _ in range(k):
        s = step(s, b)
      return s

    timed[name] = Loop(cycle if name == "looksam" else compiled, state, batch)
  times = time_interleaved(timed, settings)
  if "looksam" in times:
    times["looksam"] = [t / k for t in times["looksam"]]
  details["regularisation"] = {"times_s": times, "cost": costs, "looksam_k": k}

  def ratio_row(name: str, label: str, baseline: str, extra: str = "") -> dict[str, Any]:
    base_label = "plain" if baseline == "bare" else baseline
    return row(
      sec,
      f"{label} / {base_label}",
      paired_ratio(times, name, baseline),
      "x",
      detail=f"{_ms(times[name]):.2f} ms vs {_ms(times[baseline]):.2f} ms, min-ratio "
      f"{min_ratio(times, name, baseline):.3f}{extra}",
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
    rows += [row(sec, f"{label} / {b}", None, "x", note=note) for b in ("plain", "gnp")]
  else:
    per_cycle = f"; per step over cycles of {k} (1 + 1/{k} gradients per step)"
    rows += [ratio_row("looksam", label, "bare", per_cycle), ratio_row("looksam", label, "gnp")]
  rows.append(ratio_row("looksam_reuse", "looksam reuse step", "bare", "; no second gradient"))
  return rows


# ---------------------------------------------------------------------------------------------
# Section 2: the trainer against a hand-written step, and the input pipeline.


def trainer_config(settings: Settings):
  """``configs/default.py`` on the section's model and batch, with gnp off and no clipping."""
  import importlib.util

  path = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), os.pardir, "configs", "default.py"
  )
  spec = importlib.util.spec_from_file_location("gnreg_benchmark_default_config", path)
  default = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(default)
  config = default.get_config()
  if isinstance(settings.model, str):
    config.model.name = settings.model
  config.batch_size = settings.batch_size
  config.gnp.alpha = 0.0
  config.clip.name = "none"
  return config


def section_trainer(settings: Settings, details: dict[str, Any]) -> list[dict[str, Any]]:
  config = trainer_config(settings)
  model = build_model(settings.model, settings.num_classes)
  variables = init_variables(model, settings.image_shape)
  # One device for both sides: the comparison is the framework's overhead, not scaling.
  mesh = Mesh(np.array(jax.devices()[:1]), (train.AXIS,))
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P(train.AXIS))
  steps_per_epoch = 100
  batch = synthetic_batch(settings.image_shape, settings.num_classes, settings.batch_size)

  tx = optimizers.create(config, steps_per_epoch, axis_name=train.AXIS)
  params = variables["params"]
  state = train.TrainState(
    step=jnp.zeros([], jnp.int32),
    params=params,
    batch_stats=variables["batch_stats"],
    opt_state=tx.init(params),
    metric_sums={k: jnp.zeros([], jnp.float32) for k in (*train.TRAIN_METRICS, train.FINITE_STEPS)},
  )
  state = jax.device_put(jax.tree.map(jnp.copy, state), replicated)
  trainer_step = train.make_train_step(model, tx, config, mesh)
  trainer_batch = jax.device_put(batch, sharded)

  # The hand-written step: the trainer's loss (gnreg.task: cross-entropy + L2), model,
  # optimizer (SGD, Nesterov momentum, the same schedule) and donation.
  hand_tx = optax.sgd(
    optimizers.learning_rate_schedule(config, steps_per_epoch),
    momentum=config.optimizer.momentum,
    nesterov=config.optimizer.nesterov,
  )
  loss = make_loss(model, config)

  def hand_step(carry, batch):
    params, batch_stats, opt_state = carry
    (_, batch_stats), grads = jax.value_and_grad(loss, has_aux=True)(params, batch_stats, batch)
    updates, opt_state = hand_tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state

  # Both steps donate their state: each gets buffers of its own.
  hand_state = jax.tree.map(jnp.copy, (params, variables["batch_stats"], hand_tx.init(params)))
  loops = {
    "hand": Loop(jax.jit(hand_step, donate_argnums=0), hand_state, batch),
    "trainer": Loop(lambda s, b: trainer_step(s, b)[0], state, trainer_batch),
  }
  times = time_interleaved(loops, settings)
  sec = "2 trainer"
  step_rate = 1.0 / statistics.median(times["trainer"])
  rows = [
    row(
      sec,
      "hand-written jax.jit step",
      _ms(times["hand"]),
      "ms",
      detail="SGD Nesterov momentum, cosine schedule, CE + L2",
    ),
    row(
      sec,
      "gnreg trainer step / hand-written",
      paired_ratio(times, "trainer", "hand"),
      "x",
      target="trainer",
      detail=f"{_ms(times['trainer']):.2f} ms, min-ratio "
      f"{min_ratio(times, 'trainer', 'hand'):.3f}; apply_if_finite, "
      "device mean, monitors, metric sums included",
    ),
  ]

  pipe = pipeline_rate(config, settings, sharded)
  details["trainer"] = {"times_s": times, "pipeline": pipe}
  if pipe["batches_per_s"] is None:
    rows.append(
      row(
        sec,
        "input pipeline batches/s / trainer steps/s",
        None,
        "x",
        target="pipeline",
        note=pipe["error"],
      )
    )
  else:
    rows.append(
      row(
        sec,
        "input pipeline batches/s / trainer steps/s",
        pipe["batches_per_s"] / step_rate,
        "x",
        target="pipeline",
        detail=f"{pipe['batches_per_s']:.1f} batches/s "
        f"({pipe['batches_per_s'] * settings.batch_size:.0f} img/s, digits "
        f"at {pipe['image_shape']}) vs {step_rate:.2f} steps/s",
      )
    )
  return rows


def pipeline_rate(config, settings: Settings, sharding: NamedSharding) -> dict[str, Any]:
  """Batches per second of ``prefetch_to_device(data.train_iterator(...))`` on ``digits``.

  ``digits`` is the dataset that needs no download; it is resized to the workload's image
  side so each batch has the workload's batch size and spatial size.
  """
  cfg = config.data.copy_and_resolve_references()
  cfg.name = "digits"
  cfg.image_size = settings.image_shape[0]
  return input_rate(cfg, settings.batch_size, settings.pipeline_batches, sharding)


def input_rate(cfg, batch_size: int, num_batches: int, sharding: NamedSharding) -> dict[str, Any]:
  """Batches per second of ``prefetch_to_device(data.train_iterator(cfg, ...))``, once built."""
  try:
    info = data.dataset_info(cfg)
    iterator = train.prefetch_to_device(
      data.train_iterator(cfg, global_batch_size=batch_size, seed=0), sharding
    )
    jax.block_until_ready(next(iterator)["image"])  # Builds the tf.data graph.
    start = time.perf_counter()
    for _ in range(num_batches):
      jax.block_until_ready(next(iterator)["image"])
    elapsed = time.perf_counter() - start
  except (ValueError, data.DatasetNotFoundError) as e:
    return {"batches_per_s": None, "error": str(e).splitlines()[0][:200]}
  return {
    "batches_per_s": num_batches / elapsed,
    "image_shape": "x".join(str(s) for s in info.image_shape),
    "batches": num_batches,
  }


# ---------------------------------------------------------------------------------------------
# Section 4: the learning-rate finder and PID autotune.


class MLP(nn.Module):
  """64-128-10 with ReLU: the Keras model of the comparison, in Flax."""

  @nn.compact
  def __call__(self, x):
    hidden = nn.relu(nn.Dense(128, name="hidden")(x))
    return nn.Dense(10, name="out")(hidden)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
  from sklearn.datasets import load_digits

  digits = load_digits()
  return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int32)


def mlp_loss(params, batch):
  logits = MLP().apply({"params": params}, batch["x"])
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()


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
  grad = jax.jit(jax.value_and_grad(mlp_loss))

  @jax.jit
  def post_loss(params, grads, batch, lr):
    return mlp_loss(jax.tree.map(lambda p, g: p - lr * g, params, grads), batch)

  deltas = np.empty((len(indices), len(lrs)), np.float32)
  for m, idx in enumerate(indices):
    batch = {k: v[idx] for k, v in data_.items()}
    pre, grads = grad(params, batch)
    row_ = [post_loss(params, grads, batch, lr) for lr in lrs]
    deltas[m] = np.asarray(jax.device_get(row_)) - float(pre)
  return deltas


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
  start = time.perf_counter()
  out = fn()
  jax.block_until_ready(out)
  return time.perf_counter() - start, out


def section_tuning(settings: Settings, details: dict[str, Any]) -> list[dict[str, Any]]:
  x, y = digits_arrays()
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
    keras_error = "autolrtuner not run (Settings.autolrtuner=False)"
  if keras_model is not None:
    params = flax_params_from_keras(keras_model)
  else:
    params = MLP().init(jax.random.PRNGKey(0), jnp.zeros((1, 64)))["params"]
  data_ = {"x": jnp.asarray(x), "y": jnp.asarray(y)}
  # XLA's one-time start-up (its first compilation) is not the finder's, as TensorFlow's is
  # not the tuner's: building and calling the Keras model above already paid that.
  jax.block_until_ready(jax.jit(lambda a: a + 1)(data_["x"][0]))
  optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=lr_max)
  finder = lambda: find_lr(
    mlp_loss,
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
  gnreg_e2e, result = _timed(finder)
  gnreg_warm, _ = _timed(finder)
  lrs = np.linspace(lr_min, lr_max, k)
  indices = result.indices
  host_data = {"x": x, "y": y}
  loop_e2e, loop_deltas = _timed(lambda: one_rate_loop(params, host_data, indices, lrs))
  loop_warm, _ = _timed(lambda: one_rate_loop(params, host_data, indices, lrs))
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

      keras_e2e, tuner = _timed(tune)
      start = time.perf_counter()
      tuner.Tune(x, y, lr_space=(lr_min, lr_max), num_subsamples=m, num_evals=k, batch_size=b)
      keras_warm = time.perf_counter() - start
      keras.update(e2e_s=keras_e2e, warm_s=keras_warm, best_mean=tuner.GetBestLR("mean"))
    except Exception as e:  # A Keras/TF incompatibility: reported with its reason.
      keras["error"] = f"autolrtuner failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"

  sec = "4 lr finder"
  grid = f"{k} rates x {m} subsamples, batch {b}"
  rows = [
    row(sec, "gnreg find_lr end to end (incl. compile)", gnreg_e2e, "s", detail=grid),
    row(sec, "gnreg find_lr warm (second call)", gnreg_warm, "s"),
  ]
  if "e2e_s" in keras:
    rows += [
      row(
        sec,
        "autolrtuner (Keras) end to end",
        keras["e2e_s"],
        "s",
        detail=f"best 'mean' lr {keras['best_mean']:.3g} vs gnreg {result.best('mean'):.3g}",
      ),
      row(
        sec, "speed-up vs autolrtuner, end to end", keras["e2e_s"] / gnreg_e2e, "x", target="lr_e2e"
      ),
      row(
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
      row(sec, "autolrtuner (Keras) end to end", None, "s", note=keras["error"]),
      row(
        sec, "speed-up vs autolrtuner, end to end", None, "x", target="lr_e2e", note=keras["error"]
      ),
      row(sec, "speed-up vs autolrtuner, warm", None, "x", target="lr_warm", note=keras["error"]),
    ]
  rows += [
    row(
      sec,
      "speed-up vs one-rate-at-a-time JAX loop, end to end",
      loop_e2e / gnreg_e2e,
      "x",
      detail=f"loop {loop_e2e:.2f} s, {k * m} jitted calls; max |dL gap| {loop_gap:.1e}",
    ),
    row(
      sec,
      "speed-up vs one-rate-at-a-time JAX loop, warm",
      loop_warm / gnreg_warm,
      "x",
      detail=f"loop {loop_warm:.2f} s",
    ),
  ]

  autotune = autotune_rows(settings, params, x, y)
  rows += autotune.pop("rows")
  details["tuning"] = {
    "gnreg_e2e_s": gnreg_e2e,
    "gnreg_warm_s": gnreg_warm,
    "loop_e2e_s": loop_e2e,
    "loop_warm_s": loop_warm,
    "loop_gap": loop_gap,
    "keras": keras,
    "gnreg_best_mean": result.best("mean"),
    "autotune": autotune,
  }
  return rows


def autotune_rows(settings: Settings, params, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
  """PID autotune on the MLP: all trials in lockstep against one trial after another.

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

  def tune(batched: bool, loss=mlp_loss):
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
  t_seq_e2e, res_s = _timed(lambda: tune(False, lambda p, batch: mlp_loss(p, batch)))
  t_batched_e2e, res_b = _timed(lambda: tune(True, lambda p, batch: mlp_loss(p, batch)))
  tune(True), tune(False)  # Compiled once for the warm rounds.
  warm = {"batched": [], "sequential": []}
  for _ in range(max(5, settings.rounds)):
    for name, batched in (("batched", True), ("sequential", False)):
      warm[name].append(_timed(lambda batched=batched: tune(batched))[0])
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
      row(sec, "autotune_pid batched, end to end", t_batched_e2e, "s", detail=what),
      row(
        sec,
        "speed-up batched vs sequential, end to end",
        t_seq_e2e / t_batched_e2e,
        "x",
        detail=f"sequential {t_seq_e2e:.2f} s; each is mostly its step's compilation",
      ),
      row(
        sec,
        "speed-up batched vs sequential, warm",
        t_seq_warm / t_batched_warm,
        "x",
        target="autotune",
        detail=f"{t_batched_warm * 1e3:.1f} ms vs "
        f"{t_seq_warm * 1e3:.1f} ms per tune; "
        f"max |loss gap| {gap:.1e}",
      ),
      row(
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
  one = jax.jit(jax.value_and_grad(mlp_loss))
  stacked = jax.tree.map(lambda p: jnp.stack([p] * trials), params)
  every = jax.jit(jax.vmap(jax.value_and_grad(mlp_loss), in_axes=(0, None)))
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


def section_compile(settings: Settings, details: dict[str, Any]) -> list[dict[str, Any]]:
  """``lower()`` + ``compile()`` wall time of the plain SGD-momentum step, per model.

  The step is traced with abstract arguments (``jax.ShapeDtypeStruct``), so even the large
  models cost no memory for their parameters.
  """
  rows, out = [], {}
  cases = settings.compile_cases or (
    CompileCase(
      model_label(settings.model), settings.image_shape, settings.num_classes, settings.batch_size
    ),
  )
  for case in cases:
    builder = settings.model if case.model == model_label(settings.model) else case.model
    model = build_model(builder, case.num_classes)
    tx = optax.sgd(0.1, momentum=0.9)
    variables = jax.eval_shape(lambda m=model, s=case.image_shape: init_variables(m, s))
    state = jax.eval_shape(
      lambda v=variables, t=tx: (v["params"], v["batch_stats"], t.init(v["params"]))
    )
    batch = {
      "image": jax.ShapeDtypeStruct((case.batch_size, *case.image_shape), jnp.float32),
      "label": jax.ShapeDtypeStruct((case.batch_size,), jnp.int32),
    }
    start = time.perf_counter()
    lowered = jax.jit(make_step(model, tx)).lower(state, batch)
    lower_s = time.perf_counter() - start
    compiled = lowered.compile()
    total = time.perf_counter() - start
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
    shape = "x".join(str(s) for s in case.image_shape)
    out[case.model] = {
      "lower_s": lower_s,
      "compile_s": total - lower_s,
      "total_s": total,
      "num_params": num_params,
      "image_shape": shape,
      "batch_size": case.batch_size,
      **_cost(compiled),
    }
    rows.append(
      row(
        "5 compile",
        f"{case.model} {shape} batch {case.batch_size}",
        total,
        "s",
        detail=f"{num_params / 1e6:.2f}M params; trace+lower {lower_s:.2f} s, "
        f"XLA compile {total - lower_s:.2f} s",
      )
    )
  details["compile"] = out
  return rows


# ---------------------------------------------------------------------------------------------
# Driver.


def run(
  settings: Settings, sections: Sequence[int] = SECTIONS, command: str = ""
) -> dict[str, Any]:
  """Runs ``sections`` and returns the report: command, hardware, settings, rows, details."""
  unknown = sorted(set(sections) - set(SECTIONS))
  if unknown:
    raise ValueError(f"benchmark: sections must be among {SECTIONS}, got {unknown}")
  details: dict[str, Any] = {}
  rows: list[dict[str, Any]] = []
  start = time.perf_counter()
  if 1 in sections or 3 in sections:
    rows += [r for r in section_transforms(settings, details) if int(r["section"][0]) in sections]
  if 2 in sections:
    rows += section_trainer(settings, details)
  if 4 in sections:
    rows += section_tuning(settings, details)
  if 5 in sections:
    rows += section_compile(settings, details)
  settings_json = dataclasses.asdict(settings)
  settings_json["model"] = model_label(settings.model)
  return {
    "command": command,
    "hardware": hardware(),
    "settings": settings_json,
    "sections": list(sections),
    "rows": rows,
    "details": details,
    "wall_s": time.perf_counter() - start,
  }


def write_report(report: dict[str, Any], path: str) -> None:
  with open(path, "w") as f:
    json.dump(report, f, indent=1, default=float)
    f.write("\n")


def parse_args(argv: Sequence[str] | None = None) -> tuple[Settings, tuple[int, ...], str]:
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
    "--quick",
    action="store_true",
    help="ResNet20 at batch 32 and only the small models' compile times",
  )
  parser.add_argument("--out", default="benchmark.json", help="where to write the JSON report")
  parser.add_argument(
    "--sections",
    default=",".join(str(s) for s in SECTIONS),
    help="comma-separated subset of 1,2,3,4,5",
  )
  parser.add_argument("--rounds", type=int, default=None, help="timing rounds (median)")
  parser.add_argument(
    "--no-autolrtuner", action="store_true", help="skip the Keras original in section 4"
  )
  args = parser.parse_args(argv)
  settings = QUICK if args.quick else FULL
  if args.rounds is not None:
    if args.rounds < 1:
      parser.error(f"--rounds must be >= 1, got {args.rounds}")
    settings = dataclasses.replace(settings, rounds=args.rounds)
  if args.no_autolrtuner:
    settings = dataclasses.replace(settings, autolrtuner=False)
  try:
    sections = tuple(sorted({int(s) for s in args.sections.split(",") if s.strip()}))
  except ValueError:
    parser.error(f"--sections must be comma-separated integers, got {args.sections!r}")
  if not sections or set(sections) - set(SECTIONS):
    parser.error(f"--sections must be a non-empty subset of {SECTIONS}, got {args.sections!r}")
  return settings, sections, args.out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  argv = list(sys.argv[1:] if argv is None else argv)
  settings, sections, out = parse_args(argv)
  command = " ".join(["python", "scripts/benchmark.py", *argv])
  print(f"command: {command}\nhardware: {hardware()['summary']}", flush=True)
  report = run(settings, sections, command)
  write_report(report, out)
  print()
  print(format_table(report))
  print(f"\nwrote {out} ({report['wall_s']:.0f} s)")
  return report


if __name__ == "__main__":
  main()
