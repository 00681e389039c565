"""The trainer: build, restore, loop, evaluate, save.

One jitted step runs on every device of every host through ``jax.shard_map`` over a 1-D
``data`` mesh. By default it has the per-device semantics of the gradient norm penalty
authors' code: each device computes the gradient of its shard of the batch, gnp perturbs with
that local gradient (unless ``gnp.sync_perturbation``), BatchNorm normalises with per-device
batch statistics, and the chain averages over devices before it clips and steps. With
``config.batch_group_size`` each device's shard is split into groups that play the devices'
part (:class:`BatchGroups`), so that the algorithm no longer depends on the device count;
``config.sequential_groups`` runs them one after another, as gradient accumulation does. The
BatchNorm running averages are averaged over groups and devices every step, which equals
averaging the per-group averages before evaluation because the moving average is linear.
"""

from __future__ import annotations

import collections
import functools
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

import gnreg
from gnreg import checkpoints, compilation, configuration, data, models, optimizers, plots
from gnreg.metric_writer import MetricWriter
from gnreg.task import (
  MIX_KEYS,
  Task,
  cross_entropy,
  init_variables,
  make_loss_fn,
  mix_targets,
  prepare,
  topk_correct,
)

__all__ = [
  "AXIS",
  "TrainState",
  "TRAIN_METRICS",
  "FINITE_STEPS",
  "BatchGroups",
  "make_train_step",
  "make_eval_step",
  "prefetch_to_device",
  "evaluate",
  "NonFiniteError",
  "Preempted",
  "StepVerdict",
  "read_verdict",
  "must_read_at_once",
  "check_finite",
  "ResumeError",
  "RESUME_FIELDS",
  "RESUME_IGNORED",
  "CONFIG_JSON",
  "FINAL_METRICS_JSON",
  "resume_config_json",
  "recorded_config",
  "changed_fields",
  "check_resumable",
  "record_config",
  "restore",
  "initial_state",
  "train_batches",
  "Throughput",
  "log_train_metrics",
  "evaluate_and_log",
  "write_final",
  "train_and_evaluate",
  "run",
]

AXIS = "data"


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  # Sums of the train metrics since the last log line. Kept in the checkpoint, so that a
  # resumed run logs the same averages as one that was never interrupted.
  metric_sums: dict[str, jax.Array]


TRAIN_METRICS = ("train/loss", "train/top1_error")
# The sums also count the finite steps they hold, which the logged averages divide by.
FINITE_STEPS = "finite_steps"


class BatchGroups(NamedTuple):
  """How each device's share of the batch is split into groups (``config.batch_group_size``).

  Everything the GNP authors' step does per device (BatchNorm batch statistics, gnp's
  perturbation, the dropout / drop-path / shake draws) is done per group of ``size``
  consecutive examples; the groups' results are averaged, as the devices' are. With ``size``
  set, group ``j`` of the global batch covers the same examples and draws the same random
  numbers on any number of devices and processes, so the hardware decides how fast a run goes
  and never what it computes. ``size=None`` is one group per device (the authors' semantics).
  ``sequential`` processes a device's groups one after another (gradient accumulation, in the
  memory of one group) instead of side by side.
  """

  size: int | None
  sequential: bool = False

  def split(self, rows: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """A device's rows as ``[groups, size, ...]``: group ``k`` holds rows ``k*size`` onwards."""
    count = len(rows["label"])
    size = self.size or count
    if count % size:  # configuration.validate refuses this for the trainer.
      raise ValueError(f"batch_group_size: {size} does not divide the per-device batch of {count}")
    return {k: v.reshape(count // size, size, *v.shape[1:]) for k, v in rows.items()}

  def mean_over(self, fn, groups: dict[str, jax.Array], first_index: jax.Array):
    """Runs ``fn(group, index) -> (averaged, kept)`` on each of a device's ``groups``, with
    ``index`` counting the groups of the global batch from ``first_index``; returns the groups'
    mean of ``averaged`` and the first group's ``kept``.

    Side by side (one program holds every group's computation, for XLA to schedule) or, when
    ``sequential``, one after another (``lax.scan``, which holds one group's activations at a
    time and sums ``averaged`` as it goes). Side by side is a loop unrolled at trace time rather
    than ``jax.vmap``: vmapped, each group's weight gradients become one grouped convolution,
    which XLA:CPU runs at half the speed of the groups' own (measured, ResNet-20, 4 groups of 8:
    1.9x the per-device step, against 0.8-1.0x unrolled); the price is a compilation that grows
    with the number of groups.
    """
    count = len(groups["label"])
    indices = first_index + jnp.arange(count)
    first = lambda tree: jax.tree.map(lambda x: x[0], tree)
    if not self.sequential:
      outputs = [fn(jax.tree.map(lambda x, k=k: x[k], groups), indices[k]) for k in range(count)]
      averaged = jax.tree.map(lambda *xs: sum(xs) / count, *(a for a, _ in outputs))
      return averaged, outputs[0][1]

    def accumulate(total, group_and_index):
      averaged, kept = fn(*group_and_index)
      return jax.tree.map(jnp.add, total, averaged), kept

    shapes = jax.eval_shape(fn, first(groups), indices[0])[0]
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    total, kept = jax.lax.scan(accumulate, zeros, (groups, indices))
    return jax.tree.map(lambda x: x / count, total), first(kept)


def make_train_step(model, config: ml_collections.ConfigDict, mesh, steps_per_epoch: int):
  """The jitted ``(state, batch) -> (state, signals)`` over ``mesh``.

  Each device splits its rows into :class:`BatchGroups`. The first part of the optimizer chain
  (``optimizers.create_parts``: gnp, or nothing) turns each group's gradient into its update,
  perturbing with that group's own gradient, and the updates are averaged over groups and
  devices; with ``gnp.sync_perturbation`` gnp sees the mean gradient of all groups instead,
  and its second gradient is the mean over groups at the one perturbed point. The rest of the
  chain (clipping, the optimizer) acts once on the mean. BatchNorm statistics are each group's
  own; their running averages are averaged over groups and devices.

  ``signals['nonfinite']`` counts the consecutive steps whose averaged gradient was not
  finite; such a step changes neither the parameters, the optimizer state, the BatchNorm
  statistics nor the metric sums. If the batch has a ``stop`` column (1.0 on the rows of a
  process that has been asked to stop), ``signals['stop']`` is its maximum over all devices.
  """
  groups = BatchGroups(config.batch_group_size, bool(config.sequential_groups))
  synced = optimizers.syncs_perturbation(config)
  # Synced, gnp averages the gradient over the devices itself; otherwise each group's update
  # is its own, and the mean over groups and devices comes after.
  parts = optimizers.create_parts(config, steps_per_epoch, axis_name=AXIS if synced else None)
  base_key = jax.random.PRNGKey(config.seed)
  grad_and_aux = jax.value_and_grad(make_loss_fn(model, config), has_aux=True)

  def per_device_step(state: TrainState, batch):
    local_state, shared_state = state.opt_state
    # Dropout, drop-path and shake draws differ per step and group, and repeat on resume.
    step_key = jax.random.fold_in(base_key, state.step)
    # As the GNP authors: shake models' true gradient on a penalised step's first pass, their
    # randomised one on a plain step (a zero-warmup or hybrid-skipped step, or no gnp at all).
    first_pass_true_gradient = gnreg.next_update_penalised(state.opt_state)
    rows = groups.split({k: batch[k] for k in ("image", "label", *MIX_KEYS) if k in batch})
    first_index = jax.lax.axis_index(AXIS) * len(rows["label"])

    def gradient(at, group, index, **options):
      """The loss's gradient on one group at ``at``, with its BatchNorm statistics."""
      rngs = models.rng_streams(jax.random.fold_in(step_key, index))
      images, labels = group["image"], group["label"]
      return grad_and_aux(
        at, state.batch_stats, images, labels, rngs, **mix_targets(group), **options
      )

    def first_pass(group, index):
      (loss, (logits, batch_stats)), grads = gradient(
        state.params, group, index, true_gradient=first_pass_true_gradient
      )
      top1_error = 1.0 - jnp.mean(topk_correct(logits, group["label"], 1))
      return grads, batch_stats, {"train/loss": loss, "train/top1_error": top1_error}

    def second_gradient(group, index):
      # gnp's second pass: same examples and random draws; BatchNorm normalises with the
      # perturbed batch's statistics and its running averages are dropped; shake models take
      # their randomised backward (true_gradient=False), as the authors' second pass.
      return lambda at: gradient(at, group, index)[1]

    if synced:
      averaged, _ = groups.mean_over(lambda g, i: (first_pass(g, i), ()), rows, first_index)
      grads, batch_stats, metrics = averaged

      def grad_fn(at):
        return groups.mean_over(lambda g, i: (second_gradient(g, i)(at), ()), rows, first_index)[0]

      updates, local_state = parts.local.update(grads, local_state, state.params, grad_fn=grad_fn)
    else:

      def group_update(group, index):
        grads, batch_stats, metrics = first_pass(group, index)
        updates, new_local_state = parts.local.update(
          grads, local_state, state.params, grad_fn=second_gradient(group, index)
        )
        return (updates, batch_stats, metrics), new_local_state

      # The local state (gnp's count and hybrid draw) advances alike in every group; only a
      # non-finite step holds it, which keep_if_finite below decides on the mean, as gnp does.
      (updates, batch_stats, metrics), new_local_state = groups.mean_over(
        group_update, rows, first_index
      )
      updates = jax.lax.pmean(updates, AXIS)
      local_state = new_local_state

    updates, shared_state = parts.shared.update(updates, shared_state, state.params)
    finite = shared_state.last_finite
    keep_if_finite = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    metrics = jax.lax.pmean(metrics, AXIS)
    metrics[FINITE_STEPS] = jnp.ones([], jnp.float32)
    new_state = TrainState(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      batch_stats=keep_if_finite(jax.lax.pmean(batch_stats, AXIS), state.batch_stats),
      opt_state=(keep_if_finite(local_state, state.opt_state[0]), shared_state),
      metric_sums=keep_if_finite(
        jax.tree.map(jnp.add, state.metric_sums, metrics), state.metric_sums
      ),
    )
    signals = {
      "nonfinite": optax.tree_utils.tree_get(shared_state, "notfinite_count"),
      "param_norm": optax.tree.norm(new_state.params),
    }
    if "stop" in batch:
      # Whether any process has been asked to stop: every process reads it from the same step.
      signals["stop"] = jax.lax.pmax(jnp.max(batch["stop"]), AXIS)
    return new_state, signals

  # check_vma=False: the gradient with respect to the replicated parameters is each device's
  # own, as the authors' pmap step has it (the check would sum it over devices), and the local
  # state taken from a device's first group is replicated by construction (see above).
  step = jax.shard_map(
    per_device_step, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(), check_vma=False
  )
  return jax.jit(step, donate_argnums=0)


def make_eval_step(model, config: ml_collections.ConfigDict, mesh):
  """The jitted ``(state, batch) -> sums`` of loss, correct top-1/top-5 and real examples."""

  def per_device_eval(state: TrainState, batch):
    variables = {"params": state.params}
    if state.batch_stats:
      variables["batch_stats"] = state.batch_stats
    logits = model.apply(variables, batch["image"], train=False)
    mask = batch["mask"]
    losses = cross_entropy(logits, batch["label"], 0.0)
    sums = {
      "loss": jnp.sum(losses * mask),
      "top1": jnp.sum(topk_correct(logits, batch["label"], 1) * mask),
      "top5": jnp.sum(topk_correct(logits, batch["label"], 5) * mask),
      "count": jnp.sum(mask),
    }
    return jax.lax.psum(sums, AXIS)

  step = jax.shard_map(per_device_eval, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P())
  return jax.jit(step)


def prefetch_to_device(iterator, sharding: NamedSharding, size: int = 2):
  """Keeps ``size`` global batches already transferred ahead of the step that needs them.

  Each host passes its local rows; ``make_array_from_process_local_data`` assembles
  the global array without any host holding all of it. The example ids (``index``)
  stay on the host, for reports about a batch.
  """
  queue = []

  def put(batch):
    return {
      k: v if k == "index" else jax.make_array_from_process_local_data(sharding, v)
      for k, v in batch.items()
    }

  for batch in iterator:
    queue.append(put(batch))
    if len(queue) > size:
      yield queue.pop(0)
  yield from queue


def evaluate(eval_step, state: TrainState, config: ml_collections.ConfigDict, sharding) -> dict:
  """Loss, top-1 and top-5 error over the whole test split, each example counted once."""
  totals = None
  batches = data.eval_iterator(
    config.data,
    global_batch_size=config.batch_size,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  for batch in prefetch_to_device(batches, sharding):
    sums = eval_step(state, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = float(totals["count"])
  return {
    "test/loss": float(totals["loss"]) / count,
    "test/top1_error": 1.0 - float(totals["top1"]) / count,
    "test/top5_error": 1.0 - float(totals["top5"]) / count,
    "test/count": int(count),
  }


class _StopRequest:
  """Turns SIGTERM (how TPU VMs and schedulers preempt) and Ctrl-C into a flag the loop reads:
  every process then stops after the same step, with a checkpoint of it.

  A second signal ends the process at once, without the checkpoint, with status 128 + its
  number. A thread sees each signal as it arrives, through ``signal.set_wakeup_fd``: Python's
  own handler runs only when the main thread comes back from XLA (which can be minutes into a
  compilation), and by then two signals have become one.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal = None
    self._previous = {}

  def __enter__(self) -> _StopRequest:
    for sig in self.SIGNALS:
      self._previous[sig] = signal.signal(sig, self._handle)
    self._read, self._write = os.pipe()
    os.set_blocking(self._write, False)  # set_wakeup_fd requires it.
    self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
    self._watcher = threading.Thread(target=self._watch, name="gnreg-signals", daemon=True)
    self._watcher.start()
    return self

  def _handle(self, signum, frame) -> None:
    if self.signal is None:
      self.signal = signum

  def _watch(self) -> None:
    seen = 0
    while chunk := os.read(self._read, 64):  # Empty once __exit__ closes the other end.
      for signum in chunk:
        if signum in self.SIGNALS:
          seen += 1
          if seen == 2:
            os.write(2, b"gnreg: a second signal: stopping at once, without a checkpoint\n")
            os._exit(128 + signum)

  def __exit__(self, *exc) -> None:
    signal.set_wakeup_fd(self._previous_fd)
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    os.close(self._write)
    self._watcher.join()
    os.close(self._read)


class NonFiniteError(RuntimeError):
  """Training produced non-finite gradients (config.nonfinite says when to give up)."""


class Preempted(Exception):
  """Raised after a checkpoint is saved because the process was asked to stop."""

  def __init__(self, signum: int, step: int):
    super().__init__(f"stopped by signal {signum} at step {step}; checkpoint saved")
    self.signum = signum
    self.step = step


class StepVerdict(NamedTuple):
  """What the host learns from one step, read from the device at once (one ``device_get``).

  ``nonfinite``: consecutive steps up to ``step`` whose gradient was not finite (0 if this
  one was finite); ``stop``: whether any process has been asked to stop; ``param_norm``: the
  parameters' global norm after the step; ``indices``: the batch's example ids, kept only
  where a report may need them (``nonfinite='halt'``).
  """

  step: int
  nonfinite: int
  stop: bool
  param_norm: float
  indices: np.ndarray | None


def read_verdict(signals: dict[str, jax.Array], step: int, indices=None) -> StepVerdict:
  """The :class:`StepVerdict` of a train step's ``signals`` (waits for that step)."""
  signals = jax.device_get(signals)
  return StepVerdict(
    step,
    int(signals["nonfinite"]),
    bool(signals.get("stop", False)),
    float(signals["param_norm"]),
    indices,
  )


def must_read_at_once(config: ml_collections.ConfigDict, last: StepVerdict | None) -> bool:
  """Whether the step just dispatched could end the run, so that its verdict is read now.

  Otherwise the host reads each verdict a step late, when it is ready, and the device never
  waits for it. 'halt' ends at any non-finite step; 'skip' only when the previous verdict's
  count of consecutive non-finite steps is one short of ``max_consecutive_nonfinite``.
  """
  if config.nonfinite == "halt":
    return True
  return last is not None and last.nonfinite >= config.max_consecutive_nonfinite - 1


def _norm_history(history: Sequence[StepVerdict]) -> str:
  """The parameter norm over the last steps, which shows a divergence before its NaN."""
  first, last = history[0], history[-1]
  report = (
    f"the parameter norm went from {first.param_norm:.3g} at step {first.step} to "
    f"{last.param_norm:.3g} at step {last.step}"
  )
  if first.param_norm > 0 and last.param_norm > 10 * first.param_norm:
    report += " (it grew before the first non-finite gradient: the run was diverging)"
  return report


def _divergence_advice(config: ml_collections.ConfigDict) -> str:
  """What to change, for this config: a lower rate, and clipping that is tighter or on."""
  advice = ["lower pid.max_lr" if config.pid.enabled else "lower optimizer.learning_rate"]
  clip = config.clip
  if clip.name == "none":
    advice.append("set clip.name=global_norm")
  else:
    field = {"global_norm": "max_norm", "value": "max_value", "agc": "max_ratio"}[clip.name]
    advice.append(f"lower clip.{field} (now {clip[field]})")
  if config.half_precision:
    advice.append("set half_precision=False")
  return ", or ".join(advice)


def check_finite(
  verdict: StepVerdict,
  history: Sequence[StepVerdict],
  state: TrainState,
  config: ml_collections.ConfigDict,
  manager: ocp.CheckpointManager,
  workdir: str,
) -> None:
  """Raises :class:`NonFiniteError` when ``config.nonfinite`` says to give up, after saving
  ``state`` (the state after ``verdict.step``, which the skipped updates left as it was before
  them) as checkpoint ``verdict.step``. ``history`` holds the verdicts of the last steps."""
  stopping = verdict.nonfinite and (
    config.nonfinite == "halt" or verdict.nonfinite >= config.max_consecutive_nonfinite
  )
  if not stopping:
    return
  step = int(jax.device_get(state.step))
  assert step == verdict.step, (step, verdict.step)  # must_read_at_once read it at its step.
  checkpoints.save(manager, step, state, force=True)
  checkpoints.close(manager)
  norms = _norm_history(history)
  if config.nonfinite == "halt":
    path = os.path.join(workdir, f"nonfinite_batch.process{jax.process_index()}.json")
    with open(path, "w") as f:
      json.dump({"step": step, "index": [int(i) for i in verdict.indices]}, f)
    raise NonFiniteError(
      f"nonfinite: step {step} gave a non-finite gradient and changed nothing; the state "
      f"before it was saved as checkpoint {step} and the batch's example ids are in {path}; "
      f"{norms}; {_divergence_advice(config)}"
    )
  raise NonFiniteError(
    f"nonfinite: {verdict.nonfinite} consecutive steps up to step {step} gave non-finite "
    f"gradients (max_consecutive_nonfinite={config.max_consecutive_nonfinite}) and changed "
    f"nothing; the state before them was saved as checkpoint {step}; {norms}; "
    f"{_divergence_advice(config)}"
  )


class ResumeError(ValueError):
  """The workdir holds a run whose model or optimizer differs from the config given."""


# What makes a run the same training run: the model, everything that shapes its updates, and
# what decides which examples each step sees and how long the schedule is.
RESUME_FIELDS = (
  "model",
  "optimizer",
  "schedule",
  "clip",
  "gnp",
  "pid",
  "batch_size",
  "batch_group_size",
  "num_epochs",
  "data",
  "seed",
)
# Where the files are and how many threads read them: neither changes an example.
RESUME_IGNORED = ("data.data_dir", "data.num_parallel_calls")
CONFIG_JSON = "config.json"  # The config the run started with; never overwritten.
FINAL_METRICS_JSON = "final_metrics.json"


def resume_config_json(step: int) -> str:
  """The file that records the config of a resume from ``step``, beside ``config.json``."""
  return f"config.resume-{step}.json"


def recorded_config(workdir: str) -> dict[str, Any] | None:
  """The config the workdir's run trained with last: its newest resume record, else the first."""
  names = os.listdir(workdir) if os.path.isdir(workdir) else []
  steps = [
    int(n.removeprefix("config.resume-").removesuffix(".json"))
    for n in names
    if n.startswith("config.resume-") and n.endswith(".json")
  ]
  name = resume_config_json(max(steps)) if steps else CONFIG_JSON
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _leaves(tree: Any, prefix: str) -> dict[str, Any]:
  if not isinstance(tree, dict):
    return {prefix: tree}
  out = {}
  for key, value in tree.items():
    out.update(_leaves(value, f"{prefix}.{key}" if prefix else key))
  return out


def changed_fields(config: ml_collections.ConfigDict, workdir: str) -> list[tuple[str, Any, Any]]:
  """``(dotted field, the run's value, this config's value)`` for each field under
  ``RESUME_FIELDS`` in which ``config`` differs from what the workdir's run trained with."""
  saved = recorded_config(workdir)
  if saved is None:
    return []
  current = json.loads(config.to_json_best_effort())
  changed = []
  for section in RESUME_FIELDS:
    was, now = _leaves(saved.get(section), section), _leaves(current.get(section), section)
    for field in sorted(was.keys() | now.keys()):
      if field not in RESUME_IGNORED and was.get(field) != now.get(field):
        changed.append((field, was.get(field), now.get(field)))
  return changed


def check_resumable(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to continue a run under another model, optimizer, schedule, clip, gnp or PID, or
  with another batch size, batch groups, length, data or seed (any of which changes what a step
  sees or computes).

  ``config.allow_config_change`` overrides, for deliberate changes such as fine-tuning.
  """
  changed = changed_fields(config, workdir)
  if changed and not config.allow_config_change:
    field, was, now = changed[0]
    others = f" (also changed: {', '.join(f for f, _, _ in changed[1:])})" if changed[1:] else ""
    raise ResumeError(
      f"{field}: the run in {workdir} was trained with {json.dumps(was)}, this config has "
      f"{json.dumps(now)}{others}; use a new --workdir, or pass "
      f"--config.allow_config_change=True to resume anyway"
    )


def record_config(config: ml_collections.ConfigDict, workdir: str, start_step: int) -> str:
  """Writes ``config.json`` for a new run, or ``config.resume-<step>.json`` for a resume, so
  the first config stays as it was; returns the path written."""
  first = os.path.join(workdir, CONFIG_JSON)
  path = (
    first if not os.path.exists(first) else os.path.join(workdir, resume_config_json(start_step))
  )
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  os.replace(tmp, path)
  return path


def restore(
  manager: ocp.CheckpointManager,
  like: TrainState,
  config: ml_collections.ConfigDict,
  workdir: str,
  say,
) -> TrainState:
  """The newest readable checkpoint of ``manager``, shaped and sharded like ``like`` (``like``
  itself for a new run); a damaged newer step is set aside (``checkpoints``). When none
  restores and the config changed fields of the run's, a ResumeError blames those fields."""
  try:
    return checkpoints.restore_newest_readable(manager, like, say)
  except checkpoints.Unrestorable as e:
    changed = [field for field, _, _ in changed_fields(config, workdir)]
    if not changed:
      raise
    step = max(s for s, _ in e.failures)
    raise ResumeError(
      f"{changed[0]}: the state saved at step {step} does not fit this config, whose "
      f"{', '.join(changed)} changed its shape; resume with the run's own config.json, "
      f"or use a new --workdir"
    ) from None


def initial_state(
  model, config: ml_collections.ConfigDict, info: data.DatasetInfo, tx, sharding
) -> TrainState:
  """Step 0 of a run: the model's initial variables from ``config.seed``, ``tx``'s state and
  zero metric sums, replicated by ``sharding``; compiled for one run (it runs once)."""

  @functools.partial(
    jax.jit, out_shardings=sharding, compiler_options=compilation.run_once_options()
  )
  def init():
    variables = init_variables(model, config, info)
    return TrainState(
      step=jnp.zeros([], jnp.int32),
      params=variables["params"],
      batch_stats=variables.get("batch_stats", {}),
      opt_state=tx.init(variables["params"]),
      metric_sums={k: jnp.zeros([], jnp.float32) for k in (*TRAIN_METRICS, FINITE_STEPS)},
    )

  return init()


def train_batches(
  config: ml_collections.ConfigDict, start_step: int, stop: _StopRequest, sharding
) -> Iterator[dict[str, Any]]:
  """The train batches from ``start_step`` on, on the devices, each with a ``stop`` column that
  says whether this process has been asked to stop (for the step to share with the others)."""
  batches = data.train_iterator(
    config.data,
    global_batch_size=config.batch_size,
    seed=config.seed,
    start_step=start_step,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  with_stop = (
    {**batch, "stop": np.full(len(batch["label"]), stop.signal is not None, np.float32)}
    for batch in batches
  )
  return prefetch_to_device(with_stop, sharding)


class Throughput:
  """Images per second over the steps since the last reset (a log line or an evaluation)."""

  def __init__(self, step: int, batch_size: int):
    self.batch_size = batch_size
    self.reset(step)

  def reset(self, step: int) -> None:
    self.since, self.first_step = time.perf_counter(), step

  def images_per_sec(self, step: int) -> float:
    return (step - self.first_step) * self.batch_size / (time.perf_counter() - self.since)


def log_train_metrics(
  writer: MetricWriter,
  progress: tqdm,
  say,
  state: TrainState,
  step: int,
  throughput: Throughput,
  config: ml_collections.ConfigDict,
) -> TrainState:
  """Writes the averages of the train metrics since the last log line (even one from before a
  restart), with the chain's own metrics; returns ``state`` with its sums zeroed."""
  sums = jax.device_get(state.metric_sums)
  finite_steps = sums.pop(FINITE_STEPS)
  logged = {k: float(v) / max(finite_steps, 1) for k, v in sums.items()}
  logged.update(gnreg.metrics(state.opt_state))
  logged["nonfinite_steps"] = int(
    jax.device_get(optax.tree_utils.tree_get(state.opt_state, "total_notfinite"))
  )
  logged["images_per_sec"] = throughput.images_per_sec(step)
  writer.write(step, logged)
  # train/loss is the objective: the cross-entropy plus the L2 penalty, which the test loss
  # does not have; the label says so.
  label = "train loss (with L2)" if config.l2_regularization else "train loss"
  progress.set_postfix(
    {label.replace(" ", "_"): f"{logged['train/loss']:.3f}"},
    img_s=f"{logged['images_per_sec']:.0f}",
  )
  if progress.disable:
    say(
      f"step {step}/{progress.total}: {label} {logged['train/loss']:.4f}, "
      f"{logged['images_per_sec']:.0f} images/s"
    )
  zeros = jax.tree.map(lambda x: jnp.zeros_like(x, device=x.sharding), state.metric_sums)
  throughput.reset(step)
  return state.replace(metric_sums=zeros)


def evaluate_and_log(
  eval_step, state: TrainState, config, sharding, writer: MetricWriter, say, step: int, epoch: float
) -> dict[str, Any]:
  """Evaluates on the whole test split, writes the result and says it in one line."""
  result = evaluate(eval_step, state, config, sharding)
  writer.write(step, {"epoch": epoch, **result})
  say(
    f"step {step} epoch {epoch:.2f}: test top-1 error {result['test/top1_error']:.4f}, "
    f"loss {result['test/loss']:.4f}"
  )
  return result


def write_final(workdir: str, step: int, result: dict[str, Any]) -> None:
  """The run's plots and ``final_metrics.json`` (process 0)."""
  if jax.process_index() != 0:
    return
  plots.plot_run(workdir)
  with open(os.path.join(workdir, FINAL_METRICS_JSON), "w") as f:
    json.dump({"step": step, **result}, f, indent=2)


def _every(epochs: float, steps_per_epoch: int) -> int:
  return max(1, round(epochs * steps_per_epoch))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Validates and trains ``config`` in ``workdir`` (see :func:`run`); returns the eval.

  A config with ``lr_finder.enabled`` or ``pid.autotune`` needs its tuners first:
  ``run(gnreg.tune.apply_tuning(gnreg.task.prepare(config), workdir), workdir)``, which
  is what ``python -m gnreg.main`` does.
  """
  return run(prepare(config), workdir)


def run(prepared: Task, workdir: str) -> dict[str, Any]:
  """Trains a validated task in ``workdir``, resuming from its newest readable checkpoint.

  From the start, SIGTERM or Ctrl-C to any process stops every process after the same step,
  with a checkpoint of that step, and raises :class:`Preempted`; a second signal ends the
  process at once.
  """
  if prepared.untuned:
    raise configuration.ConfigError(
      f"{prepared.untuned[0]}: the tuners run before the trainer; pass "
      f"gnreg.tune.apply_tuning(task, workdir) to train.run (python -m gnreg.main does)"
    )
  with _StopRequest() as stop, checkpoints.orbax_quiet():
    return _train(prepared, workdir, stop)


def _train(prepared: Task, workdir: str, stop: _StopRequest) -> dict[str, Any]:
  # ---- Build.
  config, info, model = prepared.config, prepared.info, prepared.model
  say = functools.partial(_say, jax.process_index() == 0)
  steps_per_epoch = data.steps_per_epoch(info, config.batch_size)
  total_steps = int(config.num_epochs * steps_per_epoch)
  mesh = jax.make_mesh((jax.device_count(),), (AXIS,))
  replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))
  # Its state is what a step updates, whatever the axes its parts are mapped over.
  tx = optimizers.create(config, steps_per_epoch, axis_name=AXIS)
  state = initial_state(model, config, info, tx, replicated)
  train_step = make_train_step(model, config, mesh, steps_per_epoch)
  eval_step = make_eval_step(model, config, mesh)

  # ---- Restore. Nothing in the workdir changes until a checkpoint has loaded, but for a
  # damaged one set aside and saves that a crash interrupted, each said in a line.
  check_resumable(config, workdir)
  manager = checkpoints.open_manager(workdir, config.keep_checkpoints, say)
  state = restore(manager, state, config, workdir, say)
  start_step = int(jax.device_get(state.step))
  if start_step >= total_steps:
    say(f"already finished at step {start_step}; results in {workdir}")
    result = evaluate(eval_step, state, config, rows)
    checkpoints.close(manager)
    write_final(workdir, total_steps, result)
    return result
  if jax.process_index() == 0:
    record_config(config, workdir, start_step)
  writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
  writer.truncate_after(start_step)
  if start_step:
    say(f"resumed from step {start_step} of {total_steps}")

  # ---- Loop.
  eval_every = _every(config.eval_every_epochs, steps_per_epoch)
  checkpoint_every = _every(config.checkpoint_every_epochs, steps_per_epoch)
  batches = train_batches(config, start_step, stop, rows)
  # A terminal gets a progress bar; a log file gets a plain line per log step instead of the
  # bar's carriage-return updates.
  progress = tqdm(
    total=total_steps,
    initial=start_step,
    disable=not (jax.process_index() == 0 and sys.stderr.isatty()),
    unit="step",
    dynamic_ncols=True,
    desc=os.path.basename(workdir.rstrip("/")),
  )
  throughput = Throughput(start_step, config.batch_size)
  history = collections.deque(maxlen=10)  # The last verdicts, for a divergence report.
  # The restored run's streak of non-finite steps; the verdict stands for the start, in no report.
  streak = int(jax.device_get(optax.tree_utils.tree_get(state.opt_state, "notfinite_count")))
  last = StepVerdict(start_step, streak, False, math.nan, None)
  pending = []  # Steps dispatched whose verdicts are not read yet.
  result = {}
  say("compiling the train step (the first step waits for it) ...")
  try:
    for step in range(start_step + 1, total_steps + 1):
      batch = next(batches)
      state, signals = train_step(state, {k: v for k, v in batch.items() if k != "index"})
      if step == start_step + 1:
        say(f"compiled; the first step took {time.perf_counter() - throughput.since:.1f} s")
      progress.update()
      pending.append((signals, step, batch["index"] if config.nonfinite == "halt" else None))
      # The previous step's verdict is ready by now; this step's is waited for only when this
      # step could end the run, so that the device seldom waits for the host.
      while len(pending) > 1 or (pending and must_read_at_once(config, last)):
        last = read_verdict(*pending.pop(0))
        history.append(last)
        check_finite(last, history, state, config, manager, workdir)

      if step % config.log_every_steps == 0 or step == total_steps:
        state = log_train_metrics(writer, progress, say, state, step, throughput, config)
      if step % eval_every == 0 or step == total_steps:
        result = evaluate_and_log(
          eval_step, state, config, rows, writer, say, step, step / steps_per_epoch
        )
        throughput.reset(step)  # Evaluation time is not training throughput.
      if step % checkpoint_every == 0 or step == total_steps:
        checkpoints.save(manager, step, state)
      if last.stop:
        # Every process read the same verdict after the same step: they save it together.
        if manager.latest_step() != step:
          checkpoints.save(manager, step, state)
        checkpoints.close(manager)
        raise Preempted(stop.signal or signal.SIGTERM, step)
    for verdict in (read_verdict(*p) for p in pending):  # The last step's verdict.
      history.append(verdict)
      check_finite(verdict, history, state, config, manager, workdir)

    # ---- Save.
    checkpoints.close(manager)
  finally:
    writer.close()
    progress.close()
  write_final(workdir, total_steps, result)
  say(
    f"finished at step {total_steps}: test top-1 error {result['test/top1_error']:.4f}; "
    f"results in {workdir}: {FINAL_METRICS_JSON}, metrics.jsonl, plots/*.png, checkpoints/, "
    f"tensorboard/ (tensorboard --logdir {os.path.join(workdir, 'tensorboard')})"
  )
  return result


def _say(is_writer: bool, message: str) -> None:
  """One line on stdout from process 0, between the progress bar's updates."""
  if is_writer:
    tqdm.write(message, file=sys.stdout)
