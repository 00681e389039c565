"""The tuners on a config: its model, its training data, its optimizer.

Used by the command-line tools (``python -m gnreg.lr_find``, ``python -m
gnreg.autotune``) and, when ``lr_finder.enabled`` or ``pid.autotune`` is set, by
``python -m gnreg.main`` before it trains (:func:`apply_tuning`). Each tuner's
result is written to the workdir and read back on a resumed run, so a run tunes
once and resumes with the same choice. The tuners themselves (:mod:`gnreg.tuning`)
take arrays and functions; this module turns a :class:`gnreg.task.Task` into them.
"""

from __future__ import annotations

import itertools
import json
import os
import warnings
from collections.abc import Iterator

import jax
import numpy as np

from gnreg import compilation, data, models, optimizers, task
from gnreg.tuning.lr_finder import LRFinderResult, find_lr
from gnreg.tuning.pid_autotune import PIDAutotuneResult, autotune_pid

__all__ = [
  "AUTOTUNE_JSON",
  "LR_FINDER_JSON",
  "apply_tuning",
  "lr_finder_report",
  "pid_autotune_report",
  "run_lr_finder",
  "run_pid_autotune",
]

LR_FINDER_JSON = "lr_finder.json"
AUTOTUNE_JSON = "pid_autotune.json"


def _params_and_loss(run: task.Task):
  """Initial parameters and ``loss_fn(params, batch)``: the training loss, BatchNorm frozen.

  BatchNorm normalises with the batch's own statistics (train mode), but the
  running averages are not updated: the tuners compare steps from the same start.
  """
  config = run.config
  # The trainer's initial variables: the same program, compiled the same way.
  variables = jax.jit(
    lambda: task.init_variables(run.model, config, run.info),
    compiler_options=compilation.run_once_options(),
  )()
  batch_stats = variables.get("batch_stats", {})
  loss_and_aux = task.make_loss_fn(run.model, config)
  rngs = models.rng_streams(jax.random.PRNGKey(config.seed))

  def loss_fn(params, batch):
    return loss_and_aux(
      params, batch_stats, batch["image"], batch["label"], rngs, **task.mix_targets(batch)
    )[0]

  return variables["params"], loss_fn


def _first_batches(run: task.Task, num_batches: int) -> Iterator[dict]:
  """The first ``num_batches`` global training batches, ``{'image', 'label'}`` each, and a
  mixed stream's ``task.MIX_KEYS``, so that the tuners see the loss that training sees.

  Every process reads whole batches, so that every process tunes to the same answer.
  """
  config = run.config
  iterator = data.train_iterator(config.data, global_batch_size=config.batch_size, seed=config.seed)
  for batch in itertools.islice(iterator, num_batches):
    yield {k: batch[k] for k in ("image", "label", *task.MIX_KEYS) if k in batch}


def _write(result: LRFinderResult | PIDAutotuneResult, workdir: str, json_name: str) -> None:
  """Process 0 writes a tuner's ``<name>.json`` and its plot ``<name>.png`` to the workdir."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    result.to_json(os.path.join(workdir, json_name))
    result.plot(os.path.join(workdir, json_name.removesuffix(".json") + ".png"))


def run_lr_finder(run: task.Task, workdir: str) -> LRFinderResult:
  """Runs :func:`find_lr` on the task; writes ``lr_finder.json`` and ``lr_finder.png``."""
  config = run.config
  cfg = config.lr_finder
  params, loss_fn = _params_and_loss(run)
  num_batches = max(1, -(-min(cfg.num_examples, run.info.num_train) // config.batch_size))
  batches = list(_first_batches(run, num_batches))
  examples = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  result = find_lr(
    loss_fn,
    params,
    examples,
    optimizer=optimizers.injected_optimizer(config, cfg.min_lr),
    min_lr=cfg.min_lr,
    max_lr=cfg.max_lr,
    num_lrs=cfg.num_lrs,
    grid=cfg.grid,
    num_subsamples=cfg.num_subsamples,
    batch_size=cfg.batch_size,
    seed=config.seed,
    widen_for=cfg.method,
    max_widenings=cfg.max_widenings,
  )
  _write(result, workdir, LR_FINDER_JSON)
  return result


def run_pid_autotune(run: task.Task, workdir: str) -> PIDAutotuneResult:
  """Runs :func:`autotune_pid` on the first epoch, or the first ``pid.autotune_steps`` batches,
  streamed from the training input (never held in memory whole); writes ``pid_autotune.json``
  and ``pid_autotune.png``."""
  config = run.config
  pid = config.pid
  params, loss_fn = _params_and_loss(run)
  steps = pid.autotune_steps or data.steps_per_epoch(run.info, config.batch_size)
  batches, heldout = _first_batches(run, steps), None
  if pid.autotune_objective == "heldout_loss":  # A tenth of the batches, that no trial trains on.
    held = list(itertools.islice(batches, max(1, steps // 10)))
    heldout = {k: np.concatenate([b[k] for b in held]) for k in held[0]}
  space = {k: tuple(v) if v else (pid[k], pid[k]) for k, v in pid.autotune_space.items()}
  result = autotune_pid(
    loss_fn,
    params,
    batches,
    optimizer=optimizers.injected_optimizer(config, config.optimizer.learning_rate),
    target_norm=pid.target_norm,
    search_type=pid.autotune_search,
    search_space=space,
    n_trials=pid.autotune_trials,
    heldout=heldout,
    num_steps=steps - (len(held) if heldout is not None else 0),
    seed=config.seed,
    **optimizers.pid_arguments(config, gains=False),
  )
  _write(result, workdir, AUTOTUNE_JSON)
  return result


def apply_tuning(run: task.Task, workdir: str) -> task.Task:
  """``run`` with the tuners' choices in its config, tuning only what the workdir lacks.

  The model is the same (the tuners choose optimizer values only); the returned task has
  ``untuned == ()``, which the trainer requires.
  """
  config = run.config.copy_and_resolve_references()
  if config.lr_finder.enabled:
    path = os.path.join(workdir, LR_FINDER_JSON)
    if os.path.exists(path):
      with open(path) as f:
        best = json.load(f)["best"]
    else:
      best = run_lr_finder(run, workdir).choices()
    choice = best[config.lr_finder.method]
    if choice <= 0:
      raise ValueError(
        f"lr_finder.method: {config.lr_finder.method!r} found no rate that lowers the loss "
        f"(see {os.path.join(workdir, 'lr_finder.png')}); try another method or lr range"
      )
    config.optimizer.learning_rate = float(choice)
  if config.pid.enabled and config.pid.autotune:
    path = os.path.join(workdir, AUTOTUNE_JSON)
    if os.path.exists(path):
      with open(path) as f:
        gains = json.load(f)["best"]
    else:
      gains = run_pid_autotune(run._replace(config=config), workdir).best
    for name, value in gains.items():
      config.pid[name] = float(value)
  return run._replace(config=config, untuned=())


def lr_finder_report(run: task.Task, workdir: str) -> Iterator[str]:
  """What ``python -m gnreg.lr_find`` prints, line by line: each method's rate, the files,
  and the override that trains with the chosen rate; ``ValueError`` if it found none."""
  result = run_lr_finder(run, workdir)
  method = run.config.lr_finder.method
  for name, lr in result.choices().items():
    yield f"{name:>8}: {lr:.3g}"
  yield f"wrote {workdir}/lr_finder.png and {workdir}/{LR_FINDER_JSON}"
  chosen = result.best(method)  # Warns when the choice is at an edge of the grid.
  if chosen <= 0:
    raise ValueError(f"lr_finder.method: {method!r} found no rate that lowers the loss")
  yield f"--config.optimizer.learning_rate={chosen:.6g}"


def pid_autotune_report(run: task.Task, workdir: str) -> Iterator[str]:
  """What ``python -m gnreg.autotune`` prints, line by line: the best trial, the files, and
  the overrides that train with the chosen gains.

  The search's problems are said once, as the lines that withhold a recommendation, not also
  as the warnings :func:`autotune_pid` gives them; its other warnings pass on.
  """
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    result = run_pid_autotune(run, workdir)
  problems = result.problems()
  for warning in caught:
    if str(warning.message) not in problems:
      warnings.warn_explicit(
        warning.message, warning.category, warning.filename, warning.lineno, source=warning.source
      )
  best = result.trials[result.best_index]
  yield (
    f"best of {len(result.trials)} trials: score {best['score']:.4g}, "
    f"tracking error {best['tracking_error']:.3g}"
  )
  yield f"wrote {workdir}/pid_autotune.png and {workdir}/{AUTOTUNE_JSON}"
  overrides = "--config.pid.enabled=True " + " ".join(
    f"--config.pid.{k}={v:.6g}" for k, v in result.best.items()
  )
  if problems:
    # A degenerate search's best trial is no recommendation: say why, not which gains.
    yield from (f"no recommendation: {problem}" for problem in problems)
    yield f"(the best trial, for reference only: {overrides})"
  else:
    yield overrides
