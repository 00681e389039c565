r"""Measures every cost of gnreg side by side, in one process, and checks them against targets.

  python scripts/benchmark.py [--quick] [--out benchmark.json] [--sections 1,2,3,4,5]

Sections, one module each in ``scripts/bench/``:

1. ``transforms``: step-time ratios of a jitted Flax train step (BatchNorm through mutable
   ``batch_stats``): clip-by-global-norm, AGC, ``pid_lr``, monitoring and all of them chained
   against the bare optimizer step (SGD momentum); ``gnp`` and ``gnp`` in its zero-warmup phase
   against that same plain step; ``exact_gnp``, ASAM and LookSAM.
2. ``trainer``: the trainer's steady-state step (``gnreg.train.make_train_step`` on
   ``configs/default.py`` with gnp off and no clipping) against a minimal hand-written
   ``jax.jit`` Flax+optax step of the same model, loss, batch and optimizer; and the input
   pipeline's rate (``prefetch_to_device(data.train_iterator(...))`` on ``digits``) against the
   step rate.
3. ``memory``: the compiled memory of the gnp step against the plain step (``memory_analysis()``).
4. ``lr_finder``: the learning-rate finder (100 rates x 100 subsamples, batch 32, a 64-128-10 MLP
   on scikit-learn's ``digits``) against its Keras original ``autolrtuner`` on the same grid,
   model, initial weights and data, end to end (compilation included) and warm (a second call);
   and against a JAX loop that evaluates one rate at a time. ``autotune``: PID autotune
   (16 trials) batched against the same trials run one after another.
5. ``compile_time``: the compile time (``lower()`` + ``compile()``) of the plain train step per
   model size.

Timing (``bench/common.py``): every measured function is compiled and run once before timing;
then ``--rounds`` rounds each time every variant of a section for a number of steps,
synchronised with ``jax.block_until_ready``. Variants are interleaved within a round (in
alternating order), so that load from other processes falls on all of them alike, and a ratio
is the median over the rounds of the per-round ratio. Timings are wall-clock and include
dispatch.

Each ratio is printed next to the bound the project sets for it, with PASS or MISS; the hardware,
the command line and every raw number go to the JSON file.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

from bench import (  # noqa: E402
  common,
  compile_time,
  lr_finder,
  memory,
  trainer,
  transforms,
)

SECTIONS = (1, 2, 3, 4, 5)


def run(
  settings: common.Settings, sections: Sequence[int] = SECTIONS, command: str = ""
) -> dict[str, Any]:
  """Runs ``sections`` and returns the report: command, hardware, settings, rows, details."""
  unknown = sorted(set(sections) - set(SECTIONS))
  if unknown:
    raise ValueError(f"benchmark: sections must be among {SECTIONS}, got {unknown}")
  details: dict[str, Any] = {}
  rows: list[dict[str, Any]] = []
  start = time.perf_counter()
  if 1 in sections or 3 in sections:  # Section 3 measures the programs section 1 compiles.
    step_rows = transforms.section(settings, details)
    if 1 in sections:
      rows += step_rows
    if 3 in sections:
      rows += memory.section(settings, details)
  if 2 in sections:
    rows += trainer.section(settings, details)
  if 4 in sections:
    rows += lr_finder.section(settings, details)
  if 5 in sections:
    rows += compile_time.section(settings, details)
  return {
    "command": command,
    "hardware": common.hardware(),
    "settings": common.settings_json(settings),
    "sections": list(sections),
    "rows": rows,
    "details": details,
    "wall_s": time.perf_counter() - start,
  }


def parse_args(argv: Sequence[str] | None = None) -> tuple[common.Settings, tuple[int, ...], str]:
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
    "--quick",
    action="store_true",
    help="ResNet20 at batch 32 and only the small models' compile times",
  )
  parser.add_argument("--out", default="benchmark.json", help="where to write the JSON report")
  parser.add_argument(
    "--sections",
    default=",".join(str(s) for s in SECTIONS),
    help="comma-separated subset of 1,2,3,4,5",
  )
  parser.add_argument("--rounds", type=int, default=None, help="timing rounds (median)")
  parser.add_argument(
    "--no-autolrtuner", action="store_true", help="skip the Keras original in section 4"
  )
  args = parser.parse_args(argv)
  settings = common.QUICK if args.quick else common.FULL
  if args.rounds is not None:
    if args.rounds < 1:
      parser.error(f"--rounds must be >= 1, got {args.rounds}")
    settings = dataclasses.replace(settings, rounds=args.rounds)
  if args.no_autolrtuner:
    settings = dataclasses.replace(settings, autolrtuner=False)
  try:
    sections = tuple(sorted({int(s) for s in args.sections.split(",") if s.strip()}))
  except ValueError:
    parser.error(f"--sections must be comma-separated integers, got {args.sections!r}")
  if not sections or set(sections) - set(SECTIONS):
    parser.error(f"--sections must be a non-empty subset of {SECTIONS}, got {args.sections!r}")
  return settings, sections, args.out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  argv = list(sys.argv[1:] if argv is None else argv)
  settings, sections, out = parse_args(argv)
  command = " ".join(["python", "scripts/benchmark.py", *argv])
  common.announce(command)
  report = run(settings, sections, command)
  common.write_report(report, out)
  print()
  print(common.format_table(report))
  print(f"\nwrote {out} ({report['wall_s']:.0f} s)")
  return report


if __name__ == "__main__":
  main()
