"""The recipes print commands the trainer accepts, and the clip-and-schedule sweep runs end to end.

A recipe's ``--dry-run`` line is parsed back with ``shlex`` and its flags are given to a fresh
``flags.FlagValues`` holding the trainer's flags (``ml_collections.config_flags`` loads the
config file and applies the overrides), then ``configuration.validate`` judges the config: no
training. Without ``--dry-run`` a recipe runs exactly what it prints (checked with stand-ins for
python and gcloud). The sweep trains two pairs for two steps each on ``digits`` and summarises
them; the full 15-pair grid is checked by ``--dry-run``.
"""

from __future__ import annotations

import doctest
import fnmatch
import importlib.util
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from absl import flags
from ml_collections import config_flags

from gnreg import compilation, configuration, data, models, optimizers, task
from gnreg.data import digits
from gnreg.data.config import validate_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
LAUNCHERS = {"gpu_host.sh", "tpu_pod.sh", "lr_find.sh", "clip_schedule_sweep.sh"}

# Recipe -> (default workdir, config fields the experiment is about).
# What every recipe that reproduces the GNP authors' runs shares (configuration.follow_gnp_authors).
AUTHORS = {
  "optimizer.nesterov": True,
  "regularize_kernels_only": False,
  "label_smoothing": 0.0,
  "clip.name": "global_norm",
  "clip.max_norm": 5.0,
  "gnp.normalize_base_grad": True,
  "half_precision": False,
  "data.mix_mode": "batch",
}
# Their ViT recipe (recipes/vit-cifar-basic-grwarmup.sh), shared by the GR-warmup columns.
AUTHORS_VIT = {
  **AUTHORS,
  "model.name": "ViT_S16_GNP",
  "optimizer.name": "adamw",
  "optimizer.weight_decay": 0.3,
  "optimizer.learning_rate": 1e-3,
  "schedule.warmup_epochs": 40.0,
  "gnp.r": 0.1,
  "num_epochs": 300,
}

# Recipe -> (default workdir, config fields the experiment is about).
EXPERIMENTS = {
  "cifar10_resnet.sh": (
    "runs/cifar10_resnet50",
    {
      **AUTHORS,
      "model.name": "ResNet50_GNP",
      "data.name": "cifar10",
      "batch_size": 256,
      "l2_regularization": 1e-3,
      "gnp.r": 0.1,
      "gnp.alpha": 0.8,
    },
  ),
  "cifar10_wrn.sh": (
    "runs/cifar10_wrn28_10",
    {**AUTHORS, "model.name": "WideResNet_28_10_GNP", "l2_regularization": 1e-3, "gnp.r": 0.1},
  ),
  "cifar10_shake_shake.sh": (
    "runs/cifar10_shake_shake_26_2x96d",
    {
      **AUTHORS,
      "model.name": "WideResNet_2_96_ShakeShake",
      "data.autoaugment": None,
      "data.cutout": 0,
      "batch_size": 256,
      "num_epochs": 1800,
    },
  ),
  "cifar10_pyramidnet_shakedrop.sh": (
    "runs/cifar10_pyramidnet272_shakedrop",
    {
      **AUTHORS,
      "model.name": "PyramidNet_272_200_ShakeDrop_GNP",
      "data.autoaugment": "cifar10",
      "data.mixup_alpha": 1.0,
      "data.cutout": 16,
      "batch_size": 128,
      "optimizer.learning_rate": 0.05,
      "l2_regularization": 5e-4,
      "num_epochs": 1800,
    },
  ),
  "cifar10_vit_basic.sh": (
    "runs/cifar10_vit_s_basic",
    {**AUTHORS_VIT, "gnp.alpha": 0.0, "gnp.warmup": None},
  ),
  "cifar10_vit_gr.sh": (
    "runs/cifar10_vit_s_gr",
    {**AUTHORS_VIT, "gnp.alpha": 1.0, "gnp.warmup": None},
  ),
  "cifar10_vit_gr_lambda.sh": (
    "runs/cifar10_vit_s_gr_lambda",
    {**AUTHORS_VIT, "gnp.alpha": 1.0, "gnp.warmup": "lambda", "gnp.warmup_epochs": 40.0},
  ),
  "cifar10_vit_gr_r.sh": (
    "runs/cifar10_vit_s_gr_r",
    {**AUTHORS_VIT, "gnp.alpha": 1.0, "gnp.warmup": "r", "gnp.warmup_epochs": 40.0},
  ),
  "cifar10_vit_gr_zero.sh": (
    "runs/cifar10_vit_s_gr_zero",
    {**AUTHORS_VIT, "gnp.alpha": 1.0, "gnp.warmup": "zero", "data.mixup_alpha": 0.0},
  ),
  "cifar10_vit_heavy_aug.sh": (
    "runs/cifar10_vit_s_heavy_aug",
    {
      **AUTHORS,
      "model.name": "ViT_S16_GNP",
      "data.mixup_alpha": 1.0,
      "num_epochs": 1200,
      "optimizer.learning_rate": 5e-4,
      "optimizer.weight_decay": 0.03,
      "schedule.warmup_epochs": 0.0,
      "gnp.alpha": 0.8,
      "gnp.warmup": None,
    },
  ),
  "imagenet_resnet.sh": (
    "runs/imagenet_resnet50",
    {
      **AUTHORS,
      "model.name": "ResNet50",
      "data.name": "imagenet2012",
      "batch_size": 512,
      "optimizer.learning_rate": 0.2,
      "num_epochs": 100,
      "schedule.warmup_epochs": 0.0,
    },
  ),
  "imagenet_vgg.sh": (
    "runs/imagenet_vgg16bn",
    {
      **AUTHORS,
      "model.name": "VGG16BN_GNP",
      "data.name": "imagenet2012",
      "batch_size": 256,
      "optimizer.learning_rate": 0.1,
    },
  ),
  "imagenet_vit_agc.sh": (
    "runs/imagenet_vit_b16_agc",
    {"model.name": "ViT_B16", "data.name": "imagenet2012", "clip.name": "agc", "batch_size": 4096},
  ),
  "imagenet_vit_gsam.sh": (
    "runs/imagenet_vit_b32_gsam",
    {
      "model.name": "ViT_B16",
      "model.patch_size": 32,
      "data.name": "imagenet2012",
      "batch_size": 4096,
      "num_epochs": 300,
      "optimizer.name": "adamw",
      "optimizer.learning_rate": 3e-3,
      "schedule.name": "linear",
      "schedule.end_lr_fraction": 0.01,
      "clip.name": "global_norm",
      "clip.max_norm": 1.0,
      "gnp.method": "gsam",
      "gnp.gsam.rho_max": 0.6,
      "gnp.gsam.rho_min": 0.1,
      "gnp.gsam.alpha": 0.6,
    },
  ),
  "cifar10_pid.sh": (
    "runs/cifar10_resnet18_pid",
    {
      "model.name": "ResNet18",
      "pid.enabled": True,
      "schedule.name": "constant",
      "pid.min_lr": 1e-4,
      "pid.max_lr": 0.1,
    },
  ),
}
GRID = [(x, s) for x in ("0.1", "0.5", "1", "2", "5") for s in ("step", "exponential", "cyclic")]
# The interpreter a recipe run from the repository uses when PYTHON is unset: the checkout's
# .venv (where the README installs gnreg) when there is one.
DEFAULT_PYTHON = ".venv/bin/python" if (ROOT / ".venv" / "bin" / "python").exists() else "python3"


# Settings the recipes read from the environment: the tests choose them, not the caller's shell.
RECIPE_ENV = (
  "PYTHON",
  "DATA_DIR",
  "TFDS_DATA_DIR",
  "WORKDIR",
  "EXTRA_ARGS",
  "CONFIG",
  "SWEEP_DIR",
  "MAX_NORMS",
  "SCHEDULES",
  "RERUN",
  "GPUS",
  "TPU_NAME",
  "ZONE",
  "PROJECT",
  "REPO_DIR",
  "COORDINATOR_ADDRESS",
  "NUM_PROCESSES",
  "PROCESS_ID",
  "JAX_PLATFORMS",
  "CUDA_VISIBLE_DEVICES",
  "TPU_VISIBLE_CHIPS",
  "XLA_PYTHON_CLIENT_MEM_FRACTION",
  "XLA_PYTHON_CLIENT_PREALLOCATE",
  "XLA_FLAGS",
  "JAX_COMPILATION_CACHE_DIR",
)


def run(
  command: list[str], env: dict[str, str | None] | None = None, check: bool = True, **kwargs
) -> subprocess.CompletedProcess:
  """Runs ``command`` in the repository with only ``env`` (and DATA_DIR) of RECIPE_ENV set."""
  full_env = {k: v for k, v in os.environ.items() if k not in RECIPE_ENV}
  full_env.update({"DATA_DIR": "/data/tfds", **(env or {})})
  for key in [k for k, v in full_env.items() if v is None]:
    del full_env[key]
  result = subprocess.run(command, cwd=ROOT, env=full_env, capture_output=True, text=True, **kwargs)
  if check:
    assert result.returncode == 0, result.stderr + result.stdout
  return result


def recipe(name: str, *args: str, env: dict[str, str] | None = None, check: bool = True):
  return run(["bash", f"recipes/{name}", *args], env, check)


def commands(stdout: str) -> list[tuple[dict[str, str], list[str]]]:
  """The printed commands, each as (leading VAR=value settings, argv); '#' lines are notes."""
  parsed = []
  for line in stdout.splitlines():
    if not line.strip() or line.startswith("#"):
      continue
    words = shlex.split(line)
    env = {}
    while words and "=" in words[0] and not words[0].startswith("-"):
      key, value = words.pop(0).split("=", 1)
      env[key] = value
    parsed.append((env, words))
  return parsed


def parse_trainer_flags(args: list[str]) -> flags.FlagValues:
  """The flags of ``gnreg.main``, defined afresh and parsed from ``args``."""
  argv = ["gnreg.main", *args]
  values = flags.FlagValues()
  # The overrides are read from sys_argv (sys.argv by default) when --config is parsed.
  config_flags.DEFINE_config_file(
    "config", None, "", flag_values=values, lock_config=True, sys_argv=argv
  )
  flags.DEFINE_string("workdir", None, "", flag_values=values)
  flags.DEFINE_string("coordinator_address", None, "", flag_values=values)
  flags.DEFINE_integer("num_processes", None, "", flag_values=values)
  flags.DEFINE_integer("process_id", None, "", flag_values=values)
  flags.DEFINE_bool("distributed", False, "", flag_values=values)
  values(argv)
  return values


def accepted(
  argv: list[str], python: str = DEFAULT_PYTHON, num_devices: int = 4, module: str = "gnreg.main"
):
  """Checks that ``argv`` runs ``module`` with a config it accepts on ``num_devices`` devices
  (by default the GNP authors' four GPUs, where every reproduction's batch groups fit);
  returns its flags."""
  assert argv[:3] == [python, "-m", module], argv
  values = parse_trainer_flags(argv[3:])
  config = values.config
  assert config.batch_size % num_devices == 0, config.batch_size
  configuration.validate(config, num_devices=num_devices)
  validate_config(config.data)
  return values


def field(config, dotted: str):
  for part in dotted.split("."):
    config = config[part]
  return config


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
  monkeypatch.chdir(ROOT)  # The printed config paths are relative to the repository.


def test_every_recipe_is_tested():
  on_disk = {p.name for p in RECIPES.glob("*.sh")} - {"_common.sh"}
  assert on_disk == set(EXPERIMENTS) | LAUNCHERS


def batch_groups_table() -> dict[str, int]:
  """Recipe -> m, from the table of recipes/README.md's section on batch groups."""
  text = (RECIPES / "README.md").read_text()
  section = text.split("### m: the batch group of each recipe")[1].split("\n### ")[0]
  table = {}
  for line in section.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) == 4 and cells[2].isdigit():
      for pattern in re.findall(r"`([\w*]+\.sh)`", cells[0]):
        table.update({n: int(cells[2]) for n in fnmatch.filter(EXPERIMENTS, pattern)})
  return table


# The reproductions: the recipes of the authors' runs (follow_gnp_authors) and of big_vision's.
REPRODUCTIONS = sorted(
  name
  for name, (_, expected) in EXPERIMENTS.items()
  if "gnp.normalize_base_grad" in expected or name == "imagenet_vit_gsam.sh"
)


def test_every_reproduction_states_its_m():
  assert set(REPRODUCTIONS) <= set(batch_groups_table())


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_dry_run_prints_an_accepted_command(name):
  workdir, expected = EXPERIMENTS[name]
  [(env, argv)] = commands(recipe(name, "--dry-run").stdout)
  assert env == {}
  values = accepted(argv)
  assert values.workdir == workdir
  assert values.config.data.data_dir == "/data/tfds"
  for key, value in expected.items():
    assert field(values.config, key) == value, key
  # A reproduction sets the m its README row states (the authors' per-device batch).
  assert values.config.batch_group_size == batch_groups_table().get(name), name


def test_environment_and_arguments_reach_the_command():
  result = recipe(
    "cifar10_resnet.sh",
    "--dry-run",
    "--config.seed=4",
    "--config.schedule.decay_epochs=(1,2)",
    env={
      "WORKDIR": "/tmp/it's here",
      "DATA_DIR": "/d d",
      "PYTHON": "/opt/py",
      "EXTRA_ARGS": "--config.seed=3  --config.batch_size=512",
      "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5",
    },
  )
  [(env, argv)] = commands(result.stdout)
  assert env == {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5"}
  values = accepted(argv, python="/opt/py")
  assert values.workdir == "/tmp/it's here"
  assert values.config.data.data_dir == "/d d"
  assert values.config.batch_size == 512
  assert values.config.seed == 4  # The script's arguments come after EXTRA_ARGS: they win.
  assert tuple(values.config.schedule.decay_epochs) == (1, 2)


def test_dry_run_runs_nothing_and_help_prints_the_header(tmp_path):
  result = recipe("cifar10_resnet.sh", "--dry-run", env={"PYTHON": str(tmp_path / "missing")})
  assert "-m gnreg.main" in result.stdout
  usage = recipe("cifar10_pid.sh", "--help").stdout
  assert usage.startswith("ResNet-18 on CIFAR-10 with the PID regulator")
  assert "recipes/cifar10_pid.sh [--dry-run]" in usage and "source" not in usage


def recorder(tmp_path, name: str) -> pathlib.Path:
  """An executable ``name`` that writes its arguments, one a line, and its device settings."""
  path = tmp_path / name
  path.write_text(
    '#!/bin/sh\nprintf "%s\\n" "$@" > "$0.args"\n'
    'env | grep -E "^(CUDA_VISIBLE_DEVICES|XLA_PYTHON_CLIENT_MEM_FRACTION|'
    'JAX_PLATFORMS)=" | sort > "$0.env"\n'
  )
  path.chmod(0o755)
  return path


def test_a_recipe_runs_what_it_prints(tmp_path):
  python = recorder(tmp_path, "python")
  env = {"PYTHON": str(python), "EXTRA_ARGS": "--config.seed=2"}
  printed = recipe("cifar10_vit_heavy_aug.sh", "--dry-run", "--config.gnp.r=0.1", env=env).stdout
  assert not python.with_suffix(".args").exists()
  recipe("cifar10_vit_heavy_aug.sh", "--config.gnp.r=0.1", env=env)
  [(_, argv)] = commands(printed)
  assert python.with_suffix(".args").read_text().splitlines() == argv[1:]


def test_the_interpreter_is_python_else_the_projects_venv_else_python3(tmp_path):
  """A copy of the repository's recipes, with and without a .venv, proves each choice; a run
  whose interpreter lacks gnreg stops in one line, before printing what it would run."""
  repo = tmp_path / "repo"
  (repo / "recipes").mkdir(parents=True)
  for name in ("_common.sh", "cifar10_wrn.sh"):
    (repo / "recipes" / name).write_text((RECIPES / name).read_text())
  bin_dir = tmp_path / "bin"  # A python3 on the PATH that has none of the packages.
  bin_dir.mkdir()
  (bin_dir / "python3").write_text('#!/bin/sh\necho "gnreg jax"\n')
  (bin_dir / "python3").chmod(0o755)
  path = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}

  def printed(cwd, env):
    result = subprocess.run(
      ["bash", str(repo / "recipes" / "cifar10_wrn.sh"), "--dry-run"],
      cwd=cwd,
      env={**os.environ, **path, "PYTHON": "", **env},
      capture_output=True,
      text=True,
      check=True,
    )
    return commands(result.stdout)[0][1][0]

  assert printed(repo, {}) == "python3"
  refused = subprocess.run(
    ["bash", "recipes/cifar10_wrn.sh"],
    cwd=repo,
    env={**os.environ, **path, "PYTHON": ""},
    capture_output=True,
    text=True,
  )
  assert refused.returncode == 2 and not refused.stdout, refused.stdout
  assert refused.stderr.splitlines() == [
    "cifar10_wrn.sh: PYTHON: 'python3' cannot import gnreg, jax; install gnreg into it (pip "
    "install -e '.[train]'), or set PYTHON to the interpreter that has it, e.g. .venv/bin/python"
  ]
  (repo / ".venv" / "bin").mkdir(parents=True)
  venv_python = recorder(repo / ".venv" / "bin", "python")
  assert printed(repo, {}) == ".venv/bin/python"
  assert printed(tmp_path, {}) == f"{repo.resolve()}/.venv/bin/python"  # Outside: absolute.
  assert printed(repo, {"PYTHON": "/opt/py"}) == "/opt/py"
  subprocess.run(["bash", "recipes/cifar10_wrn.sh"], cwd=repo, env={**os.environ, "PYTHON": ""})
  assert "gnreg.main" in venv_python.with_suffix(".args").read_text().splitlines()


def test_outside_the_repository_the_config_path_is_absolute(tmp_path):
  result = subprocess.run(
    ["bash", str(RECIPES / "cifar10_wrn.sh"), "--dry-run"],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    check=True,
  )
  [(_, argv)] = commands(result.stdout)
  assert f"--config={ROOT}/configs/cifar10_wrn.py" in argv


def test_gsam_recipe_follows_the_rate_from_big_visions_peak_to_its_end():
  [(_, argv)] = commands(recipe("imagenet_vit_gsam.sh", "--dry-run").stdout)
  config = accepted(argv).config
  steps_per_epoch = 1281167 // 4096
  schedule = optimizers.learning_rate_schedule(config, steps_per_epoch)
  assert int(config.schedule.warmup_epochs * steps_per_epoch) == 9984
  assert optimizers.lowest_rate(config, steps_per_epoch) == pytest.approx(3e-5, rel=1e-4)
  assert float(schedule(9984)) == pytest.approx(3e-3)
  # big_vision's decay, wd * (rate / peak) * w, is AdamW's lr * weight_decay * w.
  assert config.optimizer.weight_decay * config.optimizer.learning_rate == pytest.approx(1e-3)


def test_agc_recipe_trains_a_batchnorm_free_network_with_agc():
  [(_, argv)] = commands(recipe("imagenet_vit_agc.sh", "--dry-run").stdout)
  config = accepted(argv).config
  model = models.create(config.model.name, num_classes=1000)
  variables = jax.eval_shape(
    lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), train=False)
  )
  assert "batch_stats" not in variables
  tx = optimizers.create(config, steps_per_epoch=312)
  jax.eval_shape(tx.init, variables["params"])  # clip.exclude must name existing parameters.


@pytest.mark.parametrize(
  "config",
  [
    "configs/cifar10_resnet.py:smoke",
    "configs/cifar10_wrn.py:smoke",
    "configs/cifar10_vit.py:variant=heavy_aug,smoke",
    "configs/cifar10_shake.py:smoke",
    "configs/cifar10_shake.py:variant=shakedrop,smoke",
    "configs/imagenet_vgg.py:smoke",
    "configs/imagenet_vit_agc.py:smoke",
    "configs/imagenet_vit_gsam.py:smoke",
  ],
)
def test_new_configs_smoke_variant_builds_on_digits(config):
  values = parse_trainer_flags([f"--config={config}"])
  config = values.config
  configuration.validate(config, num_devices=1)
  assert config.data.name == "digits"
  info = data.dataset_info(config.data)
  task.build_model(config, info)


CONFIGS = sorted((ROOT / "configs").glob("[!_]*.py"))


def load_config_module(path: pathlib.Path):
  spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_parse_arg_types_follow_the_defaults():
  arg = configuration.parse_arg(
    " smoke , steps=3,r=0.5,name=x,variant=b",
    smoke=False,
    steps=1,
    r=0.1,
    name="y",
    variant=("a", "b"),
    off=True,
  )
  assert arg.to_dict() == {
    "smoke": True,
    "steps": 3,
    "r": 0.5,
    "name": "x",
    "variant": "b",
    "off": True,
  }
  assert configuration.parse_arg(None, variant=("a", "b"), r=1).to_dict() == {
    "variant": "a",
    "r": 1,
  }
  assert configuration.parse_arg("off=false,r=2", off=True, r=0.1).to_dict() == {
    "off": False,
    "r": 2.0,
  }


@pytest.mark.parametrize(
  "arg, message",
  [
    ("smok", "config argument smok: unknown; allowed: smoke, steps=<int>, variant=a|b"),
    ("steps=1.5", "config argument steps: '1.5' is not an integer; allowed: "),
    ("steps", "config argument steps: needs a value (steps=...)"),
    ("variant=c", "config argument variant: 'c' is not one of a, b"),
    ("smoke=yes", "config argument smoke: 'yes' is not True or False"),
  ],
)
def test_parse_arg_refuses_in_one_line_naming_the_argument(arg, message):
  with pytest.raises(configuration.ConfigError) as error:
    configuration.parse_arg(arg, smoke=False, steps=1, variant=("a", "b"))
  assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_documents_its_command_and_arguments(path):
  module = load_config_module(path)
  doc = module.__doc__
  assert f"python -m gnreg.main --config=configs/{path.name}" in doc
  with pytest.raises(configuration.ConfigError) as error:
    module.get_config("no_such_argument")
  allowed = str(error.value).split("allowed: ")[1].split(", ")
  for item in allowed:  # 'smoke', 'model=<str>', 'variant=a|b'
    assert f"  {item.split('=')[0]}" in doc, item
  configuration.validate(module.get_config(), num_devices=1)


def test_lr_find_recipe_prints_an_accepted_finder_command():
  [(_, argv)] = commands(recipe("lr_find.sh", "--dry-run", "--config.lr_finder.num_lrs=50").stdout)
  values = accepted(argv, module="gnreg.lr_find")
  assert values.workdir == "runs/lr_find_cifar10_resnet"
  assert values.config.model.name == "ResNet50_GNP" and values.config.lr_finder.num_lrs == 50
  env = {"CONFIG": "configs/cifar10_vit.py:variant=zero", "COORDINATOR_ADDRESS": "host0:1234"}
  [(_, argv)] = commands(recipe("lr_find.sh", "--dry-run", env=env).stdout)
  values = accepted(argv, module="gnreg.lr_find")  # No multi-host flags: the finder has none.
  assert values.workdir == "runs/lr_find_cifar10_vit" and values.coordinator_address is None
  assert values.config.model.name == "ViT_S16_GNP"


def fake_nvidia_smi(tmp_path, lines: str) -> dict[str, str]:
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\nprintf '{lines}'\n")
  (bin_dir / "nvidia-smi").chmod(0o755)
  return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CUDA_VISIBLE_DEVICES": None}


def test_gpu_host_uses_every_gpu_and_splits_the_batch(tmp_path):
  env = fake_nvidia_smi(tmp_path, "0\\n1\\n2\\n3\\n")
  [(settings, argv)] = commands(recipe("gpu_host.sh", "--dry-run", "cifar10_wrn", env=env).stdout)
  assert settings == {
    "CUDA_VISIBLE_DEVICES": "0,1,2,3",
    "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.9",
    "JAX_PLATFORMS": "cuda",
  }
  assert accepted(argv, num_devices=4).config.model.name == "WideResNet_28_10_GNP"

  result = recipe(
    "gpu_host.sh",
    "recipes/cifar10_vit_gr_r.sh",
    "--dry-run",
    "--config.seed=7",
    env={**env, "GPUS": "1,3"},
  )
  [(settings, argv)] = commands(result.stdout)
  assert settings["CUDA_VISIBLE_DEVICES"] == "1,3"
  assert accepted(argv, num_devices=2).config.seed == 7


def test_gpu_host_exports_the_device_settings_to_the_trainer(tmp_path):
  python = recorder(tmp_path, "python")
  env = {**fake_nvidia_smi(tmp_path, "0\\n1\\n"), "PYTHON": str(python)}
  recipe("gpu_host.sh", "cifar10_resnet", env=env)
  assert python.with_suffix(".env").read_text().splitlines() == [
    "CUDA_VISIBLE_DEVICES=0,1",
    "JAX_PLATFORMS=cuda",
    "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9",
  ]
  assert "--config=configs/cifar10_resnet.py" in python.with_suffix(".args").read_text()


def test_gpu_host_refuses_to_run_without_gpus(tmp_path):
  result = recipe("gpu_host.sh", "cifar10_wrn", env=fake_nvidia_smi(tmp_path, ""), check=False)
  assert result.returncode == 2 and "GPUS" in result.stderr and not result.stdout
  result = recipe("gpu_host.sh", "--dry-run", "resnet", check=False)
  assert result.returncode == 2 and "RECIPE" in result.stderr and "cifar10_resnet" in result.stderr


def test_multi_host_gpu_flags():
  env = {
    "COORDINATOR_ADDRESS": "host0:1234",
    "NUM_PROCESSES": "2",
    "PROCESS_ID": "1",
    "GPUS": "0,1",
  }
  [(_, argv)] = commands(recipe("gpu_host.sh", "--dry-run", "imagenet_resnet", env=env).stdout)
  values = accepted(argv, num_devices=4)
  assert (values.coordinator_address, values.num_processes, values.process_id) == (
    "host0:1234",
    2,
    1,
  )


def test_tpu_pod_runs_the_recipe_on_every_worker():
  env = {
    "TPU_NAME": "pod",
    "ZONE": "us-central2-b",
    "WORKDIR": "/mnt/shared/r50",
    "DATA_DIR": "gs://b/tfds",
    # 64 examples a device on 32 chips: the recipe's m of 128 no longer fits, and the command
    # says which m the pod trains with.
    "EXTRA_ARGS": "--config.seed=5 --config.batch_size=2048 --config.batch_group_size=64",
  }
  result = recipe("tpu_pod.sh", "--dry-run", "imagenet_resnet", "--config.num_epochs=10", env=env)
  [(_, argv)] = commands(result.stdout)
  assert argv[:8] == [
    "gcloud",
    "compute",
    "tpus",
    "tpu-vm",
    "ssh",
    "pod",
    "--zone=us-central2-b",
    "--worker=all",
  ]
  [remote] = [a.removeprefix("--command=") for a in argv if a.startswith("--command=")]
  assert remote.startswith("cd gnreg && DISTRIBUTED=1 ")
  # What each worker runs, run here (the repository is the worker's REPO_DIR) as a dry run.
  local = run(
    ["bash", "-c", remote.removeprefix("cd gnreg && ") + " --dry-run"], env={"DATA_DIR": None}
  )
  [(_, worker_argv)] = commands(local.stdout)
  values = accepted(worker_argv, num_devices=32)  # A v4-64 slice: 32 chips.
  assert values.workdir == "/mnt/shared/r50" and values.config.data.data_dir == "gs://b/tfds"
  assert (values.config.seed, values.config.batch_size, values.config.num_epochs) == (5, 2048, 10)
  assert values.config.batch_group_size == 64
  assert values.distributed and values.coordinator_address is None  # JAX finds the pod.


def test_tpu_pod_runs_gcloud_as_printed(tmp_path):
  gcloud = recorder(tmp_path, "gcloud")
  env = {
    "TPU_NAME": "pod",
    "PROJECT": "proj",
    "REPO_DIR": "/opt/gnreg",
    "PATH": f"{tmp_path}:{os.environ['PATH']}",
  }
  printed = recipe("tpu_pod.sh", "--dry-run", "cifar10_wrn", env=env).stdout
  recipe("tpu_pod.sh", "cifar10_wrn", env=env)
  [(_, argv)] = commands(printed)
  assert argv[0] == "gcloud" and "--project=proj" in argv
  assert not any(a.startswith("--zone") for a in argv)  # gcloud's configured zone.
  assert gcloud.with_suffix(".args").read_text().splitlines() == argv[1:]
  assert argv[-1] == (
    "--command=cd /opt/gnreg && DISTRIBUTED=1 DATA_DIR=/data/tfds bash recipes/cifar10_wrn.sh"
  )


def test_tpu_pod_needs_a_tpu_name():
  result = recipe("tpu_pod.sh", "--dry-run", "imagenet_resnet", env={"TPU_NAME": ""}, check=False)
  assert result.returncode == 2 and "TPU_NAME" in result.stderr


def test_sweep_dry_run_covers_the_full_grid(tmp_path):
  sweep = tmp_path / "sweep"
  (sweep / "clip2_cyclic").mkdir(parents=True)
  (sweep / "clip2_cyclic" / "final_metrics.json").write_text("{}")
  result = recipe(
    "clip_schedule_sweep.sh", "--dry-run", "--config.seed=1", env={"SWEEP_DIR": str(sweep)}
  )
  assert f"# {sweep}/clip2_cyclic has finished: skipped" in result.stdout
  printed = commands(result.stdout)
  *trainings, (_, summarize) = printed
  assert summarize == [
    DEFAULT_PYTHON,
    "scripts/summarize.py",
    str(sweep),
    "--png",
    f"{sweep}/summary.png",
  ]
  pairs = []
  for _, argv in trainings:
    values = accepted(argv)
    config = values.config
    [max_norm] = [a.split("=")[1] for a in argv if a.startswith("--config.clip.max_norm=")]
    assert values.workdir == f"{sweep}/clip{max_norm}_{config.schedule.name}"
    assert config.clip.name == "global_norm" and config.seed == 1
    assert config.model.name == "ResNet50_GNP"  # configs/cifar10_resnet.py, the default base.
    pairs.append((config.clip.max_norm, config.schedule.name))
  expected = [(float(x), s) for x, s in GRID if (x, s) != ("2", "cyclic")]
  assert pairs == expected


def load_summarize():
  spec = importlib.util.spec_from_file_location("summarize", ROOT / "scripts" / "summarize.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def fake_run(workdir: pathlib.Path, max_norm, schedule, num_epochs, evals, metrics=True):
  """A workdir as the trainer leaves it: config.json and metrics.jsonl (2 steps per epoch)."""
  workdir.mkdir(parents=True)
  config = {
    "clip": {"name": "global_norm", "max_norm": max_norm},
    "schedule": {"name": schedule},
    "num_epochs": num_epochs,
  }
  (workdir / "config.json").write_text(json.dumps(config))
  if metrics:
    lines = []
    for epoch, error in evals:
      lines.append({"step": 2 * epoch, "train/loss": 1.0})
      lines.append(
        {
          "step": 2 * epoch,
          "epoch": float(epoch),
          "test/loss": 0.5,
          "test/top1_error": error,
          "test/top5_error": 0.0,
        }
      )
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_summarize_table_reads_pairs_from_config_and_hides_unfinished_runs(tmp_path, capsys):
  summarize = load_summarize()
  assert doctest.testmod(summarize).failed == 0
  sweep = tmp_path / "sweep"
  # Folder names disagree with the configs on purpose: the configs decide.
  fake_run(sweep / "clip5_step", 0.1, "cyclic", 2, [(1, 0.5), (2, 0.125)])
  fake_run(sweep / "a", 1.0, "step", 3, [(1, 0.4), (2, 0.3)])  # Unfinished: 4 of 6 steps.
  fake_run(sweep / "b", 2.0, "exponential", 1, [], metrics=False)  # Never logged.
  fake_run(sweep / "c", 5.0, "exponential", 1, [(1, "nan")])  # Diverged.
  fake_run(sweep / "d", 0.25, "cosine", 1, [(1, 0.0625)])  # Off the sweep's grid.
  (sweep / "notes").mkdir()
  png = tmp_path / "out" / "table.png"
  assert summarize.main([str(sweep), "--png", str(png)]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[1:8] == [
    "max_norm  step  exponential  cyclic  cosine",
    "     0.1     -            -   12.50       -",
    "    0.25     -            -       -    6.25",
    "     0.5     -            -       -       -",
    "       1     -            -       -       -",
    "       2     -            -       -       -",
    "       5     -          nan       -       -",
  ]
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summarize_rejects_a_missing_directory(tmp_path):
  with pytest.raises(SystemExit) as exit_info:
    load_summarize().main([str(tmp_path / "nowhere")])
  assert exit_info.value.code == 2


def test_sweep_trains_and_summarizes_end_to_end(tmp_path):
  # One cell of the grid, step decay (its boundary inside the short run): a run costs about
  # 10 s of CPU here (start-up, XLA compilation, plots), so the full grid is left to the dry run
  # above and the table's layout to the test before.
  sweep = tmp_path / "sweep"
  env = {
    "SWEEP_DIR": str(sweep),
    "CONFIG": "configs/default.py:smoke",
    "MAX_NORMS": "2",
    "SCHEDULES": "step",
    "PYTHON": sys.executable,
    "DATA_DIR": digits.default_data_dir(),  # Prepared offline, once, by the data layer.
    # Two steps of 512 images, gnp off: one gradient per step; the step decay inside them.
    "EXTRA_ARGS": "--config.num_epochs=1 --config.batch_size=512 --config.gnp.alpha=0.0 "
    "--config.schedule.warmup_epochs=0.0 --config.schedule.decay_epochs=(0.5,)",
    # Two steps each: XLA:CPU's optimisations would cost more than they save.
    "XLA_FLAGS": compilation.run_once_flags(),
  }
  result = run(["bash", "recipes/clip_schedule_sweep.sh"], env, timeout=600)
  lines = result.stdout.splitlines()
  title = next(i for i, line in enumerate(lines) if line.startswith("final test/top1_error"))
  assert lines[title + 1].split() == ["max_norm", "step", "exponential", "cyclic"]
  table = {line.split()[0]: line.split()[1:] for line in lines[title + 2 : title + 7]}
  assert set(table) == {"0.1", "0.5", "1", "2", "5"}
  for max_norm, cells in table.items():
    if max_norm == "2":
      assert 0.0 <= float(cells[0]) <= 100.0 and cells[1:] == ["-", "-"], cells
    else:
      assert cells == ["-", "-", "-"]
  saved = json.loads((sweep / "clip2_step" / "config.json").read_text())
  assert (saved["clip"]["max_norm"], saved["schedule"]["name"]) == (2.0, "step")
  assert saved["schedule"]["decay_epochs"] == [0.5]
  assert saved["data"]["name"] == "digits" and saved["num_epochs"] == 1
  assert (sweep / "summary.png").read_bytes()[:4] == b"\x89PNG"

  again = run(["bash", "recipes/clip_schedule_sweep.sh", "--dry-run"], env).stdout
  assert [argv[1] for _, argv in commands(again)] == ["scripts/summarize.py"]  # Finished.
