"""Sensitivities: how each recurrent parameter influences the current state.

This is the first of the two axes of credit assignment (the second, the learning signal, is the
rules' business). A rule's gradient estimate at step t
is a learning signal ``ls_t`` (a row vector over the state s_t) contracted with the influence
Z_t = ds_t/dΨ or an approximation of it:

    Z_t = A_t·Z_{t−1} + Ī_t,      gradient += ls_t·Z_t

where Ī_t = ∂s_t/∂Ψ with s_{t−1} fixed, J_t = D_t + X_t is the state Jacobian split into its
implicit (within-unit) and explicit (cross-unit) parts (see :class:`bplambda_jax.Cell`), and A_t
is the rule's propagator:

====================  ==================================  =========================================
sensitivity           A_t                                 meaning
====================  ==================================  =========================================
``immediate``         0                                   one-step credit only
``eprop``             D_t                                 e-prop eligibility traces (Bellec et al.)
``eprop_m:m``         D_t, plus X_t up to m times         m-order e-prop (Martín-Sánchez et al.)
``snap:n``            J_t, Z masked to a fixed pattern    SnAp-n (Menick et al. 2021)
``columnar_rtrl``     unit-block diagonal of J_t          columnar RTRL (Javed et al. 2021)
``rtrl``              J_t                                 exact RTRL (Williams & Zipser 1989)
====================  ==================================  =========================================

Names: :func:`get_sensitivity` accepts 'immediate', 'eprop', 'rtrl', 'columnar_rtrl' and the
parametrised forms ``'snap:n'`` (n ≥ 1) and ``'eprop_m:m'`` (m ≥ 0), the grammar of the rule
registry; the factories :func:`snap` and :func:`eprop_m` take n and m as arguments.

A :class:`Sensitivity` is per example (vmap over the batch)::

    state = sens.init(params)                              # Z_{-1}
    state = sens.update(params, state, s_tm1, x_t)         # Z_t
    g = sens.credit(params, state, s_tm1, x_t, ls_t)       # ls_t·Z_t, a pytree like params

**Reverse (sequence) form.** With the parameters fixed within a sequence, Σ_t ls_t·Z_t can be
computed backwards with vector–Jacobian products only: with a co-state a_t [copies, n],

    a_{T−1} = 1⊗ls_{T−1},   a_t = 1⊗ls_t + a_{t+1}·A_{t+1},   Σ_t ls_t·Z_t = Σ_t a_t[0]·Ī_t

(one row for a single trace, m+1 stacked rows for m-order e-prop, whose influence is a stack of
m+1 traces). ``Sensitivity.reverse`` (a :class:`Reverse`) gives a·A_t; it is None for SnAp, whose
mask acts entry-wise on Z, not on the rows a co-state sees.

**Dense and compressed traces.** Dense traces store Z as a pytree of leaves [n, *P] (O(n·P) memory
per example); they are the reference implementation of every recursion here. When A_t is
unit-block-diagonal (e-prop, columnar RTRL, SnAp-1) and every parameter entry feeds one unit
(``Cell.unit_of_state``, ``Cell.param_units``), Z is non-zero only on the k state entries of the
unit a parameter entry feeds, so a *compressed* trace stores leaves [k, *P] (O(k·P)): row c of a
leaf holds ∂s_{(u(p), c)}/∂p, the influence of entry p on component c of its own unit u(p). The
k×k blocks of A_t come from k jvps with tangents that put 1 at component c of every unit, and the
compressed Ī_t from k vjps with the same vectors as cotangents — no n×P Jacobian is formed. Credit
gathers ls by unit for every parameter entry. ``eprop``, ``snap(cell, 1)`` and ``columnar_rtrl``
use the compressed form whenever the cell declares its units (``compressed=None``); pass
``compressed=False`` for the dense form or ``compressed=True`` to insist on the compressed one.
The compressed traces trust the cell's declaration (D_t unit-block-diagonal, each parameter entry
feeding only its unit); :func:`check_structure` verifies it at random points for a new cell
(the library cells satisfy it, and the tests compare every compressed trace with its dense form).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

Params = Any


class Reverse(NamedTuple):
  """The reverse (sequence) form of a sensitivity: the map a ↦ a·A_t on a co-state a [copies, n].

  The map is split in two so that the contexts of every step can be prepared in parallel over
  (t, b) before the (sequential) reverse scan, which then only applies them.

  Attributes:
    copies: number of stacked co-state rows (1 for single traces, m+1 for m-order e-prop).
    prepare: ``prepare(params, s_tm1 [n], x_t) -> ctx_t`` (per example).
    apply: ``apply(params, ctx_t, a [copies, n]) -> a·A_t [copies, n]``, linear in a; None when
      A_t = 0 (the immediate sensitivity: a_t = ls_t).
  """

  copies: int
  prepare: Callable[..., Any]
  apply: Optional[Callable[..., jax.Array]]


def step_context(params, s_tm1, x_t):
  """The default :attr:`Reverse.prepare`: the step's own arguments (s_{t−1}, x_t)."""
  del params
  return (s_tm1, x_t)


class Sensitivity(NamedTuple):
  """Influence of the recurrent parameters on the state (per example).

  Attributes:
    name: 'immediate', 'eprop', 'rtrl', 'snap:2', 'columnar_rtrl', 'eprop_m:1', ...
    init: ``init(params) -> state`` (Z_{−1} = 0, leaves like params with leading trace axes).
    update: ``update(params, state, s_tm1 [n], x_t [D_in]) -> state`` (now describing s_t).
    credit: ``credit(params, state, s_tm1, x_t, ls_t [n]) -> grads`` = ls_t·Z_t, like params.
    reverse: the reverse (sequence) form, or None when there is none (SnAp).
    credit_sum: optionally a batched ``credit`` summed over the batch (state with a leading
      [B] axis, s_tm1, x_t, ls_t [B, ...]); see :func:`batch_credit`.
  """

  name: str
  init: Callable[[Params], Any]
  update: Callable[..., Any]
  credit: Callable[..., Params]
  reverse: Optional[Reverse]
  credit_sum: Optional[Callable[..., Params]] = None


# Above this many elements sum_leading uses a product with ones instead of a reduction.
SUM_AS_PRODUCT_MIN_SIZE = 1 << 21


def sum_leading(tree, axes: int = 1):
  """Sum every leaf over its ``axes`` leading axes.

  XLA on CPU reduces the major axis of a large array much more slowly than it runs the same sum
  as a matrix–vector product with ones, while for small arrays the reduction is the faster one.
  Leaves with at least ``SUM_AS_PRODUCT_MIN_SIZE`` elements use the product, smaller ones the
  reduction; the numbers agree to rounding.
  """
  def one(g):
    if g.size < SUM_AS_PRODUCT_MIN_SIZE:
      return jnp.sum(g, axis=tuple(range(axes)))
    lead = int(np.prod(g.shape[:axes]))
    ones = jnp.ones((lead,), g.dtype)
    return (ones @ g.reshape(lead, -1)).reshape(g.shape[axes:])

  return jax.tree.map(one, tree)


def batch_credit(sens: "Sensitivity", params, state, s_tm1, x_t, ls_t):
  """Σ_b ls_{t,b}·Z_{t,b} over a batch (leading axis of state, s_tm1 [B, n], x_t, ls_t [B, n]).

  Uses the sensitivity's own ``credit_sum`` when it has one, else vmaps ``credit`` and sums.
  """
  if sens.credit_sum is not None:
    return sens.credit_sum(params, state, s_tm1, x_t, ls_t)
  return sum_leading(jax.vmap(sens.credit, in_axes=(None, 0, 0, 0, 0))(params, state, s_tm1, x_t,
                                                                        ls_t))
