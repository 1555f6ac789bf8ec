"""The copy-repeat curriculum, advanced on device.

Training starts at pattern length N = 1 and repeat count R = 1 (T = 5 steps). After every
training batch whose loss is below 0.15 bits per target step, the level advances: R += 1 if
R < N, else N += 1, so the levels run

    (1, 1) → (2, 1) → (2, 2) → (3, 2) → (3, 3) → (4, 3) → ...

A level (N, R) has sequences of T = (R+1)·N + 3 steps (see :func:`copy_repeat_batch`); the loss
is binary cross-entropy with logits, the mean over the 9 target features, on target steps
N+2 … T−1, and ``bits = nats / ln 2``. Because the library's objective is the mean over examples
of the mean over target steps, the ``loss`` a rule reports *is* the loss per target step in nats.

The curriculum state is a pytree of int32 scalars, updated with ``jnp.where``: it lives inside
``jax.jit``/``lax.scan`` and never leaves the device. Batches are padded to a fixed ``max_len``
with masked steps, so advancing the curriculum changes no shape and recompiles nothing. The
level stops advancing where the next one would not fit in ``max_len`` (choose
``max_len = copy_repeat_len(n_max, n_max)`` to allow every level up to (n_max, n_max)).

The score of a run is the largest level solved, ``(solved_n, solved_r)``: the last level at which
a batch fell below the threshold ((0, 0) before the first).

Example::

  update = jax.jit(training.make_update(rule, opt))
  step = curriculum_step(update, batch_size=100, max_len=copy_repeat_len(10, 10))
  cur = curriculum_init()
  for key in keys:
    state, cur, metrics = step(state, cur, key)   # metrics: loss, bits, n, r (of that batch)
  print("largest (N, R) solved:", int(cur.solved_n), int(cur.solved_r))
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from bplambda_jax import _validation
from bplambda_jax.model import Batch
from bplambda_jax.tasks._copy_repeat import copy_repeat_batch, next_level, seq_len

THRESHOLD_BITS = 0.15
LN2 = math.log(2.0)


class CurriculumState(NamedTuple):
  """Where the copy-repeat curriculum stands. Every field is shape=(), int32.

  Attributes:
    n: current pattern length N (≥ 1).
    r: current repeat count R (1 ≤ R ≤ N).
    solved_n: N of the largest level solved so far (0 before the first solved batch).
    solved_r: R of the largest level solved so far (0 before the first solved batch).
    level: number of advances so far, i.e. the index of (N, R) in the sequence
      (1, 1), (2, 1), (2, 2), (3, 2), ...
  """

  n: jax.Array
  r: jax.Array
  solved_n: jax.Array
  solved_r: jax.Array
  level: jax.Array


def _check_max_len(max_len) -> int:
  return _validation.integer("max_len", max_len, minimum=seq_len(1, 1),
                             what=f"an integer >= {seq_len(1, 1)} (the length of level (1, 1))")


def _check_batch_size(batch_size) -> int:
  return _validation.integer("batch_size", batch_size, minimum=1)


def curriculum_init() -> CurriculumState:
  """The start of the curriculum: level (N, R) = (1, 1), nothing solved."""
  one, zero = jnp.ones((), jnp.int32), jnp.zeros((), jnp.int32)
  return CurriculumState(n=one, r=one, solved_n=zero, solved_r=zero, level=zero)


def curriculum_update(state: CurriculumState, loss, max_len: int,
                      threshold_bits=THRESHOLD_BITS) -> CurriculumState:
  """The curriculum after one training batch (pure, jittable, no host round trip).

  The batch counts as solved when ``loss / ln 2 < threshold_bits`` (strictly; a NaN loss never
  solves). A solved batch records the current level as solved and advances to the next level,
  R += 1 if R < N else N += 1, unless that level's length (R+1)·N + 3 exceeds ``max_len``.

  Args:
    state: the curriculum state.
    loss: the batch loss in nats per target step, shape=() (the rule's ``aux['loss']``).
    max_len: the padded sequence length of the batches; the curriculum stops below it.
    threshold_bits: the advance threshold in bits per target step (0.15 in the paper).

  Returns:
    The updated :class:`CurriculumState`.
  """
  _check_max_len(max_len)
  loss = jnp.asarray(loss)
  if loss.shape != ():
    raise ValueError(f"loss must be a scalar (the batch loss in nats), got shape {loss.shape}.")
  solved = loss / LN2 < threshold_bits
  n_next, r_next = next_level(state.n, state.r)
  advance = solved & (seq_len(n_next, r_next) <= max_len)
  return CurriculumState(
      n=jnp.where(advance, n_next, state.n).astype(jnp.int32),
      r=jnp.where(advance, r_next, state.r).astype(jnp.int32),
      solved_n=jnp.where(solved, state.n, state.solved_n).astype(jnp.int32),
      solved_r=jnp.where(solved, state.r, state.solved_r).astype(jnp.int32),
      level=(state.level + advance).astype(jnp.int32))


def curriculum_batch(state: CurriculumState, key, batch_size: int, max_len: int,
                     dtype=None) -> Batch:
  """A copy-repeat batch at the curriculum's current level, padded to ``max_len`` steps.

  Args:
    state: the curriculum state (concrete or traced).
    key: PRNG key.
    batch_size: B.
    max_len: the padded length T, at least the current level's (R+1)·N + 3.
    dtype: float dtype of x and y (default: the default float type).

  Returns:
    Batch(x [max_len, B, 10], y [max_len, B, 9], mask [max_len, B]); the mask is 1 on the target
    steps N+2 … (R+1)·N + 2 of the level and 0 elsewhere, padding included.
  """
  _check_max_len(max_len)
  _check_batch_size(batch_size)
  if not isinstance(state.n, jax.core.Tracer) and not isinstance(state.r, jax.core.Tracer):
    n, r = int(state.n), int(state.r)
    if seq_len(n, r) > max_len:
      raise ValueError(f"max_len must be >= (R+1)·N + 3 = {seq_len(n, r)} at level (N, R) = "
                       f"({n}, {r}), got {max_len}.")
  return copy_repeat_batch(key, state.n, state.r, batch_size, max_len, dtype)


def curriculum_step(update: Callable, batch_size: int, max_len: int,
                    threshold_bits=THRESHOLD_BITS, dtype=None) -> Callable:
  """One curriculum training step around an ``update(train_state, batch) -> (state, metrics)``.

  The returned ``step(train_state, cur, key) -> (train_state, cur, metrics)`` draws a batch at
  the current level, applies ``update`` (e.g. ``training.make_update(rule, opt)``, jitted or not)
  and advances the curriculum from ``metrics['loss']``. ``metrics`` gains ``'bits'`` (the loss in
  bits per target step) and ``'n'``, ``'r'`` (the level the batch was drawn at). The step is pure:
  jit it, or use it as the body of ``jax.lax.scan`` over keys with carry ``(train_state, cur)``.

  Args:
    update: the training update; its metrics must hold the batch loss in nats under 'loss'.
    batch_size: B.
    max_len: padded sequence length (fixes every batch's shape).
    threshold_bits: advance threshold in bits per target step.
    dtype: float dtype of the batches.
  """
  _check_max_len(max_len)
  _check_batch_size(batch_size)

  def step(train_state, cur: CurriculumState, key):
    batch = copy_repeat_batch(key, cur.n, cur.r, batch_size, max_len, dtype)
    train_state, metrics = update(train_state, batch)
    if "loss" not in metrics:
      raise ValueError(f"update must return metrics with a 'loss' entry, got {sorted(metrics)}.")
    loss = metrics["loss"]
    new_cur = curriculum_update(cur, loss, max_len, threshold_bits)
    return train_state, new_cur, {**metrics, "bits": loss / LN2, "n": cur.n, "r": cur.r}

  return step
