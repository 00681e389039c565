"""Where a run's numbers go: ``metrics.jsonl`` and TensorBoard event files.

Only process 0 writes; every other process holds a writer that does nothing, so
callers never ask which process they are.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any


class MetricWriter:
  """Appends one JSON object per call to ``workdir/metrics.jsonl`` and mirrors it to TensorBoard."""

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._summary = None
    if enabled:
      import tensorflow as tf  # Imported here: only the writing process needs TensorBoard.

      self._summary = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))

  def truncate_after(self, step: int) -> None:
    """Drops lines logged after ``step``: a resumed run logs those steps again.

    A last line without its newline is what a killed process left half-written: dropped too.
    """
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = [line for line in f if line.strip()]
    if lines and not lines[-1].endswith("\n"):
      lines.pop()
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(kept)
    os.replace(tmp, self.path)

  def write(self, step: int, values: dict[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step)}
    record.update({k: _plain(v) for k, v in values.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    import tensorflow as tf

    with self._summary.as_default(step=int(step)):
      for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
          tf.summary.scalar(key, value)

  def close(self) -> None:
    if self._summary is not None:
      self._summary.flush()
      self._summary.close()


def _plain(value: Any) -> Any:
  """A JSON-ready Python scalar (NaN and inf become strings json can round-trip)."""
  if hasattr(value, "item"):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The records of ``workdir/metrics.jsonl``, in order."""
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
