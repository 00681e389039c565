"""Plots a PID run's gradient norm against its target and its rate, beside a fixed-rate run.

  python scripts/plot_pid_run.py --pid=runs/default_pid --fixed=runs/default_fixed \
      --out=docs/images/pid_default.png

Reads each workdir's ``metrics.jsonl`` and ``config.json`` (the trainer writes both); the README's
worked example of ``configs/default.py:pid`` is this script's figure. Prints, for each run, the
share of the steps at a rate below ``pid.max_lr`` and of those whose smoothed gradient norm (the
regulator's bias-corrected EMA) lies above 1.25 times the target, the last training loss and
the test error. Log every step (``--config.log_every_steps=1``) for the EMA to be the
regulator's.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from gnreg.transforms.pid import DEFAULT_SMOOTHING


def read(workdir: str) -> tuple[dict, dict[str, np.ndarray]]:
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  keys = ("step", "grad_norm", "learning_rate", "train/loss", "test/top1_error")
  series = {}
  for key in keys:
    pairs = [(r["step"], r[key]) for r in rows if key in r]
    series[key] = np.array(pairs, dtype=np.float64).reshape(-1, 2)
  return config, series


def summary(name: str, series: dict[str, np.ndarray], pid: dict) -> str:
  """The run's rate and norm against the regulator's target, and how well it trained."""
  norms, lrs = series["grad_norm"][:, 1], series["learning_rate"][:, 1]
  target = pid["target_norm"]
  beta = DEFAULT_SMOOTHING[pid.get("law", "log")] if pid["smoothing"] is None else pid["smoothing"]
  # The regulator's own view: the bias-corrected EMA of the norm (logged every step).
  ema = np.zeros_like(norms)
  m = 0.0
  for t, n in enumerate(norms):
    m = beta * m + (1 - beta) * n
    ema[t] = m / (1 - beta ** (t + 1))
  return (
    f"{name}: {len(norms)} steps; rate below {pid['max_lr']:g} on "
    f"{100 * np.mean(lrs < pid['max_lr'] * (1 - 1e-3)):.1f}% (lowest {lrs.min():.3g}); "
    f"smoothed gradient norm above 1.25 x target {target:g} on "
    f"{100 * np.mean(ema > 1.25 * target):.1f}% (highest {ema.max():.3g}); "
    f"last train loss {series['train/loss'][-1, 1]:.4f}, test error "
    f"{100 * series['test/top1_error'][-1, 1]:.2f}%"
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pid", required=True, help="workdir of the run with pid.enabled")
  parser.add_argument("--fixed", required=True, help="workdir of the fixed-rate run")
  parser.add_argument("--out", required=True, help="the PNG to write")
  args = parser.parse_args()
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  pid_config, pid = read(args.pid)
  _, fixed = read(args.fixed)
  target = pid_config["pid"]["target_norm"]
  print(summary("pid", pid, pid_config["pid"]))
  print(summary("fixed", fixed, pid_config["pid"]))
  fig = Figure(figsize=(8, 6.5))
  FigureCanvasAgg(fig)
  top, middle, bottom = fig.subplots(3, 1, sharex=True)
  for name, series, color in (("fixed rate", fixed, "C7"), ("pid_lr", pid, "C0")):
    top.plot(*series["grad_norm"].T, color=color, linewidth=0.8, label=name)
    middle.plot(*series["learning_rate"].T, color=color, label=name)
    bottom.plot(*series["train/loss"].T, color=color, linewidth=0.8, label=name)
  top.axhline(target, color="C3", linestyle="--", label=f"target {target:g}")
  top.set_yscale("log")
  top.set_ylabel("gradient norm")
  top.legend(fontsize="small")
  for bound in (pid_config["pid"]["min_lr"], pid_config["pid"]["max_lr"]):
    middle.axhline(bound, color="gray", linestyle=":", linewidth=0.8)
  middle.set_yscale("log")
  middle.set_ylabel("learning rate")
  bottom.set_yscale("log")
  bottom.set_ylabel("training loss")
  bottom.set_xlabel("step")
  bottom.legend(fontsize="small")
  fig.tight_layout()
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  fig.savefig(args.out, format="png", dpi=100)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
