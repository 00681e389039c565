"""The tuners on trainer configs: the two command-line tools and the trainer's own switches."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from _runs import ROOT, smoke_config

from gnreg import task, train, tune
from gnreg.metric_writer import read_metrics

SMOKE = f"--config={ROOT / 'configs' / 'default.py'}:smoke"
SMALL_FINDER = [
  "--config.lr_finder.num_lrs=12",
  "--config.lr_finder.num_subsamples=8",
  "--config.lr_finder.num_examples=256",
  "--config.lr_finder.min_lr=1e-4",
]
SMALL_AUTOTUNE = [
  "--config.pid.enabled=True",
  "--config.schedule.name=constant",
  "--config.schedule.warmup_epochs=0.0",
  "--config.pid.autotune_trials=4",
  "--config.pid.autotune_steps=6",
]


def _run(module, workdir, *args):
  out = subprocess.run(
    [sys.executable, "-m", module, SMOKE, f"--workdir={workdir}", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


def test_lr_find_cli_writes_plot_json_and_the_override(tmp_path):
  stdout = _run("gnreg.lr_find", tmp_path, *SMALL_FINDER, "--config.lr_finder.method=mean")
  result = json.loads((tmp_path / "lr_finder.json").read_text())
  assert len(result["lrs"]) == 12 and len(result["deltas"]) == 8
  assert f"--config.optimizer.learning_rate={result['best']['mean']:.6g}" in stdout
  assert (tmp_path / "lr_finder.png").read_bytes()[:4] == b"\x89PNG"


def test_autotune_cli_writes_plot_json_and_the_overrides(tmp_path):
  stdout = _run("gnreg.autotune", tmp_path, *SMALL_AUTOTUNE)
  result = json.loads((tmp_path / "pid_autotune.json").read_text())
  assert len(result["trials"]) >= 4
  assert f"--config.pid.kp={result['best']['kp']:.6g}" in stdout
  # A degenerate search recommends nothing: each problem is a line, the gains only a reference.
  said = [line for line in stdout.splitlines() if line.startswith("no recommendation: ")]
  assert said == [f"no recommendation: {p}" for p in result["problems"]]
  assert ("for reference only" in stdout) == bool(result["problems"])
  assert (tmp_path / "pid_autotune.png").read_bytes()[:4] == b"\x89PNG"


def _dotted(args):
  return {a.split("=")[0].removeprefix("--config."): _value(a.split("=")[1]) for a in args}


def _value(text):
  for cast in (int, float):
    try:
      return cast(text)
    except ValueError:
      pass
  return {"True": True, "False": False}.get(text, text)


def test_trainer_trains_with_the_finders_choice_and_keeps_it_on_resume(tmp_path):
  config = smoke_config(
    **{
      "num_epochs": 0.5,
      "schedule.name": "constant",
      "schedule.warmup_epochs": 0.0,
      "lr_finder.enabled": True,
      "lr_finder.method": "mean",
      **_dotted(SMALL_FINDER),
    }
  )
  train.run(tune.apply_tuning(task.prepare(config), str(tmp_path)), str(tmp_path))
  chosen = json.loads((tmp_path / "lr_finder.json").read_text())["best"]["mean"]
  logged = [r["learning_rate"] for r in read_metrics(str(tmp_path)) if "learning_rate" in r]
  assert logged and all(lr == pytest.approx(chosen, rel=1e-6) for lr in logged)
  assert json.loads((tmp_path / "config.json").read_text())["optimizer"]["learning_rate"] == (
    pytest.approx(chosen)
  )


def test_trainer_autotunes_pid_gains_before_training(tmp_path):
  config = smoke_config(**{"num_epochs": 0.5, "pid.autotune": True, **_dotted(SMALL_AUTOTUNE)})
  train.run(tune.apply_tuning(task.prepare(config), str(tmp_path)), str(tmp_path))
  gains = json.loads((tmp_path / "pid_autotune.json").read_text())["best"]
  saved = json.loads((tmp_path / "config.json").read_text())["pid"]
  assert {k: saved[k] for k in gains} == pytest.approx(gains)
  assert any("pid/error" in r for r in read_metrics(str(tmp_path)))
