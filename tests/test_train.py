"""The trainer end to end on the embedded `digits` data."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from _runs import ROOT, restore_checkpoint, smoke_config

from gnreg import checkpoints, data, task, train
from gnreg.metric_writer import read_metrics, read_tensorboard_scalars


def restore_params(workdir):
  state, step = restore_checkpoint(workdir)
  return state["params"], step


# One epoch, 44 steps, with checkpoints at 22 and 44: the least that has a checkpoint to resume
# from before the last one, and an evaluation.
ONE_EPOCH = {"num_epochs": 1.0, "schedule.warmup_epochs": 0.25, "checkpoint_every_epochs": 0.5}


def run_config(**changes):
  """The shared run's config (the smoke config over one epoch) with ``changes``."""
  return smoke_config(**{**ONE_EPOCH, **changes})


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """One uninterrupted smoke run, shared by the tests that read its workdir."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = run_config()
  result = train.train_and_evaluate(config, workdir)
  return config, workdir, result


def test_end_to_end_writes_everything(finished_run):
  config, workdir, result = finished_run
  records = read_metrics(workdir)
  train_lines = [r for r in records if "train/loss" in r]
  eval_lines = [r for r in records if "test/loss" in r]
  assert train_lines and len(eval_lines) == config.num_epochs
  for key in (
    "step",
    "train/loss",
    "train/top1_error",
    "learning_rate",
    "grad_norm",
    "images_per_sec",
  ):
    assert key in train_lines[0], key
  for key in ("step", "epoch", "test/loss", "test/top1_error", "test/top5_error"):
    assert key in eval_lines[-1], key
  assert train_lines[-1]["train/loss"] < train_lines[0]["train/loss"]
  assert result["test/top1_error"] < 0.5  # One epoch already learns most digits.
  for name in ("loss.png", "error.png", "grad_norm.png", "learning_rate.png"):
    assert (pathlib.Path(workdir) / "plots" / name).read_bytes()[:4] == b"\x89PNG"
  assert json.loads((pathlib.Path(workdir) / "config.json").read_text())["model"]["name"]
  assert any((pathlib.Path(workdir) / "tensorboard").iterdir())


def test_eval_counts_every_example_once(finished_run):
  config, workdir, result = finished_run
  info = data.dataset_info(config.data)
  assert info.num_test % config.batch_size != 0  # The last batch is padded.
  assert result["test/count"] == info.num_test

  # The same numbers from one unpadded pass over the whole test split.
  state, _ = restore_checkpoint(workdir)
  params, batch_stats = state["params"], state["batch_stats"]
  model = task.build_model(config, info)
  batches = list(data.eval_iterator(config.data, global_batch_size=config.batch_size))
  images = np.concatenate([b["image"][b["mask"] > 0] for b in batches])
  labels = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
  assert len(labels) == info.num_test
  logits = model.apply({"params": params, "batch_stats": batch_stats}, images, train=False)
  top5 = jax.lax.top_k(logits, 5)[1]
  assert result["test/top1_error"] == pytest.approx(
    1.0 - float(jnp.mean(jnp.argmax(logits, -1) == labels)), abs=1e-6
  )
  assert result["test/top5_error"] == pytest.approx(
    1.0 - float(jnp.mean(jnp.any(top5 == labels[:, None], axis=-1))), abs=1e-6
  )
  assert result["test/loss"] == pytest.approx(
    float(jnp.mean(task.cross_entropy(logits, labels, 0.0))), rel=1e-5
  )


def test_resume_after_interruption_matches_an_uninterrupted_run(
  finished_run, tmp_path, monkeypatch, capsys
):
  config, reference_dir, _ = finished_run
  original = data.train_iterator

  def interrupted(*args, **kwargs):
    for i, batch in enumerate(original(*args, **kwargs)):
      if i == 30:  # Past the first checkpoint, at step 22.
        signal.raise_signal(signal.SIGTERM)
      yield batch

  monkeypatch.setattr(train.data, "train_iterator", interrupted)
  workdir = str(tmp_path)
  with pytest.raises(train.Preempted) as stopped:
    train.train_and_evaluate(config, workdir)
  assert 22 < stopped.value.step < 44
  _, saved_step = restore_params(workdir)
  assert saved_step == stopped.value.step

  monkeypatch.setattr(train.data, "train_iterator", original)
  capsys.readouterr()
  train.train_and_evaluate(config, workdir)
  resumed, _ = restore_params(workdir)
  reference, _ = restore_params(reference_dir)
  jax.tree.map(np.testing.assert_array_equal, resumed, reference)
  strip = lambda rs: [{k: v for k, v in r.items() if k != "images_per_sec"} for r in rs]
  assert strip(read_metrics(workdir)) == strip(read_metrics(reference_dir))

  # TensorBoard shows each step once, as the uninterrupted run does: nothing from the
  # abandoned steps after the checkpoint.
  tensorboard, expected = read_tensorboard_scalars(workdir), read_tensorboard_scalars(reference_dir)
  for tag in ("train/loss", "test/top1_error", "learning_rate"):
    assert [s for s, _ in tensorboard[tag]] == [s for s, _ in expected[tag]], tag
  # The first config stays; the resume's is recorded beside it.
  run_dir = pathlib.Path(workdir)
  assert (run_dir / "config.json").is_file()
  assert (run_dir / f"config.resume-{stopped.value.step}.json").is_file()
  # What happened, in plain lines: a log file gets no carriage-return progress updates.
  out, err = capsys.readouterr()
  assert f"resumed from step {stopped.value.step} of 44" in out
  assert "compiling the train step" in out
  assert "step 40/44: train loss" in out
  assert "finished at step 44: test top-1 error" in out and f"results in {workdir}" in out
  assert "\r" not in out + err


def _tree_digest(path):
  return {
    str(p.relative_to(path)): p.read_bytes()
    for p in sorted(pathlib.Path(path).rglob("*"))
    if p.is_file()
  }


@pytest.mark.parametrize(
  "change, field, values",
  [
    ({"model.name": "ResNet56"}, "model.name", ('"ResNet20"', '"ResNet56"')),
    ({"gnp.alpha": 0.8}, "gnp.alpha", None),
    ({"clip.name": "agc"}, "clip.name", None),
    # What a step sees, and the schedule's length.
    ({"batch_size": 64}, "batch_size", ("32", "64")),
    ({"num_epochs": 3.0}, "num_epochs", ("1.0", "3.0")),
    ({"data.augment": True}, "data.augment", ("false", "true")),
    ({"seed": 1}, "seed", ("0", "1")),
  ],
)
def test_resume_refuses_another_model_optimizer_batch_length_data_or_seed(
  finished_run, change, field, values
):
  config, workdir, _ = finished_run
  before = _tree_digest(workdir)
  with pytest.raises(train.ResumeError, match=rf"^{re.escape(field)}: .*allow_config_change"):
    train.train_and_evaluate(run_config(**change), workdir)
  assert _tree_digest(workdir) == before
  if values:
    with pytest.raises(train.ResumeError) as refused:
      train.train_and_evaluate(run_config(**change), workdir)
    was, now = values
    assert f"the run in {workdir} was trained with {was}, this config has {now};" in str(
      refused.value
    )


def test_allow_config_change_resumes_or_names_what_no_longer_fits(finished_run, tmp_path, capsys):
  _, reference_dir, result = finished_run
  workdir = tmp_path / "copy"
  shutil.copytree(reference_dir, workdir)
  # Without gnp the optimizer state has no gnp state: the checkpoint no longer fits it.
  misfit = run_config(**{"gnp.alpha": 0.0, "allow_config_change": True})
  with pytest.raises(train.ResumeError, match=r"^gnp\.alpha: .*does not fit") as refused:
    train.train_and_evaluate(misfit, str(workdir))
  assert "delete" not in str(refused.value)
  # A new learning rate fits the saved state: the finished run reports its result again,
  # says so, and writes no event file and no config record (nothing was trained).
  events = sorted((workdir / "tensorboard").iterdir())
  capsys.readouterr()
  again = train.train_and_evaluate(
    run_config(**{"optimizer.learning_rate": 0.05, "allow_config_change": True}), str(workdir)
  )
  assert again == result
  assert f"already finished at step 44; results in {workdir}" in capsys.readouterr().out
  assert sorted((workdir / "tensorboard").iterdir()) == events
  assert not list(workdir.glob("config.resume-*.json"))


# The paper's default, BatchNorm and gnp perturbing per group, in groups of 8: 4 per device on
# 1 device, 1 per device on 4. 11 steps: the layouts sum in different orders, and over longer
# runs that rounding grows chaotically.
GROUPED = {"batch_group_size": 8, "num_epochs": 0.25, "schedule.warmup_epochs": 0.1}

_MULTI_DEVICE_RUN = """
import sys
sys.path.insert(0, {tests!r})
import jax
from _runs import smoke_config
from gnreg import train
train.train_and_evaluate(smoke_config(**{changes!r}), {workdir!r})
print(jax.device_count())
"""


def _run_on_devices(num_devices, workdir):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}")
  code = _MULTI_DEVICE_RUN.format(tests=str(ROOT / "tests"), changes=GROUPED, workdir=str(workdir))
  out = subprocess.run(
    [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().splitlines()[-1] == str(num_devices)
  return restore_params(workdir)[0]


@pytest.mark.slow  # The same guarantee on the trainer's step: tests/test_batch_groups.py.
def test_four_devices_match_one_device(tmp_path):
  one = _run_on_devices(1, tmp_path / "one")
  four = _run_on_devices(4, tmp_path / "four")
  config = smoke_config(**GROUPED)
  info = data.dataset_info(config.data)
  model = task.build_model(config, info)
  start = jax.jit(lambda: task.init_variables(model, config, info))()["params"]
  for (path, a), b, s in zip(
    jax.tree_util.tree_leaves_with_path(one),
    jax.tree.leaves(four),
    jax.tree.leaves(start),
    strict=True,
  ):
    # Rounding leaves each parameter within 1e-3 of how far training moved it (measured:
    # 1e-5); a missing or doubled device mean, or a perturbation from the wrong gradient,
    # moves it by as much as training does.
    moved = np.abs(a - s).max()
    assert np.abs(a - b).max() <= 1e-3 * moved + 1e-7, (jax.tree_util.keystr(path), moved)


def test_a_damaged_newest_checkpoint_is_set_aside_and_the_rerun_ends_as_if_uninterrupted(
  finished_run, tmp_path, capsys
):
  config, reference_dir, result = finished_run
  workdir = tmp_path / "copy"
  shutil.copytree(reference_dir, workdir)
  (workdir / "final_metrics.json").unlink()
  newest = workdir / "checkpoints" / "44"
  for path in newest.rglob("*"):  # The data files of the newest step, truncated.
    if path.is_file() and path.parent.name == "d":
      path.write_bytes(b"")
  capsys.readouterr()
  again = train.train_and_evaluate(config, str(workdir))
  out = capsys.readouterr().out
  assert "checkpoint 44 cannot be restored (" in out
  assert f"moved it to {newest}.unreadable and resuming from the previous one" in out
  assert "resumed from step 22 of 44" in out
  assert (workdir / "checkpoints" / "44.unreadable").is_dir()
  resumed, step = restore_params(workdir)
  reference, _ = restore_params(reference_dir)
  assert step == 44
  jax.tree.map(np.testing.assert_array_equal, resumed, reference)
  assert again == result


def test_a_full_disk_during_a_save_is_one_line_and_keeps_what_was_written(
  finished_run, tmp_path, monkeypatch
):
  config, reference_dir, _ = finished_run
  workdir = tmp_path / "copy"
  shutil.copytree(reference_dir, workdir)
  shutil.rmtree(workdir / "checkpoints" / "44")  # The run resumes from 22 and saves 44 again.
  original = ocp.CheckpointManager.save

  def full_disk(self, step, *args, **kwargs):
    if step == 44:
      (workdir / "checkpoints" / "44.orbax-checkpoint-tmp").mkdir()  # What a failed write leaves.
      raise OSError(errno.ENOSPC, "No space left on device")
    return original(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
  with pytest.raises(checkpoints.CheckpointError) as refused:
    train.train_and_evaluate(config, str(workdir))
  message = str(refused.value)
  assert message.startswith(
    f"checkpoint: saving step 44 in {workdir / 'checkpoints'} failed: the disk is full;"
  )
  assert message.endswith("then the same command resumes from step 22") and "\n" not in message
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["22"]
  # The steps trained before the save are logged, in both outputs.
  assert read_metrics(str(workdir))[-1]["step"] == 44
  assert read_tensorboard_scalars(str(workdir))["test/top1_error"][-1][0] == 44
