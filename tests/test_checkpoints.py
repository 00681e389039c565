"""gnreg.checkpoints on a small state: a damaged newest step is set aside and the previous one
restored, saves a crash interrupted are cleared away, and a failed save is one line."""

from __future__ import annotations

import errno
import os
import pathlib

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from gnreg import checkpoints


@pytest.fixture(autouse=True, scope="module")
def _orbax_silenced():
  # As the trainer's command: tensorstore finishes a failed restore's other reads later.
  undo = checkpoints.silence_orbax()
  yield
  undo()


STATE = {"step": jnp.zeros([], jnp.int32), "params": {"w": jnp.zeros((64, 8)), "b": jnp.zeros(8)}}


def _state(step: int):
  return {
    "step": jnp.asarray(step, jnp.int32),
    "params": {"w": jnp.full((64, 8), float(step)), "b": jnp.full(8, -float(step))},
  }


def _saved(tmp_path, steps=(1, 2, 3)) -> pathlib.Path:
  manager = checkpoints.open_manager(str(tmp_path), keep=5, say=print)
  for step in steps:
    checkpoints.save(manager, step, _state(step))
  checkpoints.close(manager)
  return tmp_path / checkpoints.CHECKPOINTS_DIR


def _truncate_data_files(step_dir: pathlib.Path) -> None:
  for path in step_dir.rglob("*"):
    if path.is_file() and path.parent.name == "d":
      path.write_bytes(b"")


def _restore(tmp_path, lines):
  with checkpoints.orbax_quiet():
    manager = checkpoints.open_manager(str(tmp_path), keep=5, say=lines.append)
    restored = checkpoints.restore_newest_readable(manager, STATE, lines.append)
    steps = manager.all_steps()
    checkpoints.close(manager)
  return restored, steps


def _delete_manifest(step_dir: pathlib.Path) -> None:
  (step_dir / "default" / "manifest.ocdbt").unlink()  # The index of the arrays' data.


@pytest.mark.parametrize("damage", [_truncate_data_files, _delete_manifest])
def test_the_newest_readable_step_is_restored_and_a_damaged_one_set_aside(tmp_path, capfd, damage):
  directory = _saved(tmp_path)
  damage(directory / "3")
  lines = []
  restored, steps = _restore(tmp_path, lines)
  assert int(restored["step"]) == 2
  np.testing.assert_array_equal(restored["params"]["w"], np.full((64, 8), 2.0))
  assert (directory / "3.unreadable").is_dir()  # Renamed, never deleted.
  assert steps == [1, 2]
  assert len(lines) == 1 and lines[0].startswith("checkpoint 3 cannot be restored (")
  assert lines[0].endswith(
    f"); moved it to {directory / '3.unreadable'} and resuming from the previous one"
  )
  # Orbax's own reports (absl error logs, callbacks on a closed event loop) are not shown.
  err = capfd.readouterr().err
  assert "Traceback" not in err and "Event loop is closed" not in err


def test_a_step_without_its_metadata_files_still_restores(tmp_path):
  # Orbax rebuilds what _CHECKPOINT_METADATA, _METADATA and _sharding held from the arrays and
  # the state's structure: such a step is not damaged, and is resumed from.
  directory = _saved(tmp_path)
  for path in (directory / "3").rglob("_*"):
    path.unlink()
  lines = []
  restored, steps = _restore(tmp_path, lines)
  assert int(restored["step"]) == 3 and steps == [1, 2, 3] and not lines


def test_when_no_step_restores_nothing_is_moved_and_the_refusal_lists_why(tmp_path):
  directory = _saved(tmp_path, steps=(1, 2))
  for step in ("1", "2"):
    _truncate_data_files(directory / step)
  with pytest.raises(checkpoints.Unrestorable) as refused:
    _restore(tmp_path, [])
  message = str(refused.value)
  assert message.startswith(f"checkpoint: no checkpoint in {directory} can be restored (step 2: ")
  assert "; step 1: " in message and "\n" not in message
  assert sorted(os.listdir(directory)) == ["1", "2"]
  assert [s for s, _ in refused.value.failures] == [2, 1]


def test_a_second_damaged_step_beside_an_earlier_one_set_aside(tmp_path):
  directory = _saved(tmp_path)
  (directory / "3.unreadable").mkdir()  # Set aside by an earlier run.
  _truncate_data_files(directory / "3")
  restored, _ = _restore(tmp_path, lines := [])
  assert int(restored["step"]) == 2
  assert (directory / "3.unreadable-2").is_dir()
  assert "3.unreadable-2" in lines[0]


def test_saves_an_earlier_crash_left_are_removed_with_a_line(tmp_path):
  directory = _saved(tmp_path, steps=(1,))
  (directory / "2.orbax-checkpoint-tmp").mkdir()
  (directory / "3.orbax-checkpoint-tmp-1765000000").mkdir()
  lines = []
  _restore(tmp_path, lines)
  assert sorted(os.listdir(directory)) == ["1"]
  assert lines == [
    f"removed 2.orbax-checkpoint-tmp, 3.orbax-checkpoint-tmp-1765000000 from {directory}: saves "
    "that an earlier run did not finish"
  ]


def test_a_full_disk_is_one_line_and_the_partial_save_is_removed(tmp_path, monkeypatch):
  directory = _saved(tmp_path, steps=(1,))
  manager = checkpoints.open_manager(str(tmp_path), keep=5, say=print)

  def full(self, step, *args, **kwargs):
    (directory / f"{step}.orbax-checkpoint-tmp").mkdir()  # What a failed write leaves.
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(ocp.CheckpointManager, "save", full)
  with pytest.raises(checkpoints.CheckpointError) as refused:
    checkpoints.save(manager, 2, _state(2))
  assert str(refused.value) == (
    f"checkpoint: saving step 2 in {directory} failed: the disk is full; the partial save was "
    "removed and the metrics and TensorBoard logs written so far are kept; free space there, "
    "then the same command resumes from step 1"
  )
  assert sorted(os.listdir(directory)) == ["1"]
