"""The model zoo: ``create(name, num_classes=...)`` and ``available()``.

Importing a family's module registers its names.
"""

from gnreg.models import resnet, vit, wide_resnet  # noqa: F401
from gnreg.models.registry import available, create, register

__all__ = ["available", "create", "register"]
