"""Two real processes, one CPU device each, train as one process with one device (this one)
does, even when one of them is preempted halfway: batch groups of 16 examples (one per process,
two on the one device) make the layout irrelevant."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
from _runs import ROOT, free_port, restore_checkpoint, with_changes

from configs import cifar10_vit
from gnreg import compilation, train

# A one-block ViT-Ti, patch 2 on digits, with gnp per batch group (cifar10_vit.py:smoke); half
# an epoch (22 steps), with both warmups inside it. Groups of 16 rather than the smoke config's
# 8: the step compiles each group's passes, and 8 cost each process 2.5 s more (measured).
OVERRIDES = {
  "model.depth": 1,  # One encoder block: 4.4 s of compilation per process for two, 2.6 for one.
  "batch_group_size": 16,
  "num_epochs": 0.5,
  "schedule.warmup_epochs": 0.25,
  "gnp.warmup_epochs": 0.25,
}
STEPS = 22
# The workers compile as this process does (tests/conftest.py), so that the two layouts differ
# only in the order of their sums: a third trainer process would cost 17 s of CPU, this one 9.
WORKER_ENV = {
  **os.environ,
  "XLA_FLAGS": f"--xla_force_host_platform_device_count=1 {compilation.run_once_flags()}",
}


def _command(workdir, *extra):
  return [
    sys.executable,
    "-m",
    "gnreg.main",
    f"--config={ROOT / 'configs' / 'cifar10_vit.py'}:smoke",
    f"--workdir={workdir}",
    *(f"--config.{field}={value}" for field, value in OVERRIDES.items()),
    *extra,
  ]


def _start_workers(workdir, port, env):
  return [
    subprocess.Popen(
      _command(
        workdir, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"
      ),
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]


def _wait(workers):
  results = []
  for worker in workers:
    _, stderr = worker.communicate(timeout=600)
    results.append((worker.returncode, stderr))
  return results


def _train_here(workdir):
  assert jax.device_count() == 1
  config = with_changes(cifar10_vit.get_config("smoke"), OVERRIDES)
  train.train_and_evaluate(config, str(workdir))


def test_two_processes_match_one_process_with_one_device_through_a_preemption(tmp_path):
  env = WORKER_ENV
  shared = tmp_path / "two_processes"
  workers = _start_workers(shared, free_port(), env)

  # Preempt process 0 alone, once it has restored (it writes config.json then): both must
  # stop after the same step and save that step together.
  deadline = time.monotonic() + 600
  while not (shared / "config.json").exists():
    assert workers[0].poll() is None and time.monotonic() < deadline, workers[0].stderr.read()
    time.sleep(0.05)
  workers[0].send_signal(signal.SIGTERM)
  for returncode, stderr in _wait(workers):
    assert returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "run the same command to resume" in stderr
  _, stopped_at = restore_checkpoint(shared)
  assert 0 < stopped_at < STEPS

  # The same two commands again: they resume from that step and finish, while the reference
  # trains here.
  workers = _start_workers(shared, free_port(), env)
  _train_here(tmp_path / "one_process")
  for returncode, stderr in _wait(workers):
    assert returncode == 0, stderr[-3000:]

  two, two_step = restore_checkpoint(shared)
  one, one_step = restore_checkpoint(tmp_path / "one_process")
  assert two_step == one_step == STEPS
  # The groups are averaged in other orders (a pmean over processes, a mean over a device's
  # groups): float32 rounding, which 22 steps grow chaotically. Each leaf must be within 1e-3 of
  # its largest value (measured: 7e-6 at most; 3e-4 with groups of 8), or, for a leaf training
  # barely moves (the class token, at 5e-3), within 1e-5 of the model's largest parameter: its
  # rounding comes from sums the size of the others. A wrong mean or perturbation moves leaves
  # far beyond both.
  # Attention's key bias cancels in the softmax: it has no gradient, and AdamW moves it by the
  # rounding noise alone (to 4e-5 here), differently in every layout; it only has to stay noise.
  largest = max(np.abs(b).max() for b in jax.tree.leaves(one["params"]))
  for (path, a), b in zip(
    jax.tree_util.tree_leaves_with_path(two["params"]), jax.tree.leaves(one["params"]), strict=True
  ):
    name = jax.tree_util.keystr(path)
    if "['key']['bias']" in name:
      assert max(np.abs(a).max(), np.abs(b).max()) < 1e-3, name
    else:
      bound = max(1e-3 * np.abs(b).max(), 1e-5 * largest)
      assert np.abs(a - b).max() <= bound, (name, np.abs(a - b).max(), bound)

  # One set of metrics, written once: each logged step appears once, as in the 1-process run.
  lines = [json.loads(line) for line in (shared / "metrics.jsonl").read_text().splitlines()]
  reference = (tmp_path / "one_process" / "metrics.jsonl").read_text().splitlines()
  assert [r["step"] for r in lines] == [json.loads(r)["step"] for r in reference]
  assert lines[-1]["test/count"] == 360
