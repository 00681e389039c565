"""What gnreg's command-line tools share: the --config and --workdir flags, and one-line errors."""

from __future__ import annotations

import os
import sys

# TensorFlow only feeds data here; its C++ start-up chatter would bury gnreg's own messages.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import atexit  # noqa: E402
import functools  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import pathlib  # noqa: E402
import textwrap  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402

import ml_collections  # noqa: E402
import yaml  # noqa: E402
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
  """Ends the program with one line on stderr and exit status 1, no traceback.

  A refused run leaves no trace: the workdir that :func:`checked_workdir` created is removed,
  with the parents it created, as long as nothing has been written there.
  """
  print(f"gnreg: error: {message}", file=sys.stderr)
  for directory in _CREATED_DIRS:  # Deepest first; os.rmdir refuses a directory not empty.
    try:
      os.rmdir(directory)
    except OSError:
      break
  _CREATED_DIRS.clear()
  sys.exit(1)


# The directories checked_workdir made for this run, deepest first.
_CREATED_DIRS: list[str] = []


def run(main: Callable[[list[str]], None], *, doc: str, command: str) -> None:
  """``absl.app.run(main)``, with a mistake on the command line reported as one line.

  ``doc`` (the program's docstring) and ``command`` (how it is run, ``python -m gnreg.main``)
  make its ``--help``.
  """
  module = getattr(main, "func", main).__module__  # A functools.partial: its function's.
  parser = functools.partial(parse_flags, help_text=help_text(doc, command, module))
  warnings.formatwarning = _one_line_warning
  # The interpreter's last collection walks jax's and TensorFlow's object graphs for nothing:
  # measured from a smoke training's last line to its exit, 0.22 to 0.28 s on a quiet machine
  # (seconds in a loaded test suite), 0.04 s with every object frozen. Registered before
  # app.run, it runs after the exit handlers that jax, orbax and absl register.
  atexit.register(gc.freeze)
  app.run(main, flags_parser=parser)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
  """A warning as the commands print it: one line, without the source line that raised it."""
  return f"gnreg: warning: {message}\n"


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
  ``KeyError``, a bad ``:arg`` as a ``ValueError`` wrapped in a flag error, a config file
  that fails to run (a syntax error, an exception at import or in ``get_config``) as that
  exception. Here each is one line that names the file and, where there is one, the line.
  ``--help`` prints ``help_text`` and exits 0 (absl's exits 1).
  """
  if any(arg in _HELP for arg in argv[1:]):
    print(help_text)
    sys.exit(0)
  argv = [_resolved(arg) for arg in argv]
  from absl import logging

  verbosity = logging.get_verbosity()
  # ml_collections logs a warning for a get_config() that returns None: the error line below
  # says it instead. A --verbosity on the command line sets its own level as it is parsed.
  logging.set_verbosity(logging.ERROR)
  try:
    remaining = flags.FLAGS(argv)
  except Exception as e:  # Every failure becomes one line, or is re-raised as a bug.
    fail(_parse_failure(e, argv))
  finally:
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(verbosity)
  _check_loaded_config(argv)
  return remaining


def _parse_failure(error: Exception, argv: list[str]) -> str:
  """The one line for an exception of ``flags.FLAGS(argv)``; re-raises one that is a bug."""
  spec = _config_spec(argv)
  in_config_file = _config_file_failure(error, spec) if spec else None
  if in_config_file:
    return in_config_file
  if isinstance(error, (AttributeError, KeyError)):  # --config.<path> names a missing field.
    return _unknown_field(argv)
  if isinstance(error, (flags.Error, ValueError)):
    message = str(error).strip().splitlines()[0].removeprefix("flag ")
    if message.endswith(":"):  # "Error whilst parsing config file:", then a traceback.
      message += " " + _last_line(_root_cause(error))
    return message
  raise error


def _config_file_failure(error: BaseException, spec: str) -> str | None:
  """``--config: <file>, line <n>: <error>`` when ``error`` (or one it was raised from) came
  from running the config file of ``spec``; None when it came from elsewhere."""
  from gnreg.configuration import ConfigError  # The refusals of a config's own argument.

  path = spec.partition(":")[0]
  target = os.path.abspath(path)
  while error is not None:
    if isinstance(error, AttributeError) and getattr(error, "name", None) == "get_config":
      return f"--config: {path}: defines no get_config() function"
    if isinstance(error, SyntaxError) and os.path.abspath(error.filename or "") == target:
      return f"--config: {path}, line {error.lineno}: SyntaxError: {error.msg}"
    here = [
      frame
      for frame in traceback.extract_tb(error.__traceback__)
      if os.path.abspath(frame.filename) == target
    ]
    if here and isinstance(error, ConfigError):
      return f"--config: {spec}: {error}"
    if here:
      return (
        f"--config: {path}, line {here[-1].lineno}: {type(error).__name__}: {_last_line(error)}"
      )
    error = error.__cause__ or error.__context__
  return None


def _check_loaded_config(argv: list[str]) -> None:
  """Fails unless the --config given loaded as a ``ConfigDict`` (ml_collections defers a
  missing file's error to the config's first use, and takes whatever ``get_config`` returns)."""
  spec = _config_spec(argv)
  config = CONFIG.value
  if spec is None or isinstance(config, ml_collections.ConfigDict):
    return
  try:
    config.keys()  # A file that failed to load gives a stand-in that raises on first use.
  except OSError as e:
    fail(f"--config: cannot load {spec!r}: {_last_line(_root_cause(e))}")
  except AttributeError:  # A number, None: what get_config returned is said below.
    pass
  fail(_not_a_config(spec.partition(":")[0], config))


def _not_a_config(path: str, config: object) -> str:
  text = repr(config)
  shown = text if len(text) <= 40 else text[:37] + "..."
  return (
    f"--config: {path}: get_config() returned {shown} (type {type(config).__name__}), not an "
    "ml_collections.ConfigDict"
  )


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
  if not isinstance(config, ml_collections.ConfigDict):
    return _not_a_config(path, config)
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


def _config_yaml(config: ml_collections.ConfigDict) -> str:
  """Every field of ``config`` with its value, as plain YAML: a tuple is a ``[a, b]`` list, and
  no Python tags or anchors (``!!python/tuple``, ``&id001``) that only PyYAML reads back."""

  class Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data) -> bool:
      return True

  Dumper.add_representer(
    tuple, lambda dumper, value: dumper.represent_sequence(_YAML_SEQUENCE, value, flow_style=True)
  )
  return yaml.dump(config.to_dict(), Dumper=Dumper, default_flow_style=False, sort_keys=True)


_YAML_SEQUENCE = "tag:yaml.org,2002:seq"


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
  if PRINT_CONFIG.value:
    print(_config_yaml(config), end="")
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
  missing, path = [], os.path.abspath(workdir)
  while not os.path.exists(path) and path != os.path.dirname(path):
    missing.append(path)
    path = os.path.dirname(path)
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    fail(f"--workdir: cannot create {workdir!r}: {e.strerror}")
  _CREATED_DIRS[:] = missing
  if not os.access(workdir, os.W_OK | os.X_OK):
    fail(f"--workdir: {workdir!r} is not writable")
  return workdir
