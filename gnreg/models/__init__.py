"""The model zoo: ``create(name, num_classes=...)`` and ``available()``.

Importing a family's module registers its names.
"""

from gnreg.models import (  # noqa: F401
  cait,
  pyramidnet,
  resnet,
  shake_shake,
  swin,
  vgg,
  vit,
  wide_resnet,
)
from gnreg.models.registry import available, create, register

__all__ = ["available", "create", "register"]
