"""Line drawing and the plastic toy: shapes, masks, targets, codes, noise, determinism."""

import chex
import jax
import numpy as np
import pytest

from bplambda_jax import tasks
from bplambda_jax import internals


def test_defaults_are_the_toy_task():
  for seed in (0, 1):
    got = tasks.line_draw_batch(jax.random.key(seed))
    for a, b in zip(got, tasks.toy_batch(10, 10)):
      np.testing.assert_array_equal(a, b)


def test_codes_are_distinct_reference_draws():
  codes = internals.line_draw_codes(5, 10)
  chex.assert_shape(codes, (5, 10))
  np.testing.assert_array_equal(codes[0], internals.TOY_CODE)  # 833, the toy's code
  values = codes @ (2 ** np.arange(9, -1, -1))
  np.testing.assert_array_equal(values, np.random.RandomState(123).choice(1024, 5, replace=False))
  assert len(set(values)) == 5
  np.testing.assert_array_equal(internals.line_draw_codes(4, 1)[:, 0], np.arange(4))
  with pytest.raises(ValueError, match=r"npoints must be <= 2\*\*input_size = 4"):
    internals.line_draw_codes(5, 2)
  with pytest.raises(ValueError, match=r"input_size must lie in \[1, 20\]"):
    internals.line_draw_codes(2, 21)


def test_points_lie_on_the_circle_from_angle_zero():
  p = internals.line_draw_points(4, radius=2.0)
  np.testing.assert_allclose(p, [[0, 2], [2, 0], [0, -2], [-2, 0]], atol=1e-12)


def test_whole_line_targets_masks_and_inputs():
  T, B, P = 7, 64, 3
  b = tasks.line_draw_batch(jax.random.key(2), B, T, npoints=P, radius=1.5, end_only=False)
  chex.assert_shape([b.x, b.y, b.mask], [(T, B, 10), (T, B, 2), (T, B)])
  np.testing.assert_array_equal(b.mask, np.ones((T, B)))
  y, x = np.asarray(b.y), np.asarray(b.x)
  ends = y[-1]
  points = internals.line_draw_points(P, 1.5)
  k = np.argmin(np.linalg.norm(ends[:, None] - points[None], axis=-1), axis=1)  # [B]
  np.testing.assert_allclose(ends, points[k], atol=1e-12)
  assert len(set(k)) == P  # 64 examples draw every point
  np.testing.assert_allclose(y, np.arange(T)[:, None, None] / (T - 1) * points[k][None],
                             atol=1e-12)
  np.testing.assert_array_equal(x[0], internals.line_draw_codes(P)[k])  # the code of its point
  assert np.all(x[1:] == 0)


def test_end_only_and_scalar_input():
  b = tasks.line_draw_batch(jax.random.key(3), 5, 4, npoints=6, input_size=1)
  chex.assert_shape([b.x, b.y, b.mask], [(4, 5, 1), (4, 5, 2), (4, 5)])
  np.testing.assert_array_equal(b.mask, np.eye(4)[-1][:, None] * np.ones(5))
  assert np.all(np.asarray(b.y)[:-1] == 0)
  k = np.asarray(b.x)[0, :, 0].astype(int)
  np.testing.assert_allclose(b.y[-1], internals.line_draw_points(6)[k], atol=1e-12)


def test_noise_on_every_input_step_and_determinism():
  kw = dict(batch_size=200, seq_len=6, npoints=3, noise=0.5)
  a = tasks.line_draw_batch(jax.random.key(4), **kw)
  clean = tasks.line_draw_batch(jax.random.key(4), **{**kw, "noise": 0.0})
  diff = np.asarray(a.x - clean.x)
  assert np.all(np.abs(diff).reshape(6, -1).max(axis=1) > 0)  # every step is noisy
  assert 0.45 < diff.std() < 0.55
  np.testing.assert_array_equal(a.y, clean.y)
  for u, v in zip(a, tasks.line_draw_batch(jax.random.key(4), **kw)):
    np.testing.assert_array_equal(u, v)
  assert not np.array_equal(a.x, tasks.line_draw_batch(jax.random.key(5), **kw).x)


def test_plastic_toy():
  b = tasks.plastic_toy_batch(jax.random.key(0), 32)
  chex.assert_shape([b.x, b.y, b.mask], [(10, 32, 10), (10, 32, 2), (10, 32)])
  np.testing.assert_array_equal(b.mask, np.eye(10)[-1][:, None] * np.ones(32))
  ends = np.asarray(b.y[-1])
  angles = np.round(np.degrees(np.arctan2(ends[:, 0], ends[:, 1]))) % 360
  assert set(angles) == {0.0, 120.0, 240.0}
  np.testing.assert_allclose(np.linalg.norm(ends, axis=-1), 1.0)
  assert np.abs(np.asarray(b.x[1:])).max() > 0  # noisy inputs after t = 0
  for u, v in zip(b, tasks.plastic_toy_batch(jax.random.key(0), 32)):
    np.testing.assert_array_equal(u, v)
  assert not np.array_equal(b.x, tasks.plastic_toy_batch(jax.random.key(1), 32).x)
  still = tasks.plastic_toy_batch(jax.random.key(0), 10, npoints=1, noise=0.0)
  for u, v in zip(still, tasks.toy_batch(10, 10)):
    np.testing.assert_array_equal(u, v)


def test_generators_run_under_jit():
  f = jax.jit(lambda k: tasks.line_draw_batch(k, 4, 5, npoints=3, noise=0.1, end_only=False))
  for u, v in zip(f(jax.random.key(7)), tasks.line_draw_batch(jax.random.key(7), 4, 5, npoints=3,
                                                               noise=0.1, end_only=False)):
    np.testing.assert_allclose(u, v, rtol=1e-12)


@pytest.mark.parametrize("kw,message", [
    (dict(seq_len=1), "seq_len must be an integer >= 2"),
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(noise=-0.1), "noise must be a finite number >= 0"),
    (dict(radius=0.0), "radius must be a finite number > 0"),
    (dict(npoints=0), "npoints must be an integer >= 1")])
def test_bad_arguments(kw, message):
  with pytest.raises(ValueError, match=message):
    tasks.line_draw_batch(jax.random.key(0), **kw)
