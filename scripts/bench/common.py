"""What every section shares: settings, the project's bounds, timing, report rows, hardware.

Timing: every measured function is compiled and run once before timing; then ``rounds`` rounds
each time every variant of a section for a number of steps, synchronised with
``jax.block_until_ready``. Variants are interleaved within a round (in alternating order), so
that load from other processes falls on all of them alike, and a ratio is the median over the
rounds of the per-round ratio. Timings are wall-clock and include dispatch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

# The project's bounds: (comparison, bound). A ratio is "variant time / baseline time" for
# "<=" targets and "baseline time / variant time" (a speed-up) for ">=" targets.
TARGETS = {
  "transform": ("<=", 1.05),
  "gnp": ("<=", 2.05),
  "gnp_zero": ("<=", 1.03),
  "trainer": ("<=", 1.05),
  "groups": ("<=", 1.05),
  "groups_memory": ("<=", 1.1),
  # Sequential groups hold one group's activations: less scratch memory than all side by side.
  "sequential_memory": ("<=", 1.0),
  "pipeline": (">=", 1.0),
  "memory": ("<=", 1.3),
  "lr_e2e": (">=", 30.0),
  "lr_warm": (">=", 100.0),
  "autotune": (">=", 4.0),
}


@dataclasses.dataclass(frozen=True)
class Workload:
  """One model at one image shape and batch size: a row of the compile-time table, or one of
  the accelerator check's step-time models.

  Attributes:
    model: a ``gnreg.models`` name, or a callable ``(num_classes=..., [dtype=...]) -> nn.Module``
      whose ``__call__(images, *, train)`` uses BatchNorm's ``batch_stats`` collection.
    image_shape: ``(H, W, C)``.
    num_classes: classes of the classifier.
    batch_size: the batch size.
    dtype: the activations' dtype; the model is built without one at float32 (its default).
    label: the name the report shows; empty: the model's.
  """

  model: str | Callable[..., nn.Module]
  image_shape: tuple[int, int, int]
  num_classes: int
  batch_size: int
  dtype: Any = jnp.float32
  label: str = ""

  @property
  def name(self) -> str:
    return self.label or model_label(self.model)


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
    compile_cases: the models of the compile-time table; none: the step-time workload's.
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
  compile_cases: tuple[Workload, ...] = ()
  autolrtuner: bool = True

  @property
  def workload(self) -> Workload:
    """The step-time workload of sections 1 to 3."""
    return Workload(self.model, self.image_shape, self.num_classes, self.batch_size)


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
  Workload("ResNet20", CIFAR, 10, 32),
  Workload("WideResNet_16_4", CIFAR, 10, 128),
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
  + (Workload("WideResNet_28_10", CIFAR, 10, 128), Workload("ResNet50", IMAGENET, 1000, 128)),
)


def model_label(model: str | Callable[..., nn.Module]) -> str:
  return model if isinstance(model, str) else getattr(model, "__name__", repr(model))


def settings_json(settings: Settings) -> dict[str, Any]:
  """The settings as the report records them, each model by its name."""
  out = dataclasses.asdict(settings)
  out["model"] = model_label(settings.model)
  for case in out["compile_cases"]:
    case["model"], case["dtype"] = model_label(case["model"]), jnp.dtype(case["dtype"]).name
  return out


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


def write_report(report: dict[str, Any], path: str) -> None:
  with open(path, "w") as f:
    json.dump(report, f, indent=1, default=float)
    f.write("\n")


def announce(command: str) -> None:
  """The first lines of a run: what was run, and on what."""
  print(f"command: {command}\nhardware: {hardware()['summary']}", flush=True)


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
  """A jitted ``fn(state, batch) -> state`` with its state carried from call to call, and the
  compiled program behind it where one is kept (for its ``memory_analysis()``)."""

  def __init__(self, fn: Callable[[Any, Any], Any], state: Any, batch: Any, compiled: Any = None):
    self.fn, self.state, self.batch, self.compiled = fn, state, batch, compiled

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


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
  """Wall-clock seconds of one call of ``fn``, its device work included, and its result."""
  start = time.perf_counter()
  out = fn()
  jax.block_until_ready(out)
  return time.perf_counter() - start, out


def paired_ratio(times: dict[str, list[float]], name: str, baseline: str) -> float:
  """The median over rounds of ``time[name] / time[baseline]`` measured in the same round."""
  return statistics.median(a / b for a, b in zip(times[name], times[baseline], strict=True))


def min_ratio(times: dict[str, list[float]], name: str, baseline: str) -> float:
  """``min(time[name]) / min(time[baseline])``: the ratio of the least disturbed rounds.

  Other processes only ever add time, so on a shared machine this is the steadier estimate;
  it is shown beside the median, which the targets are judged on.
  """
  return min(times[name]) / min(times[baseline])


def ms(times: list[float]) -> float:
  """The median of ``times`` (seconds) in milliseconds."""
  return 1e3 * statistics.median(times)
