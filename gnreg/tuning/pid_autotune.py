"""Auto-tuning of the gains of the PID learning-rate regulator on the first epoch.

The regulator :func:`gnreg.transforms.pid.pid_lr` sets the learning rate from the error
``e_t = log(target) - log(mhat_t)`` of the smoothed gradient norm through
``lr_t = clip(lr_0 exp(kp e_t + ki I_t + kd D_t), min_lr, max_lr)``. Its gains are tuned, as in
the ``GradientNormRegulator.auto_tune`` reference, by training a fresh copy of the parameters
with each candidate ``(kp, ki, kd)`` over the first epoch of batches and keeping the candidate of
lowest late training loss. Candidates come from a grid or a uniform random search.

All trials train in lockstep: one jitted step per batch ``vmap``s a trial's step over the
candidate gains (chunked when memory demands it), with every trial's parameters and optimizer
state kept on the device between steps; the batches can stream from the training iterator.
``batched=False`` trains the candidates one after another instead, each its own run of jitted
steps, for comparison.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gnreg.transforms.pid import pid_lr
from gnreg.tuning.common import (
  PyTree,
  auto_chunk_size,
  batched_map,
  cached_jit,
  check_tunable_optimizer,
  json_float,
  tree_bytes,
)

GAINS = ("kp", "ki", "kd")
SEARCHES = ("grid", "random")
DEFAULT_SPACE: dict[str, tuple[float, float]] = {
  "kp": (0.1, 5.0),
  "ki": (0.0, 0.5),
  "kd": (0.0, 0.5),
}
# The gains pid_lr uses by default, for a gain that `space` leaves out.
DEFAULT_GAINS: dict[str, float] = {"kp": 1.0, "ki": 0.0, "kd": 0.0}


@dataclasses.dataclass(frozen=True)
class PIDAutotuneResult:
  """The trials of :func:`autotune_pid`.

  Attributes:
    trials: one dict per trial: ``kp``, ``ki``, ``kd``, ``score`` (mean training loss over the
      last quarter of the steps, ``inf`` for a diverged trial) and ``tracking_error``
      (mean over the steps of ``|log(grad_norm_t / target_norm)|``, ``inf`` if not finite).
    losses: ``(n_trials, S)`` the training loss at each step, before its update.
    grad_norms: ``(n_trials, S)`` the gradient norm the regulator saw at each step.
    lrs: ``(n_trials, S)`` the learning rate the regulator set at each step.
    target_norm: the regulator's target gradient norm.
  """

  trials: list[dict[str, float]]
  losses: np.ndarray
  grad_norms: np.ndarray
  lrs: np.ndarray
  target_norm: float

  @property
  def best_index(self) -> int:
    """The index of the trial of lowest score (the first one on ties)."""
    return int(np.argmin([t["score"] for t in self.trials]))

  @property
  def best(self) -> dict[str, float]:
    """The gains ``{'kp', 'ki', 'kd'}`` of the best trial."""
    trial = self.trials[self.best_index]
    return {k: trial[k] for k in GAINS}

  def plot(self, path: str) -> None:
    """Writes a PNG of the best trial: gradient norm against the target, and learning rate."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    i = self.best_index
    steps = np.arange(1, self.losses.shape[1] + 1)
    fig = Figure(figsize=(7, 6))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(steps, self.grad_norms[i], color="C0", label="gradient norm")
    top.axhline(self.target_norm, color="C3", linestyle="--", label="target")
    top.set_yscale("log")
    top.set_ylabel("gradient norm")
    top.legend(fontsize="small")
    bottom.plot(steps, self.lrs[i], color="C1")
    bottom.set_yscale("log")
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("step")
    t = self.trials[i]
    top.set_title(
      f"best of {len(self.trials)} trials: kp={t['kp']:.3g}, ki={t['ki']:.3g}, "
      f"kd={t['kd']:.3g}, score={t['score']:.4g}"
    )
    fig.tight_layout()
    fig.savefig(path, format="png")

  def to_json(self, path: str) -> None:
    """Writes the best gains, every trial (non-finite numbers as ``null``) and the best history."""
    i = self.best_index
    payload = {
      "target_norm": float(self.target_norm),
      "best": self.best,
      "best_score": json_float(self.trials[i]["score"]),
      "trials": [{k: json_float(v) for k, v in t.items()} for t in self.trials],
      "best_history": {
        "loss": [json_float(x) for x in self.losses[i].tolist()],
        "grad_norm": [json_float(x) for x in self.grad_norms[i].tolist()],
        "lr": [json_float(x) for x in self.lrs[i].tolist()],
      },
    }
    with open(path, "w") as f:
      json.dump(payload, f, indent=1)


def _check_space(space: Mapping[str, Sequence[float]] | None) -> dict[str, tuple[float, float]]:
  if space is None:
    return dict(DEFAULT_SPACE)
  ranges = {}
  for key, bounds in space.items():
    if key not in GAINS:
      raise ValueError(f"autotune_pid: space keys must be in {GAINS}, got {key!r}")
    try:
      low, high = (float(b) for b in bounds)
    except (TypeError, ValueError):
      raise ValueError(
        f"autotune_pid: space[{key!r}] must be a (low, high) pair of numbers, got {bounds!r}"
      ) from None
    if not (math.isfinite(low) and math.isfinite(high)) or not 0 <= low <= high:
      raise ValueError(
        f"autotune_pid: space[{key!r}] must be finite with 0 <= low <= high, got ({low}, {high})"
      )
    ranges[key] = (low, high)
  return {k: ranges.get(k, (DEFAULT_GAINS[k], DEFAULT_GAINS[k])) for k in GAINS}


def search_points(
  search: str, space: Mapping[str, Sequence[float]] | None, n_trials: int, seed: int = 0
) -> np.ndarray:
  """The ``(T, 3)`` candidate gains ``(kp, ki, kd)`` that :func:`autotune_pid` tries.

  ``'grid'``: with ``d`` the number of gains whose range is not a single point, the product of
  ``k`` evenly spaced values (ends included) per such gain, ``k`` the smallest integer with
  ``k**d >= n_trials``; the grid is not trimmed, so ``T = k**d`` (e.g. 64 for 50 trials over three
  gains). ``'random'``: ``T = n_trials`` points drawn uniformly from the box with
  ``numpy.random.default_rng(seed)``. A gain missing from ``space`` is held at its ``pid_lr``
  default (``kp=1, ki=0, kd=0``).
  """
  if search not in SEARCHES:
    raise ValueError(f"autotune_pid: search must be one of {SEARCHES}, got {search!r}")
  if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
    raise ValueError(f"autotune_pid: n_trials must be an integer >= 1, got {n_trials!r}")
  ranges = _check_space(space)
  if search == "random":
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(*ranges[k], size=n_trials) for k in GAINS], axis=1)
  free = sum(low < high for low, high in ranges.values())
  k = 1
  while k**free < n_trials:
    k += 1
  axes = [
    np.linspace(low, high, k) if low < high else np.array([low])
    for low, high in (ranges[g] for g in GAINS)
  ]
  return np.array(list(itertools.product(*axes)), dtype=np.float64)


def _make_trial(
  loss_fn: Callable[[PyTree, PyTree], jax.Array],
  optimizer: optax.GradientTransformation,
  target_norm: float,
  pid_kwargs: Mapping[str, Any],
) -> tuple[Callable, Callable]:
  """``init(gains, params) -> carry`` and ``step(gains, carry, batch) -> (carry, record)`` of one
  trial, shared by the batched and the one-by-one paths; ``record = (loss, grad_norm, lr)``."""

  def regulator(gains):
    return pid_lr(
      optimizer, target_norm=target_norm, kp=gains[0], ki=gains[1], kd=gains[2], **pid_kwargs
    )

  def init(gains, params):
    return params, regulator(gains).init(params)

  def step(gains, carry, batch):
    params, state = carry
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, state = regulator(gains).update(grads, state, params)
    return (optax.apply_updates(params, updates), state), (loss, state.grad_norm, state.lr)

  return init, step


def _make_batched(loss_fn, optimizer, target_norm, pid_items, chunk_size) -> tuple[Callable, ...]:
  """Jitted ``init(gains, params)`` and ``step(gains, carry, batch)`` of every trial at once."""
  init, step = _make_trial(loss_fn, optimizer, target_norm, dict(pid_items))
  init_all = jax.jit(jax.vmap(init, in_axes=(0, None)))

  def step_all(gains, carry, batch):
    return batched_map(lambda x: step(x[0], x[1], batch), (gains, carry), chunk_size)

  return init_all, jax.jit(step_all, donate_argnums=1)


def _make_single(loss_fn, optimizer, target_norm, pid_items) -> tuple[Callable, ...]:
  """Jitted ``init`` and ``step`` of one trial, run once per candidate."""
  init, step = _make_trial(loss_fn, optimizer, target_norm, dict(pid_items))
  return jax.jit(init), jax.jit(step, donate_argnums=1)


def _batch_stream(batches: PyTree | Iterator[PyTree]) -> Iterator[PyTree]:
  """The batches one by one, from an iterator or from arrays stacked on a leading steps axis."""
  if isinstance(batches, Iterator):
    return batches
  leaves = jax.tree.leaves(batches)
  steps = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
  if not leaves or None in steps or len(steps) != 1 or 0 in steps:
    raise ValueError(
      "autotune_pid: batches must be an iterator of batches or a pytree of arrays "
      "sharing a leading steps axis of size >= 1, got leading sizes "
      f"{sorted(str(s) for s in steps)}"
    )
  # Device arrays are cut into steps once, in one op per leaf, not in a dispatch per step.
  treedef = jax.tree.structure(batches)
  columns = [list(jnp.unstack(x)) if isinstance(x, jax.Array) else list(x) for x in leaves]
  return (jax.tree.unflatten(treedef, [c[t] for c in columns]) for t in range(steps.pop()))


def autotune_pid(
  loss_fn: Callable[[PyTree, PyTree], jax.Array],
  params: PyTree,
  batches: PyTree | Iterator[PyTree],
  *,
  optimizer: optax.GradientTransformation,
  target_norm: float,
  search: str = "grid",
  space: Mapping[str, Sequence[float]] | None = None,
  n_trials: int = 50,
  seed: int = 0,
  batched: bool = True,
  chunk_size: int | None = None,
  memory_budget_bytes: int = 2**30,
  **pid_kwargs: Any,
) -> PIDAutotuneResult:
  """Tunes the ``(kp, ki, kd)`` gains of ``pid_lr`` by training each candidate on ``batches``.

  Every trial trains a fresh copy of ``params`` with
  ``pid_lr(optimizer, target_norm=target_norm, kp=kp, ki=ki, kd=kd, **pid_kwargs)``, one step per
  batch. Its score is the mean training loss over the last ``ceil(S / 4)`` of its ``S`` steps;
  a trial whose loss or gradient norm is non-finite at any step diverged and scores ``+inf``.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    params: the initial parameters, shared by every trial.
    batches: the first epoch, either as an iterator of batches (each a pytree of arrays, e.g.
      the training input itself; it is consumed once, and every trial steps on each batch as it
      arrives) or as a pytree of arrays with a leading steps axis ``S``, leaf shapes
      ``(S, batch_size, ...)``, step ``t`` getting ``jax.tree.map(lambda x: x[t], batches)``.
    optimizer: the optimizer the regulator wraps, built with ``optax.inject_hyperparams`` and a
      constant ``learning_rate`` (its value is the regulator's ``lr_0``).
    target_norm: the regulator's target gradient norm.
    search: ``'grid'`` or ``'random'``, see :func:`search_points`.
    space: ``{gain: (low, high)}`` for gains in ``kp, ki, kd``; default
      ``{'kp': (0.1, 5.0), 'ki': (0.0, 0.5), 'kd': (0.0, 0.5)}``.
    n_trials: the number of candidates (the grid rounds it up to a full product).
    seed: the seed of the random search.
    batched: train all trials in lockstep, one jitted ``vmap``-ed step per batch (default), or,
      when ``False``, one trial after another, each with one jitted step per batch (the batches
      are then held in device memory, to be replayed for every trial).
    chunk_size: the number of trials vmapped together; default: as many as fit
      ``memory_budget_bytes``, counting ``3 * params + optimizer state`` bytes per trial.
    memory_budget_bytes: the budget for the automatic ``chunk_size``.
    **pid_kwargs: the other arguments of ``pid_lr`` (``min_lr``, ``max_lr``, ``smoothing``,
      ``integral_limit``).

  Returns:
    A :class:`PIDAutotuneResult`.
  """
  gains = search_points(search, space, n_trials, seed)
  clash = sorted(set(pid_kwargs) & set(GAINS))
  if clash:
    raise ValueError(f"autotune_pid: gains {clash} are searched; set them through space")
  check_tunable_optimizer(optimizer, params, "autotune_pid")
  # Builds the regulator once with concrete values so that its own validation of target_norm and
  # pid_kwargs reports bad arguments here rather than from inside a trace.
  pid_lr(optimizer, target_norm=target_norm, **pid_kwargs)
  if chunk_size is not None and chunk_size < 1:
    raise ValueError(f"autotune_pid: chunk_size must be >= 1 or None, got {chunk_size}")
  stream = _batch_stream(batches)

  gains_dev = jnp.asarray(gains, dtype=jnp.float32)
  pid_items = tuple(sorted(pid_kwargs.items()))
  if batched:
    if chunk_size is None:
      state_bytes = tree_bytes(jax.eval_shape(optimizer.init, params))
      chunk_size = auto_chunk_size(
        3 * tree_bytes(params) + state_bytes, len(gains), memory_budget_bytes
      )
    init_all, step_all = cached_jit(
      _make_batched, loss_fn, optimizer, target_norm, pid_items, chunk_size
    )
    carry, records = init_all(gains_dev, params), []
    for batch in stream:
      carry, record = step_all(gains_dev, carry, batch)
      records.append(record)
    # (steps, 3, trials) -> three (trials, steps) arrays, read from the device once at the end.
    history = [
      np.asarray(jnp.stack([r[j] for r in records], axis=1)) if records else None for j in range(3)
    ]
  else:
    init_one, step_one = cached_jit(_make_single, loss_fn, optimizer, target_norm, pid_items)
    steps = [jax.device_put(batch) for batch in stream]  # Every trial trains on these.
    runs = []
    for g in gains_dev:
      carry, records = init_one(g, params), []
      for batch in steps:
        carry, record = step_one(g, carry, batch)
        records.append(record)
      runs.append(records)
    history = [
      np.stack([np.asarray(jnp.stack([r[j] for r in records])) for records in runs])
      if steps
      else None
      for j in range(3)
    ]
  if history[0] is None:
    raise ValueError("autotune_pid: batches gave no batch to train on")
  losses, norms, lrs = history

  num_steps = losses.shape[1]
  tail = math.ceil(num_steps / 4)
  finite = np.isfinite(losses).all(axis=1) & np.isfinite(norms).all(axis=1)
  scores = np.where(finite, losses[:, num_steps - tail :].mean(axis=1), np.inf)
  with np.errstate(divide="ignore", invalid="ignore"):
    tracking = np.abs(np.log(norms / target_norm)).mean(axis=1)
  tracking = np.where(np.isfinite(tracking), tracking, np.inf)
  trials = [
    {
      "kp": float(g[0]),
      "ki": float(g[1]),
      "kd": float(g[2]),
      "score": float(s),
      "tracking_error": float(e),
    }
    for g, s, e in zip(gains, scores, tracking, strict=True)
  ]
  if not np.isfinite(scores).any():
    warnings.warn("autotune_pid: every trial diverged; best is the first candidate", stacklevel=2)
  return PIDAutotuneResult(
    trials=trials, losses=losses, grad_norms=norms, lrs=lrs, target_norm=float(target_norm)
  )
