"""`python -m gnreg.main` refuses bad configs and flags with one clear line, and explains itself.

Every case runs the real command in its own process; they all start together
so that the table costs about as much as its slowest row.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = f"--config={ROOT / 'configs' / 'default.py'}:smoke"

# name -> (command-line overrides, the field the message must name, extra environment)
CASES = {
  "unknown_model": (["--config.model.name=ResNet9000"], "model.name", {}),
  "unknown_optimizer": (["--config.optimizer.name=lamb"], "optimizer.name", {}),
  "unknown_dataset": (["--config.data.name=mnist"], "data.name", {}),
  "unknown_schedule": (["--config.schedule.name=linear"], "schedule.name", {}),
  "unknown_clip": (["--config.clip.name=norm"], "clip.name", {}),
  "unknown_warmup": (["--config.gnp.warmup=slow"], "gnp.warmup", {}),
  "zero_batch": (["--config.batch_size=0"], "batch_size", {}),
  "batch_above_dataset": (["--config.batch_size=2048"], "batch_size", {}),
  "negative_epochs": (["--config.num_epochs=-1"], "num_epochs", {}),
  "negative_image_size": (["--config.data.image_size=-3"], "data.image_size", {}),
  "negative_lr": (["--config.optimizer.learning_rate=-0.1"], "optimizer.learning_rate", {}),
  "negative_r": (["--config.gnp.r=-0.1"], "gnp.r", {}),
  "alpha_above_one": (["--config.gnp.alpha=1.5"], "gnp.alpha", {}),
  "zero_probability": (["--config.gnp.probability=0.0"], "gnp.probability", {}),
  "autotune_without_pid": (["--config.pid.autotune=True"], "pid.autotune", {}),
  "warmup_without_epochs": (
    ["--config.gnp.warmup=zero", "--config.gnp.warmup_epochs=0.0"],
    "gnp.warmup_epochs",
    {},
  ),
  "missing_dataset": (
    ["--config.data.name=cifar10", "--config.data.data_dir={empty}"],
    "data.data_dir",
    {},
  ),
  "batch_not_divisible": (
    ["--config.batch_size=30"],
    "batch_size",
    {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
  ),
  "image_too_small": (["--config.model.name=ViT_S16"], "data.image_size", {}),
  "unknown_field": (["--config.gnp.radius=0.1"], "--config.gnp.radius", {}),
  "unparsable_value": (["--config.gnp.alpha=half"], "--config.gnp.alpha", {}),
  "missing_config_file": ([f"--config={ROOT / 'configs' / 'nope.py'}"], "--config", {}),
  "unknown_config_argument": ([f"--config={ROOT / 'configs' / 'default.py'}:tiny"], "--config", {}),
  "unknown_flag": (["--num_devices=2"], "num_devices", {}),
  "unwritable_workdir": ([], "--workdir", {}),
  "url_workdir": ([], "--workdir", {}),
  # The damaged run's own length: another would be refused before its checkpoint is read.
  "corrupted_checkpoint": (["--config.num_epochs=1"], "checkpoint", {}),
}


def _tree_digest(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  for file in sorted(p for p in path.rglob("*") if p.is_file()):
    digest.update(str(file.relative_to(path)).encode())
    digest.update(file.read_bytes())
  return digest.hexdigest()


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
  base = tmp_path_factory.mktemp("main")
  (base / "empty").mkdir()
  (base / "a_file").write_text("not a directory")

  # A finished run whose newest checkpoint is then damaged.
  corrupted = base / "corrupted"
  subprocess.run(
    [sys.executable, "-m", "gnreg.main", SMOKE, f"--workdir={corrupted}", "--config.num_epochs=1"],
    check=True,
    capture_output=True,
    cwd=ROOT,
  )
  step_dirs = sorted((corrupted / "checkpoints").iterdir(), key=lambda p: p.name)
  for file in step_dirs[-1].rglob("*"):
    if file.is_file():
      file.write_bytes(b"\0garbage")

  procs, digests = {}, {}
  for name, (overrides, _, env) in CASES.items():
    workdir = base / "workdirs" / name
    if name == "unwritable_workdir":
      workdir = base / "a_file" / "run"
    elif name == "url_workdir":
      workdir = "gs://bucket/run"
    elif name == "corrupted_checkpoint":
      workdir = corrupted
    else:  # An existing run directory whose contents must survive the failure untouched.
      workdir.mkdir(parents=True)
      (workdir / "metrics.jsonl").write_text('{"step": 1}\n')
    digests[name] = _tree_digest(workdir) if pathlib.Path(workdir).is_dir() else None
    args = [a.format(empty=base / "empty") for a in overrides]
    procs[name] = (
      workdir,
      subprocess.Popen(
        [sys.executable, "-m", "gnreg.main", SMOKE, f"--workdir={workdir}", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      ),
    )
  results = {}
  for name, (workdir, proc) in procs.items():
    stdout, stderr = proc.communicate(timeout=600)
    after = _tree_digest(workdir) if pathlib.Path(workdir).is_dir() else None
    results[name] = (proc.returncode, stdout, stderr, digests[name] == after)
  shutil.rmtree(base, ignore_errors=True)
  return results


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_fails_with_one_clear_line(outcomes, name):
  returncode, stdout, stderr, unchanged = outcomes[name]
  field = CASES[name][1]
  assert returncode != 0
  assert "Traceback" not in stderr + stdout
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert len(lines) == 1, stderr
  assert lines[0].startswith("gnreg: error: ")
  assert field in lines[0], lines[0]
  assert unchanged, "the failed run changed its workdir"


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
  for out in (out_name, out_path):  # Every field, with its value.
    assert "name: ResNet20" in out and "batch_size: 32" in out and "allow_config_change:" in out
  assert out_name.replace("r: 0.05", "r: 0.25") == out_path
  _, err = unknown.communicate(timeout=300)
  lines = [line for line in err.splitlines() if line.strip()]
  assert unknown.returncode == 1 and len(lines) == 1, err
  assert "--config: no shipped config named 'defualt'" in lines[0] and "default" in lines[0]
  assert not (pathlib.Path(sys.executable).parent / "never_made").exists()
