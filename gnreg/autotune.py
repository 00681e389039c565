"""Tunes the PID regulator's gains: ``python -m gnreg.autotune --config=... --workdir=...``.

Runs :func:`gnreg.tuning.autotune_pid` on the first epoch of the config's
training data (``config.pid`` sets the target, search and trials), writes
``pid_autotune.png`` and ``pid_autotune.json`` to the workdir, and prints the
overrides that train with the chosen gains.
"""

from __future__ import annotations

from gnreg import cli


def main(argv: list[str]) -> None:
  config = cli.checked_config(argv)
  workdir = cli.checked_workdir()
  from gnreg.tuning.from_config import run_pid_autotune

  result = run_pid_autotune(config, workdir)
  best = result.trials[result.best_index]
  print(
    f"best of {len(result.trials)} trials: score {best['score']:.4g}, "
    f"tracking error {best['tracking_error']:.3g}"
  )
  print(f"wrote {workdir}/pid_autotune.png and {workdir}/pid_autotune.json")
  print(
    "--config.pid.enabled=True "
    + " ".join(f"--config.pid.{k}={v:.6g}" for k, v in result.best.items())
  )


if __name__ == "__main__":
  cli.run(main)
