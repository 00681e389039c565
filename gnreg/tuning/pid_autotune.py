"""Auto-tuning of the gains of the PID learning-rate regulator on the first epoch.

The regulator :func:`gnreg.transforms.pid.pid_lr` sets the learning rate from the error of the
smoothed gradient norm against a target. Its gains are tuned, as in the
``GradientNormRegulator.auto_tune`` reference, by training a fresh copy of the parameters with
each candidate ``(kp, ki, kd)`` (and, optionally, ``target_norm``) over the first epoch of
batches and keeping the candidate of lowest late training loss, or of lowest loss on held-out
data of that epoch. Candidates come from a grid or a uniform random search.

All trials train in lockstep: one jitted step per batch ``vmap``s a trial's step over the
candidates (chunked when memory demands it), with every trial's parameters and optimizer
state kept on the device between steps; the batches can stream from the training iterator.
``batched=False`` trains the candidates one after another instead, each its own run of jitted
steps, for comparison.

A search can be degenerate: every trial scoring the same, the rate pinned at a bound, the norm
never near its target. :meth:`PIDAutotuneResult.problems` says which, with the fix, and
:func:`autotune_pid` warns with each.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import math
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gnreg.transforms._common import check_learning_rate
from gnreg.transforms.pid import injected_learning_rate, pid_lr, set_injected_learning_rate
from gnreg.tuning.common import (
  PyTree,
  auto_chunk_size,
  batched_map,
  cached_jit,
  check_tunable_optimizer,
  json_float,
  progress_bar,
  tree_bytes,
)

__all__ = [
  "GAINS",
  "DIMENSIONS",
  "SEARCHES",
  "OBJECTIVES",
  "DEFAULT_SPACE",
  "DEFAULT_GAINS",
  "PID_ARGUMENTS",
  "PIDAutotuneResult",
  "search_points",
  "autotune_pid",
]

GAINS = ("kp", "ki", "kd")
# What a trial varies: the gains, and the target when the search space names it.
DIMENSIONS = (*GAINS, "target_norm")
SEARCHES = ("grid", "random")
# What a trial is scored on: its late training loss, or its loss on held-out data.
OBJECTIVES = ("train_loss", "heldout_loss")
DEFAULT_SPACE: dict[str, tuple[float, float]] = {
  "kp": (0.1, 5.0),
  "ki": (0.0, 0.5),
  "kd": (0.0, 0.5),
}
# The gains pid_lr uses by default, for a gain that the search space leaves out.
DEFAULT_GAINS: dict[str, float] = {"kp": 1.0, "ki": 0.0, "kd": 0.0}
# The arguments of pid_lr that autotune_pid passes on unchanged.
PID_ARGUMENTS = tuple(
  name
  for name in inspect.signature(pid_lr).parameters
  if name not in ("optimizer", "target_norm", *GAINS)
)
# A rate within this relative distance of a bound sits at it.
_AT_BOUND = 1e-3
# "Most steps": the fraction of the best trial's steps at a bound that makes the search suspect.
_PINNED_FRACTION = 0.5
# The tolerance of "near the target": the late mean gradient norm within 10% of target_norm.
_NEAR_TARGET = 0.1


@dataclasses.dataclass(frozen=True)
class PIDAutotuneResult:
  """The trials of :func:`autotune_pid`.

  Attributes:
    trials: one dict per trial: ``kp``, ``ki``, ``kd``, ``target_norm``, ``score`` (the
      objective, lower is better, ``inf`` for a diverged trial), ``train_loss`` (mean training
      loss over the last quarter of the steps), ``heldout_loss`` (only with held-out data),
      ``tracking_error`` (mean over the steps of ``|log(grad_norm_t / target_norm)|``, ``inf``
      if not finite).
    losses: ``(n_trials, S)`` the training loss at each step, before its update.
    grad_norms: ``(n_trials, S)`` the gradient norm the regulator saw at each step.
    lrs: ``(n_trials, S)`` the learning rate the regulator set at each step.
    target_norm: the regulator's target gradient norm when it is not searched.
    search_space: the ``(low, high)`` range of each searched dimension.
    min_lr, max_lr: the regulator's rate bounds.
    initial_lr: ``lr_0``, the rate every trial started from.
  """

  trials: list[dict[str, float]]
  losses: np.ndarray
  grad_norms: np.ndarray
  lrs: np.ndarray
  target_norm: float
  search_space: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
  min_lr: float = 1e-6
  max_lr: float = 1e-2
  initial_lr: float = math.nan

  @property
  def best_index(self) -> int:
    """The index of the trial of lowest score (the first one on ties)."""
    return int(np.argmin([t["score"] for t in self.trials]))

  @property
  def best(self) -> dict[str, float]:
    """The gains ``{'kp', 'ki', 'kd'}`` of the best trial, and its ``target_norm`` if searched."""
    trial = self.trials[self.best_index]
    names = (*GAINS, "target_norm") if "target_norm" in self.search_space else GAINS
    return {k: trial[k] for k in names}

  def problems(self) -> list[str]:
    """One line per sign of a degenerate search, each with the fix it suggests.

    - every finite score equal within noise: the gains made no difference. Every trial steps
      on the same batches, so the batches' own ups and downs are common to all of them; the
      noise is that of a difference between two trials, the standard error of the per-step
      difference of the best and the worst trial's late losses (or float rounding);
    - the best trial's rate at ``min_lr`` or ``max_lr`` for most of its steps; at ``min_lr``
      with the norm still above target, a higher rate lowers the gradient norm here, and
      both laws then drive the rate to the floor;
    - no trial's late mean gradient norm within 10% of its target.

    A regulator that starts at ``max_lr`` can only lower the rate: its target is a ceiling on
    the norm, which it acts on only when the norm passes it. For such a search the rate at
    ``max_lr`` is the design, a problem only on every step (the norm never passed the
    target), and the norm is expected to stay below the target: the sign is then that no
    trial's gradient norm ever came within 10% of it (the gains never acted).
    """
    out = []
    scores = np.array([t["score"] for t in self.trials])
    finite = np.isfinite(scores)
    if not finite.any():
      return ["autotune_pid: every trial diverged; lower max_lr (pid.max_lr) or the initial rate"]
    i = self.best_index
    tail = math.ceil(self.losses.shape[1] / 4)
    worst = int(np.flatnonzero(finite)[np.argmax(scores[finite])])
    paired = self.losses[worst, -tail:] - self.losses[i, -tail:]
    noise = float(np.std(paired, ddof=1) / math.sqrt(tail)) if tail > 1 else 0.0
    noise = max(noise, 16 * float(np.finfo(np.float32).eps) * abs(float(scores[i])))
    spread = float(scores[finite].max() - scores[finite].min())
    if finite.sum() > 1 and spread <= noise:
      out.append(
        f"autotune_pid: all {int(finite.sum())} trials score the same within noise (spread "
        f"{spread:.3g} <= {noise:.3g}): the gains change nothing; see the lines below, or "
        "widen search_space (pid.autotune_space)"
      )
    ceiling = np.float32(self.initial_lr) >= np.float32(self.max_lr)
    target = self.trials[i]["target_norm"]
    lrs, norms = self.lrs[i], self.grad_norms[i]
    for bound, name in ((self.max_lr, "max_lr"), (self.min_lr, "min_lr")):
      at = np.abs(lrs - bound) <= _AT_BOUND * bound
      pinned = at.all() if ceiling and name == "max_lr" else at.mean() > _PINNED_FRACTION
      if not pinned:
        continue
      norm = float(np.mean(norms[at]))
      line = (
        f"autotune_pid: the best trial's rate sits at {name}={bound:.3g} for "
        f"{100 * at.mean():.0f}% of its steps (mean gradient norm there {norm:.3g}, target "
        f"{target:.3g}); "
      )
      if name == "max_lr" and ceiling:
        line += (
          "the initial rate is max_lr, so the regulator only ever lowers it (a ceiling on the "
          "norm); raise pid.max_lr to let it raise the rate, or lower pid.target_norm to make "
          "it act"
        )
      elif name == "max_lr":
        line += (
          f"the controller asks for more: raise pid.max_lr (the initial rate is "
          f"{self.initial_lr:.3g}) or set pid.target_norm near {norm:.3g}"
        )
      elif norm > target:
        line += (
          "the norm stays above target at the floor, so here a higher rate lowers the gradient "
          "norm and both laws drive the rate down to min_lr: set pid.target_norm above "
          f"{norm:.3g}, or leave the rate to a schedule"
        )
      else:
        line += f"lower pid.min_lr or set pid.target_norm near {norm:.3g}"
      out.append(line)
    targets = np.array([t["target_norm"] for t in self.trials])
    if ceiling:
      highest = np.max(np.where(np.isfinite(self.grad_norms), self.grad_norms, 0.0), axis=1)
      if not (highest >= (1 - _NEAR_TARGET) * targets).any():
        j = int(np.argmax(highest / targets))
        out.append(
          f"autotune_pid: no trial's gradient norm came within 10% of its target, a ceiling "
          f"since the rate starts at max_lr (highest {highest[j]:.3g} vs {targets[j]:.3g}): the "
          f"regulator never acted; set pid.target_norm below {np.max(highest):.3g}"
        )
      return out
    tail_norms = self.grad_norms[:, -tail:].mean(axis=1)
    miss = np.abs(tail_norms / targets - 1)
    miss = np.where(np.isfinite(miss), miss, np.inf)
    if not (miss <= _NEAR_TARGET).any():
      j = int(np.argmin(miss))
      out.append(
        f"autotune_pid: no trial's late gradient norm came within 10% of its target (closest "
        f"{tail_norms[j]:.3g} vs {targets[j]:.3g}); set pid.target_norm near the norms "
        f"measured ({np.nanmin(tail_norms):.3g} to {np.nanmax(tail_norms):.3g}) or widen "
        "[pid.min_lr, pid.max_lr]"
      )
    return out

  def plot(self, path: str) -> None:
    """Writes a PNG of the best trial: gradient norm against the target, and learning rate."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    i = self.best_index
    t = self.trials[i]
    steps = np.arange(1, self.losses.shape[1] + 1)
    fig = Figure(figsize=(7, 6))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(steps, self.grad_norms[i], color="C0", label="gradient norm")
    top.axhline(t["target_norm"], color="C3", linestyle="--", label="target")
    top.set_yscale("log")
    top.set_ylabel("gradient norm")
    top.legend(fontsize="small")
    bottom.plot(steps, self.lrs[i], color="C1")
    for bound in (self.min_lr, self.max_lr):
      bottom.axhline(bound, color="gray", linewidth=0.8, linestyle=":")
    bottom.set_yscale("log")
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("step")
    top.set_title(
      f"best of {len(self.trials)} trials: kp={t['kp']:.3g}, ki={t['ki']:.3g}, "
      f"kd={t['kd']:.3g}, score={t['score']:.4g}"
    )
    fig.tight_layout()
    fig.savefig(path, format="png")

  def to_json(self, path: str) -> None:
    """Writes the best gains, every trial (non-finite numbers as ``null``), the best history
    and the problems found."""
    i = self.best_index
    payload = {
      "target_norm": float(self.target_norm),
      "best": self.best,
      "best_score": json_float(self.trials[i]["score"]),
      "problems": self.problems(),
      "trials": [{k: json_float(v) for k, v in t.items()} for t in self.trials],
      "best_history": {
        "loss": [json_float(x) for x in self.losses[i].tolist()],
        "grad_norm": [json_float(x) for x in self.grad_norms[i].tolist()],
        "lr": [json_float(x) for x in self.lrs[i].tolist()],
      },
    }
    with open(path, "w") as f:
      json.dump(payload, f, indent=1)


def _check_space(
  space: Mapping[str, Sequence[float]] | None, target_norm: float
) -> dict[str, tuple[float, float]]:
  """``{dimension: (low, high)}`` for all four dimensions, from a space keyed in either case."""
  if space is None:
    space = DEFAULT_SPACE
  ranges = {}
  for key, bounds in space.items():
    name = key.lower() if isinstance(key, str) else key
    if name not in DIMENSIONS:
      raise ValueError(
        f"autotune_pid: search_space keys must be in {DIMENSIONS} (any case), got {key!r}"
      )
    if name in ranges:
      raise ValueError(f"autotune_pid: search_space names {name!r} twice")
    try:
      low, high = (float(b) for b in bounds)
    except (TypeError, ValueError):
      raise ValueError(
        f"autotune_pid: search_space[{key!r}] must be a (low, high) pair of numbers, got {bounds!r}"
      ) from None
    floor = 0 < low if name == "target_norm" else 0 <= low
    if not (math.isfinite(low) and math.isfinite(high)) or not (floor and low <= high):
      rule = "0 < low" if name == "target_norm" else "0 <= low"
      raise ValueError(
        f"autotune_pid: search_space[{key!r}] must be finite with {rule} <= high, "
        f"got ({low}, {high})"
      )
    ranges[name] = (low, high)
  fixed = {**DEFAULT_GAINS, "target_norm": target_norm}
  return {k: ranges.get(k, (fixed[k], fixed[k])) for k in DIMENSIONS}


def search_points(
  search_type: str,
  search_space: Mapping[str, Sequence[float]] | None,
  n_trials: int,
  seed: int = 0,
  target_norm: float = 1.0,
) -> np.ndarray:
  """The ``(T, 4)`` candidates ``(kp, ki, kd, target_norm)`` that :func:`autotune_pid` tries.

  ``'grid'``: with ``d`` the number of dimensions whose range is not a single point, the
  product of ``k`` values (ends included) per such dimension, ``k`` the smallest integer with
  ``k**d >= n_trials``; the grid is not trimmed, so ``T = k**d`` (e.g. 64 for 50 trials over
  three gains). ``'random'``: ``T = n_trials`` points drawn uniformly from the box with
  ``numpy.random.default_rng(seed)``. Gains are spaced (drawn) linearly, ``target_norm``
  geometrically (log-uniformly): a norm's scale is multiplicative. A gain missing from the
  space is held at its ``pid_lr`` default (``kp=1, ki=0, kd=0``), ``target_norm`` at
  ``target_norm``.
  """
  if search_type not in SEARCHES:
    raise ValueError(f"autotune_pid: search_type must be one of {SEARCHES}, got {search_type!r}")
  if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
    raise ValueError(f"autotune_pid: n_trials must be an integer >= 1, got {n_trials!r}")
  ranges = _check_space(search_space, target_norm)
  if search_type == "random":
    rng = np.random.default_rng(seed)
    columns = [rng.uniform(*ranges[k], size=n_trials) for k in GAINS]
    low, high = np.log(ranges["target_norm"])
    columns.append(np.exp(rng.uniform(low, high, size=n_trials)))
    return np.stack(columns, axis=1)
  free = sum(low < high for low, high in ranges.values())
  k = 1
  while k**free < n_trials:
    k += 1
  spacing = {**dict.fromkeys(GAINS, np.linspace), "target_norm": np.geomspace}
  axes = [
    spacing[d](*ranges[d], k) if ranges[d][0] < ranges[d][1] else [ranges[d][0]] for d in DIMENSIONS
  ]
  return np.array(list(itertools.product(*axes)), dtype=np.float64)


def _make_trial(
  loss_fn: Callable[[PyTree, PyTree], jax.Array],
  optimizer: optax.GradientTransformation,
  initial_lr: float | None,
  pid_kwargs: Mapping[str, Any],
) -> tuple[Callable, Callable]:
  """``init(point, params) -> carry`` and ``step(point, carry, batch) -> (carry, record)`` of
  one trial, shared by the batched and the one-by-one paths; ``point = (kp, ki, kd, target)``
  and ``record = (loss, grad_norm, lr)``."""
  if initial_lr is not None:
    inner_init = optimizer.init
    optimizer = optax.GradientTransformation(
      lambda p: set_injected_learning_rate(inner_init(p), jnp.float32(initial_lr)),
      optimizer.update,
    )

  def regulator(point):
    kp, ki, kd, target_norm = (point[j] for j in range(4))
    return pid_lr(optimizer, target_norm=target_norm, kp=kp, ki=ki, kd=kd, **pid_kwargs)

  def init(point, params):
    return params, regulator(point).init(params)

  def step(point, carry, batch):
    params, state = carry
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, state = regulator(point).update(grads, state, params)
    return (optax.apply_updates(params, updates), state), (loss, state.grad_norm, state.lr)

  return init, step


def _make_batched(loss_fn, optimizer, initial_lr, pid_items, chunk_size) -> tuple[Callable, ...]:
  """Jitted ``init(points, params)`` and ``step(points, carry, batch)`` of every trial at once."""
  init, step = _make_trial(loss_fn, optimizer, initial_lr, dict(pid_items))
  init_all = jax.jit(jax.vmap(init, in_axes=(0, None)))

  def step_all(points, carry, batch):
    return batched_map(lambda x: step(x[0], x[1], batch), (points, carry), chunk_size)

  return init_all, jax.jit(step_all, donate_argnums=1)


def _make_single(loss_fn, optimizer, initial_lr, pid_items) -> tuple[Callable, ...]:
  """Jitted ``init`` and ``step`` of one trial, run once per candidate."""
  init, step = _make_trial(loss_fn, optimizer, initial_lr, dict(pid_items))
  return jax.jit(init), jax.jit(step, donate_argnums=1)


def _make_heldout(heldout_fn, chunk_size) -> Callable:
  """Jitted ``(stacked params, batch) -> (T,)`` objective of every trial's final parameters."""
  return jax.jit(
    lambda params, batch: batched_map(lambda p: heldout_fn(p, batch), params, chunk_size)
  )


def _batch_stream(batches: PyTree | Iterator[PyTree]) -> tuple[Iterator[PyTree], int | None]:
  """The batches one by one, from an iterator or from arrays stacked on a leading steps axis,
  and their number when known."""
  if isinstance(batches, Iterator):
    return batches, None
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
  num_steps = steps.pop()
  return (jax.tree.unflatten(treedef, [c[t] for c in columns]) for t in range(num_steps)), num_steps


def _initial_lr(optimizer, params, initial_lr) -> float:
  if initial_lr is not None:
    check_learning_rate("autotune_pid", "initial_lr", initial_lr)
    return float(initial_lr)
  # Only the rate leaves the compiled init, so nothing of the optimizer's state is allocated.
  lr = jax.jit(lambda p: injected_learning_rate(optimizer.init(p), "autotune_pid"))(params)
  return float(lr)


def autotune_pid(
  loss_fn: Callable[[PyTree, PyTree], jax.Array],
  params: PyTree,
  batches: PyTree | Iterator[PyTree],
  *,
  optimizer: optax.GradientTransformation | None = None,
  target_norm: float = 1.0,
  search_type: str = "grid",
  search_space: Mapping[str, Sequence[float]] | None = None,
  n_trials: int = 50,
  initial_lr: float | None = None,
  heldout: PyTree | None = None,
  heldout_fn: Callable[[PyTree, PyTree], jax.Array] | None = None,
  seed: int = 0,
  batched: bool = True,
  chunk_size: int | None = None,
  memory_budget_bytes: int = 2**30,
  progress: bool = True,
  num_steps: int | None = None,
  **pid_kwargs: Any,
) -> PIDAutotuneResult:
  """Tunes the gains of ``pid_lr`` (and optionally its target) by training each candidate.

  Every trial trains a fresh copy of ``params`` with
  ``pid_lr(optimizer, target_norm=..., kp=..., ki=..., kd=..., **pid_kwargs)``, one step per
  batch. Its score is, by default, the mean training loss over the last ``ceil(S / 4)`` of its
  ``S`` steps; with ``heldout``, it is ``heldout_fn`` of the trial's final parameters on that
  held-out data (data of the first epoch that no trial trained on; a validation accuracy
  ``a`` is scored as ``-a``). A trial whose loss or gradient norm is non-finite at any step
  diverged and scores ``+inf``. Warns with each of :meth:`PIDAutotuneResult.problems`, and
  when the initial rate lies outside ``[min_lr, max_lr]`` (every trial would start pinned).

  The reference's call shape works as it is: ``autotune_pid(loss_fn, params, batches,
  initial_lr=1e-3, search_type='random', search_space={'Kp': (0.1, 5.0), 'Ki': (0.0, 0.5),
  'Kd': (0.0, 0.5)}, n_trials=100)``.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    params: the initial parameters, shared by every trial.
    batches: the first epoch, either as an iterator of batches (each a pytree of arrays, e.g.
      the training input itself; it is consumed once, and every trial steps on each batch as it
      arrives) or as a pytree of arrays with a leading steps axis ``S``, leaf shapes
      ``(S, batch_size, ...)``, step ``t`` getting ``jax.tree.map(lambda x: x[t], batches)``.
    optimizer: the optimizer the regulator wraps, built with ``optax.inject_hyperparams`` and a
      constant ``learning_rate`` (its value is the regulator's ``lr_0``); default plain SGD.
    target_norm: the regulator's target gradient norm, unless ``search_space`` searches it.
    search_type: ``'grid'`` or ``'random'``, see :func:`search_points`.
    search_space: ``{name: (low, high)}`` for names in ``kp, ki, kd, target_norm``, in any case
      (``'Kp'`` works); default ``{'kp': (0.1, 5.0), 'ki': (0.0, 0.5), 'kd': (0.0, 0.5)}``.
    n_trials: the number of candidates (the grid rounds it up to a full product).
    initial_lr: ``lr_0``, replacing the optimizer's injected rate when given; without an
      optimizer, plain SGD starts there (default 1e-3, the reference's example).
    heldout: one batch of held-out data to score on, or None to score the training loss.
    heldout_fn: ``heldout_fn(params, batch) -> scalar``, lower is better; default ``loss_fn``.
    seed: the seed of the random search.
    batched: train all trials in lockstep, one jitted ``vmap``-ed step per batch (default), or,
      when ``False``, one trial after another, each with one jitted step per batch (the batches
      are then held in device memory, to be replayed for every trial).
    chunk_size: the number of trials vmapped together; default: as many as fit
      ``memory_budget_bytes``, counting ``3 * params + optimizer state`` bytes per trial.
    memory_budget_bytes: the budget for the automatic ``chunk_size``.
    progress: print a line saying what it will do, then a progress bar, to stderr.
    num_steps: how many batches an iterator of ``batches`` yields, for the first line and the
      bar's total (stacked arrays give it themselves).
    **pid_kwargs: the other arguments of ``pid_lr``: ``min_lr``, ``max_lr``, ``smoothing``,
      ``integral_limit``, ``law``.

  Returns:
    A :class:`PIDAutotuneResult`.
  """
  for name in pid_kwargs:
    if name.lower() in DIMENSIONS:
      raise ValueError(
        f"autotune_pid: {name} is searched; set its range through search_space "
        f"(e.g. search_space={{'{name.lower()}': (low, high)}})"
      )
    if name not in PID_ARGUMENTS:
      raise ValueError(
        f"autotune_pid: unknown argument {name!r}; besides its own it takes pid_lr's "
        f"{', '.join(PID_ARGUMENTS)}"
      )
  points = search_points(search_type, search_space, n_trials, seed, target_norm)
  if optimizer is None:
    optimizer = optax.inject_hyperparams(optax.sgd)(
      learning_rate=1e-3 if initial_lr is None else initial_lr
    )
  check_tunable_optimizer(optimizer, params, "autotune_pid")
  # Builds the regulator once with concrete values so that its own validation of target_norm and
  # pid_kwargs reports bad arguments here rather than from inside a trace.
  pid_lr(optimizer, target_norm=target_norm, **pid_kwargs)
  if chunk_size is not None and chunk_size < 1:
    raise ValueError(f"autotune_pid: chunk_size must be >= 1 or None, got {chunk_size}")
  bounds = inspect.signature(pid_lr).parameters
  min_lr = float(pid_kwargs.get("min_lr", bounds["min_lr"].default))
  max_lr = float(pid_kwargs.get("max_lr", bounds["max_lr"].default))
  lr0 = _initial_lr(optimizer, params, initial_lr)
  # Compared as float32, the precision the regulator holds them in.
  if not np.float32(min_lr) <= np.float32(lr0) <= np.float32(max_lr):
    warnings.warn(
      f"autotune_pid: the initial rate {lr0:.3g} (initial_lr, or the optimizer's learning_rate: "
      f"optimizer.learning_rate in a config) lies outside [min_lr, max_lr] = [{min_lr:.3g}, "
      f"{max_lr:.3g}] (pid.min_lr, pid.max_lr), so every trial starts pinned at a bound",
      stacklevel=2,
    )
  stream, stacked_steps = _batch_stream(batches)
  num_steps = stacked_steps or num_steps
  searched = [d for j, d in enumerate(DIMENSIONS) if np.ptp(points[:, j]) > 0]
  if progress:
    print(
      f"autotune_pid: {len(points)} trials ({search_type} over {', '.join(searched) or 'nothing'})"
      f" x {f'{num_steps} steps' if num_steps else 'one step per batch'}, "
      + ("all in lockstep" if batched else "one trial after another")
      + f", scored on {'held-out data' if heldout is not None else 'the late training loss'}",
      file=sys.stderr,
    )

  points_dev = jnp.asarray(points, dtype=jnp.float32)
  pid_items = tuple(sorted(pid_kwargs.items()))
  state_bytes = tree_bytes(jax.eval_shape(optimizer.init, params))
  if chunk_size is None:
    chunk_size = auto_chunk_size(
      3 * tree_bytes(params) + state_bytes, len(points), memory_budget_bytes
    )
  if batched:
    init_all, step_all = cached_jit(
      _make_batched, loss_fn, optimizer, initial_lr, pid_items, chunk_size
    )
    carry, records = init_all(points_dev, params), []
    with progress_bar(num_steps, "autotune_pid steps", progress) as bar:
      for batch in stream:
        carry, record = step_all(points_dev, carry, batch)
        records.append(record)
        bar.update()
    final_params = carry[0]
    # (steps, 3, trials) -> three (trials, steps) arrays, read from the device once at the end.
    history = [
      np.asarray(jnp.stack([r[j] for r in records], axis=1)) if records else None for j in range(3)
    ]
  else:
    init_one, step_one = cached_jit(_make_single, loss_fn, optimizer, initial_lr, pid_items)
    steps = [jax.device_put(batch) for batch in stream]  # Every trial trains on these.
    runs, finals = [], []
    with progress_bar(len(points) * len(steps), "autotune_pid steps", progress) as bar:
      for point in points_dev:
        carry, records = init_one(point, params), []
        for batch in steps:
          carry, record = step_one(point, carry, batch)
          records.append(record)
          bar.update()
        runs.append(records)
        finals.append(carry[0])
    final_params = jax.tree.map(lambda *x: jnp.stack(x), *finals) if finals else None
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
  train_loss = np.where(finite, losses[:, num_steps - tail :].mean(axis=1), np.inf)
  scores = train_loss
  if heldout is not None:
    objective = cached_jit(_make_heldout, heldout_fn or loss_fn, chunk_size)
    heldout_loss = np.asarray(objective(final_params, heldout), dtype=np.float64)
    scores = np.where(finite & np.isfinite(heldout_loss), heldout_loss, np.inf)
  with np.errstate(divide="ignore", invalid="ignore"):
    tracking = np.abs(np.log(norms / points[:, 3:4])).mean(axis=1)
  tracking = np.where(np.isfinite(tracking), tracking, np.inf)
  trials = []
  for j, point in enumerate(points):
    trial = dict(zip(DIMENSIONS, map(float, point), strict=True))
    trial.update(score=float(scores[j]), train_loss=float(train_loss[j]))
    if heldout is not None:
      trial["heldout_loss"] = float(heldout_loss[j])
    trial["tracking_error"] = float(tracking[j])
    trials.append(trial)
  ranges = _check_space(search_space, target_norm)
  result = PIDAutotuneResult(
    trials=trials,
    losses=losses,
    grad_norms=norms,
    lrs=lrs,
    target_norm=float(target_norm),
    search_space={d: ranges[d] for d in searched if d in ranges},
    min_lr=min_lr,
    max_lr=max_lr,
    initial_lr=lr0,
  )
  for line in result.problems():
    warnings.warn(line, stacklevel=2)
  return result
