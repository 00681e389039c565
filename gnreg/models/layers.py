"""Conventions shared by every model family.

* Signature: ``model.apply(variables, images, train=...)``; every ``__call__`` takes ``train``
  keyword-only. Shake-regularised models (:class:`ShakeRegularized`) also take
  ``true_gradient``.
* Random streams (:data:`RNG_STREAMS`): dropout draws from ``'dropout'``, stochastic depth from
  ``'drop_path'``, Shake-Shake and ShakeDrop from ``'shake'``, as in the GNP authors' trainer.
* Fields are checked in ``__post_init__``, so a bad field fails when the model is created; what
  depends on the input size is checked in ``__call__``.
* Computation runs in the model's ``dtype``; parameters are float32, and so is the classifier
  (:func:`classifier_head`) and its logits.

The convolution helpers follow the PyTorch reference implementations the ResNet-style families
were ported from (torchvision, the authors' code): weight init, padding, BatchNorm constants.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
  "RNG_STREAMS",
  "conv_kernel_init",
  "linear_kernel_init",
  "rng_streams",
  "ShakeRegularized",
  "check_rate",
  "conv",
  "batch_norm",
  "drop_path",
  "classifier_head",
]

RNG_STREAMS = ("dropout", "drop_path", "shake")

# He et al. 2015, "Delving Deep into Rectifiers": w ~ N(0, 2 / fan_out) keeps the gradient variance
# of a ReLU network constant layer to layer; torchvision and the WRN code use this mode.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's nn.Linear default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for the classifier heads of
# the families ported from PyTorch code.
linear_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# flax's nn.Dense default.
_lecun_normal = nn.initializers.lecun_normal()


def rng_streams(key: jax.Array) -> dict[str, jax.Array]:
  """One independent key per stream of :data:`RNG_STREAMS`, for ``model.apply(rngs=...)``."""
  return dict(zip(RNG_STREAMS, jax.random.split(key, len(RNG_STREAMS)), strict=True))


class ShakeRegularized(nn.Module):
  """A model whose ``__call__`` also takes ``true_gradient`` (keyword-only, default False).

  ``true_gradient=True`` makes the shake regulariser's backward pass use the forward
  coefficient, so the gradient is that of the function computed. The GNP authors' first pass
  of a penalised step uses it; their second pass and their plain steps do not. It may be a
  traced boolean scalar: gnreg's trainer passes :func:`gnreg.next_update_penalised`.
  """


def check_rate(model: str, field: str, value: float) -> None:
  """Raises ``ValueError`` unless ``0 <= value < 1`` (a dropout or drop-path rate)."""
  if not 0.0 <= value < 1.0:
    raise ValueError(f"{model}: {field} must be in [0, 1), got {value}")


def conv(
  features: int,
  kernel_size: int,
  strides: int = 1,
  *,
  dtype: Any,
  use_bias: bool = False,
  name: str | None = None,
) -> nn.Conv:
  """A ``kernel_size`` x ``kernel_size`` convolution, bias-free unless ``use_bias``.

  Without a bias by default: a following BN supplies it. Pads ``kernel_size // 2`` on every side
  as PyTorch does: flax's ``'SAME'`` pads (0, 1) for a stride-2 3x3 conv on an even input, which
  shifts the sampling grid by one pixel.
  """
  pad = kernel_size // 2
  return nn.Conv(
    features,
    (kernel_size, kernel_size),
    strides=(strides, strides),
    padding=((pad, pad), (pad, pad)),
    use_bias=use_bias,
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


def drop_path(x: jax.Array, rate: float, *, train: bool) -> jax.Array:
  """Stochastic depth (Huang et al. 2016): zero a whole residual branch per example.

  Dropout with one mask entry per example (broadcast over every other axis), rng ``'drop_path'``.
  """
  dims = tuple(range(1, x.ndim))
  return nn.Dropout(rate, broadcast_dims=dims, rng_collection="drop_path")(
    x, deterministic=not train
  )


def classifier_head(
  x: jax.Array,
  num_classes: int,
  *,
  kernel_init: Callable[..., jax.Array] = _lecun_normal,
) -> jax.Array:
  """The float32 linear classifier (submodule ``'head'``) that every family ends with.

  It is a negligible share of the compute; running it in float32 keeps the logits (and the
  softmax built on them) out of bfloat16's 8-bit mantissa.
  """
  head = nn.Dense(num_classes, dtype=jnp.float32, kernel_init=kernel_init, name="head")
  return head(x.astype(jnp.float32))
