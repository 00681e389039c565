"""Per-example image preprocessing in TensorFlow, randomised only through stateless ops.

Every random function takes ``seed``, an int ``[2]`` tensor as ``tf.random.stateless_*`` ops
expect, so the same seed always gives the same output, whatever the parallelism of the pipeline.

* CIFAR-style: zero-pad by ``p`` pixels and take a random ``H x W`` window, then a horizontal
  flip with probability 1/2 (He et al., 2016, "Deep Residual Learning for Image Recognition").
* ImageNet-style: "Inception" random-resized crop covering 8%..100% of the image area with aspect
  ratio in [3/4, 4/3] (Szegedy et al., 2015, "Going Deeper with Convolutions"), then a flip; for
  evaluation, a central crop of ``size / (size + 32)`` of the shorter side, resized to ``size``.
* Cutout: zero a ``k x k`` square centred at a uniformly random pixel, clipped at the borders,
  applied after normalisation so the square takes the dataset mean (DeVries & Taylor, 2017,
  "Improved Regularization of Convolutional Neural Networks with Cutout").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf

# Eval crop margin: the central crop keeps size / (size + 32) of the shorter side (224 of 256).
CENTER_CROP_MARGIN = 32


def pad_and_random_crop(image: tf.Tensor, padding: int, seed: tf.Tensor) -> tf.Tensor:
  """Zero-pads ``image`` [H, W, C] by ``padding`` on each side and crops a random H x W window.

  >>> img = tf.cast(tf.reshape(tf.range(16), [4, 4, 1]), tf.uint8)
  >>> out = pad_and_random_crop(img, 1, tf.constant([0, 1]))
  >>> out.shape, out.dtype.name
  (TensorShape([4, 4, 1]), 'uint8')
  """
  if padding == 0:
    return image
  shape = tf.shape(image)
  padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
  return tf.image.stateless_random_crop(padded, shape, seed=seed)


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Flips ``image`` [H, W, C] left-right with probability 1/2."""
  return tf.image.stateless_random_flip_left_right(image, seed=seed)


def cutout(image: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
  """Zeros a ``size`` x ``size`` square of ``image`` [H, W, C] centred at a random pixel.

  The square spans rows ``[cy - size // 2, cy - size // 2 + size)`` (same for columns), clipped
  to the image, so near the border fewer than ``size**2`` pixels are zeroed.

  >>> out = cutout(tf.ones([8, 8, 1]), 2, tf.constant([0, 3]))
  >>> float(tf.reduce_sum(1.0 - out)) <= 4.0
  True
  """
  if size == 0:
    return image
  shape = tf.shape(image)
  centre = tf.random.stateless_uniform([2], seed=seed, minval=0, maxval=2**30, dtype=tf.int32)
  cy = centre[0] % shape[0]
  cx = centre[1] % shape[1]
  rows = tf.range(shape[0]) - (cy - size // 2)
  cols = tf.range(shape[1]) - (cx - size // 2)
  inside_r = (rows >= 0) & (rows < size)
  inside_c = (cols >= 0) & (cols < size)
  inside = inside_r[:, None] & inside_c[None, :]
  return tf.where(inside[:, :, None], tf.zeros_like(image), image)


def normalize(image: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
  """Maps uint8-range pixels to ``(x / 255 - mean) / std`` per channel, as float32.

  >>> normalize(tf.fill([1, 1, 1], 255), [0.5], [0.5]).numpy().ravel()
  array([1.], dtype=float32)
  """
  x = tf.cast(image, tf.float32) / 255.0
  return (x - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def to_uint8(image: tf.Tensor) -> tf.Tensor:
  """Rounds and clips float pixels in 0..255 back to uint8."""
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def resize(image: tf.Tensor, size: int, method: str = "bilinear") -> tf.Tensor:
  """Resizes ``image`` [H, W, C] to ``size`` x ``size``, keeping uint8."""
  return to_uint8(tf.image.resize(image, [size, size], method=method, antialias=True))


Window = tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]


def decode_and_crop(encoded: tf.Tensor, window_fn: Callable[[tf.Tensor], Window]) -> tf.Tensor:
  """Decodes an encoded RGB image and crops ``window_fn(shape) = (y, x, h, w)`` from it.

  JPEGs go through ``decode_and_crop_jpeg``, which decodes only the window; other formats that
  ``tf.io.decode_image`` reads (PNG, BMP, GIF) are decoded whole, then cropped.
  """

  def jpeg():
    y, x, h, w = window_fn(tf.io.extract_jpeg_shape(encoded))
    return tf.image.decode_and_crop_jpeg(encoded, tf.stack([y, x, h, w]), channels=3)

  def other():
    img = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    y, x, h, w = window_fn(tf.shape(img))
    return img[y : y + h, x : x + w, :]

  return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def center_window(shape: tf.Tensor, size: int) -> Window:
  """The central square keeping ``size / (size + 32)`` of the shorter side of ``shape``."""
  h, w = shape[0], shape[1]
  side = tf.cast(
    tf.cast(size, tf.float32) / (size + CENTER_CROP_MARGIN) * tf.cast(tf.minimum(h, w), tf.float32),
    tf.int32,
  )
  side = tf.maximum(side, 1)
  return (h - side + 1) // 2, (w - side + 1) // 2, side, side


def inception_window(shape: tf.Tensor, size: int, seed: tf.Tensor) -> Window:
  """A random window with 8%..100% of the area and aspect ratio in [3/4, 4/3].

  When 10 attempts find no such window, the sampler returns the whole image; that case falls
  back to the central crop, as in the reference ResNet-50 TPU preprocessing.
  """
  bbox = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])
  begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
    shape,
    bbox,
    seed=seed,
    min_object_covered=0.1,
    aspect_ratio_range=(3 / 4, 4 / 3),
    area_range=(0.08, 1.0),
    max_attempts=10,
    use_image_if_no_bounding_boxes=True,
  )
  sampled = (begin[0], begin[1], extent[0], extent[1])
  whole = tf.logical_and(tf.equal(extent[0], shape[0]), tf.equal(extent[1], shape[1]))
  centre = center_window(shape, size)
  return tuple(tf.where(whole, c, s) for c, s in zip(centre, sampled, strict=True))


def imagenet_train_crop(encoded: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
  """Decodes with an Inception random crop and resizes (bicubic) to ``size``; uint8 out."""
  crop = decode_and_crop(encoded, lambda shape: inception_window(shape, size, seed))
  return resize(crop, size, method="bicubic")


def imagenet_eval_crop(encoded: tf.Tensor, size: int) -> tf.Tensor:
  """Decodes the central ``size / (size + 32)`` square and resizes (bicubic) to ``size``."""
  crop = decode_and_crop(encoded, lambda shape: center_window(shape, size))
  return resize(crop, size, method="bicubic")
