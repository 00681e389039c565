"""Tests of gnreg.data: offline digits, determinism, resume, multi-host, eval padding, sources."""

import io
import os
import socket

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from gnreg import data
from gnreg.data import augment, autoaugment, pipeline, sources
from gnreg.data import config as data_config
from gnreg.data import digits as digits_lib

DIGITS_MEAN, DIGITS_STD = 0.30550, 0.37587
# Shards one after another: the canonical order that ``index`` counts in.
_IN_ORDER = tfds.ReadConfig(interleave_cycle_length=1)


def _cfg(data_dir, **overrides):
  c = data.default_config()
  c.data_dir = str(data_dir)
  for key, value in overrides.items():
    c[key] = value
  return c


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.fixture
def no_network(monkeypatch):
  """Any attempt to open a network connection fails the test."""

  def refuse(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args}")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tfds")
  data.dataset_info(_cfg(d))
  return str(d)


@pytest.fixture(scope="module")
def canonical(digits_dir):
  """Digits splits in canonical (file) order: the order that ``index`` refers to."""
  builder = digits_lib.Digits(data_dir=digits_dir)
  out = {}
  for split in ("train", "test"):
    exs = list(
      builder.as_dataset(split, shuffle_files=False, read_config=_IN_ORDER).as_numpy_iterator()
    )
    out[split] = {k: np.stack([e[k] for e in exs]) for k in ("image", "label", "sklearn_index")}
  return out


def _normalized(images_uint8):
  return ((images_uint8.astype(np.float32) / 255.0 - DIGITS_MEAN) / DIGITS_STD).astype(np.float32)


# ----------------------------------------------------------------------------- digits / info


def test_digits_prepares_offline_into_data_dir(tmp_path, no_network):
  info = data.dataset_info(_cfg(tmp_path))
  assert info == data.DatasetInfo("digits", 10, (8, 8, 1), 1437, 360)
  assert os.path.isfile(tmp_path / "digits" / "1.0.0" / "dataset_info.json")
  # A second call reuses the prepared files.
  assert data.dataset_info(_cfg(tmp_path)) == info
  assert data.steps_per_epoch(info, 100) == 14


def test_digits_content_is_sklearn_digits_with_fixed_split(canonical):
  from sklearn.datasets import load_digits

  ref = load_digits()
  split = digits_lib.split_indices()
  for name, n in (("train", 1437), ("test", 360)):
    c = canonical[name]
    assert c["image"].shape == (n, 8, 8, 1) and c["image"].dtype == np.uint8
    assert sorted(c["sklearn_index"]) == sorted(split[name])
    expected = np.round(ref.images[c["sklearn_index"]] * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(c["image"][..., 0], expected)
    np.testing.assert_array_equal(c["label"], ref.target[c["sklearn_index"]])
  assert c["image"].max() == 255


def test_digits_normalisation_constants_match_train_split(canonical):
  x = canonical["train"]["image"].astype(np.float64) / 255.0
  assert x.mean() == pytest.approx(DIGITS_MEAN, abs=1e-4)
  assert x.std() == pytest.approx(DIGITS_STD, abs=1e-4)


def test_missing_cifar10_raises_clear_error_without_download(tmp_path, no_network):
  with pytest.raises(data.DatasetNotFoundError) as err:
    data.dataset_info(_cfg(tmp_path, name="cifar10"))
  msg = str(err.value)
  assert isinstance(err.value, ValueError)
  assert "\n" not in msg
  assert msg.startswith("data.data_dir: dataset 'cifar10' is not prepared in " + str(tmp_path))
  assert os.path.join(str(tmp_path), "cifar10") in msg
  assert f"tfds build cifar10 --data_dir={tmp_path}" in msg
  assert os.listdir(tmp_path) == []  # Nothing was written or downloaded.
  # A dataset folder without a prepared version is just as missing.
  os.makedirs(tmp_path / "cifar10")
  with pytest.raises(data.DatasetNotFoundError, match="tfds build cifar10"):
    data.train_iterator(_cfg(tmp_path, name="cifar10"), global_batch_size=8, seed=0)
  with pytest.raises(data.DatasetNotFoundError, match="manual_dir"):
    data.eval_iterator(_cfg(tmp_path, name="imagenet2012"), global_batch_size=8)


def test_config_errors_name_the_field(tmp_path):
  with pytest.raises(
    ValueError,
    match="data.name: .*valid names: digits, cifar10, cifar100, imagenet2012, imagenet_folder",
  ):
    data.dataset_info(_cfg(tmp_path, name="mnist"))
  with pytest.raises(ValueError, match=r"data.image_size: must be a positive int or None, got -3"):
    data.dataset_info(_cfg(tmp_path, image_size=-3))
  with pytest.raises(ValueError, match="data.autoaugment"):
    data.dataset_info(_cfg(tmp_path, autoaugment="svhn"))
  with pytest.raises(ValueError, match="data.cutout"):
    data.dataset_info(_cfg(tmp_path, cutout=-1))
  c = _cfg(tmp_path)
  c.shufle_buffer = 3
  with pytest.raises(ValueError, match="data.shufle_buffer: unknown field"):
    data.dataset_info(c)
  with pytest.raises(ValueError, match="data.data_dir: imagenet_folder needs"):
    c = data.default_config()
    c.name = "imagenet_folder"
    data.dataset_info(c)
  with pytest.raises(ValueError, match="divisible by process_count"):
    data.train_iterator(_cfg(tmp_path), global_batch_size=9, seed=0, process_count=2)
  with pytest.raises(ValueError, match="process_index"):
    data.eval_iterator(_cfg(tmp_path), global_batch_size=8, process_index=2, process_count=2)


# ----------------------------------------------------------------------------- training stream


G = 128  # 11 steps per epoch on digits' 1,437 training examples.
SHIFT = {"crop_padding": 1}  # The 1-pixel random shift of digits.


@pytest.fixture(scope="module")
def reference(digits_dir):
  """The first 24 batches (2 epochs + 2 steps) of a 1-process run with seed 11."""
  return _take(data.train_iterator(_cfg(digits_dir, **SHIFT), global_batch_size=G, seed=11), 24)


def test_train_batches_shapes_and_index_is_dataset_id(digits_dir, canonical, reference):
  it = data.train_iterator(_cfg(digits_dir, augment=False), global_batch_size=G, seed=11)
  plain = _take(it, 2)
  b = plain[0]
  assert b["image"].shape == (G, 8, 8, 1) and b["image"].dtype == np.float32
  assert b["label"].shape == (G,) and b["label"].dtype == np.int32
  assert b["index"].shape == (G,) and b["index"].dtype == np.int64
  for b in plain:
    np.testing.assert_allclose(
      b["image"], _normalized(canonical["train"]["image"][b["index"]]), atol=1e-6
    )
    np.testing.assert_array_equal(b["label"], canonical["train"]["label"][b["index"]])

  # Augmentation never reorders; with the shift option each image is a window of the
  # background-padded original, and most examples do move.
  background = np.float32((0.0 - DIGITS_MEAN) / DIGITS_STD)
  moved = 0
  for a, p in zip(reference[:2], plain, strict=True):
    np.testing.assert_array_equal(a["index"], p["index"])
    for x, y in zip(a["image"][..., 0], p["image"][..., 0], strict=True):
      padded = np.pad(y, 1, constant_values=background)
      windows = [padded[dy : dy + 8, dx : dx + 8] for dy in range(3) for dx in range(3)]
      assert any(np.allclose(x, w, atol=1e-6) for w in windows)
      moved += not np.allclose(x, y)
  assert moved > 100


def test_each_epoch_is_a_fresh_permutation(digits_dir, reference):
  steps = data.steps_per_epoch(data.dataset_info(_cfg(digits_dir)), G)
  assert steps == 11
  epoch0 = np.concatenate([b["index"] for b in reference[:steps]])
  epoch1 = np.concatenate([b["index"] for b in reference[steps : 2 * steps]])
  for epoch in (epoch0, epoch1):
    assert len(np.unique(epoch)) == steps * G  # No repeats within an epoch.
    assert epoch.min() >= 0 and epoch.max() < 1437
  assert not np.array_equal(epoch0, epoch1)


def test_same_seed_same_batches_different_seed_different(digits_dir, reference):
  # AutoAugment and Cutout on top of the shift: every random op of the pipeline.
  cfg = _cfg(digits_dir, autoaugment="cifar10", cutout=2, **SHIFT)
  a = _take(data.train_iterator(cfg, global_batch_size=64, seed=7), 2)
  tf.random.set_seed(1234)  # Stateless ops only: a global TF seed changes nothing.
  b = _take(data.train_iterator(cfg, global_batch_size=64, seed=7), 2)
  _assert_batches_equal(a, b)
  other = _take(data.train_iterator(_cfg(digits_dir, **SHIFT), global_batch_size=G, seed=12), 1)
  assert not np.array_equal(other[0]["index"], reference[0]["index"])
  assert not np.allclose(other[0]["image"], reference[0]["image"])


def test_resume_from_start_step_matches_fresh_run_across_epoch_boundary(digits_dir, reference):
  # Steps 9..13 cross from epoch 0 into epoch 1.
  resumed = data.train_iterator(
    _cfg(digits_dir, **SHIFT), global_batch_size=G, seed=11, start_step=9
  )
  _assert_batches_equal(_take(resumed, 5), reference[9:14])


def test_multi_host_chunks_concatenate_to_the_global_batch(digits_dir, reference):
  parts = [
    _take(
      data.train_iterator(
        _cfg(digits_dir, **SHIFT),
        global_batch_size=G,
        seed=11,
        start_step=10,
        process_index=p,
        process_count=2,
      ),
      3,
    )
    for p in range(2)
  ]
  for k in range(3):
    assert parts[0][k]["image"].shape == (G // 2, 8, 8, 1)
    joined = {key: np.concatenate([parts[0][k][key], parts[1][k][key]]) for key in parts[0][k]}
    _assert_batches_equal([joined], [reference[10 + k]])


# ----------------------------------------------------------------------------- evaluation


def _eval_real_rows(batches):
  labels = [b["label"][b["mask"] == 1.0] for b in batches]
  images = [b["image"][b["mask"] == 1.0] for b in batches]
  return np.concatenate(labels), np.concatenate(images)


def test_eval_sees_every_example_once_with_padding_mask(digits_dir, canonical):
  cfg = _cfg(digits_dir, crop_padding=1, cutout=4)  # Training options never touch eval.
  batches = list(data.eval_iterator(cfg, global_batch_size=64))
  assert len(batches) == 6  # ceil(360 / 64)
  for b in batches:
    assert b["image"].shape == (64, 8, 8, 1) and b["image"].dtype == np.float32
    assert b["label"].dtype == np.int32 and b["mask"].dtype == np.float32
  masks = np.concatenate([b["mask"] for b in batches])
  assert masks.sum() == 360 and set(np.unique(masks)) == {0.0, 1.0}
  np.testing.assert_array_equal(batches[-1]["mask"], [1.0] * 40 + [0.0] * 24)
  labels, images = _eval_real_rows(batches)
  np.testing.assert_array_equal(labels, canonical["test"]["label"])
  np.testing.assert_allclose(images, _normalized(canonical["test"]["image"]), atol=1e-6)

  per_process = [
    list(data.eval_iterator(cfg, global_batch_size=64, process_index=p, process_count=2))
    for p in range(2)
  ]
  assert [len(b) for b in per_process] == [6, 6]
  for k in range(6):
    joined = {
      key: np.concatenate([per_process[0][k][key], per_process[1][k][key]]) for key in batches[k]
    }
    _assert_batches_equal([joined], [batches[k]])


def test_eval_process_with_empty_last_chunk_still_yields_a_padded_batch(digits_dir):
  # G = 256: the last global batch has 104 rows, all in process 0's chunk of 128.
  per_process = [
    list(
      data.eval_iterator(_cfg(digits_dir), global_batch_size=256, process_index=p, process_count=2)
    )
    for p in range(2)
  ]
  assert [len(b) for b in per_process] == [2, 2]
  assert per_process[0][1]["mask"].sum() == 104
  assert per_process[1][1]["mask"].sum() == 0
  assert per_process[1][1]["image"].shape == (128, 8, 8, 1)
  assert sum(b["mask"].sum() for bs in per_process for b in bs) == 360


# ----------------------------------------------------------------------------- multi-shard path


def test_sharded_split_with_window_shuffle(tmp_path, monkeypatch):
  # The path of large splits (ImageNet): shards read in a per-epoch permuted order and
  # window shuffling. Exercised on digits prepared in 3 shards with a tiny threshold.
  builder = digits_lib.Digits(data_dir=str(tmp_path))
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(try_download_gcs=False, num_shards=3)
  )
  assert builder.info.splits["train"].num_shards == 3
  canon = list(
    builder.as_dataset("train", shuffle_files=False, read_config=_IN_ORDER).as_numpy_iterator()
  )
  canon_images = np.stack([e["image"] for e in canon])
  monkeypatch.setattr(pipeline, "FULL_SHUFFLE_MAX", 100)
  cfg = _cfg(tmp_path, augment=False, shuffle_buffer=200)
  g = 256  # 5 steps per epoch
  fresh = _take(data.train_iterator(cfg, global_batch_size=g, seed=4), 7)
  epoch0 = np.concatenate([b["index"] for b in fresh[:5]])
  assert len(np.unique(epoch0)) == 5 * g
  assert not np.array_equal(np.concatenate([b["index"] for b in fresh[5:]]), epoch0[: 2 * g])
  for b in fresh:  # Ids stay correct across shards whatever order they are read in.
    np.testing.assert_allclose(b["image"], _normalized(canon_images[b["index"]]), atol=1e-6)
  _assert_batches_equal(
    _take(data.train_iterator(cfg, global_batch_size=g, seed=4, start_step=4), 3), fresh[4:]
  )


def test_large_split_processes_read_only_their_own_share(tmp_path, monkeypatch):
  builder = digits_lib.Digits(data_dir=str(tmp_path))
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(try_download_gcs=False, num_shards=3)
  )
  lengths = list(builder.info.splits["train"].shard_lengths)
  total = sum(lengths)
  monkeypatch.setattr(pipeline, "FULL_SHUFFLE_MAX", 100)
  cfg = _cfg(tmp_path, augment=False, shuffle_buffer=200)
  g, steps = 256, total // 256
  seen = []
  for p in range(2):
    # Process p's share, from the shards that hold it and no other.
    pieces = sources.process_shards(lengths, p, 2)
    assert sum(take for _, _, take in pieces) == (p + 1) * total // 2 - p * total // 2
    stream = data.train_iterator(cfg, global_batch_size=g, seed=4, process_index=p, process_count=2)
    epoch = np.concatenate([b["index"] for b in _take(stream, steps)])
    assert len(epoch) == len(np.unique(epoch)) == steps * g // 2
    assert epoch.min() >= p * total // 2 and epoch.max() < (p + 1) * total // 2
    seen.append(epoch)
    resumed = _take(
      data.train_iterator(
        cfg, global_batch_size=g, seed=4, start_step=3, process_index=p, process_count=2
      ),
      3,
    )
    _assert_batches_equal(
      resumed,
      _take(
        data.train_iterator(cfg, global_batch_size=g, seed=4, process_index=p, process_count=2), 6
      )[3:],
    )
  assert not set(seen[0]) & set(seen[1])


# ----------------------------------------------------------------------------- image folder


def _encode(color, size, fmt):
  buf = io.BytesIO()
  Image.fromarray(np.full((size[1], size[0], 3), color, np.uint8)).save(buf, format=fmt)
  return buf.getvalue()


_COLORS = {"ant": (250, 10, 10), "cat": (10, 250, 10), "dog": (10, 10, 250)}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("imagenet")
  counts = {"train": {"ant": 3, "cat": 2, "dog": 3}, "val": {"ant": 1, "cat": 2, "dog": 2}}
  for split, per_class in counts.items():
    for cls, n in per_class.items():
      os.makedirs(root / split / cls)
      for k in range(n):
        fmt, ext = ("JPEG", "JPEG") if k % 2 == 0 else ("PNG", "png")
        size = (40 + 7 * k, 30 + 5 * k)
        (root / split / cls / f"img{k}.{ext}").write_bytes(_encode(_COLORS[cls], size, fmt))
  (root / "train" / "README.txt").write_text("not a class")
  return str(root)


def _colors_of(images):
  mean = np.array([0.485, 0.456, 0.406], np.float32)
  std = np.array([0.229, 0.224, 0.225], np.float32)
  return (images * std + mean).mean(axis=(1, 2)) * 255.0


def test_image_folder_reads_classes_by_folder_name(image_folder):
  cfg = _cfg(image_folder, name="imagenet_folder", image_size=16)
  info = data.dataset_info(cfg)
  assert info == data.DatasetInfo("imagenet_folder", 3, (16, 16, 3), 8, 5)
  batches = _take(data.train_iterator(cfg, global_batch_size=4, seed=0), 4)
  expected_ids = {0: 0, 1: 0, 2: 0, 3: 1, 4: 1, 5: 2, 6: 2, 7: 2}  # Sorted (class, file) order.
  seen = []
  for b in batches:
    assert b["image"].shape == (4, 16, 16, 3) and b["image"].dtype == np.float32
    colors = _colors_of(b["image"])
    for label, idx, color in zip(b["label"], b["index"], colors, strict=True):
      assert expected_ids[int(idx)] == label
      np.testing.assert_allclose(color, _COLORS[sorted(_COLORS)[label]], atol=6)
      seen.append(int(idx))
  assert sorted(seen[:8]) == list(range(8))  # Epoch 0 covers the folder once.

  evals = list(data.eval_iterator(cfg, global_batch_size=4))
  assert len(evals) == 2 and evals[1]["mask"].tolist() == [1.0, 0.0, 0.0, 0.0]
  labels = np.concatenate([b["label"][b["mask"] == 1] for b in evals])
  np.testing.assert_array_equal(labels, [0, 1, 1, 2, 2])


def test_image_folder_missing_train_dir(tmp_path):
  with pytest.raises(data.DatasetNotFoundError, match="no train/ folder"):
    data.dataset_info(_cfg(tmp_path, name="imagenet_folder"))


# ----------------------------------------------------------------------------- augmentations


def _seeds(n):
  return [tf.constant([s, 17], tf.int64) for s in range(n)]


def test_cifar_crop_is_a_shifted_window_of_the_padded_image():
  img = tf.reshape(tf.range(32 * 32 * 3) % 251, [32, 32, 3])
  img = tf.cast(img, tf.uint8) + 1  # No zero pixels, so padding is recognisable.
  padded = np.pad(img.numpy(), [(4, 4), (4, 4), (0, 0)])
  offsets = set()
  for seed in _seeds(20):
    out = augment.pad_and_random_crop(img, 4, seed).numpy()
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    found = [
      (dy, dx)
      for dy in range(9)
      for dx in range(9)
      if np.array_equal(out, padded[dy : dy + 32, dx : dx + 32])
    ]
    assert len(found) == 1
    offsets.add(found[0])
  assert len(offsets) > 5
  np.testing.assert_array_equal(
    augment.pad_and_random_crop(img, 4, _seeds(1)[0]),
    augment.pad_and_random_crop(img, 4, _seeds(1)[0]),
  )


def test_flip_is_identity_or_mirror_and_both_happen():
  img = tf.cast(tf.reshape(tf.range(4 * 6 * 3), [4, 6, 3]), tf.uint8)
  results = set()
  for seed in _seeds(16):
    out = augment.random_flip(img, seed).numpy()
    if np.array_equal(out, img.numpy()):
      results.add("same")
    else:
      np.testing.assert_array_equal(out, img.numpy()[:, ::-1])
      results.add("mirror")
  assert results == {"same", "mirror"}


def test_cutout_zeros_one_clipped_square():
  img = tf.ones([10, 10, 3])
  sizes = set()
  for seed in _seeds(10):
    out = augment.cutout(img, 4, seed).numpy()
    assert out.shape == (10, 10, 3) and out.dtype == np.float32
    zero = out[..., 0] == 0
    assert np.array_equal(zero, (out == 0).all(-1))  # Same square in every channel.
    rows, cols = np.nonzero(zero)
    assert zero.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert rows.max() - rows.min() < 4 and cols.max() - cols.min() < 4
    sizes.add(int(zero.sum()))
  assert 16 in sizes
  np.testing.assert_array_equal(augment.cutout(img, 0, _seeds(1)[0]), img)


def test_imagenet_crops_keep_shape_dtype_and_content():
  for fmt in ("JPEG", "PNG"):
    encoded = tf.constant(_encode((200, 100, 50), (64, 48), fmt))
    for seed in _seeds(3):
      out = augment.imagenet_train_crop(encoded, 24, seed).numpy()
      assert out.shape == (24, 24, 3) and out.dtype == np.uint8
      np.testing.assert_allclose(out.reshape(-1, 3).mean(0), (200, 100, 50), atol=6)
    out = augment.imagenet_eval_crop(encoded, 24).numpy()
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8
  # Central crop keeps 224/256 of the shorter side, centred.
  y, x, h, w = (int(v) for v in augment.center_window(tf.constant([300, 400, 3]), 224))
  assert (h, w) == (262, 262) and (y, x) == (19, 69)


def test_inception_window_stays_inside_with_valid_area_and_aspect():
  shape = tf.constant([120, 160, 3])
  for seed in _seeds(10):
    y, x, h, w = (int(v) for v in augment.inception_window(shape, 32, seed))
    assert 0 <= y and 0 <= x and y + h <= 120 and x + w <= 160
    assert h * w >= 0.08 * 120 * 160 * 0.9
    assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1


@pytest.mark.parametrize("policy", ["cifar10", "imagenet"])
@pytest.mark.parametrize("channels", [1, 3])
def test_autoaugment_keeps_shape_dtype_and_is_deterministic(policy, channels):
  img = tf.cast(
    tf.random.stateless_uniform([12, 12, channels], [1, 2], maxval=256, dtype=tf.int32), tf.uint8
  )
  # Eagerly, switch_case runs only the chosen branch, which keeps this fast; graph mode, as
  # the pipelines run it, is covered by test_same_seed_same_batches_different_seed_different.
  outs = [autoaugment.autoaugment(img, policy, seed).numpy() for seed in _seeds(12)]
  for out in outs:
    assert out.shape == (12, 12, channels) and out.dtype == np.uint8
  np.testing.assert_array_equal(autoaugment.autoaugment(img, policy, _seeds(3)[2]), outs[2])
  assert sum(not np.array_equal(o, img.numpy()) for o in outs) >= 6


def test_autoaugment_ops():
  img = tf.constant([[[0], [64]], [[128], [255]]], tf.uint8)
  np.testing.assert_array_equal(autoaugment.invert(img)[..., 0], [[255, 191], [127, 0]])
  np.testing.assert_array_equal(autoaugment.posterize(img, 2)[..., 0], [[0, 64], [128, 192]])
  np.testing.assert_array_equal(autoaugment.solarize(img, 128.0)[..., 0], [[0, 64], [127, 0]])
  low = tf.constant([[[10], [20]], [[20], [30]]], tf.uint8)
  np.testing.assert_array_equal(autoaugment.autocontrast(low)[..., 0], [[0, 128], [128, 255]])
  # 1024 pixels: 256 at 10, 512 at 20, 256 at 30; PIL's step is (1024 - 256) // 255 = 3.
  three = tf.constant(np.repeat([10, 20, 20, 30], 256).reshape(32, 32, 1), tf.uint8)
  eq = autoaugment.equalize(three).numpy()
  np.testing.assert_array_equal(np.unique(eq), [0, 85, 255])
  np.testing.assert_array_equal(eq[three.numpy() == 20], 85)
  const = tf.fill([4, 4, 3], tf.constant(77, tf.uint8))
  np.testing.assert_array_equal(autoaugment.equalize(const), const)
  np.testing.assert_array_equal(autoaugment.brightness(img, 0.0), tf.zeros_like(img))
  square = tf.cast(tf.reshape(tf.range(25), [5, 5, 1]), tf.uint8)
  np.testing.assert_array_equal(autoaugment.rotate(square, 0.0), square)
  np.testing.assert_array_equal(
    autoaugment.rotate(square, 90.0)[..., 0], np.rot90(square.numpy()[..., 0], k=1)
  )
  np.testing.assert_array_equal(autoaugment.shear_x(square, 0.0), square)
  np.testing.assert_array_equal(autoaugment.translate_y(square, 2.0)[:3], square[2:])
  assert (autoaugment.translate_y(square, 2.0).numpy()[3:] == 128).all()
  rgb = tf.constant([[[200, 40, 0]]], tf.uint8)
  gray = autoaugment.color(rgb, 0.0).numpy()
  assert gray[0, 0, 0] == gray[0, 0, 1] == gray[0, 0, 2]
  np.testing.assert_array_equal(autoaugment.sharpness(square, 1.0), square)


# ----------------------------------------------------------------------------- batch mixing


def _mix_reference(images, labels, own_weights, boxes):
  """NumPy Mixup/CutMix of rows 2k with 2k + 1, written from the papers' formulas."""
  n, h, w = images.shape[:3]
  partner = np.arange(n) ^ 1
  coefficient = np.broadcast_to(own_weights[:, None, None], (n, h, w)).copy()
  for r, (y0, y1, x0, x1) in enumerate(boxes):
    coefficient[r, y0:y1, x0:x1] = 0.0
  m = coefficient[..., None]
  mixed = m * images + (1.0 - m) * images[partner]
  return mixed, labels[partner], 1.0 - coefficient.mean(axis=(1, 2))


def test_mix_pairs_matches_numpy_reference_for_given_draws():
  rng = np.random.default_rng(0)
  n, h, w = 6, 7, 5
  images = rng.normal(size=(n, h, w, 3)).astype(np.float32)
  labels = rng.integers(0, 10, n).astype(np.int32)
  own_weights = np.array([0.3, 1.0, 1.0, 0.9, 1.0, 1.0], np.float32)
  # Mixup rows, CutMix rows (one clipped at the corner, one the whole image), unmixed rows.
  boxes = np.array(
    [[0, 0, 0, 0], [1, 4, 2, 5], [0, 2, 0, 1], [0, 0, 0, 0], [0, 7, 0, 5], [0, 0, 0, 0]], np.int32
  )
  out, mix_labels, mix_weights = (
    t.numpy() for t in augment.mix_pairs(images, labels, own_weights, boxes)
  )
  ref_images, ref_labels, ref_weights = _mix_reference(images, labels, own_weights, boxes)
  np.testing.assert_allclose(out, ref_images, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(mix_labels, ref_labels)
  np.testing.assert_allclose(mix_weights, ref_weights, rtol=1e-6)
  # CutMix's weight is the pasted area fraction; the pasted pixels are the partner's exactly.
  np.testing.assert_allclose(mix_weights[[1, 2, 4]], [9 / 35, 2 / 35, 1.0], rtol=1e-6)
  np.testing.assert_array_equal(out[1, 1:4, 2:5], images[0, 1:4, 2:5])
  np.testing.assert_array_equal(out[5], images[5] * 1.0)  # Unmixed, but the partner is.
  np.testing.assert_allclose(mix_weights[[0, 3, 5]], [0.7, 0.1, 0.0], atol=1e-6)
  # The two label weights of every row make a probability vector.
  targets = (1 - mix_weights)[:, None] * np.eye(10)[labels] + mix_weights[:, None] * np.eye(10)[
    mix_labels
  ]
  np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
  assert (targets >= 0).all()


def _draws(n, seed=5, **kwargs):
  options = {"mixup_alpha": 0.0, "cutmix_alpha": 0.0, "probability": 1.0, "switch_probability": 0.5}
  options.update(kwargs)
  weights, boxes = augment.sample_mix(tf.constant([seed, 5], tf.int64), n, 16, 12, **options)
  return weights.numpy(), boxes.numpy()


def test_sample_mix_draws_follow_the_papers():
  # Mixup: lam ~ Beta(0.4, 0.4) (mean 1/2, variance 1/(4 (2 alpha + 1)) = 0.139), no box.
  lam, boxes = _draws(300, mixup_alpha=0.4)
  assert (boxes == 0).all() and (lam >= 0).all() and (lam <= 1).all()
  assert lam.mean() == pytest.approx(0.5, abs=0.06)
  assert lam.var() == pytest.approx(1 / (4 * 1.8), abs=0.03)
  # CutMix: own weight 1, a box of floor(H sqrt(1 - lam)) x floor(W sqrt(1 - lam)) before
  # clipping; with Beta(1, 1) the unclipped area fraction is uniform, so its mean is about 1/2.
  ones, boxes = _draws(300, cutmix_alpha=1.0)
  assert (ones == 1.0).all()
  y0, y1, x0, x1 = boxes.T
  assert ((0 <= y0) & (y0 <= y1) & (y1 <= 16) & (0 <= x0) & (x0 <= x1) & (x1 <= 12)).all()
  area = (y1 - y0) * (x1 - x0) / (16 * 12)
  assert 0.2 < area.mean() < 0.5  # Below 1/2: floors and clipping at the borders shrink boxes.
  assert area.max() > 0.8
  # mix_probability: the share of examples mixed; the switch: the share of those by CutMix.
  lam, boxes = _draws(
    400, mixup_alpha=1.0, cutmix_alpha=1.0, probability=0.5, switch_probability=0.25
  )
  cut = boxes.any(axis=1)
  mixed = cut | (lam < 1.0)
  assert mixed.mean() == pytest.approx(0.5, abs=0.08)
  assert cut[mixed].mean() == pytest.approx(0.25, abs=0.08)
  assert not (cut & (lam < 1.0)).any()
  # The same seed, the same draws; another seed, others.
  np.testing.assert_array_equal(_draws(5, cutmix_alpha=1.0)[1], _draws(5, cutmix_alpha=1.0)[1])
  assert not np.array_equal(_draws(5, mixup_alpha=1.0)[0], _draws(5, 6, mixup_alpha=1.0)[0])


MIX = {"mixup_alpha": 0.4, "cutmix_alpha": 1.0, **SHIFT}


def test_mixed_training_batch_is_the_unmixed_batch_mixed_in_pairs(digits_dir):
  # Mixing has its own key: the unmixed stream of the same seed is what was mixed.
  for options, kind in (({"mixup_alpha": 0.4}, "mixup"), ({"cutmix_alpha": 1.0}, "cutmix")):
    mixed = next(data.train_iterator(_cfg(digits_dir, **options, **SHIFT), G, seed=3))
    plain = next(data.train_iterator(_cfg(digits_dir, **SHIFT), G, seed=3))
    np.testing.assert_array_equal(mixed["index"], plain["index"])
    np.testing.assert_array_equal(mixed["label"], plain["label"])
    partner = np.arange(G) ^ 1
    np.testing.assert_array_equal(mixed["mix_label"], plain["label"][partner])
    x, y, w = plain["image"], plain["image"][partner], mixed["mix_weight"]
    assert ((0 <= w) & (w <= 1)).all() and (w > 0).mean() > 0.9
    if kind == "mixup":
      ref = (1 - w)[:, None, None, None] * x + w[:, None, None, None] * y
      np.testing.assert_allclose(mixed["image"], ref, rtol=1e-5, atol=1e-5)
    else:
      # Each pixel is the example's own or its partner's, and the changed pixels lie in a
      # box of the pasted area fraction mix_weight (pixels equal in both may hide its edge).
      own, pasted = mixed["image"] == x, mixed["image"] == y
      assert (own | pasted).all()
      changed = ~own[..., 0]
      assert (changed.mean(axis=(1, 2)) <= w + 1e-6).all()
      assert (pasted[..., 0].mean(axis=(1, 2)) >= w - 1e-6).all()
      for r in np.flatnonzero(changed.any(axis=(1, 2))):
        rows, cols = np.nonzero(changed[r])
        bounding = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert bounding <= w[r] * 64 + 1e-6
      assert changed.any()


def test_cutout_blanks_its_square_after_mixing(digits_dir):
  def first(**options):
    return next(data.train_iterator(_cfg(digits_dir, **options), G, seed=5))["image"]

  mixed_cut, mixed = first(cutout=3, **MIX), first(**MIX)
  plain_cut = first(cutout=3, **SHIFT)
  # The unmixed stream's squares, blank (0, the mean) in the mixed images; the rest is mixed.
  square = plain_cut == 0
  assert square.any(axis=(1, 2, 3)).all()
  np.testing.assert_array_equal(mixed_cut == 0, square | (mixed == 0))
  np.testing.assert_array_equal(mixed_cut[~square], mixed[~square])


def test_mixed_stream_is_deterministic_resumable_and_per_host(digits_dir):
  cfg = _cfg(digits_dir, **MIX)
  fresh = _take(data.train_iterator(cfg, G, seed=11), 13)
  again = _take(data.train_iterator(cfg, G, seed=11), 13)
  _assert_batches_equal(fresh, again)
  assert fresh[0].keys() == {"image", "label", "index", "mix_label", "mix_weight"}
  # Across an epoch boundary, from a restart, and from two processes.
  _assert_batches_equal(_take(data.train_iterator(cfg, G, seed=11, start_step=10), 3), fresh[10:])
  parts = [
    _take(data.train_iterator(cfg, G, seed=11, start_step=12, process_index=p, process_count=2), 1)
    for p in range(2)
  ]
  joined = {key: np.concatenate([parts[0][0][key], parts[1][0][key]]) for key in fresh[12]}
  _assert_batches_equal([joined], fresh[12:])
  other = next(data.train_iterator(cfg, G, seed=12))
  assert not np.allclose(other["mix_weight"], fresh[0]["mix_weight"])


def test_batch_mix_mode_mixes_every_pair_with_one_draw_per_global_batch(digits_dir):
  # The GNP and SAM authors' Mixup: one weight per batch, the same on every host.
  cfg = _cfg(digits_dir, mixup_alpha=1.0, mix_mode="batch", **SHIFT)
  batches = _take(data.train_iterator(cfg, G, seed=3), 3)
  plain = next(data.train_iterator(_cfg(digits_dir, **SHIFT), G, seed=3))
  weights = [b["mix_weight"] for b in batches]
  assert all(np.ptp(w) == 0 for w in weights) and len({float(w[0]) for w in weights}) == 3
  w, partner = weights[0][0], np.arange(G) ^ 1
  ref = (1 - w) * plain["image"] + w * plain["image"][partner]
  np.testing.assert_allclose(batches[0]["image"], ref, rtol=1e-5, atol=1e-5)
  parts = [
    next(data.train_iterator(cfg, G, seed=3, process_index=p, process_count=2)) for p in range(2)
  ]
  joined = {key: np.concatenate([parts[0][key], parts[1][key]]) for key in batches[0]}
  _assert_batches_equal([joined], batches[:1])
  # With both alphas, the whole batch takes one of the two (and one CutMix box).
  both = _cfg(digits_dir, mixup_alpha=1.0, cutmix_alpha=1.0, mix_mode="batch", **SHIFT)
  for batch in _take(data.train_iterator(both, G, seed=4), 4):
    assert np.ptp(batch["mix_weight"]) == 0
  with pytest.raises(ValueError, match="data.mix_mode: must be 'elem' or 'batch', got 'pair'"):
    data.train_iterator(_cfg(digits_dir, mix_mode="pair", **MIX), G, seed=0)


def test_mixing_leaves_eval_untouched_and_needs_even_local_batches(digits_dir):
  mixed = list(data.eval_iterator(_cfg(digits_dir, **MIX), global_batch_size=128))
  plain = list(data.eval_iterator(_cfg(digits_dir), global_batch_size=128))
  _assert_batches_equal(mixed, plain)
  with pytest.raises(ValueError, match="must be even, got 7"):
    data.train_iterator(_cfg(digits_dir, **MIX), global_batch_size=14, seed=0, process_count=2)
  # Mixing off (probability 0): no mixing columns, the plain stream.
  off = _cfg(digits_dir, mix_probability=0.0, **MIX)
  _assert_batches_equal(
    _take(data.train_iterator(off, G, seed=1), 1),
    _take(data.train_iterator(_cfg(digits_dir, **SHIFT), G, seed=1), 1),
  )


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("mixup_alpha", -0.1, "data.mixup_alpha: must be a finite number >= 0"),
    ("cutmix_alpha", float("inf"), "data.cutmix_alpha: must be a finite number >= 0"),
    ("mix_probability", 1.5, r"data.mix_probability: must be a number in \[0, 1\]"),
    ("cutmix_switch_probability", "often", "data.cutmix_switch_probability: must be a number"),
  ],
)
def test_mixing_config_errors_name_the_field(field, value, message):
  c = data.default_config().to_dict()
  c[field] = value
  with pytest.raises(ValueError, match=message):
    data_config.resolve(c)


def test_the_loss_of_a_mixed_batch_mixes_the_two_cross_entropies():
  import jax

  from gnreg import task

  rng = np.random.default_rng(1)
  logits = rng.normal(size=(6, 10)).astype(np.float32)
  labels, mix_labels = rng.integers(0, 10, 6), rng.integers(0, 10, 6)
  w = np.array([0.0, 0.25, 0.5, 0.9, 1.0, 0.3], np.float32)
  batch = {"label": labels, "mix_label": mix_labels, "mix_weight": w}
  assert task.mix_targets({"label": labels}) == {}
  log_p = np.asarray(jax.nn.log_softmax(logits))
  for smoothing in (0.0, 0.1):
    ce = lambda y, a=smoothing: -((1 - a) * log_p[np.arange(6), y] + a * log_p.mean(-1))
    mixed = task.cross_entropy(logits, labels, smoothing, **task.mix_targets(batch))
    np.testing.assert_allclose(mixed, (1 - w) * ce(labels) + w * ce(mix_labels), rtol=1e-5)


def test_trainer_smoke_run_with_mixup_trains_on_mixed_targets(tmp_path, monkeypatch):
  from _runs import smoke_config

  from gnreg import train

  seen = []
  make_loss_fn = train.make_loss_fn

  def recording_make_loss_fn(model, config):
    loss_fn = make_loss_fn(model, config)

    def loss(*args, **kwargs):
      seen.append(sorted(kwargs))  # At trace time: what the step passes.
      return loss_fn(*args, **kwargs)

    return loss

  monkeypatch.setattr(train, "make_loss_fn", recording_make_loss_fn)
  config = smoke_config(**{"data.mixup_alpha": 0.4, "num_epochs": 1, "gnp.alpha": 0.0})
  result = train.train_and_evaluate(config, str(tmp_path))
  assert seen and all({"mix_labels", "mix_weights"} <= set(kw) for kw in seen)
  assert np.isfinite(result["test/loss"]) and result["test/top1_error"] < 0.6
