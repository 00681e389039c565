"""What gnreg's command-line tools share: the --config and --workdir flags, and one-line errors."""

from __future__ import annotations

import os
import sys

# TensorFlow only feeds data here; its C++ start-up chatter would bury gnreg's own messages.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import functools  # noqa: E402
import importlib.util  # noqa: E402
import pathlib  # noqa: E402
import textwrap  # noqa: E402
from collections.abc import Callable  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

__all__ = [
  "CONFIG",
  "WORKDIR",
  "PRINT_CONFIG",
  "fail",
  "run",
  "configs_dir",
  "config_names",
  "resolve_config",
  "help_text",
  "parse_flags",
  "quiet_logs",
  "checked_task",
  "run_tuner",
  "checked_workdir",
]

CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "A shipped config by name (default, cifar10_vit:variant=zero) or a config file's path "
  "(configs/default.py:smoke), optionally with ':arg'.",
  lock_config=True,
)
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for everything the run writes.")
PRINT_CONFIG = flags.DEFINE_bool(
  "print_config", False, "Print the config, every field with its value, and exit."
)
_HELP = ("--help", "-h", "--helpshort", "-?")


def fail(message: str) -> None:
  """Ends the program with one line on stderr and exit status 1, no traceback."""
  print(f"gnreg: error: {message}", file=sys.stderr)
  sys.exit(1)


def run(main: Callable[[list[str]], None], *, doc: str, command: str) -> None:
  """``absl.app.run(main)``, with a mistake on the command line reported as one line.

  ``doc`` (the program's docstring) and ``command`` (how it is run, ``python -m gnreg.main``)
  make its ``--help``.
  """
  module = getattr(main, "func", main).__module__  # A functools.partial: its function's.
  parser = functools.partial(parse_flags, help_text=help_text(doc, command, module))
  app.run(main, flags_parser=parser)


def configs_dir() -> pathlib.Path:
  """The shipped configs: the package ``gnreg.configs`` if installed, else ``configs/`` of the
  checkout next to ``gnreg/``."""
  spec = importlib.util.find_spec("gnreg.configs")
  if spec is not None and spec.submodule_search_locations:
    return pathlib.Path(list(spec.submodule_search_locations)[0])
  return pathlib.Path(__file__).resolve().parents[1] / "configs"


def config_names() -> list[str]:
  """The names ``--config`` accepts for the shipped configs."""
  return sorted(p.stem for p in configs_dir().glob("*.py") if not p.stem.startswith("_"))


def resolve_config(spec: str) -> str:
  """``name[:arg]`` of a shipped config as its path (``path[:arg]``); a path stays as it is."""
  name, sep, arg = spec.partition(":")
  if name.endswith(".py") or os.sep in name or os.path.exists(name):
    return spec
  if name not in config_names():
    fail(
      f"--config: no shipped config named {name!r}; available: {', '.join(config_names())} "
      f"(or give a config file's path)"
    )
  return f"{configs_dir() / (name + '.py')}{sep}{arg}"


def help_text(doc: str, command: str, module: str | None) -> str:
  """What ``--help`` prints: the program's docstring, its flags, an example, the configs."""
  # absl files the flags of a program run with ``python -m`` under its path (sys.argv[0]).
  owners = {module, sys.argv[0]} if module == "__main__" else {module}
  by_module = flags.FLAGS.flags_by_module_dict()
  own = [f for owner in owners - {__name__} for f in by_module.get(owner, [])]
  lines = [
    f"usage: {command} --config=NAME_OR_PATH[:ARG] --workdir=DIR [--config.FIELD=VALUE ...]",
    "",
    textwrap.dedent(doc or "").strip(),
    "",
    "required flags:",
    f"  --config: {flags.FLAGS['config'].help}",
    f"  --workdir: {flags.FLAGS['workdir'].help}",
    "",
    "other flags:",
    f"  --print_config: {flags.FLAGS['print_config'].help}",
    *(f"  --{f.name}: {f.help}" for f in own),
    "  --config.FIELD=VALUE: sets one config field (see --print_config for them all)",
    "",
    "example:",
    f"  {command} --config=default --workdir=runs/default",
    "",
    "every config field with its value:",
    f"  {command} --config=default --print_config",
    "",
    f"shipped configs: {', '.join(config_names())}",
  ]
  return "\n".join(lines)


def parse_flags(argv: list[str], help_text: str = "") -> list[str]:
  """Parses the flags; a bad flag, config file or override ends the program with one line.

  absl and ml_collections report these with tracebacks: an unknown field as a bare
  ``KeyError``, a bad ``:arg`` as a ``ValueError`` wrapped in a flag error. (A config file
  that cannot be read surfaces later, on first use: :func:`checked_task` reports it.)
  ``--help`` prints ``help_text`` and exits 0 (absl's exits 1).
  """
  if any(arg in _HELP for arg in argv[1:]):
    print(help_text)
    sys.exit(0)
  argv = [_resolved(arg) for arg in argv]
  global _ARGV
  _ARGV = argv
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError):  # --config.<path> names a field the config lacks.
    fail(_unknown_field(argv))
  except (flags.Error, ValueError) as e:
    message = str(e).strip().splitlines()[0].removeprefix("flag ")
    if message.endswith(":"):  # "Error whilst parsing config file:", then a traceback.
      message += " " + _last_line(_root_cause(e))
    fail(message)
  return []  # Not reached: fail() exits.


_ARGV: list[str] = []  # The command line as parsed, shipped config names resolved to paths.


def _resolved(arg: str) -> str:
  if arg.startswith("--config="):
    return "--config=" + resolve_config(arg.removeprefix("--config="))
  return arg


def _root_cause(error: BaseException) -> BaseException:
  while error.__cause__ or error.__context__:
    error = error.__cause__ or error.__context__
  return error


def _last_line(error: BaseException) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[-1] if lines else type(error).__name__


def _config_spec(argv: list[str]) -> str | None:
  """The value of --config (``path[:arg]``) in ``argv``; as for absl, the last one counts."""
  for arg in reversed(argv):
    if arg.startswith("--config="):
      return arg.removeprefix("--config=")
  return None


def _unknown_field(argv: list[str]) -> str:
  """Names the first ``--config.<path>`` override whose path is not in the config file."""
  spec = _config_spec(argv) or ""
  path, _, arg = spec.partition(":")
  try:
    module_spec = importlib.util.spec_from_file_location("_gnreg_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
  except Exception:  # The file loaded for absl a moment ago; if not now, say less.
    return "--config.<field>: an override names a field that the config does not have"
  for override in argv:
    if not override.startswith("--config."):
      continue
    dotted = override.removeprefix("--config.").split("=")[0]
    node, parts = config, dotted.split(".")
    for depth, part in enumerate(parts):
      parent = ".".join(parts[:depth]) or "the config"
      if not hasattr(node, "keys"):
        return f"--config.{dotted}: {parent} is a value, not a section with fields"
      if part not in node:
        valid = ", ".join(sorted(node.keys()))
        return f"--config.{dotted}: {parent} has no field {part!r}; its fields are {valid}"
      node = node[part]
  return "--config.<field>: an override names a field that the config does not have"


def quiet_logs() -> None:
  """Orbax logs every checkpoint step at INFO: show warnings only, unless --verbosity is given."""
  from absl import logging

  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def checked_task(argv: list[str]):
  """The --config as a :class:`gnreg.task.Task`: validated (fields, dataset, model against the
  images) and built once, before any work."""
  quiet_logs()
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}; config fields are set with --config.<field>=<value>")
  config = CONFIG.value
  if config is None:
    fail("--config: required, for example --config=default or --config=configs/default.py")
  try:
    config.keys()  # A file that failed to load gives a stand-in that raises on first use.
  except OSError as e:
    fail(f"--config: cannot load {_config_spec(_ARGV)!r}: {_last_line(_root_cause(e))}")
  if PRINT_CONFIG.value:
    print(config)
    sys.exit(0)
  from gnreg import task

  try:
    return task.prepare(config)
  except ValueError as e:  # ConfigError and DatasetNotFoundError are ValueErrors.
    fail(str(e))


def run_tuner(argv: list[str], report: str) -> None:
  """The program of ``gnreg.lr_find`` and ``gnreg.autotune``: runs ``gnreg.tune.<report>`` on
  the checked task and prints its lines; a tuner that finds nothing is one error line."""
  prepared = checked_task(argv)
  workdir = checked_workdir()
  from gnreg import tune

  try:
    for line in getattr(tune, report)(prepared, workdir):
      print(line, flush=True)
  except ValueError as e:
    fail(str(e))


def checked_workdir() -> str:
  """The --workdir, made if missing; fails before any work if it cannot be written."""
  workdir = WORKDIR.value
  if not workdir:
    fail("--workdir: required, the directory where the run writes everything")
  if "://" in workdir:
    fail(
      f"--workdir: {workdir!r} is a URL; gnreg writes runs to a directory, which on several "
      "hosts must be one they all mount (an NFS share, or a bucket mounted with gcsfuse)"
    )
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    fail(f"--workdir: cannot create {workdir!r}: {e.strerror}")
  if not os.access(workdir, os.W_OK | os.X_OK):
    fail(f"--workdir: {workdir!r} is not writable")
  return workdir
