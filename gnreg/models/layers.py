"""Convolution and batch-norm conventions shared by the ResNet-style families.

ResNet, WideResNet, PyramidNet and Shake-Shake follow PyTorch reference implementations
(torchvision, the authors' code), so the helpers here fix the places where flax's defaults differ
from them: weight init, padding, and the BatchNorm running-average constants.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn

# He et al. 2015, "Delving Deep into Rectifiers": w ~ N(0, 2 / fan_out) keeps the gradient variance
# of a ReLU network constant layer to layer; torchvision and the WRN code use this mode.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's nn.Linear default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for the classifier heads of
# the families ported from PyTorch code.
linear_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def conv(
  features: int, kernel_size: int, strides: int = 1, *, dtype: Any, name: str | None = None
) -> nn.Conv:
  """A bias-free ``kernel_size`` x ``kernel_size`` convolution (a following BN supplies the bias).

  Pads ``kernel_size // 2`` on every side as PyTorch does: flax's ``'SAME'`` pads (0, 1) for a
  stride-2 3x3 conv on an even input, which shifts the sampling grid by one pixel.
  """
  pad = kernel_size // 2
  return nn.Conv(
    features,
    (kernel_size, kernel_size),
    strides=(strides, strides),
    padding=((pad, pad), (pad, pad)),
    use_bias=False,
    dtype=dtype,
    kernel_init=conv_kernel_init,
    name=name,
  )


def batch_norm(
  train: bool, *, dtype: Any, zero_scale: bool = False, name: str | None = None
) -> nn.BatchNorm:
  """BatchNorm with PyTorch's constants: running stats ``m <- 0.9 m + 0.1 batch``, eps 1e-5.

  Batch statistics normalise in training, the running averages (collection ``'batch_stats'``) in
  evaluation. ``zero_scale`` starts gamma at 0 so a residual branch ending in this BN is the zero
  function at init and its block the identity (Goyal et al. 2017, "Accurate, Large Minibatch SGD").
  """
  return nn.BatchNorm(
    use_running_average=not train,
    momentum=0.9,
    epsilon=1e-5,
    dtype=dtype,
    scale_init=nn.initializers.zeros_init() if zero_scale else nn.initializers.ones_init(),
    name=name,
  )
