"""Name -> model constructor registry; lookup ignores case, so the GNP authors' names work too."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn

__all__ = ["Constructor", "register", "register_variants", "available", "resolve", "create"]

Constructor = Callable[..., nn.Module]

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str, **defaults: Any) -> Callable[[Constructor], Constructor]:
  """Registers ``constructor(num_classes=..., **defaults, **overrides)`` under ``name``.

  Usable as a decorator on a module class, or called directly several times on the
  same class with different ``defaults`` (one registry name per depth/width).
  """

  def decorator(constructor: Constructor) -> Constructor:
    if name.casefold() in {n.casefold() for n in _MODELS}:
      raise ValueError(f"model name {name!r} is registered twice")
    _MODELS[name] = lambda **kwargs: constructor(**{**defaults, **kwargs})
    return constructor

  return decorator


def register_variants(constructor: Constructor, variants: Mapping[str, Mapping[str, Any]]) -> None:
  """Registers every ``name -> fields`` row of a family's size table."""
  for name, fields in variants.items():
    register(name, **fields)(constructor)


def available() -> list[str]:
  """The registered model names, sorted."""
  return sorted(_MODELS)


def resolve(name: str) -> str:
  """The registered spelling of ``name``, matched ignoring case (``'ViT_TI16'`` -> ``'ViT_Ti16'``).

  Raises ``ValueError`` naming the closest registered names for an unknown one.
  """
  by_folded = {n.casefold(): n for n in _MODELS}
  if isinstance(name, str) and name.casefold() in by_folded:
    return by_folded[name.casefold()]
  close = difflib.get_close_matches(str(name).casefold(), by_folded, n=3, cutoff=0.5)
  hint = f"did you mean {', '.join(by_folded[c] for c in close)}?" if close else "no close name"
  raise ValueError(
    f"model.name: unknown model {name!r}; {hint} (all names: gnreg.models.available())"
  )


def create(name: str, *, num_classes: int, **overrides: Any) -> nn.Module:
  """Builds the registered model ``name`` (any case) with ``num_classes`` outputs.

  ``overrides`` replace the registered defaults (for example ``dtype`` or a ViT's
  ``patch_size``). Raises ``ValueError`` suggesting the closest names for an unknown one.
  """
  constructor = _MODELS[resolve(name)]
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes: must be a positive integer, got {num_classes!r}")
  try:
    return constructor(num_classes=num_classes, **overrides)
  except TypeError as e:  # A dataclass field that this model does not have.
    raise ValueError(f"model: {name} does not accept {sorted(overrides)} ({e})") from None
