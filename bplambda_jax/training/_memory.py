"""The memory an online rule's step state needs, checked before anything is compiled.

A driver (:func:`bplambda_jax.training.sweep`, the ``bplambda run`` runner) calls
:func:`check_memory` with the number of seeds it will vmap, so the estimate counts every seed.
"""

from __future__ import annotations

import logging
from typing import Optional

import jax
import numpy as np
import psutil

logger = logging.getLogger("bplambda_jax")

# The carried state, its updated copy and the scan's double buffer.
BUFFERS = 3


def state_bytes(rule, params, batch_size: int) -> int:
  """Bytes of ``rule.init_state(params, batch_size)`` (shapes only; nothing is computed)."""
  shapes = jax.eval_shape(lambda p: rule.init_state(p, batch_size), params)
  return int(sum(np.prod(l.shape, dtype=np.int64) * np.dtype(l.dtype).itemsize
                 for l in jax.tree.leaves(shapes)))


def available_memory_bytes() -> Optional[int]:
  """Free memory of the default device: an accelerator's own statistics, else the host's."""
  try:
    stats = jax.devices()[0].memory_stats()
    if stats and "bytes_limit" in stats:
      return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
  except (RuntimeError, AttributeError, NotImplementedError):
    pass
  return int(psutil.virtual_memory().available)


def check_memory(rule, params, batch_size: int, *, seeds: int = 1) -> Optional[int]:
  """Log the memory of an online rule's step state and fail early if it cannot fit.

  Counts ``BUFFERS`` copies of the state of ``batch_size`` examples for each of ``seeds`` seeds.
  Rules that compute ``grads`` in sequence mode (or have no step state) are not checked.

  Args:
    rule: the rule.
    params: its parameters (or their shapes, ``jax.eval_shape`` of ``rule.init``).
    batch_size: B per seed.
    seeds: how many seeds run at once (the size of the seed vmap).

  Returns:
    The estimated bytes, or None when the rule is not checked.

  Raises:
    MemoryError: when the estimate exceeds the available memory, suggesting mode='sequence'
      (whose memory grows with B·T·n) or fewer seeds or a smaller batch.
  """
  if rule.mode != "online" or rule.init_state is None:
    return None
  per_seed = state_bytes(rule, params, batch_size)
  need = BUFFERS * per_seed * seeds
  logger.info("%s online state: %.1f MB per seed (batch %d), about %.1f MB for %d seed(s)",
              rule.name, per_seed / 2**20, batch_size, need / 2**20, seeds)
  avail = available_memory_bytes()
  if avail is not None and need > avail:
    raise MemoryError(
        f"rule {rule.name!r} in online mode needs about {need / 2**30:.2f} GiB for its step state "
        f"({per_seed / 2**20:.1f} MB per seed at batch {batch_size} × {seeds} seed(s) × "
        f"{BUFFERS} buffers) but only {avail / 2**30:.2f} GiB is available. Use mode='sequence' "
        f"(same numbers, memory O(B·T·n)), fewer seeds or a smaller batch.")
  return need
