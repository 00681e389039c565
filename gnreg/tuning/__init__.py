"""Hyperparameter tuning: the learning-rate finder and the PID-gain auto-tuner.

Both are pure functions of ``loss_fn(params, batch)``, the parameters and the data, so a trainer
or a command-line tool can call them before training.
"""

from gnreg.tuning.lr_finder import LRFinderResult, find_lr
from gnreg.tuning.pid_autotune import PIDAutotuneResult, autotune_pid

__all__ = ["LRFinderResult", "PIDAutotuneResult", "autotune_pid", "find_lr"]
