r"""Issue 15's figures on one accelerator, each printed next to its target, in one JSON file.

  scripts/accelerator_check.sh [--out accelerator_check.json]   # one GPU: at most 8 minutes
  python scripts/accelerator_check.py --cpu --out /tmp/check.json  # tiny models, any machine

What it measures (the workloads and timing are ``scripts/bench/``'s, as the benchmark's):

1. Train-step time of plain SGD-momentum, ``gnp`` (r 0.05, alpha 0.5), ``optax.contrib.sam``
   (opaque mode, sync period 2: two gradients per step, as gnp) and gnp in its zero-warmup
   phase, each with XLA's compiled memory (``compiled.memory_analysis()``), on WRN-28-10
   (batch 128, 32x32, float32) and ViT-S/16 (batch 256, 224x224, bfloat16 activations).
   Targets: gnp/plain <= 2.0, gnp/sam <= 1.0, zero-warmup/plain <= 1.02.
2. The trainer's step (``gnreg.train.make_train_step``) against a hand-written ``jax.jit``
   step of WRN-28-10 (target <= 1.03); the input pipeline's images/s against the trainer's
   (digits resized to 32x32, the CIFAR pipeline) and against ViT-S/16's plain step (a generated
   folder of JPEGs, the ImageNet pipeline at 224x224; the plain step is faster than the
   trainer's, so this is the stricter comparison), also with Mixup and CutMix on. Target:
   pipeline faster (>= 1).
3. The learning-rate finder (100 rates x 100 subsamples) end to end and warm against a loop
   of single jitted steps (target: warm >= 300x); PID autotune, 16 trials batched against one
   trial after another (target: warm >= 8x).

The report is rewritten after every section, so a run cut short still leaves its figures.
``--cpu`` runs the same code on tiny models for a few steps: the test suite runs it, so that
the script cannot rot; its figures say nothing about an accelerator.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import concurrent.futures  # noqa: E402
import dataclasses  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from bench import common, lr_finder, trainer, transforms, workload  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from gnreg import data  # noqa: E402

# The bounds the project holds each figure to, as (comparison, bound) of the figure the row shows.
TARGETS = {
  "gnp": ("<=", 2.0),
  "gnp_sam": ("<=", 1.0),
  "gnp_zero": ("<=", 1.02),
  "trainer": ("<=", 1.03),
  "pipeline": (">=", 1.0),
  "lr_finder": (">=", 300.0),
  "autotune": (">=", 8.0),
}
TIME_LIMIT_S = 8 * 60


@dataclasses.dataclass(frozen=True)
class Check:
  """What one run measures: the step workloads, and ``common.Settings`` for the rest.

  ``timing.model`` (batch ``timing.batch_size``) is the trainer section's workload;
  ``folder_images`` JPEGs of ``folder_size`` (W, H) make the ImageNet-pipeline folder, read at
  the last workload's image size and batch.
  """

  mode: str
  workloads: tuple[common.Workload, ...]
  timing: common.Settings
  folder_images: int
  folder_size: tuple[int, int]


class TinyConvNet(nn.Module):
  """Conv + BatchNorm + head: the convolutional workload at a compile cost of a second."""

  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train):
    x = nn.Conv(4, (3, 3), dtype=self.dtype)(images)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, dtype=self.dtype)(x))
    return nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=(1, 2)))


class TinyViT(nn.Module):
  """Patches, one attention block, a head: the transformer workload, tiny."""

  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train):
    x = nn.Conv(16, (8, 8), strides=8, dtype=self.dtype)(images)
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    x = x + nn.MultiHeadDotProductAttention(num_heads=2, dtype=self.dtype)(nn.LayerNorm()(x))
    return nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=1).astype(jnp.float32))


ACCELERATOR = Check(
  mode="accelerator",
  workloads=(
    common.Workload("WideResNet_28_10", common.CIFAR, 10, 128, label="WRN-28-10"),
    common.Workload("ViT_S16", common.IMAGENET, 1000, 256, jnp.bfloat16, label="ViT-S/16"),
  ),
  timing=common.Settings(
    mode="accelerator",
    model="WideResNet_28_10",
    image_shape=common.CIFAR,
    num_classes=10,
    batch_size=128,
    rounds=5,
    steps_per_round=2,
    min_round_seconds=0.5,
    pipeline_batches=40,
    autolrtuner=False,
  ),
  folder_images=512,
  folder_size=(320, 256),
)
CPU = Check(
  mode="cpu",
  workloads=(
    common.Workload(TinyConvNet, (8, 8, 3), 10, 4),
    common.Workload(TinyViT, (16, 16, 3), 10, 4, jnp.bfloat16),
  ),
  timing=common.tiny_settings("cpu", TinyConvNet, autolrtuner=False),
  folder_images=8,
  folder_size=(40, 32),
)


def figure(section: str, name: str, value, unit: str, **kwargs) -> dict[str, Any]:
  return common.row(section, name, value, unit, targets=TARGETS, **kwargs)


# ---------------------------------------------------------------------------------------------
# 1. Step time and compiled memory.


def optax_sam(learning_rate: float, r: float) -> optax.GradientTransformationExtraArgs:
  """``optax.contrib.sam`` (opaque: BatchNorm statistics stay in sync) behind gnp's
  ``grad_fn(params)`` interface, so that ``workload.make_step`` drives both alike."""
  sam = optax.contrib.sam(
    optax.sgd(learning_rate, momentum=0.9),
    optax.chain(optax.contrib.normalize(), optax.sgd(r)),
    opaque_mode=True,
  )

  def update(grads, state, params=None, *, grad_fn, **extra):
    del extra
    return sam.update(grads, state, params, grad_fn=lambda p, _: grad_fn(p))

  return optax.GradientTransformationExtraArgs(sam.init, update)


STEP_VARIANTS = ("bare", "gnp", "gnp_zero_warmup")


def section_steps(check: Check, details: dict[str, Any]) -> list[dict[str, Any]]:
  """Every workload's four steps, compiled concurrently after its plain step (XLA compiles
  off the GIL), timed interleaved per workload."""
  prepared = []
  for w in check.workloads:
    model = workload.build_model(w.model, w.num_classes, w.dtype)
    # One compiled program, not an op-by-op init (seconds for a deep model).
    variables = jax.jit(lambda m=model, w=w: workload.init_variables(m, w.image_shape))()
    params, stats = variables["params"], variables["batch_stats"]
    batch = workload.synthetic_batch(w.image_shape, w.num_classes, w.batch_size)
    variants = {
      k: v for k, v in transforms.transform_variants(params).items() if k in STEP_VARIANTS
    }
    variants["sam"] = optax_sam(0.1, 0.05)
    lowered = {}
    for name, tx in variants.items():
      state = (params, stats, tx.init(params))
      lowered[name] = (jax.jit(workload.make_step(model, tx)).lower(state, batch), state)
    num_params = sum(x.size for x in jax.tree.leaves(params))
    prepared.append((w, batch, lowered, num_params))
  start = time.perf_counter()
  # The plain steps first, one at a time: a GPU compiler times candidate kernels on the device
  # and caches its choice per shape, so the other variants, compiled together after, mostly
  # reuse those choices instead of timing kernels against each other.
  compiled = [{"bare": lowered["bare"][0].compile()} for _, _, lowered, _ in prepared]
  with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
    pending = [
      {name: pool.submit(low.compile) for name, (low, _) in lowered.items() if name != "bare"}
      for _, _, lowered, _ in prepared
    ]
    for programs, futures in zip(compiled, pending, strict=True):
      programs.update({name: f.result() for name, f in futures.items()})
  compile_s = time.perf_counter() - start

  rows = []
  details["steps"] = {"compile_all_s": compile_s}
  for (w, batch, lowered, num_params), programs in zip(prepared, compiled, strict=True):
    loops = {
      name: common.Loop(programs[name], state, batch) for name, (_, state) in lowered.items()
    }
    memory = {name: workload.compiled_memory(p) for name, p in programs.items()}
    times = common.time_interleaved(loops, check.timing)
    details["steps"][w.name] = {
      "times_s": times,
      "memory": memory,
      "num_params": int(num_params),
      "batch_size": w.batch_size,
      "image_shape": list(w.image_shape),
      "dtype": jnp.dtype(w.dtype).name,
    }
    sec = f"1 step {w.name}"
    what = (
      f"batch {w.batch_size}, {'x'.join(map(str, w.image_shape))}, {jnp.dtype(w.dtype).name}, "
      f"{num_params / 1e6:.2f}M params"
    )
    rows.append(
      figure(
        sec,
        f"{w.name} plain step",
        common.ms(times["bare"]),
        "ms",
        detail=f"{what}; {w.batch_size / statistics.median(times['bare']):.0f} img/s; "
        f"{_mib(memory['bare'])}",
      )
    )
    for name, label, baseline, target in (
      ("gnp", "gnp / plain", "bare", "gnp"),
      ("gnp", "gnp / optax.contrib.sam", "sam", "gnp_sam"),
      ("gnp_zero_warmup", "gnp zero-warmup phase / plain", "bare", "gnp_zero"),
      ("sam", "optax.contrib.sam / plain", "bare", None),
    ):
      rows.append(
        figure(
          sec,
          f"{w.name} {label}",
          common.paired_ratio(times, name, baseline),
          "x",
          target=target,
          detail=f"{common.ms(times[name]):.2f} ms, min-ratio "
          f"{common.min_ratio(times, name, baseline):.3f}; {_mib(memory[name])}",
        )
      )
    for name in ("gnp", "sam", "gnp_zero_warmup"):
      value = None
      note = ""
      if memory[name] is None or memory["bare"] is None:
        note = f"memory_analysis() unavailable on {jax.default_backend()}"
      else:
        value = memory[name]["total_bytes"] / memory["bare"]["total_bytes"]
      rows.append(figure(sec, f"{w.name} compiled memory {name} / plain", value, "x", note=note))
  return rows


def _mib(memory: dict[str, int] | None) -> str:
  if memory is None:
    return "compiled memory unavailable"
  return (
    f"compiled {memory['total_bytes'] / 2**20:.0f} MiB "
    f"(temp {memory['temp_size_in_bytes'] / 2**20:.0f} MiB)"
  )


# ---------------------------------------------------------------------------------------------
# 2. Trainer and input pipeline.


def section_trainer(check: Check, details: dict[str, Any]) -> list[dict[str, Any]]:
  out: dict[str, Any] = {}
  trainer.section(check.timing, out)
  times, pipe = out["trainer"]["times_s"], out["trainer"]["pipeline"]
  trainer_rate = check.timing.batch_size / statistics.median(times["trainer"])
  label = common.model_label(check.timing.model)
  sec = "2 trainer"
  rows = [
    figure(
      sec,
      f"trainer step / hand-written step ({label})",
      common.paired_ratio(times, "trainer", "hand"),
      "x",
      target="trainer",
      detail=f"{common.ms(times['trainer']):.2f} vs {common.ms(times['hand']):.2f} ms, "
      f"min-ratio {common.min_ratio(times, 'trainer', 'hand'):.3f}",
    ),
    _pipeline_figure(
      f"input pipeline img/s / trainer img/s ({label})",
      pipe,
      check.timing.batch_size,
      trainer_rate,
      "digits resized, the CIFAR pipeline",
    ),
  ]
  # The ImageNet pipeline against the last workload's plain step, plain and with the heavy
  # augmentation recipes' Mixup and CutMix.
  w = check.workloads[-1]
  steps = details.get("steps", {}).get(w.name)
  step_rate = None if steps is None else w.batch_size / statistics.median(steps["times_s"]["bare"])
  folder = _jpeg_folder(check)
  sharding = NamedSharding(Mesh(np.array(jax.devices()[:1]), ("batch",)), P("batch"))
  what = (
    f"{check.folder_images} generated JPEGs of {check.folder_size[0]}x{check.folder_size[1]}, "
    "the ImageNet pipeline"
  )
  rates = {}
  for name, mixing in (("plain", {}), ("mixed", {"mixup_alpha": 0.8, "cutmix_alpha": 1.0})):
    cfg = data.default_config()
    cfg.name, cfg.data_dir, cfg.image_size = "imagenet_folder", folder.name, w.image_shape[0]
    cfg.update(mixing)
    rates[name] = trainer.input_rate(cfg, w.batch_size, check.timing.pipeline_batches, sharding)
    label = " with Mixup+CutMix" if mixing else ""
    rows.append(
      _pipeline_figure(
        f"input pipeline{label} img/s / {w.name} plain step img/s",
        rates[name],
        w.batch_size,
        step_rate,
        what,
      )
    )
  folder.cleanup()
  details["trainer"] = {**out["trainer"], "imagenet_pipeline": rates, "trainer_img_s": trainer_rate}
  return rows


def _pipeline_figure(name, pipe, batch_size, consumer_rate, what) -> dict[str, Any]:
  if pipe["batches_per_s"] is None or consumer_rate is None:
    reason = pipe.get("error") or "the step it is compared with was not measured"
    return figure("2 trainer", name, None, "x", target="pipeline", note=reason)
  rate = pipe["batches_per_s"] * batch_size
  return figure(
    "2 trainer",
    name,
    rate / consumer_rate,
    "x",
    target="pipeline",
    detail=f"{rate:.0f} vs {consumer_rate:.0f} img/s; {what} at {pipe['image_shape']}",
  )


def _jpeg_folder(check: Check) -> tempfile.TemporaryDirectory:
  """``train/`` and ``val/`` of smooth random JPEGs in 4 classes: the image-folder source."""
  from PIL import Image

  root = tempfile.TemporaryDirectory(prefix="gnreg_accelerator_check_")
  rng = np.random.default_rng(0)
  width, height = check.folder_size
  for split, count in (("train", check.folder_images), ("val", 4)):
    for k in range(count):
      folder = os.path.join(root.name, split, f"class{k % 4}")
      os.makedirs(folder, exist_ok=True)
      coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), np.uint8)
      image = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
      image.save(os.path.join(folder, f"{k}.JPEG"), quality=90)
  return root


# ---------------------------------------------------------------------------------------------
# 3. Tuners.


def section_tuning(check: Check, details: dict[str, Any]) -> list[dict[str, Any]]:
  out: dict[str, Any] = {}
  lr_finder.section(check.timing, out)
  t = out["tuning"]
  a = t["autotune"]
  settings = check.timing
  grid = f"{settings.lr_num_lrs} rates x {settings.lr_num_subsamples} subsamples"
  trials = f"{settings.autotune_trials} trials x {settings.autotune_steps} steps"
  sec = "3 tuning"
  details["tuning"] = t
  return [
    figure(
      sec,
      "lr finder end to end: sequential loop / find_lr",
      t["loop_e2e_s"] / t["gnreg_e2e_s"],
      "x",
      detail=f"{t['loop_e2e_s']:.2f} vs {t['gnreg_e2e_s']:.2f} s, compilation included; {grid}",
    ),
    figure(
      sec,
      "lr finder warm: sequential loop / find_lr",
      t["loop_warm_s"] / t["gnreg_warm_s"],
      "x",
      target="lr_finder",
      detail=f"{t['loop_warm_s']:.3f} s vs {t['gnreg_warm_s'] * 1e3:.1f} ms; max |dL gap| "
      f"{t['loop_gap']:.1e}",
    ),
    figure(
      sec,
      "PID autotune end to end: sequential / batched",
      a["sequential_e2e_s"] / a["batched_e2e_s"],
      "x",
      detail=f"{a['sequential_e2e_s']:.2f} vs {a['batched_e2e_s']:.2f} s; {trials}",
    ),
    figure(
      sec,
      "PID autotune warm: sequential / batched",
      a["sequential_warm_s"] / a["batched_warm_s"],
      "x",
      target="autotune",
      detail=f"{a['sequential_warm_s'] * 1e3:.1f} vs {a['batched_warm_s'] * 1e3:.1f} ms; "
      f"max |loss gap| {a['loss_gap']:.1e}",
    ),
  ]


# ---------------------------------------------------------------------------------------------
# Driver.

SECTIONS = (("steps", section_steps), ("trainer", section_trainer), ("tuning", section_tuning))


def run(check: Check, out: str, command: str = "") -> dict[str, Any]:
  """Runs every section, rewriting ``out`` after each; returns the report."""
  report = {
    "command": command,
    "hardware": common.hardware(),
    "settings": {
      "mode": check.mode,
      "model": ", ".join(w.name for w in check.workloads),
      "batch_size": ", ".join(str(w.batch_size) for w in check.workloads),
      "image_shape": ", ".join("x".join(map(str, w.image_shape)) for w in check.workloads),
    },
    "targets": {k: f"{op} {bound:g}" for k, (op, bound) in TARGETS.items()},
    "rows": [],
    "details": {},
    "section_s": {},
    "complete": False,
  }
  start = time.perf_counter()
  for name, section in SECTIONS:
    section_start = time.perf_counter()
    report["rows"] += section(check, report["details"])
    report["section_s"][name] = time.perf_counter() - section_start
    report["wall_s"] = time.perf_counter() - start
    common.write_report(report, out)
    print(f"[{report['wall_s']:.0f} s] {name} done", flush=True)
  report["complete"] = True
  report["within_time_limit"] = report["wall_s"] <= TIME_LIMIT_S
  common.write_report(report, out)
  return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
    "--cpu", action="store_true", help="tiny models and few steps: checks the script, any machine"
  )
  parser.add_argument("--out", default="accelerator_check.json", help="the JSON report")
  args = parser.parse_args(argv)
  check = CPU if args.cpu else ACCELERATOR
  if not args.cpu and jax.default_backend() == "cpu":
    parser.error("no accelerator: jax.default_backend() is 'cpu'; use --cpu for the tiny check")
  command = " ".join(["python", "scripts/accelerator_check.py", *argv])
  common.announce(command)
  report = run(check, args.out, command)
  print()
  print(common.format_table(report))
  print(f"\nwrote {args.out} ({report['wall_s']:.0f} s; limit {TIME_LIMIT_S} s)")
  return report


if __name__ == "__main__":
  main()
