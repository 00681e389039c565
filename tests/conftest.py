"""Settings every process of a test session shares, the trainers it starts included.

Many tests train the same smoke config, in this process or in a subprocess; compiling its
steps again each time would cost most of the suite's time. One XLA compilation cache per
session, which the xdist workers and every subprocess they start inherit through the
environment, compiles each program once. A cached executable is the program that was compiled,
so results stay bitwise the same; the cache is made empty for each session and removed after.

The slowest modules are scheduled first, so that the workers do not end with one of them
still running alone.

Hypothesis draws the same examples on every run, so that a red run can be rerun and a green
one stays green: a property that fails is found by a change to the code, not by the draw.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import hypothesis
import pytest

hypothesis.settings.register_profile("gnreg", derandomize=True, database=None)
hypothesis.settings.load_profile("gnreg")

_CACHE_KEY = "gnreg_xla_cache_dir"  # How the controller names the cache to its workers.
_STASH = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
  workerinput = getattr(config, "workerinput", None)
  if workerinput is None:  # The xdist controller, or a run without xdist.
    cache_dir = tempfile.mkdtemp(prefix="gnreg-tests-xla-cache-")
    config.stash[_STASH] = cache_dir
  else:
    cache_dir = workerinput[_CACHE_KEY]
  os.environ["JAX_COMPILATION_CACHE_DIR"] = cache_dir
  # The train and eval steps take seconds to compile; the many small programs of the unit
  # tests compile faster than they would be read back.
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
  if "jax" in sys.modules:  # A plugin imported JAX before the environment was set.
    import jax

    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
  """xdist: every worker uses the controller's cache."""
  node.workerinput[_CACHE_KEY] = node.config.stash[_STASH]


def pytest_unconfigure(config: pytest.Config) -> None:
  if getattr(config, "workerinput", None) is None:
    if _STASH in config.stash:
      shutil.rmtree(config.stash[_STASH], ignore_errors=True)


# Measured: each takes from 30 s to over a minute of a worker's time, most in subprocesses.
_SLOW_FIRST = (
  "test_main.py",
  "test_multiprocess.py",
  "test_faults.py",
  "test_train.py",
  "test_recipes.py",
  "test_tuning_cli.py",
  "test_models_train.py",
  "test_authors_reference.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
  rank = {name: i for i, name in enumerate(_SLOW_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # Stable within a module.
