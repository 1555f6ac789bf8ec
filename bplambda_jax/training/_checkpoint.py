"""Checkpoints of training states (atomic writes)."""

from __future__ import annotations

import os
import tempfile

import flax.serialization
import jax



def save_checkpoint(path: str, tree) -> None:
  """Write a pytree atomically (temporary file + rename), so a crash never leaves half a file."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  data = flax.serialization.to_bytes(jax.device_get(tree))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ckpt-")
  with os.fdopen(fd, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def load_checkpoint(path: str, template):
  """Read a pytree written by :func:`save_checkpoint`, with ``template``'s structure."""
  with open(path, "rb") as f:
    return flax.serialization.from_bytes(template, f.read())
