"""Sensitivities: how each recurrent parameter influences the current state.

This is the first axis of credit assignment (``design.md``). A rule's gradient estimate at step t
is a learning signal ``ls_t`` (a row vector over the state s_t) contracted with the influence
Z_t = ds_t/dΨ or an approximation of it:

    Z_t = A_t·Z_{t−1} + Ī_t,      gradient += ls_t·Z_t

where Ī_t = ∂s_t/∂Ψ with s_{t−1} fixed, and A_t is the rule's propagator:

================  ===========================  =============================================
sensitivity       A_t                          meaning
================  ===========================  =============================================
``immediate``     0                            one-step credit only
``eprop``         D_t (implicit part of J_t)   e-prop eligibility traces (Bellec et al. 2020)
``rtrl``          J_t (full state Jacobian)    exact RTRL (Williams & Zipser 1989)
================  ===========================  =============================================

A :class:`Sensitivity` is per example (vmap over the batch)::

    state = sens.init(params)                              # Z_{-1}
    state = sens.update(params, state, s_tm1, x_t)         # Z_t
    g = sens.credit(params, state, s_tm1, x_t, ls_t)       # ls_t·Z_t, a pytree like params

For the reverse (sequence) form, ``adjoint(params, s_tm1, x_t, a_t) = a_t·A_t`` so that
Σ_t ls_t·Z_t = Σ_t a_t·Ī_t with a_t = ls_t + adjoint_{t+1}(a_{t+1}); ``adjoint`` is None when
A_t = 0. Dense traces here store Z as a pytree of leaves [n, *P]; they are the reference
implementation of the influence recursions.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from bplambda_jax import cells as cells_lib

Params = Any


class Sensitivity(NamedTuple):
  """Influence of the recurrent parameters on the state (per example).

  Attributes:
    name: 'immediate', 'eprop', 'rtrl', ...
    init: ``init(params) -> state``.
    update: ``update(params, state, s_tm1 [n], x_t [D_in]) -> state`` (now describing s_t).
    credit: ``credit(params, state, s_tm1, x_t, ls_t [n]) -> grads`` = ls_t·Z_t.
    adjoint: ``adjoint(params, s_tm1, x_t, a_t [n]) -> a_t·A_t [n]`` or None when A_t = 0.
  """

  name: str
  init: Callable[[Params], Any]
  update: Callable[..., Any]
  credit: Callable[..., Params]
  adjoint: Optional[Callable[..., jax.Array]]


def immediate_jacobian(cell: cells_lib.Cell, params, s_tm1, x_t):
  """Ī_t = ∂s_t/∂Ψ with s_{t−1} fixed: a pytree like params with leaves [n, *P]."""
  return jax.jacrev(cell.step, argnums=0)(params, s_tm1, x_t)


def immediate_credit(cell: cells_lib.Cell, params, s_tm1, x_t, ls_t):
  """ls_t·Ī_t by one vjp of the step (no Jacobian is formed)."""
  _, vjp = jax.vjp(lambda p: cell.step(p, s_tm1, x_t), params)
  return vjp(ls_t)[0]


def immediate(cell: cells_lib.Cell) -> Sensitivity:
  """One-step sensitivity Ī_t (A_t = 0): the reference's 'direct eligibility' (spec §5.1)."""

  def init(params):
    del params
    return ()

  def update(params, state, s_tm1, x_t):
    del params, s_tm1, x_t
    return state

  def credit(params, state, s_tm1, x_t, ls_t):
    del state
    return immediate_credit(cell, params, s_tm1, x_t, ls_t)

  return Sensitivity("immediate", init, update, credit, None)


def _require_split(cell: cells_lib.Cell, rule: str):
  if cell.split_step is None:
    raise ValueError(
        f"{rule} needs the cell to declare its implicit/explicit split (Cell.split_step); cell "
        f"{cell.name!r} does not. Library cells declare it; for a flax cell pass "
        f"split_step= to from_flax().")


def implicit_jacobian(cell: cells_lib.Cell, params, s_tm1, x_t):
  """D_t = ∂s_t/∂s_imp (the implicit part of J_t), [n, n]."""
  return jax.jacfwd(cell.split_step, argnums=1)(params, s_tm1, s_tm1, x_t)


def explicit_jacobian(cell: cells_lib.Cell, params, s_tm1, x_t):
  """X_t = ∂s_t/∂s_exp (the explicit part of J_t), [n, n]."""
  return jax.jacfwd(cell.split_step, argnums=2)(params, s_tm1, s_tm1, x_t)


def state_jacobian(cell: cells_lib.Cell, params, s_tm1, x_t):
  """J_t = ∂s_t/∂s_{t−1}, [n, n]."""
  return jax.jacfwd(cell.step, argnums=1)(params, s_tm1, x_t)


def apply_rows(a, z):
  """A·Z for every leaf: [n, n] · [n, *P] -> [n, *P]."""
  return jax.tree.map(lambda zl: jnp.tensordot(a, zl, axes=1), z)


def contract(ls, z):
  """ls·Z for every leaf: [n] · [n, *P] -> [*P]."""
  return jax.tree.map(lambda zl: jnp.tensordot(ls, zl, axes=1), z)


def dense_trace(cell: cells_lib.Cell, name: str,
                propagator: Callable[[Params, jax.Array, jax.Array], jax.Array],
                adjoint: Optional[Callable[..., jax.Array]] = None) -> Sensitivity:
  """A sensitivity carrying the dense influence Z [n, *P] with Z_t = A_t Z_{t−1} + Ī_t.

  Args:
    cell: the cell.
    name: the sensitivity's name.
    propagator: ``propagator(params, s_tm1, x_t) -> A_t [n, n]``.
    adjoint: ``adjoint(params, s_tm1, x_t, a) -> a·A_t`` for the reverse form, or None.
  """

  def init(params):
    n = cell.state_size
    return jax.tree.map(lambda p: jnp.zeros((n,) + p.shape, p.dtype), params)

  def update(params, z, s_tm1, x_t):
    a = propagator(params, s_tm1, x_t)  # [n, n]
    ibar = immediate_jacobian(cell, params, s_tm1, x_t)  # [n, *P]
    return jax.tree.map(lambda zl, il: jnp.tensordot(a, zl, axes=1) + il, z, ibar)

  def credit(params, z, s_tm1, x_t, ls_t):
    del params, s_tm1, x_t
    return contract(ls_t, z)

  return Sensitivity(name, init, update, credit, adjoint)


def eprop(cell: cells_lib.Cell) -> Sensitivity:
  """e-prop eligibility traces: Z⁽⁰⁾_t = D_t Z⁽⁰⁾_{t−1} + Ī_t (Bellec et al. 2020).

  For the LSTM this is exactly spec §5.2: the h-rows of Z are D_t⊙ε^q_t for gates i, f, g and the
  immediate e^o_t for gate o, with ε^q_t = f_t⊙ε^q_{t−1} + π^q_t⊗pre_t.
  """
  _require_split(cell, "eprop")

  def adjoint(params, s_tm1, x_t, a):
    _, vjp = jax.vjp(lambda si: cell.split_step(params, si, s_tm1, x_t), s_tm1)
    return vjp(a)[0]

  return dense_trace(cell, "eprop", lambda p, s, x: implicit_jacobian(cell, p, s, x), adjoint)


def rtrl(cell: cells_lib.Cell) -> Sensitivity:
  """Exact RTRL: Z_t = J_t Z_{t−1} + Ī_t (Williams & Zipser 1989). O(n·P) memory, O(n²·P) time."""

  def adjoint(params, s_tm1, x_t, a):
    _, vjp = jax.vjp(lambda s: cell.step(params, s, x_t), s_tm1)
    return vjp(a)[0]

  return dense_trace(cell, "rtrl", lambda p, s, x: state_jacobian(cell, p, s, x), adjoint)


SENSITIVITIES: dict[str, Callable[[cells_lib.Cell], Sensitivity]] = {
    "immediate": immediate,
    "eprop": eprop,
    "rtrl": rtrl,
}


def get_sensitivity(name_or_sens, cell: cells_lib.Cell) -> Sensitivity:
  """A sensitivity by name (see ``SENSITIVITIES``) or a ready :class:`Sensitivity`."""
  if isinstance(name_or_sens, Sensitivity):
    return name_or_sens
  if name_or_sens not in SENSITIVITIES:
    raise ValueError(f"sensitivity must be one of {sorted(SENSITIVITIES)}, got "
                     f"{name_or_sens!r}.")
  return SENSITIVITIES[name_or_sens](cell)
