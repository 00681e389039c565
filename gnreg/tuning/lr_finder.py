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

One deliberate difference from autolrtuner: every rate on every subsample steps from a
*freshly initialised* optimizer state. autolrtuner keeps one Keras optimizer for the whole
search, so Adam's moments carry over from rate to rate and from subsample to subsample, and
it leaves the compiled model at the last rate tried; its Adam curves therefore depend on the
order of the search (they differ from these by about half the curve's range), while under
plain SGD, which has no state, the two agree to float rounding.

The ``M x K`` steps run in a few jitted calls (a progress bar counts them): the gradient of
each subsample is computed once, the ``K`` rates are evaluated by ``jax.vmap`` (in chunks of
``chunk_size`` rates when memory demands it) and the subsamples by ``jax.lax.map``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import statistics
import sys
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gnreg.transforms._common import check_learning_rate
from gnreg.transforms.pid import set_injected_learning_rate
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
  "METHODS",
  "GRIDS",
  "ROUNDING_EPSILONS",
  "subsample_indices",
  "LRFinderResult",
  "find_lr",
]

METHODS = ("mean", "median", "variance", "max")
GRIDS = ("log", "linear")
# A mean differential within this many float epsilons of the pre-step loss is rounding noise:
# the two losses are sums over a batch, each rounded on its own.
ROUNDING_EPSILONS = 16
# The progress bar advances once per call; this many calls keep it live at little cost
# (without a bar, one call does it all).
_NUM_CALLS = 20


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


@dataclasses.dataclass(frozen=True)
class LRFinderResult:
  """The loss differentials of :func:`find_lr`.

  Attributes:
    lrs: ``(K,)`` the learning-rate grid.
    deltas: ``(M, K)`` ``dL = L_post - L_pre`` per subsample and rate.
    indices: ``(M, batch_size)`` the example indices of each subsample.
    pre_losses: ``(M,)`` ``L_pre`` of each subsample, the scale of its rounding error.
    grid: ``'log'`` or ``'linear'``, the spacing of ``lrs``.
    epsilon: the machine epsilon of the loss's dtype.
  """

  lrs: np.ndarray
  deltas: np.ndarray
  indices: np.ndarray
  pre_losses: np.ndarray
  grid: str = "log"
  epsilon: float = float(np.finfo(np.float32).eps)

  @property
  def rounding(self) -> float:
    """``ROUNDING_EPSILONS * epsilon * mean |L_pre|``: a smaller mean ``|dL|`` is rounding."""
    return ROUNDING_EPSILONS * self.epsilon * float(np.mean(np.abs(self.pre_losses)))

  def lowers_loss(self) -> np.ndarray:
    """``(K,)`` whether each rate's mean ``dL`` is below ``-rounding``: a real decrease."""
    return _finite(self.deltas).mean(axis=0) < -self.rounding

  def best(self, method: str = "mean") -> float:
    """The chosen learning rate, ``0.0`` with a warning when no rate lowers the loss.

    Only rates that lower the loss count: their mean ``dL`` lies below ``-rounding``, so a
    rate whose steps change nothing beyond float rounding (a zero rate, a tiny one) is never
    chosen. Non-finite differentials count as ``+inf``. A choice at either edge of the grid
    warns that the best rate may lie beyond it, and says how to widen the grid.

    Args:
      method: ``'mean'``: the rate of lowest mean ``dL``; ``'median'``: of lowest median
        ``dL``; ``'variance'``: the rate of lowest upper confidence bound
        ``mean + z s / sqrt(M)`` (see :meth:`confidence_band`) among those whose whole band
        lies below 0: the largest decrease that holds with 95% confidence, so a wide spread
        costs a rate what it would gain on average. (Taking the *smallest spread* instead, as
        autolrtuner does, always picks the smallest rate: for small rates ``dL`` and its
        spread both shrink in proportion to the rate.) ``'max'``: the largest rate whose
        ``dL`` is ``<= 0`` on every subsample.

    Returns:
      The learning rate as a Python float.
    """
    if method not in METHODS:
      raise ValueError(f"LRFinderResult.best: method must be one of {METHODS}, got {method!r}")
    d = _finite(self.deltas)
    candidates = self.lowers_loss()
    if method == "median":
      score = np.median(d, axis=0)
    elif method == "variance":
      _, _, upper = self.confidence_band()
      score = np.nan_to_num(upper, nan=np.inf)
      candidates &= score < 0
    elif method == "max":
      candidates &= np.all(d <= 0, axis=0)
      score = -self.lrs.astype(np.float64)
    else:
      score = d.mean(axis=0)
    if not candidates.any():
      warnings.warn(
        f"find_lr: no learning rate in [{self.lrs[0]:.3g}, {self.lrs[-1]:.3g}] lowers the "
        f"loss by '{method}' beyond float rounding; '{method}' returns 0.0",
        stacklevel=2,
      )
      return 0.0
    k = int(np.argmin(np.where(candidates, score, np.inf)))
    self._warn_at_edge(method, k)
    return float(self.lrs[k])

  def _warn_at_edge(self, method: str, k: int) -> None:
    last = self.lrs.size - 1
    if last == 0 or 0 < k < last:
      return
    lo, hi = float(self.lrs[0]), float(self.lrs[-1])
    if k == last:
      field, edge = "max_lr", "upper"
      widened = hi * 100 if self.grid == "log" else hi + (hi - lo)
    else:
      field, edge = "min_lr", "lower"
      widened = lo / 100 if self.grid == "log" else 0.0
    warnings.warn(
      f"find_lr: '{method}' chose {self.lrs[k]:.3g}, the {edge} edge of the grid "
      f"[{lo:.3g}, {hi:.3g}], so the best rate may lie beyond it; widen the grid: "
      f"find_lr({field}={widened:.3g}), or --config.lr_finder.{field}={widened:.3g}",
      stacklevel=3,
    )

  def choices(self) -> dict[str, float]:
    """``best(method)`` for the four methods, without their warnings."""
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
    """Writes :meth:`figure` to ``path`` as a PNG."""
    self.figure(alpha).savefig(path, format="png")

  def figure(self, alpha: float = 0.05) -> Any:
    """A matplotlib ``Figure``: mean ``dL`` against the rate with its band, zero and choices.

    The x axis is logarithmic for a log grid and linear for a linear one; the y axis shows
    the whole finite band, on a symmetric-log scale when the rises dwarf the decreases.
    """
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
    if self.grid == "log":
      ax.set_xscale("log")
    finite = np.concatenate([lower[np.isfinite(lower)], upper[np.isfinite(upper)]])
    if finite.size:
      bottom, top = min(float(finite.min()), 0.0), max(float(finite.max()), 0.0)
      if bottom < 0 and top > 10 * -bottom:
        # Diverging rates rise by orders of magnitude more than the good ones lower the
        # loss: a symmetric-log axis keeps both in view.
        ax.set_yscale("symlog", linthresh=-bottom)
      pad = 0.05 * (top - bottom) or 1.0
      ax.set_ylim(bottom - pad, top + pad)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss differential  L_post - L_pre")
    ax.set_title(f"learning-rate finder ({self.deltas.shape[0]} subsamples, {self.grid} grid)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig

  def to_json(self, path: str) -> None:
    """Writes ``lrs``, ``grid``, ``deltas`` (non-finite as ``null``) and the four choices."""
    payload = {
      "lrs": [float(x) for x in self.lrs],
      "grid": self.grid,
      "deltas": [[json_float(x) for x in row] for row in self.deltas.tolist()],
      "pre_losses": [json_float(x) for x in self.pre_losses.tolist()],
      "best": self.choices(),
    }
    with open(path, "w") as f:
      json.dump(payload, f, indent=1)


def _lr_grid(min_lr: float, max_lr: float, num_lrs: int, grid: str) -> np.ndarray:
  if grid == "log":
    return np.geomspace(min_lr, max_lr, num_lrs)
  return np.linspace(min_lr, max_lr, num_lrs)


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


def _make_deltas(
  loss_fn: Callable[[PyTree, PyTree], jax.Array],
  optimizer: optax.GradientTransformation,
  chunk_size: int,
) -> Callable:
  """The jitted ``(params, data, indices, lrs) -> ((m, K) dL, (m,) L_pre)`` of ``m`` subsamples."""

  @jax.jit
  def deltas(params, data, indices, lrs):
    opt_state = optimizer.init(params)  # Fresh for every rate and subsample (see above).

    def one_subsample(idx):
      batch = jax.tree.map(lambda x: jnp.take(x, idx, axis=0), data)
      loss_pre, grads = jax.value_and_grad(loss_fn)(params, batch)

      def one_rate(lr):
        updates, _ = optimizer.update(grads, set_injected_learning_rate(opt_state, lr), params)
        return loss_fn(optax.apply_updates(params, updates), batch)

      return batched_map(one_rate, lrs, chunk_size) - loss_pre, loss_pre

    return jax.lax.map(one_subsample, indices)

  return deltas


def find_lr(
  loss_fn: Callable[[PyTree, PyTree], jax.Array],
  params: PyTree,
  data: PyTree,
  *,
  optimizer: optax.GradientTransformation | None = None,
  min_lr: float = 1e-6,
  max_lr: float = 1.0,
  num_lrs: int = 100,
  num_subsamples: int = 100,
  batch_size: int = 32,
  grid: str = "log",
  seed: int = 0,
  chunk_size: int | None = None,
  memory_budget_bytes: int = 2**30,
  progress: bool = True,
  widen_for: str | None = None,
  max_widenings: int = 2,
) -> LRFinderResult:
  """Measures one-step loss differentials over a grid of learning rates.

  For each of ``num_subsamples`` subsamples ``B_m`` (``batch_size`` distinct examples, see
  :func:`subsample_indices`) and each rate ``eta_k`` of the grid, one step of ``optimizer`` is
  taken from ``params`` with a freshly initialised optimizer state, and
  ``dL[m, k] = L(params_k'; B_m) - L(params; B_m)`` is recorded (A. Wu, ``autolrtuner``).
  :meth:`LRFinderResult.best` turns them into a rate.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``, with ``batch`` a slice of ``data``.
    params: the parameters to step from.
    data: a pytree of arrays sharing a leading example axis.
    optimizer: an optax optimizer built with ``optax.inject_hyperparams`` and a constant
      ``learning_rate``, which is set to each grid value. Default: plain SGD.
    min_lr, max_lr: the ends of the grid (both included); ``min_lr`` may be 0 on a linear grid.
    num_lrs: ``K``, the number of grid points.
    num_subsamples: ``M``, the number of subsamples.
    batch_size: the examples per subsample, at most the number of examples.
    grid: ``'log'`` (geometric spacing) or ``'linear'``.
    seed: the seed of the subsample draw.
    chunk_size: the number of rates evaluated together by ``vmap``; default: as many as fit
      ``memory_budget_bytes``, counting ``2 * params + optimizer state`` bytes per rate.
    memory_budget_bytes: the budget for the automatic ``chunk_size``.
    progress: print a line saying what it will do, then a progress bar (with the time left),
      to stderr.
    widen_for: a method of :meth:`LRFinderResult.best`: while its rate sits at an edge of the
      grid, the grid is extended beyond that edge (a log grid by a factor of 100, a linear one
      by its own span, or down to 0) at the same spacing, on the same subsamples, and only the
      new rates are measured; each widening is said in one line on stderr. None: never.
    max_widenings: the most times the grid is extended for ``widen_for``.

  Returns:
    An :class:`LRFinderResult` (with the widened grid, if it was).

  >>> import jax.numpy as jnp
  >>> loss = lambda w, b: 0.5 * 4.0 * jnp.mean((w - b) ** 2)
  >>> r = find_lr(loss, jnp.zeros(()), jnp.ones((8,)), min_lr=0.05, max_lr=0.6, num_lrs=12,
  ...             grid='linear', num_subsamples=2, batch_size=4, progress=False)
  >>> r.best('mean'), r.best('max')
  (0.25, 0.5)
  """
  if grid not in GRIDS:
    raise ValueError(f"find_lr: grid must be one of {GRIDS}, got {grid!r}")
  check_learning_rate("find_lr", "max_lr", max_lr)
  if grid == "log" or min_lr != 0:
    check_learning_rate("find_lr", f"min_lr (0 only on a linear grid, here {grid!r})", min_lr)
  if not min_lr < max_lr:
    raise ValueError(f"find_lr: min_lr must be < max_lr, got min_lr={min_lr}, max_lr={max_lr}")
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
  if widen_for is not None and widen_for not in METHODS:
    raise ValueError(f"find_lr: widen_for must be one of {METHODS} or None, got {widen_for!r}")
  if isinstance(max_widenings, bool) or not isinstance(max_widenings, int) or max_widenings < 0:
    raise ValueError(f"find_lr: max_widenings must be an integer >= 0, got {max_widenings!r}")
  if optimizer is None:
    optimizer = _default_optimizer()
  check_tunable_optimizer(optimizer, params, "find_lr")

  lrs = _lr_grid(min_lr, max_lr, num_lrs, grid)
  indices = subsample_indices(seed, num_examples, num_subsamples, batch_size)
  if chunk_size is None:
    state_shape = jax.eval_shape(optimizer.init, params)
    chunk_size = auto_chunk_size(
      2 * tree_bytes(params) + tree_bytes(state_shape), num_lrs, memory_budget_bytes
    )
  # A few calls of equal size (the last padded with repeats) compile once and drive the bar.
  per_call = -(-num_subsamples // min(num_subsamples, _NUM_CALLS if progress else 1))
  num_calls = -(-num_subsamples // per_call)
  padded = np.concatenate([indices, indices[: num_calls * per_call - num_subsamples]])
  if progress:
    print(
      f"find_lr: {num_lrs} rates ({grid} grid, {min_lr:.3g} to {max_lr:.3g}) x "
      f"{num_subsamples} subsamples of {batch_size} examples = {num_lrs * num_subsamples} "
      f"one-step trials in {num_calls} calls; the bar shows the time left after the "
      "first (which compiles)",
      file=sys.stderr,
    )
  deltas_of = cached_jit(_make_deltas, loss_fn, optimizer, chunk_size)
  params, data = jax.device_put((params, data))

  def measure(rates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(M, len(rates))`` differentials and ``(M,)`` pre-step losses on the subsamples."""
    deltas, pre_losses, rates_dev = [], [], jnp.asarray(rates)
    with progress_bar(num_subsamples, "find_lr subsamples", progress) as bar:
      for start in range(0, num_calls * per_call, per_call):
        d, pre = deltas_of(params, data, jnp.asarray(padded[start : start + per_call]), rates_dev)
        deltas.append(np.asarray(d))
        pre_losses.append(np.asarray(pre))
        bar.update(min(per_call, num_subsamples - start))
    return np.concatenate(deltas)[:num_subsamples], np.concatenate(pre_losses)[:num_subsamples]

  deltas, pre = measure(lrs)
  result = LRFinderResult(
    lrs=lrs,
    deltas=deltas,
    indices=indices,
    pre_losses=pre,
    grid=grid,
    epsilon=float(jnp.finfo(pre.dtype).eps) if jnp.issubdtype(pre.dtype, jnp.floating) else 0.0,
  )
  for widening in range(1, max_widenings + 1 if widen_for is not None else 1):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # The edge is handled here; a rate of 0 is final.
      chosen = result.best(widen_for)
    extension = _beyond_edge(result.lrs, grid, chosen)
    if extension is None:
      break
    lo, hi = min(result.lrs[0], extension[0]), max(result.lrs[-1], extension[-1])
    if progress:
      print(
        f"find_lr: '{widen_for}' chose {chosen:.3g}, an edge of the grid [{result.lrs[0]:.3g}, "
        f"{result.lrs[-1]:.3g}]: widening it to [{lo:.3g}, {hi:.3g}] with {extension.size} "
        f"more rates (widening {widening} of at most {max_widenings})",
        file=sys.stderr,
      )
    new_deltas, _ = measure(extension)
    below = extension[0] < result.lrs[0]
    order = (extension, result.lrs) if below else (result.lrs, extension)
    columns = (new_deltas, result.deltas) if below else (result.deltas, new_deltas)
    result = dataclasses.replace(
      result, lrs=np.concatenate(order), deltas=np.concatenate(columns, axis=1)
    )
  return result


def _beyond_edge(lrs: np.ndarray, grid: str, chosen: float) -> np.ndarray | None:
  """The rates that extend ``lrs`` past the edge where ``chosen`` sits, at the grid's spacing:
  a log grid 100 times further, a linear one by its own span (down to 0 at most); None when
  ``chosen`` lies inside, is 0 (no rate lowers the loss), or the grid cannot grow there."""
  if lrs.size < 2 or chosen <= 0 or lrs[0] < chosen < lrs[-1]:
    return None
  upper = chosen >= lrs[-1]
  if grid == "log":
    ratio = lrs[-1] / lrs[-2] if upper else lrs[0] / lrs[1]
    count = math.ceil(math.log(100) / abs(math.log(ratio)) - 1e-9)  # 1e-9: float rounding.
    edge = lrs[-1] if upper else lrs[0]
    return edge * ratio ** np.arange(1, count + 1)[:: 1 if upper else -1]
  step = lrs[1] - lrs[0]
  if upper:
    return lrs[-1] + step * np.arange(1, lrs.size)
  count = int(lrs[0] / step + 1e-9)  # The whole steps that stay >= 0.
  if count == 0:
    return None
  return np.maximum(lrs[0] - step * np.arange(count, 0, -1), 0.0)
