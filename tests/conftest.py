"""Settings every process of a test session shares, the trainers it starts included.

Many tests train the same smoke config, in this process or in a subprocess; compiling its
steps again each time would cost most of the suite's time. One XLA compilation cache per
session, which the xdist workers and every subprocess they start inherit through the
environment, compiles each program once (the pytest processes, which compile with other XLA
flags, use none). A cached executable is the program that was compiled,
so results stay bitwise the same; the cache is made empty for each session and removed after.

The pytest processes collect cyclic garbage less often than Python's default, which made the
collector a tenth of their CPU while they trace programs.

The slowest modules are scheduled first, so that the workers do not end with one of them
still running alone.

Hypothesis draws the same examples on every run, so that a red run can be rerun and a green
one stays green: a property that fails is found by a change to the code, not by the draw.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile

import hypothesis
import pytest

hypothesis.settings.register_profile("gnreg", derandomize=True, database=None)
hypothesis.settings.load_profile("gnreg")

_CACHE_KEY = "gnreg_xla_cache_dir"  # How the controller names the cache to its workers.
_STASH = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
  # Tracing allocates millions of short-lived objects: at Python's default thresholds (700, 10,
  # 10) the cyclic collector walks the tests' large heaps so often that it costs a tenth of a
  # pytest process's CPU (measured: the model, composition and trainer tests in one process,
  # 121 and 123 CPU-s at these thresholds against 135 and 137).
  gc.set_threshold(50_000, 20, 20)
  workerinput = getattr(config, "workerinput", None)
  if workerinput is None:  # The xdist controller, or a run without xdist.
    cache_dir = tempfile.mkdtemp(prefix="gnreg-tests-xla-cache-")
    config.stash[_STASH] = cache_dir
  else:
    cache_dir = workerinput[_CACHE_KEY]
  os.environ["JAX_COMPILATION_CACHE_DIR"] = cache_dir
  # The trainings the tests start as subprocesses repeat each other's programs, the small ones
  # (initialisation, evaluation, metrics) too: they keep every program.
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  import jax

  # This process compiles under XLA flags that its subprocesses do not get (below), and the
  # cache's key reads XLA_FLAGS from the environment, where they are no longer: a subprocess
  # could load a program built for a few steps. Nor would a cache of its own pay here: the
  # programs the two workers compile are mostly distinct (measured: writing 33 programs cost
  # 4.2 CPU-s, and the 15 read back saved 1.7 s of compilation).
  jax.config.update("jax_enable_compilation_cache", False)
  _compile_in_process_programs_fast()


def _compile_in_process_programs_fast() -> None:
  """The tests' own programs run a few steps each: XLA:CPU's optimisations would cost more than
  they save (measured: the suite's pytest time went from 403 s to 373 s, test_composition's from
  43 s to 16 s). XLA reads XLA_FLAGS once, when this process's backend starts; the flags are
  then taken back, so that the trainings the tests start as subprocesses, which run for many
  steps, compile at XLA's default level (a smoke run at level 0 took 16 s against 12 s), unless
  a test asks for them."""
  import jax

  from gnreg import compilation

  previous = os.environ.get("XLA_FLAGS")
  os.environ["XLA_FLAGS"] = f"{previous or ''} {compilation.run_once_flags()}".strip()
  try:
    jax.devices()  # Starts the backend, which reads XLA_FLAGS.
  finally:
    if previous is None:
      del os.environ["XLA_FLAGS"]
    else:
      os.environ["XLA_FLAGS"] = previous


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
  """xdist: every worker uses the controller's cache."""
  node.workerinput[_CACHE_KEY] = node.config.stash[_STASH]


def pytest_unconfigure(config: pytest.Config) -> None:
  if getattr(config, "workerinput", None) is None:
    if _STASH in config.stash:
      shutil.rmtree(config.stash[_STASH], ignore_errors=True)


# The modules that take longest, longest first (measured, seconds of a worker: 67, 66, 54, 45,
# 44, 39, 37, 31, 27, 26, 25, 17, 16, 16, 15, 15, 14), so that neither worker ends with one of
# them still running alone.
_SLOW_FIRST = (
  "test_faults.py",
  "test_models_train.py",
  "test_multiprocess.py",
  "test_tuning_cli.py",
  "test_train.py",
  "test_batch_groups.py",
  "test_models_zoo.py",
  "test_data.py",
  "test_recipes.py",
  "test_models_core.py",
  "test_wheel.py",
  "test_accelerator_check.py",
  "test_composition.py",
  "test_main.py",
  "test_authors_reference.py",
  "test_gnp.py",
  "test_sam_family.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
  rank = {name: i for i, name in enumerate(_SLOW_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # Stable within a module.
