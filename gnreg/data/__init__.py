"""Input pipelines: TFDS and image folders through ``tf.data``, deterministic and multi-host.

The public API the trainer uses::

  info = data.dataset_info(config.data)
  train = data.train_iterator(config.data, global_batch_size=G, seed=s, start_step=k,
                              process_index=p, process_count=P)
  evals = data.eval_iterator(config.data, global_batch_size=G, process_index=p, process_count=P)
  data.steps_per_epoch(info, G)

``data.default_config()`` documents every ``config.data`` field. TensorFlow is imported on
first use and pinned to the CPU, so it never takes GPU memory from JAX. Nothing is ever
downloaded: a dataset missing from ``data.data_dir`` raises ``DatasetNotFoundError`` with the
command to prepare it, and ``digits`` is built offline from scikit-learn.
"""

import os

# oneDNN's fused kernels can change float results with thread timing; the input pipeline
# must give the same images on every run. An explicit setting by the user wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from gnreg.data.config import DATASET_NAMES, default_config  # noqa: E402

# The rest needs TensorFlow, whose import takes seconds: it is loaded on first use, so that a
# config error is reported before it.
_LAZY = {
  "DatasetInfo": "pipeline",
  "dataset_info": "pipeline",
  "eval_iterator": "pipeline",
  "steps_per_epoch": "pipeline",
  "train_iterator": "pipeline",
  "DatasetNotFoundError": "sources",
}


def __getattr__(name: str):
  if name not in _LAZY:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  import importlib

  return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)


__all__ = ["DATASET_NAMES", "default_config", *_LAZY]
