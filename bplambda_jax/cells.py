"""Recurrent cells as pure functions over pytrees.

A :class:`Cell` is a NamedTuple of pure functions. Every cell works on a *flat* state vector
``s`` of ``state_size`` entries per example, whose first ``hidden_size`` entries are the hidden
output ``h`` that the readout sees::

    params = cell.init(key, input_size)
    s_t = cell.step(params, s_tm1, x_t)          # s_tm1: [n], x_t: [D_in] -> s_t: [n]
    h_t = s_t[:cell.hidden_size]                 # [H]

Functions are written per example; batch with ``jax.vmap``. The initial state is zeros.

``split_step(params, s_imp, s_exp, x)`` computes the same step but takes the previous state twice:
once for the paths that stay inside a unit (the *implicit* recurrence, e.g. the LSTM cell state
through the forget gate) and once for the paths that cross units through recurrent weights (the
*explicit* recurrence). ``step(p, s, x) == split_step(p, s, s, x)``, so by the chain rule the state
Jacobian splits as J = D + X with D = ∂split_step/∂s_imp and X = ∂split_step/∂s_exp. e-prop keeps D
only; the m-order family adds X back order by order. Which paths count as implicit is a modelling
choice, made per cell and documented in each factory:

* LSTM (Bellec et al. 2020; spec §5.2): the cell-state path c_{t−1} → c_t (forget gate) is implicit;
  everything through h_{t−1} and W_hh, the unit's own self-weight included, is explicit.
* Single-state cells (linear/tanh RNN, GRU): a unit has no internal state besides h, so its
  implicit recurrence is its self-dependence, i.e. the diagonal of J (self-recurrent weights and,
  for the GRU, the update-gate carry z⊙h_{t−1}). Off-diagonal recurrent weights are explicit.
* Columnar LSTM: a column is the unit; its self-recurrent weights and its cell state are implicit,
  inter-column weights (if any) are explicit.

``unit_of_state`` gives, for each state entry, the index of the unit it belongs to, and
``param_units(params)`` gives, for every parameter entry, the unit whose state it feeds directly
(−1 for an entry shared by several units). Rules that keep unit-local traces use them.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

Params = Any
Array = jax.Array


class Cell(NamedTuple):
  """A recurrent cell: pure functions over a flat per-example state vector.

  Attributes:
    name: short name of the cell (used in errors and results).
    hidden_size: H, the number of hidden outputs (the first H state entries).
    state_size: n, the size of the flat state s.
    init: ``init(key, input_size) -> params``.
    step: ``step(params, s_tm1 [n], x_t [D_in]) -> s_t [n]``.
    split_step: ``split_step(params, s_imp [n], s_exp [n], x_t) -> s_t`` or None when the cell
      does not declare an implicit/explicit split (then e-prop and m-order e-prop reject it).
    unit_of_state: int array [n], the unit each state entry belongs to, or None.
    param_units: ``param_units(params) -> pytree of int arrays`` with the unit each parameter
      entry feeds directly (−1 if several), or None.
  """

  name: str
  hidden_size: int
  state_size: int
  init: Callable[..., Params]
  step: Callable[[Params, Array, Array], Array]
  split_step: Optional[Callable[[Params, Array, Array, Array], Array]] = None
  unit_of_state: Optional[np.ndarray] = None
  param_units: Optional[Callable[[Params], Params]] = None

  def initial_state(self, dtype=None) -> Array:
    """The zero initial state, [n]."""
    return jnp.zeros((self.state_size,), dtype or jnp.result_type(float))

  def hidden(self, s: Array) -> Array:
    """The hidden output h of a state, [..., n] -> [..., H]."""
    return s[..., : self.hidden_size]


def _check_size(name: str, value: Any) -> int:
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}.")
  return int(value)


def _uniform(key, shape, bound, dtype):
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def _pytorch_init(key, hidden_size, input_size, gates, dtype=None):
  """Weights U(±1/√H); bias the sum of two U(±1/√H) draws (spec §2.1)."""
  dtype = dtype or jnp.result_type(float)
  bound = 1.0 / np.sqrt(hidden_size)
  k1, k2, k3, k4 = jax.random.split(key, 4)
  g = gates * hidden_size
  return {
      "w_ih": _uniform(k1, (g, input_size), bound, dtype),
      "w_hh": _uniform(k2, (g, hidden_size), bound, dtype),
      "b": _uniform(k3, (g,), bound, dtype) + _uniform(k4, (g,), bound, dtype),
  }


def _row_units(gates: int, hidden_size: int) -> np.ndarray:
  """Unit of each row of a gate-major [gates·H, ·] weight: row q·H + k feeds unit k."""
  return np.tile(np.arange(hidden_size), gates)


def _weight_units(gates, hidden_size):
  rows = _row_units(gates, hidden_size)

  def param_units(params):
    return jax.tree.map(
        lambda p: np.broadcast_to(rows.reshape((-1,) + (1,) * (p.ndim - 1)), p.shape).copy(),
        params)

  return param_units


def _self_and_cross(w_hh: Array, gates: int, hidden_size: int, h_imp: Array, h_exp: Array):
  """W_hh·h with the self-weights applied to h_imp and the cross-unit weights to h_exp."""
  w = w_hh.reshape(gates, hidden_size, hidden_size)  # [q, H, H]
  diag = jnp.diagonal(w, axis1=1, axis2=2)  # [q, H]
  cross = jnp.einsum("qkj,j->qk", w, h_exp) - diag * h_exp  # [q, H]
  return (cross + diag * h_imp).reshape(-1)  # [q·H]


# ----------------------------------------------------------------------------------- RNN cells

_ACTIVATIONS = {
    "identity": lambda a: a,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
}


def rnn(hidden_size: int, activation: str = "tanh") -> Cell:
  """Elman RNN: h_t = φ(W_ih x_t + W_hh h_{t−1} + b), state s = h.

  Parameters ``w_ih [H, D_in]``, ``w_hh [H, H]``, ``b [H]`` (PyTorch layout, spec §2.2).
  Implicit recurrence: the diagonal of J (each unit's self-weight); explicit: off-diagonal weights.

  Args:
    hidden_size: H.
    activation: one of 'identity' (the reference's linear RNN), 'tanh', 'relu', 'sigmoid'.
  """
  H = _check_size("hidden_size", hidden_size)
  if activation not in _ACTIVATIONS:
    raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}.")
  phi = _ACTIVATIONS[activation]

  def init(key, input_size):
    return _pytorch_init(key, H, _check_size("input_size", input_size), 1)

  def split_step(params, s_imp, s_exp, x):
    a = params["w_ih"] @ x + _self_and_cross(params["w_hh"], 1, H, s_imp, s_exp) + params["b"]
    return phi(a)

  def step(params, s, x):
    return phi(params["w_ih"] @ x + params["w_hh"] @ s + params["b"])

  name = "linear" if activation == "identity" else activation
  return Cell(name, H, H, init, step, split_step, np.arange(H), _weight_units(1, H))


def linear_rnn(hidden_size: int) -> Cell:
  """The reference's linear RNN (identity activation), spec §2.2."""
  return rnn(hidden_size, "identity")


def tanh_rnn(hidden_size: int) -> Cell:
  """Elman RNN with tanh."""
  return rnn(hidden_size, "tanh")


# ------------------------------------------------------------------------------------- LSTM


def lstm_gates(params, x, h_rec, H):
  """Gate activations (i, f, g, o), each [H], from z = W_ih x + W_hh h_rec + b (order i,f,g,o)."""
  z = x @ params["w_ih"].T + h_rec @ params["w_hh"].T + params["b"]  # [4H]
  zi, zf, zg, zo = jnp.split(z, 4)
  return jax.nn.sigmoid(zi), jax.nn.sigmoid(zf), jnp.tanh(zg), jax.nn.sigmoid(zo)


def lstm(hidden_size: int) -> Cell:
  """LSTM with gate order (i, f, g, o) as in PyTorch (spec §2.3); state s = [h; c], [2H].

  c_t = f⊙c_{t−1} + i⊙g, h_t = o⊙tanh(c_t). Parameters ``w_ih [4H, D_in]``, ``w_hh [4H, H]``,
  ``b [4H]`` (one bias, the sum of PyTorch's two at init).
  Implicit recurrence: c_{t−1} → c_t (Bellec et al.; spec §5.2). Explicit: everything through
  h_{t−1}.
  """
  H = _check_size("hidden_size", hidden_size)

  def init(key, input_size):
    return _pytorch_init(key, H, _check_size("input_size", input_size), 4)

  def split_step(params, s_imp, s_exp, x):
    c_imp = s_imp[H:]
    i, f, g, o = lstm_gates(params, x, s_exp[:H], H)
    c = f * c_imp + i * g
    return jnp.concatenate([o * jnp.tanh(c), c])

  def step(params, s, x):
    return split_step(params, s, s, x)

  units = np.concatenate([np.arange(H), np.arange(H)])
  return Cell("lstm", H, 2 * H, init, step, split_step, units, _weight_units(4, H))


# -------------------------------------------------------------------------------------- GRU


def gru(hidden_size: int) -> Cell:
  """GRU in PyTorch's form, gate order (r, z, n); state s = h, [H].

  r = σ(W_ir x + b_ir + W_hr h + b_hr), z = σ(W_iz x + b_iz + W_hz h + b_hz),
  n = tanh(W_in x + b_in + r⊙(W_hn h + b_hn)), h_t = (1 − z)⊙n + z⊙h_{t−1}.
  Parameters ``w_ih [3H, D_in]``, ``w_hh [3H, H]``, ``b_ih [3H]``, ``b_hh [3H]``.
  Implicit recurrence: the diagonal of J (self-weights and the carry z⊙h_{t−1}).
  """
  H = _check_size("hidden_size", hidden_size)

  def init(key, input_size):
    d = _check_size("input_size", input_size)
    dtype = jnp.result_type(float)
    bound = 1.0 / np.sqrt(H)
    k = jax.random.split(key, 4)
    return {
        "w_ih": _uniform(k[0], (3 * H, d), bound, dtype),
        "w_hh": _uniform(k[1], (3 * H, H), bound, dtype),
        "b_ih": _uniform(k[2], (3 * H,), bound, dtype),
        "b_hh": _uniform(k[3], (3 * H,), bound, dtype),
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

  return Cell("gru", H, H, init, step, split_step, np.arange(H), _weight_units(3, H))


# ----------------------------------------------------------------------------- columnar LSTM


def columnar_lstm(hidden_size: int, connections: Optional[np.ndarray] = None) -> Cell:
  """A columnar network of LSTM columns (Javed, White & Sutton 2021); state s = [h; c], [2H].

  Column k has scalar state (h_k, c_k) and its own parameters: input weights ``w_ih[q·H + k]``,
  self-recurrent weights ``w_self[q·H + k]`` and bias ``b[q·H + k]`` for each gate q ∈ (i,f,g,o):
  z^q_k = w_ih^q_k·x + w_self^q_k·h_k + Σ_j C_kj·w_hh^q_kj·h_j + b^q_k.
  With ``connections`` None there are no inter-column weights and columns are independent, so
  per-column RTRL is exact. Otherwise ``connections`` is a fixed {0,1} mask [H, H] (its diagonal
  must be zero) selecting the inter-column weights ``w_hh [4H, H]`` that exist.
  Implicit recurrence: everything inside a column; explicit: the inter-column weights.
  """
  H = _check_size("hidden_size", hidden_size)
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

  def init(key, input_size):
    d = _check_size("input_size", input_size)
    dtype = jnp.result_type(float)
    bound = 1.0 / np.sqrt(max(d, 1))
    k = jax.random.split(key, 4)
    params = {
        "w_ih": _uniform(k[0], (4 * H, d), bound, dtype),
        "w_self": _uniform(k[1], (4 * H,), 1.0, dtype),
        "b": _uniform(k[2], (4 * H,), bound, dtype),
    }
    if gate_mask is not None:
      params["w_hh"] = _uniform(k[3], (4 * H, H), 1.0 / np.sqrt(H), dtype) * gate_mask
    return params

  def split_step(params, s_imp, s_exp, x):
    h_imp, c_imp = s_imp[:H], s_imp[H:]
    z = params["w_ih"] @ x + params["w_self"] * jnp.tile(h_imp, 4) + params["b"]  # [4H]
    if gate_mask is not None:
      z = z + (params["w_hh"] * gate_mask) @ s_exp[:H]
    zi, zf, zg, zo = jnp.split(z, 4)
    i, f, g, o = jax.nn.sigmoid(zi), jax.nn.sigmoid(zf), jnp.tanh(zg), jax.nn.sigmoid(zo)
    c = f * c_imp + i * g
    return jnp.concatenate([o * jnp.tanh(c), c])

  def step(params, s, x):
    return split_step(params, s, s, x)

  units = np.concatenate([np.arange(H), np.arange(H)])
  return Cell("columnar_lstm", H, 2 * H, init, step, split_step, units, _weight_units(4, H))


# ------------------------------------------------------------------------------ flax adapter

_LSTM_LIKE = ("LSTMCell", "OptimizedLSTMCell")


def from_flax(module, split_step: Optional[Callable] = None) -> Cell:
  """Wrap a ``flax.linen`` recurrent cell (``nn.SimpleCell``, ``nn.GRUCell``, ``nn.MGUCell``,
  ``nn.LSTMCell``, ``nn.OptimizedLSTMCell``, or any cell with the same carry contract).

  The flat state is the carry: ``h`` for cells whose carry is their output, and ``[h; c]`` for
  LSTM cells, whose flax carry is the tuple ``(c, h)`` — the adapter reorders explicitly so the
  hidden output comes first. The carry starts at zeros (flax's default ``carry_init``).

  Args:
    module: a ``flax.linen.RNNCellBase`` instance with ``num_feature_axes == 1``.
    split_step: optional ``(params, s_imp, s_exp, x) -> s`` declaring the implicit/explicit split
      that e-prop and m-order e-prop need; without it those rules raise an error for this cell.

  Returns:
    A :class:`Cell` whose params are the module's ``'params'`` collection.
  """
  cls = type(module).__name__
  if not hasattr(module, "initialize_carry") or not hasattr(module, "features"):
    raise TypeError(f"from_flax expects a flax.linen recurrent cell, got {cls}.")
  if getattr(module, "num_feature_axes", 1) != 1:
    raise ValueError(f"from_flax supports cells with num_feature_axes == 1; {cls} has "
                     f"{module.num_feature_axes}.")
  H = int(module.features)
  lstm_like = cls in _LSTM_LIKE

  def to_carry(s):
    return (s[H:], s[:H]) if lstm_like else s

  def init(key, input_size):
    d = _check_size("input_size", input_size)
    k1, k2 = jax.random.split(key)
    carry = module.initialize_carry(k1, (d,))
    params = module.init(k2, carry, jnp.zeros((d,), jnp.result_type(float)))["params"]
    return params

  def step(params, s, x):
    carry, out = module.apply({"params": params}, to_carry(s), x)
    if lstm_like:
      c, h = carry
      return jnp.concatenate([h, c])
    return carry

  n = 2 * H if lstm_like else H
  # Check the carry contract once, on a tiny input, without compiling anything heavy.
  probe_params = jax.eval_shape(lambda: init(jax.random.key(0), 1))
  out = jax.eval_shape(
      lambda p: module.apply({"params": p}, to_carry(jnp.zeros((n,))), jnp.zeros((1,))),
      probe_params)
  carry_struct, out_struct = out
  leaves = jax.tree.leaves(carry_struct)
  expected = [(H,), (H,)] if lstm_like else [(H,)]
  if [tuple(l.shape) for l in leaves] != expected or tuple(out_struct.shape) != (H,):
    raise ValueError(
        f"from_flax supports cells whose carry is their output h [H] (SimpleCell, GRUCell, "
        f"MGUCell) or the tuple (c, h) (LSTMCell, OptimizedLSTMCell); {cls} has carry "
        f"{[tuple(l.shape) for l in leaves]} and output {tuple(out_struct.shape)}.")

  return Cell(f"flax_{cls}", H, n, init, step, split_step, None, None)


CELLS = {
    "linear": linear_rnn,
    "tanh": tanh_rnn,
    "lstm": lstm,
    "gru": gru,
    "columnar_lstm": columnar_lstm,
}


def get_cell(name: str, hidden_size: int) -> Cell:
  """A library cell by name: one of 'linear', 'tanh', 'lstm', 'gru', 'columnar_lstm'."""
  if name not in CELLS:
    raise ValueError(f"cell must be one of {sorted(CELLS)}, got {name!r}.")
  return CELLS[name](hidden_size)
