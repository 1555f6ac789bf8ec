"""Structured synthesiser traces: BP(λ) online when the transition M is diagonal or unit-blocked.

BP(λ)'s online trace of a linear synthesiser ĝ(z) = W z + β (W [d, n]) follows, per example,

    E_τ = γλ·M_{τ−1}·E_{τ−1} + D(a_τ),     D(a)[o, i, j] = 1[o = i]·a_j,     a_τ = [z_{τ−1}; 1]

with M the flavour's transition in ĝ's output space (:mod:`bplambda_jax.rules._bp_lambda`). The
increment D(a) is diagonal in (o, i), so the structure of M is the structure of E:

* M diagonal (a state flavour on a cell whose J_t is diagonal, or the e-prop flavour's
  K_t = ∂c_t/∂c_{t−1} on a cell whose recurrent weights are per unit): E[o, i, j] = 1[o = i]·e[o, j]
  for ever. The trace is e [d, n]: O(d·n) memory and work per step, e-prop's cost, exactly.
* M unit-block-diagonal over U units of k components (a state flavour on a cell with
  ``jacobian='block'``, e.g. an LSTM column's (h, c)): E keeps M's blocks, k²·U·n entries, fewer
  when M's blocks have structural zeros (:class:`~bplambda_jax.kernels.BlockPattern`: the
  hidden output h = φ(x) of a unit whose recurrent state is x needs no trace rows of its own).

Both are the same numbers as the dense trace (only the order of floating-point sums differs) and
exact per step, so per-step clipping and per-step synthesiser updates work unchanged. M's blocks
come from k links (vector–Jacobian products) of the flavour per step, with the vectors that put
1 at component c of every unit, and the step itself is
:func:`bplambda_jax.kernels.structured_step` (a fused Pallas kernel on GPU/TPU, XLA on CPU).

Which structure applies is read from the cell's declarations (:func:`trace_structure`), never
from its name; :func:`~bplambda_jax.credit.check_structure` verifies them for a new cell. The
pattern inside a block is read off the flavour's link at random probe points (OR-ed over units
and probes, as for SnAp's patterns); an entry that vanishes at every probe is treated as zero.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from bplambda_jax import kernels
from bplambda_jax.credit._cell_structure import (UnitLayout, cached_by_shape, run_probes,
                                                 eprop_transition, unit_layout)
from bplambda_jax.kernels import _platform
from bplambda_jax.kernels import _structured_step
from bplambda_jax.model import Cell

STRUCTURES = ("diagonal", "block")

Array = jax.Array


class TraceStructure(NamedTuple):
  """The structure of BP(λ)'s transition M in ĝ's output space (d = k·U entries).

  Attributes:
    kind: 'diagonal' (k = 1) or 'block'.
    layout: the units of ĝ's output space (:class:`~bplambda_jax.internals.UnitLayout` [U, k]).
    pattern: ``pattern(params, x_t) -> BlockPattern`` of M's blocks (only shapes of the cell's
      parameters and of an input x_t [D_in] are used; cached by shape).
  """

  kind: str
  layout: UnitLayout
  pattern: Callable[[Any, Any], kernels.BlockPattern]


def _identity_layout(d: int) -> UnitLayout:
  return UnitLayout(np.arange(d)[:, None])


def trace_structure(cell: Cell, flavour: str, link: Callable, *,
                    want: str = "auto") -> Optional[TraceStructure]:
  """The structure of the flavour's M that the cell declares, or None (dense M).

  * ``'state'`` (M = J_t, or the faithful J^{hc}, in state space [n]): 'diagonal' when the cell
    declares ``jacobian='diagonal'``; 'block' over the cell's units (``unit_of_state``) when it
    declares ``jacobian='block'`` (or 'diagonal' with units, if ``want='block'``).
  * ``'eprop'`` (M = K_t in [H]): 'diagonal' when :func:`~bplambda_jax.internals.eprop_transition`
    derives it from the cell's declarations.

  Args:
    cell: the cell.
    flavour: 'state' or 'eprop'.
    link: the flavour's ``link(params, ctx, v) -> v·M`` (per example), used to probe the blocks'
      pattern; in the state flavour ctx = (s_{τ−1}, x_τ).
    want: 'auto' (whatever the cell declares), 'diagonal' or 'block' (ValueError when the cell does
      not declare it; 'block' also accepts a diagonal M, as 1×1 blocks or over declared units).

  Returns:
    A :class:`TraceStructure`, or None when ``want='auto'`` and M has no declared structure.
  """
  if want not in ("auto",) + STRUCTURES:
    raise ValueError(f"want must be 'auto' or one of {STRUCTURES}, got {want!r}.")
  if flavour == "eprop":
    kind = eprop_transition(cell) if cell.lstm is not None else "dense"
    d, what = cell.hidden_size, "K_t = ∂c_t/∂c_{t−1} (the e-prop flavour's transition)"
  elif flavour == "state":
    kind, d, what = cell.jacobian, cell.state_size, "J_t (the state flavour's transition)"
  else:
    raise ValueError(f"flavour must be 'state' or 'eprop', got {flavour!r}.")
  if kind == "dense":
    if want != "auto":
      raise ValueError(f"trace={want!r} needs a {want} transition, but cell {cell.name!r} "
                       f"declares a dense {what}: use trace='chunked' or 'dense'.")
    return None
  if want == "diagonal" and kind != "diagonal":
    raise ValueError(f"trace='diagonal' needs a diagonal transition, but cell {cell.name!r} "
                     f"declares a {kind}-diagonal {what}: use trace='block'.")
  if kind == "diagonal" and (want != "block" or flavour == "eprop" or
                             cell.unit_of_state is None):
    return TraceStructure("diagonal", _identity_layout(d),
                          lambda params, x_t: kernels.DIAGONAL)
  layout = unit_layout(cell, "structured BP(λ)")

  def pattern(params, x_t):
    def nonzero(p, s, x, r, v):  # one compiled program for every probe point
      del r, v
      return jnp.any(unit_blocks(lambda w: link(p, (s, x), w), layout, d, s.dtype) != 0, -1)

    nz = np.any(run_probes(nonzero, params, cell.state_size, x_t), axis=0)  # [k, k]
    return kernels.block_pattern(nz.tolist())

  return TraceStructure("block", layout, cached_by_shape(pattern))


# ----------------------------------------------------------------------------- components
def by_component(v: Array, layout: UnitLayout) -> Array:
  """v [..., d] -> [..., k, U] with [c, u] = v[index[u, c]] (a reshape when component-major)."""
  if layout.component_major:
    return v.reshape(v.shape[:-1] + (layout.width, layout.units))
  return v[..., layout.index.T]


def from_components(w: Array, layout: UnitLayout) -> Array:
  """The inverse of :func:`by_component`: w [..., k, U] -> v [..., d]."""
  if layout.component_major:
    return w.reshape(w.shape[:-2] + (layout.width * layout.units,))
  out = jnp.zeros(w.shape[:-2] + (layout.index.size,), w.dtype)
  return out.at[..., layout.index.T].set(w)


def unit_blocks(link: Callable[[Array], Array], layout: UnitLayout, d: int, dtype) -> Array:
  """M's diagonal blocks [k, k, U], blocks[c, c', u] = M[(u, c), (u, c')], from k links.

  Exact when M is unit-block-diagonal: the link of the vector e_c (1 at component c of every
  unit) is Σ_u row (u, c) of M, whose entries in unit u are that unit's row c.

  Args:
    link: ``link(v [d]) -> v·M [d]`` (per example), linear in v.
    layout: the units [U, k] of the d entries.
    d: the size of M.
    dtype: dtype of the basis vectors.
  """
  basis = jnp.asarray(layout.basis(d, dtype))  # [k, d]
  return by_component(jax.vmap(link)(basis), layout)  # [k, d] -> [k(c), k(c'), U]


def apply_blocks(blocks: Array, v: Array, layout: UnitLayout) -> Array:
  """v·M from M's blocks: (v·M)[(u, c')] = Σ_c v[(u, c)]·M[(u, c), (u, c')].

  Args:
    blocks: [..., k, k, U] (:func:`unit_blocks`).
    v: [..., d].
    layout: the units [U, k].

  Returns:
    v·M, [..., d].
  """
  vc = by_component(v, layout)  # [..., k, U]
  out = sum(vc[..., c, None, :] * blocks[..., c, :, :] for c in range(layout.width))
  return from_components(out, layout)


# ----------------------------------------------------------------------------- the trace
def structured_trace_init(batch_size: int, pattern: kernels.BlockPattern, units: int, n_cols: int,
                    dtype, *, impl: Optional[str] = None) -> Array:
  """An empty structured trace, [B, S, U, P] (S stored pairs; P = n_cols, padded to whole
  kernel tiles when the Pallas kernel will run, so the step never copies the trace to pad it).

  Args:
    batch_size: B.
    pattern: the blocks' :class:`~bplambda_jax.kernels.BlockPattern`.
    units: U.
    n_cols: columns of the synthesiser's W (plus one for β).
    dtype: the trace's float dtype.
    impl: the kernel implementation the steps will use; None: the automatic choice.
  """
  impl = impl or _platform.select_impl(None, dtype)
  P = _structured_step.padded_columns(n_cols, impl)
  return jnp.zeros((batch_size, len(pattern.stored), units, P), dtype)


def structured_trace_step(trace: Array, blocks: Array, a: Array, delta: Array, c: Any,
                    pattern: kernels.BlockPattern, layout: UnitLayout,
                    *, impl: Optional[str] = None) -> tuple[Array, Array]:
  """One TD step E ← c·M·E + D(a), inc = (1/B)·Σ_b δ_b·E_b on the structured trace.

  Args:
    trace: [B, S, U, P] (:func:`structured_trace_init`; P ≥ n').
    blocks: M_{τ−1}'s blocks, [B, k, k, U].
    a: the new inputs [z_{τ−1}; 1], [B, n'].
    delta: TD errors δ_τ, [B, d].
    c: the decay γλ (possibly traced).
    pattern: the blocks' pattern.
    layout: the units [U, k] of ĝ's output space.
    impl: as in :func:`bplambda_jax.kernels.structured_step`.

  Returns:
    (trace after the step, inc [d, n'] = (1/B)·Σ_b δ_b·E_b).
  """
  n_cols = a.shape[-1]
  P = trace.shape[-1]
  if P > n_cols:  # the stored columns are padded for the kernel's tiles; a is zero there
    a = jnp.pad(a, ((0, 0), (0, P - n_cols)))
  trace, inc = kernels.structured_step(trace, blocks, a, by_component(delta, layout), c, pattern,
                                       impl=impl)
  return trace, _rows_from_components(inc[..., :n_cols], layout)


def _rows_from_components(inc: Array, layout: UnitLayout) -> Array:
  """[k, U, n'] (row c' of every unit) -> [d, n'] (a reshape when component-major)."""
  flat = inc.reshape((-1,) + inc.shape[2:])  # row c'·U + u
  if layout.component_major:
    return flat
  return jnp.zeros_like(flat).at[layout.index.T.ravel()].set(flat)


def structured_bytes_per_example(pattern: kernels.BlockPattern, units: int, n_cols: int,
                                 itemsize: int) -> int:
  """Memory of one example's structured trace and its transition blocks: (S·n' + k²)·U words."""
  return int((len(pattern.stored) * n_cols + pattern.k ** 2) * units * itemsize)
