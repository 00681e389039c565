"""Monitoring transforms for gradient and update norms, and :func:`metrics` to read them out."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gnreg.transforms._common import INJECT_STATES, global_norm, is_inject_state
from gnreg.transforms.gnp import GNPState
from gnreg.transforms.gsam import GSAMState
from gnreg.transforms.pid import PIDState

__all__ = [
  "ClipMonitorState",
  "metrics",
  "monitor_clipping",
  "monitor_updates",
]


class ClipMonitorState(NamedTuple):
  """State of :func:`monitor_clipping`.

  Attributes:
    inner_state: the wrapped clipping transform's state.
    grad_norm: global L2 norm of the updates entering the clip (float32).
    clipped_grad_norm: global L2 norm of the updates leaving it (float32).
    clip_fired: whether the clip changed any element (bool).
  """

  inner_state: optax.OptState
  grad_norm: jax.Array
  clipped_grad_norm: jax.Array
  clip_fired: jax.Array


def _changed(before: Any, after: Any) -> jax.Array:
  """Whether any element differs; an element NaN in both counts as unchanged."""

  def leaf_changed(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.any((a != b) & ~(jnp.isnan(a) & jnp.isnan(b)))

  flags = jax.tree.leaves(jax.tree.map(leaf_changed, before, after))
  return jnp.any(jnp.stack(flags)) if flags else jnp.asarray(False)


def monitor_clipping(clip: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """Wraps a clipping transform and records the gradient norm before and after it.

  ``clip`` may be any transform, e.g. ``optax.clip_by_global_norm(1.0)``,
  ``optax.clip(0.5)``, ``gnreg.agc(...)`` (which needs ``params``, passed on with
  any extra arguments) or ``optax.identity()``. Its output is returned unchanged.
  ``clip_fired`` is true when the clip changed any element of the tree (an
  element that is NaN before and after counts as unchanged), which catches
  clipping too small to show in a rounded norm.

  Args:
    clip: the transform to monitor.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`ClipMonitorState`.

  Example:

    >>> import jax.numpy as jnp
    >>> import optax
    >>> import gnreg
    >>> tx = gnreg.monitor_clipping(optax.clip_by_global_norm(1.0))
    >>> _, state = tx.update(jnp.array([3.0, 4.0]), tx.init(jnp.zeros(2)))
    >>> print(state.grad_norm, state.clipped_grad_norm, state.clip_fired)
    5.0 1.0 True
  """
  inner = optax.with_extra_args_support(clip)

  def init_fn(params: optax.Params) -> ClipMonitorState:
    zero = jnp.zeros([], jnp.float32)
    return ClipMonitorState(inner.init(params), zero, zero, jnp.zeros([], jnp.bool_))

  def update_fn(
    updates: optax.Updates,
    state: ClipMonitorState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, ClipMonitorState]:
    clipped, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    new_state = ClipMonitorState(
      inner_state=inner_state,
      grad_norm=global_norm(updates),
      clipped_grad_norm=global_norm(clipped),
      clip_fired=_changed(updates, clipped),
    )
    return clipped, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def monitor_updates() -> optax.GradientTransformation:
  """Identity that records the global L2 norm of the updates; place it last in a chain.

  ``optax.snapshot`` under the name ``update_norm``, with the norm accumulated in float32
  (:func:`gnreg.metrics` reads it; so does ``optax.tree.get(state, "update_norm")``).

  Example:

    >>> import jax.numpy as jnp
    >>> import optax
    >>> import gnreg
    >>> tx = gnreg.monitor_updates()
    >>> _, state = tx.update(jnp.array([3.0, 4.0]), tx.init(jnp.zeros(2)))
    >>> print(optax.tree.get(state, "update_norm"))
    5.0
  """
  snapshot = optax.snapshot("update_norm", global_norm)
  # optax.snapshot's init measures the parameters; before any update there is no norm: 0.
  init_fn = lambda params: jax.tree.map(jnp.zeros_like, snapshot.init(params))
  return optax.GradientTransformation(init_fn, snapshot.update)


# Injected hyperparameters that are constants of the method, not quantities to watch.
_NOT_LOGGED = ("eps", "eps_root", "adaptive_eta")
# gnp's state holds r and alpha after its warmups: one name for each, the state's.
_REPORTED_BY_GNP = ("r", "alpha")


def _is_source(node: Any) -> bool:
  return isinstance(
    node,
    (
      ClipMonitorState,
      PIDState,
      optax.MonitorState,
      optax.SnapshotState,
      GNPState,
      GSAMState,
      *INJECT_STATES,
    ),
  )


def _scalars(node: Any) -> tuple[dict[str, Any], Any]:
  """The named scalars a state offers, and the sub-state to search further."""
  if isinstance(node, ClipMonitorState):
    values = {
      "grad_norm": node.grad_norm,
      "clipped_grad_norm": node.clipped_grad_norm,
      "clip_fired": node.clip_fired,
    }
    return values, node.inner_state
  if isinstance(node, PIDState):
    # No "pid/lr": the rate the controller sets is the injected learning_rate, read there.
    values = {
      "pid/grad_norm": node.grad_norm,
      "pid/error": node.error,
      "pid/integral": node.integral,
    }
    return values, node.inner_state
  if isinstance(node, optax.MonitorState):
    return dict(sorted(node.measurements.items())), None
  if isinstance(node, optax.SnapshotState):
    return dict(sorted(node.measurement.items())), None
  if is_inject_state(node):
    # Sorted: a state that went through jit or a checkpoint has its dict keys sorted anyway.
    # Integer hyperparameters (a seed, a warmup length) and eps are not worth a curve.
    of_gnp = isinstance(node.inner_state, GNPState)
    skipped = _NOT_LOGGED + (_REPORTED_BY_GNP if of_gnp else ())
    values = {
      f"gnp/{k}" if of_gnp else k: v
      for k, v in sorted(node.hyperparams.items())
      if k not in skipped and jnp.issubdtype(jnp.result_type(v), jnp.floating)
    }
    return values, node.inner_state
  if isinstance(node, GSAMState):
    return {"gsam/rho": node.rho}, None
  return {"gnp/r": node.r, "gnp/alpha": node.alpha}, None


def _collect(tree: Any, prefix: str, found: list[tuple[str, str, Any]]) -> None:
  """Appends ``(path, key, value)`` for every monitored scalar under ``tree``, depth first."""
  for path, node in jax.tree_util.tree_leaves_with_path(tree, is_leaf=_is_source):
    if not _is_source(node):
      continue
    where = "/".join(
      p for p in (prefix, jax.tree_util.keystr(path, simple=True, separator="/")) if p
    )
    values, sub_state = _scalars(node)
    for key, value in values.items():
      found.append((where, key, value))
    if sub_state is not None:
      _collect(sub_state, "/".join(p for p in (where, "inner_state") if p), found)


def metrics(opt_state: optax.OptState) -> dict[str, float]:
  """Every scalar worth logging in an optimizer state, as plain Python floats.

  Searches the whole state (through ``optax.chain``, ``inject_hyperparams``,
  ``MultiSteps``, ``apply_if_finite``, ``masked``/``partition`` and the wrappers
  in this package) and collects:

  - ``grad_norm``, ``clipped_grad_norm``, ``clip_fired`` (0 or 1) from each
    :class:`ClipMonitorState`, and ``update_norm`` from each
    :func:`monitor_updates`;
  - every floating-point scalar hyperparameter of an ``optax.inject_hyperparams``
    state but ``eps`` (and gnp's ``adaptive_eta``), under its own name
    (``learning_rate``, ``momentum``, ...), in name order; those of an injected
    :func:`gnreg.gnp` carry the prefix ``gnp/`` (``gnp/probability``), its ``r``
    and ``alpha`` excepted, which its state reports;
  - every measurement of ``optax.monitor`` and ``optax.snapshot``, under the
    name it was given there;
  - ``pid/grad_norm``, ``pid/error``, ``pid/integral`` from each
    :class:`gnreg.PIDState` (the rate it sets is the injected ``learning_rate``);
  - ``gsam/rho`` from each :class:`gnreg.GSAMState`: the radius of the last step;
  - ``gnp/r``, ``gnp/alpha`` from each :class:`gnreg.GNPState`: the values of the
    last step, after the warmups and the hybrid draw.

  So each value has one name.

  Non-scalar values (e.g. a vmapped, batched state) are skipped. States are
  visited depth first in pytree order, outer states before the states they wrap.
  When a key occurs more than once, the first occurrence keeps the plain key and
  each later one is named ``"<location>/<key>"``, with ``<location>`` the
  '/'-joined path of its state in ``opt_state`` (e.g. ``"1/inner_state/learning_rate"``),
  so the names depend only on the optimizer's structure. All values are fetched
  with a single ``jax.device_get``.

  Args:
    opt_state: any optax optimizer state.

  Returns:
    A dict from metric name to float.

  Example:

    >>> import jax.numpy as jnp
    >>> import optax
    >>> import gnreg
    >>> tx = optax.chain(gnreg.monitor_clipping(optax.clip_by_global_norm(1.0)),
    ...                  optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
    ...                  gnreg.monitor_updates())
    >>> _, state = tx.update(jnp.array([3.0, 4.0]), tx.init(jnp.zeros(2)))
    >>> gnreg.metrics(state)  # doctest: +NORMALIZE_WHITESPACE
    {'grad_norm': 5.0, 'clipped_grad_norm': 1.0, 'clip_fired': 1.0,
     'learning_rate': 0.1, 'update_norm': 0.1}
  """
  found: list[tuple[str, str, Any]] = []
  _collect(opt_state, "", found)
  named: dict[str, Any] = {}
  for where, key, value in found:
    if jnp.ndim(value) != 0:
      continue
    named[key if key not in named else f"{where}/{key}"] = value
  # A list, not the dict: device_get would return the dict with its keys sorted.
  fetched = jax.device_get(list(named.values()))
  return {key: float(np.asarray(v, np.float64)) for key, v in zip(named, fetched, strict=True)}
