"""ResNets (He et al. 2016, "Deep Residual Learning for Image Recognition").

Two families share one module:

* the ImageNet family ``ResNet18`` .. ``ResNet200``: four stages of 64, 128, 256, 512 base
  channels; basic blocks (two 3x3 convs) for 18/34, bottleneck blocks (1x1, 3x3, 1x1 with 4x
  expansion) for 50 and deeper. ``stem='imagenet'`` (default) is the paper's 7x7/2 conv + 3x3/2
  max-pool; ``stem='cifar'`` replaces it by one 3x3/1 conv for 32x32 inputs.
* the CIFAR family ``ResNet20``, ``ResNet56``, ``ResNet110`` (paper Sec. 4.2): depth 6n + 2, three
  stages of n basic blocks with 16, 32, 64 channels after a 3x3 conv, and parameter-free
  shortcuts (option A), e.g. 0.27M parameters for ResNet-20. It also runs on 8x8 inputs.

Each block computes ``y = relu(shortcut(x) + F(x))`` with ``F`` ending in a BatchNorm.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from gnreg.models.layers import batch_norm, conv
from gnreg.models.registry import register

# He et al. 2016, Table 1 (conv2_x .. conv5_x blocks per stage); ResNet-200 is from He et al.
# 2016b, "Identity Mappings in Deep Residual Networks", Sec. 4.
IMAGENET_STAGES: dict[str, tuple[str, tuple[int, ...]]] = {
  "ResNet18": ("basic", (2, 2, 2, 2)),
  "ResNet34": ("basic", (3, 4, 6, 3)),
  "ResNet50": ("bottleneck", (3, 4, 6, 3)),
  "ResNet101": ("bottleneck", (3, 4, 23, 3)),
  "ResNet152": ("bottleneck", (3, 8, 36, 3)),
  "ResNet200": ("bottleneck", (3, 24, 36, 3)),
}
IMAGENET_WIDTHS = (64, 128, 256, 512)

# He et al. 2016, Sec. 4.2: n basic blocks per stage, depth 6n + 2 (the +2 are the stem conv and
# the classifier).
CIFAR_STAGES: dict[str, tuple[int, int, int]] = {
  "ResNet20": (3, 3, 3),
  "ResNet56": (9, 9, 9),
  "ResNet110": (18, 18, 18),
}
CIFAR_WIDTHS = (16, 32, 64)

# Bottleneck blocks output 4x their base width (paper Fig. 5).
_BOTTLENECK_EXPANSION = 4
_BLOCKS = ("basic", "bottleneck")
_STEMS = ("imagenet", "cifar")
_SHORTCUTS = ("projection", "pad")


class Shortcut(nn.Module):
  """The identity when shapes agree, otherwise a map to the block's output shape.

  ``'projection'`` is the paper's option B, a 1x1 strided conv + BN. ``'pad'`` is option A,
  parameter-free: subsample by the stride and append zero channels (used for CIFAR).
  """

  features: int
  strides: int
  mode: str
  dtype: Any

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    if self.strides == 1 and x.shape[-1] == self.features:
      return x
    if self.mode == "pad":
      x = x[:, :: self.strides, :: self.strides, :]
      return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, self.features - x.shape[-1])))
    x = conv(self.features, 1, self.strides, dtype=self.dtype, name="conv")(x)
    return batch_norm(train, dtype=self.dtype, name="bn")(x)


class BasicBlock(nn.Module):
  """``F(x) = BN(conv3x3(relu(BN(conv3x3_stride(x)))))``, ``features`` output channels."""

  features: int
  strides: int
  shortcut: str
  dtype: Any

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    y = conv(self.features, 3, self.strides, dtype=self.dtype, name="conv1")(x)
    y = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(y))
    y = conv(self.features, 3, dtype=self.dtype, name="conv2")(y)
    y = batch_norm(train, dtype=self.dtype, zero_scale=True, name="bn2")(y)
    s = Shortcut(self.features, self.strides, self.shortcut, self.dtype, name="shortcut")(x, train)
    return nn.relu(y + s)


class BottleneckBlock(nn.Module):
  """``F(x) = BN(conv1x1(relu(BN(conv3x3_stride(relu(BN(conv1x1(x))))))))``, 4x ``features`` out.

  The stride sits on the 3x3 conv ("ResNet v1.5", as in torchvision): same parameters as the
  paper's stride-on-1x1, but the 1x1 no longer skips three quarters of its input.
  """

  features: int
  strides: int
  shortcut: str
  dtype: Any

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    out = self.features * _BOTTLENECK_EXPANSION
    y = conv(self.features, 1, dtype=self.dtype, name="conv1")(x)
    y = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(y))
    y = conv(self.features, 3, self.strides, dtype=self.dtype, name="conv2")(y)
    y = nn.relu(batch_norm(train, dtype=self.dtype, name="bn2")(y))
    y = conv(out, 1, dtype=self.dtype, name="conv3")(y)
    y = batch_norm(train, dtype=self.dtype, zero_scale=True, name="bn3")(y)
    s = Shortcut(out, self.strides, self.shortcut, self.dtype, name="shortcut")(x, train)
    return nn.relu(y + s)


class ResNet(nn.Module):
  """A ResNet: stem, stages of residual blocks, global average pool, linear classifier.

  Stage ``i`` has ``stage_sizes[i]`` blocks of base width ``widths[i]``; its first block strides
  by 2 (except in stage 0) and every other block keeps the shape. The stem has ``widths[0]``
  channels. Computation runs in ``dtype``; parameters are float32 and logits are float32.

  >>> import jax, jax.numpy as jnp
  >>> from gnreg.models import create
  >>> model = create("ResNet20", num_classes=10)
  >>> x = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)  # a batch of 8x8 grey images
  >>> variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  >>> jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x).shape
  (2, 10)
  """

  num_classes: int
  stage_sizes: Sequence[int]
  block: str = "basic"
  widths: Sequence[int] = IMAGENET_WIDTHS
  stem: str = "imagenet"
  shortcut: str = "projection"
  dtype: Any = jnp.float32

  def __post_init__(self) -> None:
    for arg, value, allowed in (
      ("block", self.block, _BLOCKS),
      ("stem", self.stem, _STEMS),
      ("shortcut", self.shortcut, _SHORTCUTS),
    ):
      if value not in allowed:
        raise ValueError(f"ResNet: {arg} must be one of {allowed}, got {value!r}")
    if len(self.stage_sizes) != len(self.widths):
      raise ValueError(
        f"ResNet: stage_sizes and widths must have the same length, got {tuple(self.stage_sizes)}"
        f" and {tuple(self.widths)}"
      )
    super().__post_init__()

  @nn.compact
  def __call__(self, images: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    x = images.astype(self.dtype)
    if self.stem == "imagenet":
      x = conv(self.widths[0], 7, 2, dtype=self.dtype, name="stem_conv")(x)
      x = nn.relu(batch_norm(train, dtype=self.dtype, name="stem_bn")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      x = conv(self.widths[0], 3, dtype=self.dtype, name="stem_conv")(x)
      x = nn.relu(batch_norm(train, dtype=self.dtype, name="stem_bn")(x))
    block_cls = BasicBlock if self.block == "basic" else BottleneckBlock
    for i, (num_blocks, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = block_cls(width, strides, self.shortcut, self.dtype, name=f"stage{i + 1}_block{j + 1}")(
          x, train
        )
    x = jnp.mean(x, axis=(1, 2))
    # The classifier is a negligible share of the compute; running it in float32 keeps the
    # logits (and the softmax built on them) out of bfloat16's 8-bit mantissa.
    return nn.Dense(self.num_classes, dtype=jnp.float32, name="head")(x.astype(jnp.float32))


for _name, (_block, _sizes) in IMAGENET_STAGES.items():
  register(_name, stage_sizes=_sizes, block=_block, widths=IMAGENET_WIDTHS, stem="imagenet")(ResNet)

for _name, _sizes in CIFAR_STAGES.items():
  register(
    _name, stage_sizes=_sizes, block="basic", widths=CIFAR_WIDTHS, stem="cifar", shortcut="pad"
  )(ResNet)
