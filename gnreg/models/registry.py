"""Name -> model constructor registry, with the names the GNP authors' code uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


Constructor = Callable[..., nn.Module]


def register(name: str, **defaults: Any) -> Callable[[Constructor], Constructor]:
  """Registers ``constructor(num_classes=..., **defaults, **overrides)`` under ``name``.

  Usable as a decorator on a module class, or called directly several times on the
  same class with different ``defaults`` (one registry name per depth/width).
  """

  def decorator(constructor: Constructor) -> Constructor:
    if name in _MODELS:
      raise ValueError(f"model name {name!r} is registered twice")
    _MODELS[name] = lambda **kwargs: constructor(**{**defaults, **kwargs})
    return constructor

  return decorator


def available() -> list[str]:
  """The registered model names, sorted."""
  return sorted(_MODELS)


def create(name: str, *, num_classes: int, **overrides: Any) -> nn.Module:
  """Builds the registered model ``name`` with ``num_classes`` outputs.

  ``overrides`` replace the registered defaults (for example ``dtype`` or a ViT's
  ``patch_size``). Raises ``ValueError`` listing the valid names for an unknown one.
  """
  if name not in _MODELS:
    raise ValueError(f"model.name: unknown model {name!r}; available: {', '.join(available())}")
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes: must be a positive integer, got {num_classes!r}")
  try:
    return _MODELS[name](num_classes=num_classes, **overrides)
  except TypeError as e:  # A dataclass field that this model does not have.
    raise ValueError(f"model: {name} does not accept {sorted(overrides)} ({e})") from None
