"""Checkpoints with orbax: atomic, keep the newest few, validated against the run on restore.

::

    ckpt = Checkpointer(directory, max_to_keep=3)
    ckpt.save(step, state, meta={"rule": "bp_lambda"})     # any pytree of arrays (sharded too)
    step = ckpt.latest_step()                               # None when there is none
    state, meta = ckpt.restore(step, template)              # template: a state of the right shape

``restore`` compares the stored tree with ``template`` leaf by leaf (structure, shape, dtype)
before reading anything and raises a ConfigError naming the first leaf that differs, so a
checkpoint never loads silently into a run of another size; a damaged checkpoint (truncated or
corrupt files) raises a ConfigError naming its directory. Arrays are restored with the template's
shardings when the template's leaves carry them (a sharded multi-process state restores sharded).
PRNG key arrays are stored as their key data.

Several processes (``jax.distributed``): every process creates the Checkpointer on the same
directory, which all of them must see (a shared filesystem), and calls ``save`` and ``restore``
with the same step; each process writes and reads only the shards of its own devices, and
process 0 writes the metadata and commits the checkpoint.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from bplambda_jax._errors import ConfigError


def _to_storable(tree):
  """PRNG key arrays -> their uint32 key data (orbax stores plain arrays)."""
  return jax.tree.map(lambda a: jax.random.key_data(a) if _is_key(a) else a, tree)


def _from_storable(tree, template):
  return jax.tree.map(lambda a, t: jax.random.wrap_key_data(a) if _is_key(t) else a, tree,
                      template)


def _is_key(leaf) -> bool:
  return jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _abstract_storable(template):
  """What :func:`_to_storable` of ``template`` looks like, as ShapeDtypeStructs (with shardings)."""

  def one(leaf):
    sharding = getattr(leaf, "sharding", None)
    if _is_key(leaf):
      data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(leaf.shape, leaf.dtype))
      return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)

  return jax.tree.map(one, template)


class Checkpointer:
  """Orbax ``CheckpointManager`` for training states (see the module docstring).

  Args:
    directory: where the checkpoints live (one sub-directory per step); created if missing.
    max_to_keep: how many of the newest checkpoints to keep.
  """

  def __init__(self, directory: str, max_to_keep: int = 3):
    if isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1:
      raise ValueError(f"max_to_keep must be a positive integer, got {max_to_keep!r}.")
    # a local path is made absolute; a URL (gs://...) is left as it is for orbax
    self.directory = directory if "://" in str(directory) else os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_handlers=handlers)

  def save(self, step: int, state, meta: Optional[dict] = None, *, wait: bool = True) -> None:
    """Save ``state`` (and JSON ``meta``) as checkpoint ``step``; atomic (orbax commits it)."""
    args = {"state": ocp.args.StandardSave(_to_storable(state))}
    args["meta"] = ocp.args.JsonSave(dict(meta or {}))
    self._manager.save(int(step), args=ocp.args.Composite(**args), force=True)
    if wait:
      self._manager.wait_until_finished()

  def latest_step(self) -> Optional[int]:
    """The newest checkpoint's step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def _damaged(self, step: int, error: Exception) -> ConfigError:
    """The error for a checkpoint that orbax cannot read, naming it and what to do."""
    detail = (str(error).strip().splitlines() or [""])[0][:200]
    earlier = [s for s in self.all_steps() if s < step]
    fallback = (f"delete {os.path.join(self.directory, str(step))} to fall back on checkpoint "
                f"{max(earlier)}" if earlier else "start the run again")
    return ConfigError(f"checkpoint {step} in {self.directory} cannot be read: it is damaged or "
                       f"incomplete ({type(error).__name__}: {detail}); {fallback}.")

  def check(self, step: int, template) -> None:
    """ValueError naming the first leaf where checkpoint ``step`` differs from ``template``."""
    try:
      stored = self._manager.item_metadata(step)["state"]
    except Exception as e:  # pylint: disable=broad-except  (orbax and tensorstore raise many kinds)
      raise self._damaged(step, e) from e
    stored = getattr(stored, "tree", stored)
    want = _abstract_storable(template)
    got_leaves = jax.tree_util.tree_flatten_with_path(stored)[0]
    want_leaves = jax.tree_util.tree_flatten_with_path(want)[0]
    name_of = lambda path: jax.tree_util.keystr(path, simple=True, separator="/")
    got = {name_of(p): m for p, m in got_leaves}
    for path, w in want_leaves:
      name = name_of(path)
      if name not in got:
        raise ConfigError(f"checkpoint {step} in {self.directory} has no leaf {name} (the run "
                          f"expects {w.dtype}{list(w.shape)}); it was written by another run "
                          f"configuration.")
      g = got[name]
      if tuple(g.shape) != tuple(w.shape) or np.dtype(g.dtype) != np.dtype(w.dtype):
        raise ConfigError(f"checkpoint {step} in {self.directory}: leaf {name} is "
                          f"{np.dtype(g.dtype)}{list(g.shape)} but the run expects "
                          f"{np.dtype(w.dtype)}{list(w.shape)}; it was written by another run "
                          f"configuration.")
    extra = sorted(set(got) - {name_of(p) for p, _ in want_leaves})
    if extra:
      raise ConfigError(f"checkpoint {step} in {self.directory} has leaves the run does not "
                        f"expect: {extra[:5]}; it was written by another run configuration.")

  def restore(self, step: int, template) -> tuple[Any, dict]:
    """(state, meta) of checkpoint ``step``, checked against ``template`` (see :meth:`check`)."""
    self.check(step, template)
    abstract = _abstract_storable(template)
    try:
      out = self._manager.restore(int(step), args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except  (orbax and tensorstore raise many kinds)
      raise self._damaged(step, e) from e
    return _from_storable(out["state"], template), dict(out["meta"] or {})

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def save_checkpoint(directory: str, tree, step: int = 0, meta: Optional[dict] = None) -> None:
  """Save one pytree as checkpoint ``step`` in ``directory`` (a :class:`Checkpointer` call)."""
  ckpt = Checkpointer(directory)
  ckpt.save(step, tree, meta)
  ckpt.close()


def load_checkpoint(directory: str, template, step: Optional[int] = None):
  """The pytree of checkpoint ``step`` (default the newest) in ``directory``, checked against
  ``template``'s structure, shapes and dtypes."""
  ckpt = Checkpointer(directory)
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {os.path.abspath(directory)}.")
    return ckpt.restore(step, template)[0]
  finally:
    ckpt.close()
