"""Chunked eligibility traces for a linear synthesiser: BP(λ) online at O(B·d²·n) per step.

BP(λ)'s online mode (:func:`bplambda_jax.bp_lambda`) carries, per example, the
trace of a linear synthesiser ĝ(z) = W z + β (W [d, n]) and applies one TD step per time step::

    E_τ = C_τ·E_{τ−1} + D(a_τ)         C_τ = γλ·M_{τ−1} [d, d],  D(a)[o, i, j] = 1[o = i]·a_j
    inc_τ = (1/B)·Σ_b δ_τ·E_τ           δ_τ [d] the TD error, inc_τ [d, n]

(a_τ = [z_{τ−1}; 1] carries β as a last column). Stored densely, E is [d, d, n] and the product
C·E costs d³·n multiply-adds per step (:func:`bplambda_jax.kernels.trace_step_diag`). This module
keeps the same numbers in another form. Within a chunk of L steps that started from E⁰,

    E_τ = (C_τ⋯C_1)·E⁰ + Σ_j (C_τ⋯C_{j+1})·D(a_j),

so with the row vectors w_j = δ_τ·C_τ⋯C_{j+1} (one vector–matrix product per slot, backwards)

    δ_τ·E_τ = w_0·E⁰ + Σ_j w_j ⊗ a_j.

The chain never forms C_j: each slot stores the *context* of its step (what the rule's ``link``
needs, e.g. the gate derivatives of an LSTM step) and the chain applies w ← c_j·link(ctx_j, w)
= w·C_j, a vector–Jacobian product that for the library cells is a product with the cell's
shared weight matrix (efficient GEMMs) instead of a per-example d×d matrix read from memory.
A step therefore costs d²·n for w_0·E⁰ (when E⁰ is stored) plus, per filled slot, one link and
one outer product; nothing of size d³·n. Every L steps the chunk is folded into E⁰ once:
E⁰ ← (C_L⋯C_1)·E⁰ + Σ_j (C_L⋯C_{j+1})·D(a_j), with the products formed row by row through
the links and applied by one dense product (the fused trace-step kernel of
:mod:`bplambda_jax.kernels`, auto-selected by backend). When the whole sequence fits in one chunk
E⁰ stays zero and is not stored at all. Memory per example: d²·n (E⁰, unless skipped) plus L
contexts and inputs; independent of the sequence length.

The increments are exact per step (not only their sum), so per-step clipping and per-step
synthesiser updates work as with the dense trace: the factors C and inputs a depend on the
network, not on θ. Only the order of floating-point sums differs from the dense trace.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from bplambda_jax import _validation
from bplambda_jax import kernels

DEFAULT_CHUNK = 64
_PRECISION = jax.lax.Precision.HIGHEST

Array = jax.Array


class ChunkedTrace(NamedTuple):
  """The chunked trace of a linear synthesiser for a batch (see the module docstring).

  Attributes:
    base: E⁰ at the chunk start, [B, d, d, n'] (n' = n + 1 with a bias), or None when the whole
      sequence fits in one chunk (E⁰ ≡ 0).
    ctxs: the contexts of the chunk's steps, a pytree with leaves [L, B, ...] (slot-major).
    decays: c_j of the chunk's steps, [L].
    inputs: a_j of the chunk's steps, [L, B, n'].
    count: number of filled slots, int32 scalar.
  """

  base: Optional[Array]
  ctxs: Any
  decays: Array
  inputs: Array
  count: Array


def chunked_init(ctx, d: int, n: int, *, bias: bool, chunk: int, steps: Optional[int] = None,
                 dtype) -> ChunkedTrace:
  """An empty chunked trace (all traces zero).

  Args:
    ctx: an example context for a batch (pytree of [B, ...] arrays; only shapes are used).
    d: ĝ's output size (rows of W).
    n: ĝ's input size (columns of W).
    bias: whether the synthesiser has a bias β (an extra input column of 1).
    chunk: L ≥ 1, steps per chunk; capped at ``steps``.
    steps: the number of trace steps the trace will see, if known (a static bound); if L ≥ steps
      no fold ever happens and E⁰ is not stored. None: unbounded (streaming), E⁰ is stored.
    dtype: float dtype of the trace.
  """
  chunk = _validation.integer("chunk", chunk, minimum=1, what="an int >= 1")
  L = chunk if steps is None else min(chunk, steps)
  n_cols = n + int(bias)
  leaves = jax.tree.leaves(ctx)
  if not leaves:
    raise ValueError("ctx must be a non-empty pytree of [B, ...] arrays.")
  B = leaves[0].shape[0]
  base = None if steps is not None and L >= steps else jnp.zeros((B, d, d, n_cols), dtype)
  ctxs = jax.tree.map(lambda c: jnp.zeros((L,) + c.shape, c.dtype), ctx)
  return ChunkedTrace(base, ctxs, jnp.zeros((L,), dtype), jnp.zeros((L, B, n_cols), dtype),
                      jnp.zeros((), jnp.int32))


def bytes_per_example(d: int, n_cols: int, chunk: int, itemsize: int, *, base: bool,
                      ctx_size: int) -> int:
  """Memory of one example's chunked trace: E⁰ (if kept) plus L·(ctx_size + n') for the chunk."""
  return int(((d * d * n_cols) if base else 0) + chunk * (ctx_size + n_cols)) * itemsize


def _slot(tree, i):
  return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, 0, keepdims=False), tree)


def _fold(tr: ChunkedTrace, link: Callable) -> ChunkedTrace:
  """E⁰ ← (C_L⋯C_1)·E⁰ + Σ_j (C_L⋯C_{j+1})·D(a_j); empties the chunk."""
  L, B, n_cols = tr.inputs.shape
  d = tr.base.shape[1]
  rows_link = jax.vmap(link, in_axes=(None, 1), out_axes=1)  # d row vectors per example

  def back(prod, slot):  # prod = C_L⋯C_{j+1} (rows) before the step, C_L⋯C_j after
    ctx_j, c_j = slot
    return c_j * rows_link(ctx_j, prod), prod

  eye = jnp.broadcast_to(jnp.eye(d, dtype=tr.inputs.dtype), (B, d, d))
  prod, tails = jax.lax.scan(back, eye, (tr.ctxs, tr.decays), reverse=True)  # tails [L, B, d, d]
  added = jnp.einsum("lbki,lbj->bkij", tails, tr.inputs, precision=_PRECISION)  # [B, d, d, n']
  base, _ = kernels.trace_step(tr.base.reshape(B, d, d * n_cols), prod,
                               added.reshape(B, d, d * n_cols), jnp.zeros((B, d), prod.dtype), 1.0)
  return tr._replace(base=base.reshape(B, d, d, n_cols), count=jnp.zeros((), jnp.int32))


def chunked_step(tr: ChunkedTrace, ctx, a: Array, delta: Array, c,
                 link: Callable) -> tuple[ChunkedTrace, Array]:
  """One TD step: E ← c·M·E + D(a) and inc = (1/B)·Σ_b δ_b·E_b, on the chunked trace.

  Args:
    tr: the trace before the step.
    ctx: the context of M_{τ−1} for the batch (pytree of [B, ...]).
    a: the new inputs (g_scale·[z_{τ−1}; 1] with a bias), [B, n'].
    delta: TD errors δ_τ, [B, d].
    c: the decay γλ (possibly traced, possibly 0).
    link: ``link(ctx, v) -> v·M`` for a batch (ctx leaves [B, ...], v [B, d] -> [B, d]); linear
      in v.

  Returns:
    (trace after the step, inc [d, n'] = (1/B)·Σ_b δ_b·E_b).
  """
  L, B, n_cols = tr.inputs.shape
  j = tr.count
  put = lambda buf, v: jax.lax.dynamic_update_index_in_dim(buf, v.astype(buf.dtype), j, 0)
  ctxs = jax.tree.map(put, tr.ctxs, ctx)
  decays = put(tr.decays, jnp.asarray(c))
  inputs = put(tr.inputs, a)

  def back(it, carry):  # slots i = j, j−1, ..., 0 (the filled ones only)
    w, inc = carry  # w = δ·C_j⋯C_{i+1}: slot i's coefficient
    i = j - it
    inc = inc + jnp.einsum("bi,bj->ij", w, _slot(inputs, i), precision=_PRECISION)  # Σ_b w⊗a_i
    return _slot(decays, i) * link(_slot(ctxs, i), w), inc

  d = delta.shape[-1]
  w0, inc = jax.lax.fori_loop(0, j + 1, back, (delta.astype(inputs.dtype),
                                               jnp.zeros((d, n_cols), inputs.dtype)))
  if tr.base is not None:
    inc = inc + jnp.einsum("bk,bkij->ij", w0, tr.base, precision=_PRECISION)
  tr = ChunkedTrace(tr.base, ctxs, decays, inputs, j + 1)
  if tr.base is not None:
    tr = jax.lax.cond(j + 1 == L, functools.partial(_fold, link=link), lambda t: t, tr)
  return tr, inc / B
