"""A run's checkpoints: opened with what an earlier crash left cleared away, restored from the
newest readable step (a damaged one is set aside, never deleted), saved with one clear line
when the disk cannot take them.

Orbax reports a failed read or write from its background threads at length (absl error logs
with tracebacks, and tensorstore callbacks that reach an event loop orbax has already closed);
while :func:`orbax_quiet` holds, the trainer's own one-line errors speak for them instead.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

__all__ = [
  "CHECKPOINTS_DIR",
  "UNREADABLE_SUFFIX",
  "CheckpointError",
  "Unrestorable",
  "silence_orbax",
  "orbax_quiet",
  "open_manager",
  "restore_newest_readable",
  "save",
  "close",
]

CHECKPOINTS_DIR = "checkpoints"  # Under the workdir.
UNREADABLE_SUFFIX = ".unreadable"  # A step that did not restore is renamed <step>.unreadable.
_PARTIAL_SAVE = ".orbax-checkpoint-tmp"  # Orbax writes <step>.orbax-checkpoint-tmp[-*] first.


class CheckpointError(ValueError):
  """No checkpoint can be restored, or one cannot be saved."""


def _reason(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0][:200] if text else type(error).__name__


class _OrbaxLogFilter:
  """Drops absl records logged from orbax's modules (the trainer reports their failures)."""

  def filter(self, record) -> bool:
    return f"{os.sep}orbax{os.sep}" not in record.pathname


def _quiet_unraisable(previous: Callable) -> Callable:
  def hook(unraisable) -> None:
    # tensorstore completes reads and writes still in flight after orbax closed the event loop
    # of a failed restore or save; their callbacks then find the loop closed.
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
      previous(unraisable)

  return hook


def silence_orbax() -> Callable[[], None]:
  """Silences orbax's own reports of failed reads and writes; returns what undoes it.

  A command that speaks for orbax calls it once and lets it last to the end of the process:
  tensorstore can complete the reads of a failed restore after the program's last line.
  ``--verbosity`` (absl's) above 0 keeps orbax's logs, for debugging orbax itself.
  """
  if logging.get_verbosity() > logging.INFO:
    return lambda: None
  absl_logger = logging.get_absl_logger()
  log_filter = _OrbaxLogFilter()
  absl_logger.addFilter(log_filter)
  previous_hook = sys.unraisablehook
  sys.unraisablehook = _quiet_unraisable(previous_hook)

  def undo() -> None:
    absl_logger.removeFilter(log_filter)
    sys.unraisablehook = previous_hook

  return undo


@contextlib.contextmanager
def orbax_quiet() -> Iterator[None]:
  """:func:`silence_orbax` for the duration of a ``with`` block."""
  undo = silence_orbax()
  try:
    yield
  finally:
    undo()


def open_manager(workdir: str, keep: int, say: Callable[[str], None]) -> ocp.CheckpointManager:
  """The checkpoint manager of ``workdir``, keeping the ``keep`` newest steps.

  A save that an earlier crash interrupted leaves ``<step>.orbax-checkpoint-tmp*`` behind;
  orbax removes those (``cleanup_tmp_directories``) and ``say`` names them.
  """
  directory = os.path.abspath(os.path.join(workdir, CHECKPOINTS_DIR))
  partial = sorted(n for n in _names(directory) if _PARTIAL_SAVE in n)
  manager = ocp.CheckpointManager(
    directory,
    options=ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, cleanup_tmp_directories=True
    ),
  )
  if partial:
    say(f"removed {', '.join(partial)} from {directory}: saves that an earlier run did not finish")
  return manager


def _names(directory: str) -> list[str]:
  return os.listdir(directory) if os.path.isdir(directory) else []


class Unrestorable(CheckpointError):
  """No step of the checkpoints directory restores; ``failures`` is ``[(step, reason)]``."""

  def __init__(self, directory: str, failures: Sequence[tuple[int, str]]):
    listed = "; ".join(f"step {s}: {r}" for s, r in failures)
    super().__init__(
      f"checkpoint: no checkpoint in {directory} can be restored ({listed}); move that folder "
      f"away to train from the start, or use a new --workdir"
    )
    self.failures = list(failures)


def restore_newest_readable(
  manager: ocp.CheckpointManager, like: Any, say: Callable[[str], None]
) -> Any:
  """The newest checkpoint that restores, shaped and sharded like ``like``; ``like`` itself
  when there is none yet.

  A newer step that does not restore is renamed ``<step>.unreadable`` (by process 0; its files
  stay for inspection) and ``say`` tells why. When no step restores, nothing is renamed and
  :class:`Unrestorable` lists why each failed.
  """
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  failures = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # Orbax raises many types for unreadable files; all mean the same.
      failures.append((step, _reason(e)))
      continue
    for bad_step, reason in failures:
      _set_aside(manager, bad_step, reason, say)
    if failures:
      manager.reload()
    return restored
  if failures:
    raise Unrestorable(str(manager.directory), failures)
  return like


def _set_aside(manager: ocp.CheckpointManager, step: int, reason: str, say) -> None:
  directory = str(manager.directory)
  target = os.path.join(directory, f"{step}{UNREADABLE_SUFFIX}")
  if jax.process_index() == 0:
    suffix = 1
    while os.path.exists(target):  # An earlier run set the same step aside.
      suffix += 1
      target = os.path.join(directory, f"{step}{UNREADABLE_SUFFIX}-{suffix}")
    os.rename(os.path.join(directory, str(step)), target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(f"gnreg: checkpoint {step} set aside")
  say(
    f"checkpoint {step} cannot be restored ({reason}); moved it to {target} and resuming from "
    f"the previous one"
  )


def save(manager: ocp.CheckpointManager, step: int, state: Any, *, force: bool = False) -> None:
  """Saves ``state`` as ``step`` (in the background); a failed save, this one or an earlier one
  still being written, is a :class:`CheckpointError` (see :func:`close`)."""
  try:
    manager.save(step, args=ocp.args.StandardSave(state), force=force)
  except Exception as e:  # Orbax raises a background save's error at the next call.
    _save_failed(manager, step, e)


def close(manager: ocp.CheckpointManager) -> None:
  """Waits for the last save, then closes the manager; a failed save is a CheckpointError."""
  try:
    manager.wait_until_finished()
  except Exception as e:
    _save_failed(manager, None, e)
  finally:
    manager.close()


def _save_failed(manager: ocp.CheckpointManager, step: int | None, error: Exception) -> None:
  directory = str(manager.directory)
  for name in _names(directory):
    if _PARTIAL_SAVE in name and jax.process_index() == 0:
      shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
  saved = [s for s in manager.all_steps() if os.path.isdir(os.path.join(directory, str(s)))]
  resume = f"resumes from step {max(saved)}" if saved else "starts again"
  full = _is_full_disk(error)
  what = "the disk is full" if full else _reason(error)
  where = f"saving step {step}" if step is not None else "saving a checkpoint"
  advice = "free space there" if full else "fix that"
  raise CheckpointError(
    f"checkpoint: {where} in {directory} failed: {what}; the partial save was removed and the "
    f"metrics and TensorBoard logs written so far are kept; {advice}, then the same command "
    f"{resume}"
  ) from None


def _is_full_disk(error: BaseException) -> bool:
  while error is not None:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    text = str(error)
    if "RESOURCE_EXHAUSTED" in text or "No space left on device" in text:
      return True
    error = error.__cause__ or error.__context__
  return False
