"""The model zoo: ``create(name, num_classes=...)`` and ``available()``.

Every family module opens with its size table, ``VARIANTS`` (registered name -> fields), and
registers it with :func:`register_variants`; importing the module registers its names. The
conventions every model follows (signature, rng streams, dtypes) are in
:mod:`gnreg.models.layers`.
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
from gnreg.models.layers import RNG_STREAMS, ShakeRegularized, rng_streams
from gnreg.models.registry import available, create, register, register_variants, resolve

__all__ = [
  "RNG_STREAMS",
  "ShakeRegularized",
  "available",
  "create",
  "register",
  "register_variants",
  "resolve",
  "rng_streams",
]
