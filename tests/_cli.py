"""Runs a gnreg command's entry point as its console script does, several times in one process.

``run_command(argv)`` calls ``gnreg.main.console()`` with ``sys.argv = argv`` and returns its exit
status and what it wrote to stdout and stderr, file descriptors 1 and 2 included (where absl,
TensorFlow and XLA write): the interpreter's own ending of a program, in-process. An exit is
its status; any other exception prints its traceback and is status 1, as the interpreter does.
The flags are reset around each run, so that the runs do not see each other's.

Run as a script, it is one real process that runs many command lines, for the test that proves
what a user's shell sees:

  python tests/_cli.py CASES.json    # [[argv, ...], ...] -> one JSON line per case on stdout

Each case is run in order and reported as ``{"code", "stdout", "stderr"}``; nothing else is
printed to stdout, so anything on the process's own stderr escaped every capture.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import traceback
from typing import NamedTuple


class Outcome(NamedTuple):
  code: int
  stdout: str
  stderr: str


@contextlib.contextmanager
def _captured_fd(fd: int, name: str):
  """Sends file descriptor ``fd`` and ``sys.<name>`` to a temporary file; yields a function
  that reads it back (call it after the block)."""
  stream = getattr(sys, name)
  stream.flush()
  saved = os.dup(fd)
  with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as file:
    os.dup2(file.fileno(), fd)
    setattr(sys, name, file)
    text = []
    try:
      yield lambda: "".join(text)
    finally:
      file.flush()
      os.dup2(saved, fd)
      os.close(saved)
      setattr(sys, name, stream)
      file.seek(0)
      text.append(file.read())


def run_command(argv: list[str]) -> Outcome:
  """``gnreg.main.console()`` on ``argv`` (``argv[0]`` the program's name), in this process."""
  from absl import flags

  from gnreg import main

  _reset(flags.FLAGS)
  saved_argv = sys.argv
  sys.argv = list(argv)
  code = 0
  try:
    with _captured_fd(1, "stdout") as stdout, _captured_fd(2, "stderr") as stderr:
      try:
        main.console()
      except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
      except Exception:
        traceback.print_exc()
        code = 1
  finally:
    sys.argv = saved_argv
    _reset(flags.FLAGS)
  return Outcome(code, stdout(), stderr())


def _reset(values) -> None:
  """Every flag back to unparsed, and the ``--config.<field>`` flags that ml_collections
  defines for a command line's overrides gone (the next command line defines its own)."""
  values.unparse_flags()
  for name in [name for name in values if name.startswith("config.")]:
    delattr(values, name)


if __name__ == "__main__":
  with open(sys.argv[1]) as f:
    cases = json.load(f)
  for case in cases:
    print(json.dumps(run_command(case)._asdict()), flush=True)
