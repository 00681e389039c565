"""Hyperparameter tuning: the learning-rate finder and the PID-gain auto-tuner.

Both are pure functions of ``loss_fn(params, batch)``, the parameters and the data, so a trainer
or a command-line tool can call them before training: :func:`find_lr` measures one-step loss
differentials over a grid of rates, :func:`autotune_pid` trains one candidate per set of
``pid_lr`` gains on the first epoch. Both print what they will do and a progress bar, and say
in one line when their answer is not to be trusted (a rate at the edge of the grid, a
degenerate search). They import only jax, optax, chex, numpy and tqdm (matplotlib inside
``plot``).
"""

from gnreg.tuning.lr_finder import LRFinderResult, find_lr
from gnreg.tuning.pid_autotune import PIDAutotuneResult, autotune_pid

__all__ = ["LRFinderResult", "PIDAutotuneResult", "autotune_pid", "find_lr"]
