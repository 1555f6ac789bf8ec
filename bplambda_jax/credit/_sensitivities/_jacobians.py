"""Jacobians of a cell step and their products (per example)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bplambda_jax.model import Cell


def immediate_jacobian(cell: Cell, params, s_tm1, x_t):
  """Ī_t = ∂s_t/∂Ψ with s_{t−1} fixed: a pytree like params with leaves [n, *P]."""
  return jax.jacrev(cell.step, argnums=0)(params, s_tm1, x_t)


def immediate_credit(cell: Cell, params, s_tm1, x_t, ls_t):
  """ls_t·Ī_t by one vjp of the step (no Jacobian is formed)."""
  _, vjp = jax.vjp(lambda p: cell.step(p, s_tm1, x_t), params)
  return vjp(ls_t)[0]


def require_split(cell: Cell, rule: str):
  if cell.split_step is None:
    raise ValueError(
        f"{rule} needs the cell to declare its implicit/explicit split (Cell.split_step); cell "
        f"{cell.name!r} does not. Library cells and flax's own cells declare it; for another "
        f"flax cell pass split_step= to from_flax().")


def implicit_jacobian(cell: Cell, params, s_tm1, x_t):
  """D_t = ∂s_t/∂s_imp (the implicit part of J_t), [n, n]."""
  return jax.jacfwd(cell.split_step, argnums=1)(params, s_tm1, s_tm1, x_t)


def explicit_jacobian(cell: Cell, params, s_tm1, x_t):
  """X_t = ∂s_t/∂s_exp (the explicit part of J_t), [n, n]."""
  return jax.jacfwd(cell.split_step, argnums=2)(params, s_tm1, s_tm1, x_t)


def state_jacobian(cell: Cell, params, s_tm1, x_t):
  """J_t = ∂s_t/∂s_{t−1}, [n, n]."""
  return jax.jacfwd(cell.step, argnums=1)(params, s_tm1, x_t)


def contract(ls, z):
  """ls·Z for every leaf: [n] · [n, *P] -> [*P]."""
  return jax.tree.map(lambda zl: jnp.tensordot(ls, zl, axes=1), z)


def implicit_vjp(cell, params, s_tm1, x_t, a):
  """a·D_t by one vjp of split_step with respect to s_imp, [n]."""
  _, vjp = jax.vjp(lambda si: cell.split_step(params, si, s_tm1, x_t), s_tm1)
  return vjp(a)[0]


def state_vjp(cell, params, s_tm1, x_t, a):
  """a·J_t by one vjp of the step, [n]."""
  _, vjp = jax.vjp(lambda s: cell.step(params, s, x_t), s_tm1)
  return vjp(a)[0]

