"""Shared by the trainer tests: the smoke config with overrides, and reading a run's checkpoint."""

from __future__ import annotations

import os
import pathlib
import socket
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import default as default_config  # noqa: E402


def with_changes(config, changes):
  """``config`` with ``{"dotted.field": value}`` changes, in place; returns it."""
  for key, value in changes.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def smoke_config(**changes):
  """``configs/default.py:smoke`` with ``{"dotted.field": value}`` changes."""
  return with_changes(default_config.get_config("smoke"), changes)


def restore_checkpoint(workdir) -> tuple[dict, int]:
  """The newest checkpoint of a run as numpy arrays, whatever devices and processes saved it."""
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  with ocp.CheckpointManager(directory) as mngr:
    step = mngr.latest_step()
  item = os.path.join(directory, str(step), "default")
  checkpointer = ocp.PyTreeCheckpointer()
  # Orbax maps saved shardings onto the devices that saved them; ask for this one instead.
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
    checkpointer.metadata(item).item_metadata.tree,
  )
  restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device), target)
  restored = checkpointer.restore(
    item, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args)
  )
  return jax.tree.map(np.asarray, restored), step


def free_port() -> int:
  """A TCP port on the loopback that nothing listens on, for a multi-process coordinator."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]
