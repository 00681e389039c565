"""scripts/accelerator_check.{sh,py} in its CPU mode: every figure of issue 15 next to its target.

Speed is never asserted: on a CPU the figures mean nothing. What is checked is that the script
runs end to end through its wrapper, and that the report has every figure with its target.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from gnreg import compilation

_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
_SCRIPT = os.path.join(_ROOT, "scripts", "accelerator_check.py")


def _load():
  spec = importlib.util.spec_from_file_location("gnreg_accelerator_check_script", _SCRIPT)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through it.
  spec.loader.exec_module(module)
  return module


check = _load()

ISSUE_TARGETS = {
  "gnp": "<= 2",
  "gnp_sam": "<= 1",
  "gnp_zero": "<= 1.02",
  "trainer": "<= 1.03",
  "pipeline": ">= 1",
  "lr_finder": ">= 300",
  "autotune": ">= 8",
}


def expected_figures(workloads, trainer_model):
  """Figure name -> target bound (None: shown without a target)."""
  figures = {}
  for w in workloads:
    figures |= {
      f"{w} plain step": None,
      f"{w} gnp / plain": "<= 2",
      f"{w} gnp / optax.contrib.sam": "<= 1",
      f"{w} gnp zero-warmup phase / plain": "<= 1.02",
      f"{w} optax.contrib.sam / plain": None,
      f"{w} compiled memory gnp / plain": None,
      f"{w} compiled memory sam / plain": None,
      f"{w} compiled memory gnp_zero_warmup / plain": None,
    }
  return figures | {
    f"trainer step / hand-written step ({trainer_model})": "<= 1.03",
    f"input pipeline img/s / trainer img/s ({trainer_model})": ">= 1",
    f"input pipeline img/s / {workloads[-1]} plain step img/s": ">= 1",
    f"input pipeline with Mixup+CutMix img/s / {workloads[-1]} plain step img/s": ">= 1",
    "lr finder end to end: sequential loop / find_lr": None,
    "lr finder warm: sequential loop / find_lr": ">= 300",
    "PID autotune end to end: sequential / batched": None,
    "PID autotune warm: sequential / batched": ">= 8",
  }


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  path = tmp_path_factory.mktemp("check") / "check.json"
  env = {
    **os.environ,
    "PYTHON": sys.executable,
    "JAX_PLATFORMS": "cpu",
    # digits is prepared here, not in the user's cache.
    "XDG_CACHE_HOME": str(path.parent),
    # Tiny programs, timed for nothing: XLA's cheapest compilation keeps the run short.
    "XLA_FLAGS": compilation.run_once_flags(),
  }
  result = subprocess.run(
    ["bash", os.path.join(_ROOT, "scripts", "accelerator_check.sh"), "--cpu", "--out", str(path)],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  with open(path) as f:
    return json.load(f) | {"stdout": result.stdout}


def test_the_targets_are_the_issues():
  assert {k: f"{op} {bound:g}" for k, (op, bound) in check.TARGETS.items()} == ISSUE_TARGETS


def test_the_accelerator_run_measures_the_issues_workloads():
  wrn, vit = check.ACCELERATOR.workloads
  assert (wrn.label, wrn.batch_size, wrn.image_shape, wrn.dtype) == (
    "WRN-28-10",
    128,
    (32, 32, 3),
    jnp.float32,
  )
  assert (vit.label, vit.batch_size, vit.image_shape, vit.dtype) == (
    "ViT-S/16",
    256,
    (224, 224, 3),
    jnp.bfloat16,
  )
  timing = check.ACCELERATOR.timing
  assert (timing.model, timing.batch_size, timing.image_shape) == (
    "WideResNet_28_10",
    128,
    wrn.image_shape,
  )
  assert (timing.autotune_trials, timing.lr_num_lrs, timing.lr_num_subsamples) == (16, 100, 100)
  assert check.TIME_LIMIT_S == 480


def test_cpu_report_has_every_figure_with_its_target(report):
  by_name = {r["name"]: r for r in report["rows"]}
  expected = expected_figures(["TinyConvNet", "TinyViT"], "TinyConvNet")
  assert set(by_name) == set(expected)
  for name, bound in expected.items():
    r = by_name[name]
    assert r["target"] == bound, name
    if r["value"] is None:
      assert r["note"] and r["pass"] is None, r
      continue
    assert math.isfinite(r["value"]) and r["value"] > 0, r
    if bound is None:
      assert r["pass"] is None
    else:
      op, limit = bound.split()
      assert r["pass"] is (r["value"] <= float(limit) if op == "<=" else r["value"] >= float(limit))
  # Compiled memory is measured on CPU too, and the ViT ran in bfloat16.
  assert by_name["TinyViT compiled memory gnp / plain"]["value"] > 0
  assert report["details"]["steps"]["TinyViT"]["dtype"] == "bfloat16"
  assert report["complete"] and report["targets"] == ISSUE_TARGETS
  assert set(report["section_s"]) == {"steps", "trainer", "tuning"}


def test_each_figure_is_printed_next_to_its_target(report):
  lines = report["stdout"].splitlines()
  for r in report["rows"]:
    line = next(x for x in lines if f"  {r['name']}  " in x)
    if r["target"]:
      assert r["target"] in line and ("PASS" in line or "MISS" in line or "n/a" in line), line


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an accelerator would run it in full")
def test_without_an_accelerator_the_full_run_is_refused():
  with pytest.raises(SystemExit):
    check.main(["--out", os.devnull])
