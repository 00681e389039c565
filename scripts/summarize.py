r"""Tabulates the clip-and-schedule sweep: the final test error of every (max-norm, schedule) pair.

  python scripts/summarize.py runs/clip_schedule [--png runs/clip_schedule/summary.png]

Every folder directly under SWEEP_DIR that holds a ``config.json`` is one run
(``recipes/clip_schedule_sweep.sh`` makes one per pair). Its pair is read from the config
(``clip.max_norm``, ``schedule.name``), not from the folder's name, and its result is the last
evaluation in its ``metrics.jsonl`` once the run has evaluated at its last step
(``int(num_epochs * steps_per_epoch)``, the steps per epoch read off the evaluations' ``step``
and ``epoch``). Pairs without a run, or whose run has not finished, show as '-'; a run that
diverged shows 'nan'.

The table has one row per max-norm and one column per schedule: the sweep's grid (max-norm in
{0.1, 0.5, 1, 2, 5}; step, exponential and cyclic) and any other value found. The same table is
drawn as a heatmap to ``--png`` (default ``SWEEP_DIR/summary.png``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence

from gnreg.metric_writer import read_metrics

MAX_NORMS = (0.1, 0.5, 1.0, 2.0, 5.0)
SCHEDULES = ("step", "exponential", "cyclic")
METRICS = ("test/top1_error", "test/top5_error", "test/loss")

Pair = tuple[float, str]


def final_value(records: Sequence[dict], num_epochs: float, metric: str) -> float | None:
  """``metric`` of the evaluation at the run's last step, or None if it has not happened yet.

  >>> evals = [{"step": 10, "epoch": 1.0, "test/loss": 2.0},
  ...          {"step": 20, "epoch": 2.0, "test/loss": 1.5}]
  >>> final_value(evals, 2, "test/loss"), final_value(evals, 3, "test/loss")
  (1.5, None)
  """
  evals = [r for r in records if metric in r and r.get("epoch")]
  if not evals:
    return None
  last = max(evals, key=lambda r: r["step"])
  steps_per_epoch = round(last["step"] / last["epoch"])
  if last["step"] < int(num_epochs * steps_per_epoch):
    return None
  return float(last[metric])  # metrics.jsonl stores non-finite values as "nan" / "inf".


def collect(sweep_dir: str, metric: str = "test/top1_error") -> dict[Pair, float | None]:
  """The result of every run under ``sweep_dir``, keyed by its (max-norm, schedule) pair."""
  results: dict[Pair, float | None] = {}
  for name in sorted(os.listdir(sweep_dir)):
    workdir = os.path.join(sweep_dir, name)
    config_path = os.path.join(workdir, "config.json")
    if not os.path.isfile(config_path):
      continue
    with open(config_path) as f:
      config = json.load(f)
    if config["clip"]["name"] != "global_norm":
      print(
        f"summarize: skipping {workdir}: clip.name is {config['clip']['name']!r}, "
        "not 'global_norm'",
        file=sys.stderr,
      )
      continue
    pair = (float(config["clip"]["max_norm"]), config["schedule"]["name"])
    value = None
    if os.path.isfile(os.path.join(workdir, "metrics.jsonl")):
      value = final_value(read_metrics(workdir), config["num_epochs"], metric)
    if results.get(pair) is not None:
      if value is not None:
        print(
          f"summarize: {workdir} repeats the finished pair max_norm={pair[0]:g}, "
          f"schedule={pair[1]}; keeping the first",
          file=sys.stderr,
        )
      continue
    results[pair] = value
  return results


def grid_axes(results: dict[Pair, float | None]) -> tuple[list[float], list[str]]:
  """Rows (max-norms, ascending) and columns (the sweep's schedules, then others found)."""
  rows = sorted(set(MAX_NORMS) | {max_norm for max_norm, _ in results})
  columns = list(SCHEDULES) + sorted({s for _, s in results} - set(SCHEDULES))
  return rows, columns


def _cell(value: float | None, metric: str) -> str:
  if value is None:
    return "-"
  if math.isnan(value):
    return "nan"
  return f"{100 * value:.2f}" if metric.endswith("_error") else f"{value:.4f}"


def format_table(results: dict[Pair, float | None], metric: str, title: str) -> str:
  """The table as text: a title line, a header, one right-aligned row per max-norm."""
  rows, columns = grid_axes(results)
  header = ["max_norm", *columns]
  body = [
    [f"{max_norm:g}", *(_cell(results.get((max_norm, s)), metric) for s in columns)]
    for max_norm in rows
  ]
  widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
  aligned = [
    "  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in [header, *body]
  ]
  return "\n".join([title, *aligned])


def plot_heatmap(results: dict[Pair, float | None], metric: str, title: str, path: str) -> None:
  """Draws the table as a heatmap in the units of ``metrics.jsonl`` (an error as a fraction,
  where the text table shows percent), each cell labelled with its value."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  rows, columns = grid_axes(results)
  values = np.array(
    [[np.nan if results.get((m, s)) is None else results[(m, s)] for s in columns] for m in rows]
  )
  fig, ax = plt.subplots(figsize=(1.6 * len(columns) + 2.5, 0.6 * len(rows) + 1.8))
  image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis_r", aspect="auto")
  ax.set_xticks(range(len(columns)), columns)
  ax.set_yticks(range(len(rows)), [f"{m:g}" for m in rows])
  ax.set_xlabel("schedule")
  ax.set_ylabel("clip.max_norm")
  ax.set_title(title, fontsize=9)
  for i, m in enumerate(rows):
    for j, s in enumerate(columns):
      dark = np.isfinite(values[i, j]) and image.norm(values[i, j]) > 0.5  # viridis_r: dark top.
      ax.text(
        j,
        i,
        "-" if results.get((m, s)) is None else f"{results[(m, s)]:.4f}",
        ha="center",
        va="center",
        fontsize=9,
        color="white" if dark else "black",
      )
  if np.isfinite(values).any():
    fig.colorbar(image, ax=ax, label=f"{metric} (as in metrics.jsonl)")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="summarize.py", description="Final test error per (max-norm, schedule) pair."
  )
  parser.add_argument("sweep_dir", help="the sweep's folder (SWEEP_DIR of the sweep recipe)")
  parser.add_argument("--png", help="where to draw the heatmap (SWEEP_DIR/summary.png)")
  parser.add_argument(
    "--metric",
    default=METRICS[0],
    choices=METRICS,
    help="the evaluation metric tabulated (%(default)s)",
  )
  args = parser.parse_args(argv)
  if not os.path.isdir(args.sweep_dir):
    parser.error(f"sweep_dir: no such directory: {args.sweep_dir!r}")

  results = collect(args.sweep_dir, args.metric)
  if not results:
    print(f"summarize: no runs (folders with config.json) in {args.sweep_dir}", file=sys.stderr)
  unit = " (%)" if args.metric.endswith("_error") else ""
  title = f"final {args.metric}{unit} in {args.sweep_dir}; '-': no finished run"
  print(format_table(results, args.metric, title))
  png = args.png or os.path.join(args.sweep_dir, "summary.png")
  plot_heatmap(results, args.metric, f"final {args.metric} in {args.sweep_dir}", png)
  print(f"heatmap: {png}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
