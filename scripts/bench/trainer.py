"""Section 2: the trainer's step against a hand-written one, and the input pipeline's rate.

The trainer's steady-state step (``gnreg.train.make_train_step`` on ``configs/default.py`` with
gnp off and no clipping) against a minimal hand-written ``jax.jit`` Flax+optax step of the same
model, loss, batch and optimizer; and the input pipeline's rate
(``prefetch_to_device(data.train_iterator(...))`` on ``digits``) against the step rate.

Each comparison is a function ``(setup, settings, details) -> rows`` called by :func:`section`;
a new one (another trainer config against this one, say) builds its steps with
:func:`trainer_loop` on the shared :class:`Setup` and times them with
``common.time_interleaved``.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bench import common, workload
from gnreg import data, optimizers, train

SECTION = "2 trainer"
STEPS_PER_EPOCH = 100


def trainer_config(settings: common.Settings):
  """``configs/default.py`` on the section's model and batch, with gnp off and no clipping."""
  import importlib.util

  path = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "configs", "default.py"
  )
  spec = importlib.util.spec_from_file_location("gnreg_benchmark_default_config", path)
  default = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(default)
  config = default.get_config()
  if isinstance(settings.model, str):
    config.model.name = settings.model
  config.batch_size = settings.batch_size
  config.gnp.alpha = 0.0
  config.clip.name = "none"
  return config


class Setup(NamedTuple):
  """What the section's comparisons share: one device, one model, one batch."""

  config: ml_collections.ConfigDict
  model: Any
  variables: dict[str, Any]
  mesh: Mesh
  batch: dict[str, jax.Array]


def prepare(settings: common.Settings) -> Setup:
  model = workload.build_model(settings.model, settings.num_classes)
  # One device for every step: the comparisons are the framework's overhead, not scaling.
  return Setup(
    config=trainer_config(settings),
    model=model,
    variables=workload.init_variables(model, settings.image_shape),
    mesh=Mesh(np.array(jax.devices()[:1]), (train.AXIS,)),
    batch=workload.synthetic_batch(settings.image_shape, settings.num_classes, settings.batch_size),
  )


def trainer_loop(setup: Setup, config: ml_collections.ConfigDict) -> common.Loop:
  """The trainer's step on ``config`` (the setup's model and batch), ready to time; its
  compiled program is ``loop.compiled``."""
  tx = optimizers.create(config, STEPS_PER_EPOCH, axis_name=train.AXIS)
  params = setup.variables["params"]
  state = train.TrainState(
    step=jnp.zeros([], jnp.int32),
    params=params,
    batch_stats=setup.variables["batch_stats"],
    opt_state=tx.init(params),
    metric_sums={k: jnp.zeros([], jnp.float32) for k in (*train.TRAIN_METRICS, train.FINITE_STEPS)},
  )
  # The step donates its state: a copy of its own.
  state = jax.device_put(jax.tree.map(jnp.copy, state), NamedSharding(setup.mesh, P()))
  step = train.make_train_step(setup.model, config, setup.mesh, STEPS_PER_EPOCH)
  batch = jax.device_put(setup.batch, NamedSharding(setup.mesh, P(train.AXIS)))
  compiled = step.lower(state, batch).compile()
  return common.Loop(lambda s, b: compiled(s, b)[0], state, batch, compiled)


def hand_written_loop(setup: Setup) -> common.Loop:
  """A minimal ``jax.jit`` step: the trainer's loss (gnreg.task: cross-entropy + L2), model,
  optimizer (SGD, Nesterov momentum, the same schedule) and donation."""
  config = setup.config
  hand_tx = optax.sgd(
    optimizers.learning_rate_schedule(config, STEPS_PER_EPOCH),
    momentum=config.optimizer.momentum,
    nesterov=config.optimizer.nesterov,
  )
  loss = workload.make_loss(setup.model, config)

  def hand_step(carry, batch):
    params, batch_stats, opt_state = carry
    (_, batch_stats), grads = jax.value_and_grad(loss, has_aux=True)(params, batch_stats, batch)
    updates, opt_state = hand_tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state

  params, batch_stats = setup.variables["params"], setup.variables["batch_stats"]
  # The step donates its state: a copy of its own.
  state = jax.tree.map(jnp.copy, (params, batch_stats, hand_tx.init(params)))
  return common.Loop(jax.jit(hand_step, donate_argnums=0), state, setup.batch)


def section(settings: common.Settings, details: dict[str, Any]) -> list[dict[str, Any]]:
  """Section 2's rows; the raw numbers go to ``details["trainer"]``."""
  setup = prepare(settings)
  details["trainer"] = {}
  rows = step_rows(setup, settings, details["trainer"])
  rows += group_rows(setup, settings, details["trainer"])
  rows += pipeline_rows(setup, settings, details["trainer"])
  return rows


GROUPS = 4  # Batch groups per device in the grouped layouts.


def group_rows(setup: Setup, settings: common.Settings, details: dict[str, Any]) -> list[dict]:
  """Batch groups: the grouped step against the per-device step at the same per-device batch,
  and the sequential layout against the side-by-side one, with gnp on (whose perturbation,
  with BatchNorm, is what the groups are for); time and compiled memory."""
  per_device = setup.config.copy_and_resolve_references()
  per_device.gnp.alpha = 0.5  # configs/default.py's penalty.
  grouped = per_device.copy_and_resolve_references()
  grouped.batch_group_size = max(1, settings.batch_size // GROUPS)
  sequential = grouped.copy_and_resolve_references()
  sequential.sequential_groups = True
  loops = {
    name: trainer_loop(setup, config)
    for name, config in (
      ("per_device", per_device),
      ("grouped", grouped),
      ("sequential", sequential),
    )
  }
  times = common.time_interleaved(loops, settings)
  memory = {name: workload.compiled_memory(loop.compiled) for name, loop in loops.items()}
  details["groups"] = {"times_s": times, "memory": memory, "group_size": grouped.batch_group_size}
  size = f"{settings.batch_size // grouped.batch_group_size} groups of {grouped.batch_group_size}"
  rows = [
    common.row(
      SECTION,
      "batch groups: grouped step / per-device step",
      common.paired_ratio(times, "grouped", "per_device"),
      "x",
      target="groups",
      detail=f"{size} vs one of {settings.batch_size}, gnp on; "
      f"{common.ms(times['grouped']):.2f} vs {common.ms(times['per_device']):.2f} ms",
    ),
    common.row(
      SECTION,
      "batch groups: sequential step / grouped step",
      common.paired_ratio(times, "sequential", "grouped"),
      "x",
      detail=f"{size}, lax.scan against side by side",
    ),
  ]
  memory_rows = (
    ("batch groups: grouped compiled memory / per-device", "grouped", "per_device", "total_bytes",
     "groups_memory"),
    ("batch groups: sequential temp memory / grouped", "sequential", "grouped",
     "temp_size_in_bytes", "sequential_memory"),
  )  # fmt: skip
  for name, variant, baseline, field, target in memory_rows:
    if memory[variant] is None or memory[baseline] is None:
      note = f"memory_analysis() unavailable on {jax.default_backend()}"
      rows.append(common.row(SECTION, name, None, "x", target=target, note=note))
      continue
    mine, theirs = memory[variant][field], memory[baseline][field]
    rows.append(
      common.row(
        SECTION,
        name,
        mine / max(theirs, 1),
        "x",
        target=target,
        detail=f"{field}: {mine / 2**20:.2f} vs {theirs / 2**20:.2f} MiB",
      )
    )
  return rows


def step_rows(setup: Setup, settings: common.Settings, details: dict[str, Any]) -> list[dict]:
  """The trainer's step against the hand-written one, interleaved."""
  loops = {"hand": hand_written_loop(setup), "trainer": trainer_loop(setup, setup.config)}
  times = common.time_interleaved(loops, settings)
  details["times_s"] = times
  return [
    common.row(
      SECTION,
      "hand-written jax.jit step",
      common.ms(times["hand"]),
      "ms",
      detail="SGD Nesterov momentum, cosine schedule, CE + L2",
    ),
    common.row(
      SECTION,
      "gnreg trainer step / hand-written",
      common.paired_ratio(times, "trainer", "hand"),
      "x",
      target="trainer",
      detail=f"{common.ms(times['trainer']):.2f} ms, min-ratio "
      f"{common.min_ratio(times, 'trainer', 'hand'):.3f}; apply_if_finite, "
      "device mean, monitors, metric sums included",
    ),
  ]


def pipeline_rows(setup: Setup, settings: common.Settings, details: dict[str, Any]) -> list[dict]:
  """The input pipeline's batches per second against the trainer's steps (``step_rows``')."""
  step_rate = 1.0 / statistics.median(details["times_s"]["trainer"])
  sharded = NamedSharding(setup.mesh, P(train.AXIS))
  pipe = details["pipeline"] = pipeline_rate(setup.config, settings, sharded)
  name = "input pipeline batches/s / trainer steps/s"
  if pipe["batches_per_s"] is None:
    return [common.row(SECTION, name, None, "x", target="pipeline", note=pipe["error"])]
  return [
    common.row(
      SECTION,
      name,
      pipe["batches_per_s"] / step_rate,
      "x",
      target="pipeline",
      detail=f"{pipe['batches_per_s']:.1f} batches/s "
      f"({pipe['batches_per_s'] * settings.batch_size:.0f} img/s, digits "
      f"at {pipe['image_shape']}) vs {step_rate:.2f} steps/s",
    )
  ]


def pipeline_rate(config, settings: common.Settings, sharding: NamedSharding) -> dict[str, Any]:
  """Batches per second of ``prefetch_to_device(data.train_iterator(...))`` on ``digits``.

  ``digits`` is the dataset that needs no download; it is resized to the workload's image
  side so each batch has the workload's batch size and spatial size.
  """
  cfg = config.data.copy_and_resolve_references()
  cfg.name = "digits"
  cfg.image_size = settings.image_shape[0]
  return input_rate(cfg, settings.batch_size, settings.pipeline_batches, sharding)


def input_rate(cfg, batch_size: int, num_batches: int, sharding: NamedSharding) -> dict[str, Any]:
  """Batches per second of ``prefetch_to_device(data.train_iterator(cfg, ...))``, once built."""
  try:
    info = data.dataset_info(cfg)
    iterator = train.prefetch_to_device(
      data.train_iterator(cfg, global_batch_size=batch_size, seed=0), sharding
    )
    jax.block_until_ready(next(iterator)["image"])  # Builds the tf.data graph.
    start = time.perf_counter()
    for _ in range(num_batches):
      jax.block_until_ready(next(iterator)["image"])
    elapsed = time.perf_counter() - start
  except (ValueError, data.DatasetNotFoundError) as e:
    return {"batches_per_s": None, "error": str(e).splitlines()[0][:200]}
  return {
    "batches_per_s": num_batches / elapsed,
    "image_shape": "x".join(str(s) for s in info.image_shape),
    "batches": num_batches,
  }
