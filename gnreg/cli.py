"""What gnreg's command-line tools share: the --config and --workdir flags, and one-line errors."""

from __future__ import annotations

import os
import sys

# TensorFlow only feeds data here; its C++ start-up chatter would bury gnreg's own messages.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file (configs/*.py), optionally with ':arg'.",
    lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for everything the run writes.")


def fail(message: str) -> None:
  """Ends the program with one line on stderr and exit status 1, no traceback."""
  print(f"gnreg: error: {message}", file=sys.stderr)
  sys.exit(1)


def quiet_logs() -> None:
  """Orbax logs every checkpoint step at INFO: show warnings only, unless --verbosity is given."""
  from absl import logging

  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def checked_config(argv: list[str]):
  """The --config, validated (fields, dataset, model against the images) before any work."""
  quiet_logs()
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}; config fields are set with --config.<field>=<value>")
  import jax

  from gnreg import configuration

  config = CONFIG.value
  if config is None:
    fail("--config: required, for example --config=configs/default.py")
  try:
    configuration.validate(config, num_devices=jax.device_count())
    # The fields are sound: now the checks that need TensorFlow (the dataset) and the model.
    from gnreg import data, train

    train.build_model(config, data.dataset_info(config.data))
  except ValueError as e:  # ConfigError and DatasetNotFoundError are ValueErrors.
    fail(str(e))
  return config


def checked_workdir() -> str:
  """The --workdir, made if missing; fails before any work if it cannot be written."""
  workdir = WORKDIR.value
  if not workdir:
    fail("--workdir: required, the directory where the run writes everything")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    fail(f"--workdir: cannot create {workdir!r}: {e.strerror}")
  if not os.access(workdir, os.W_OK | os.X_OK):
    fail(f"--workdir: {workdir!r} is not writable")
  return workdir
