"""Wide residual networks (Zagoruyko & Komodakis 2016, "Wide Residual Networks").

WRN-d-k for 32x32 inputs: a 3x3 conv to 16 channels, three groups of n = (d - 4) / 6
pre-activation blocks with 16k, 32k, 64k channels (strides 1, 2, 2), then BN-ReLU, global average
pooling and a linear classifier. A block is

  ``y = shortcut(x) + conv3x3(dropout(relu(BN(conv3x3_stride(relu(BN(x)))))))``

with the identity as shortcut when the shape is kept. Otherwise:

* ``shortcut='projection'`` (the authors' code): a 1x1 strided conv of ``relu(BN(x))``; 36.5M
  parameters for WRN-28-10 and 2.75M for WRN-16-4 on CIFAR-10.
* ``shortcut='pad'`` (the SAM code base, which the GNP authors use): average pooling by the
  stride, then zero channels appended; parameter-free, so 36.2M for WRN-28-10 (36,220,634) and
  2.7M for WRN-16-4. As there, the first block's shortcut reads ``relu(BN(x))`` and later ones
  read ``x``. The ``*_GNP`` names are these.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from gnreg.models import layers
from gnreg.models.registry import register_variants

__all__ = ["VARIANTS", "STEM_WIDTH", "GROUP_WIDTHS", "GROUP_STRIDES", "WideBlock", "WideResNet"]

# Zagoruyko & Komodakis 2016, Tables 1 and 4: name -> (depth d, widening factor k). Each of the
# three groups has n = (d - 4) / 6 blocks of two 3x3 convolutions.
_SIZES = {"16_4": (16, 4), "16_8": (16, 8), "28_2": (28, 2), "28_10": (28, 10), "40_10": (40, 10)}
# The three the GNP authors register.
_GNP_SIZES = ("16_4", "28_10", "40_10")
VARIANTS: dict[str, dict[str, Any]] = {
  **{f"WideResNet_{s}": {"depth": d, "width": k} for s, (d, k) in _SIZES.items()},
  **{
    f"WideResNet_{s}_GNP": {"depth": _SIZES[s][0], "width": _SIZES[s][1], "shortcut": "pad"}
    for s in _GNP_SIZES
  },
}
# Base channels of the stem and of the three groups, before widening (paper Table 1).
STEM_WIDTH = 16
GROUP_WIDTHS = (16, 32, 64)
GROUP_STRIDES = (1, 2, 2)
_SHORTCUTS = ("projection", "pad")


class WideBlock(nn.Module):
  """A pre-activation block with dropout between its two 3x3 convolutions (paper Fig. 1d)."""

  features: int
  strides: int
  dropout_rate: float
  shortcut: str
  first: bool
  dtype: Any

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    y = nn.relu(layers.batch_norm(train, dtype=self.dtype, name="bn1")(x))
    if self.strides == 1 and x.shape[-1] == self.features:
      shortcut = x
    elif self.shortcut == "projection":
      # The projection reads the pre-activated input, so it sees normalised features too.
      shortcut = layers.conv(
        self.features, 1, self.strides, dtype=self.dtype, name="shortcut_conv"
      )(y)
    else:
      shortcut = y if self.first else x
      if self.strides > 1:
        shortcut = nn.avg_pool(shortcut, (self.strides,) * 2, (self.strides,) * 2)
      extra = self.features - shortcut.shape[-1]
      shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (0, extra)))
    y = layers.conv(self.features, 3, self.strides, dtype=self.dtype, name="conv1")(y)
    y = nn.relu(layers.batch_norm(train, dtype=self.dtype, name="bn2")(y))
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    y = layers.conv(self.features, 3, dtype=self.dtype, name="conv2")(y)
    return y + shortcut


class WideResNet(nn.Module):
  """WRN-``depth``-``width`` with dropout inside each block (rng ``'dropout'``).

  Attributes:
    num_classes: number of logits.
    depth: ``6 n + 4`` layers.
    width: widening factor ``k``.
    dropout_rate: dropout between each block's two convolutions.
    shortcut: ``'projection'`` or ``'pad'`` where a block changes shape (see module doc).
    dtype: computation dtype; parameters and logits are float32.

  >>> import jax, jax.numpy as jnp
  >>> from gnreg.models import create
  >>> model = create("WideResNet_16_4", num_classes=10)
  >>> x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  >>> variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  >>> variables["params"]["stem_conv"]["kernel"].shape
  (3, 3, 3, 16)
  """

  num_classes: int
  depth: int
  width: int
  dropout_rate: float = 0.0
  shortcut: str = "projection"
  dtype: Any = jnp.float32

  def __post_init__(self) -> None:
    if self.depth < 10 or (self.depth - 4) % 6:
      raise ValueError(f"WideResNet: depth must be 6n + 4 with n >= 1, got {self.depth}")
    if self.width < 1:
      raise ValueError(f"WideResNet: width must be >= 1, got {self.width}")
    layers.check_rate("WideResNet", "dropout_rate", self.dropout_rate)
    if self.shortcut not in _SHORTCUTS:
      raise ValueError(f"WideResNet: shortcut must be one of {_SHORTCUTS}, got {self.shortcut!r}")
    super().__post_init__()

  @nn.compact
  def __call__(self, images: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    blocks_per_group = (self.depth - 4) // 6
    x = layers.conv(STEM_WIDTH, 3, dtype=self.dtype, name="stem_conv")(images.astype(self.dtype))
    for i, (base, stride) in enumerate(zip(GROUP_WIDTHS, GROUP_STRIDES, strict=True)):
      for j in range(blocks_per_group):
        x = WideBlock(
          base * self.width,
          stride if j == 0 else 1,
          self.dropout_rate,
          self.shortcut,
          first=i == j == 0,
          dtype=self.dtype,
          name=f"group{i + 1}_block{j + 1}",
        )(x, train=train)
    x = nn.relu(layers.batch_norm(train, dtype=self.dtype, name="final_bn")(x))
    x = jnp.mean(x, axis=(1, 2))
    return layers.classifier_head(x, self.num_classes)


register_variants(WideResNet, VARIANTS)
