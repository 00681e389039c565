"""Batch groups make a run independent of its layout: with ``batch_group_size`` set, the same
config gives the same parameters and BatchNorm statistics on 1, 2 and 4 devices of one process,
on two processes, and with a device's groups in sequence, for plain training, gnp (per group,
synced, with the zero warmup, hybrid), ASAM and GSAM; without it (the GNP authors' per-device
semantics) 1 and 4 devices train different algorithms."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from _layouts import CASES
from _runs import ROOT, free_port, smoke_config

from gnreg import compilation, configuration

HERE = ROOT / "tests"
# Float32 rounding of sums taken in other orders (measured: at most 2e-7 of a leaf's largest
# value); per-device statistics instead of per-group ones move parameters by 1e-2 and more.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Every case on every layout: one process with 4 devices, and two with one each, at once."""
  out = tmp_path_factory.mktemp("layouts")
  script = str(HERE / "_layouts.py")
  port = str(free_port())
  # No compilation cache: no other process compiles these programs (the two processes compile
  # theirs at the same moment), and writing them cost about 4 CPU-s (sampled with py-spy).
  no_cache = {**os.environ, "JAX_ENABLE_COMPILATION_CACHE": "false"}
  one_device = {
    **no_cache,
    "XLA_FLAGS": f"--xla_force_host_platform_device_count=1 {compilation.run_once_flags()}",
  }
  four = {
    **no_cache,
    "XLA_FLAGS": f"--xla_force_host_platform_device_count=4 {compilation.run_once_flags()}",
  }
  commands = [
    ([sys.executable, script, "devices", str(out)], four),
    *(([sys.executable, script, "process", str(i), port, str(out)], one_device) for i in range(2)),
  ]
  started = [
    subprocess.Popen(
      cmd, cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    for cmd, env in commands
  ]
  for process in started:
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
  return out


def _load(out, case: str, layout: str) -> tuple[dict[str, np.ndarray], list[bool]]:
  with np.load(out / f"{case}.{layout}.npz") as f:
    leaves = dict(f)
  return leaves, json.loads((out / f"{case}.{layout}.json").read_text())


def _largest_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[float, str]:
  """The largest difference of a leaf, relative to the leaf's largest value, and its path."""
  assert a.keys() == b.keys()
  return max((np.abs(a[k] - b[k]).max() / np.abs(a[k]).max(), k) for k in a)


@pytest.mark.parametrize("layout", ["2_devices", "4_devices", "sequential", "2_processes"])
@pytest.mark.parametrize("case", list(CASES))
def test_every_layout_trains_what_one_device_trains(runs, case, layout):
  reference, penalised = _load(runs, case, "1_devices")
  other, other_penalised = _load(runs, case, layout)
  difference, leaf = _largest_difference(reference, other)
  assert difference <= TOLERANCE, (leaf, difference)
  assert other_penalised == penalised


def test_four_devices_with_one_group_each_equal_one_device_with_four_in_sequence(runs):
  for case in CASES:
    difference, leaf = _largest_difference(
      _load(runs, case, "4_devices")[0], _load(runs, case, "sequential")[0]
    )
    assert difference <= TOLERANCE, (case, leaf, difference)


def test_without_groups_the_device_count_changes_the_algorithm(runs):
  # The control: per-device BatchNorm statistics and dropout draws are another algorithm, by far
  # more than the tolerance above. It shows the comparisons can fail.
  difference, _ = _largest_difference(
    _load(runs, "plain", "per_device_1")[0], _load(runs, "plain", "per_device_4")[0]
  )
  assert difference > 100 * TOLERANCE
  # And one group per device is the authors' per-device step itself.
  difference, _ = _largest_difference(
    _load(runs, "plain", "per_device_4")[0], _load(runs, "plain", "4_devices")[0]
  )
  assert difference <= TOLERANCE


def test_the_cases_exercise_what_they_name(runs):
  penalised = {case: _load(runs, case, "1_devices")[1] for case in CASES}
  assert penalised["plain"] == [False] * 4
  assert penalised["gnp"] == penalised["gnp_synced"] == penalised["asam"] == [True] * 4
  assert penalised["zero_warmup"] == [False, False, True, True]
  assert True in penalised["hybrid"] and False in penalised["hybrid"]
  assert penalised["gsam"] == [False] * 4  # gnp's flag: gsam has none, and perturbs every step.
  difference, _ = _largest_difference(
    _load(runs, "plain", "1_devices")[0], _load(runs, "gsam", "1_devices")[0]
  )
  assert difference > 100 * TOLERANCE
  # Synced and per-group perturbations are different algorithms.
  difference, _ = _largest_difference(
    _load(runs, "gnp", "1_devices")[0], _load(runs, "gnp_synced", "1_devices")[0]
  )
  assert difference > 100 * TOLERANCE


@pytest.mark.parametrize(
  ("changes", "devices", "message"),
  [
    (
      {"batch_group_size": 12},
      2,
      "batch_group_size: 12 does not divide the per-device batch of 16 (batch_size 32 over 2 "
      "devices); use one of 1, 2, 4, 8, 16",
    ),
    (
      {"batch_group_size": 64, "batch_size": 256},
      8,
      "batch_group_size: 64 is more than the per-device batch of 32 (batch_size 256 over 8 "
      "devices), and a group cannot span devices; train on at most 4 devices, raise batch_size, "
      "or choose a divisor of 32 (another m: another algorithm)",
    ),
    ({"batch_group_size": 0}, 1, "batch_group_size: must be a positive integer or None, got 0"),
    ({"batch_group_size": -4}, 4, "batch_group_size: must be a positive integer or None, got -4"),
    (
      {"sequential_groups": True},
      1,
      "sequential_groups: needs batch_group_size, the size of the groups processed one after "
      "another; got batch_group_size=None",
    ),
  ],
)
def test_a_bad_group_size_is_one_line_naming_the_field(changes, devices, message):
  with pytest.raises(configuration.ConfigError) as error:
    configuration.validate(smoke_config(**changes), num_devices=devices)
  assert str(error.value).startswith(message)
  assert "\n" not in str(error.value)
