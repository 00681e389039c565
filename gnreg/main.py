"""Trains a config: ``python -m gnreg.main --config=configs/<name>.py[:arg] --workdir=<dir>``.

Any config field can be overridden on the command line, for example
``--config.gnp.alpha=0.8 --config.batch_size=256``. Running the same command
again resumes from the newest checkpoint in ``--workdir``.

On a TPU pod or under Slurm, JAX finds the other processes by itself; on other
clusters pass ``--coordinator_address``, ``--num_processes`` and ``--process_id``.
"""

from __future__ import annotations

import os
import sys

# TensorFlow only feeds data here; its C++ start-up chatter would bury gnreg's own messages.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file (configs/*.py), optionally with ':arg'.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and plots.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for clusters JAX does not detect.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in the job.")


def fail(message: str) -> None:
  """Ends the run with one line on stderr and exit status 1, no traceback."""
  print(f"gnreg: error: {message}", file=sys.stderr)
  sys.exit(1)


def check_workdir(workdir: str | None) -> str:
  """The workdir, made if missing; fails before any work if it cannot be written."""
  if not workdir:
    fail("--workdir: required, the directory where the run writes everything")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    fail(f"--workdir: cannot create {workdir!r}: {e.strerror}")
  if not os.access(workdir, os.W_OK | os.X_OK):
    fail(f"--workdir: {workdir!r} is not writable")
  return workdir


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}; config fields are set with --config.<field>=<value>")
  import jax

  if _COORDINATOR.value or _NUM_PROCESSES.value is not None:
    jax.distributed.initialize(
        coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value)

  from gnreg import configuration, data, train

  config = _CONFIG.value
  if config is None:
    fail("--config: required, for example --config=configs/default.py")
  try:
    configuration.validate(config, num_devices=jax.device_count())
    train.build_model(config, data.dataset_info(config.data))
  except ValueError as e:  # ConfigError and DatasetNotFoundError are ValueErrors.
    fail(str(e))
  workdir = check_workdir(_WORKDIR.value)
  try:
    train.train_and_evaluate(config, workdir)
  except train.Preempted as e:
    print(f"gnreg: {e}; run the same command to resume", file=sys.stderr)
    sys.exit(128 + e.signum)
  except train.ResumeError as e:
    fail(str(e))


if __name__ == "__main__":
  # Orbax and absl log every checkpoint step at INFO; --verbosity=0 brings them back.
  flags.FLAGS.set_default("verbosity", -1)
  app.run(main)
