"""The wheel is what a user installs: it holds the configs and commands, and runs outside the repo.

The wheel is built offline from a copy of the sources (``--no-build-isolation`` with the
setuptools of this environment: nothing is downloaded, and the checkout is not written to),
installed without its dependencies into a fresh venv that reads them from this environment
through a ``.pth`` line, and run by config name from a folder outside the repository.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile

import pytest
from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parents[1]
# What a wheel is built from; everything else in the checkout (tests, recipes, docs) is not in it.
WHEEL_SOURCES = ("gnreg", "configs", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in")
COMMANDS = ("gnreg-train", "gnreg-lr-find", "gnreg-autotune")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
  source = tmp_path_factory.mktemp("source")
  for name in WHEEL_SOURCES:
    path = ROOT / name
    if path.is_dir():
      shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    else:
      shutil.copy(path, source / name)
  out = tmp_path_factory.mktemp("dist")
  subprocess.run(
    [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index"]
    + ["--no-build-isolation", "--wheel-dir", str(out), str(source)],
    check=True,
    capture_output=True,
    text=True,
  )
  (built,) = out.glob("gnreg-*.whl")
  return built


@pytest.fixture(scope="module")
def venv(wheel: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
  """A fresh venv with only the wheel installed in it; the dependencies are this environment's."""
  root = tmp_path_factory.mktemp("venv")
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
  python = root / "bin" / "python"
  site_packages = subprocess.run(
    [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
    check=True,
    capture_output=True,
    text=True,
  ).stdout.strip()
  # A path line in a .pth file puts this environment's site-packages after the venv's own, and
  # does not run the .pth files there, so the editable install of the checkout stays out.
  pathlib.Path(site_packages, "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
  subprocess.run(
    [python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
    check=True,
    capture_output=True,
    text=True,
  )
  return root


def _clean_env() -> dict[str, str]:
  env = dict(os.environ)
  env.pop("PYTHONPATH", None)
  return env


def test_wheel_holds_every_package_the_configs_and_the_metadata(wheel: pathlib.Path) -> None:
  names = zipfile.ZipFile(wheel).namelist()
  packages = {
    ".".join(init.relative_to(ROOT).parent.parts) for init in (ROOT / "gnreg").rglob("__init__.py")
  }
  packages.add("gnreg.configs")
  in_wheel = {os.path.dirname(n).replace("/", ".") for n in names if n.endswith("/__init__.py")}
  assert packages <= in_wheel, f"pyproject's package list misses {sorted(packages - in_wheel)}"
  configs = {p.name for p in (ROOT / "configs").glob("*.py")}
  assert configs == {os.path.basename(n) for n in names if n.startswith("gnreg/configs/")}
  assert "gnreg/py.typed" in names
  dist_info = next(n.split("/")[0] for n in names if ".dist-info/" in n)
  license_text = zipfile.ZipFile(wheel).read(f"{dist_info}/licenses/LICENSE").decode()
  assert license_text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
  metadata = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
  assert "License-Expression: Apache-2.0" in metadata.splitlines()
  version = re.search(r'^__version__ = "(.+)"$', (ROOT / "gnreg" / "__init__.py").read_text(), re.M)
  assert f"Version: {version.group(1)}" in metadata.splitlines()
  entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
  for command in COMMANDS:
    assert f"{command} = " in entry_points


def test_installed_commands_train_a_shipped_config_by_name(venv: pathlib.Path, tmp_path) -> None:
  outside = tmp_path / "elsewhere"  # Neither the checkout nor its configs/ folder is near.
  outside.mkdir()
  where = subprocess.run(
    [venv / "bin" / "python", "-c", "import gnreg, gnreg.configs; print(gnreg.__file__)"],
    cwd=outside,
    env=_clean_env(),
    check=True,
    capture_output=True,
    text=True,
  ).stdout.strip()
  assert pathlib.Path(where).is_relative_to(venv), f"imported gnreg from {where}, not the wheel"
  # The run first, the three --help meanwhile: each command imports JAX and TensorFlow.
  log = tmp_path / "train.log"
  with open(log, "w") as stderr:
    run = subprocess.Popen(
      # A quarter of the smoke run: a shipped config by name is what this test is about.
      [
        venv / "bin" / "gnreg-train",
        "--config=default:smoke",
        "--workdir=run",
        "--config.num_epochs=0.25",
        "--config.schedule.warmup_epochs=0.1",
      ],
      cwd=outside,
      env=_clean_env(),
      stdout=stderr,
      stderr=stderr,
    )
  try:
    for command in COMMANDS:
      shown = subprocess.run(
        [venv / "bin" / command, "--help"], cwd=outside, env=_clean_env(), capture_output=True
      )
      assert shown.returncode == 0, f"{command} --help: {shown.stderr.decode()[-2000:]}"
      assert b"--config" in shown.stdout + shown.stderr, command
    run.wait(timeout=300)
  finally:
    run.kill()
  assert run.returncode == 0, log.read_text()[-3000:]
  final = json.loads((outside / "run" / "final_metrics.json").read_text())
  assert final["step"] == 11, final  # A quarter of an epoch of 44 steps.


# The trainer's dependencies that the core (jax, optax, chex, numpy, tqdm) does not pull in.
CORE_CHECK = textwrap.dedent(
  """
  import importlib, importlib.abc, pkgutil, sys

  BLOCKED = set(sys.argv[1:])

  class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
      if name.partition(".")[0] in BLOCKED:
        raise ImportError(f"{name} is not a core dependency")

  sys.meta_path.insert(0, Blocked())
  import gnreg
  for package in ("gnreg.transforms", "gnreg.tuning"):
    for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
      importlib.import_module(f"{package}.{module.name}")

  import jax, jax.numpy as jnp, optax
  params = {"w": jnp.ones(3)}
  loss = lambda p: jnp.sum(jnp.sin(p["w"]))
  tx = optax.chain(gnreg.gnp(r=0.05, alpha=0.5), gnreg.agc(clipping=0.01), optax.sgd(0.1))
  updates, _ = tx.update(jax.grad(loss)(params), tx.init(params), params, grad_fn=jax.grad(loss))
  print(sorted(set(BLOCKED) & {m.partition(".")[0] for m in sys.modules}))
  """
)


def _dependencies(name: str, extra: str | None = None) -> set[str]:
  """The distributions ``name`` requires (with ``extra``, only those the extra adds)."""
  found = set()
  for text in importlib.metadata.requires(name) or ():
    requirement = Requirement(text)
    wanted = {"extra": extra or ""}
    marker_holds = requirement.marker is None or requirement.marker.evaluate(wanted)
    is_extra = requirement.marker is not None and "extra" in str(requirement.marker)
    if marker_holds and is_extra == (extra is not None):
      found.add(requirement.name)
  return found


def _closure(names: set[str]) -> set[str]:
  seen, todo = set(), set(names)
  while todo:
    name = todo.pop()
    key = name.lower().replace("_", "-")
    if key in seen:
      continue
    seen.add(key)
    try:
      todo |= _dependencies(name)
    except importlib.metadata.PackageNotFoundError:
      pass  # A dependency for another platform or Python.
  return seen


def test_the_library_imports_with_the_core_dependencies_alone() -> None:
  core = _closure(_dependencies("gnreg"))
  train_only = {
    name for name in _dependencies("gnreg", "train") if name.lower().replace("_", "-") not in core
  }
  modules = importlib.metadata.packages_distributions()
  blocked = sorted(
    module
    for module, dists in modules.items()
    if any(
      d.lower().replace("_", "-") in {n.lower().replace("_", "-") for n in train_only}
      for d in dists
    )
  )
  assert {"flax", "tensorflow", "matplotlib", "ml_collections"} <= set(blocked), blocked
  run = subprocess.run(
    [sys.executable, "-c", CORE_CHECK, *blocked], capture_output=True, text=True, cwd=ROOT
  )
  assert run.returncode == 0, run.stderr[-3000:]
  assert run.stdout.strip() == "[]"
  # A command of a core install says in one line what to install.
  blocker = CORE_CHECK.split("\nimport gnreg\n")[0]
  command = blocker + "\nimport gnreg.commands\ngnreg.commands.train()\n"
  run = subprocess.run(
    [sys.executable, "-c", command, *blocked], capture_output=True, text=True, cwd=ROOT
  )
  assert run.returncode == 1, run.stderr[-3000:]
  assert len(run.stderr.strip().splitlines()) == 1, run.stderr
  assert "gnreg-train needs the trainer's dependencies" in run.stderr
  assert "pip install 'gnreg[train]'" in run.stderr


def test_what_pip_wheel_leaves_in_the_checkout_is_ignored() -> None:
  """``pip wheel .`` in the checkout builds in ``build/`` (and egg-info): git ignores both, so
  a build leaves nothing to commit."""
  for built in ("build/lib/gnreg/__init__.py", "build/bdist.linux-x86_64", "gnreg.egg-info/x"):
    check = subprocess.run(["git", "check-ignore", "-q", built], cwd=ROOT)
    assert check.returncode == 0, f"{built} is not ignored"
