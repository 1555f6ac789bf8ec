"""What ĝ predicts in each flavour of BP(λ), and the transition M that carries it back a step.

Every flavour gives, per example, a context ctx_τ of the TD step τ and the vector–Jacobian
product ``link(cp, ctx, v) = v·M_τ`` (v in ĝ's output space); M itself is never formed except
by the dense trace (:func:`transition`).

* ``state`` (any cell): z_τ = s_τ, ĝ(s_τ) ≈ Σ_{τ'>τ} γ^{τ'−τ−1}·∂L_{τ'}/∂s_τ, u_τ = ℓ_τ·J_τ and
  M_τ = J_τ = ∂s_τ/∂s_{τ−1}, ctx_τ = (s_{τ−1}, x_τ). For an LSTM-like cell with ``faithful=True``
  the authors' [h, c] convention replaces J (quirk Q1): total-c vectors v = [ℓ, ℓ⊙D_τ] and
  v·J^{hc}_τ = (v_h⊙D_τ + v_c)·∂c_τ/∂(h_{τ−1}, c_{τ−1}) (:class:`HC`).
* ``eprop`` (cells with an LSTM cell-state path, ``Cell.lstm``): z_τ = s_{τ−1},
  ĝ(s_{τ−1}) ≈ ∂L_{≥τ}/∂c_τ ignoring paths through later output gates (Q2), u_τ = ℓ_{τ−1}⊙D_{τ−1}
  and M_τ = K_τ = ∂c_τ/∂c_{τ−1} through h_{τ−1} = o_{τ−1}⊙act(c_{τ−1}):
  v·K_τ = (v·∂c_τ/∂h_{τ−1})⊙D_{τ−1} + v⊙f_τ, ctx_τ = (π_τ [3, H], f_τ, D_{τ−1}) with π the
  derivatives of c_τ with respect to the gate pre-activations, so v·∂c_τ/∂h_{τ−1} is one product
  with the recurrent weights (``LSTMParts.c_vjp``).

Tested by tests/test_bp_lambda.py, tests/test_eprop_m.py and tests/test_reference_emulation.py.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from bplambda_jax.model import Cell

# a flavour's link context ctx_τ per example or batch: (s_{τ−1}, x_τ) or (π_τ, f_τ, D_{τ−1})
Context = tuple[jax.Array, ...]


def state_link(cell: Cell) -> Callable:
  """v·J_τ by one vjp of the step; ctx = (s_{τ−1} [n], x_τ)."""

  def link(cp, ctx, v):
    s_tm1, x = ctx
    return jax.vjp(lambda s: cell.step(cp, s, x), s_tm1)[1](v)[0]

  return link


def eprop_link(cell: Cell) -> Callable:
  """v·K_τ = c_vjp(π⊙v)⊙D_{τ−1} + v⊙f_τ; ctx = (π [3, H], f [H], D_{τ−1} [H])."""
  lstm = cell.lstm

  def link(cp, ctx, v):
    pi, f, d_tm1 = ctx
    return lstm.c_vjp(cp, pi * v) * d_tm1 + v * f

  return link


def eprop_q(cell: Cell) -> Callable:
  """v·∂c_τ/∂h_{τ−1} = c_vjp(π⊙v): maps the e-prop flavour's ĝ into h_{τ−1} space."""
  lstm = cell.lstm

  def q(cp, ctx, v):
    return lstm.c_vjp(cp, ctx[0] * v)

  return q


def context_zeros(flavour: str, cell: Cell, input_size: int, batch_size: int, dtype) -> Context:
  """A zero link context for a batch: (s [B, n], x [B, D_in]) in the state flavour,
  (π [B, 3, H], f [B, H], D [B, H]) in the e-prop flavour."""
  B, H = batch_size, cell.hidden_size
  if flavour == "state":
    return (jnp.zeros((B, cell.state_size), dtype), jnp.zeros((B, input_size), dtype))
  zH = jnp.zeros((B, H), dtype)
  return (jnp.zeros((B, 3, H), dtype), zH, zH)


def transition(link: Callable, cp, ctx, d_out: int, dtype):
  """M [d_out, d_out] from d_out links of the unit rows (what the dense trace stores)."""
  return jax.vmap(lambda v: link(cp, ctx, v))(jnp.eye(d_out, dtype=dtype))


class HC(NamedTuple):
  """The authors' [h, c] state flavour of an LSTM-like cell (``faithful=True``, quirk Q1)."""

  link: Callable  # link(cp, (s_tm1, x), v [2H]) -> v·J^{hc}
  vector: Callable  # vector(cp, (s_tm1, x), ℓ_h [H]) -> [ℓ, ℓ⊙D] [2H]
  credit: Callable  # credit(cp, s_tm1, x, ls [2H]) -> the authors' local weight update
  local: Callable  # local(p, s_tm1, x) -> (h through o only, c through ∂c/∂θ) [2H]


def hc(cell: Cell) -> HC:
  """The Q1 pieces: J^{hc} with total-c vectors and the local eligibility weight update."""
  lstm, H = cell.lstm, cell.hidden_size

  def d_of(cp, s_tm1, x):  # D_τ = o_τ⊙act'(c_τ)
    i, f, g, o = lstm.gates(cp, s_tm1, x)
    return lstm.output_derivative(o, f * s_tm1[H:] + i * g)

  def link(cp, ctx, v):  # (v_h⊙D_τ + v_c)·∂c_τ/∂(h_{τ−1}, c_{τ−1})
    s_tm1, x = ctx
    c_of = lambda h, c: cell.step(cp, jnp.concatenate([h, c]), x)[H:]
    _, vjp = jax.vjp(c_of, s_tm1[:H], s_tm1[H:])
    a_h, a_c = vjp(v[:H] * d_of(cp, s_tm1, x) + v[H:])
    return jnp.concatenate([a_h, a_c])

  def vector(cp, ctx, ell_h):
    s_tm1, x = ctx
    return jnp.concatenate([ell_h, ell_h * d_of(cp, s_tm1, x)])

  def local(p, s_tm1, x):
    i, f, g, o = lstm.gates(p, s_tm1, x)
    c = f * s_tm1[H:] + i * g
    return jnp.concatenate([o * lstm.activation_fn(jax.lax.stop_gradient(c)), c])

  def credit(cp, s_tm1, x, ls):
    return jax.vjp(lambda p: local(p, s_tm1, x), cp)[1](ls)[0]

  return HC(link, vector, credit, local)
