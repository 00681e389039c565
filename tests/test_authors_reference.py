"""gnreg's trainer step against a plain reference of the GNP authors' train step.

The reference is written from the paper (Zhao, Zhang and Hu, ICML 2022; the GR warmups of
ICML 2024) and from what their code (github zhaoyang-0204/gnp, ``training_core.train_step``
and ``train_for_one_epoch``) does, with none of gnreg's code but the network:

* each device takes the gradient ``g1`` of its own shard of the batch (loss: mean
  cross-entropy plus ``l2 * 0.5 * sum w^2`` over every parameter);
* a penalised step perturbs each device with its own ``g1`` (or, with synced perturbations,
  with the all-device mean), ``theta + r_t g1 / ||g1||``, takes the gradient ``g2`` there
  and mixes ``(1 - alpha_t) b + alpha_t g2``, ``b = g1 / ||g1||`` under their
  ``norm_perturbations`` and ``g1`` otherwise;
* the warmups: 'lambda' ramps alpha by ``min(1, t / W)``, 'r' ramps r, 'zero' takes plain
  steps while ``t < W``; a hybrid-training skip is a plain step too;
* a plain (unpenalised) step is the raw ``g1``, whatever ``norm_perturbations`` says;
* the device mean, then clipping by the global norm (``g`` if ``||g|| < c``, else
  ``g c / ||g||``), then SGD with (Nesterov) momentum.

Both run 5 steps from the same weights on the same batches, on 1 and 2 devices, with a
small softplus network (smooth, so that two correct float32 implementations stay within
float32 noise of each other; with ReLU, units flipping sign make them drift apart).
Which steps a hybrid run skips is gnreg's seeded draw: the reference reads it from gnreg's
state, and the test checks that both kinds of step occur.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from gnreg import compilation

_CODE = textwrap.dedent(
  """
    import json
    import flax.linen as nn
    import jax, jax.numpy as jnp, numpy as np, optax
    from gnreg import configuration, optimizers, train

    STEPS, PER_DEVICE, CLASSES, STEPS_PER_EPOCH = 5, 4, 3, 3
    LR, MOMENTUM, L2 = 0.3, 0.9, 1e-3

    class SmoothNet(nn.Module):
      @nn.compact
      def __call__(self, x, train=False):
        x = nn.softplus(nn.Dense(8)(x.reshape(x.shape[0], -1)))
        return nn.Dense(CLASSES, name="head")(x)

    model = SmoothNet()

    def loss(params, images, labels):
      logits = model.apply({"params": params}, images)
      ce = optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, CLASSES)).mean()
      return ce + L2 * 0.5 * sum(jnp.sum(w**2) for w in jax.tree.leaves(params))

    grad = jax.jit(jax.grad(loss))

    def norm(tree):
      return jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(tree)))

    def leaf_relative(a, b):
      # The largest, over the leaves, of ||a - b|| / ||b||.
      pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b))
      return max(float(np.linalg.norm(x - y) / np.linalg.norm(y)) for x, y in pairs)

    def mean(trees):
      return jax.tree.map(lambda *xs: sum(xs) / len(xs), *trees)

    def reference(params, batches, devices, case, penalised_steps):
      # The authors' step, written out; penalised_steps[t] is False on hybrid skips.
      gnp, velocity, fired = case["gnp"], jax.tree.map(jnp.zeros_like, params), []
      W = round(gnp.get("warmup_epochs", 0) * STEPS_PER_EPOCH)
      for t, (images, labels) in enumerate(batches):
        rows = [slice(d * PER_DEVICE, (d + 1) * PER_DEVICE) for d in range(devices)]
        shards = [(images[r], labels[r]) for r in rows]
        g1 = [grad(params, *s) for s in shards]
        r, alpha, warmup = gnp.get("r", 0.0), gnp.get("alpha", 0.0), gnp.get("warmup")
        penalised = alpha > 0 and penalised_steps[t] and not (warmup == "zero" and t < W)
        if warmup == "lambda":
          alpha = alpha * min(1.0, t / W)
        if warmup == "r":
          r = r * min(1.0, t / W)
        if penalised:
          if gnp.get("sync_perturbation"):
            g1 = [mean(g1)] * devices
          mixed = []
          for g, s in zip(g1, shards):
            unit = jax.tree.map(lambda x: x / norm(g), g)
            g2 = grad(jax.tree.map(lambda p, u: p + r * u, params, unit), *s)
            b = unit if gnp.get("normalize_base_grad") else g
            mixed.append(jax.tree.map(lambda b, h: (1 - alpha) * b + alpha * h, b, g2))
          g = mean(mixed)
        else:
          g = mean(g1)
        c = case.get("max_norm")
        if c is not None:
          n = norm(g)
          fired.append(bool(n >= c))
          g = jax.tree.map(lambda x: jnp.where(n < c, x, x / n * c), g)
        velocity = jax.tree.map(lambda v, x: MOMENTUM * v + x, velocity, g)
        if case.get("nesterov"):
          step = jax.tree.map(lambda v, x: x + MOMENTUM * v, velocity, g)
        else:
          step = velocity
        params = jax.tree.map(lambda p, s: p - LR * s, params, step)
      return params, fired

    def config_for(case):
      config = configuration.base_config()
      config.seed = 3  # The hybrid draws of seed 3 penalise steps 0, 1 and 3 of 5.
      config.num_epochs = 10
      config.label_smoothing = 0.0
      config.l2_regularization = L2
      config.regularize_kernels_only = False
      config.optimizer.name = "momentum"
      config.optimizer.learning_rate = LR
      config.optimizer.momentum = MOMENTUM
      config.optimizer.nesterov = bool(case.get("nesterov"))
      config.schedule.name = "constant"
      if case.get("max_norm") is not None:
        config.clip.name = "global_norm"
        config.clip.max_norm = case["max_norm"]
      for field, value in case["gnp"].items():
        config.gnp[field] = value
      return config

    def gnreg_run(params, batches, devices, case):
      config = config_for(case)
      mesh = jax.sharding.Mesh(np.array(jax.devices()[:devices]), (train.AXIS,))
      tx = optimizers.create(config, STEPS_PER_EPOCH, axis_name=train.AXIS)
      sums = (*train.TRAIN_METRICS, train.FINITE_STEPS)
      # Built by one jit, as the trainer's init, so that no two leaves share a buffer: the
      # step donates its state.
      state = jax.jit(lambda p: train.TrainState(
        step=jnp.zeros([], jnp.int32),
        params=p,
        batch_stats={},
        opt_state=tx.init(p),
        metric_sums={k: jnp.zeros([], jnp.float32) for k in sums},
      ))(params)
      step = train.make_train_step(model, config, mesh, STEPS_PER_EPOCH)
      penalised = []
      for images, labels in batches:
        state, _ = step(state, {"image": images, "label": labels})
        # The warmups are the reference's own; only the hybrid draw is read from gnreg.
        drawn = bool(getattr(state.opt_state[0], "alpha", 0.0) != 0)
        penalised.append(drawn or case["gnp"].get("warmup") is not None)
      return jax.device_get(state.params), penalised

    GNP = {"r": 0.1, "alpha": 0.6}
    NORM = {**GNP, "normalize_base_grad": True}
    CASES = {
      "plain": {"gnp": {}},
      "gnp": {"gnp": GNP},
      "gnp_normalised": {"gnp": NORM},
      "gnp_synced": {"gnp": {**NORM, "sync_perturbation": True}},
      "lambda_warmup": {"gnp": {**NORM, "warmup": "lambda", "warmup_epochs": 1.0}},
      "r_warmup": {"gnp": {**NORM, "warmup": "r", "warmup_epochs": 1.0}},
      "zero_warmup": {"gnp": {**NORM, "warmup": "zero", "warmup_epochs": 1.0}},
      "hybrid": {"gnp": {**NORM, "probability": 0.5}},
      "clip_nesterov": {"gnp": GNP, "max_norm": 1.2, "nesterov": True},
    }

    rng = np.random.default_rng(0)
    batches = [
      (rng.normal(size=(2 * PER_DEVICE, 4, 4, 1)).astype(np.float32),
       rng.integers(0, CLASSES, size=2 * PER_DEVICE).astype(np.int32))
      for _ in range(STEPS)
    ]
    init = model.init(jax.random.PRNGKey(0), batches[0][0])["params"]
    results = {}
    for name, case in CASES.items():
      for devices in (1, 2):
        data = [(x[: devices * PER_DEVICE], y[: devices * PER_DEVICE]) for x, y in batches]
        got, penalised = gnreg_run(init, data, devices, case)
        want, fired = reference(init, data, devices, case, penalised)
        plain, _ = reference(init, data, devices, CASES["plain"], penalised)
        results[f"{name}/{devices}"] = {
          "error": leaf_relative(got, want),
          "from_plain": leaf_relative(want, plain),
          "penalised": penalised,
          "fired": fired,
        }
    print(json.dumps(results))
  """
)


@pytest.fixture(scope="module")
def results():
  # XLA:CPU's backend optimisations are most of the 18 tiny steps' cost (measured: 31 s without
  # them); both sides of every comparison run in this one process, under the same flags.
  flags = f"--xla_force_host_platform_device_count=2 {compilation.run_once_flags()}"
  env = {**os.environ, "XLA_FLAGS": flags}
  out = subprocess.run(
    [sys.executable, "-c", _CODE], env=env, capture_output=True, text=True, timeout=600
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


CASES = [
  "plain",
  "gnp",
  "gnp_normalised",
  "gnp_synced",
  "lambda_warmup",
  "r_warmup",
  "zero_warmup",
  "hybrid",
  "clip_nesterov",
]


@pytest.mark.parametrize("devices", [1, 2])
@pytest.mark.parametrize("case", CASES)
def test_trainer_step_matches_the_authors_step(results, case, devices):
  result = results[f"{case}/{devices}"]
  # Float32 noise between two correct implementations is about 1e-6 after 5 steps.
  assert result["error"] < 2e-5, result
  if case != "plain":  # The case is not plain training in disguise.
    assert result["from_plain"] > 1e-3, result


def test_the_cases_exercise_what_they_name(results):
  hybrid = results["hybrid/2"]["penalised"]
  assert any(hybrid) and not all(hybrid)
  fired = results["clip_nesterov/2"]["fired"]
  assert any(fired) and not all(fired), fired
