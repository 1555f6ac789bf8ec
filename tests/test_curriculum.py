"""The copy-repeat curriculum: level order, the 0.15-bit threshold, lengths and masks of the
padded batches, and one compilation of the update across a run that climbs several levels."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bplambda_jax import tasks
from bplambda_jax import training
from bplambda_jax.model import make_model
from bplambda_jax.rules import bptt
from bplambda_jax import internals

LN2 = math.log(2.0)
BIG = 1000


def levels(state):
  return int(state.n), int(state.r)


def test_levels_run_in_the_paper_order():
  cur = tasks.curriculum_init()
  seen = [levels(cur)]
  for _ in range(6):
    cur = internals.curriculum_update(cur, 0.0, BIG)
    seen.append(levels(cur))
  assert seen == [(1, 1), (2, 1), (2, 2), (3, 2), (3, 3), (4, 3), (4, 4)]
  assert int(cur.level) == 6 and (int(cur.solved_n), int(cur.solved_r)) == (4, 3)
  assert all(leaf.dtype == jnp.int32 and leaf.shape == () for leaf in cur)


@pytest.mark.x64
def test_threshold_is_0_15_bits_strict():
  cur = tasks.curriculum_init()
  limit = 0.15 * LN2  # nats
  assert levels(internals.curriculum_update(cur, limit * (1 - 1e-9), BIG)) == (2, 1)
  for loss in (limit, limit * (1 + 1e-9), 1.0, jnp.nan):
    stayed = internals.curriculum_update(cur, loss, BIG)
    assert levels(stayed) == (1, 1) and int(stayed.solved_n) == 0 and int(stayed.level) == 0
  assert levels(internals.curriculum_update(cur, 0.5 * LN2, BIG, threshold_bits=0.6)) == (2, 1)
  assert internals.COPY_THRESHOLD_BITS == 0.15


def test_update_is_jittable_and_vmappable():
  update = jax.jit(internals.curriculum_update, static_argnums=2)
  cur = tasks.curriculum_init()
  for loss in (0.0, 0.0, 1.0, 0.0):
    cur = update(cur, jnp.asarray(loss), BIG)
  assert levels(cur) == (3, 2)
  many = jax.vmap(lambda l: internals.curriculum_update(tasks.curriculum_init(), l, BIG))(
      jnp.array([0.0, 1.0]))
  np.testing.assert_array_equal(many.n, [2, 1])


def test_curriculum_stops_where_the_next_level_does_not_fit():
  max_len = tasks.copy_repeat_len(2, 2)  # 9; (3, 2) would need 12
  cur = tasks.curriculum_init()
  for _ in range(5):
    cur = internals.curriculum_update(cur, 0.0, max_len)
  assert levels(cur) == (2, 2) and int(cur.level) == 2
  assert (int(cur.solved_n), int(cur.solved_r)) == (2, 2)  # solved, just nowhere to go


@pytest.mark.parametrize("n,r", [(1, 1), (2, 1), (3, 2), (4, 4)])
def test_padded_batches_lengths_and_masks(n, r):
  max_len, B = 30, 3
  cur = tasks.CurriculumState(*(jnp.asarray(v, jnp.int32) for v in (n, r, 0, 0, 0)))
  b = tasks.curriculum_batch(cur, jax.random.key(n * 10 + r), B, max_len)
  chex.assert_shape([b.x, b.y, b.mask], [(max_len, B, 10), (max_len, B, 9), (max_len, B)])
  T = (r + 1) * n + 3
  assert T == tasks.copy_repeat_len(n, r)
  expected = np.zeros(max_len)
  expected[n + 2:T] = 1.0
  np.testing.assert_array_equal(b.mask, expected[:, None] * np.ones(B))
  assert b.mask.sum(0).tolist() == [r * n + 1] * B
  x, y = np.asarray(b.x), np.asarray(b.y)
  np.testing.assert_array_equal(x[0, :, 8], 1.0)  # start flag
  np.testing.assert_allclose(x[n + 1, :, 9], r / 10)  # repeats given as R/10
  assert np.all(x[n + 2:] == 0) and np.all(y[T:] == 0) and np.all(y[:n + 2] == 0)
  for k in range(r * n):
    np.testing.assert_array_equal(y[n + 2 + k, :, :8], x[1 + k % n, :, :8])
  np.testing.assert_array_equal(y[T - 1, :, 8], 1.0)  # end flag
  assert np.all(y[T - 1, :, :8] == 0)


def test_batch_checks_the_padded_length():
  cur = tasks.CurriculumState(*(jnp.asarray(v, jnp.int32) for v in (3, 3, 0, 0, 0)))
  with pytest.raises(ValueError, match=r"max_len must be >= \(R\+1\)·N \+ 3 = 15"):
    tasks.curriculum_batch(cur, jax.random.key(0), 2, 14)
  with pytest.raises(ValueError, match="max_len must be an integer >= 5"):
    internals.curriculum_update(tasks.curriculum_init(), 0.0, 4)
  with pytest.raises(ValueError, match="batch_size"):
    tasks.curriculum_step(lambda s, b: (s, {"loss": 0.0}), 0, 20)


def test_one_compilation_across_a_run_that_climbs_levels():
  max_len, B = tasks.copy_repeat_len(3, 3), 2
  model = make_model("tanh", "bce", tasks.COPY_INPUT_SIZE, tasks.COPY_OUTPUT_SIZE, hidden_size=3)
  rule, opt = bptt(model), training.optimiser(1e-3, 1e-3)
  update = jax.jit(chex.assert_max_traces(training.make_update(rule, opt), n=1))
  # Any real loss is below a threshold of 1e6 bits: every batch advances one level.
  step = jax.jit(chex.assert_max_traces(
      tasks.curriculum_step(update, B, max_len, threshold_bits=1e6), n=1))
  state, cur = training.init_state(rule, opt, jax.random.key(0)), tasks.curriculum_init()
  seen = []
  for i in range(5):
    state, cur, metrics = step(state, cur, jax.random.key(i))
    seen.append((int(metrics["n"]), int(metrics["r"])))
    np.testing.assert_allclose(metrics["bits"], metrics["loss"] / LN2)
  assert seen == [(1, 1), (2, 1), (2, 2), (3, 2), (3, 3)]
  assert levels(cur) == (3, 3) and (int(cur.solved_n), int(cur.solved_r)) == (3, 3)
  # The update alone, called on batches from four levels, also compiles once.
  cur = tasks.curriculum_init()
  for i in range(4):
    state, metrics = update(state, tasks.curriculum_batch(cur, jax.random.key(i), B, max_len))
    cur = internals.curriculum_update(cur, 0.0, max_len)
  assert update._cache_size() == 1 and step._cache_size() == 1


def test_curriculum_step_as_a_scan_body():
  def fake_update(state, batch):  # the "train state" walks through a fixed loss sequence
    losses, i = state
    return (losses, i + 1), {"loss": losses[i]}

  step = tasks.curriculum_step(fake_update, 2, 40)
  losses = jnp.array([0.5, 0.01, 0.2, 0.01, 0.01, 0.3])  # nats; 0.15 bits = 0.104 nats

  def body(carry, key):
    state, cur = carry
    state, cur, m = step(state, cur, key)
    return (state, cur), (m["n"], m["r"], m["bits"])

  (_, cur), (n, r, bits) = jax.lax.scan(body, ((losses, 0), tasks.curriculum_init()),
                                        jax.random.split(jax.random.key(0), 5))
  assert list(zip(n.tolist(), r.tolist())) == [(1, 1), (1, 1), (2, 1), (2, 1), (2, 2)]
  assert levels(cur) == (3, 2) and (int(cur.solved_n), int(cur.solved_r)) == (2, 2)
  np.testing.assert_allclose(bits, losses[:5] / LN2)
