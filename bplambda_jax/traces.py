"""Chunked eligibility traces for a linear synthesiser: BP(λ) online at O(B·d²·n) per step.

BP(λ)'s online mode (:mod:`bplambda_jax.rules.bp_lambda`, spec §4.2) carries, per example, the
trace of a linear synthesiser ĝ(z) = W z + β (W [d, n]) and applies one TD step per time step::

    E_τ = C_τ·E_{τ−1} + D(a_τ)         C_τ = γλ·M_{τ−1} [d, d],  D(a)[o, i, j] = 1[o = i]·a_j
    inc_τ = (1/B)·Σ_b δ_τ·E_τ           δ_τ [d] the TD error, inc_τ [d, n]

(a_τ = [z_{τ−1}; 1] carries β as a last column). Stored densely, E is [d, d, n] and the product
C·E costs d³·n multiply-adds per step (:func:`bplambda_jax.kernels.trace_step_diag`). This module
keeps the same numbers in another form. Within a chunk of L steps that started from E⁰,

    E_τ = (C_τ⋯C_1)·E⁰ + Σ_j (C_τ⋯C_{j+1})·D(a_j),

so with the row vectors w_j = δ_τ·C_τ⋯C_{j+1} (one vector–matrix product per slot, backwards)

    δ_τ·E_τ = w_0·E⁰ + Σ_j w_j ⊗ a_j.

A step therefore costs d·n for w_0·E⁰ per row of E⁰, i.e. d²·n, plus L·(d² + d·n) for the chain
and the outer products; nothing of size d³·n. Every L steps the chunk is folded into E⁰ once:
E⁰ ← (C_L⋯C_1)·E⁰ + Σ_j (C_L⋯C_{j+1})·D(a_j), a single dense product (the fused trace-step
kernel of :mod:`bplambda_jax.kernels`, auto-selected by backend). When the whole sequence fits in
one chunk E⁰ stays zero and is not stored at all. Memory per example: d²·n (E⁰, unless skipped)
plus L·(d² + n) for the chunk; independent of the sequence length.

The increments are exact per step (not only their sum), so per-step clipping and per-step
synthesiser updates work as with the dense trace: the factors C and inputs a depend on the
network, not on θ. Only the order of floating-point sums differs from the dense trace.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from bplambda_jax import kernels

DEFAULT_CHUNK = 64
_PRECISION = jax.lax.Precision.HIGHEST

Array = jax.Array


class ChunkedTrace(NamedTuple):
  """The chunked trace of a linear synthesiser for a batch (see the module docstring).

  Attributes:
    base: E⁰ at the chunk start, [B, d, d, n'] (n' = n + 1 with a bias), or None when the whole
      sequence fits in one chunk (E⁰ ≡ 0).
    factors: C_j of the chunk's steps, slot-major, [L, B, d, d].
    inputs: a_j of the chunk's steps, [L, B, n'].
    count: number of filled slots, int32 scalar.
  """

  base: Optional[Array]
  factors: Array
  inputs: Array
  count: Array


def chunked_init(batch_size: int, d: int, n: int, *, bias: bool, chunk: int, steps: int,
                 dtype) -> ChunkedTrace:
  """An empty chunked trace (all traces zero).

  Args:
    batch_size: B.
    d: ĝ's output size (rows of W).
    n: ĝ's input size (columns of W).
    bias: whether the synthesiser has a bias β (an extra input column of 1).
    chunk: L ≥ 1, steps per chunk; capped at ``steps``.
    steps: the number of trace steps of the sequence (a static bound); if L ≥ steps no fold ever
      happens and E⁰ is not stored.
    dtype: float dtype of the trace.
  """
  if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
    raise ValueError(f"chunk must be an int >= 1, got {chunk!r}.")
  L = min(chunk, steps)
  n_cols = n + int(bias)
  base = None if L >= steps else jnp.zeros((batch_size, d, d, n_cols), dtype)
  return ChunkedTrace(base, jnp.zeros((L, batch_size, d, d), dtype),
                      jnp.zeros((L, batch_size, n_cols), dtype), jnp.zeros((), jnp.int32))


def bytes_per_example(d: int, n_cols: int, chunk: int, itemsize: int, *, base: bool) -> int:
  """Memory of one example's chunked trace: E⁰ (if kept) plus L·(d² + n') for the chunk."""
  return int(((d * d * n_cols) if base else 0) + chunk * (d * d + n_cols)) * itemsize


def _fold(tr: ChunkedTrace) -> ChunkedTrace:
  """E⁰ ← (C_L⋯C_1)·E⁰ + Σ_j (C_L⋯C_{j+1})·D(a_j); empties the chunk."""
  L, B, d, _ = tr.factors.shape
  eye = jnp.broadcast_to(jnp.eye(d, dtype=tr.factors.dtype), (B, d, d))

  def back(prod, c_j):  # prod = C_L⋯C_{j+1} before the step, C_L⋯C_j after
    return jnp.einsum("bkl,bli->bki", prod, c_j, precision=_PRECISION), prod

  prod, tails = jax.lax.scan(back, eye, tr.factors, reverse=True)  # tails [L, B, d, d]
  added = jnp.einsum("lbki,lbj->bkij", tails, tr.inputs, precision=_PRECISION)  # [B, d, d, n']
  n_cols = tr.inputs.shape[-1]
  base, _ = kernels.trace_step(tr.base.reshape(B, d, d * n_cols), prod,
                               added.reshape(B, d, d * n_cols), jnp.zeros((B, d), prod.dtype), 1.0)
  return ChunkedTrace(base.reshape(B, d, d, n_cols), tr.factors, tr.inputs,
                      jnp.zeros((), jnp.int32))


def chunked_step(tr: ChunkedTrace, M: Array, a: Array, delta: Array,
                 c) -> tuple[ChunkedTrace, Array]:
  """One TD step: E ← c·M·E + D(a) and inc = (1/B)·Σ_b δ_b·E_b, on the chunked trace.

  Args:
    tr: the trace before the step.
    M: transitions M_{τ−1}, [B, d, d].
    a: the new inputs (g_scale·[z_{τ−1}; 1] with a bias), [B, n'].
    delta: TD errors δ_τ, [B, d].
    c: the decay γλ (possibly traced, possibly 0).

  Returns:
    (trace after the step, inc [d, n'] = (1/B)·Σ_b δ_b·E_b).
  """
  L, B = tr.factors.shape[:2]
  j = tr.count
  factors = jax.lax.dynamic_update_index_in_dim(tr.factors, (c * M).astype(tr.factors.dtype), j, 0)
  inputs = jax.lax.dynamic_update_index_in_dim(tr.inputs, a.astype(tr.inputs.dtype), j, 0)
  active = jnp.arange(L) <= j  # filled slots, [L]

  def back(w, slot):  # w = δ·C_m⋯C_{i+1} on entry; slot i's coefficient is w
    c_i, on = slot
    w_next = jnp.einsum("bk,bki->bi", w, c_i, precision=_PRECISION)
    return jnp.where(on, w_next, w), jnp.where(on, w, jnp.zeros_like(w))

  w0, coef = jax.lax.scan(back, delta.astype(factors.dtype), (factors, active),
                          reverse=True)  # coef [L, B, d]
  inc = jnp.einsum("lbi,lbj->ij", coef, inputs, precision=_PRECISION)  # Σ_{b,j} w_j ⊗ a_j
  if tr.base is not None:
    inc = inc + jnp.einsum("bk,bkij->ij", w0, tr.base, precision=_PRECISION)
  tr = ChunkedTrace(tr.base, factors, inputs, j + 1)
  if tr.base is not None:
    tr = jax.lax.cond(j + 1 == L, _fold, lambda t: t, tr)
  return tr, inc / B
