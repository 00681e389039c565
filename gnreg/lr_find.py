"""Finds a learning rate for a config: ``python -m gnreg.lr_find --config=... --workdir=...``.

Runs :func:`gnreg.tuning.find_lr` on the config's model, optimizer and first
training examples (``config.lr_finder`` sets the grid), writes
``lr_finder.png`` and ``lr_finder.json`` to the workdir, and prints the
override that trains with the chosen rate.
"""

from __future__ import annotations

from gnreg import cli


def main(argv: list[str]) -> None:
  config = cli.checked_config(argv)
  workdir = cli.checked_workdir()
  from gnreg.tuning.from_config import run_lr_finder

  result = run_lr_finder(config, workdir)
  for method, lr in result.choices().items():
    print(f"{method:>8}: {lr:.3g}")
  chosen = result.choices()[config.lr_finder.method]
  print(f"wrote {workdir}/lr_finder.png and {workdir}/lr_finder.json")
  if chosen > 0:
    print(f"--config.optimizer.learning_rate={chosen:.6g}")
  else:
    cli.fail(f"lr_finder.method: {config.lr_finder.method!r} found no rate that lowers the loss")


if __name__ == "__main__":
  cli.run(main)
