"""What no Sphinx extension writes, generated from the code at every build so it cannot go stale.

The API pages are ``sphinx.ext.autosummary``'s (``docs/api.rst`` and the template
``docs/_templates/autosummary/module.rst``): one page per public module, from its ``__all__``.
This extension gives that template what it cannot find out itself (:func:`api_context`), checks
that every public module got its page, and writes the rest:

- ``_generated/config_fields.md``: every field of ``gnreg.configuration.base_config()`` with its
  default and the comment beside (or directly above) the line that sets it.
- ``_generated/readme/*.md``: the sections of the README, so that the examples shown there and
  here are the same text (and the README's examples are the ones tests/test_readme.py runs).
- ``_generated/commands_help.md``: what each command prints for ``--help``.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import io
import pathlib
import pkgutil
import shutil
import textwrap
import tokenize

ROOT = pathlib.Path(__file__).resolve().parents[2]
GENERATED = ROOT / "docs" / "_generated"

# Entry points, by the command each installs: the commands page shows their --help.
COMMANDS = {
  "gnreg.main": "gnreg-train",
  "gnreg.lr_find": "gnreg-lr-find",
  "gnreg.autotune": "gnreg-autotune",
}
COMMAND_MODULES = (*COMMANDS, "gnreg.cli")  # Described on the commands page, not as an API.

# Every "## " section of the README is a page, named by its heading in lower case with dashes
# ("Two commands" -> two-commands), except those the site has its own page for.
README_SKIPPED = ("Install",)


def public_modules(commands: bool = False) -> list[str]:
  """gnreg's modules whose names have no part starting with ``_``, but the shipped configs;
  the command-line modules only with ``commands`` (the API reference leaves them out)."""
  import gnreg

  names = ["gnreg"]
  for info in pkgutil.walk_packages(gnreg.__path__, "gnreg."):
    if any(part.startswith("_") for part in info.name.split(".")):
      continue
    if info.name.startswith("gnreg.configs") or (info.name in COMMAND_MODULES and not commands):
      continue
    names.append(info.name)
  return sorted(names)


def documented_under(modules: list[str]) -> dict[str, dict[str, str]]:
  """``{module: {name: where it is documented}}`` for the names of a module's ``__all__`` that
  a module before it in ``modules`` exports too.

  ``modules`` sorted puts a package before its submodules, so each object is documented once,
  under the highest module that exports it: ``gnreg.gnp``, not again as
  ``gnreg.transforms.gnp.gnp``; ``gnreg.tuning.find_lr`` likewise.
  """
  first: dict[int, str] = {}
  elsewhere: dict[str, dict[str, str]] = {}
  for name in modules:
    module = importlib.import_module(name)
    for member in getattr(module, "__all__", ()):
      obj = getattr(module, member)
      if inspect.ismodule(obj) or isinstance(obj, (str, int, float, bool, type(None))):
        continue  # A literal is a value of its own in each module, even when interned.
      home = first.setdefault(id(obj), f"{name}.{member}")
      if home != f"{name}.{member}":
        elsewhere.setdefault(name, {})[member] = home
  return elsewhere


def constant_values(modules: list[str]) -> dict[str, str]:
  """``{dotted name: value shown}`` of the constants in the modules' ``__all__``.

  The template shows a constant by its value (its type, when too long for a line), since
  autodoc would show the docstring of the value's type (``dict``'s, ``tuple``'s) as its own.
  """
  values = {}
  for name in modules:
    module = importlib.import_module(name)
    for member in getattr(module, "__all__", ()):
      obj = getattr(module, member)
      if not (inspect.ismodule(obj) or inspect.isclass(obj) or callable(obj)):
        text = repr(obj)
        long = len(text) > 90 or "\n" in text
        values[f"{name}.{member}"] = f"<{type(obj).__name__}>" if long else text
  return values


def api_context() -> dict[str, object]:
  """What the autosummary template needs beyond the module it renders."""
  modules = public_modules()
  return {
    # The command-line modules are described on the commands page; configs are not an API.
    "undocumented_modules": [*COMMAND_MODULES, "gnreg.configs"],
    "documented_under": documented_under(modules),
    "constant_values": constant_values(modules),
  }


def modules_without_a_page(found_docs: set[str]) -> list[str]:
  """The public modules that none of ``found_docs`` (the site's pages) documents."""
  return [m for m in public_modules() if f"_generated/api/{m}" not in found_docs]


def check_api_pages(app, env) -> None:
  """Every public module has its page: a new one is never left out of the reference."""
  missing = modules_without_a_page(env.found_docs)
  if missing:
    from sphinx.util import logging

    logging.getLogger(__name__).warning(f"docs: public modules without an API page: {missing}")


def _comments_by_line(source: str) -> dict[int, str]:
  comments = {}
  for token in tokenize.generate_tokens(io.StringIO(source).readline):
    if token.type == tokenize.COMMENT:
      comments[token.start[0]] = token.string.lstrip("#").strip()
  return comments


def field_comments(function, prefix: str = "") -> dict[str, str]:
  """``{dotted field: comment}`` for every ``<var>.<field...> = value`` line of ``function``.

  The comment is the one on the assignment's lines, else the block of comment lines
  directly above it.
  """
  source = textwrap.dedent(inspect.getsource(function))
  comments = _comments_by_line(source)
  lines = source.splitlines()
  found = {}
  for node in ast.walk(ast.parse(source)):
    if not isinstance(node, ast.Assign) or len(node.targets) != 1:
      continue
    target = node.targets[0]
    parts = []
    while isinstance(target, ast.Attribute):
      parts.append(target.attr)
      target = target.value
    if not parts or not isinstance(target, ast.Name):
      continue
    field = prefix + ".".join(reversed(parts))
    own = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
    above, n = [], node.lineno - 1
    while n >= 1 and lines[n - 1].strip().startswith("#"):
      above.insert(0, comments[n])
      n -= 1
    found[field] = " ".join(own or above)
  return found


def _flatten(config, leaves: set[str] = frozenset(), prefix: str = "") -> dict[str, object]:
  """``{dotted field: value}``; a section named in ``leaves`` is one field (a mapping value)."""
  flat = {}
  for key in config.keys():
    value, field = config[key], f"{prefix}{key}"
    if hasattr(value, "keys") and field not in leaves:
      flat.update(_flatten(value, leaves, f"{field}."))
    else:
      flat[field] = value.to_dict() if hasattr(value, "to_dict") else value
  return flat


def config_fields() -> tuple[dict[str, object], dict[str, str]]:
  """Every field of ``base_config()`` with its default, and the comments that explain them.

  A section set whole with a comment (``config.pid.autotune_space = ConfigDict({...})  # ...``)
  is one field.
  """
  from gnreg import configuration
  from gnreg.data import config as data_config

  meanings = field_comments(configuration.base_config)
  meanings.update(field_comments(data_config.default_config, prefix="data."))
  documented = {field for field, meaning in meanings.items() if meaning}
  return _flatten(configuration.base_config(), documented), meanings


def _shown(value) -> str:
  text = repr(value)
  return "``" + text.replace("|", "\\|") + "``"


def write_config_fields() -> None:
  """The table of every config field; raises for a field that has no comment to explain it."""
  fields, meanings = config_fields()
  unexplained = sorted(f for f in fields if not meanings.get(f))
  if unexplained:
    raise RuntimeError(
      "docs: config fields without a comment in gnreg/configuration.py (or gnreg/data/config.py)"
      f" to explain them: {', '.join(unexplained)}"
    )
  lines = [
    "# Config fields",
    "",
    "Every field the trainer reads, with its default, as `gnreg.configuration.base_config()`",
    "sets it. Configs in `configs/` change some of them; any field can be overridden on the",
    "command line with `--config.<field>=<value>`. This page is generated from",
    "`base_config()` and its comments when the documentation is built.",
    "",
  ]
  sections: dict[str, list[str]] = {}  # Top-level fields first, then each section in order.
  for field in fields:
    sections.setdefault(field.split(".")[0] if "." in field else "", []).append(field)
  for section in sorted(sections, key=lambda s: s != ""):
    lines += ["", f"## `{section}`" if section else "## Top level", ""]
    lines += ["| field | default | meaning |", "|---|---|---|"]
    for field in sections[section]:
      meaning = meanings[field].replace("|", "\\|")
      lines.append(f"| `{field}` | {_shown(fields[field])} | {meaning} |")
  lines.append("")
  (GENERATED / "config_fields.md").write_text("\n".join(lines))


def readme_sections() -> dict[str, str]:
  """The README's ``## `` sections by heading, each with its subsections."""
  sections, heading, body = {}, None, []
  in_code = False
  for line in (ROOT / "README.md").read_text().splitlines():
    if line.startswith("```"):
      in_code = not in_code
    if not in_code and line.startswith("## "):
      if heading:
        sections[heading] = "\n".join(body)
      heading, body = line[3:].strip(), []
    elif heading:
      body.append(line)
  if heading:
    sections[heading] = "\n".join(body)
  return sections


def readme_page_name(heading: str) -> str:
  return "-".join("".join(c if c.isalnum() else " " for c in heading.lower()).split())


def write_readme_pages() -> None:
  sections = readme_sections()
  out = GENERATED / "readme"
  out.mkdir(parents=True, exist_ok=True)
  for heading in sections:
    if heading in README_SKIPPED:
      continue
    page = readme_page_name(heading)
    # The section's subsections ("### ") move up one level under the page's own title.
    body = []
    in_code = False
    for line in sections[heading].splitlines():
      if line.startswith("```"):
        in_code = not in_code
      if not in_code:  # Prose: a level up, and links that resolve from the page.
        line = _relink(line[1:] if line.startswith("###") else line, out)
      body.append(line)
    text = f"# {heading}\n\n" + "\n".join(body).strip() + "\n"
    (out / f"{page}.md").write_text(text)


def _relink(text: str, page_dir: pathlib.Path) -> str:
  """The README's relative links and images, pointed at the same files from ``page_dir``.

  A link to a file outside the site's sources (``recipes/README.md``) becomes its text and
  path, since the site does not hold that file.
  """
  import os
  import re

  docs = ROOT / "docs"

  def fix(match: re.Match) -> str:
    bang, label, target = match.groups()
    if re.match(r"^[a-z]+:|^#", target):
      return match.group(0)
    path = (ROOT / target).resolve()
    if bang or path.is_relative_to(docs):
      return f"{bang}[{label}]({os.path.relpath(path, page_dir)})"
    return f"{label} (`{target}`)"

  return re.sub(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)", fix, text)


def write_command_help() -> None:
  """What ``--help`` prints for each command, run at build time."""
  import subprocess
  import sys

  lines = []
  for module, command in COMMANDS.items():
    shown = subprocess.run(
      [sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT
    )
    if shown.returncode != 0:
      raise RuntimeError(f"docs: python -m {module} --help exited {shown.returncode}")
    lines += [f"## `{command}`", "", f"`{command} --help` (or `python -m {module} --help`):", ""]
    lines += ["```text", (shown.stdout + shown.stderr).strip(), "```", ""]
  (GENERATED / "commands_help.md").write_text("\n".join(lines))


def generate(app) -> None:
  # Anew at every build: a page of a module or README section that is gone goes too.
  shutil.rmtree(GENERATED, ignore_errors=True)
  GENERATED.mkdir(parents=True)
  write_command_help()
  write_config_fields()
  write_readme_pages()


def setup(app):
  # Before autosummary writes its pages into _generated/api (builder-inited, priority 500).
  app.connect("builder-inited", generate, priority=400)
  app.connect("env-updated", check_api_pages)
  return {"parallel_read_safe": True}
