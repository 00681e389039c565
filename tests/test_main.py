"""`python -m gnreg.main` refuses bad configs and flags with one clear line, and explains itself.

Every bad input runs through the command's own entry point in this process (``tests/_cli.py``):
the parse and validation path is plain Python, so its message, exit status and untouched
workdir are checked without starting a process per case. One real process then runs every case
through the same entry point, one after another, to prove what a shell sees: exit status 1, one
line on stderr, no traceback, and no workdir left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest
from _cli import run_command
from _runs import ROOT, smoke_config

from gnreg import task, train

SMOKE = f"--config={ROOT / 'configs' / 'default.py'}:smoke"
DEMO = f"--config={ROOT / 'configs' / 'default.py'}"
PID = f"--config={ROOT / 'configs' / 'default.py'}:pid,smoke"
# The damaged run is this short and plain (one gradient per step: the least to compile), and
# the case that resumes it repeats these fields: another length would be refused before its
# checkpoint is read.
SHORT = {"num_epochs": 0.25, "schedule.warmup_epochs": 0.0, "gnp.alpha": 0.0}
SHORT_ARGS = [f"--config.{k}={v}" for k, v in SHORT.items()]
# Config files that fail to load, each its own way (written by the fixture below).
BAD_CONFIGS = {
  "syntax.py": "def get_config(:\n  pass\n",
  "raises.py": "import ml_collections\n\nraise RuntimeError('boom at import')\n",
  "returns_int.py": "def get_config():\n  return 3\n",
}

# name -> (command-line arguments, the texts the one line must hold, the field first); the
# config is SMOKE unless the arguments start with another --config.
CASES = {
  "unknown_model": (["--config.model.name=ResNet9000"], ["model.name"]),
  "unknown_optimizer": (["--config.optimizer.name=lamb"], ["optimizer.name"]),
  "unknown_dataset": (["--config.data.name=mnist"], ["data.name"]),
  "unknown_schedule": (["--config.schedule.name=polynomial"], ["schedule.name"]),
  "unknown_clip": (["--config.clip.name=norm"], ["clip.name"]),
  "unknown_warmup": (["--config.gnp.warmup=slow"], ["gnp.warmup"]),
  "zero_batch": (["--config.batch_size=0"], ["batch_size"]),
  "batch_above_dataset": (["--config.batch_size=2048"], ["batch_size"]),
  "negative_epochs": (["--config.num_epochs=-1"], ["num_epochs"]),
  "epochs_below_one_step": (
    ["--config.num_epochs=0.01", "--config.schedule.warmup_epochs=0.0"],
    ["num_epochs", "0 steps", "num_epochs >= 0.02273"],
  ),
  "negative_image_size": (["--config.data.image_size=-3"], ["data.image_size"]),
  "negative_lr": (["--config.optimizer.learning_rate=-0.1"], ["optimizer.learning_rate"]),
  "negative_r": (["--config.gnp.r=-0.1"], ["gnp.r"]),
  "alpha_above_one": (["--config.gnp.alpha=1.5"], ["gnp.alpha"]),
  "zero_probability": (["--config.gnp.probability=0.0"], ["gnp.probability"]),
  "autotune_without_pid": (["--config.pid.autotune=True"], ["pid.autotune"]),
  "warmup_without_epochs": (
    ["--config.gnp.warmup=zero", "--config.gnp.warmup_epochs=0.0"],
    ["gnp.warmup_epochs"],
  ),
  "missing_dataset": (
    ["--config.data.name=cifar10", "--config.data.data_dir={empty}"],
    ["data.data_dir"],
  ),
  # Run with 4 devices (batch 32 divides, 30 does not).
  "batch_not_divisible": (["--config.batch_size=30"], ["batch_size", "4 devices"]),
  # The full demo: its smoke variant's ResNet-8 layout (model.stage_sizes) is no ViT field.
  "image_too_small": ([DEMO, "--config.model.name=ViT_S16"], ["data.image_size"]),
  "seed_too_large": (["--config.seed=99999999999999999999"], ["seed", "[0, 4294967295]"]),
  "negative_seed": (["--config.seed=-1"], ["seed", "[0, 4294967295]"]),
  "count_too_large": (["--config.keep_checkpoints=4294967296"], ["keep_checkpoints"]),
  "pid_max_lr_not_a_number": ([PID, "--config.pid.max_lr=nan"], ["pid.max_lr", "nan"]),
  "pid_negative_gain": ([PID, "--config.pid.kd=-0.5"], ["pid.kd"]),
  "autotune_space_reversed": (
    [PID, "--config.pid.autotune_space.kp=(5.0,0.1)"],
    ["pid.autotune_space.kp", "low <= high"],
  ),
  "unknown_field": (["--config.gnp.radius=0.1"], ["--config.gnp.radius"]),
  "unparsable_value": (["--config.gnp.alpha=half"], ["--config.gnp.alpha"]),
  "missing_config_file": ([f"--config={ROOT / 'configs' / 'nope.py'}"], ["--config"]),
  "unknown_config_argument": (
    [f"--config={ROOT / 'configs' / 'default.py'}:tiny"],
    ["--config", "config argument tiny: unknown"],
  ),
  "config_syntax_error": (
    ["--config={configs}/syntax.py"],
    ["--config", "syntax.py, line 1: SyntaxError: invalid syntax"],
  ),
  "config_raises_at_import": (
    ["--config={configs}/raises.py"],
    ["--config", "raises.py, line 3: RuntimeError: boom at import"],
  ),
  "config_not_a_config_dict": (
    ["--config={configs}/returns_int.py"],
    ["--config", "returns_int.py: get_config() returned 3 (type int), not an"],
  ),
  "unknown_flag": (["--num_devices=2"], ["num_devices"]),
  "unwritable_workdir": ([], ["--workdir"]),
  "url_workdir": ([], ["--workdir"]),
  "corrupted_checkpoint": (SHORT_ARGS, ["checkpoint"]),
}
# Cases whose workdir is given, not an ordinary one.
SPECIAL_WORKDIRS = {"unwritable_workdir", "url_workdir", "corrupted_checkpoint"}


def _tree_digest(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  for file in sorted(p for p in path.rglob("*") if p.is_file()):
    digest.update(str(file.relative_to(path)).encode())
    digest.update(file.read_bytes())
  return digest.hexdigest()


@pytest.fixture(scope="module")
def places(tmp_path_factory):
  """The fixed paths every case may name: an empty folder, a file, the bad config files, and a
  short finished run whose newest checkpoint is then damaged."""
  base = tmp_path_factory.mktemp("main")
  (base / "empty").mkdir()
  (base / "a_file").write_text("not a directory")
  (base / "configs").mkdir()
  for name, text in BAD_CONFIGS.items():
    (base / "configs" / name).write_text(text)
  corrupted = base / "corrupted"
  train.run(task.prepare(smoke_config(**SHORT)), str(corrupted))
  step_dirs = sorted((corrupted / "checkpoints").iterdir(), key=lambda p: p.name)
  for file in step_dirs[-1].rglob("*"):
    if file.is_file():
      file.write_bytes(b"\0garbage")
  return base


def _argv(name: str, places: pathlib.Path, workdir) -> list[str]:
  args = [a.format(empty=places / "empty", configs=places / "configs") for a in CASES[name][0]]
  if not args or not args[0].startswith("--config="):
    args.insert(0, SMOKE)
  return ["gnreg.main", args[0], f"--workdir={workdir}", *args[1:]]


def _special_workdir(name: str, places: pathlib.Path) -> str:
  return {
    "unwritable_workdir": str(places / "a_file" / "run"),
    "url_workdir": "gs://bucket/run",
    "corrupted_checkpoint": str(places / "corrupted"),
  }[name]


def _check_one_line(name: str, code: int, stdout: str, stderr: str) -> None:
  assert code == 1, (code, stderr)
  assert "Traceback" not in stderr + stdout
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert len(lines) == 1, stderr
  assert lines[0].startswith("gnreg: error: ")
  for text in CASES[name][1]:
    assert text in lines[0], (text, lines[0])


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_fails_with_one_clear_line(places, tmp_path, monkeypatch, name):
  """In this process: the one line, and a run directory left as it was, or not made at all."""
  if name == "batch_not_divisible":
    monkeypatch.setattr(jax, "device_count", lambda: 4)
  if name in SPECIAL_WORKDIRS:
    workdir = _special_workdir(name, places)
    before = _tree_digest(pathlib.Path(workdir)) if pathlib.Path(workdir).is_dir() else None
    _check_one_line(name, *run_command(_argv(name, places, workdir)))
    after = _tree_digest(pathlib.Path(workdir)) if pathlib.Path(workdir).is_dir() else None
    assert before == after, "the failed run changed its workdir"
    return
  existing = tmp_path / "existing"  # A run directory whose contents must survive untouched.
  existing.mkdir()
  (existing / "metrics.jsonl").write_text('{"step": 1}\n')
  before = _tree_digest(existing)
  _check_one_line(name, *run_command(_argv(name, places, existing)))
  assert _tree_digest(existing) == before, "the failed run changed its workdir"
  missing = tmp_path / "new" / "run"
  _check_one_line(name, *run_command(_argv(name, places, missing)))
  assert not (tmp_path / "new").exists(), "the failed run left a workdir behind"


def test_a_real_process_fails_each_bad_input_with_one_line(places, tmp_path):
  """One interpreter runs every case through the command's entry point, as a shell would
  start it: exit status 1, one line on stderr, no traceback, no workdir made, nothing else
  printed by the process (XLA and TensorFlow included). Four host devices for
  batch_not_divisible."""
  names = sorted(CASES)
  workdirs = {
    n: _special_workdir(n, places) if n in SPECIAL_WORKDIRS else tmp_path / n / "run" for n in names
  }
  (tmp_path / "cases.json").write_text(json.dumps([_argv(n, places, workdirs[n]) for n in names]))
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  process = subprocess.run(
    [sys.executable, str(ROOT / "tests" / "_cli.py"), str(tmp_path / "cases.json")],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert process.returncode == 0 and not process.stderr, process.stderr[-3000:]
  outcomes = [json.loads(line) for line in process.stdout.splitlines()]
  assert len(outcomes) == len(names), process.stdout[-3000:]
  for name, outcome in zip(names, outcomes, strict=True):
    _check_one_line(name, outcome["code"], outcome["stdout"], outcome["stderr"])
    if name not in SPECIAL_WORKDIRS:
      assert not (tmp_path / name).exists(), f"{name}: the failed run left a workdir behind"


def test_a_refused_run_removes_only_the_empty_workdir_it_made(tmp_path):
  """The safety net under the checks: a refusal after the workdir was made takes back the
  directories it made while they are empty, and nothing that was there or was written."""
  from absl import flags

  from gnreg import cli

  flags.FLAGS.unparse_flags()
  flags.FLAGS(["gnreg.main", f"--workdir={tmp_path / 'a' / 'b' / 'run'}"])
  try:
    assert cli.checked_workdir() == str(tmp_path / "a" / "b" / "run")
    with pytest.raises(SystemExit):
      cli.fail("refused")
    assert not (tmp_path / "a").exists()
    cli.checked_workdir()
    (tmp_path / "a" / "b" / "run" / "config.json").write_text("{}")
    with pytest.raises(SystemExit):
      cli.fail("refused after a write")
    assert (tmp_path / "a" / "b" / "run" / "config.json").exists()
  finally:
    flags.FLAGS.unparse_flags()


def _command(module, *args):
  """Starts ``python -m module args`` from outside the checkout, as an installed user would."""
  return subprocess.Popen(
    [sys.executable, "-m", module, *args],
    cwd=pathlib.Path(sys.executable).parent,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def test_help_shows_the_flags_an_example_and_how_to_list_the_fields():
  procs = {m: _command(m, "--help") for m in ("gnreg.main", "gnreg.lr_find", "gnreg.autotune")}
  for module, proc in procs.items():
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    for text in ("--config", "--workdir", "--print_config", "example:", f"-m {module} --config="):
      assert text in stdout, (module, text)
    assert "default" in stdout.split("shipped configs:")[1]
    assert ("--coordinator_address" in stdout) == (module == "gnreg.main")


def test_configs_by_name_or_path_and_print_config():
  by_name = _command("gnreg.main", "--config=default:smoke", "--print_config")
  by_path = _command("gnreg.main", f"{SMOKE}", "--print_config", "--config.gnp.r=0.25")
  unknown = _command("gnreg.main", "--config=defualt", "--workdir=never_made")
  out_name, err = by_name.communicate(timeout=300)
  assert by_name.returncode == 0, err
  out_path, err = by_path.communicate(timeout=300)
  assert by_path.returncode == 0, err
  for out in (out_name, out_path):  # Every field, with its value, in plain YAML.
    assert "name: ResNet20" in out and "batch_size: 32" in out and "allow_config_change:" in out
    assert "exclude: [head/*]" in out and "decay_epochs: [60, 120, 160]" in out
    assert "!!python" not in out and "&id" not in out
  assert out_name.replace("r: 0.05", "r: 0.25") == out_path
  _, err = unknown.communicate(timeout=300)
  lines = [line for line in err.splitlines() if line.strip()]
  assert unknown.returncode == 1 and len(lines) == 1, err
  assert "--config: no shipped config named 'defualt'" in lines[0] and "default" in lines[0]
  assert not (pathlib.Path(sys.executable).parent / "never_made").exists()
