"""PNG plots of a run's ``metrics.jsonl``: loss, error, gradient norm, learning rate."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import matplotlib

matplotlib.use("Agg")  # Runs on headless hosts; never opens a window.
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from gnreg.metric_writer import read_metrics  # noqa: E402

__all__ = ["plot_run"]

# file name -> (y label, [(metric key, legend label)], log scale)
_PLOTS = {
  "loss.png": ("loss", [("train/loss", "train"), ("test/loss", "test")], False),
  "error.png": ("top-1 error", [("train/top1_error", "train"), ("test/top1_error", "test")], False),
  "grad_norm.png": (
    "gradient norm",
    [("grad_norm", "before clipping"), ("clipped_grad_norm", "after clipping")],
    True,
  ),
  "learning_rate.png": ("learning rate", [("learning_rate", "learning rate")], True),
}


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
  points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
  return [s for s, _ in points], [v for _, v in points]


def _includes_l2(workdir: str) -> bool:
  """Whether the run's train loss has the L2 term in it (``config.json``'s l2_regularization)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return False
  with open(path) as f:
    return bool(json.load(f).get("l2_regularization"))


def figures(workdir: str) -> Iterator[tuple[str, Figure]]:
  """``(file name, figure)`` of each plot of ``workdir/metrics.jsonl`` that has data.

  Each title names the run (the workdir's name). A curve equal to one drawn before it (the
  gradient norm after clipping, when clipping never fired) is dashed with markers, so that
  both stay visible.
  """
  records = read_metrics(workdir)
  run_name = os.path.basename(os.path.abspath(workdir))
  labels = {"train/loss": "train (cross-entropy + L2)"} if _includes_l2(workdir) else {}
  for filename, (ylabel, keys, log_scale) in _PLOTS.items():
    curves = [(labels.get(key, label), *_series(records, key)) for key, label in keys]
    curves = [c for c in curves if c[1]]
    if not curves:
      continue
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, steps, values) in enumerate(curves):
      same_as = [name for name, s, v in curves[:i] if (s, v) == (steps, values)]
      if same_as:
        label += f" (identical to {same_as[0]})"
      ax.plot(
        steps,
        values,
        label=label,
        linestyle="--" if same_as else "-",
        marker="x" if same_as else ("o" if len(steps) < 30 else None),
      )
    ax.set_title(f"{run_name}: {ylabel}")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if log_scale and all(v > 0 for _, _, vs in curves for v in vs):
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    yield filename, fig


def plot_run(workdir: str) -> list[str]:
  """Writes ``workdir/plots/*.png`` (see :func:`figures`); returns the paths written."""
  out_dir = os.path.join(workdir, "plots")
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for filename, fig in figures(workdir):
    path = os.path.join(out_dir, filename)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
  return written
