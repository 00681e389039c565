"""The trainer: build, restore, loop, evaluate, save.

One jitted step runs on every device of every host through ``jax.shard_map``
over a 1-D ``data`` mesh, with the per-device semantics of the gradient norm
penalty authors' code: each device computes the gradient of its shard of the
batch, gnp perturbs with that local gradient (unless
``gnp.sync_perturbation``), and the optimizer chain averages gradients over
devices before it clips and steps. BatchNorm normalises with per-device batch
statistics; the running averages are averaged over devices every step, which
equals averaging per-device averages before evaluation because the moving
average is linear.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

import gnreg
from gnreg import compilation, configuration, data, models, optimizers, plots
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
  "per_device",
  "make_train_step",
  "make_eval_step",
  "prefetch_to_device",
  "evaluate",
  "NonFiniteError",
  "Preempted",
  "StepVerdict",
  "read_verdict",
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
  "quiet_absl_logs",
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


def per_device(tree: Any) -> Any:
  """``tree`` marked as varying over the device axis, so that ``jax.grad`` in it is per device.

  Inside ``shard_map`` the gradient with respect to a replicated (device-invariant)
  value is summed over devices; the authors' semantics need each device's own.
  """

  def varying_axes(x):
    aval = jax.typeof(x)  # JAX 0.10 keeps the varying axes in .mat, earlier versions in .vma.
    return aval.mat.varying if hasattr(aval, "mat") else aval.vma

  def cast(x):
    return x if AXIS in varying_axes(x) else jax.lax.pcast(x, AXIS, to="varying")

  return jax.tree.map(cast, tree)


def make_train_step(model, tx, config: ml_collections.ConfigDict, mesh):
  """The jitted ``(state, batch) -> (state, signals)`` over ``mesh``.

  ``signals['nonfinite']`` counts the consecutive steps whose averaged gradient was not
  finite; such a step changes neither the parameters, the optimizer state, the BatchNorm
  statistics nor the metric sums. If the batch has a ``stop`` column (1.0 on the rows of a
  process that has been asked to stop), ``signals['stop']`` is its maximum over all devices.
  """
  base_key = jax.random.PRNGKey(config.seed)
  loss_fn = make_loss_fn(model, config)

  def per_device_step(state: TrainState, batch):
    # Dropout, drop-path and shake draws differ per step and device, and repeat on resume.
    key = jax.random.fold_in(jax.random.fold_in(base_key, state.step), jax.lax.axis_index(AXIS))
    rngs = models.rng_streams(key)
    images, labels, mix = batch["image"], batch["label"], mix_targets(batch)
    # As the GNP authors: shake models' true gradient on a penalised step's first pass, their
    # randomised one on a plain step (a zero-warmup or hybrid-skipped step, or no gnp at all).
    first_pass_true_gradient = gnreg.next_update_penalised(state.opt_state)
    grad_and_aux = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (logits, batch_stats)), grads = grad_and_aux(
      per_device(state.params),
      state.batch_stats,
      images,
      labels,
      rngs,
      true_gradient=first_pass_true_gradient,
      **mix,
    )

    def grad_fn(params):
      # gnp's second pass: same batch and random draws; BatchNorm statistics of the first pass;
      # shake models' randomised backward (true_gradient=False), as the authors' second pass.
      return grad_and_aux(per_device(params), state.batch_stats, images, labels, rngs, **mix)[1]

    updates, opt_state = tx.update(grads, state.opt_state, state.params, grad_fn=grad_fn)
    finite = optax.tree_utils.tree_get(opt_state, "last_finite")
    keep_if_finite = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    metrics = jax.lax.pmean(
      {"train/loss": loss, "train/top1_error": 1.0 - jnp.mean(topk_correct(logits, labels, 1))},
      AXIS,
    )
    metrics[FINITE_STEPS] = jnp.ones([], jnp.float32)
    new_state = TrainState(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      batch_stats=keep_if_finite(jax.lax.pmean(batch_stats, AXIS), state.batch_stats),
      opt_state=opt_state,
      metric_sums=keep_if_finite(
        jax.tree.map(jnp.add, state.metric_sums, metrics), state.metric_sums
      ),
    )
    signals = {"nonfinite": optax.tree_utils.tree_get(opt_state, "notfinite_count")}
    if "stop" in batch:
      # Whether any process has been asked to stop: every process reads it from the same step.
      signals["stop"] = jax.lax.pmax(jnp.max(batch["stop"]), AXIS)
    return new_state, signals

  step = jax.shard_map(per_device_step, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P())
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
  """Turns SIGTERM (how TPU VMs and schedulers preempt) and Ctrl-C into a flag the loop reads.

  A second signal is not deferred: it gets the handler that was there before (Ctrl-C twice
  interrupts at once, without the checkpoint).
  """

  def __init__(self):
    self.signal = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.signal is not None:
      self.__exit__()
      signal.raise_signal(signum)
      return
    self.signal = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}


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
  one was finite); ``stop``: whether any process has been asked to stop; ``indices``: the
  batch's example ids, kept only where a report may need them (``nonfinite='halt'``).
  """

  step: int
  nonfinite: int
  stop: bool
  indices: np.ndarray | None


def read_verdict(signals: dict[str, jax.Array], step: int, indices=None) -> StepVerdict:
  """The :class:`StepVerdict` of a train step's ``signals`` (waits for that step)."""
  signals = jax.device_get(signals)
  return StepVerdict(step, int(signals["nonfinite"]), bool(signals.get("stop", False)), indices)


def check_finite(
  verdict: StepVerdict,
  state: TrainState,
  config: ml_collections.ConfigDict,
  checkpoints: ocp.CheckpointManager,
  workdir: str,
) -> None:
  """Raises :class:`NonFiniteError` when ``config.nonfinite`` says to give up, after saving
  ``state`` (which the skipped updates left as the last good parameters) as a checkpoint."""
  if config.nonfinite == "halt" and verdict.nonfinite:
    # The skipped update left the parameters as they were before this batch.
    checkpoints.save(verdict.step, args=ocp.args.StandardSave(state), force=True)
    checkpoints.wait_until_finished()
    path = os.path.join(workdir, f"nonfinite_batch.process{jax.process_index()}.json")
    with open(path, "w") as f:
      json.dump({"step": verdict.step, "index": [int(i) for i in verdict.indices]}, f)
    raise NonFiniteError(
      f"nonfinite: step {verdict.step} gave a non-finite gradient; its parameters were not "
      f"changed and were saved as checkpoint {verdict.step}; the batch's example ids are in "
      f"{path}"
    )
  if verdict.nonfinite >= config.max_consecutive_nonfinite:
    # Every skipped step left the parameters alone: the newest state is the last good one.
    checkpoints.save(int(jax.device_get(state.step)), args=ocp.args.StandardSave(state), force=True)
    checkpoints.wait_until_finished()
    raise NonFiniteError(
      f"nonfinite: {verdict.nonfinite} consecutive steps up to step {verdict.step} gave "
      f"non-finite gradients (max_consecutive_nonfinite={config.max_consecutive_nonfinite}); "
      f"lower optimizer.learning_rate or set clip.name"
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
  with another batch size, length, data or seed (any of which changes what a step sees).

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
  checkpoints: ocp.CheckpointManager, like: TrainState, changed: Sequence[str] = ()
) -> TrainState:
  """The newest checkpoint, shaped and sharded like ``like``; one that does not load is a
  ResumeError, which blames the config fields in ``changed`` if there are any."""
  step = checkpoints.latest_step()
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  try:
    with quiet_absl_logs():
      return checkpoints.restore(step, args=ocp.args.StandardRestore(abstract))
  except Exception as e:  # Orbax raises many types for unreadable files; all mean the same here.
    if changed:
      raise ResumeError(
        f"{changed[0]}: the state saved at step {step} does not fit this config, whose "
        f"{', '.join(changed)} changed its shape; resume with the run's own config.json, "
        f"or use a new --workdir"
      ) from None
    reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    raise ResumeError(
      f"checkpoint: step {step} in {checkpoints.directory} cannot be restored ({reason}); "
      f"delete that step's folder to resume from the previous one, or use a new --workdir"
    ) from None


@contextlib.contextmanager
def quiet_absl_logs():
  """Silences absl logging: orbax logs each unreadable file, and one error of ours says it all."""
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.FATAL)
  try:
    yield
  finally:
    logging.set_verbosity(verbosity)


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
  """Trains a validated task in ``workdir``, resuming from its newest checkpoint.

  From the start, SIGTERM or Ctrl-C to any process stops every process after the same step,
  with a checkpoint of that step, and raises :class:`Preempted`.
  """
  if prepared.untuned:
    raise configuration.ConfigError(
      f"{prepared.untuned[0]}: the tuners run before the trainer; pass "
      f"gnreg.tune.apply_tuning(task, workdir) to train.run (python -m gnreg.main does)"
    )
  with _StopRequest() as stop:
    return _run(prepared, workdir, stop)


def _run(prepared: Task, workdir: str, stop: _StopRequest) -> dict[str, Any]:
  # ---- Build.
  config, info, model = prepared.config, prepared.info, prepared.model
  is_writer = jax.process_index() == 0
  steps_per_epoch = data.steps_per_epoch(info, config.batch_size)
  total_steps = int(config.num_epochs * steps_per_epoch)
  mesh = jax.make_mesh((jax.device_count(),), (AXIS,))
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P(AXIS))

  tx = optimizers.create(config, steps_per_epoch, axis_name=AXIS)

  @functools.partial(
    jax.jit, out_shardings=replicated, compiler_options=compilation.run_once_options()
  )
  def init():
    variables = init_variables(model, config, info)
    params = variables["params"]
    return TrainState(
      step=jnp.zeros([], jnp.int32),
      params=params,
      batch_stats=variables.get("batch_stats", {}),
      opt_state=tx.init(params),
      metric_sums={k: jnp.zeros([], jnp.float32) for k in (*TRAIN_METRICS, FINITE_STEPS)},
    )

  state = init()
  train_step = make_train_step(model, tx, config, mesh)
  eval_step = make_eval_step(model, config, mesh)

  # ---- Restore. Nothing in the workdir changes until the newest checkpoint has loaded.
  check_resumable(config, workdir)
  with quiet_absl_logs():
    checkpoints = ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True),
    )
  if checkpoints.latest_step() is not None:
    changed = [field for field, _, _ in changed_fields(config, workdir)]
    state = restore(checkpoints, state, changed)
  start_step = int(jax.device_get(state.step))
  finished = start_step >= total_steps
  if is_writer and not finished:
    record_config(config, workdir, start_step)
  writer = MetricWriter(workdir, enabled=is_writer)
  writer.truncate_after(start_step)
  say = functools.partial(_say, is_writer)
  if finished:
    say(f"already finished at step {start_step}; results in {workdir}")
  elif start_step:
    say(f"resumed from step {start_step} of {total_steps}")

  # ---- Loop.
  eval_every = _every(config.eval_every_epochs, steps_per_epoch)
  checkpoint_every = _every(config.checkpoint_every_epochs, steps_per_epoch)

  def with_stop_requests(batches):
    # Each batch carries whether this process has been asked to stop, for the step to share.
    for batch in batches:
      yield {**batch, "stop": np.full(len(batch["label"]), stop.signal is not None, np.float32)}

  batches = (
    iter(())
    if finished
    else prefetch_to_device(
      with_stop_requests(
        data.train_iterator(
          config.data,
          global_batch_size=config.batch_size,
          seed=config.seed,
          start_step=start_step,
          process_index=jax.process_index(),
          process_count=jax.process_count(),
        )
      ),
      batch_sharding,
    )
  )
  # A terminal gets a progress bar; a log file gets a plain line per log step instead of
  # the bar's carriage-return updates.
  interactive = sys.stderr.isatty()
  progress = tqdm(
    total=total_steps,
    initial=start_step,
    disable=not (is_writer and interactive) or finished,
    unit="step",
    dynamic_ncols=True,
    desc=os.path.basename(workdir.rstrip("/")),
  )
  window_start, window_first_step = time.perf_counter(), start_step
  last_eval, pending = {}, None
  if not finished:
    say("compiling the train step (the first step waits for it) ...")

  for step in range(start_step + 1, total_steps + 1):
    batch = next(batches)
    state, signals = train_step(
      state, {k: batch[k] for k in ("image", "label", "stop", *MIX_KEYS) if k in batch}
    )
    if step == start_step + 1:
      say(f"compiled; the first step took {time.perf_counter() - window_start:.1f} s")
    progress.update()
    # 'halt' acts on this step's signals at once; otherwise on the previous step's, which are
    # ready by now, so that the device never waits for the host.
    if config.nonfinite == "halt":
      verdict = read_verdict(signals, step, batch["index"])
    else:
      verdict = None if pending is None else read_verdict(*pending)
      pending = (signals, step)
    if verdict is not None:
      check_finite(verdict, state, config, checkpoints, workdir)

    if step % config.log_every_steps == 0 or step == total_steps:
      # Averages over the steps since the previous log line, even one from before a restart.
      sums = jax.device_get(state.metric_sums)
      finite_steps = sums.pop(FINITE_STEPS)
      logged = {k: float(v) / max(finite_steps, 1) for k, v in sums.items()}
      logged.update(gnreg.metrics(state.opt_state))
      skipped = optax.tree_utils.tree_get(state.opt_state, "total_notfinite")
      logged["nonfinite_steps"] = int(jax.device_get(skipped))
      images = (step - window_first_step) * config.batch_size
      logged["images_per_sec"] = images / (time.perf_counter() - window_start)
      writer.write(step, logged)
      progress.set_postfix(
        loss=f"{logged['train/loss']:.3f}", img_s=f"{logged['images_per_sec']:.0f}"
      )
      if not interactive:
        say(
          f"step {step}/{total_steps}: train loss {logged['train/loss']:.4f}, "
          f"{logged['images_per_sec']:.0f} images/s"
        )
      zeros = lambda x: jnp.zeros_like(x, device=replicated)
      state = state.replace(metric_sums=jax.tree.map(zeros, state.metric_sums))
      window_start, window_first_step = time.perf_counter(), step

    if step % eval_every == 0 or step == total_steps:
      last_eval = evaluate(eval_step, state, config, batch_sharding)
      writer.write(step, {"epoch": step / steps_per_epoch, **last_eval})
      say(
        f"step {step} epoch {step / steps_per_epoch:.2f}: "
        f"test top-1 error {last_eval['test/top1_error']:.4f}, "
        f"loss {last_eval['test/loss']:.4f}"
      )
      # Evaluation time is not training throughput.
      window_start, window_first_step = time.perf_counter(), step

    if step % checkpoint_every == 0 or step == total_steps:
      checkpoints.save(step, args=ocp.args.StandardSave(state))
    if verdict is not None and verdict.stop:
      # Every process reached the same verdict at the same step: they save it together.
      if checkpoints.latest_step() != step:
        checkpoints.save(step, args=ocp.args.StandardSave(state))
      checkpoints.wait_until_finished()
      writer.close()
      progress.close()
      raise Preempted(stop.signal or signal.SIGTERM, step)
  if pending is not None:  # The last step's verdict on non-finite gradients.
    check_finite(read_verdict(*pending), state, config, checkpoints, workdir)

  # ---- Save.
  if not last_eval:  # The run had already finished: report its final state again.
    last_eval = evaluate(eval_step, state, config, batch_sharding)
  checkpoints.wait_until_finished()
  checkpoints.close()
  writer.close()
  progress.close()
  if is_writer:
    plots.plot_run(workdir)
    with open(os.path.join(workdir, FINAL_METRICS_JSON), "w") as f:
      json.dump({"step": total_steps, **last_eval}, f, indent=2)
  if not finished:
    say(
      f"finished at step {total_steps}: test top-1 error {last_eval['test/top1_error']:.4f}; "
      f"results in {workdir}: {FINAL_METRICS_JSON}, metrics.jsonl, plots/*.png, checkpoints/, "
      f"tensorboard/ (tensorboard --logdir {os.path.join(workdir, 'tensorboard')})"
    )
  return last_eval


def _say(is_writer: bool, message: str) -> None:
  """One line on stdout from process 0, between the progress bar's updates."""
  if is_writer:
    tqdm.write(message, file=sys.stdout)
