"""Section 3: the compiled memory of the gnp step against the plain step's.

``compiled.memory_analysis()`` of the programs section 1 (``transforms``) compiled and stored
in ``details["transforms"]["memory"]``.
"""

from __future__ import annotations

from typing import Any

import jax

from bench import common


def section(settings: common.Settings, details: dict[str, Any]) -> list[dict[str, Any]]:
  """Section 3's rows, from section 1's compiled programs (``transforms.section`` first)."""
  del settings  # Section 1's settings decided the programs.
  memory = details["transforms"]["memory"]
  rows = []
  sec = "3 memory"
  plain, gnp = memory["bare"], memory["gnp"]
  if plain is None or gnp is None:
    rows.append(
      common.row(
        sec,
        "gnp compiled memory / plain",
        None,
        "x",
        target="memory",
        note=f"memory_analysis() unavailable on {jax.default_backend()}",
      )
    )
  else:
    rows.append(
      common.row(
        sec,
        "gnp compiled memory / plain (args+out+temp)",
        gnp["total_bytes"] / plain["total_bytes"],
        "x",
        target="memory",
        detail=f"{gnp['total_bytes'] / 2**20:.1f} vs {plain['total_bytes'] / 2**20:.1f} MiB",
      )
    )
    temp_ratio = gnp["temp_size_in_bytes"] / max(plain["temp_size_in_bytes"], 1)
    rows.append(
      common.row(
        sec,
        "gnp temp_size_in_bytes / plain",
        temp_ratio,
        "x",
        detail=f"{gnp['temp_size_in_bytes'] / 2**20:.1f} vs "
        f"{plain['temp_size_in_bytes'] / 2**20:.1f} MiB",
      )
    )
  return rows
