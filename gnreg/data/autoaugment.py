"""AutoAugment (Cubuk et al., 2019, "AutoAugment: Learning Augmentation Policies from Data").

A policy is a list of 25 sub-policies; each sub-policy is two ``(op, probability, magnitude bin)``
steps. Per image, one sub-policy is drawn uniformly, then each of its two ops is applied with its
probability. Here both published policies are implemented, ``'cifar10'`` (Table 7 of the paper's
appendix) and ``'imagenet'`` (Table 9), with the 14 ops they use, written as TensorFlow ops on
uint8 ``[H, W, C]`` images (``C`` = 1 or 3), randomised only through stateless ops.

Magnitude bins ``m`` in 0..9 map to values as in the torchvision implementation (a random sign
for the signed ops): ShearX/Y ``0.3 m / 9``; TranslateX/Y ``(150 / 331) * side * m / 9`` pixels;
Rotate ``30 m / 9`` degrees; Brightness, Color, Contrast, Sharpness enhancement factor
``1 +/- 0.9 m / 9``; Posterize keeps ``8 - round(4 m / 9)`` bits; Solarize inverts pixels
``>= 256 (1 - m / 9)``. Geometric ops use nearest-neighbour sampling and fill uncovered pixels
with 128, as the reference TensorFlow implementation of the paper does.
Not implemented: the SVHN policy, RandAugment, and the ``Cutout``/``SolarizeAdd`` policy ops
(neither published policy uses them; Cutout is ``data.cutout``).
"""

from __future__ import annotations

import math

import tensorflow as tf

__all__ = [
  "POLICIES",
  "invert",
  "posterize",
  "solarize",
  "autocontrast",
  "equalize",
  "color",
  "contrast",
  "brightness",
  "sharpness",
  "rotate",
  "shear_x",
  "shear_y",
  "translate_x",
  "translate_y",
  "apply_op",
  "autoaugment",
]

_FILL = 128.0

# (op, probability, magnitude bin or None) pairs, from the paper's appendix tables.
POLICIES = {
  "imagenet": (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
    (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
  ),
  "cifar10": (
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
  ),
}


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """PIL ``ImageEnhance``: ``degenerate + factor (image - degenerate)``, clipped to uint8."""
  d = tf.cast(degenerate, tf.float32)
  out = d + factor * (tf.cast(image, tf.float32) - d)
  return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)


def _grayscale(image: tf.Tensor) -> tf.Tensor:
  """Luma with the channel count of ``image``."""
  if image.shape[-1] == 1:
    return image
  return tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))


def invert(image: tf.Tensor) -> tf.Tensor:
  """``255 - x``.

  >>> invert(tf.constant([[[0, 200]]], tf.uint8)).numpy().tolist()
  [[[255, 55]]]
  """
  return 255 - image


def posterize(image: tf.Tensor, bits: tf.Tensor) -> tf.Tensor:
  """Keeps the ``bits`` most significant bits of each pixel."""
  shift = tf.cast(8 - bits, tf.uint8)
  return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def solarize(image: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
  """Inverts the pixels ``>= threshold``."""
  return tf.where(tf.cast(image, tf.float32) >= threshold, 255 - image, image)


def autocontrast(image: tf.Tensor) -> tf.Tensor:
  """Stretches each channel linearly so its min maps to 0 and its max to 255."""
  x = tf.cast(image, tf.float32)
  lo = tf.reduce_min(x, axis=[0, 1])
  hi = tf.reduce_max(x, axis=[0, 1])
  scale = tf.where(hi > lo, 255.0 / tf.maximum(hi - lo, 1.0), 1.0)
  offset = tf.where(hi > lo, lo, 0.0)
  return tf.cast(tf.clip_by_value(tf.round((x - offset) * scale), 0.0, 255.0), tf.uint8)


def _equalize_channel(channel: tf.Tensor) -> tf.Tensor:
  # PIL ImageOps.equalize: a lookup table from the cumulative histogram, with the most frequent
  # top value excluded from the step so a near-constant channel is left alone.
  x = tf.cast(channel, tf.int32)
  hist = tf.histogram_fixed_width(x, [0, 255], nbins=256)
  nonzero = tf.boolean_mask(hist, hist > 0)
  step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255

  def equalized():
    lut = (tf.cumsum(hist) + step // 2) // tf.maximum(step, 1)
    lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
    return tf.gather(lut, x)

  return tf.cast(tf.cond(step == 0, lambda: x, equalized), tf.uint8)


def equalize(image: tf.Tensor) -> tf.Tensor:
  """Histogram-equalises each channel."""
  return tf.stack([_equalize_channel(image[..., c]) for c in range(image.shape[-1])], axis=-1)


def color(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Saturation: blends with the greyscale image (identity for 1 channel)."""
  return _blend(_grayscale(image), image, factor)


def contrast(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Blends with a constant image of the mean luma."""
  mean = tf.reduce_mean(tf.cast(_grayscale(image)[..., 0], tf.float32))
  return _blend(tf.fill(tf.shape(image), mean), image, factor)


def brightness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Blends with black."""
  return _blend(tf.zeros_like(image), image, factor)


def sharpness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Blends with PIL's SMOOTH-filtered image (3x3 kernel, centre 5, others 1, /13); borders kept."""
  c = image.shape[-1]
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, c, 1])
  x = tf.cast(image, tf.float32)[None]
  smooth = tf.nn.depthwise_conv2d(x, kernel, strides=[1, 1, 1, 1], padding="VALID")[0]
  smooth = tf.clip_by_value(tf.round(smooth), 0.0, 255.0)
  inner = tf.pad(tf.ones_like(smooth, tf.bool), [[1, 1], [1, 1], [0, 0]])
  degenerate = tf.where(inner, tf.pad(smooth, [[1, 1], [1, 1], [0, 0]]), x[0])
  return _blend(degenerate, image, factor)


def _transform(image: tf.Tensor, matrix: list[tf.Tensor]) -> tf.Tensor:
  """Samples ``image`` at ``M (x, y, 1)`` for each output pixel ``(x, y)``; M is 2x3 row-major."""
  transform = tf.cast(tf.stack([*matrix, 0.0, 0.0]), tf.float32)[None]
  out = tf.raw_ops.ImageProjectiveTransformV3(
    images=image[None],
    transforms=transform,
    output_shape=tf.shape(image)[:2],
    fill_value=_FILL,
    interpolation="NEAREST",
    fill_mode="CONSTANT",
  )
  return out[0]


def rotate(image: tf.Tensor, degrees: tf.Tensor) -> tf.Tensor:
  """Rotates about the image centre."""
  theta = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
  h = tf.cast(tf.shape(image)[0], tf.float32) - 1.0
  w = tf.cast(tf.shape(image)[1], tf.float32) - 1.0
  cos, sin = tf.cos(theta), tf.sin(theta)
  x_offset = (w - (cos * w - sin * h)) / 2.0
  y_offset = (h - (sin * w + cos * h)) / 2.0
  return _transform(image, [cos, -sin, x_offset, sin, cos, y_offset])


def shear_x(image: tf.Tensor, level: tf.Tensor) -> tf.Tensor:
  """Output ``(x, y)`` reads input ``(x + level y, y)``."""
  return _transform(image, [1.0, level, 0.0, 0.0, 1.0, 0.0])


def shear_y(image: tf.Tensor, level: tf.Tensor) -> tf.Tensor:
  """Output ``(x, y)`` reads input ``(x, y + level x)``."""
  return _transform(image, [1.0, 0.0, 0.0, level, 1.0, 0.0])


def translate_x(image: tf.Tensor, pixels: tf.Tensor) -> tf.Tensor:
  """Output ``(x, y)`` reads input ``(x + pixels, y)``: content moves left by ``pixels``.

  >>> img = tf.cast(tf.reshape(tf.range(1, 5), [1, 4, 1]), tf.uint8)
  >>> translate_x(img, 1.0).numpy().ravel().tolist()
  [2, 3, 4, 128]
  """
  return _transform(image, [1.0, 0.0, pixels, 0.0, 1.0, 0.0])


def translate_y(image: tf.Tensor, pixels: tf.Tensor) -> tf.Tensor:
  """Output ``(x, y)`` reads input ``(x, y + pixels)``."""
  return _transform(image, [1.0, 0.0, 0.0, 0.0, 1.0, pixels])


_SIGNED = {
  "ShearX",
  "ShearY",
  "TranslateX",
  "TranslateY",
  "Rotate",
  "Brightness",
  "Color",
  "Contrast",
  "Sharpness",
}


def apply_op(image: tf.Tensor, name: str, level: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
  """Applies policy op ``name`` at ``level = magnitude bin / 9`` in [0, 1]; ``sign`` is +1 or -1.

  >>> apply_op(tf.constant([[[0, 200]]], tf.uint8), 'Solarize', 1.0, 1.0).numpy().tolist()
  [[[255, 55]]]
  """
  m = tf.cast(level, tf.float32)
  v = sign * m if name in _SIGNED else m
  if name == "Invert":
    return invert(image)
  if name == "AutoContrast":
    return autocontrast(image)
  if name == "Equalize":
    return equalize(image)
  if name == "Posterize":
    return posterize(image, 8 - tf.cast(tf.round(4.0 * m), tf.int32))
  if name == "Solarize":
    return solarize(image, 256.0 * (1.0 - m))
  if name == "Color":
    return color(image, 1.0 + 0.9 * v)
  if name == "Contrast":
    return contrast(image, 1.0 + 0.9 * v)
  if name == "Brightness":
    return brightness(image, 1.0 + 0.9 * v)
  if name == "Sharpness":
    return sharpness(image, 1.0 + 0.9 * v)
  if name == "Rotate":
    return rotate(image, 30.0 * v)
  if name == "ShearX":
    return shear_x(image, 0.3 * v)
  if name == "ShearY":
    return shear_y(image, 0.3 * v)
  if name == "TranslateX":
    return translate_x(image, tf.cast(tf.shape(image)[1], tf.float32) * (150.0 / 331.0) * v)
  if name == "TranslateY":
    return translate_y(image, tf.cast(tf.shape(image)[0], tf.float32) * (150.0 / 331.0) * v)
  raise ValueError(f"autoaugment: unknown op {name!r}")


def autoaugment(image: tf.Tensor, policy: str, seed: tf.Tensor) -> tf.Tensor:
  """Applies one random sub-policy of ``POLICIES[policy]`` to uint8 ``image`` [H, W, C].

  >>> img = tf.random.stateless_uniform([8, 8, 3], [0, 1], maxval=256, dtype=tf.int32)
  >>> out = autoaugment(tf.cast(img, tf.uint8), 'cifar10', tf.constant([1, 2]))
  >>> out.shape, out.dtype.name
  (TensorShape([8, 8, 3]), 'uint8')
  """
  if policy not in POLICIES:
    raise ValueError(f"autoaugment: policy must be one of {sorted(POLICIES)}, got {policy!r}")
  sub_policies = POLICIES[policy]
  # Each step is one switch over the policy's distinct ops (plus "skip"), with the magnitude as
  # a tensor: a graph of ~14 ops instead of 25 x 2, which keeps tracing fast.
  names = sorted({name for sp in sub_policies for name, _, _ in sp})
  op_table = tf.constant([[names.index(n) for n, _, _ in sp] for sp in sub_policies], tf.int32)
  prob_table = tf.constant([[p for _, p, _ in sp] for sp in sub_policies], tf.float32)
  level_table = tf.constant(
    [[0.0 if m is None else m / 9.0 for _, _, m in sp] for sp in sub_policies], tf.float32
  )
  choice_seed, apply_seed, sign_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  choice = tf.random.stateless_uniform([], choice_seed, 0, len(sub_policies), dtype=tf.int32)
  apply_u = tf.random.stateless_uniform([2], apply_seed)
  signs = tf.where(tf.random.stateless_uniform([2], sign_seed) < 0.5, -1.0, 1.0)
  skip = len(names)

  def step(out, k):
    op = tf.where(apply_u[k] < prob_table[choice, k], op_table[choice, k], skip)
    branches = [
      lambda name=name: tf.ensure_shape(
        apply_op(out, name, level_table[choice, k], signs[k]), image.shape
      )
      for name in names
    ]
    return tf.switch_case(op, [*branches, lambda: out])

  # A fold, not a Python loop over the two steps, so the switch is traced once, not twice.
  return tf.foldl(step, tf.range(2), initializer=image)
