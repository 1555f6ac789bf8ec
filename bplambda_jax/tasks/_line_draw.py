"""Line drawing, the generator behind the toy task, and the plastic toy.

The network sees, at t = 0, which of P target points it must reach, and draws the straight line
from the origin (0, 0) to that point in T steps. The P points lie on a circle of radius ρ, equally
spaced from angle 0:

    p_k = ρ·(sin 2πk/P, cos 2πk/P),   k = 0 … P−1     (p_0 = (0, ρ)).

The target at step t is p_k·t/(T−1): T equally spaced points from the origin to p_k, both ends
included. Each example draws its own k uniformly. Point k is signalled at t = 0 by a binary code of
D_in bits (for D_in ≥ 2: the binary digits, most significant first, of the k-th of P distinct
numbers drawn by ``numpy.random.RandomState(123).choice(2**D_in, P, replace=False)``, which gives
833 = 1101000001 for the first), or by the number k itself (D_in = 1). Gaussian noise of standard
deviation σ is added to every input step. With ``end_only`` only the end point is a target (the
loss is at t = T−1 alone and the other steps of y are 0).

With P = 1, D_in = 10, T = 10, σ = 0 and ``end_only`` this is exactly the toy task
(:func:`toy_batch`): every example is the same sequence.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bplambda_jax import _validation
from bplambda_jax.model import Batch

OUTPUT_SIZE = 2
CODE_SEED = 123
MAX_CODE_BITS = 20


def _positive_int(name, value, minimum=1):
  return _validation.integer(name, value, minimum=minimum, what=f"an integer >= {minimum}")


def line_draw_codes(npoints: int, input_size: int = 10) -> np.ndarray:
  """The input code of each target point, [P, D_in] (float, {0, 1}; or k itself when D_in = 1).

  Args:
    npoints: P ≥ 1; for D_in ≥ 2 at most 2**D_in (the codes are distinct).
    input_size: D_in, in [1, 20].
  """
  _positive_int("npoints", npoints)
  _positive_int("input_size", input_size)
  if input_size > MAX_CODE_BITS:
    raise ValueError(f"input_size must lie in [1, {MAX_CODE_BITS}], got {input_size}.")
  if input_size == 1:
    return np.arange(npoints, dtype=np.float64)[:, None]
  if npoints > 2 ** input_size:
    raise ValueError(f"npoints must be <= 2**input_size = {2 ** input_size} (distinct codes), "
                     f"got {npoints}.")
  values = np.random.RandomState(CODE_SEED).choice(2 ** input_size, npoints, replace=False)
  bits = (values[:, None] >> np.arange(input_size - 1, -1, -1)[None, :]) & 1  # [P, D_in]
  return bits.astype(np.float64)


def line_draw_points(npoints: int, radius: float = 1.0) -> np.ndarray:
  """The P end points ρ·(sin 2πk/P, cos 2πk/P), [P, 2]."""
  _positive_int("npoints", npoints)
  angle = 2.0 * np.pi * np.arange(npoints) / npoints
  return radius * np.stack([np.sin(angle), np.cos(angle)], axis=-1)


def line_draw_batch(key, batch_size: int = 10, seq_len: int = 10, *, npoints: int = 1,
                    input_size: int = 10, radius: float = 1.0, noise: float = 0.0,
                    end_only: bool = True, dtype=None) -> Batch:
  """A batch of line drawing.

  Args:
    key: PRNG key (draws each example's point k and the input noise).
    batch_size: B ≥ 1.
    seq_len: T ≥ 2.
    npoints: P ≥ 1 target points on the circle.
    input_size: D_in in [1, 20]: the code width (1: the point index k as a number).
    radius: ρ > 0, the circle's radius.
    noise: σ ≥ 0, standard deviation of the Gaussian noise added to every input step.
    end_only: True: loss only at t = T−1 on the end point (the toy); False: loss at every step
      on the whole line.
    dtype: float dtype of x, y and mask (default: the default float type).

  Returns:
    Batch(x [T, B, D_in], y [T, B, 2], mask [T, B]). x holds the code at t = 0 (plus noise on
    every step); y[t] = p_k·t/(T−1) (only at T−1 with ``end_only``, zeros elsewhere); mask is 1 at
    T−1 only (``end_only``) or at every step.
  """
  _positive_int("batch_size", batch_size)
  _positive_int("seq_len", seq_len, 2)
  radius = _validation.number("radius", radius, above=0.0)
  noise = _validation.number("noise", noise, minimum=0.0)
  line_draw_codes(npoints, input_size)  # validates npoints and input_size
  dtype = jnp.dtype(dtype or jnp.result_type(float))
  return _line_draw(key, batch_size, seq_len, npoints, input_size, float(radius), float(noise),
                    bool(end_only), dtype)


@functools.partial(jax.jit, static_argnums=tuple(range(1, 9)))
def _line_draw(key, batch_size, seq_len, npoints, input_size, radius, noise, end_only, dtype):
  codes = line_draw_codes(npoints, input_size)  # [P, D_in]
  points = line_draw_points(npoints, radius)  # [P, 2]
  k_point, k_noise = jax.random.split(key)
  k = jax.random.randint(k_point, (batch_size,), 0, npoints)  # [B]
  t = jnp.arange(seq_len, dtype=dtype)[:, None, None]  # [T, 1, 1]
  x = jnp.where(t == 0, jnp.asarray(codes, dtype)[k][None], 0.0)  # [T, B, D_in]
  if noise > 0:
    x = x + noise * jax.random.normal(k_noise, x.shape, dtype)
  line = jnp.asarray(points, dtype)[k][None] * (t / (seq_len - 1))  # [T, B, 2]
  if end_only:
    last = t == seq_len - 1
    y = jnp.where(last, line, 0.0)
    mask = jnp.broadcast_to(last[..., 0], (seq_len, batch_size)).astype(dtype)
  else:
    y, mask = line, jnp.ones((seq_len, batch_size), dtype)
  return Batch(x.astype(dtype), y.astype(dtype), mask)


def plastic_toy_batch(key, batch_size: int = 10, seq_len: int = 10, *, npoints: int = 3,
                      noise: float = 0.1, dtype=None) -> Batch:
  """A batch of the plastic toy: the toy task made worth learning for the RNN as well.

  The fixed toy shows one sequence over and over, which a learning RNN would fit at once; here
  each example draws one of P = 3 end points (angles 0°, 120°, 240° on the unit circle), each
  announced by its own 10-bit code at t = 0 (833 = 1101000001 for the first, as in the toy), with
  noise σ = 0.1 on every input step, and the MSE loss stays at t = T−1 only. It is
  :func:`line_draw_batch` with ``input_size=10, end_only=True``; the RNN, readout and synthesiser
  all learn. (P = 3 and σ = 0.1 are the values of the authors' first line-drawing setting.)

  Args:
    key: PRNG key.
    batch_size: B ≥ 1.
    seq_len: T ≥ 2.
    npoints: P ≥ 1 end points.
    noise: σ ≥ 0.
    dtype: float dtype.

  Returns:
    Batch(x [T, B, 10], y [T, B, 2] (end point at T−1, zeros elsewhere), mask [T, B] (1 at T−1)).
  """
  return line_draw_batch(key, batch_size, seq_len, npoints=npoints, input_size=10, noise=noise,
                         end_only=True, dtype=dtype)
