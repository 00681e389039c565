"""Faults the trainer must survive or report: non-finite steps, kill -9, and determinism."""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from _runs import ROOT, restore_checkpoint, smoke_config

from gnreg import data, task, train
from gnreg.metric_writer import read_metrics


def config(**changes):
  return smoke_config(**{"num_epochs": 1, "log_every_steps": 5, **changes})


def poison(monkeypatch, bad_steps):
  """Makes the images of the batches of the given (1-based) steps NaN; returns their ids."""
  original = data.train_iterator
  poisoned = {}

  def iterator(*args, **kwargs):
    start = kwargs.get("start_step", 0)
    for step, batch in enumerate(original(*args, **kwargs), start=start + 1):
      if step in bad_steps:
        batch = dict(batch, image=np.full_like(batch["image"], np.nan))
        poisoned[step] = batch["index"].tolist()
      yield batch

  monkeypatch.setattr(train.data, "train_iterator", iterator)
  return poisoned


def all_finite(records):
  return all(not isinstance(v, str) and math.isfinite(v) for r in records for v in r.values())


# A quarter epoch, 11 steps, for the runs that need no more than that.
QUARTER = {"num_epochs": 0.25, "schedule.warmup_epochs": 0.1}
# PID on a constant schedule and gnp together, so the test covers their states too.
PID_AND_GNP = {
  "pid.enabled": True,
  "schedule.name": "constant",
  "pid.max_lr": 0.1,
  "gnp.alpha": 0.5,
}


def test_skip_drops_the_bad_step_and_nothing_becomes_nan(monkeypatch, tmp_path):
  poison(monkeypatch, {7})
  # A quarter epoch, 11 steps: train lines at 5, 10 and 11 around the bad step 7.
  result = train.train_and_evaluate(config(**QUARTER, **PID_AND_GNP), str(tmp_path))
  records = read_metrics(str(tmp_path))
  assert all_finite(records)
  assert records[-2]["nonfinite_steps"] == 1  # The last train line.
  assert all("pid/error" in r for r in records if "train/loss" in r)
  assert math.isfinite(result["test/loss"])


def test_skip_gives_up_after_too_many_in_a_row(monkeypatch, tmp_path):
  poison(monkeypatch, set(range(10, 45)))
  with pytest.raises(train.NonFiniteError) as stopped:
    train.train_and_evaluate(config(max_consecutive_nonfinite=3), str(tmp_path))
  # The step the message names is the step of the checkpoint it saved.
  message = str(stopped.value)
  assert message.startswith(
    "nonfinite: 3 consecutive steps up to step 12 gave non-finite gradients "
    "(max_consecutive_nonfinite=3) and changed nothing; the state before them was saved as "
    "checkpoint 12; the parameter norm went from "
  )
  # The demo clips already: the advice is to clip harder, not to turn clipping on.
  assert message.endswith("lower optimizer.learning_rate, or lower clip.max_norm (now 5.0)")
  _, saved = restore_checkpoint(tmp_path)
  assert saved == 12
  assert all_finite(read_metrics(str(tmp_path)))


def test_halt_stops_at_the_bad_step_with_its_batch(monkeypatch, tmp_path):
  poisoned = poison(monkeypatch, {12})
  with pytest.raises(train.NonFiniteError) as stopped:
    train.train_and_evaluate(config(nonfinite="halt"), str(tmp_path))
  assert str(stopped.value).startswith(
    "nonfinite: step 12 gave a non-finite gradient and changed nothing; the state before it "
    "was saved as checkpoint 12 and the batch's example ids are in "
  )
  report = json.loads((tmp_path / "nonfinite_batch.process0.json").read_text())
  assert report == {"step": 12, "index": poisoned[12]}
  assert (tmp_path / "checkpoints" / "12").is_dir()


def test_a_divergence_is_reported_with_the_parameter_norm_growing_before_the_nan(tmp_path):
  # No clipping and a rate far too high: the parameters grow for some steps before the first
  # non-finite gradient. The report shows that growth, and the advice fits this config.
  diverging = config(**{"clip.name": "none", "optimizer.learning_rate": 1e4, "nonfinite": "halt"})
  with pytest.raises(train.NonFiniteError) as stopped:
    train.train_and_evaluate(diverging, str(tmp_path))
  message = str(stopped.value)
  growth = re.search(r"the parameter norm went from (\S+) at step (\d+) to (\S+) at step", message)
  assert growth, message
  assert float(growth[3]) > 10 * float(growth[1])
  assert "(it grew before the first non-finite gradient: the run was diverging)" in message
  assert message.endswith("lower optimizer.learning_rate, or set clip.name=global_norm")


def test_another_seed_draws_other_initial_weights_and_other_batches():
  # What config.seed decides before the first step; the whole runs are compared by the slow
  # test below, and same-seed runs by the resume tests (tests/test_train.py, kill -9 above).
  info = data.dataset_info(config().data)
  model = task.build_model(config(), info)

  def drawn(seed):
    seeded = config(seed=seed)
    variables = jax.jit(lambda: task.init_variables(model, seeded, info))()
    batch = next(data.train_iterator(seeded.data, global_batch_size=32, seed=seed))
    return jax.device_get(variables["params"]), batch["index"], batch["image"]

  first, again, other = drawn(0), drawn(0), drawn(1)
  for a, b, c in zip(first, again, other, strict=True):
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert any(
      not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c), strict=True)
    )


# The trainer end to end: the test above checks each thing a seed decides, tests/test_train.py and
# the kill -9 test that same-seed runs give the same records.
@pytest.mark.slow
def test_same_seed_same_metrics_and_other_seed_other_metrics(tmp_path):
  def run(seed, name):
    # 11 steps, with two train lines and the evaluation: every record a seed decides.
    train.train_and_evaluate(config(seed=seed, **QUARTER), str(tmp_path / name))
    return [
      {k: v for k, v in r.items() if k != "images_per_sec"}
      for r in read_metrics(str(tmp_path / name))
    ]

  first, again, other = run(0, "a"), run(0, "b"), run(1, "c")
  assert first == again
  assert first != other


def _cli(workdir):
  return [
    sys.executable,
    "-m",
    "gnreg.main",
    f"--config={ROOT / 'configs' / 'default.py'}:smoke",
    f"--workdir={workdir}",
    "--config.num_epochs=1",
    "--config.checkpoint_every_epochs=0.25",
  ]


def test_kill_9_then_rerun_equals_an_uninterrupted_run(tmp_path):
  reference = tmp_path / "reference"
  subprocess.run(_cli(reference), cwd=ROOT, check=True, capture_output=True, timeout=600)

  workdir = tmp_path / "killed"
  run = subprocess.Popen(
    _cli(workdir), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  # After checkpoint 11 or 22 (of 11, 22, 33, 44), at a random moment within the next few
  # steps: mid-step, mid-save or between the two.
  rng = random.Random(os.getpid())
  after = workdir / "checkpoints" / str(rng.choice([11, 22]))
  deadline = time.monotonic() + 600
  while not after.is_dir():
    assert run.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
    time.sleep(0.01)
  time.sleep(rng.uniform(0.0, 0.25))
  run.send_signal(signal.SIGKILL)
  assert run.wait() == -signal.SIGKILL, "the run ended before it was killed"
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert saved and saved[-1] < 44  # Killed mid-run: the rerun has steps left to take.
  subprocess.run(_cli(workdir), cwd=ROOT, check=True, capture_output=True, timeout=600)

  resumed, step = restore_checkpoint(workdir)
  expected, expected_step = restore_checkpoint(reference)
  assert step == expected_step == 44
  jax.tree.map(np.testing.assert_array_equal, resumed, expected)
  strip = lambda rs: [{k: v for k, v in r.items() if k != "images_per_sec"} for r in rs]
  assert strip(read_metrics(str(workdir))) == strip(read_metrics(str(reference)))


def test_a_second_signal_stops_at_once_even_during_compilation(tmp_path):
  # Without the suite's compilation cache, the train step takes seconds to compile: the two
  # signals arrive while the main thread is inside XLA, where Python's handlers cannot run.
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  run = subprocess.Popen(
    _cli(tmp_path / "run"),
    cwd=ROOT,
    env={**env, "JAX_ENABLE_COMPILATION_CACHE": "false"},
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  for line in run.stdout:
    if line.startswith("compiling the train step"):
      break
  run.send_signal(signal.SIGINT)
  time.sleep(0.3)
  run.send_signal(signal.SIGINT)
  stdout, stderr = run.communicate(timeout=60)
  assert run.returncode == 128 + signal.SIGINT
  assert "compiled;" not in stdout  # It did not wait for the compilation to end.
  assert stderr.strip().splitlines() == [
    "gnreg: a second signal: stopping at once, without a checkpoint"
  ]
  assert not (tmp_path / "run" / "checkpoints").exists() or not any(
    (tmp_path / "run" / "checkpoints").iterdir()
  )
