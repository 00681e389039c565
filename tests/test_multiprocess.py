"""Two real processes, one CPU device each, train like one process with two devices."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
from _runs import ROOT, restore_checkpoint

# A BatchNorm-free model (ViT-Ti, patch 2 on digits), so per-device statistics cannot
# differ between the layouts; one epoch, with both warmups inside it.
OVERRIDES = ["--config.num_epochs=1", "--config.schedule.warmup_epochs=0.5",
             "--config.gnp.warmup_epochs=0.5"]


def _command(workdir, *extra):
  return [sys.executable, "-m", "gnreg.main",
          f"--config={ROOT / 'configs' / 'cifar10_vit.py'}:smoke", f"--workdir={workdir}",
          *OVERRIDES, *extra]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process_with_two_devices(tmp_path):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  port = _free_port()
  shared = tmp_path / "two_processes"
  workers = [
      subprocess.Popen(
          _command(shared, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                   f"--process_id={i}"),
          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  single = subprocess.run(
      _command(tmp_path / "one_process"), cwd=ROOT, capture_output=True, text=True,
      env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, timeout=600)
  for worker in workers:
    _, stderr = worker.communicate(timeout=600)
    assert worker.returncode == 0, stderr[-3000:]
  assert single.returncode == 0, single.stderr[-3000:]

  two, two_step = restore_checkpoint(shared)
  one, one_step = restore_checkpoint(tmp_path / "one_process")
  assert two_step == one_step
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               two["params"], one["params"])

  # One set of metrics, written once: each logged step appears once, as in the 1-process run.
  lines = [json.loads(line) for line in (shared / "metrics.jsonl").read_text().splitlines()]
  reference = (tmp_path / "one_process" / "metrics.jsonl").read_text().splitlines()
  assert [r["step"] for r in lines] == [json.loads(r)["step"] for r in reference]
  assert lines[-1]["test/count"] == 360
