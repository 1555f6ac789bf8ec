"""Sensitivity traces: dense influence matrices and compressed unit-local traces."""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from bplambda_jax.credit._cell_structure import (cached_by_shape, compressed_ibar, spread_of,
                                                 param_unit_arrays, unit_layout)
from bplambda_jax.credit._sensitivities._jacobians import contract, immediate_jacobian
from bplambda_jax.credit._sensitivities._protocol import Reverse, Sensitivity, sum_leading
from bplambda_jax.model import Cell

Params = Any


def dense_trace(cell: Cell, name: str,
                propagator: Callable[[Params, jax.Array, jax.Array], jax.Array],
                reverse: Optional[Reverse] = None,
                *, mask: Optional[Callable[[Params, jax.Array], Params]] = None) -> Sensitivity:
  """A sensitivity carrying the dense influence Z [n, *P] with Z_t = M⊙(A_t Z_{t−1} + Ī_t).

  Args:
    cell: the cell.
    name: the sensitivity's name.
    propagator: ``propagator(params, s_tm1, x_t) -> A_t [n, n]``.
    reverse: the reverse form (a·A_t), or None. Must be None when ``mask`` is given (a mask has
      no row-wise reverse form).
    mask: optional ``mask(params, x_t) -> pytree of bool [n, *P]`` (a fixed pattern M, e.g. SnAp);
      it may only depend on shapes. None keeps every entry.
  """
  if mask is not None and reverse is not None:
    raise ValueError("dense_trace: a masked trace has no row-wise reverse form; pass "
                     "reverse=None with mask=.")

  def init(params):
    n = cell.state_size
    return jax.tree.map(lambda p: jnp.zeros((n,) + p.shape, p.dtype), params)

  def update(params, z, s_tm1, x_t):
    a = propagator(params, s_tm1, x_t)  # [n, n]
    ibar = immediate_jacobian(cell, params, s_tm1, x_t)  # [n, *P]
    new = jax.tree.map(lambda zl, il: (jnp.tensordot(a, zl, axes=1) + il).astype(zl.dtype), z,
                       ibar)  # the trace keeps its dtype (the parameters')
    if mask is not None:
      new = jax.tree.map(lambda zl, ml: jnp.where(ml, zl, 0), new, mask(params, x_t))
    return new

  def credit(params, z, s_tm1, x_t, ls_t):
    del params, s_tm1, x_t
    return contract(ls_t, z)

  return Sensitivity(name, init, update, credit, reverse)


def compressed_trace(cell: Cell, name: str,
                     blocks: Callable[[Params, jax.Array, jax.Array], jax.Array],
                     *, what: str,
                     reverse: bool = False,
                     mask: Optional[Callable[[Params, jax.Array], Params]] = None) -> Sensitivity:
  """A unit-local trace: leaves [k, *P] instead of [n, *P] (see the module docstring).

  Zc_t[c, p] = M[c, p]·(Σ_b A_t[(u(p), c), (u(p), b)]·Zc_{t−1}[b, p] + Ī_t[(u(p), c), p]),
  the dense recursion restricted to each parameter entry's own unit, exact when A_t is
  unit-block-diagonal and entries feed one unit each.

  Args:
    cell: a cell declaring ``unit_of_state`` and ``param_units`` (without shared entries).
    name: the sensitivity's name.
    blocks: ``blocks(params, s_tm1, x_t) -> [U, k, k]``, the diagonal blocks of A_t.
    what: the rule's name for error messages.
    reverse: give the sensitivity a reverse form built from the same blocks (a·A_t), prepared
      for every step at once. Must be False when ``mask`` is given.
    mask: optional ``mask(params, x_t) -> pytree of bool [k, *P]`` (shapes only).
  """
  layout = unit_layout(cell, what)
  k, num_units = layout.width, layout.units

  def spreads_of(params, x_t):  # one Spread per leaf of params, in leaf order
    pu = param_unit_arrays(cell, params, layout, what)
    return [spread_of(ul, num_units) for ul in jax.tree.leaves(pu)]

  spreads_of = cached_by_shape(spreads_of)

  def init(params):
    param_unit_arrays(cell, params, layout, what)
    return jax.tree.map(lambda p: jnp.zeros((k,) + p.shape, p.dtype), params)

  def update(params, z, s_tm1, x_t):
    bt = jnp.moveaxis(blocks(params, s_tm1, x_t), 0, -1)  # [U, k, k] -> [k, k, U]
    ibar = compressed_ibar(cell, params, s_tm1, x_t, layout.basis(s_tm1.shape[0], s_tm1.dtype))

    def leaf(zl, il, sp):  # zl, il [k, *P]: new[a] = Σ_b A[(u, a), (u, b)]·zl[b] + il[a]
      zv = sp.view(zl)
      new = sp.view(il) + sum(sp.table(bt[:, b]) * zv[b] for b in range(k))  # [k, *view]
      return new.reshape(zl.shape).astype(zl.dtype)

    z_leaves, treedef = jax.tree.flatten(z)
    new = treedef.unflatten([leaf(zl, il, sp) for zl, il, sp in
                             zip(z_leaves, treedef.flatten_up_to(ibar), spreads_of(params, x_t))])
    if mask is not None:
      new = jax.tree.map(lambda zl, ml: jnp.where(ml, zl, 0), new, mask(params, x_t))
    return new

  def credit(params, z, s_tm1, x_t, ls_t):
    lsu = layout.gather(ls_t).T  # [U, k] -> [k, U]
    z_leaves, treedef = jax.tree.flatten(z)
    return treedef.unflatten([
        jnp.sum(sp.table(lsu) * sp.view(zl), axis=0).reshape(zl.shape[1:])
        for zl, sp in zip(z_leaves, spreads_of(params, x_t))])

  def credit_sum(params, z, s_tm1, x_t, ls_t):  # batched: z leaves [B, k, *P], ls_t [B, n]
    lsu = jnp.swapaxes(layout.gather(ls_t), 1, 2)  # [B, U, k] -> [B, k, U]
    z_leaves, treedef = jax.tree.flatten(z)
    return treedef.unflatten([
        sum_leading(sp.table(lsu) * sp.view(zl, 2), 2).reshape(zl.shape[2:])
        for zl, sp in zip(z_leaves, spreads_of(params, x_t[0]))])

  rev = None
  if reverse:  # a·A_t from A_t's diagonal blocks, prepared for all steps at once
    # bl [U, k, k], a [1, n]: (a·A)[(u, c)] = Σ_b a[(u, b)]·A[(u, b), (u, c)]
    def apply(params, bl, a):
      del params
      return layout.scatter(jnp.einsum("ub,ubc->uc", layout.gather(a[0]), bl))[None]
    rev = Reverse(1, blocks, apply)
  return Sensitivity(name, init, update, credit, rev, credit_sum)

