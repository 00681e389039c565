"""ResNets (He et al. 2016, "Deep Residual Learning for Image Recognition").

Three tables share one module:

* ``IMAGENET``, ``ResNet18`` .. ``ResNet200``: four stages of 64, 128, 256, 512 base channels;
  basic blocks (two 3x3 convs) for 18/34, bottleneck blocks (1x1, 3x3, 1x1 with 4x expansion)
  for 50 and deeper. ``stem='imagenet'`` is the paper's 7x7/2 conv + 3x3/2 max-pool;
  ``stem='cifar'`` replaces it by one 3x3/1 conv for 32x32 inputs.
* ``CIFAR``, ``ResNet20``, ``ResNet56``, ``ResNet110`` (paper Sec. 4.2): depth 6n + 2, three
  stages of n basic blocks with 16, 32, 64 channels after a 3x3 conv, and parameter-free
  shortcuts (option A), e.g. 0.27M parameters for ResNet-20. It also runs on 8x8 inputs.
* ``GNP``, ``ResNet18_GNP`` .. ``ResNet200_GNP``: the GNP authors' CIFAR ResNets (Zhao et al.
  2022, github.com/zhaoyang-0204/gnp): the ImageNet stages after a 16-channel 3x3/1 stem whose BN
  has no ReLU, and biases in the basic blocks' convolutions (their projections included).

Each block computes ``y = relu(shortcut(x) + F(x))`` with ``F`` ending in a BatchNorm.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from gnreg.models import layers
from gnreg.models.registry import register_variants

__all__ = [
  "IMAGENET_WIDTHS",
  "CIFAR_WIDTHS",
  "IMAGENET",
  "CIFAR",
  "GNP",
  "VARIANTS",
  "Shortcut",
  "BasicBlock",
  "BottleneckBlock",
  "ResNet",
]

# He et al. 2016, Table 1 (conv2_x .. conv5_x blocks per stage); ResNet-200 is from He et al.
# 2016b, "Identity Mappings in Deep Residual Networks", Sec. 4.
_IMAGENET_STAGES = {
  18: ("basic", (2, 2, 2, 2)),
  34: ("basic", (3, 4, 6, 3)),
  50: ("bottleneck", (3, 4, 6, 3)),
  101: ("bottleneck", (3, 4, 23, 3)),
  152: ("bottleneck", (3, 8, 36, 3)),
  200: ("bottleneck", (3, 24, 36, 3)),
}
IMAGENET_WIDTHS = (64, 128, 256, 512)
CIFAR_WIDTHS = (16, 32, 64)

IMAGENET: dict[str, dict[str, Any]] = {
  f"ResNet{depth}": {"block": block, "stage_sizes": sizes, "stem": "imagenet"}
  for depth, (block, sizes) in _IMAGENET_STAGES.items()
}
# He et al. 2016, Sec. 4.2: n basic blocks per stage, depth 6n + 2 (the +2 are the stem conv and
# the classifier).
CIFAR: dict[str, dict[str, Any]] = {
  f"ResNet{6 * n + 2}": {
    "block": "basic",
    "stage_sizes": (n, n, n),
    "widths": CIFAR_WIDTHS,
    "stem": "cifar",
    "shortcut": "pad",
  }
  for n in (3, 9, 18)
}
GNP: dict[str, dict[str, Any]] = {
  f"{name}_GNP": {
    **fields,
    "stem": "cifar",
    "stem_width": 16,
    "stem_relu": False,
    "conv_bias": fields["block"] == "basic",
  }
  for name, fields in IMAGENET.items()
}
VARIANTS = {**IMAGENET, **CIFAR, **GNP}

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
  conv_bias: bool
  dtype: Any

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    if self.strides == 1 and x.shape[-1] == self.features:
      return x
    if self.mode == "pad":
      x = x[:, :: self.strides, :: self.strides, :]
      return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, self.features - x.shape[-1])))
    x = layers.conv(
      self.features, 1, self.strides, dtype=self.dtype, use_bias=self.conv_bias, name="conv"
    )(x)
    return layers.batch_norm(train, dtype=self.dtype, name="bn")(x)


class BasicBlock(nn.Module):
  """``F(x) = BN(conv3x3(relu(BN(conv3x3_stride(x)))))``, ``features`` output channels."""

  features: int
  strides: int
  shortcut: str
  conv_bias: bool
  dtype: Any

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    conv = lambda strides, name: layers.conv(
      self.features, 3, strides, dtype=self.dtype, use_bias=self.conv_bias, name=name
    )
    y = conv(self.strides, "conv1")(x)
    y = nn.relu(layers.batch_norm(train, dtype=self.dtype, name="bn1")(y))
    y = conv(1, "conv2")(y)
    y = layers.batch_norm(train, dtype=self.dtype, zero_scale=True, name="bn2")(y)
    s = Shortcut(
      self.features, self.strides, self.shortcut, self.conv_bias, self.dtype, name="shortcut"
    )(x, train=train)
    return nn.relu(y + s)


class BottleneckBlock(nn.Module):
  """``F(x) = BN(conv1x1(relu(BN(conv3x3_stride(relu(BN(conv1x1(x))))))))``, 4x ``features`` out.

  The stride sits on the 3x3 conv ("ResNet v1.5", as in torchvision): same parameters as the
  paper's stride-on-1x1, but the 1x1 no longer skips three quarters of its input.
  """

  features: int
  strides: int
  shortcut: str
  conv_bias: bool
  dtype: Any

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    out = self.features * _BOTTLENECK_EXPANSION
    bias = self.conv_bias
    y = layers.conv(self.features, 1, dtype=self.dtype, use_bias=bias, name="conv1")(x)
    y = nn.relu(layers.batch_norm(train, dtype=self.dtype, name="bn1")(y))
    y = layers.conv(self.features, 3, self.strides, dtype=self.dtype, use_bias=bias, name="conv2")(
      y
    )
    y = nn.relu(layers.batch_norm(train, dtype=self.dtype, name="bn2")(y))
    y = layers.conv(out, 1, dtype=self.dtype, use_bias=bias, name="conv3")(y)
    y = layers.batch_norm(train, dtype=self.dtype, zero_scale=True, name="bn3")(y)
    s = Shortcut(out, self.strides, self.shortcut, bias, self.dtype, name="shortcut")(
      x, train=train
    )
    return nn.relu(y + s)


class ResNet(nn.Module):
  """A ResNet: stem, stages of residual blocks, global average pool, linear classifier.

  Stage ``i`` has ``stage_sizes[i]`` blocks of base width ``widths[i]``; its first block strides
  by 2 (except in stage 0) and every other block keeps the shape.

  Attributes:
    num_classes: number of logits.
    stage_sizes: blocks per stage.
    block: ``'basic'`` or ``'bottleneck'``.
    widths: base channels per stage.
    stem: ``'imagenet'`` (7x7/2 conv, 3x3/2 max-pool) or ``'cifar'`` (3x3/1 conv).
    shortcut: ``'projection'`` (1x1 conv + BN) or ``'pad'`` (subsample, zero channels).
    stem_width: stem channels; ``None`` means ``widths[0]``.
    stem_relu: a ReLU after the stem's BN (the GNP authors' stem has none).
    conv_bias: biases in the blocks' convolutions (the GNP authors' basic blocks have them).
    dtype: computation dtype; parameters and logits are float32.

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
  stem_width: int | None = None
  stem_relu: bool = True
  conv_bias: bool = False
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
    if self.stem_width is not None and self.stem_width < 1:
      raise ValueError(f"ResNet: stem_width must be >= 1 or None, got {self.stem_width}")
    super().__post_init__()

  @nn.compact
  def __call__(self, images: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    x = images.astype(self.dtype)
    stem_width = self.widths[0] if self.stem_width is None else self.stem_width
    kernel, strides = (7, 2) if self.stem == "imagenet" else (3, 1)
    x = layers.conv(stem_width, kernel, strides, dtype=self.dtype, name="stem_conv")(x)
    x = layers.batch_norm(train, dtype=self.dtype, name="stem_bn")(x)
    if self.stem_relu:
      x = nn.relu(x)
    if self.stem == "imagenet":
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    block_cls = BasicBlock if self.block == "basic" else BottleneckBlock
    for i, (num_blocks, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = block_cls(
          width,
          strides,
          self.shortcut,
          self.conv_bias,
          self.dtype,
          name=f"stage{i + 1}_block{j + 1}",
        )(x, train=train)
    x = jnp.mean(x, axis=(1, 2))
    return layers.classifier_head(x, self.num_classes)


register_variants(ResNet, VARIANTS)
