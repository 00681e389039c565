"""Finds a learning rate for a config: ``python -m gnreg.lr_find --config=... --workdir=...``.

Runs :func:`gnreg.tuning.find_lr` on the config's model, optimizer and first
training examples (``config.lr_finder`` sets the grid), writes
``lr_finder.png`` and ``lr_finder.json`` to the workdir, and prints the
override that trains with the chosen rate.
"""

from __future__ import annotations

import functools

from gnreg import cli

__all__ = ["console"]

_COMMAND = "python -m gnreg.lr_find"  # Or gnreg-lr-find, the installed command.


def console() -> None:
  """The ``gnreg-lr-find`` command."""
  cli.run(
    functools.partial(cli.run_tuner, report="lr_finder_report"), doc=__doc__, command=_COMMAND
  )


if __name__ == "__main__":
  console()
