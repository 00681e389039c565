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
* Mixup and CutMix mix the examples of a batch in pairs, with per-example draws made by
  :func:`sample_mix` and applied to the batch by :func:`mix_pairs`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf

__all__ = [
  "CENTER_CROP_MARGIN",
  "pad_and_random_crop",
  "random_flip",
  "centred_box",
  "box_mask",
  "cutout",
  "sample_mix",
  "mix_pairs",
  "normalize",
  "to_uint8",
  "resize",
  "Window",
  "decode_and_crop",
  "center_window",
  "inception_window",
  "imagenet_train_crop",
  "imagenet_eval_crop",
]

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


def centred_box(cy: tf.Tensor, cx: tf.Tensor, box_height, box_width, height, width) -> tf.Tensor:
  """``[y0, y1, x0, x1]`` of the ``box_height`` x ``box_width`` box centred at ``(cy, cx)``.

  The box spans rows ``[cy - box_height // 2, cy - box_height // 2 + box_height)`` (columns
  likewise), clipped to the ``height`` x ``width`` image; works elementwise on batches.

  >>> centred_box(tf.constant(0), tf.constant(5), 4, 4, 8, 8).numpy()
  array([0, 2, 3, 7], dtype=int32)
  """
  y0 = cy - box_height // 2
  x0 = cx - box_width // 2
  return tf.stack(
    [
      tf.clip_by_value(y0, 0, height),
      tf.clip_by_value(y0 + box_height, 0, height),
      tf.clip_by_value(x0, 0, width),
      tf.clip_by_value(x0 + box_width, 0, width),
    ],
    axis=-1,
  )


def box_mask(box: tf.Tensor, height: int, width: int) -> tf.Tensor:
  """bool ``[..., height, width]``: True inside ``box`` ``[..., 4] = [y0, y1, x0, x1]``."""
  rows = tf.range(height)
  cols = tf.range(width)
  inside_r = (rows >= box[..., 0:1]) & (rows < box[..., 1:2])
  inside_c = (cols >= box[..., 2:3]) & (cols < box[..., 3:4])
  return inside_r[..., :, None] & inside_c[..., None, :]


def cutout(image: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
  """Zeros a ``size`` x ``size`` square of ``image`` [H, W, C] centred at a random pixel.

  The square is :func:`centred_box`'s, clipped to the image, so near the border fewer than
  ``size**2`` pixels are zeroed.

  >>> out = cutout(tf.ones([8, 8, 1]), 2, tf.constant([0, 3]))
  >>> float(tf.reduce_sum(1.0 - out)) <= 4.0
  True
  """
  if size == 0:
    return image
  shape = tf.shape(image)
  inside = box_mask(cutout_box(shape[0], shape[1], size, seed), shape[0], shape[1])
  return tf.where(inside[:, :, None], tf.zeros_like(image), image)


def cutout_box(height, width, size: int, seed: tf.Tensor) -> tf.Tensor:
  """The ``[y0, y1, x0, x1]`` square that :func:`cutout` zeros for ``seed``."""
  centre = tf.random.stateless_uniform([2], seed=seed, minval=0, maxval=2**30, dtype=tf.int32)
  return centred_box(centre[0] % height, centre[1] % width, size, size, height, width)


def sample_mix(
  seed: tf.Tensor,
  num: int,
  height: int,
  width: int,
  *,
  mixup_alpha: float,
  cutmix_alpha: float,
  probability: float,
  switch_probability: float,
) -> tuple[tf.Tensor, tf.Tensor]:
  """The draws of ``num`` examples for :func:`mix_pairs`: ``(own_weights, boxes)``.

  With probability ``probability`` an example is mixed with its partner, by CutMix with
  probability ``switch_probability`` when both alphas are positive (else by the one that is),
  by Mixup otherwise. Mixup draws ``lam ~ Beta(mixup_alpha, mixup_alpha)`` and gives
  ``own_weight = lam`` with an empty box; CutMix draws ``lam ~ Beta(cutmix_alpha,
  cutmix_alpha)`` and gives ``own_weight = 1`` with the box of ``floor(H sqrt(1 - lam))``
  x ``floor(W sqrt(1 - lam))`` centred at a uniform pixel, clipped to the image (Yun et al.,
  2019); an unmixed example gets ``own_weight = 1`` and an empty box. ``own_weights`` is
  float32 ``[num]``, ``boxes`` int32 ``[num, 4]`` of ``[y0, y1, x0, x1]``. Every draw is
  vectorised over the examples. At least one alpha must be positive.

  >>> w, boxes = sample_mix(tf.constant([0, 1]), 3, 8, 8, mixup_alpha=0.0, cutmix_alpha=1.0,
  ...                       probability=1.0, switch_probability=0.5)
  >>> w.numpy(), boxes.shape
  (array([1., 1., 1.], dtype=float32), TensorShape([3, 4]))
  """
  if not (mixup_alpha > 0 or cutmix_alpha > 0):
    raise ValueError(
      f"sample_mix: mixup_alpha or cutmix_alpha must be > 0, got {mixup_alpha}, {cutmix_alpha}"
    )
  apply_seed, switch_seed, lam_seed, centre_seed = tf.unstack(
    tf.random.experimental.stateless_split(seed, 4)
  )
  apply = tf.random.stateless_uniform([num], seed=apply_seed) < probability
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = tf.random.stateless_uniform([num], seed=switch_seed) < switch_probability
  else:
    use_cutmix = tf.fill([num], cutmix_alpha > 0)
  alpha = tf.where(use_cutmix, float(cutmix_alpha), float(mixup_alpha))
  # Beta(a, a) as G1 / (G1 + G2) with G ~ Gamma(a); float64 so that small alphas do not
  # underflow both draws to 0.
  gammas = tf.random.stateless_gamma(
    [2, num], seed=lam_seed, alpha=tf.cast(alpha, tf.float64), dtype=tf.float64
  )
  lam = tf.math.divide_no_nan(gammas[0], gammas[0] + gammas[1])
  cut = tf.sqrt(1.0 - lam)
  centre = tf.random.stateless_uniform(
    [num, 2], seed=centre_seed, minval=0, maxval=2**30, dtype=tf.int32
  )
  boxes = centred_box(
    centre[:, 0] % height,
    centre[:, 1] % width,
    tf.cast(tf.floor(height * cut), tf.int32),
    tf.cast(tf.floor(width * cut), tf.int32),
    height,
    width,
  )
  cutmix, mixup = apply & use_cutmix, apply & ~use_cutmix
  own_weights = tf.where(mixup, tf.cast(lam, tf.float32), 1.0)
  boxes = tf.where(cutmix[:, None], boxes, tf.zeros_like(boxes))
  return own_weights, boxes


def mix_pairs(
  images: tf.Tensor, labels: tf.Tensor, own_weights: tf.Tensor, boxes: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Mixes rows ``2k`` and ``2k + 1`` of a batch with each other: Mixup or CutMix per row.

  Row ``r``'s partner is row ``r ^ 1``. With ``M`` the ``[H, W]`` coefficient of row ``r``'s
  own pixels (``own_weights[r]`` outside ``boxes[r]``, 0 inside), the mixed image is
  ``M x_r + (1 - M) x_partner`` (Zhang et al., 2018, "mixup: Beyond Empirical Risk
  Minimization"; Yun et al., 2019, "CutMix"), ``mix_label = labels[partner]`` and
  ``mix_weight = 1 - mean(M)``, the partner label's weight: for CutMix the pasted area
  fraction. Returns ``(images, mix_labels, mix_weights)``; the batch size must be even.

  >>> images = tf.constant([[[[1.0]]], [[[3.0]]]])
  >>> out, mix_labels, mix_weights = mix_pairs(
  ...   images, tf.constant([0, 1]), tf.constant([0.75, 1.0]), tf.zeros([2, 4], tf.int32))
  >>> out.numpy().ravel(), mix_labels.numpy(), mix_weights.numpy()
  (array([1.5, 3. ], dtype=float32), array([1, 0], dtype=int32), array([0.25, 0.  ], dtype=float32))
  """

  def partner(x):
    shape = tf.shape(x)
    pairs = tf.reshape(x, tf.concat([[-1, 2], shape[1:]], 0))
    return tf.reshape(tf.reverse(pairs, [1]), shape)

  shape = tf.shape(images)
  inside = box_mask(boxes, shape[1], shape[2])
  own = tf.where(inside, 0.0, own_weights[:, None, None])
  mixed = own[..., None] * images + (1.0 - own[..., None]) * partner(images)
  return mixed, partner(labels), 1.0 - tf.reduce_mean(own, axis=[1, 2])


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
