"""Copy-repeat (Graves-style), generated on device from a PRNG key.

With pattern length N and repeat count R the sequence has T = (R+1)·N + 3 steps, 10 input channels
(8 pattern bits, a start flag on channel 8 and the repeat count R/10 on channel 9) and 9 target
channels (the pattern tiled R times on steps N+2 … T−2, then the end flag on channel 8 at T−1).
The loss (BCE with logits, mean over features) is taken on steps N+2 … T−1.

Batches are padded at the end to a fixed ``max_len`` with masked steps, so every curriculum level
runs through the same compiled program; padded steps carry zero input and no loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bplambda_jax import _validation
from bplambda_jax.model import Batch

BITS = 8
INPUT_SIZE = BITS + 2
OUTPUT_SIZE = BITS + 1
NORM_REPEAT = 10.0


def seq_len(n: int, r: int) -> int:
  """T = (R+1)·N + 3."""
  return (r + 1) * n + 3


def copy_repeat_batch(key, n, r, batch_size: int, max_len: int, dtype=None) -> Batch:
  """One batch at level (N, R), padded to ``max_len`` steps.

  Args:
    key: PRNG key.
    n, r: pattern length N ≥ 1 and repeat count R ≥ 1 (Python or numpy ints, or traced int
      scalars).
    batch_size: B.
    max_len: padded length; must be ≥ (R+1)·N + 3. Checked here when n and r are concrete; a
      traced level that does not fit cannot raise under ``jit``, so its batch is made of NaN
      inputs, which the checked training drivers report (guard code 1), never a cut sequence.
    dtype: float dtype of x and y.

  Returns:
    Batch(x [max_len, B, 10], y [max_len, B, 9], mask [max_len, B]).
  """
  batch_size = _validation.integer("batch_size", batch_size, minimum=1)
  max_len = _validation.integer("max_len", max_len, minimum=1)
  if not isinstance(n, jax.core.Tracer) and not isinstance(r, jax.core.Tracer):
    n = _validation.integer("n", n, minimum=1, what="an integer >= 1 (the pattern length N)")
    r = _validation.integer("r", r, minimum=1, what="an integer >= 1 (the repeat count R)")
    if seq_len(n, r) > max_len:
      raise ValueError(f"max_len must be >= (r+1)·n + 3 = {seq_len(n, r)}, got {max_len}.")
  dtype = dtype or jnp.result_type(float)
  t = jnp.arange(max_len)[:, None]  # [T, 1]
  total = (r + 1) * n + 3
  patterns = jax.random.bernoulli(key, 0.5, (max_len, batch_size, BITS)).astype(dtype)
  # Pattern at input steps 1..N; target step N+2+k shows the pattern of step 1 + (k mod N).
  in_pattern = (t >= 1) & (t <= n)
  x_bits = jnp.where(in_pattern[..., None], patterns, 0.0)
  start = (t == 0).astype(dtype)
  repeat = (t == n + 1).astype(dtype) * (r / NORM_REPEAT)
  x = jnp.concatenate([x_bits, start[..., None] * jnp.ones((1, batch_size, 1), dtype),
                       repeat[..., None] * jnp.ones((1, batch_size, 1), dtype)], axis=-1)
  x = jnp.where(total > max_len, jnp.nan, x)  # a level that does not fit: never a cut batch
  k = t - (n + 2)
  src = 1 + jnp.mod(jnp.maximum(k, 0), n)  # [T, 1]
  tiled = jnp.take_along_axis(patterns, jnp.broadcast_to(src[..., None], patterns.shape), axis=0)
  in_window = (t >= n + 2) & (t <= total - 2)
  y_bits = jnp.where(in_window[..., None], tiled, 0.0)
  end = (t == total - 1).astype(dtype)
  y = jnp.concatenate([y_bits, end[..., None] * jnp.ones((1, batch_size, 1), dtype)], axis=-1)
  mask = ((t >= n + 2) & (t <= total - 1)).astype(dtype) * jnp.ones((1, batch_size), dtype)
  return Batch(x, y, mask)


def next_level(n, r):
  """The curriculum's next (N, R): R += 1 if R < N, else N += 1.

  From (1, 1) this gives (2, 1), (2, 2), (3, 2), (3, 3), (4, 3), ... Works on Python ints and on
  (traced) int arrays alike.
  """
  return jnp.where(r < n, n, n + 1), jnp.where(r < n, r + 1, r)
