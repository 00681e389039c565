"""VGG networks (Simonyan & Zisserman 2015, arXiv:1409.1556), with or without batch norm.

Five stages of 3x3 convolutions (64, 128, 256, 512, 512 filters; 2-2-3-3-3 convolutions for
VGG-16, 2-2-4-4-4 for VGG-19), each conv followed by ReLU (BN-ReLU in the ``BN`` variants, as
in torchvision's ``vgg16_bn``) and each stage by 2x2 max pooling. Three classifier layouts:

* ``'imagenet'``: the paper's head, the 512-channel map average-pooled to 7x7 (the identity at
  224x224, as in torchvision), flattened, then Dense(4096)-ReLU-Dropout twice and
  Dense(classes). VGG-16 has 138.4M parameters at 1000 classes, VGG-19 143.7M.
* ``'cifar'``: the usual small-image head, global average pooling of the 512-channel map (which
  is 1x1 at 32x32) and a single Dense(classes): 14.7M parameters for VGG-16.
* ``'flatten'``: the GNP authors' head (the ``*_GNP`` names), the map flattened as it is into
  the two 4096-wide layers: at 32x32 the 1x1x512 map, 33.6M parameters for VGG-16
  (33,638,218); at 224x224 the same as ``'imagenet'``.

``layout=None`` picks ``'imagenet'`` for inputs of at least 112 pixels a side (a feature map of
at least 3x3 after the five poolings) and ``'cifar'`` below.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gnreg.models import layers
from gnreg.models.registry import register_variants

__all__ = ["VARIANTS", "VGG"]

# Simonyan & Zisserman 2015, Table 1: convolutions per stage (configurations D and E).
_STAGES = {"VGG16": (2, 2, 3, 3, 3), "VGG19": (2, 2, 4, 4, 4)}
VARIANTS: dict[str, dict[str, Any]] = {
  f"{name}{bn}{gnp}": {
    "stage_sizes": sizes,
    "batch_norm": bool(bn),
    **({"layout": "flatten"} if gnp else {}),
  }
  for gnp in ("", "_GNP")
  for name, sizes in _STAGES.items()
  for bn in ("", "BN")
}
_LAYOUTS = ("imagenet", "cifar", "flatten")
# torchvision's VGG init for the dense layers: N(0, 0.01).
_DENSE_INIT = nn.initializers.normal(0.01)
_HIDDEN = 4096


def _adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
  """PyTorch's ``AdaptiveAvgPool2d(size)``: bin ``i`` of ``n`` averages ``[i n / s, (i+1) n / s)``.

  Rounded outward, so bins overlap (or repeat a pixel) when ``size`` does not divide the input.
  """
  height, width = x.shape[1:3]
  if height == width == size:
    return x

  def pool_matrix(n: int) -> np.ndarray:
    matrix = np.zeros((size, n), np.float32)
    for i in range(size):
      lo, hi = (i * n) // size, -((-(i + 1) * n) // size)
      matrix[i, lo:hi] = 1.0 / (hi - lo)
    return matrix

  rows = jnp.asarray(pool_matrix(height), x.dtype)
  cols = jnp.asarray(pool_matrix(width), x.dtype)
  return jnp.einsum("ih,bhwc,jw->bijc", rows, x, cols)


class VGG(nn.Module):
  """VGG with ``stage_sizes`` 3x3 convolutions per stage and one of three heads.

  Attributes:
    num_classes: number of logits.
    stage_sizes: convolutions in each of the five stages.
    batch_norm: BN between every convolution and its ReLU.
    layout: ``'imagenet'``, ``'cifar'``, ``'flatten'`` or ``None`` (from the input size, see
      module doc).
    dropout_rate: dropout after each 4096-wide layer (rng ``'dropout'``).
    dtype: computation dtype; parameters and logits are float32.
  """

  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 3, 3, 3)
  batch_norm: bool = False
  layout: str | None = None
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32

  def __post_init__(self) -> None:
    if self.layout is not None and self.layout not in _LAYOUTS:
      raise ValueError(f"VGG: layout must be one of {_LAYOUTS} or None, got {self.layout!r}")
    if len(self.stage_sizes) != 5:
      raise ValueError(f"VGG: stage_sizes must have 5 entries, got {tuple(self.stage_sizes)}")
    layers.check_rate("VGG", "dropout_rate", self.dropout_rate)
    super().__post_init__()

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    layout = self.layout
    if layout is None:
      layout = "imagenet" if min(images.shape[1:3]) >= 112 else "cifar"
    x = jnp.asarray(images, self.dtype)
    for stage, num_convs in enumerate(self.stage_sizes):
      features = min(64 * 2**stage, 512)
      for _ in range(num_convs):
        x = layers.conv(features, 3, dtype=self.dtype, use_bias=True)(x)
        if self.batch_norm:
          x = layers.batch_norm(train, dtype=self.dtype)(x)
        x = nn.relu(x)
      x = nn.max_pool(x, (2, 2), (2, 2))
    if layout == "cifar":
      x = jnp.mean(x, axis=(1, 2))
    else:
      if layout == "imagenet":
        x = _adaptive_avg_pool(x, 7)
      x = x.reshape(x.shape[0], -1)
      for _ in range(2):
        x = nn.relu(nn.Dense(_HIDDEN, kernel_init=_DENSE_INIT, dtype=self.dtype)(x))
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    return layers.classifier_head(x, self.num_classes, kernel_init=_DENSE_INIT)


register_variants(VGG, VARIANTS)
