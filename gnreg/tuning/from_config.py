"""The tuners on a trainer config: its model, its training data, its optimizer.

Used by the command-line tools (``python -m gnreg.lr_find``, ``python -m
gnreg.autotune``) and by the trainer when ``lr_finder.enabled`` or
``pid.autotune`` is set. Each tuner's result is written to the workdir and read
back on a resumed run, so a run tunes once and resumes with the same choice.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np

from gnreg import compilation, data, optimizers
from gnreg.tuning.lr_finder import LRFinderResult, find_lr
from gnreg.tuning.pid_autotune import PIDAutotuneResult, autotune_pid

LR_FINDER_JSON = "lr_finder.json"
AUTOTUNE_JSON = "pid_autotune.json"


def _model_and_loss(config: ml_collections.ConfigDict):
  """Initial parameters and ``loss_fn(params, batch)``: the training loss, BatchNorm frozen.

  BatchNorm normalises with the batch's own statistics (train mode), but the
  running averages are not updated: the tuners compare steps from the same start.
  """
  from gnreg import train  # The trainer imports this module; import it back lazily.

  info = data.dataset_info(config.data)
  model = train.build_model(config, info)
  # The trainer's initial variables: the same program, compiled the same way.
  variables = jax.jit(
    lambda: train.init_variables(model, config, info),
    compiler_options=compilation.run_once_options(),
  )()
  batch_stats = variables.get("batch_stats", {})
  loss_and_aux = train.make_loss_fn(model, config)
  rngs = dict(
    zip(("dropout", "shake"), jax.random.split(jax.random.PRNGKey(config.seed)), strict=True)
  )

  def loss_fn(params, batch):
    return loss_and_aux(params, batch_stats, batch["image"], batch["label"], rngs)[0]

  return info, variables["params"], loss_fn


def _first_batches(config: ml_collections.ConfigDict, num_batches: int) -> Iterator[dict]:
  """The first ``num_batches`` global training batches, ``{'image', 'label'}`` each.

  Every process reads whole batches, so that every process tunes to the same answer.
  """
  iterator = data.train_iterator(config.data, global_batch_size=config.batch_size, seed=config.seed)
  for batch in itertools.islice(iterator, num_batches):
    yield {"image": batch["image"], "label": batch["label"]}


def run_lr_finder(config: ml_collections.ConfigDict, workdir: str) -> LRFinderResult:
  """Runs :func:`find_lr` on ``config``; writes ``lr_finder.json`` and ``lr_finder.png``."""
  cfg = config.lr_finder
  info, params, loss_fn = _model_and_loss(config)
  num_batches = max(1, -(-min(cfg.num_examples, info.num_train) // config.batch_size))
  batches = list(_first_batches(config, num_batches))
  examples = {k: np.concatenate([b[k] for b in batches]) for k in ("image", "label")}
  result = find_lr(
    loss_fn,
    params,
    examples,
    optimizer=optimizers.injected_optimizer(config, cfg.min_lr),
    min_lr=cfg.min_lr,
    max_lr=cfg.max_lr,
    num_lrs=cfg.num_lrs,
    num_subsamples=cfg.num_subsamples,
    batch_size=cfg.batch_size,
    seed=config.seed,
  )
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    result.to_json(os.path.join(workdir, LR_FINDER_JSON))
    result.plot(os.path.join(workdir, "lr_finder.png"))
  return result


def run_pid_autotune(config: ml_collections.ConfigDict, workdir: str) -> PIDAutotuneResult:
  """Runs :func:`autotune_pid` on the first epoch, streamed from the training input (never held
  in memory whole); writes ``pid_autotune.json`` and ``pid_autotune.png``."""
  pid = config.pid
  info, params, loss_fn = _model_and_loss(config)
  steps = data.steps_per_epoch(info, config.batch_size)
  if pid.autotune_steps:
    steps = min(steps, pid.autotune_steps)
  result = autotune_pid(
    loss_fn,
    params,
    _first_batches(config, steps),
    optimizer=optimizers.injected_optimizer(config, config.optimizer.learning_rate),
    target_norm=pid.target_norm,
    search=pid.autotune_search,
    n_trials=pid.autotune_trials,
    seed=config.seed,
    min_lr=pid.min_lr,
    max_lr=pid.max_lr,
    smoothing=pid.smoothing,
  )
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    result.to_json(os.path.join(workdir, AUTOTUNE_JSON))
    result.plot(os.path.join(workdir, "pid_autotune.png"))
  return result


def apply_tuning(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """A copy of ``config`` with the tuners' choices, tuning only what the workdir lacks."""
  config = config.copy_and_resolve_references()
  if config.lr_finder.enabled:
    path = os.path.join(workdir, LR_FINDER_JSON)
    if os.path.exists(path):
      with open(path) as f:
        best = json.load(f)["best"]
    else:
      best = run_lr_finder(config, workdir).choices()
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
      gains = run_pid_autotune(config, workdir).best
    for name, value in gains.items():
      config.pid[name] = float(value)
  return config
