"""The documentation's own examples run, and its generated pages have what they need.

The site itself is built by ``.ci/run`` (``sphinx-build -W``); the README's examples are run
by tests/test_readme.py, and the docstrings' by pytest's doctests.
"""

from __future__ import annotations

import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md"))
PAGES = [p for p in PAGES if not p.relative_to(ROOT / "docs").parts[0].startswith("_")]
BLOCKS = [
  pytest.param(block, id=f"{page.relative_to(ROOT)}:{n}")
  for page in PAGES
  for n, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S))
]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
import gnreg_docs  # noqa: E402


def test_the_guides_have_examples() -> None:
  guides = {p.relative_to(ROOT) for p in (ROOT / "docs" / "guides").glob("*.md")}
  with_code = {pathlib.Path(b.id.split(":")[0]) for b in BLOCKS}
  # Other pages (docs/batch_groups.md) may have examples too; every guide must.
  assert guides <= with_code, f"guides without a runnable example: {sorted(guides - with_code)}"


@pytest.mark.parametrize("block", BLOCKS)
def test_example_runs(block: str, capsys: pytest.CaptureFixture[str]) -> None:
  exec(compile(block, "<docs example>", "exec"), {"__name__": "docs_example"})


def test_every_config_field_has_a_meaning() -> None:
  fields, meanings = gnreg_docs.config_fields()
  assert "gnp.r" in fields and "data.name" in fields
  assert sorted(f for f in fields if not meanings.get(f)) == []


def test_field_comments_read_trailing_wrapped_and_leading_comments() -> None:
  def get_config():
    config = object()
    config.a = 1  # Trailing.
    config.s.b = 2  # Inside the wrapped value.
    # Leading, on two
    # lines.
    config.s.c = 3

    config.s.d = 4
    return config

  assert gnreg_docs.field_comments(get_config) == {
    "a": "Trailing.",
    "s.b": "Inside the wrapped value.",
    "s.c": "Leading, on two lines.",
    "s.d": "",
  }


def test_the_readme_sections_the_site_shows_exist() -> None:
  sections = gnreg_docs.readme_sections()
  assert {"Two commands", "Compose", "Training"} <= set(sections)  # The pages index.md names.
  assert "```python" in sections["Compose"]
  assert gnreg_docs.readme_page_name("Several devices, and hosts") == "several-devices-and-hosts"


def _public_names(module) -> list[str]:
  """``__all__``, else the public names the module defines (a package: its modules define), as
  the API pages (autosummary) show them."""
  import inspect

  if hasattr(module, "__all__"):
    return list(module.__all__)
  home = module.__name__
  return [
    name
    for name, obj in vars(module).items()
    if not name.startswith("_")
    and not inspect.ismodule(obj)
    and (
      getattr(obj, "__module__", None) == home
      or (hasattr(module, "__path__") and getattr(obj, "__module__", "").startswith(home + "."))
    )
  ]


def test_each_object_is_documented_once_and_constants_by_value() -> None:
  modules = ["gnreg", "gnreg.models.vit", "gnreg.transforms.gnp", "gnreg.tuning"]
  elsewhere = gnreg_docs.documented_under(modules)
  assert elsewhere["gnreg.transforms.gnp"]["gnp"] == "gnreg.gnp"
  assert "gnreg" not in elsewhere and "find_lr" not in elsewhere.get("gnreg.tuning", {})
  values = gnreg_docs.constant_values(modules)
  assert values["gnreg.models.vit.DEFAULT_PATCH_SIZE"] == "16"
  assert values["gnreg.models.vit.VARIANTS"] == "<dict>"  # Too long for a line.
  assert "gnreg.gnp" not in values


def test_a_public_module_without_an_api_page_is_found() -> None:
  pages = {f"_generated/api/{m}" for m in gnreg_docs.public_modules()}
  assert gnreg_docs.modules_without_a_page(pages) == []
  assert gnreg_docs.modules_without_a_page(pages - {"_generated/api/gnreg.plots"}) == [
    "gnreg.plots"
  ]


def test_every_public_function_and_class_of_gnreg_has_a_docstring() -> None:
  """What the API reference shows for each: a name with no text would be a hole in it."""
  import importlib
  import inspect

  bare = []
  for name in gnreg_docs.public_modules():
    module = importlib.import_module(name)
    for member in _public_names(module):
      obj = getattr(module, member)
      defined_here = getattr(obj, "__module__", "").startswith("gnreg")
      if (inspect.isclass(obj) or inspect.isfunction(obj)) and defined_here:
        if not (obj.__doc__ or "").strip():
          bare.append(f"{name}.{member}")
  assert bare == []


def test_readme_links_resolve_from_the_generated_pages() -> None:
  page_dir = gnreg_docs.ROOT / "docs" / "_generated" / "readme"
  relink = lambda text: gnreg_docs._relink(text, page_dir)
  assert relink("![plot](docs/images/a.png)") == "![plot](../../images/a.png)"
  assert relink("see [the recipes](recipes/README.md)") == "see the recipes (`recipes/README.md`)"
  assert relink("[paper](https://arxiv.org/abs/1)") == "[paper](https://arxiv.org/abs/1)"


def test_every_public_module_declares_its_names() -> None:
  """``__all__`` on each module with public names, listing gnreg's own objects, not its imports."""
  import importlib
  import inspect

  for name in gnreg_docs.public_modules():
    module = importlib.import_module(name)
    if not hasattr(module, "__all__"):
      assert _public_names(module) == [], f"{name} has no __all__"
      continue
    for member in module.__all__:
      obj = getattr(module, member)  # Every listed name exists.
      if inspect.ismodule(obj):
        assert obj.__name__.startswith("gnreg."), f"{name}.__all__ lists {obj.__name__}"
