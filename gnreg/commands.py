"""The console commands ``gnreg-train``, ``gnreg-lr-find`` and ``gnreg-autotune``.

They are installed with the library alone too, but the trainer they run needs the ``train``
extra: each command first checks that its packages are there, so that a core install says in
one line what to install instead of ending in an ``ImportError`` traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

__all__ = ["autotune", "lr_find", "train"]

# The top-level modules of the `train` extra that every command imports.
TRAIN_MODULES = ("absl", "flax", "ml_collections", "orbax", "tensorflow", "tensorflow_datasets")


def missing_train_modules() -> list[str]:
  """The modules of :data:`TRAIN_MODULES` that cannot be imported here."""

  def importable(name: str) -> bool:
    try:
      return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
      return False

  return [name for name in TRAIN_MODULES if not importable(name)]


def _run(command: str, module: str) -> None:
  missing = missing_train_modules()
  if missing:
    print(
      f"gnreg: error: {command} needs the trainer's dependencies, and {', '.join(missing)} "
      f"cannot be imported; install them with: pip install 'gnreg[train]'",
      file=sys.stderr,
    )
    sys.exit(1)
  importlib.import_module(module).console()


def train() -> None:
  """``gnreg-train``: ``python -m gnreg.main``."""
  _run("gnreg-train", "gnreg.main")


def lr_find() -> None:
  """``gnreg-lr-find``: ``python -m gnreg.lr_find``."""
  _run("gnreg-lr-find", "gnreg.lr_find")


def autotune() -> None:
  """``gnreg-autotune``: ``python -m gnreg.autotune``."""
  _run("gnreg-autotune", "gnreg.autotune")
