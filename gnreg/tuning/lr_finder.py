"""Learning-rate finder by subsampled loss differentials.

A JAX port of the heuristic of ``autolrtuner`` (A. Wu, https://github.com/adamvvu/autolrtuner):
over a grid of ``K`` learning rates, draw ``M`` random subsamples ``B_m`` of ``batch_size``
examples; on each, take one optimizer step from the same parameters ``theta`` at every rate
``eta_k`` and record the loss differential

  dL[m, k] = L(theta - step(eta_k; grad L(theta; B_m)); B_m) - L(theta; B_m).

The empirical distribution of ``dL[:, k]`` estimates how reliably a rate lowers the loss; the
"best" rate consistently lowers it without too much spread. The method is a heuristic, not a
theorem (as its original says). For a quadratic with Hessian ``a I`` and plain SGD,
``dL = ((1 - eta a)^2 - 1) (L - L*)``, which is minimal at ``eta = 1/a`` and negative exactly on
``0 < eta < 2/a``.

All ``M x K`` steps run inside one jitted call: the gradient of each subsample is computed once,
the ``K`` rates are evaluated by ``jax.vmap`` (in chunks of ``chunk_size`` rates when memory
demands it) and the subsamples are looped over by ``jax.lax.map``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import statistics
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax import tree_utils as otu

METHODS = ("mean", "median", "variance", "max")
SPACINGS = ("log", "linear")

PyTree = Any


def check_injected_learning_rate(
  optimizer: optax.GradientTransformation, params: PyTree, caller: str
) -> None:
  """Raises ``ValueError`` unless ``optimizer``'s state holds exactly one constant injected rate.

  The rate must come from ``optax.inject_hyperparams(...)(learning_rate=<number>)``: a schedule
  would overwrite the value set through ``optax.tree_utils.tree_set`` on every update.
  """
  if not hasattr(optimizer, "init") or not hasattr(optimizer, "update"):
    raise ValueError(
      f"{caller}: optimizer must be an optax GradientTransformation, got {type(optimizer).__name__}"
    )
  state = jax.eval_shape(optimizer.init, params)
  try:
    lr = otu.tree_get(state, "learning_rate")
  except KeyError:
    lr = None
  if lr is None or getattr(lr, "shape", None) != ():
    raise ValueError(
      f"{caller}: optimizer must be built with optax.inject_hyperparams and a "
      "constant learning_rate (exactly one, not a schedule), e.g. "
      "optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)"
    )


def _tree_bytes(tree: PyTree) -> int:
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def auto_chunk_size(per_item_bytes: int, total: int, memory_budget_bytes: int) -> int:
  """The number of items (rates, trials) to vmap together so that they fit the budget.

  ``per_item_bytes`` is the extra memory one vmapped item needs; the result lies in
  ``[1, total]``. Activations are not counted, so pass a smaller budget for wide models.
  """
  if per_item_bytes <= 0:
    return total
  return int(max(1, min(total, memory_budget_bytes // per_item_bytes)))


def batched_map(f: Callable[[Any], Any], xs: PyTree, chunk_size: int) -> PyTree:
  """``jax.vmap(f)(xs)``, evaluated ``chunk_size`` items at a time when the batch is larger."""
  n = jax.tree.leaves(xs)[0].shape[0]
  if chunk_size >= n:
    return jax.vmap(f)(xs)
  return jax.lax.map(f, xs, batch_size=chunk_size)


def subsample_indices(
  seed: int, num_examples: int, num_subsamples: int, batch_size: int
) -> np.ndarray:
  """The ``(num_subsamples, batch_size)`` example indices that :func:`find_lr` uses.

  Each row holds ``batch_size`` distinct indices, drawn without replacement by
  ``numpy.random.default_rng(seed)``, one row after another. Drawn on the host: a
  handful of integers that a compiled JAX draw would spend longer compiling than running.
  """
  rng = np.random.default_rng(seed)
  return np.stack(
    [rng.choice(num_examples, batch_size, replace=False) for _ in range(num_subsamples)]
  ).astype(np.int32)


def _finite(x: np.ndarray) -> np.ndarray:
  """Non-finite differentials (a diverged step) count as +inf, the worst possible."""
  return np.where(np.isfinite(x), x, np.inf)


def _json_float(x: float) -> float | None:
  return float(x) if math.isfinite(x) else None


@dataclasses.dataclass(frozen=True)
class LRFinderResult:
  """The loss differentials of :func:`find_lr`.

  Attributes:
    lrs: ``(K,)`` the learning-rate grid.
    deltas: ``(M, K)`` ``dL = L_post - L_pre`` per subsample and rate.
    indices: ``(M, batch_size)`` the example indices of each subsample.
  """

  lrs: np.ndarray
  deltas: np.ndarray
  indices: np.ndarray

  def best(self, method: str = "mean") -> float:
    """The chosen learning rate.

    Args:
      method: ``'mean'``: the rate of lowest mean ``dL``; ``'median'``: of lowest median ``dL``;
        ``'variance'``: among the rates whose mean ``dL`` is negative, the one with the smallest
        standard deviation of ``dL`` across subsamples (ties broken by the lower mean); when no
        rate lowers the loss on average, the rate of smallest standard deviation over the whole
        grid (the original's rule), with a warning; ``'max'``: the largest rate whose ``dL`` is
        ``<= 0`` on every subsample, or ``0.0`` with a warning when there is none. Non-finite
        differentials count as ``+inf``.

    Returns:
      The learning rate as a Python float.
    """
    d = _finite(self.deltas)
    if method == "mean":
      return float(self.lrs[np.argmin(d.mean(axis=0))])
    if method == "median":
      return float(self.lrs[np.argmin(np.median(d, axis=0))])
    if method == "variance":
      mean = d.mean(axis=0)
      with np.errstate(invalid="ignore"):
        std = np.nan_to_num(d.std(axis=0), nan=np.inf)
      candidates = np.flatnonzero(mean < 0)
      if candidates.size == 0:
        warnings.warn(
          "find_lr: no learning rate lowers the loss on average; 'variance' falls "
          "back to the smallest spread over the whole grid",
          stacklevel=2,
        )
        candidates = np.arange(self.lrs.size)
      order = np.lexsort((mean[candidates], std[candidates]))
      return float(self.lrs[candidates[order[0]]])
    if method == "max":
      ok = np.flatnonzero(np.all(d <= 0, axis=0))
      if ok.size == 0:
        warnings.warn(
          "find_lr: every learning rate raised the loss on some subsample; 'max' returns 0.0",
          stacklevel=2,
        )
        return 0.0
      return float(self.lrs[ok].max())
    raise ValueError(f"LRFinderResult.best: method must be one of {METHODS}, got {method!r}")

  def choices(self) -> dict[str, float]:
    """``best(method)`` for the four methods, without the fallback warnings."""
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      return {m: self.best(m) for m in METHODS}

  def confidence_band(self, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mean ``dL`` per rate with a normal-approximation ``1 - alpha`` confidence band.

    ``mean +- z_{1 - alpha/2} * s / sqrt(M)`` with ``s`` the sample standard deviation
    (``ddof=1``; the band is empty when ``M == 1``).

    Returns:
      ``(mean, lower, upper)``, each of shape ``(K,)``.
    """
    if not 0.0 < alpha < 1.0:
      raise ValueError(f"LRFinderResult.confidence_band: alpha must be in (0, 1), got {alpha}")
    m = self.deltas.shape[0]
    mean = self.deltas.mean(axis=0)
    std = self.deltas.std(axis=0, ddof=1) if m > 1 else np.zeros_like(mean)
    half = statistics.NormalDist().inv_cdf(1.0 - alpha / 2.0) * std / math.sqrt(m)
    return mean, mean - half, mean + half

  def plot(self, path: str, alpha: float = 0.05) -> None:
    """Writes a PNG: mean ``dL`` against the rate (log axis) with its band, zero and choices."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    mean, lower, upper = self.confidence_band(alpha)
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(self.lrs, mean, color="C0", label="mean dL")
    ax.fill_between(
      self.lrs, lower, upper, color="C0", alpha=0.25, label=f"{100 * (1 - alpha):g}% band"
    )
    ax.axhline(0.0, color="black", linewidth=0.8)
    # Distinct dash patterns keep coinciding choices (mean and median often agree) visible.
    styles = ("--", (0, (1, 2)), "-.", (0, (6, 2)))
    for i, (method, lr) in enumerate(self.choices().items()):
      if lr > 0:
        ax.axvline(lr, color=f"C{i + 1}", linestyle=styles[i], label=f"{method}: {lr:.3g}")
    if np.all(self.lrs > 0):
      ax.set_xscale("log")
    # Diverging rates give huge differentials; keep the informative negative region in view.
    finite_low = lower[np.isfinite(lower)]
    finite_up = upper[np.isfinite(upper)]
    if finite_low.size and finite_up.size:
      bottom = min(float(finite_low.min()), 0.0)
      top = max(float(finite_up.max()), 0.0)
      if bottom < 0:
        top = min(top, -bottom)
      pad = 0.05 * (top - bottom) or 1.0
      ax.set_ylim(bottom - pad, top + pad)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss differential  L_post - L_pre")
    ax.set_title(f"learning-rate finder ({self.deltas.shape[0]} subsamples)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png")

  def to_json(self, path: str) -> None:
    """Writes ``lrs``, ``deltas`` (non-finite values as ``null``) and the four choices."""
    payload = {
      "lrs": [float(x) for x in self.lrs],
      "deltas": [[_json_float(x) for x in row] for row in self.deltas.tolist()],
      "best": self.choices(),
    }
    with open(path, "w") as f:
      json.dump(payload, f, indent=1)

  def cosine_restarts_schedule(
    self,
    steps_per_cycle: int,
    *,
    num_cycles: int = 8,
    t_mul: float = 2.0,
    m_mul: float = 0.9,
    alpha: float = 1e-8,
  ) -> optax.Schedule:
    """Cosine decay with warm restarts peaking at the ``'max'`` rate.

    Mirrors the original's ``CosineDecayRestarts`` callback: cycle ``c`` starts at
    ``peak * m_mul**c``, decays by a cosine to ``alpha`` times that over
    ``steps_per_cycle * t_mul**c`` steps, then restarts; after ``num_cycles`` cycles the rate
    stays at the last cycle's floor. ``peak`` is ``best('max')``, or the largest of the other
    three choices when ``'max'`` finds no rate.

    Returns:
      An ``optax`` schedule (``optax.join_schedules`` of ``optax.cosine_decay_schedule``).
    """
    if steps_per_cycle < 1:
      raise ValueError(
        f"cosine_restarts_schedule: steps_per_cycle must be >= 1, got {steps_per_cycle}"
      )
    if num_cycles < 1:
      raise ValueError(f"cosine_restarts_schedule: num_cycles must be >= 1, got {num_cycles}")
    if t_mul <= 0:
      raise ValueError(f"cosine_restarts_schedule: t_mul must be > 0, got {t_mul}")
    choices = self.choices()
    peak = choices["max"]
    if peak <= 0.0:
      peak = max(choices["mean"], choices["median"], choices["variance"])
    schedules, boundaries, step = [], [], 0
    for c in range(num_cycles):
      length = max(1, round(steps_per_cycle * t_mul**c))
      schedules.append(optax.cosine_decay_schedule(peak * m_mul**c, length, alpha=alpha))
      step += length
      boundaries.append(step)
    return optax.join_schedules(schedules, boundaries[:-1])


def _lr_grid(lr_min: float, lr_max: float, num_lrs: int, spacing: str) -> np.ndarray:
  if spacing == "log":
    return np.geomspace(lr_min, lr_max, num_lrs)
  return np.linspace(lr_min, lr_max, num_lrs)


def _num_examples(data: PyTree) -> int:
  leaves = jax.tree.leaves(data)
  if not leaves:
    raise ValueError("find_lr: data must be a pytree holding at least one array")
  sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
  if None in sizes or len(sizes) != 1:
    raise ValueError(
      f"find_lr: every array in data needs the same leading example axis, got "
      f"leading sizes {sorted(str(s) for s in sizes)}"
    )
  return sizes.pop()


@functools.cache
def _default_optimizer() -> optax.GradientTransformation:
  # One object, so that calls without an optimizer share a compiled function; the injected
  # rate is overwritten by every grid value.
  return optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)


@functools.lru_cache(maxsize=16)
def _cached_build(build: Callable[..., Callable], *key: Any) -> Callable:
  return build(*key)


def cached_jit(build: Callable[..., Callable], *key: Any) -> Callable:
  """``build(*key)``, reused across calls with the same (hashable) ``key``.

  ``build`` returns a ``jax.jit``-ed function. A tuner rebuilding its jitted closure on every
  call would retrace and recompile it every time, since ``jax.jit`` caches per function object;
  reusing it makes a second call with the same ``loss_fn`` and optimizer (and array shapes)
  skip compilation. An unhashable ``key`` (say a callable object with ``__eq__`` but no
  ``__hash__``) just builds afresh.
  """
  try:
    hash(key)
  except TypeError:
    return build(*key)
  return _cached_build(build, *key)


def _make_all_deltas(
  loss_fn: Callable[[PyTree, PyTree], jax.Array],
  optimizer: optax.GradientTransformation,
  chunk_size: int,
) -> Callable:
  """The jitted ``(params, data, indices, lrs) -> (M, K)`` differentials of :func:`find_lr`."""

  @jax.jit
  def all_deltas(params, data, indices, lrs):
    opt_state = optimizer.init(params)
    lr_dtype = otu.tree_get(opt_state, "learning_rate").dtype

    def one_subsample(idx):
      batch = jax.tree.map(lambda x: jnp.take(x, idx, axis=0), data)
      loss_pre, grads = jax.value_and_grad(loss_fn)(params, batch)

      def one_rate(lr):
        state = otu.tree_set(opt_state, learning_rate=lr.astype(lr_dtype))
        updates, _ = optimizer.update(grads, state, params)
        return loss_fn(optax.apply_updates(params, updates), batch)

      return batched_map(one_rate, lrs, chunk_size) - loss_pre

    return jax.lax.map(one_subsample, indices)

  return all_deltas


def find_lr(
  loss_fn: Callable[[PyTree, PyTree], jax.Array],
  params: PyTree,
  data: PyTree,
  *,
  optimizer: optax.GradientTransformation | None = None,
  lr_min: float = 1e-6,
  lr_max: float = 1.0,
  num_lrs: int = 100,
  num_subsamples: int = 100,
  batch_size: int = 32,
  spacing: str = "log",
  seed: int = 0,
  chunk_size: int | None = None,
  memory_budget_bytes: int = 2**30,
) -> LRFinderResult:
  """Measures one-step loss differentials over a grid of learning rates.

  For each of ``num_subsamples`` subsamples ``B_m`` (``batch_size`` distinct examples, see
  :func:`subsample_indices`) and each rate ``eta_k`` of the grid, one step of ``optimizer`` is
  taken from ``params`` (with a freshly initialised optimizer state) and
  ``dL[m, k] = L(params_k'; B_m) - L(params; B_m)`` is recorded (A. Wu, ``autolrtuner``).

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``, with ``batch`` a slice of ``data``.
    params: the parameters to step from.
    data: a pytree of arrays sharing a leading example axis.
    optimizer: an optax optimizer built with ``optax.inject_hyperparams`` and a constant
      ``learning_rate``; its rate is set to each grid value with ``optax.tree_utils.tree_set``.
      Default: plain SGD.
    lr_min, lr_max: the ends of the grid (both included).
    num_lrs: ``K``, the number of grid points.
    num_subsamples: ``M``, the number of subsamples.
    batch_size: the examples per subsample, at most the number of examples.
    spacing: ``'log'`` (geometric grid) or ``'linear'``.
    seed: the seed of the subsample draw.
    chunk_size: the number of rates evaluated together by ``vmap``; default: as many as fit
      ``memory_budget_bytes``, counting ``2 * params + optimizer state`` bytes per rate.
    memory_budget_bytes: the budget for the automatic ``chunk_size``.

  Returns:
    An :class:`LRFinderResult`.

  >>> import jax.numpy as jnp
  >>> loss = lambda w, b: 0.5 * 4.0 * jnp.mean((w - b) ** 2)
  >>> r = find_lr(loss, jnp.zeros(()), jnp.ones((8,)), lr_min=0.05, lr_max=0.6, num_lrs=12,
  ...             spacing='linear', num_subsamples=2, batch_size=4)
  >>> r.best('mean'), r.best('max')
  (0.25, 0.5)
  """
  if spacing not in SPACINGS:
    raise ValueError(f"find_lr: spacing must be one of {SPACINGS}, got {spacing!r}")
  if not lr_min < lr_max:
    raise ValueError(f"find_lr: lr_min must be < lr_max, got lr_min={lr_min}, lr_max={lr_max}")
  if spacing == "log" and lr_min <= 0:
    raise ValueError(f"find_lr: lr_min must be > 0 with spacing='log', got {lr_min}")
  if num_lrs < 1:
    raise ValueError(f"find_lr: num_lrs must be >= 1, got {num_lrs}")
  if num_subsamples < 1:
    raise ValueError(f"find_lr: num_subsamples must be >= 1, got {num_subsamples}")
  num_examples = _num_examples(data)
  if not 1 <= batch_size <= num_examples:
    raise ValueError(
      f"find_lr: batch_size must be in [1, {num_examples}] (the number of "
      f"examples), got {batch_size}"
    )
  if chunk_size is not None and chunk_size < 1:
    raise ValueError(f"find_lr: chunk_size must be >= 1 or None, got {chunk_size}")
  if optimizer is None:
    optimizer = _default_optimizer()
  check_injected_learning_rate(optimizer, params, "find_lr")

  lrs = _lr_grid(lr_min, lr_max, num_lrs, spacing)
  indices = subsample_indices(seed, num_examples, num_subsamples, batch_size)
  if chunk_size is None:
    state_shape = jax.eval_shape(optimizer.init, params)
    chunk_size = auto_chunk_size(
      2 * _tree_bytes(params) + _tree_bytes(state_shape), num_lrs, memory_budget_bytes
    )

  all_deltas = cached_jit(_make_all_deltas, loss_fn, optimizer, chunk_size)
  deltas = all_deltas(params, data, jnp.asarray(indices), jnp.asarray(lrs))
  return LRFinderResult(lrs=lrs, deltas=np.asarray(deltas), indices=indices)
