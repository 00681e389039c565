"""The public API on record: a change to it fails here until the record and CHANGELOG.md say so.

``tests/public_api.txt`` has one line per public name: each name in the ``__all__`` of a public
module of gnreg (one with no part of its name starting with ``_``) with its signature (the
names, kinds and defaults of its parameters), the public methods each such class defines, the
console commands and their flags. After a change to the API that is meant, name every renamed
or removed name (and argument) under ``[Unreleased]`` in CHANGELOG.md, then rewrite the record
with

  python tests/test_public_api.py --update

which refuses while a name whose line changed or went is not named there (a new name it lists,
for the changelog's "Added").
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECORD = ROOT / "tests" / "public_api.txt"
UPDATE = "python tests/test_public_api.py --update"
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
import gnreg_docs  # noqa: E402

# A default's repr may hold the address of an object, which differs from run to run.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _signature(obj) -> str:
  """Parameter names, kinds and defaults: what a caller's code depends on. Annotations are left
  out, since changing one breaks no call (and their text differs between Python versions)."""
  try:
    signature = inspect.signature(obj)
  except (TypeError, ValueError):  # Some builtins and C types have none.
    return "(...)"
  bare = [p.replace(annotation=p.empty) for p in signature.parameters.values()]
  return _ADDRESS.sub(
    "", str(signature.replace(parameters=bare, return_annotation=inspect.Signature.empty))
  )


def _is_literal(value) -> bool:
  if isinstance(value, tuple):
    return all(_is_literal(v) for v in value)
  return value is None or isinstance(value, (str, int, float, bool))


def _describe(path: str, obj) -> dict[str, str]:
  """``{key: line}`` for one public name; a class brings the public methods it defines."""
  if inspect.ismodule(obj):
    return {path: f"module {path} = {obj.__name__}"}
  if inspect.isclass(obj):
    lines = {path: f"class {path}{_signature(obj)}"}
    for name, member in vars(obj).items():
      if name.startswith("_") and name != "__call__":
        continue
      if isinstance(member, (staticmethod, classmethod)):
        member = member.__func__
      if inspect.isfunction(member):
        lines[f"{path}.{name}"] = f"def {path}.{name}{_signature(member)}"
      elif isinstance(member, property):
        lines[f"{path}.{name}"] = f"property {path}.{name}"
    return lines
  if callable(obj):
    return {path: f"def {path}{_signature(obj)}"}
  shown = repr(obj) if _is_literal(obj) else type(obj).__qualname__
  return {path: f"data {path} = {shown}"}


def _commands() -> dict[str, str]:
  """The console commands of pyproject.toml, and the flags gnreg's modules define for them."""
  from absl import flags

  text = (ROOT / "pyproject.toml").read_text()
  table = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
  lines = {}
  for name, target in re.findall(
    r'^([\w-]+)\s*=\s*"([^"]+)"', table.group(1) if table else "", re.M
  ):
    lines[name] = f"command {name} = {target}"
  for module in gnreg_docs.COMMAND_MODULES:
    importlib.import_module(module)
  for module, defined in sorted(flags.FLAGS.flags_by_module_dict().items()):
    if module.split(".")[0] == "gnreg":
      for flag in defined:
        lines[f"--{flag.name}"] = f"flag --{flag.name} = {flag.default!r} ({module})"
  return lines


def public_api() -> dict[str, str]:
  """``{key: line}`` of every public name of gnreg, its console commands and their flags."""
  lines = _commands()
  for module_name in gnreg_docs.public_modules(commands=True):
    module = importlib.import_module(module_name)
    for name in getattr(module, "__all__", ()):
      lines |= _describe(f"{module_name}.{name}", getattr(module, name))
  return dict(sorted(lines.items()))


def recorded() -> dict[str, str]:
  """The record, by key (a line's second word up to its signature or value)."""
  lines = RECORD.read_text().splitlines() if RECORD.exists() else []
  return {re.match(r"\S+ ([^\s(]+)", line).group(1): line for line in lines}


def _changelog_unreleased() -> str:
  text = (ROOT / "CHANGELOG.md").read_text()
  return text.split("## [Unreleased]", 1)[-1].split("\n## [", 1)[0]


def _short(key: str) -> str:
  return key.lstrip("-").rsplit(".", 1)[-1]


def update() -> int:
  """Rewrites the record; refuses while a changed or removed name is not in the changelog."""
  old, new = recorded(), public_api()
  changed = [key for key in old if old[key] != new.get(key)]
  unreleased = _changelog_unreleased()
  unnamed = [k for k in changed if not re.search(rf"\b{re.escape(_short(k))}\b", unreleased)]
  if unnamed:
    print(
      "Not updated: CHANGELOG.md names none of these changed or removed names under "
      "[Unreleased]:\n  " + "\n  ".join(old[k] for k in unnamed),
      file=sys.stderr,
    )
    return 1
  RECORD.write_text("".join(line + "\n" for line in new.values()))
  added = [new[k] for k in new if k not in old]
  print(f"wrote {RECORD.relative_to(ROOT)}: {len(new)} names, {len(changed)} changed or removed")
  if added:
    print("new, for the changelog's Added:\n  " + "\n  ".join(added))
  return 0


def test_the_public_api_is_the_one_on_record() -> None:
  old, new = recorded(), public_api()
  if old != new:
    diff = difflib.unified_diff(
      list(old.values()), list(new.values()), "tests/public_api.txt", "the code", lineterm="", n=0
    )
    raise AssertionError(
      "The public API differs from its record (-: recorded, +: now):\n"
      + "\n".join(diff)
      + "\nIf the change is meant, name each renamed or removed name under [Unreleased] in "
      f"CHANGELOG.md, then run: {UPDATE}"
    )


_UNNAMED = object()


def test_the_record_describes_signatures_methods_constants_and_commands() -> None:
  def example(a: int, *, b: str = "x") -> None:
    """A public function."""

  class Example:
    def method(self, c=_UNNAMED) -> None:
      """A method whose default has no stable repr."""

    def _private(self) -> None:
      """Not public."""

  assert _describe("m.example", example) == {"m.example": "def m.example(a, *, b='x')"}
  assert _describe("m.Example", Example) == {
    "m.Example": "class m.Example()",
    "m.Example.method": "def m.Example.method(self, c=<object object>)",
  }
  assert _describe("m.NAMES", ("a", 1)) == {"m.NAMES": "data m.NAMES = ('a', 1)"}
  assert _describe("m.TABLE", {"a": 1}) == {"m.TABLE": "data m.TABLE = dict"}


if __name__ == "__main__":
  if sys.argv[1:] != ["--update"]:
    sys.exit(f"usage: {UPDATE}")
  sys.exit(update())
