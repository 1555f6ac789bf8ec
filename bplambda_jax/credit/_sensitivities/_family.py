"""The sensitivity family: immediate, e-prop, RTRL, SnAp-n, columnar RTRL, m-order e-prop."""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from bplambda_jax import _validation
from bplambda_jax.credit._cell_structure import (UnitLayout, cached_by_shape, nonzeros_over_probes,
                                                 unit_blocks_dense, unit_blocks_jvp,
                                                 unit_jacobians_at, resolve_compressed,
                                                 snap_pattern, unit_layout)
from bplambda_jax.credit._sensitivities._influence import compressed_trace, dense_trace
from bplambda_jax.credit._sensitivities._jacobians import (explicit_jacobian, immediate_credit,
                                                           immediate_jacobian, implicit_jacobian,
                                                           implicit_vjp, require_split,
                                                           state_jacobian, state_vjp)
from bplambda_jax.credit._sensitivities._protocol import Reverse, Sensitivity, step_context
from bplambda_jax.model import Cell


def _check_int(name, value, minimum):
  return _validation.integer(name, value, minimum=minimum, what=f"an integer >= {minimum}")


def _vjp_reverse(vjp: Callable) -> Reverse:
  """A one-row reverse form from ``vjp(params, s_tm1, x_t, a [n]) -> a·A_t``."""

  def apply(params, ctx, a):
    return vjp(params, *ctx, a[0])[None]

  return Reverse(1, step_context, apply)


def _implicit_blocks(cell: Cell, layout: UnitLayout) -> Callable:
  """The unit blocks [U, k, k] of D_t, from k jvps of split_step (D_t is unit-block-diagonal)."""

  def blocks(params, s_tm1, x_t):
    return unit_blocks_jvp(lambda si: cell.split_step(params, si, s_tm1, x_t), s_tm1, layout)

  return blocks


def _state_blocks(cell: Cell, layout: UnitLayout) -> Callable:
  """The unit blocks [U, k, k] of J_t: k jvps when the cell declares J_t unit-block-diagonal
  (or declares that its implicit part is those blocks), else read off the dense J_t."""
  if cell.implicit_units:
    return _implicit_blocks(cell, layout)

  def blocks(params, s_tm1, x_t):
    if cell.jacobian in ("block", "diagonal"):
      return unit_blocks_jvp(lambda s: cell.step(params, s, x_t), s_tm1, layout)
    return unit_blocks_dense(state_jacobian(cell, params, s_tm1, x_t), layout)

  return blocks


def immediate(cell: Cell) -> Sensitivity:
  """One-step sensitivity Ī_t (A_t = 0): the authors' "direct eligibility" of the vanilla RNN."""

  def init(params):
    del params
    return ()

  def update(params, state, s_tm1, x_t):
    del params, s_tm1, x_t
    return state

  def credit(params, state, s_tm1, x_t, ls_t):
    del state
    return immediate_credit(cell, params, s_tm1, x_t, ls_t)

  return Sensitivity("immediate", init, update, credit, Reverse(1, step_context, None))


def eprop(cell: Cell, compressed: Optional[bool] = None) -> Sensitivity:
  """e-prop eligibility traces: Z⁽⁰⁾_t = D_t Z⁽⁰⁾_{t−1} + Ī_t (Bellec et al. 2020).

  For the LSTM the h-rows of Z are D_t⊙ε^q_t for gates i, f, g and the immediate e^o_t for gate
  o, and the c-rows are ε^q_t (0 for gate o), with ε^q_t = f_t⊙ε^q_{t−1} + π^q_t⊗pre_t (π^q the
  derivative of c_t with respect to gate q's pre-activation, pre the gate's input).

  Args:
    cell: a cell with ``split_step``.
    compressed: None (default) uses the unit-local trace [k, *P] when the cell declares its units
      and the dense trace [n, *P] otherwise; True insists on the compressed trace; False forces
      the dense one. Both give the same numbers.
  """
  require_split(cell, "eprop")
  if not resolve_compressed(cell, compressed, "eprop"):
    return dense_trace(cell, "eprop", lambda p, s, x: implicit_jacobian(cell, p, s, x),
                       _vjp_reverse(lambda p, s, x, a: implicit_vjp(cell, p, s, x, a)))
  layout = unit_layout(cell, "eprop")
  return compressed_trace(cell, "eprop", _implicit_blocks(cell, layout), what="eprop",
                          reverse=True)


def rtrl(cell: Cell) -> Sensitivity:
  """Exact RTRL: Z_t = J_t Z_{t−1} + Ī_t (Williams & Zipser 1989). O(n·P) memory, O(n²·P) time."""
  return dense_trace(cell, "rtrl", lambda p, s, x: state_jacobian(cell, p, s, x),
                     _vjp_reverse(lambda p, s, x, a: state_vjp(cell, p, s, x, a)))


def snap(cell: Cell, n: int = 1, compressed: Optional[bool] = None) -> Sensitivity:
  """SnAp-n (Menick et al. 2021): RTRL with Z restricted to a fixed sparsity pattern.

  Z_t = M⊙(J_t Z_{t−1} + Ī_t), where M keeps entry (i, p) iff parameter p can influence state
  entry i within n steps: S_1 = nz(Ī), S_{k+1} = S_k ∪ nz(J)·S_k, the non-zero patterns read off
  random probe points (:func:`snap_pattern`). Once n reaches the pattern's fill depth (2 for a
  dense RNN) SnAp-n is RTRL; with sparse weights (e.g. a columnar LSTM with sparse connections)
  it stays an approximation. No reverse form (the mask acts entry-wise), so online mode only.

  Args:
    cell: any cell.
    n: the number of steps, ≥ 1. The sensitivity is named ``f'snap:{n}'``.
    compressed: only for n = 1, where M lies inside each entry's unit: None (default) uses the
      unit-local trace [k, *P] when the cell declares its units, True insists on it, False
      forces the dense trace. The k×k blocks of J_t come from k jvps when the cell declares J_t
      unit-block-diagonal (``Cell.jacobian``) and from the dense J_t (n jvps, O(n²) memory)
      otherwise. For n ≥ 2
      the pattern leaves the unit and the trace is dense; compressed=True is then an error.
  """
  n = _check_int("n", n, 1)
  name = f"snap:{n}"
  if compressed and n != 1:
    raise ValueError(f"snap: the compressed (unit-local) trace exists for n = 1 only; got "
                     f"n={n}. Use compressed=None or False.")
  use_compressed = n == 1 and resolve_compressed(cell, compressed, name)
  if not use_compressed:
    pattern = cached_by_shape(lambda params, x_t: snap_pattern(cell, params, x_t, n))
    return dense_trace(cell, name, lambda p, s, x: state_jacobian(cell, p, s, x), None,
                       mask=pattern)

  layout = unit_layout(cell, name)

  def pattern(params, x_t):  # the one-step pattern nz(Ī) in compressed form, [k, *P]
    basis = layout.basis(cell.state_size, jnp.result_type(x_t.dtype, float))
    return nonzeros_over_probes(
        lambda p, s, x: unit_jacobians_at(cell.step, p, s, x, basis)[1], params,
        cell.state_size, x_t)

  return compressed_trace(cell, name, _state_blocks(cell, layout), what=name,
                          mask=cached_by_shape(pattern))


def columnar_rtrl(cell: Cell, compressed: Optional[bool] = None) -> Sensitivity:
  """Columnar RTRL (Javed, White & Sutton 2021): each unit's parameters track their influence on
  that unit's state only, through the unit's own k×k Jacobian block.

  Z_t = blockdiag(J_t)·Z_{t−1} + Ī_t, the blocks taken over the units the cell declares. For a
  columnar network without inter-column connections (``Cell.jacobian`` 'block') J_t is
  block-diagonal and this is exact RTRL at O(k·P) memory; with connections it ignores influence
  through other columns. The blocks come from k jvps of ``split_step`` when the cell declares that
  its implicit part is exactly the unit blocks (``implicit_units``), of ``step`` when J_t is
  declared block-diagonal, and from the dense J_t otherwise.

  Args:
    cell: a cell declaring its units (``unit_of_state``, ``param_units``).
    compressed: None/True: the unit-local trace [k, *P]; False: the dense trace [n, *P] with the
      propagator blockdiag(J_t) taken from the dense J_t (the reference implementation).
  """
  if cell.unit_of_state is None:
    raise ValueError(f"columnar_rtrl needs a cell that declares its units (Cell.unit_of_state, "
                     f"e.g. columnar_lstm); cell {cell.name!r} does not. Use 'rtrl' or 'snap:1'.")
  layout = unit_layout(cell, "columnar_rtrl")
  if compressed is None:
    compressed = True
  resolve_compressed(cell, compressed, "columnar_rtrl")
  if not compressed:
    keep = np.asarray(cell.unit_of_state)[:, None] == np.asarray(cell.unit_of_state)[None, :]

    def propagator(params, s_tm1, x_t):  # [n, n]
      return jnp.where(keep, state_jacobian(cell, params, s_tm1, x_t), 0)

    return dense_trace(cell, "columnar_rtrl", propagator,
                       _vjp_reverse(lambda p, s, x, a: a @ propagator(p, s, x)))
  return compressed_trace(cell, "columnar_rtrl", _state_blocks(cell, layout),
                          what="columnar_rtrl", reverse=True)


def eprop_m(cell: Cell, m: int) -> Sensitivity:
  """m-order e-prop (Martín-Sánchez, Bohté & Otte 2022, in our formalisation).

  Z_t = Σ_k J_t⋯J_{k+1}·Ī_k with J = D + X, keeping only the terms with at most m factors X:

      Z⁽⁰⁾_t = D_t Z⁽⁰⁾_{t−1} + Ī_t,     Z⁽ʲ⁾_t = D_t Z⁽ʲ⁾_{t−1} + X_t Z⁽ʲ⁻¹⁾_{t−1}  (1 ≤ j ≤ m),

  credit ls_t·Σ_j Z⁽ʲ⁾_t. m = 0 is e-prop; m ≥ T − 1 is exact RTRL over T steps. The state is a
  pytree like params with leaves [m+1, n, *P] (row j is Z⁽ʲ⁾). The reverse form carries a
  co-state a = (a⁽⁰⁾…a⁽ᵐ⁾), a⁽ʲ⁾_t = ls_t + a⁽ʲ⁾_{t+1}·D_{t+1} + a⁽ʲ⁺¹⁾_{t+1}·X_{t+1}
  (a⁽ᵐ⁺¹⁾ = 0), credit Σ_t a⁽⁰⁾_t·Ī_t (``reverse`` with m+1 copies).

  Args:
    cell: a cell with ``split_step``.
    m: the order, an integer ≥ 0. The sensitivity is named ``f'eprop_m:{m}'``.
  """
  m = _check_int("m", m, 0)
  name = f"eprop_m:{m}"
  require_split(cell, name)

  def init(params):
    n = cell.state_size
    return jax.tree.map(lambda p: jnp.zeros((m + 1, n) + p.shape, p.dtype), params)

  def update(params, z, s_tm1, x_t):
    d = implicit_jacobian(cell, params, s_tm1, x_t)  # [n, n]
    x = explicit_jacobian(cell, params, s_tm1, x_t)  # [n, n]
    ibar = immediate_jacobian(cell, params, s_tm1, x_t)  # [n, *P]

    def leaf(zl, il):  # zl [m+1, n, *P]
      dz = jnp.einsum("ik,jk...->ji...", d, zl)  # [n, n]·[m+1, n, *P]
      xz = jnp.einsum("ik,jk...->ji...", x, zl[:-1])  # [n, n]·[m, n, *P]
      return (dz + jnp.concatenate([il[None], xz], axis=0)).astype(zl.dtype)

    return jax.tree.map(leaf, z, ibar)

  def credit(params, z, s_tm1, x_t, ls_t):
    del params, s_tm1, x_t
    return jax.tree.map(lambda zl: jnp.tensordot(ls_t, jnp.sum(zl, axis=0), axes=1), z)

  def apply(params, ctx, a):  # a [m+1, n]
    s_tm1, x_t = ctx
    _, vjp = jax.vjp(lambda si, se: cell.split_step(params, si, se, x_t), s_tm1, s_tm1)
    a_d, a_x = jax.vmap(vjp)(a)  # a⁽ʲ⁾·D, a⁽ʲ⁾·X: [m+1, n] each
    return a_d + jnp.concatenate([a_x[1:], jnp.zeros_like(a_x[:1])], axis=0)

  return Sensitivity(name, init, update, credit, Reverse(m + 1, step_context, apply))

