"""An offline TFDS dataset: scikit-learn's handwritten digits.

The 1,797 real 8x8 greyscale images of the UCI optical-recognition digits
(Alpaydin & Kaynak, 1998) ship inside scikit-learn, so preparing this dataset
never touches the network. Pixel counts 0..16 are scaled to uint8 0..255 with
``round(x * 255 / 16)``. The split is fixed: a permutation of the 1,797 indices
drawn with ``np.random.default_rng(0)``; its first 1,437 are ``train``, the
remaining 360 ``test``.
"""

from __future__ import annotations

import fcntl
import os

import numpy as np
import tensorflow_datasets as tfds

__all__ = ["NUM_TRAIN", "NUM_TEST", "default_data_dir", "split_indices", "Digits", "prepare"]

NUM_TRAIN = 1437
NUM_TEST = 360
_SPLIT_SEED = 0


def default_data_dir() -> str:
  """Where digits is prepared when ``data.data_dir`` is None: ``$XDG_CACHE_HOME/gnreg/tfds``."""
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(cache, "gnreg", "tfds")


def split_indices() -> dict[str, np.ndarray]:
  """The fixed split as indices into ``sklearn.datasets.load_digits()``.

  >>> s = split_indices()
  >>> len(s['train']), len(s['test']), len(set(s['train']) | set(s['test']))
  (1437, 360, 1797)
  """
  perm = np.random.default_rng(_SPLIT_SEED).permutation(NUM_TRAIN + NUM_TEST)
  return {"train": perm[:NUM_TRAIN], "test": perm[NUM_TRAIN:]}


class Digits(tfds.core.GeneratorBasedBuilder):
  """TFDS builder ``digits``: reads ``sklearn.datasets.load_digits()``, downloads nothing."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "sklearn digits, uint8 8x8x1, fixed 1437/360 split (seed 0)."}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # TFDS 4.9 locates a packaged builder's code (to find a checksums file beside it) through
    # `importlib_resources`, which it declares only for Python < 3.9, so preparing fails without
    # it. Digits downloads nothing and needs no checksums: there is nothing to locate.
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description="scikit-learn handwritten digits (UCI optdigits test set), 8x8 greyscale.",
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(8, 8, 1)),
          "label": tfds.features.ClassLabel(num_classes=10),
          # Row of the example in load_digits(), for tracing an example back to its source.
          "sklearn_index": np.int64,
        }
      ),
      supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the data ships with scikit-learn.
    return {split: self._generate_examples(split) for split in ("train", "test")}

  def _generate_examples(self, split):
    from sklearn.datasets import load_digits  # Deferred: only preparation needs sklearn.

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    for i in split_indices()[split]:
      i = int(i)
      yield i, {"image": images[i], "label": int(digits.target[i]), "sklearn_index": i}


def prepare(data_dir: str) -> Digits:
  """Returns the digits builder in ``data_dir``, preparing it there first if needed (offline)."""
  builder = Digits(data_dir=data_dir)
  if builder.is_prepared():
    return builder
  # Several processes of one job (or test workers) may start on a fresh machine together:
  # one prepares, the others wait for it and then find the data ready.
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, ".digits.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    builder = Digits(data_dir=data_dir)
    if not builder.is_prepared():
      builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
      )
  return builder
