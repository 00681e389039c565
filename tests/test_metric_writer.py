"""metrics.jsonl and TensorBoard across a restart: later steps dropped, a torn last line dropped,
NaN kept."""

from __future__ import annotations

import math

import pytest

from gnreg.metric_writer import MetricWriter, read_metrics, read_tensorboard_scalars


def test_truncate_after_drops_later_steps_and_a_half_written_line(tmp_path):
  writer = MetricWriter(str(tmp_path))
  for step in (10, 20, 30):
    writer.write(step, {"train/loss": 1.0 / step})
  writer.write(30, {"test/loss": float("nan")})
  writer.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 40, "train/lo')  # What kill -9 in the middle of a write leaves.

  resumed = MetricWriter(str(tmp_path))
  resumed.truncate_after(20)
  assert [r["step"] for r in read_metrics(str(tmp_path))] == [10, 20]
  resumed.truncate_after(20)  # Idempotent, as a second restart needs.
  resumed.write(30, {"train/loss": 0.5})
  resumed.close()
  assert read_metrics(str(tmp_path))[-1] == {"step": 30, "train/loss": 0.5}


def test_non_finite_values_round_trip(tmp_path):
  writer = MetricWriter(str(tmp_path))
  writer.write(1, {"a": float("nan"), "b": float("inf"), "c": 2})
  writer.close()
  record = read_metrics(str(tmp_path))[0]
  assert math.isnan(float(record["a"])) and float(record["b"]) == math.inf and record["c"] == 2


def test_tensorboard_after_a_resume_shows_no_abandoned_step(tmp_path):
  writer = MetricWriter(str(tmp_path))
  for step in (10, 20, 30):
    writer.write(step, {"train/loss": 1.0 / step})
  writer.close()

  resumed = MetricWriter(str(tmp_path))  # Restored from checkpoint 20: step 30 runs again.
  resumed.truncate_after(20)
  resumed.write(30, {"train/loss": 0.5})
  resumed.close()
  points = read_tensorboard_scalars(str(tmp_path))["train/loss"]
  assert [step for step, _ in points] == [10, 20, 30]
  assert [value for _, value in points] == pytest.approx([0.1, 0.05, 0.5])  # float32 in TB.


def test_a_writer_that_writes_nothing_leaves_no_event_file(tmp_path):
  writer = MetricWriter(str(tmp_path))
  writer.write(5, {"train/loss": 1.0})
  writer.close()
  again = MetricWriter(str(tmp_path))  # A finished run, run again: nothing to log.
  again.truncate_after(5)
  again.close()
  assert len(list((tmp_path / "tensorboard").iterdir())) == 1
