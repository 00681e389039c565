"""Where a run's numbers go: ``metrics.jsonl`` and TensorBoard event files.

Only process 0 writes; every other process holds a writer that does nothing, so
callers never ask which process they are. TensorBoard events are written by clu's
``metric_writers.SummaryWriter``; ``metrics.jsonl`` is gnreg's own, since clu has
no line-per-record JSON writer and the tests, plots and resume need exact records.
"""

from __future__ import annotations

import glob
import json
import math
import os
from typing import Any

__all__ = ["MetricWriter", "read_metrics", "read_tensorboard_scalars"]

TENSORBOARD_DIR = "tensorboard"


class MetricWriter:
  """Appends one JSON object per call to ``workdir/metrics.jsonl`` and mirrors it to TensorBoard.

  The TensorBoard event file is opened on the first :meth:`write`, so a run that writes
  nothing (a finished run run again) leaves no empty event file behind.
  """

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.tensorboard_dir = os.path.join(workdir, TENSORBOARD_DIR)
    self._summary = None

  def truncate_after(self, step: int) -> None:
    """Drops what was logged after ``step``, from both outputs: a resumed run logs it again.

    A last line without its newline is what a killed process left half-written: dropped too.
    The event files are rewritten without the later events, so TensorBoard (whatever reads
    it) shows one curve through the restart rather than the abandoned steps beside the new.
    """
    if not self.enabled:
      return
    if os.path.exists(self.path):
      with open(self.path) as f:
        lines = [line for line in f if line.strip()]
      if lines and not lines[-1].endswith("\n"):
        lines.pop()
      kept = [line for line in lines if json.loads(line)["step"] <= step]
      tmp = self.path + ".tmp"
      with open(tmp, "w") as f:
        f.writelines(kept)
      os.replace(tmp, self.path)
    for path in _event_files(self.tensorboard_dir):
      _truncate_event_file(path, step)

  def write(self, step: int, values: dict[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step)}
    record.update({k: _plain(v) for k, v in values.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    scalars = {
      k: v
      for k, v in record.items()
      if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)
    }
    if self._summary is None:
      from clu import metric_writers  # Imported here: only the writing process needs TensorFlow.

      self._summary = metric_writers.SummaryWriter(self.tensorboard_dir)
    self._summary.write_scalars(int(step), scalars)

  def close(self) -> None:
    if self._summary is not None:
      self._summary.close()
      self._summary = None


def _plain(value: Any) -> Any:
  """A JSON-ready Python scalar (NaN and inf become strings json can round-trip)."""
  if hasattr(value, "item"):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


def _event_files(directory: str) -> list[str]:
  return sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*")))


def _events(path: str):
  """``(serialized, step, has_summary)`` of each whole record of an event file.

  A record cut short (kill -9 mid-write) ends the file, as for ``metrics.jsonl``.
  """
  import tensorflow as tf

  records = iter(tf.data.TFRecordDataset(path))
  while True:
    try:
      serialized = next(records).numpy()
    except (StopIteration, tf.errors.DataLossError):
      return
    event = tf.compat.v1.Event.FromString(serialized)
    yield serialized, event.step, event.HasField("summary")


def _truncate_event_file(path: str, step: int) -> None:
  """Rewrites ``path`` without the summaries after ``step`` (in place, keeping its name, so
  TensorBoard's file order stays); removes it if it holds no summary at all then."""
  import tensorflow as tf

  events = list(_events(path))
  kept = [(s, has) for s, event_step, has in events if not has or event_step <= step]
  if len(kept) == len(events) and os.path.getsize(path) == sum(len(s) + 16 for s, _ in kept):
    return  # Nothing after ``step`` and no torn record: leave the file as it is.
  if not any(has for _, has in kept):
    os.remove(path)
    return
  tmp = os.path.join(os.path.dirname(path), "rewrite.tmp")  # A name TensorBoard never reads.
  with tf.io.TFRecordWriter(tmp) as f:
    for serialized, _ in kept:
      f.write(serialized)
  os.replace(tmp, path)


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The records of ``workdir/metrics.jsonl``, in order."""
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def read_tensorboard_scalars(workdir: str) -> dict[str, list[tuple[int, float]]]:
  """``tag -> [(step, value), ...]`` from every event file of the run, in TensorBoard's order."""
  import tensorflow as tf

  scalars: dict[str, list[tuple[int, float]]] = {}
  files = [
    list(tf.compat.v1.train.summary_iterator(path))
    for path in _event_files(os.path.join(workdir, TENSORBOARD_DIR))
  ]
  # Files in the order they were started: a file's name holds its start in whole seconds only,
  # so a resume within the same second could sort before the run it continues.
  files.sort(key=lambda events: events[0].wall_time if events else 0.0)
  for events in files:
    for event in events:
      for value in event.summary.value:
        number = (
          float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") else value.simple_value
        )
        scalars.setdefault(value.tag, []).append((int(event.step), number))
  return scalars
