"""Recurrent cells as pure functions over a flat per-example state vector.

A :class:`Cell` is a NamedTuple of pure functions plus the structure it declares. Every cell
works on a *flat* state ``s`` of ``state_size`` entries per example, whose first ``hidden_size``
entries are the hidden output ``h`` that the readout sees::

    params = cell.init(key, input_size)
    s_tm1 = cell.initial_state(dtype)            # [n]
    s_t = cell.step(params, s_tm1, x_t)          # x_t: [D_in] -> s_t: [n]
    h_t = cell.hidden(s_t)                       # [H]

Functions are written per example; batch with ``jax.vmap``.

**Declared structure.** Learning rules never look at a cell's name; they read what it declares:

* ``split_step(params, s_imp, s_exp, x)`` computes the same step but takes the previous state
  twice: once for the paths that stay inside a unit (the *implicit* recurrence, e.g. the LSTM cell
  state through the forget gate) and once for the paths that cross units through recurrent
  weights (the *explicit* recurrence). ``step(p, s, x) == split_step(p, s, s, x)``, so by the chain
  rule the state Jacobian splits as J = D + X with D = ∂split_step/∂s_imp and
  X = ∂split_step/∂s_exp. e-prop keeps D only; the m-order family adds X back order by order.
* ``unit_of_state`` gives, for each state entry, the unit it belongs to, and
  ``param_units(params)`` gives, for every parameter entry, the unit whose state it feeds directly
  (−1 for an entry shared by several units). Rules that keep unit-local traces use them.
* ``jacobian`` is the structure of J_t relative to those units: ``'dense'`` (units interact),
  ``'block'`` (J_t is unit-block-diagonal: independent units, e.g. columns) or ``'diagonal'``.
* ``implicit_units`` is True when the implicit part is exactly the unit blocks of J_t
  (D_t = blockdiag(J_t)); columnar RTRL then reads its propagator off ``split_step``.
* ``lstm`` (:class:`LSTMParts`) is set by cells with an LSTM's cell-state path (state [h; c],
  c_t = f⊙c_{t−1} + i⊙g, h_t = o⊙act(c_t)); BP(λ)'s e-prop flavour and its faithful [h, c]
  flavour need it.

:func:`bplambda_jax.credit.check_structure` verifies every declaration of a cell at random points.

Which paths count as implicit is a modelling choice, made per cell:

* LSTM (Bellec et al. 2020): the cell-state path c_{t−1} → c_t (forget gate) is implicit;
  everything through h_{t−1} and W_hh, the unit's own self-weight included, is explicit.
* Single-state cells (linear/tanh RNN, GRU): a unit has no internal state besides h, so its
  implicit recurrence is its self-dependence, i.e. the diagonal of J (self-recurrent weights and,
  for the GRU, the update-gate carry z⊙h_{t−1}). Off-diagonal recurrent weights are explicit.
* Columnar LSTM: a column is the unit; its self-recurrent weights and its cell state are implicit,
  inter-column weights (if any) are explicit.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from bplambda_jax import _validation

Params = Any
Array = jax.Array

JACOBIANS = ("dense", "block", "diagonal")


class LSTMParts(NamedTuple):
  """The cell-state path of an LSTM-like cell with state s = [h; c] ([2H]).

  c_t = f⊙c_{t−1} + i⊙g and h_t = o⊙act(c_t) with i, f, o = gate_fn(z^{i,f,o}) and
  g = act(z^g), where z [4, H] are the gate pre-activations (rows i, f, g, o).

  Attributes:
    preactivations: ``preactivations(params, s_tm1 [2H], x_t) -> z [4, H]``.
    c_vjp: ``c_vjp(params, v [3, H]) -> [H]``, Σ_{q ∈ i, f, g} v_q·∂z^q/∂h_{t−1}: the recurrent
      weights of the gates that feed c, as one product.
    gate_fn: the gate non-linearity (sigmoid).
    activation_fn: act, for g and for h (tanh).
  """

  preactivations: Callable[[Params, Array, Array], Array]
  c_vjp: Callable[[Params, Array], Array]
  gate_fn: Callable[[Array], Array] = jax.nn.sigmoid
  activation_fn: Callable[[Array], Array] = jnp.tanh

  def gates(self, params, s_tm1, x_t):
    """(i, f, g, o), each [H]."""
    zi, zf, zg, zo = self._rows(params, s_tm1, x_t)
    return self.gate_fn(zi), self.gate_fn(zf), self.activation_fn(zg), self.gate_fn(zo)

  def _rows(self, params, s_tm1, x_t):
    # The rows of z as four contiguous slices of the flat [4H] vector: under vmap, indexing
    # z [B, 4, H] along its middle axis makes XLA:CPU's forward and backward passes ~10% slower.
    return jnp.split(self.preactivations(params, s_tm1, x_t).reshape(-1), 4)

  def c_partials(self, params, s_tm1, x_t):
    """(π [3, H], f_t [H], o_t [H]) with π_q = ∂c_t/∂z^q for q = i, f, g.

    Then v·∂c_t/∂h_{t−1} = ``c_vjp(params, π⊙v)`` and v·∂c_t/∂c_{t−1} = v⊙f_t.
    """
    H = s_tm1.shape[-1] // 2
    zi, zf, zg, zo = self._rows(params, s_tm1, x_t)
    ones = jnp.ones_like(zi)
    i, di = jax.jvp(self.gate_fn, (zi,), (ones,))
    f, df = jax.jvp(self.gate_fn, (zf,), (ones,))
    g, dg = jax.jvp(self.activation_fn, (zg,), (ones,))
    o = self.gate_fn(zo)
    pi = jnp.stack([g * di, s_tm1[H:] * df, i * dg])  # [3, H]
    return pi, f, o

  def output_derivative(self, o_t, c_t):
    """D_t = ∂h_t/∂c_t at fixed o_t = o_t⊙act'(c_t), [H]."""
    return o_t * jax.jvp(self.activation_fn, (c_t,), (jnp.ones_like(c_t),))[1]

  def step(self, params, c_tm1, s_exp, x_t):
    """s_t = [h_t; c_t] with the gates taken at s_exp and the cell-state carry at c_tm1."""
    i, f, g, o = self.gates(params, s_exp, x_t)
    c = f * c_tm1 + i * g
    return jnp.concatenate([o * self.activation_fn(c), c])


class Cell(NamedTuple):
  """A recurrent cell: pure functions over a flat per-example state vector, plus its structure.

  Attributes:
    name: short name of the cell (used in errors and results only).
    hidden_size: H, the number of hidden outputs (the first H state entries).
    state_size: n, the size of the flat state s.
    init: ``init(key, input_size, dtype=None) -> params`` (dtype: the parameters' float dtype;
      None means the default float type).
    step: ``step(params, s_tm1 [n], x_t [D_in]) -> s_t [n]``.
    initial_state: ``initial_state(dtype=None) -> s_{−1} [n]``; every rule starts from it.
    split_step: ``split_step(params, s_imp [n], s_exp [n], x_t) -> s_t`` or None when the cell
      does not declare an implicit/explicit split (then e-prop and m-order e-prop reject it).
    unit_of_state: int array [n], the unit each state entry belongs to, or None.
    param_units: ``param_units(params) -> pytree of int arrays`` with the unit each parameter
      entry feeds directly (−1 if several), or None.
    jacobian: the structure of J_t relative to the units: 'dense', 'block' or 'diagonal'.
    implicit_units: True when the implicit part D_t equals the unit-block diagonal of J_t.
    lstm: the cell-state path (:class:`LSTMParts`) of an LSTM-like cell, or None.
  """

  name: str
  hidden_size: int
  state_size: int
  init: Callable[..., Params]
  step: Callable[[Params, Array, Array], Array]
  initial_state: Callable[..., Array]
  split_step: Optional[Callable[[Params, Array, Array, Array], Array]] = None
  unit_of_state: Optional[np.ndarray] = None
  param_units: Optional[Callable[[Params], Params]] = None
  jacobian: str = "dense"
  implicit_units: bool = False
  lstm: Optional[LSTMParts] = None

  def hidden(self, s: Array) -> Array:
    """The hidden output h of a state, [..., n] -> [..., H]."""
    return s[..., : self.hidden_size]


def check_size(name: str, value: Any) -> int:
  """``value`` as an int; ValueError naming ``name`` unless it is a positive integer (not bool)."""
  return _validation.integer(name, value, minimum=1)


def float_dtype(dtype=None, name: str = "dtype"):
  """``dtype`` checked to be a float dtype that JAX computes in; None means the default float type.

  float64 needs JAX's 64-bit mode: without it JAX would silently compute in float32, so it is
  refused with a message saying how to enable the mode. ``name`` names the argument in errors.
  """
  dtype = jnp.dtype(jnp.result_type(float) if dtype is None else dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"{name} must be a floating-point dtype, got {dtype}.")
  if dtype.itemsize > 4 and not jax.config.jax_enable_x64:
    raise ValueError(f"{name}={dtype} needs JAX's 64-bit mode, which is off (JAX would compute "
                     f"in float32). Enable it at the start of the program: "
                     f"jax.config.update('jax_enable_x64', True), or set the environment "
                     f"variable JAX_ENABLE_X64=1.")
  return dtype


def zeros_state(n: int) -> Callable[..., Array]:
  """The zero initial state of size n (what every library cell starts from)."""

  def initial_state(dtype=None):
    return jnp.zeros((n,), float_dtype(dtype))

  return initial_state


def uniform(key, shape, bound, dtype):
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def _pytorch_init(key, hidden_size, input_size, gates, dtype):
  """Weights U(±1/√H); bias the sum of two U(±1/√H) draws (PyTorch's b_ih + b_hh)."""
  dtype = float_dtype(dtype)
  bound = 1.0 / np.sqrt(hidden_size)
  k1, k2, k3, k4 = jax.random.split(key, 4)
  g = gates * hidden_size
  return {
      "w_ih": uniform(k1, (g, input_size), bound, dtype),
      "w_hh": uniform(k2, (g, hidden_size), bound, dtype),
      "b": uniform(k3, (g,), bound, dtype) + uniform(k4, (g,), bound, dtype),
  }


def weight_units(gates, hidden_size):
  """param_units for gate-major [gates·H, ·] leaves: row q·H + k feeds unit k."""
  rows = np.tile(np.arange(hidden_size), gates)

  def param_units(params):
    return jax.tree.map(
        lambda p: np.broadcast_to(rows.reshape((-1,) + (1,) * (len(p.shape) - 1)),
                                  p.shape).copy(), params)

  return param_units


def _self_and_cross(w_hh: Array, gates: int, hidden_size: int, h_imp: Array, h_exp: Array):
  """W_hh·h with the self-weights applied to h_imp and the cross-unit weights to h_exp."""
  w = w_hh.reshape(gates, hidden_size, hidden_size)  # [q, H, H]
  diag = jnp.diagonal(w, axis1=1, axis2=2)  # [q, H]
  cross = jnp.einsum("qkj,j->qk", w, h_exp) - diag * h_exp  # [q, H]
  return (cross + diag * h_imp).reshape(-1)  # [q·H]


# ----------------------------------------------------------------------------------- RNN cells

ACTIVATIONS = {
    "identity": lambda a: a,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
}


def rnn(hidden_size: int, activation: str = "tanh") -> Cell:
  """Elman RNN: h_t = φ(W_ih x_t + W_hh h_{t−1} + b), state s = h.

  Parameters ``w_ih [H, D_in]``, ``w_hh [H, H]``, ``b [H]`` (PyTorch layout). Implicit
  recurrence: the diagonal of J (each unit's self-weight); explicit: off-diagonal weights.

  Args:
    hidden_size: H.
    activation: one of 'identity' (the authors' linear RNN), 'tanh', 'relu', 'sigmoid'.
  """
  H = check_size("hidden_size", hidden_size)
  if activation not in ACTIVATIONS:
    raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}.")
  phi = ACTIVATIONS[activation]

  def init(key, input_size, dtype=None):
    return _pytorch_init(key, H, check_size("input_size", input_size), 1, dtype)

  def split_step(params, s_imp, s_exp, x):
    a = params["w_ih"] @ x + _self_and_cross(params["w_hh"], 1, H, s_imp, s_exp) + params["b"]
    return phi(a)

  def step(params, s, x):
    return phi(params["w_ih"] @ x + params["w_hh"] @ s + params["b"])  # [H, D]·[D] + [H, H]·[H]

  name = "linear" if activation == "identity" else activation
  return Cell(name, H, H, init, step, zeros_state(H), split_step, np.arange(H),
              weight_units(1, H), implicit_units=True)


def linear_rnn(hidden_size: int) -> Cell:
  """The authors' linear RNN (identity activation): h_t = W_ih x_t + W_hh h_{t−1} + b."""
  return rnn(hidden_size, "identity")


def tanh_rnn(hidden_size: int) -> Cell:
  """Elman RNN with tanh."""
  return rnn(hidden_size, "tanh")


# ------------------------------------------------------------------------------------- LSTM


def _lstm_preactivations(params, s_tm1, x):
  """z = W_ih x + W_hh h_{t−1} + b as [4, H] (rows i, f, g, o)."""
  H = s_tm1.shape[-1] // 2
  z = x @ params["w_ih"].T + s_tm1[:H] @ params["w_hh"].T + params["b"]  # [4H]
  return z.reshape(4, H)


def _lstm_c_vjp(params, v):
  """Σ_{q = i, f, g} v_q·W_hh^q for v [3, H]: one [3H]·[3H, H] product."""
  H = v.shape[-1]
  return v.reshape(3 * H) @ params["w_hh"][:3 * H]


LIBRARY_LSTM = LSTMParts(_lstm_preactivations, _lstm_c_vjp)


def lstm(hidden_size: int) -> Cell:
  """LSTM with gate order (i, f, g, o) as in PyTorch; state s = [h; c], [2H].

  c_t = f⊙c_{t−1} + i⊙g, h_t = o⊙tanh(c_t). Parameters ``w_ih [4H, D_in]``, ``w_hh [4H, H]``,
  ``b [4H]`` (one bias, the sum of PyTorch's two at init). Implicit recurrence: c_{t−1} → c_t
  (Bellec et al.). Explicit: everything through h_{t−1}.
  """
  H = check_size("hidden_size", hidden_size)

  def init(key, input_size, dtype=None):
    return _pytorch_init(key, H, check_size("input_size", input_size), 4, dtype)

  def split_step(params, s_imp, s_exp, x):
    return LIBRARY_LSTM.step(params, s_imp[H:], s_exp, x)

  def step(params, s, x):
    return LIBRARY_LSTM.step(params, s[H:], s, x)

  units = np.concatenate([np.arange(H), np.arange(H)])
  return Cell("lstm", H, 2 * H, init, step, zeros_state(2 * H), split_step, units,
              weight_units(4, H), lstm=LIBRARY_LSTM)


# -------------------------------------------------------------------------------------- GRU


def gru(hidden_size: int) -> Cell:
  """GRU in PyTorch's form, gate order (r, z, n); state s = h, [H].

  r = σ(W_ir x + b_ir + W_hr h + b_hr), z = σ(W_iz x + b_iz + W_hz h + b_hz),
  n = tanh(W_in x + b_in + r⊙(W_hn h + b_hn)), h_t = (1 − z)⊙n + z⊙h_{t−1}.
  Parameters ``w_ih [3H, D_in]``, ``w_hh [3H, H]``, ``b_ih [3H]``, ``b_hh [3H]``.
  Implicit recurrence: the diagonal of J (self-weights and the carry z⊙h_{t−1}).
  """
  H = check_size("hidden_size", hidden_size)

  def init(key, input_size, dtype=None):
    d = check_size("input_size", input_size)
    dtype = float_dtype(dtype)
    bound = 1.0 / np.sqrt(H)
    k = jax.random.split(key, 4)
    return {
        "w_ih": uniform(k[0], (3 * H, d), bound, dtype),
        "w_hh": uniform(k[1], (3 * H, H), bound, dtype),
        "b_ih": uniform(k[2], (3 * H,), bound, dtype),
        "b_hh": uniform(k[3], (3 * H,), bound, dtype),
    }

  def split_step(params, s_imp, s_exp, x):
    gx = params["w_ih"] @ x + params["b_ih"]  # [3H]
    gh = _self_and_cross(params["w_hh"], 3, H, s_imp, s_exp) + params["b_hh"]  # [3H]
    xr, xz, xn = jnp.split(gx, 3)
    hr, hz, hn = jnp.split(gh, 3)
    r = jax.nn.sigmoid(xr + hr)
    z = jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    return (1.0 - z) * n + z * s_imp

  def step(params, s, x):
    return split_step(params, s, s, x)

  return Cell("gru", H, H, init, step, zeros_state(H), split_step, np.arange(H),
              weight_units(3, H), implicit_units=True)


# ----------------------------------------------------------------------------- columnar LSTM


def columnar_lstm(hidden_size: int, connections: Optional[np.ndarray] = None) -> Cell:
  """A columnar network of LSTM columns (Javed, White & Sutton 2021); state s = [h; c], [2H].

  Column k has scalar state (h_k, c_k) and its own parameters: input weights ``w_ih[q·H + k]``,
  self-recurrent weights ``w_self[q·H + k]`` and bias ``b[q·H + k]`` for each gate q ∈ (i,f,g,o):
  z^q_k = w_ih^q_k·x + w_self^q_k·h_k + Σ_j C_kj·w_hh^q_kj·h_j + b^q_k.
  With ``connections`` None there are no inter-column weights and columns are independent
  (``jacobian='block'``), so per-column RTRL is exact. Otherwise ``connections`` is a fixed {0,1}
  mask [H, H] (its diagonal must be zero) selecting the inter-column weights ``w_hh [4H, H]``
  that exist. Implicit recurrence: everything inside a column; explicit: the inter-column
  weights.
  """
  H = check_size("hidden_size", hidden_size)
  mask = None
  if connections is not None:
    mask = np.asarray(connections, dtype=np.float64)
    if mask.shape != (H, H):
      raise ValueError(f"connections must have shape ({H}, {H}), got {mask.shape}.")
    if not np.all((mask == 0) | (mask == 1)):
      raise ValueError("connections must be a {0, 1} mask.")
    if np.any(np.diagonal(mask) != 0):
      raise ValueError("connections must have a zero diagonal (self-weights are w_self).")
  gate_mask = None if mask is None else np.tile(mask, (4, 1))  # [4H, H]

  def init(key, input_size, dtype=None):
    d = check_size("input_size", input_size)
    dtype = float_dtype(dtype)
    bound = 1.0 / np.sqrt(d)
    k = jax.random.split(key, 4)
    params = {
        "w_ih": uniform(k[0], (4 * H, d), bound, dtype),
        "w_self": uniform(k[1], (4 * H,), 1.0, dtype),
        "b": uniform(k[2], (4 * H,), bound, dtype),
    }
    if gate_mask is not None:
      params["w_hh"] = uniform(k[3], (4 * H, H), 1.0 / np.sqrt(H), dtype) * gate_mask
    return params

  def preactivations(params, h_self, h_cross, x):
    z = params["w_ih"] @ x + params["w_self"] * jnp.tile(h_self, 4) + params["b"]  # [4H]
    if gate_mask is not None:
      z = z + (params["w_hh"] * gate_mask) @ h_cross  # [4H, H]·[H]
    return z

  def c_vjp(params, v):  # Σ_q v_q·∂z^q/∂h for q = i, f, g
    out = jnp.sum(v * params["w_self"][:3 * H].reshape(3, H), axis=0)
    if gate_mask is not None:
      out = out + v.reshape(3 * H) @ (params["w_hh"] * gate_mask)[:3 * H]
    return out

  parts = LSTMParts(lambda p, s, x: preactivations(p, s[:H], s[:H], x).reshape(4, H), c_vjp)

  def split_step(params, s_imp, s_exp, x):
    zi, zf, zg, zo = jnp.split(preactivations(params, s_imp[:H], s_exp[:H], x), 4)  # [4H]
    i, f, g, o = jax.nn.sigmoid(zi), jax.nn.sigmoid(zf), jnp.tanh(zg), jax.nn.sigmoid(zo)
    c = f * s_imp[H:] + i * g
    return jnp.concatenate([o * jnp.tanh(c), c])

  def step(params, s, x):
    return split_step(params, s, s, x)

  units = np.concatenate([np.arange(H), np.arange(H)])
  return Cell("columnar_lstm", H, 2 * H, init, step, zeros_state(2 * H), split_step, units,
              weight_units(4, H), jacobian="block" if mask is None else "dense",
              implicit_units=True, lstm=parts)

