"""What the transforms and the tuners share: argument checks, the float32 norm, injected states,
parameter paths and globs, and the perturbation masks of the SAM family.

Each helper exists once here so that every transform reports a bad argument in the same words,
computes a gradient norm the same way, matches a parameter path the same way and perturbs part
of the parameters the same way.
"""

from __future__ import annotations

import fnmatch
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

# The states that optax.inject_hyperparams and inject_stateful_hyperparams leave in a chain.
INJECT_STATES = (optax.InjectStatefulHyperparamsState, optax.InjectHyperparamsState)


def concrete_scalar(where: str, name: str, value: Any) -> float | None:
  """``value`` as a float when it is a concrete number; ``None`` when it is a ``jax.Array``.

  ``optax.inject_hyperparams`` re-creates a transformation with (often traced) array
  hyperparameters, which cannot be checked in Python: only Python and NumPy numbers are
  validated. Anything else, or an array of more than one element, is a ``ValueError``
  that names ``where`` (the function) and ``name`` (the argument).
  """
  if isinstance(value, jax.Array):
    return None
  if isinstance(value, (bool, np.bool_)):
    raise ValueError(f"{where}: {name} must be a number, got {value!r}")
  if isinstance(value, (int, float, np.number, np.ndarray)):
    if np.ndim(value) != 0:
      raise ValueError(f"{where}: {name} must be a scalar, got shape {np.shape(value)}")
    return float(value)
  raise ValueError(f"{where}: {name} must be a number, got {value!r}")


def check_learning_rate(where: str, name: str, value: Any) -> None:
  """Refuses a concrete learning rate that is not finite and > 0 (traced values pass)."""
  v = concrete_scalar(where, name, value)
  if v is not None and not 0 < v < math.inf:
    raise ValueError(f"{where}: {name} must be a learning rate, finite and > 0, got {v}")


def require_grad_fn(where: str, grad_fn: Any, params: Any) -> None:
  """Refuses an ``update`` call of a transform that evaluates gradients elsewhere, when it lacks
  what it needs or sits where its second gradient cannot be right.

  gnp, looksam, gsam and exact_gnp need ``params`` (where the extra gradient is taken) and the
  keyword argument ``grad_fn: params -> grads`` on the same batch. Two optax wrappers break
  that contract, and each is refused in one line that names what to do instead:

  - ``optax.masked`` and ``optax.multi_transform`` hand the transform part of the tree (the
    rest as ``optax.MaskedNode``), while ``grad_fn`` takes the whole: use the transform's
    ``perturbation_mask``, or put the transform before the split;
  - ``optax.MultiSteps`` hands it the mean gradient of the micro-batches seen so far but the
    ``grad_fn`` of the last micro-batch only (it calls its inner chain on every micro-step
    with the running mean, and keeps the state of the last): put the transform before
    ``MultiSteps``, which then accumulates one penalised gradient per micro-batch.
  """
  if grad_fn is None:
    raise ValueError(f"{where}: update needs grad_fn=<params -> grads>, got None")
  if params is None:
    raise ValueError(f"{where}: update needs params, where the second gradient is taken, got None")
  is_masked = lambda x: isinstance(x, optax.MaskedNode)
  if any(is_masked(x) for x in jax.tree.leaves(params, is_leaf=is_masked)):
    raise ValueError(
      f"{where}: cannot run inside optax.masked or optax.multi_transform, which hand it part of "
      f"the parameters while grad_fn takes them all; perturb part of them with "
      f"gnreg.{where}(..., perturbation_mask=...), or put it before the split: "
      f"optax.chain(gnreg.{where}(...), optax.multi_transform(...))"
    )
  if _inside_multi_steps():
    raise ValueError(
      f"{where}: cannot run inside optax.MultiSteps, which hands it the micro-batches' mean "
      f"gradient with the last micro-batch's grad_fn; put it before: "
      f"optax.chain(gnreg.{where}(...), optax.MultiSteps(...)) penalises each micro-batch "
      f"(the trainer: config.sequential_groups=True with config.batch_group_size)"
    )


def _inside_multi_steps() -> bool:
  """Whether this call runs inside ``optax.MultiSteps.update`` (its frame is on the stack).

  Under ``jit`` the check runs once, while the step is traced. It finds ``MultiSteps`` however
  deep the transform sits in it (``chain``, ``inject_hyperparams``, ``apply_if_finite``), and
  never a ``MultiSteps`` that comes after the transform in a chain, whose ``update`` has not
  started yet.
  """
  code = optax.MultiSteps.update.__code__
  frame = inspect.currentframe()
  try:
    while frame is not None:
      if frame.f_code is code:
        return True
      frame = frame.f_back
    return False
  finally:
    del frame


def is_inject_state(node: Any) -> bool:
  """Whether ``node`` is the state of an ``optax.inject_hyperparams`` transformation."""
  return isinstance(node, INJECT_STATES)


def global_norm(tree: Any) -> jax.Array:
  """The global L2 norm of ``tree`` in at least float32, whatever the leaves' dtype, overflow-safe.

  bfloat16 and float16 leaves are cast up and float64 leaves keep their precision. The tree is
  divided by its largest magnitude before squaring (the norm is ``m * ||tree / m||`` with
  ``m = max |x|``), so that float32 gradients above about 1e19, whose squares overflow, and
  tiny ones, whose squares underflow, still have their norm. An infinite or NaN element gives
  an infinite or NaN norm, as the plain formula does.
  """
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros([], jnp.float32)
  dtype = jnp.result_type(jnp.float32, *leaves)
  tree = optax.tree.cast(tree, dtype)
  largest = jnp.asarray(optax.tree.norm(tree, ord="inf"), dtype)
  scale = jnp.where(jnp.isfinite(largest) & (largest > 0), largest, 1)
  norm = scale * optax.tree.norm(jax.tree.map(lambda x: x / scale, tree))
  return jnp.where(jnp.isfinite(largest), norm, largest).astype(dtype)


def param_path(path: tuple[Any, ...]) -> str:
  """Joins a JAX key path with '/'.

  For example the leaf ``tree['params']['Dense_0']['kernel']`` has the path
  ``'params/Dense_0/kernel'``.

  Dict keys and attribute names appear as themselves, sequence positions as their
  integer index (a list ``[w, b]`` has paths ``'0'`` and ``'1'``).
  """
  return jax.tree_util.keystr(path, simple=True, separator="/")


def glob_patterns(where: str, name: str, patterns: str | Sequence[str]) -> tuple[str, ...]:
  """``patterns`` as a tuple of globs (one string is one glob); refuses anything but strings."""
  patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
  for pattern in patterns:
    if not isinstance(pattern, str):
      raise ValueError(f"{where}: {name} must hold glob strings, got {pattern!r}")
  return patterns


def path_matches(path: str, patterns: Sequence[str]) -> bool:
  """Whether the '/'-joined ``path`` matches one of the ``fnmatch`` globs, case-sensitively.

  ``*`` matches any run of characters, '/' included: ``'head/*'`` matches ``'head/kernel'``
  but not ``'params/head/kernel'``; ``'*head/*'`` matches at any depth.
  """
  return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)


def check_patterns_match(label: str, patterns: Sequence[str], tree: Any) -> None:
  """Refuses a glob that matches no leaf path of ``tree``: a mistyped pattern would otherwise
  leave alone the layer it meant to name. ``label`` starts the message (``'agc: exclude'``)."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  # optax.tree_map_params calls init with a non-array placeholder; there are no paths to check.
  if not leaves or not all(hasattr(leaf, "shape") for _, leaf in leaves):
    return
  paths = [param_path(p) for p, _ in leaves]
  for pattern in patterns:
    if not any(fnmatch.fnmatchcase(path, pattern) for path in paths):
      shown = ", ".join(repr(p) for p in paths[:6]) + (", ..." if len(paths) > 6 else "")
      raise ValueError(
        f"{label} pattern {pattern!r} matches no parameter path; the paths are {shown}"
      )


def excluding(label: str, patterns: Sequence[str]) -> Callable[[Any], Any]:
  """A mask function ``params -> tree of bools``: False on the leaves whose path matches one of
  the globs, True elsewhere; a glob that matches no leaf is refused (``label`` starts the
  message). The trainer's ``gnp.perturbation_exclude`` becomes a ``perturbation_mask`` so."""

  def mask(params: Any) -> Any:
    check_patterns_match(label, patterns, params)
    return jax.tree_util.tree_map_with_path(
      lambda path, _: not path_matches(param_path(path), patterns), params
    )

  return mask


# ---------------------------------------------------------------------------------------------
# Perturbation masks: which leaves the ascent step of gnp, looksam, gsam and exact_gnp moves.

Marks = tuple[bool, ...] | None  # One bool per leaf of params, in jax.tree.leaves order.


def perturbation_marks(where: str, mask: Any, params: Any) -> Marks:
  """The leaves of ``params`` that a ``perturbation_mask`` marks, one bool per leaf in
  ``jax.tree.leaves`` order; ``None`` when ``mask`` is ``None`` (every leaf).

  ``mask`` is what optax's masks are: a pytree of bools with the structure of ``params`` or a
  prefix of it (a bool on a subtree marks all its leaves), or a callable ``params -> such a
  pytree``. The bools must be static (Python or NumPy bools). Anything else is refused in one
  line naming ``where``.
  """
  if mask is None:
    return None
  tree = mask(params) if callable(mask) else mask
  allowed = (
    "a pytree of bools with the structure of params or a prefix of it, or a callable "
    "params -> such a pytree"
  )
  try:
    # Each bool of the (prefix) mask copied onto every leaf of the subtree it stands for.
    full = jax.tree.map(lambda m, sub: jax.tree.map(lambda _: m, sub), tree, params)
  except (ValueError, TypeError):
    raise ValueError(
      f"{where}: perturbation_mask must be {allowed}; got the structure "
      f"{jax.tree.structure(tree)} for params of structure {jax.tree.structure(params)}"
    ) from None
  marks = jax.tree.leaves(full)
  for m in marks:
    if not isinstance(m, (bool, np.bool_)):
      raise ValueError(f"{where}: perturbation_mask must be {allowed}; got the leaf {m!r}")
  return tuple(bool(m) for m in marks)


def only_marked(tree: Any, marks: Marks) -> Any:
  """``tree`` with the leaves that ``marks`` leaves out set to zero (all of it when ``None``)."""
  if marks is None:
    return tree
  leaves, treedef = jax.tree.flatten(tree)
  return treedef.unflatten(
    [x if m else jnp.zeros_like(x) for x, m in zip(leaves, marks, strict=True)]
  )


def move_marked(params: Any, step: Any, marks: Marks, dtype: Any) -> Any:
  """``params + step`` on the marked leaves, added in ``dtype`` and cast back to each leaf's
  dtype; the other leaves are ``params``'s own, untouched."""
  leaves, treedef = jax.tree.flatten(params)
  steps = treedef.flatten_up_to(step)
  marks = (True,) * len(leaves) if marks is None else marks
  return treedef.unflatten(
    [
      (p.astype(dtype) + d).astype(p.dtype) if m else p
      for p, d, m in zip(leaves, steps, marks, strict=True)
    ]
  )


def over_norm(tree: Any, eps: Any, dtype: Any) -> Any:
  """``tree / (||tree|| + eps)`` in ``dtype``; a zero tree stays zero (``eps`` may be 0)."""
  denom = global_norm(tree).astype(dtype) + jnp.asarray(eps, dtype)
  # eps can round to 0 when inject_hyperparams casts it to float16; a zero tree must still
  # give zeros rather than 0 * inf = NaN.
  inv_norm = jnp.where(denom > 0, 1 / jnp.where(denom > 0, denom, 1), 0)
  return jax.tree.map(lambda x: x.astype(dtype) * inv_norm, tree)


def tree_vdot(a: Any, b: Any, dtype: Any) -> jax.Array:
  """The inner product of two trees (or lists) of the same structure, summed in ``dtype``."""
  pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  products = [jnp.vdot(x.astype(dtype), y.astype(dtype)) for x, y in pairs]
  return sum(products, jnp.zeros([], dtype))


def all_finite(tree: Any) -> jax.Array:
  """Whether every element of every leaf is finite (a scalar bool array; True for no leaves)."""
  flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)
