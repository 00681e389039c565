"""The tuners on trainer configs: the two command-line tools and the trainer's own switches."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from _runs import ROOT, smoke_config

from gnreg import compilation, task, train, tune
from gnreg.metric_writer import read_metrics

SMOKE = f"--config={ROOT / 'configs' / 'default.py'}:smoke"
SMALL_FINDER = [
  "--config.lr_finder.num_lrs=12",
  "--config.lr_finder.num_subsamples=4",
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


def _run(module, workdir, *args, run_once=False):
  # run_once: XLA:CPU's cheapest compilation, for a command whose programs run a few times
  # each (measured: the autotune command in 11 s instead of 24 s; the lr finder's evaluations
  # run often enough that it took 31 s instead of 22 s).
  flags = {"XLA_FLAGS": compilation.run_once_flags()} if run_once else {}
  out = subprocess.run(
    [sys.executable, "-m", module, SMOKE, f"--workdir={workdir}", *args],
    cwd=ROOT,
    env={**os.environ, **flags},
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout, out.stderr


def _said(stderr):
  """stderr without the progress bars: the lines a user reads."""
  lines = stderr.replace("\r", "\n").splitlines()
  return [
    line for line in lines if not line.startswith(("find_lr subsamples", "autotune_pid steps"))
  ]


def test_lr_find_cli_widens_the_grid_and_writes_plot_json_and_the_override(tmp_path):
  # 'mean' chooses the grid's upper edge, 0.1: the grid grows once, by itself, in one line.
  stdout, stderr = _run(
    "gnreg.lr_find",
    tmp_path,
    *SMALL_FINDER,
    "--config.lr_finder.max_lr=0.1",
    "--config.lr_finder.method=mean",
  )
  result = json.loads((tmp_path / "lr_finder.json").read_text())
  assert len(result["lrs"]) > 12 and result["lrs"][11] == pytest.approx(0.1)
  assert len(result["deltas"]) == 4
  assert result["lrs"][0] < result["best"]["mean"] < result["lrs"][-1]
  assert f"--config.optimizer.learning_rate={result['best']['mean']:.6g}" in stdout
  said = [line for line in _said(stderr) if line.strip()]
  assert [line for line in said if "widening" in line] == said[1:2], said
  assert len(said) == 2 and "Traceback" not in stderr and "Warning" not in stderr, said
  assert (tmp_path / "lr_finder.png").read_bytes()[:4] == b"\x89PNG"


def test_autotune_cli_writes_plot_json_and_the_overrides(tmp_path):
  stdout, stderr = _run("gnreg.autotune", tmp_path, *SMALL_AUTOTUNE, run_once=True)
  result = json.loads((tmp_path / "pid_autotune.json").read_text())
  assert len(result["trials"]) >= 4
  assert f"--config.pid.kp={result['best']['kp']:.6g}" in stdout
  # A degenerate search recommends nothing: each problem is a line, the gains only a reference.
  said = [line for line in stdout.splitlines() if line.startswith("no recommendation: ")]
  assert said == [f"no recommendation: {p}" for p in result["problems"]]
  assert ("for reference only" in stdout) == bool(result["problems"])
  # Each problem is said once, on stdout: not again as a warning. The one warning left (the
  # rate outside the bounds) is one line, without the source line Python would print.
  assert result["problems"] and not any(p in stderr for p in result["problems"]), stderr
  said = [line for line in _said(stderr) if line.strip()]
  assert said[0].startswith("autotune_pid: ") and len(said) == 2, said
  assert said[1].startswith("gnreg: warning: autotune_pid: the initial rate 0.1"), said
  assert "Warning" not in stderr and "Traceback" not in stderr
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
      "num_epochs": 0.25,  # 11 steps: train lines at 10 and 11, both at the finder's rate.
      "schedule.name": "constant",
      "schedule.warmup_epochs": 0.0,
      "lr_finder.enabled": True,
      "lr_finder.method": "mean",
      **_dotted(SMALL_FINDER),
      # The grid's edge, as it comes: widening has its test above, and would cost a second
      # search and compilation here.
      "lr_finder.max_widenings": 0,
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
  config = smoke_config(**{"num_epochs": 0.25, "pid.autotune": True, **_dotted(SMALL_AUTOTUNE)})
  with pytest.warns(UserWarning) as caught:  # The small search is degenerate: it says so.
    tuned = tune.apply_tuning(task.prepare(config), str(tmp_path))
  said = [str(w.message) for w in caught]
  assert "lies outside [min_lr, max_lr]" in said[0]
  assert said[1:] == json.loads((tmp_path / "pid_autotune.json").read_text())["problems"]
  train.run(tuned, str(tmp_path))
  gains = json.loads((tmp_path / "pid_autotune.json").read_text())["best"]
  saved = json.loads((tmp_path / "config.json").read_text())["pid"]
  assert {k: saved[k] for k in gains} == pytest.approx(gains)
  assert any("pid/error" in r for r in read_metrics(str(tmp_path)))
