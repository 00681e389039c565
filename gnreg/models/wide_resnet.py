"""Wide residual networks (Zagoruyko & Komodakis 2016, "Wide Residual Networks").

WRN-d-k for 32x32 inputs: a 3x3 conv to 16 channels, three groups of n = (d - 4) / 6
pre-activation blocks with 16k, 32k, 64k channels (strides 1, 2, 2), then BN-ReLU, global average
pooling and a linear classifier. A block is

  ``y = shortcut(x) + conv3x3(dropout(relu(BN(conv3x3_stride(relu(BN(x)))))))``

with the identity as shortcut when the shape is kept, else a 1x1 strided conv of ``relu(BN(x))``
(as in the authors' code, and the PyTorch WRN used by the SAM and GNP experiments), giving
36.5M parameters for WRN-28-10 and 2.75M for WRN-16-4 on CIFAR-10.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from gnreg.models.layers import batch_norm, conv
from gnreg.models.registry import register

# Zagoruyko & Komodakis 2016, Tables 1 and 4: name -> (depth d, widening factor k). Each of the
# three groups has n = (d - 4) / 6 blocks of two 3x3 convolutions.
WIDE_RESNETS: dict[str, tuple[int, int]] = {
  "WideResNet_16_4": (16, 4),
  "WideResNet_16_8": (16, 8),
  "WideResNet_28_2": (28, 2),
  "WideResNet_28_10": (28, 10),
  "WideResNet_40_10": (40, 10),
}
# Base channels of the stem and of the three groups, before widening (paper Table 1).
STEM_WIDTH = 16
GROUP_WIDTHS = (16, 32, 64)
GROUP_STRIDES = (1, 2, 2)


class WideBlock(nn.Module):
  """A pre-activation block with dropout between its two 3x3 convolutions (paper Fig. 1d)."""

  features: int
  strides: int
  dropout: float
  dtype: Any

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    y = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(x))
    if self.strides == 1 and x.shape[-1] == self.features:
      shortcut = x
    else:
      # The projection reads the pre-activated input, so it sees normalised features too.
      shortcut = conv(self.features, 1, self.strides, dtype=self.dtype, name="shortcut_conv")(y)
    y = conv(self.features, 3, self.strides, dtype=self.dtype, name="conv1")(y)
    y = nn.relu(batch_norm(train, dtype=self.dtype, name="bn2")(y))
    y = nn.Dropout(self.dropout)(y, deterministic=not train)
    y = conv(self.features, 3, dtype=self.dtype, name="conv2")(y)
    return y + shortcut


class WideResNet(nn.Module):
  """WRN-``depth``-``width`` with dropout rate ``dropout`` inside each block (rng ``'dropout'``).

  Computation runs in ``dtype``; parameters are float32 and logits are float32.

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
  dropout: float = 0.0
  dtype: Any = jnp.float32

  def __post_init__(self) -> None:
    if self.depth < 10 or (self.depth - 4) % 6:
      raise ValueError(f"WideResNet: depth must be 6n + 4 with n >= 1, got {self.depth}")
    if self.width < 1:
      raise ValueError(f"WideResNet: width must be >= 1, got {self.width}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"WideResNet: dropout must be in [0, 1), got {self.dropout}")
    super().__post_init__()

  @nn.compact
  def __call__(self, images: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    blocks_per_group = (self.depth - 4) // 6
    x = conv(STEM_WIDTH, 3, dtype=self.dtype, name="stem_conv")(images.astype(self.dtype))
    for i, (base, stride) in enumerate(zip(GROUP_WIDTHS, GROUP_STRIDES, strict=True)):
      for j in range(blocks_per_group):
        x = WideBlock(
          base * self.width,
          stride if j == 0 else 1,
          self.dropout,
          self.dtype,
          name=f"group{i + 1}_block{j + 1}",
        )(x, train)
    x = nn.relu(batch_norm(train, dtype=self.dtype, name="final_bn")(x))
    x = jnp.mean(x, axis=(1, 2))
    # float32 classifier: negligible compute, and keeps the logits out of bfloat16.
    return nn.Dense(self.num_classes, dtype=jnp.float32, name="head")(x.astype(jnp.float32))


for _name, (_depth, _width) in WIDE_RESNETS.items():
  register(_name, depth=_depth, width=_width)(WideResNet)
