"""Tunes the PID regulator's gains: ``python -m gnreg.autotune --config=... --workdir=...``.

Runs :func:`gnreg.tuning.autotune_pid` on the first epoch of the config's
training data (``config.pid`` sets the target, search and trials), writes
``pid_autotune.png`` and ``pid_autotune.json`` to the workdir, and prints the
overrides that train with the chosen gains.
"""

from __future__ import annotations

import functools

from gnreg import cli

__all__ = ["console"]

_COMMAND = "python -m gnreg.autotune"  # Or gnreg-autotune, the installed command.


def console() -> None:
  """The ``gnreg-autotune`` command."""
  cli.run(
    functools.partial(cli.run_tuner, report="pid_autotune_report"), doc=__doc__, command=_COMMAND
  )


if __name__ == "__main__":
  console()
