"""Trains a config: ``python -m gnreg.main --config=<name or path>[:arg] --workdir=<dir>``.

Any config field can be overridden on the command line, for example
``--config.gnp.alpha=0.8 --config.batch_size=256``. Running the same command
again resumes from the newest checkpoint in ``--workdir``.

Several processes: on a TPU pod pass ``--distributed`` to every worker (JAX finds
the others from the TPU metadata); under Slurm or Open MPI no flag is needed; on
other clusters pass ``--coordinator_address``, ``--num_processes`` and
``--process_id`` to every process.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from gnreg import cli

__all__ = ["main", "console"]

_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "host:port of process 0, for clusters JAX does not detect."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in the job.")
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed",
  False,
  "Join a multi-process job that JAX detects by itself (TPU pod workers, Slurm, Open MPI).",
)


def _in_a_cluster() -> bool:
  """Whether this process is one of several that JAX can find by itself (Slurm, MPI, TPU pod)."""
  env = os.environ
  return (
    int(env.get("SLURM_NTASKS", "1")) > 1
    or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    or "," in env.get("TPU_WORKER_HOSTNAMES", "")
  )


def main(argv: list[str]) -> None:
  import jax

  if (
    _DISTRIBUTED.value or _COORDINATOR.value or _NUM_PROCESSES.value is not None or _in_a_cluster()
  ):
    # CPU hosts need an explicit collectives backend; GPUs and TPUs ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      coordinator_address=_COORDINATOR.value,
      num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value,
    )
  prepared = cli.checked_task(argv)
  workdir = cli.checked_workdir()

  from gnreg import checkpoints, train, tune

  # For the rest of the process: the one line below speaks for a checkpoint that cannot be read,
  # and tensorstore may still finish that read's other files after it.
  checkpoints.silence_orbax()

  try:
    train.run(tune.apply_tuning(prepared, workdir), workdir)
  except train.Preempted as e:
    print(f"gnreg: {e}; run the same command to resume", file=sys.stderr)
    sys.exit(128 + e.signum)
  except (ValueError, train.NonFiniteError) as e:
    # A damaged checkpoint, a changed config, a tuner that found nothing, a diverged run.
    cli.fail(str(e))


def console() -> None:
  """The ``gnreg-train`` command."""
  cli.run(main, doc=__doc__, command="python -m gnreg.main")


if __name__ == "__main__":
  console()
