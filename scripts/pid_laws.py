"""The two control laws of ``gnreg.pid_lr`` side by side, on an MLP on scikit-learn's digits.

  python scripts/pid_laws.py

Trains a 64-64-10 tanh MLP with SGD (batch 64, 600 steps, ~27 epochs of the 1,400 training
images) under ``pid_lr`` with ``law='log'`` and ``law='linear'`` over a sweep of gains, in two
regimes, and prints one markdown row per run: how often the rate sits at each bound, how
often one step changes it by more than 2x (bang-bang), how close the gradient norm stays to
the target, and the training loss. Fixed-rate SGD gives the reference rows. The README's
"Which PID law" table is this script's output.

- target 0.3: a norm the fixed rates reach only above lr = 0.3, where, on this problem, a
  higher rate *lowers* the gradient norm (it trains faster, so the gradients shrink);
- target 1.0: above every norm that a stable rate gives, so holding it means riding the edge
  of stability, where a higher rate raises the norm.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

import gnreg

BATCH, STEPS = 64, 600


def digits_batches() -> dict[str, jax.Array]:
  x, y = load_digits(return_X_y=True)
  order = np.random.default_rng(0).permutation(len(x))
  x, y = (x[order] / 16.0).astype(np.float32)[:1400], y[order].astype(np.int32)[:1400]
  epochs = -(-STEPS * BATCH // len(x))
  idx = np.concatenate([np.random.default_rng(s).permutation(len(x)) for s in range(epochs)])
  idx = idx[: STEPS * BATCH].reshape(STEPS, BATCH)
  return {"x": jnp.asarray(x[idx]), "y": jnp.asarray(y[idx])}


def init_params() -> dict[str, jax.Array]:
  k1, k2 = jax.random.split(jax.random.key(0))
  return {
    "w1": jax.random.normal(k1, (64, 64)) / 8,
    "b1": jnp.zeros(64),
    "w2": jax.random.normal(k2, (64, 10)) / 8,
    "b2": jnp.zeros(10),
  }


def loss_fn(params, batch):
  h = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
  logits = h @ params["w2"] + params["b2"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()


def train(tx: optax.GradientTransformation, batches) -> tuple[np.ndarray, ...]:
  """Per step: the loss, the gradient norm, and the rate (``nan`` without a regulator)."""

  def step(carry, batch):
    params, state = carry
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, state = tx.update(grads, state, params)
    lr = state.lr if isinstance(state, gnreg.PIDState) else jnp.nan
    return (optax.apply_updates(params, updates), state), (loss, optax.tree.norm(grads), lr)

  params = init_params()
  _, history = jax.jit(lambda b: jax.lax.scan(step, (params, tx.init(params)), b))(batches)
  return tuple(map(np.asarray, history))


def row(name: str, history, target: float | None, bounds: tuple[float, float] | None) -> str:
  loss, norm, lr = history
  late = slice(STEPS // 2, None)
  cells = [name, f"{loss[-100:].mean():.4f}"]
  if bounds is None:
    cells += [f"{norm[late].mean():.3f}", "", "", "", ""]
  else:
    lo, hi = bounds
    at_lo = np.mean(np.isclose(lr, lo, rtol=1e-3))
    at_hi = np.mean(np.isclose(lr, hi, rtol=1e-3))
    jumps = np.mean(np.abs(np.diff(np.log(lr))) > np.log(2))
    miss = np.median(np.abs(np.log(norm[late] / target)))
    cells += [
      f"{norm[late].mean():.3f}",
      f"{100 * at_lo:.0f}% / {100 * at_hi:.0f}%",
      f"{100 * jumps:.0f}%",
      f"{100 * (np.exp(miss) - 1):.0f}%",
      f"{np.median(lr[late]):.3g}",
    ]
  return "| " + " | ".join(cells) + " |"


def main() -> None:
  argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
  batches = digits_batches()
  print(
    "| run | train loss (last 100 steps) | grad norm (2nd half) | steps at min / max lr "
    "| steps changing lr > 2x | median miss of target (2nd half) | median lr (2nd half) |"
  )
  print("|---|---|---|---|---|---|---|")
  for lr in (0.1, 0.3, 1.0):
    print(row(f"fixed lr={lr}", train(optax.sgd(lr), batches), None, None))
  for target, bounds in ((0.3, (1e-4, 1.0)), (1.0, (1e-3, 3.0))):
    for law, gains in (
      ("log", ((0.5, 0.0), (2.0, 0.0), (0.5, 0.05))),
      ("linear", ((1.0, 0.0), (10.0, 0.0), (10.0, 0.1))),
    ):
      for kp, ki in gains:
        tx = gnreg.pid_lr(
          optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
          target_norm=target,
          kp=kp,
          ki=ki,
          min_lr=bounds[0],
          max_lr=bounds[1],
          law=law,
        )
        name = f"{law} target={target} kp={kp:g} ki={ki:g} lr in [{bounds[0]:g}, {bounds[1]:g}]"
        print(row(name, train(tx, batches), target, bounds))


if __name__ == "__main__":
  main()
