"""PNG plots of a run's ``metrics.jsonl``: loss, error, gradient norm, learning rate."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # Runs on headless hosts; never opens a window.
import matplotlib.pyplot as plt  # noqa: E402

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


def plot_run(workdir: str) -> list[str]:
  """Writes ``workdir/plots/*.png`` from ``workdir/metrics.jsonl``; returns the paths written."""
  records = read_metrics(workdir)
  out_dir = os.path.join(workdir, "plots")
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for filename, (ylabel, keys, log_scale) in _PLOTS.items():
    curves = [(label, *_series(records, key)) for key, label in keys]
    curves = [c for c in curves if c[1]]
    if not curves:
      continue
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, steps, values in curves:
      ax.plot(steps, values, label=label, marker="o" if len(steps) < 30 else None)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if log_scale and all(v > 0 for _, _, vs in curves for v in vs):
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, filename)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
  return written
