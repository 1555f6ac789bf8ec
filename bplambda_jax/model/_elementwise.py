"""Element-wise recurrent cells: the recurrent weights are vectors, not matrices.

In an element-wise cell every unit's state depends only on its own previous state, so the state
Jacobian J_t is diagonal or unit-block-diagonal. For these cells e-prop is exact RTRL (the implicit
part D_t is all of J_t) at O(k·P) memory, and BP(λ)'s online trace keeps J_t's structure
(:mod:`bplambda_jax.credit`'s structured traces):

* :func:`lru`: a real-valued diagonal linear recurrent unit with an element-wise output
  non-linearity (``jacobian='block'``: a unit is (h_k, x_k)), or without one (``'diagonal'``);
* :func:`elementwise_lstm`: an LSTM whose recurrent weights are per unit (``'block'``: a unit is
  (h_k, c_k)); its e-prop flavour transition K_t is diagonal.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bplambda_jax import _validation
from bplambda_jax.model._cells import (ACTIVATIONS, Cell, check_size, columnar_lstm, float_dtype,
                                       uniform, weight_units, zeros_state)

LRU_ACTIVATIONS = {**ACTIVATIONS, "gelu": jax.nn.gelu}


def _check_radius(name, value):
  return _validation.number(name, value, above=0.0, below=1.0, what="a number in (0, 1)")


def lru(hidden_size: int, activation: str = "gelu", *, r_min: float = 0.9,
        r_max: float = 0.999) -> Cell:
  """A real-valued diagonal linear recurrent unit, after the LRU of Orvieto et al. (2023).

  Per unit k, with input u_t [D_in]::

      λ = exp(−exp(ν)) ∈ (0, 1)                     (stable for every real ν)
      x_t = λ⊙x_{t−1} + √(1 − λ²)⊙(W_in u_t + b)     (the LRU's normalisation of the input)
      h_t = φ(x_t)                                   (element-wise)

  The recurrence is linear and diagonal; φ is the non-linear readout that a deep LRU places
  between layers (an MLP there; here the element-wise φ, since the model's readout is linear in
  h). The state is s = [h; x] ([2H], unit k = (h_k, x_k)) and J_t is unit-block-diagonal with
  blocks [[0, φ'(x_t)·λ], [0, λ]]: nothing depends on h_{t−1}. With ``activation='identity'``
  h = x, the state is x alone ([H]) and J_t = diag(λ).

  Parameters ``w_in [H, D_in]`` and ``b [H]`` (U(±1/√D_in)) and ``nu [H]``, initialised so that
  λ² is uniform on [r_min², r_max²] (the LRU's ring initialisation, real-valued). All recurrence
  is inside a unit, so the implicit part of J_t is all of it (``implicit_units``): e-prop and
  columnar RTRL are exact RTRL for this cell.

  Args:
    hidden_size: H.
    activation: φ, one of 'gelu' (default), 'tanh', 'relu', 'sigmoid', 'identity'.
    r_min: smallest initial decay |λ|, in (0, 1).
    r_max: largest initial decay |λ|, in [r_min, 1).
  """
  H = check_size("hidden_size", hidden_size)
  if activation not in LRU_ACTIVATIONS:
    raise ValueError(f"activation must be one of {sorted(LRU_ACTIVATIONS)}, got "
                     f"{activation!r}.")
  r_min, r_max = _check_radius("r_min", r_min), _check_radius("r_max", r_max)
  if r_min > r_max:
    raise ValueError(f"r_min must be <= r_max, got r_min={r_min} and r_max={r_max}.")
  phi = LRU_ACTIVATIONS[activation]
  linear = activation == "identity"

  def init(key, input_size, dtype=None):
    d = check_size("input_size", input_size)
    dtype = float_dtype(dtype)
    k1, k2, k3 = jax.random.split(key, 3)
    lam_sq = jax.random.uniform(k1, (H,), dtype, r_min ** 2, r_max ** 2)
    bound = 1.0 / np.sqrt(d)
    return {"w_in": uniform(k2, (H, d), bound, dtype), "b": uniform(k3, (H,), bound, dtype),
            "nu": jnp.log(-0.5 * jnp.log(lam_sq))}  # exp(−exp(ν)) = √(λ²)

  def recur(params, x_tm1, u):
    e = jnp.exp(params["nu"])
    lam = jnp.exp(-e)
    norm = jnp.sqrt(-jnp.expm1(-2.0 * e))  # √(1 − λ²), accurate as λ → 1
    return lam * x_tm1 + norm * (params["w_in"] @ u + params["b"])  # [H, D]·[D]

  def step(params, s, u):
    if linear:
      return recur(params, s, u)
    x = recur(params, s[H:], u)
    return jnp.concatenate([phi(x), x])

  def split_step(params, s_imp, s_exp, u):  # every path stays inside its unit: all implicit
    del s_exp
    return step(params, s_imp, u)

  n = H if linear else 2 * H
  units = np.arange(H) if linear else np.concatenate([np.arange(H), np.arange(H)])
  return Cell("linear_lru" if linear else "lru", H, n, init, step, zeros_state(n), split_step,
              units, weight_units(1, H), jacobian="diagonal" if linear else "block",
              implicit_units=True)


def linear_lru(hidden_size: int) -> Cell:
  """:func:`lru` without the output non-linearity: state x, J_t = diag(λ)."""
  return lru(hidden_size, "identity")


def elementwise_lstm(hidden_size: int) -> Cell:
  """An element-wise LSTM: the recurrent weights are vectors, each unit sees only its own h.

  z^q_k = w_ih^q_k·x_t + w_self^q_k·h_{k,t−1} + b^q_k for the gates q ∈ (i, f, g, o),
  c_t = f⊙c_{t−1} + i⊙g, h_t = o⊙tanh(c_t); state s = [h; c] ([2H]). This is
  :func:`~bplambda_jax.columnar_lstm` without inter-column connections (same parameters,
  ``w_ih [4H, D_in]``, ``w_self [4H]``, ``b [4H]``, and the same initialisation), under the
  name users look for. J_t is unit-block-diagonal (unit k = (h_k, c_k)) and BP(λ)'s e-prop
  flavour transition K_t = ∂c_t/∂c_{t−1} is diagonal.
  """
  return columnar_lstm(hidden_size)._replace(name="elementwise_lstm")
