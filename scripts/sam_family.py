r"""The SAM family side by side on the demo: final test error and time per step of each method.

  python scripts/sam_family.py [--out=runs/sam_family] [--seeds=0,1,2] [--methods=sgd,gnp,...]
      [--config=configs/default.py] [--dry-run] [-- --config.<field>=<value> ...]

Trains ``--config`` once per method and seed, one run after another, each as the command it
prints (``python -m gnreg.main --config=CONFIG --workdir=OUT/METHOD/seedS --config.seed=S`` and
the method's fields, then the flags after ``--``); a run whose workdir holds
``final_metrics.json`` is not trained again, and one that was stopped resumes. Then prints, and
writes to ``OUT/table.md``, one row per method: its fields, the final test top-1 error over the
seeds (mean, sample standard deviation, and each seed's), and the median time per train step.

The methods (``--methods`` picks some, in this order; see ``METHODS`` for their fields):

- ``sgd``: the config's optimizer alone (``gnp.alpha=0``);
- ``gnp``: the gradient norm penalty, ``r=0.05``, ``alpha=0.5`` (``configs/default.py``'s);
- ``sam``: gnp with ``alpha=1``, SAM with radius 0.05;
- ``asam``: SAM with ASAM's adaptive step, radius 0.5, ten times SAM's, since the step is scaled
  by ``|w| + 0.01``;
- ``gsam``: GSAM, the radius from 0.05 at the peak rate to 0.01 at the schedule's end, alpha 0.1;
- ``looksam``: LookSAM, SAM's perturbed gradient every 5th step, reused between with weight 0.7;
- ``exact_gnp``: the penalty gnp approximates, by a Hessian-vector product, lambda = 0.5 * 0.05.

None of these values was tuned for the demo. The time per step is ``batch_size /
images_per_sec`` of the trainer's logged windows, their median, leaving out the first window
of each run (which holds the compilation); it includes the input pipeline, as a user's run does.
The final test error is the evaluation at the last step (``scripts/summarize.py``'s rule).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from summarize import final_value  # noqa: E402  (scripts/ is not a package)

from gnreg.metric_writer import read_metrics  # noqa: E402

# name -> the config fields that make the method, on top of --config.
METHODS: dict[str, tuple[str, ...]] = {
  "sgd": ("--config.gnp.alpha=0",),
  "gnp": ("--config.gnp.r=0.05", "--config.gnp.alpha=0.5"),
  "sam": ("--config.gnp.r=0.05", "--config.gnp.alpha=1"),
  "asam": ("--config.gnp.r=0.5", "--config.gnp.alpha=1", "--config.gnp.adaptive=True"),
  "gsam": (
    "--config.gnp.method=gsam",
    "--config.gnp.gsam.rho_max=0.05",
    "--config.gnp.gsam.rho_min=0.01",
    "--config.gnp.gsam.alpha=0.1",
  ),
  "looksam": (
    "--config.gnp.method=looksam",
    "--config.gnp.r=0.05",
    "--config.gnp.alpha=1",
    "--config.gnp.looksam.k=5",
    "--config.gnp.looksam.reuse_weight=0.7",
  ),
  "exact_gnp": ("--config.gnp.method=exact_gnp", "--config.gnp.r=0.05", "--config.gnp.alpha=0.5"),
}
METRIC = "test/top1_error"


def command(config: str, out: str, method: str, seed: int, extra: Sequence[str]) -> list[str]:
  """The trainer's command line for one run."""
  return [
    sys.executable,
    "-m",
    "gnreg.main",
    f"--config={config}",
    f"--workdir={workdir(out, method, seed)}",
    f"--config.seed={seed}",
    *METHODS[method],
    *extra,
  ]


def workdir(out: str, method: str, seed: int) -> str:
  return os.path.join(out, method, f"seed{seed}")


def seconds_per_step(records: Sequence[dict], batch_size: int) -> float | None:
  """The median of ``batch_size / images_per_sec`` over the logged windows but the first.

  >>> records = [{"step": 10, "images_per_sec": 8.0}, {"step": 20, "images_per_sec": 64.0},
  ...            {"step": 20, "epoch": 1.0}, {"step": 30, "images_per_sec": 32.0},
  ...            {"step": 40, "images_per_sec": 16.0}]
  >>> seconds_per_step(records, batch_size=32)
  1.0
  """
  rates = [r["images_per_sec"] for r in records if "images_per_sec" in r][1:]
  return statistics.median(batch_size / rate for rate in rates) if rates else None


def run_result(path: str) -> tuple[float | None, float | None]:
  """A run's final test error (None until it has evaluated at its last step) and its median
  seconds per step (None with fewer than two logged windows)."""
  if not os.path.isfile(os.path.join(path, "metrics.jsonl")):
    return None, None
  with open(os.path.join(path, "config.json")) as f:
    config = json.load(f)
  records = read_metrics(path)
  error = final_value(records, config["num_epochs"], METRIC)
  return error, seconds_per_step(records, config["batch_size"])


def format_row(method: str, results: Sequence[tuple[float | None, float | None]]) -> str:
  """One markdown row: the method, its fields, test error mean ± sd (each seed's), time/step."""
  errors = [100 * e for e, _ in results if e is not None]
  times = [1000 * t for _, t in results if t is not None]
  if not errors:
    error = "-"
  else:
    spread = f" ± {statistics.stdev(errors):.2f}" if len(errors) > 1 else ""
    each = ", ".join(f"{e:.2f}" for e in errors)
    error = f"{statistics.mean(errors):.2f}{spread} ({each})"
  per_step = f"{statistics.median(times):.0f}" if times else "-"
  fields = " ".join(f"`{flag.removeprefix('--config.')}`" for flag in METHODS[method])
  return f"| {method} | {fields} | {error} | {per_step} |"


def table(out: str, methods: Sequence[str], seeds: Sequence[int]) -> str:
  header = [
    f"| method | fields | test error % over seeds {', '.join(map(str, seeds))}: mean ± sd "
    "(each) | ms per step (median) |",
    "|---|---|---|---|",
  ]
  rows = [format_row(m, [run_result(workdir(out, m, s)) for s in seeds]) for m in methods]
  return "\n".join(header + rows)


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  extra = argv[argv.index("--") + 1 :] if "--" in argv else []
  argv = argv[: argv.index("--")] if "--" in argv else argv
  parser = argparse.ArgumentParser(
    prog="sam_family.py", description="The SAM family side by side on the demo."
  )
  parser.add_argument("--out", default="runs/sam_family", help="where the runs go (%(default)s)")
  parser.add_argument("--config", default="configs/default.py", help="(%(default)s)")
  parser.add_argument("--seeds", default="0,1,2", help="comma-separated (%(default)s)")
  parser.add_argument(
    "--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}"
  )
  parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
  args = parser.parse_args(argv)
  methods = [m for m in args.methods.split(",") if m]
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    parser.error(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
  try:
    seeds = [int(s) for s in args.seeds.split(",") if s]
  except ValueError:
    parser.error(f"--seeds: must be comma-separated integers, got {args.seeds!r}")

  failed = []
  for method in methods:
    for seed in seeds:
      cmd = command(args.config, args.out, method, seed, extra)
      print(" ".join(cmd), flush=True)
      done = os.path.isfile(os.path.join(workdir(args.out, method, seed), "final_metrics.json"))
      if args.dry_run or done:
        continue
      status = subprocess.run(cmd, check=False).returncode
      if status >= 128 or status < 0:  # Stopped by a signal: the trainer saved; resume later.
        print(f"sam_family: interrupted in {workdir(args.out, method, seed)}", file=sys.stderr)
        return status if status > 0 else 128 - status
      if status:
        failed.append(workdir(args.out, method, seed))
  if args.dry_run:
    return 0
  text = table(args.out, methods, seeds)
  print(text)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "table.md"), "w") as f:
    f.write(text + "\n")
  if failed:
    print(f"sam_family: {len(failed)} run(s) failed: {' '.join(failed)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
