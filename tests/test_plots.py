"""The run's plots say what they show: its name, L2 in the loss, curves that coincide."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt

from gnreg import plots


def test_titles_name_the_run_loss_names_l2_and_an_identical_curve_stays_visible(tmp_path):
  workdir = tmp_path / "my_run"
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps({"l2_regularization": 5e-4}))
  records = [
    {"step": s, "train/loss": 1.0 / s, "grad_norm": 2.0 / s, "clipped_grad_norm": 2.0 / s}
    for s in (1, 2, 3)
  ]
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

  figures = dict(plots.figures(str(workdir)))
  assert set(figures) == {"loss.png", "grad_norm.png"}
  for fig in figures.values():
    assert fig.axes[0].get_title().startswith("my_run: ")
  [loss] = figures["loss.png"].axes[0].get_lines()
  assert loss.get_label() == "train (cross-entropy + L2)"
  before, after = figures["grad_norm.png"].axes[0].get_lines()
  assert before.get_linestyle() == "-" and after.get_linestyle() == "--"
  assert after.get_marker() == "x" and "identical to before clipping" in after.get_label()
  for fig in figures.values():
    plt.close(fig)
  assert len(plots.plot_run(str(workdir))) == 2
