"""The README's main job, configs/default.py, trains to the accuracy the README states."""

from __future__ import annotations

import json
import pathlib

from _runs import ROOT  # noqa: F401  (puts the repository on sys.path for `configs`)

from configs import default
from gnreg import train


def test_the_embedded_demo_reaches_at_least_97_percent(tmp_path):
  result = train.train_and_evaluate(default.get_config(), str(tmp_path))
  assert result["test/count"] == 360
  assert result["test/top1_error"] <= 0.03  # The bar; measured: 0.0083.
  final = json.loads((pathlib.Path(tmp_path) / "final_metrics.json").read_text())
  assert final["step"] == 660 and final["test/top1_error"] == result["test/top1_error"]
