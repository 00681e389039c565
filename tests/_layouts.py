"""Trains one tiny config per case on several layouts and saves what each run ends with.

Run by tests/test_batch_groups.py in subprocesses, since the device count is fixed when JAX
starts: ``python _layouts.py devices OUT`` (one process with 4 forced host devices: meshes of
1, 2 and 4 devices with their groups side by side, and 1 device with its groups in sequence)
or ``python _layouts.py process ID PORT OUT`` (one of two processes with one device each).
Every run sees the same global batches and starts from the same variables;
``OUT/<case>.<layout>.npz`` holds its final parameters and BatchNorm statistics and
``OUT/<case>.<layout>.json`` which steps gnp penalised.
"""

from __future__ import annotations

import json
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

GLOBAL_BATCH = 16
GROUP = 4  # Four groups per step: one per device on 4 devices, four on 1.
STEPS = 4
GNP = {"r": 0.1, "alpha": 0.6, "normalize_base_grad": True}
CASES = {
  "plain": {},
  "gnp": GNP,
  "gnp_synced": {**GNP, "sync_perturbation": True},
  "zero_warmup": {**GNP, "warmup": "zero", "warmup_epochs": 0.5},  # Two steps held off.
  "hybrid": {**GNP, "probability": 0.5},
  "asam": {**GNP, "alpha": 1.0, "adaptive": True},
  # GSAM through the trainer's gnp.method (a constant rate: its radius is rho_max).
  "gsam": {"method": "gsam", "gsam": {"rho_max": 0.1, "rho_min": 0.05, "alpha": 0.4}},
}
# (name, devices, sequential, batch_group_size) of the one-process runs; 'per_device' is the
# authors' semantics (no groups), which must differ between 1 and 4 devices.
LAYOUTS = (
  ("1_devices", 1, False, GROUP),
  ("2_devices", 2, False, GROUP),
  ("4_devices", 4, False, GROUP),
  ("sequential", 1, True, GROUP),
)
PER_DEVICE_LAYOUTS = (("per_device_1", 1, False, None), ("per_device_4", 4, False, None))


class TinyNet(nn.Module):
  """BatchNorm and dropout, in the fewest layers that have both (compiles in a second)."""

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = nn.Conv(8, (3, 3), use_bias=False)(x)  # BatchNorm follows: a bias would not train.
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    x = nn.Dropout(0.3, deterministic=not train)(x)
    return nn.Dense(10)(jnp.mean(x, axis=(1, 2)))


def config_for(case: str, *, sequential: bool = False, group_size: int | None = GROUP):
  from gnreg import configuration

  config = configuration.base_config()
  config.seed = 1  # Its hybrid draws penalise the first step and skip the others.
  config.batch_size = GLOBAL_BATCH
  config.batch_group_size = group_size
  config.sequential_groups = sequential
  config.num_epochs = 1.0
  config.optimizer.learning_rate = 0.1
  config.schedule.name = "constant"
  config.clip.name = "global_norm"
  config.gnp.update(CASES[case])
  return config


def batches() -> list[dict[str, np.ndarray]]:
  rng = np.random.default_rng(0)
  return [
    {
      "image": rng.normal(size=(GLOBAL_BATCH, 8, 8, 1)).astype(np.float32),
      "label": rng.integers(0, 10, size=GLOBAL_BATCH).astype(np.int32),
    }
    for _ in range(STEPS)
  ]


def train_on(config, devices) -> tuple[dict, list[bool]]:
  """The variables after ``STEPS`` trainer steps on a mesh of ``devices``, and whether each
  step was penalised. With several processes, each passes only its own rows."""
  import gnreg
  from gnreg import optimizers, train

  model = TinyNet()
  mesh = jax.sharding.Mesh(np.array(devices), (train.AXIS,))
  tx = optimizers.create(config, STEPS, axis_name=train.AXIS)
  sums = (*train.TRAIN_METRICS, train.FINITE_STEPS)

  @jax.jit
  def init():
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False)
    return train.TrainState(
      step=jnp.zeros([], jnp.int32),
      params=variables["params"],
      batch_stats=variables["batch_stats"],
      opt_state=tx.init(variables["params"]),
      metric_sums={k: jnp.zeros([], jnp.float32) for k in sums},
    )

  state = jax.device_put(init(), NamedSharding(mesh, P()))
  step = train.make_train_step(model, config, mesh, STEPS)
  rows = NamedSharding(mesh, P(train.AXIS))
  share = GLOBAL_BATCH // jax.process_count()
  mine = slice(jax.process_index() * share, (jax.process_index() + 1) * share)
  penalised = []
  for batch in batches():
    penalised.append(bool(jax.device_get(gnreg.next_update_penalised(state.opt_state))))
    batch = {k: jax.make_array_from_process_local_data(rows, v[mine]) for k, v in batch.items()}
    state, _ = step(state, batch)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), variables), penalised


def save(out: str, name: str, variables: dict, penalised: list[bool]) -> None:
  leaves = jax.tree_util.tree_leaves_with_path(variables)
  np.savez(os.path.join(out, f"{name}.npz"), **{jax.tree_util.keystr(p): x for p, x in leaves})
  with open(os.path.join(out, f"{name}.json"), "w") as f:
    json.dump(penalised, f)


def main(argv: list[str]) -> None:
  if argv[1] == "process":
    process_id, port, out = int(argv[2]), argv[3], argv[4]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    for case in CASES:
      result = train_on(config_for(case), jax.devices())
      if process_id == 0:
        save(out, f"{case}.2_processes", *result)
    return
  out = argv[2]
  for case in CASES:
    layouts = LAYOUTS + (PER_DEVICE_LAYOUTS if case == "plain" else ())
    for name, count, sequential, group_size in layouts:
      config = config_for(case, sequential=sequential, group_size=group_size)
      save(out, f"{case}.{name}", *train_on(config, jax.devices()[:count]))


if __name__ == "__main__":
  main(sys.argv)
