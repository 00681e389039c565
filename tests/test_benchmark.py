"""Smoke test of scripts/benchmark.py and its sections (scripts/bench/): their machinery on a tiny
model, and the report's structure.

Speed is never asserted here; the benchmark itself reports it against the targets.
"""

import importlib.util
import json
import math
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

_SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "scripts")
sys.path.insert(0, _SCRIPTS)  # The sections' package, scripts/bench, as the script imports it.
from bench import common  # noqa: E402


def _load():
  path = os.path.join(_SCRIPTS, "benchmark.py")
  spec = importlib.util.spec_from_file_location("gnreg_benchmark_script", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


benchmark = _load()


class TinyNet(nn.Module):
  """Conv + BatchNorm + head: the step-time workload's shape at a compile cost of a second."""

  num_classes: int

  @nn.compact
  def __call__(self, images, *, train):
    x = nn.Conv(4, (3, 3))(images)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    return nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=(1, 2)))


SMOKE = common.tiny_settings("smoke", TinyNet)

EXPECTED_ROWS = {
  "1 step": {
    "bare step: SGD momentum",
    "bare step again / bare (noise floor)",
    "clip_by_global_norm / bare",
    "agc / bare",
    "pid_lr / bare",
    "monitor_clipping(identity)+monitor_updates / bare",
    "clip+agc+pid_lr+monitors chained / bare",
    "gnp / plain",
    "gnp zero-warmup phase / plain",
    "gnp penalised through lax.cond / plain",
    "exact_gnp (Hessian-vector product) / plain",
    "exact_gnp (Hessian-vector product) / gnp",
    "gnp adaptive=True (ASAM) / gnp",
    "looksam k=5 / plain",
    "looksam k=5 / gnp",
    "looksam reuse step / plain",
  },
  "2 trainer": {
    "hand-written jax.jit step",
    "gnreg trainer step / hand-written",
    "batch groups: grouped step / per-device step",
    "batch groups: sequential step / grouped step",
    "batch groups: grouped compiled memory / per-device",
    "batch groups: sequential temp memory / grouped",
    "input pipeline batches/s / trainer steps/s",
  },
  "3 memory": {"gnp compiled memory / plain (args+out+temp)", "gnp temp_size_in_bytes / plain"},
  "4 lr finder": {
    "gnreg find_lr end to end (incl. compile)",
    "gnreg find_lr warm (second call)",
    "autolrtuner (Keras) end to end",
    "speed-up vs autolrtuner, end to end",
    "speed-up vs autolrtuner, warm",
    "speed-up vs one-rate-at-a-time JAX loop, end to end",
    "speed-up vs one-rate-at-a-time JAX loop, warm",
  },
  "4 autotune": {
    "autotune_pid batched, end to end",
    "speed-up batched vs sequential, end to end",
    "speed-up batched vs sequential, warm",
    "gradient of 2 trials vmapped / of one",
  },
  "5 compile": {"TinyNet 8x8x3 batch 4"},
}
TARGETED = {
  "clip_by_global_norm / bare": "<= 1.05",
  "gnp / plain": "<= 2.05",
  "gnp zero-warmup phase / plain": "<= 1.03",
  "gnreg trainer step / hand-written": "<= 1.05",
  "batch groups: grouped step / per-device step": "<= 1.05",
  "batch groups: grouped compiled memory / per-device": "<= 1.1",
  "batch groups: sequential temp memory / grouped": "<= 1",
  "gnp compiled memory / plain (args+out+temp)": "<= 1.3",
  "speed-up vs autolrtuner, end to end": ">= 30",
  "speed-up vs autolrtuner, warm": ">= 100",
  "speed-up batched vs sequential, warm": ">= 4",
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  report = benchmark.run(SMOKE, command="python scripts/benchmark.py --smoke")
  path = tmp_path_factory.mktemp("bench") / "benchmark.json"
  common.write_report(report, str(path))
  with open(path) as f:
    return json.load(f)


def test_report_names_every_measurement_of_every_section(report):
  found = {}
  for r in report["rows"]:
    found.setdefault(r["section"], set()).add(r["name"])
  assert found == EXPECTED_ROWS


def test_rows_hold_a_number_or_a_reason_and_a_verdict_that_matches_the_target(report):
  by_name = {r["name"]: r for r in report["rows"]}
  for name, bound in TARGETED.items():
    assert by_name[name]["target"] == bound, name
  for r in report["rows"]:
    assert set(r) == {"section", "name", "value", "unit", "target", "pass", "detail", "note"}
    if r["value"] is None:
      assert r["note"], r["name"]
      assert r["pass"] is None
      continue
    assert math.isfinite(r["value"]) and r["value"] > 0, r
    if r["target"] is None:
      assert r["pass"] is None
    else:
      op, limit = r["target"].split()
      expected = r["value"] <= float(limit) if op == "<=" else r["value"] >= float(limit)
      assert r["pass"] is expected, r


def test_autolrtuner_rows_are_measured_or_say_why_not(report):
  keras = report["details"]["tuning"]["keras"]
  rows = [r for r in report["rows"] if "autolrtuner" in r["name"]]
  if importlib.util.find_spec("autolrtuner") is None:
    assert all(r["value"] is None and "autolrtuner" in r["note"] for r in rows)
  else:
    assert keras["e2e_s"] > 0 and keras["warm_s"] > 0, keras
    assert all(r["value"] is not None for r in rows)


def test_the_one_rate_loop_and_the_batched_finder_agree(report):
  # Like-for-like comparisons: the same differentials and the same trial losses.
  tuning = report["details"]["tuning"]
  assert tuning["loop_gap"] < 1e-4
  assert tuning["autotune"]["loss_gap"] < 1e-4


def test_report_carries_hardware_command_and_raw_timings(report):
  hw = report["hardware"]
  assert hw["platform"] == jax.default_backend()
  assert hw["devices"] == [str(d) for d in jax.devices()]
  assert hw["cpu_count"] == os.cpu_count() and hw["summary"]
  assert report["command"] == "python scripts/benchmark.py --smoke"
  assert report["settings"]["model"] == "TinyNet" and report["sections"] == [1, 2, 3, 4, 5]
  times = report["details"]["transforms"]["times_s"]
  assert set(times) == {
    "bare",
    "bare_again",
    "clip_by_global_norm",
    "agc",
    "pid_lr",
    "monitoring",
    "all_chained",
    "gnp",
    "gnp_zero_warmup",
  }
  assert all(len(t) == SMOKE.rounds for t in times.values())
  regularisation = report["details"]["regularisation"]["times_s"]
  assert set(regularisation) == {"bare", "gnp", "exact_gnp", "asam", "looksam", "looksam_reuse"}
  assert all(len(t) == SMOKE.rounds for t in regularisation.values())
  memory = report["details"]["transforms"]["memory"]["gnp"]
  assert memory["total_bytes"] > memory["temp_size_in_bytes"] > 0


def test_table_shows_command_hardware_and_each_verdict(report):
  table = common.format_table(report)
  assert table.startswith("command: python scripts/benchmark.py --smoke\nhardware: ")
  for r in report["rows"]:
    line = next(x for x in table.splitlines() if r["name"] in x)
    verdict = {True: "PASS", False: "MISS", None: "n/a" if r["note"] else "-"}[r["pass"]]
    assert f"  {verdict}  " in line or line.rstrip().endswith(verdict), line


def test_paired_ratio_is_the_median_of_per_round_ratios_and_min_ratio_of_minima():
  times = {"base": [1.0, 2.0, 1.0], "x": [1.1, 2.0, 3.0]}
  assert common.paired_ratio(times, "x", "base") == pytest.approx(1.1)
  assert common.min_ratio(times, "x", "base") == pytest.approx(1.1)
  assert common.min_ratio({"base": [2.0, 4.0], "x": [3.0, 1.0]}, "x", "base") == 0.5


def test_command_line_selects_settings_and_refuses_bad_sections():
  settings, sections, out = benchmark.parse_args(["--quick", "--sections", "4,1", "--out", "x"])
  assert settings == common.QUICK and sections == (1, 4) and out == "x"
  settings, _, _ = benchmark.parse_args(["--rounds", "2", "--no-autolrtuner"])
  assert settings.model == "WideResNet_16_4" and settings.rounds == 2
  assert not settings.autolrtuner
  with pytest.raises(SystemExit):
    benchmark.parse_args(["--sections", "1,6"])
  with pytest.raises(ValueError, match="sections"):
    benchmark.run(SMOKE, sections=(7,))
