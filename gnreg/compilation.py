"""XLA compiler options for programs that run once.

XLA:CPU's optimisation passes take seconds on the unrolled random-number code of a
model's initialisation or of a random draw, programs that then run once, in
milliseconds. Their integer arithmetic (the random bits) is exact at any optimisation
level; float results can differ in the last bit, but every caller always compiles
the program with the same options, so runs stay reproducible.
"""

from __future__ import annotations

from typing import Any

import jax

__all__ = ["run_once_options", "run_once_flags"]

# The fusion emitters generate code per fusion, which at this level is most of the compile
# (measured: a 4-step trainer program with gnp compiled in 3.4 s with them, 0.9 s without).
# One LLVM module instead of XLA's default 32 parts compiled in parallel: on a small program
# the split costs more than its parallelism saves (measured on 2 cores: a process compiling 30
# trainer steps of a tiny net took 22.3 to 22.6 CPU-s, against 24.1 to 24.4 with 2 parts and
# 25.8 to 29.8 with 32; PyramidNet-272's initialisation compiled in 19.6 to 22.1 CPU-s against
# 22.9 to 23.4).
_RUN_ONCE = {
  "xla_backend_optimization_level": 0,
  "xla_llvm_disable_expensive_passes": True,
  "xla_cpu_use_fusion_emitters": False,
  "xla_cpu_parallel_codegen_split_count": 1,
}


def run_once_options(backend: str | None = None) -> dict[str, Any] | None:
  """``compiler_options`` for ``jax.jit`` that compile a run-once program fast on CPU.

  ``None`` (the defaults) on other backends, whose compilers are not the bottleneck here.
  """
  if (backend or jax.default_backend()) != "cpu":
    return None
  return dict(_RUN_ONCE)


def run_once_flags() -> str:
  """The same options as ``XLA_FLAGS``, for a CPU process whose programs all run a few steps:
  ``XLA_FLAGS="$(...)" python ...`` (read once, when the process's backend starts)."""
  return " ".join(
    f"--{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in _RUN_ONCE.items()
  )
