"""Section 5: the compile time (``lower()`` + ``compile()``) of the plain train step per model."""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench import common, workload


def section(settings: common.Settings, details: dict[str, Any]) -> list[dict[str, Any]]:
  """``lower()`` + ``compile()`` wall time of the plain SGD-momentum step, per model.

  The step is traced with abstract arguments (``jax.ShapeDtypeStruct``), so even the large
  models cost no memory for their parameters.
  """
  rows, out = [], {}
  for case in settings.compile_cases or (settings.workload,):
    model = workload.build_model(case.model, case.num_classes, case.dtype)
    tx = optax.sgd(0.1, momentum=0.9)
    variables = jax.eval_shape(lambda m=model, s=case.image_shape: workload.init_variables(m, s))
    state = jax.eval_shape(
      lambda v=variables, t=tx: (v["params"], v["batch_stats"], t.init(v["params"]))
    )
    batch = {
      "image": jax.ShapeDtypeStruct((case.batch_size, *case.image_shape), jnp.float32),
      "label": jax.ShapeDtypeStruct((case.batch_size,), jnp.int32),
    }
    start = time.perf_counter()
    lowered = jax.jit(workload.make_step(model, tx)).lower(state, batch)
    lower_s = time.perf_counter() - start
    compiled = lowered.compile()
    total = time.perf_counter() - start
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
    shape = "x".join(str(s) for s in case.image_shape)
    out[case.name] = {
      "lower_s": lower_s,
      "compile_s": total - lower_s,
      "total_s": total,
      "num_params": num_params,
      "image_shape": shape,
      "batch_size": case.batch_size,
      **workload.compiled_cost(compiled),
    }
    rows.append(
      common.row(
        "5 compile",
        f"{case.name} {shape} batch {case.batch_size}",
        total,
        "s",
        detail=f"{num_params / 1e6:.2f}M params; trace+lower {lower_s:.2f} s, "
        f"XLA compile {total - lower_s:.2f} s",
      )
    )
  details["compile"] = out
  return rows
