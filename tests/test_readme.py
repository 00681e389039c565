"""The README's examples run, and CI runs exactly the README's test command."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
EXAMPLES = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_has_the_examples():
  assert len(EXAMPLES) >= 3  # Compose, linen, NNX.


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_readme_example_runs(index):
  code = EXAMPLES[index]
  exec(compile(code, f"README.md example {index}", "exec"), {"__name__": "readme"})


def test_ci_runs_the_readme_test_command():
  command = re.search(r"python3 -m venv[^`\n]*pytest[^`\n]*", README).group(0)
  assert command in (ROOT / ".ci" / "run").read_text()
