"""Cells, the flax adapter, the implicit/explicit split, and synthesiser initialisation."""

import flax.linen as nn

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bplambda_jax as bl
from bplambda_jax import bptt
from bplambda_jax import credit as sens_lib
from bplambda_jax import model as cells
from bplambda_jax.model import make_model, step_weights
from bplambda_jax import internals

from helpers import jit as _jit, random_batch, rel_err

pytestmark = pytest.mark.x64  # float64 oracles


TOL = 1e-12
T, B, D_IN, D_OUT, H = 4, 2, 3, 2, 4

_CONNECTIONS = np.array([[0, 1, 0, 0], [0, 0, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]])

_LIBRARY_CELLS = {
    "linear": lambda: cells.linear_rnn(H),
    "tanh": lambda: cells.tanh_rnn(H),
    "relu": lambda: cells.rnn(H, "relu"),
    "sigmoid": lambda: cells.rnn(H, "sigmoid"),
    "lstm": lambda: cells.lstm(H),
    "gru": lambda: cells.gru(H),
    "columnar_lstm": lambda: cells.columnar_lstm(H),
    "columnar_lstm_connected": lambda: cells.columnar_lstm(H, connections=_CONNECTIONS),
}


def _random_point(cell, seed):
  """Params, a random non-zero state [n] and an input [D_in]."""
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  params = cell.init(k1, D_IN)
  s = 0.8 * jax.random.normal(k2, (cell.state_size,))
  x = jax.random.normal(k3, (D_IN,))
  return params, s, x


def _sigmoid(a):
  return 1.0 / (1.0 + np.exp(-a))


# ------------------------------------------------------------------------ hand-written cells


def test_lstm_step_matches_spec_2_3():
  cell = cells.lstm(H)
  params, s, x = _random_point(cell, 0)
  w_ih, w_hh, b = (np.asarray(params[k]) for k in ("w_ih", "w_hh", "b"))
  h, c = np.asarray(s[:H]), np.asarray(s[H:])
  z = w_ih @ np.asarray(x) + w_hh @ h + b
  i, f = _sigmoid(z[:H]), _sigmoid(z[H:2 * H])
  g, o = np.tanh(z[2 * H:3 * H]), _sigmoid(z[3 * H:])
  c_new = f * c + i * g
  h_new = o * np.tanh(c_new)
  got = cell.step(params, s, x)
  assert got.shape == (2 * H,)
  assert rel_err(got, jnp.concatenate([h_new, c_new])) < TOL
  assert rel_err(cell.hidden(got), jnp.asarray(h_new)) < TOL


def test_gru_step_matches_pytorch_form():
  cell = cells.gru(H)
  params, s, x = _random_point(cell, 1)
  p = {k: np.asarray(v) for k, v in params.items()}
  h, xn = np.asarray(s), np.asarray(x)
  blk = lambda a, q: a[q * H:(q + 1) * H]
  r = _sigmoid(blk(p["w_ih"], 0) @ xn + blk(p["b_ih"], 0) + blk(p["w_hh"], 0) @ h
               + blk(p["b_hh"], 0))
  z = _sigmoid(blk(p["w_ih"], 1) @ xn + blk(p["b_ih"], 1) + blk(p["w_hh"], 1) @ h
               + blk(p["b_hh"], 1))
  n = np.tanh(blk(p["w_ih"], 2) @ xn + blk(p["b_ih"], 2)
              + r * (blk(p["w_hh"], 2) @ h + blk(p["b_hh"], 2)))
  expected = (1.0 - z) * n + z * h
  assert rel_err(cell.step(params, s, x), jnp.asarray(expected)) < TOL


@pytest.mark.parametrize("activation", ["identity", "tanh", "relu", "sigmoid"])
def test_rnn_step_matches_spec_2_2(activation):
  cell = cells.rnn(H, activation)
  params, s, x = _random_point(cell, 2)
  a = (np.asarray(params["w_ih"]) @ np.asarray(x) + np.asarray(params["w_hh"]) @ np.asarray(s)
       + np.asarray(params["b"]))
  phi = {"identity": lambda v: v, "tanh": np.tanh, "relu": lambda v: np.maximum(v, 0),
         "sigmoid": _sigmoid}[activation]
  assert rel_err(cell.step(params, s, x), jnp.asarray(phi(a))) < TOL


@pytest.mark.parametrize("name,gates", [("linear", 1), ("lstm", 4), ("gru", 3)])
def test_pytorch_style_init(name, gates):
  """Spec §2.1: weights U(±1/√H) (even W_ih); the LSTM/RNN bias is a sum of two such draws."""
  cell = cells.get_cell(name, H)
  params = cell.init(jax.random.key(3), D_IN)
  bound = 1.0 / np.sqrt(H)
  assert params["w_ih"].shape == (gates * H, D_IN)
  assert params["w_hh"].shape == (gates * H, H)
  for k in ("w_ih", "w_hh"):
    assert float(jnp.max(jnp.abs(params[k]))) <= bound
  biases = [k for k in params if k.startswith("b")]
  for k in biases:
    assert params[k].shape == (gates * H,)
    assert float(jnp.max(jnp.abs(params[k]))) <= (2 * bound if k == "b" else bound)
  assert len({float(v) for v in params["w_ih"].ravel()}) == gates * H * D_IN  # no repeats


# ------------------------------------------------------------------ implicit / explicit split


@pytest.mark.parametrize("name", sorted(_LIBRARY_CELLS))
def test_split_step_on_equal_states_is_step(name):
  cell = _LIBRARY_CELLS[name]()
  params, s, x = _random_point(cell, 4)
  assert rel_err(cell.split_step(params, s, s, x), cell.step(params, s, x)) < TOL


def _split_jacobians(name, seed):
  """A library cell at a random point with its implicit D, explicit X and full J Jacobians."""
  cell = _LIBRARY_CELLS[name]()
  params, s, x = _random_point(cell, seed)
  return (cell, params, s, x, internals.implicit_jacobian(cell, params, s, x),
          internals.explicit_jacobian(cell, params, s, x),
          internals.state_jacobian(cell, params, s, x))


@pytest.mark.parametrize("name", sorted(_LIBRARY_CELLS))
def test_implicit_plus_explicit_is_state_jacobian(name):
  cell, params, s, x, d, xj, j = _split_jacobians(name, 5)
  assert rel_err(d + xj, j) < TOL
  assert float(jnp.linalg.norm(d)) > 1e-3
  if name != "columnar_lstm":  # independent columns have no explicit part (tested below)
    assert float(jnp.linalg.norm(xj)) > 1e-3
  # The Jacobian itself is right: compare with central differences.
  eps = 1e-6
  fd = jnp.stack([(cell.step(params, s + eps * e, x) - cell.step(params, s - eps * e, x))
                  / (2 * eps) for e in jnp.eye(cell.state_size)], axis=1)
  assert rel_err(j, fd) < 1e-7


@pytest.mark.parametrize("name", ["linear", "tanh", "gru"])
def test_single_state_split_is_diagonal_vs_off_diagonal(name):
  """Single-state cells: D is the diagonal of J (self-dependence), X the off-diagonal part."""
  _, _, _, _, d, xj, j = _split_jacobians(name, 6)
  assert rel_err(d, jnp.diag(jnp.diagonal(j))) < TOL
  assert float(jnp.max(jnp.abs(jnp.diagonal(xj)))) == 0.0


def test_lstm_split_follows_bellec():
  """LSTM: D is the cell-state path only (columns of c_{t−1}: diag(D_t f_t) and diag(f_t));
  X is everything through h_{t−1}."""
  cell = cells.lstm(H)
  params, s, x = _random_point(cell, 7)
  d = internals.implicit_jacobian(cell, params, s, x)
  xj = internals.explicit_jacobian(cell, params, s, x)
  z = params["w_ih"] @ x + params["w_hh"] @ s[:H] + params["b"]
  f, o = jax.nn.sigmoid(z[H:2 * H]), jax.nn.sigmoid(z[3 * H:])
  c_new = cell.step(params, s, x)[H:]
  dt = o * (1 - jnp.tanh(c_new) ** 2)
  expected_d = jnp.zeros((2 * H, 2 * H))
  expected_d = expected_d.at[:H, H:].set(jnp.diag(dt * f)).at[H:, H:].set(jnp.diag(f))
  assert rel_err(d, expected_d) < TOL
  assert float(jnp.max(jnp.abs(xj[:, H:]))) == 0.0


def _units(n):
  return np.arange(n) % H


def test_columnar_lstm_without_connections_is_block_diagonal():
  cell = cells.columnar_lstm(H)
  assert "w_hh" not in cell.init(jax.random.key(0), D_IN)
  params, s, x = _random_point(cell, 8)
  j = np.asarray(internals.state_jacobian(cell, params, s, x))
  u = _units(2 * H)
  same = u[:, None] == u[None, :]
  assert np.all(j[~same] == 0.0)
  for k in range(H):
    block = j[np.ix_([k, H + k], [k, H + k])]
    assert np.all(np.abs(block[:, 0]) > 0) and np.abs(block[1, 1]) > 0  # h and c paths
  np.testing.assert_array_equal(cell.unit_of_state, u)
  # No explicit part: the whole Jacobian is implicit.
  assert float(jnp.max(jnp.abs(internals.explicit_jacobian(cell, params, s, x)))) == 0.0


def test_columnar_lstm_connections_follow_the_mask():
  cell = cells.columnar_lstm(H, connections=_CONNECTIONS)
  params, s, x = _random_point(cell, 9)
  j = np.asarray(internals.state_jacobian(cell, params, s, x))
  allowed_h = (_CONNECTIONS + np.eye(H)) > 0  # unit k reads h_j
  for rows in (slice(0, H), slice(H, 2 * H)):
    np.testing.assert_array_equal(j[rows, :H] != 0, allowed_h)
    np.testing.assert_array_equal(j[rows, H:] != 0, np.eye(H) > 0)  # c only within a column


# ------------------------------------------------------------------------------ flax adapter


def _flax_loss(module, cell_params, readout, batch):
  """The model's objective computed on the flax side: nn.RNN over batch-major data."""
  x_bm = jnp.swapaxes(batch.x, 0, 1)  # [B, T, D_in]
  carry0 = jax.tree.map(lambda a: jnp.zeros(a.shape, x_bm.dtype),  # flax's zero carry, float64
                        module.initialize_carry(jax.random.key(0), x_bm[:, 0].shape))
  hs = nn.RNN(module).apply({"params": {"cell": cell_params}}, x_bm,
                            initial_carry=carry0)  # [B, T, H]
  y = hs @ readout["w"].T + readout["b"]  # [B, T, D_out]
  per_step = jnp.mean((y - jnp.swapaxes(batch.y, 0, 1)) ** 2, axis=-1)  # [B, T]
  w = jnp.swapaxes(batch.mask / jnp.sum(batch.mask, axis=0, keepdims=True), 0, 1)
  return jnp.mean(jnp.sum(w * per_step, axis=1))


@pytest.mark.parametrize("flax_cell", ["GRUCell", "LSTMCell"])
def test_from_flax_bptt_equals_flax_gradient(flax_cell):
  module = getattr(nn, flax_cell)(features=H)
  cell = cells.from_flax(module)
  model = make_model(cell, "mse", D_IN, D_OUT)
  rule = bptt(model)
  params = rule.init(jax.random.key(10))
  batch = random_batch(jax.random.key(11), T, B, D_IN, D_OUT)
  assert rel_err(step_weights(batch.mask), batch.mask / batch.mask.sum(0)) < TOL
  got, aux = _jit(rule.grads)(params, batch)
  loss, (g_cell, g_ro) = jax.value_and_grad(
      lambda c, r: _flax_loss(module, c, r, batch), argnums=(0, 1))(params["cell"],
                                                                     params["readout"])
  assert abs(float(aux["loss"]) - float(loss)) < TOL * float(loss)
  assert rel_err(got["cell"], g_cell) < 1e-10
  assert rel_err(got["readout"], g_ro) < 1e-10
  assert float(jnp.linalg.norm(jax.tree.leaves(g_cell)[0])) > 1e-6


def test_from_flax_lstm_state_is_h_then_c():
  module = nn.LSTMCell(features=H)
  cell = cells.from_flax(module)
  assert (cell.hidden_size, cell.state_size) == (H, 2 * H)
  params = cell.init(jax.random.key(12), D_IN)
  k1, k2, k3 = jax.random.split(jax.random.key(13), 3)
  h, c = jax.random.normal(k1, (H,)), 2.0 * jax.random.normal(k2, (H,))
  x = jax.random.normal(k3, (D_IN,))
  (c_new, h_new), out = module.apply({"params": params}, (c, h), x)  # flax carry is (c, h)
  s_new = cell.step(params, jnp.concatenate([h, c]), x)
  assert rel_err(s_new, jnp.concatenate([h_new, c_new])) < TOL
  assert rel_err(cell.hidden(s_new), out) < TOL
  # Ordering matters: swapping h and c in the flat state gives a different step.
  assert rel_err(cell.step(params, jnp.concatenate([c, h]), x), s_new) > 1e-3
  # Round trip over several steps against flax's own scan.
  xs = jax.random.normal(k3, (T, D_IN))
  carry = (jnp.zeros(H), jnp.zeros(H))
  s = cell.initial_state()
  for t in range(T):
    carry, _ = module.apply({"params": params}, carry, xs[t])
    s = cell.step(params, s, xs[t])
  assert rel_err(s, jnp.concatenate([carry[1], carry[0]])) < TOL


def test_from_flax_gru_state_is_the_carry():
  module = nn.GRUCell(features=H)
  cell = cells.from_flax(module)
  assert (cell.hidden_size, cell.state_size) == (H, H)
  params, s, x = _random_point(cell, 14)
  carry, out = module.apply({"params": params}, s, x)
  assert rel_err(cell.step(params, s, x), carry) < TOL
  assert rel_err(carry, out) < TOL


# ------------------------------------------------------------------------------ synthesisers


def test_linear_synthesiser_init_and_apply():
  synth = bl.linear_synthesiser()
  assert synth.linear
  params = synth.init(jax.random.key(0), 5, 3)
  assert jax.tree.map(jnp.shape, params) == {"train": {"w": (3, 5), "b": (3,)}, "frozen": {}}
  assert all(float(jnp.max(jnp.abs(l))) == 0.0 for l in jax.tree.leaves(params))
  z = jax.random.normal(jax.random.key(1), (5,))
  assert float(jnp.max(jnp.abs(synth.apply(params, z)))) == 0.0
  w = jax.random.normal(jax.random.key(2), (3, 5))
  b = jax.random.normal(jax.random.key(3), (3,))
  assert rel_err(synth.apply({"train": {"w": w, "b": b}, "frozen": {}}, z), w @ z + b) < TOL
  no_bias = bl.linear_synthesiser(bias=False)
  assert jax.tree.map(jnp.shape, no_bias.init(None, 5, 3)) == {"train": {"w": (3, 5)},
                                                                "frozen": {}}


@pytest.mark.parametrize("layers,last_only", [(1, False), (1, True), (2, False), (2, True)])
def test_mlp_synthesiser_init_and_apply(layers, last_only):
  d_in, width, d_out = 5, 4, 3
  synth = bl.mlp_synthesiser(layers, width, train_last_only=last_only)
  assert not synth.linear
  params = synth.init(jax.random.key(0), d_in, d_out)
  hidden = params["frozen"]["hidden"] if last_only else params["train"]["hidden"]
  assert set(params["train"]) == ({"out"} if last_only else {"hidden", "out"})
  assert len(hidden) == layers
  fan_in = d_in
  for layer in hidden:
    assert layer["w"].shape == (width, fan_in) and layer["b"].shape == (width,)
    bound = 1.0 / np.sqrt(fan_in)
    assert 0.0 < float(jnp.max(jnp.abs(layer["w"]))) <= bound
    assert 0.0 < float(jnp.max(jnp.abs(layer["b"]))) <= bound
    fan_in = width
  out = params["train"]["out"]
  assert out["w"].shape == (d_out, width) and out["b"].shape == (d_out,)
  assert float(jnp.max(jnp.abs(out["w"]))) == 0.0 and float(jnp.max(jnp.abs(out["b"]))) == 0.0
  z = jax.random.normal(jax.random.key(1), (d_in,))
  assert float(jnp.max(jnp.abs(synth.apply(params, z)))) == 0.0  # ĝ ≡ 0 at init
  # With a non-zero output layer, apply is the ReLU MLP written out by hand.
  out = {"w": jax.random.normal(jax.random.key(2), (d_out, width)),
         "b": jax.random.normal(jax.random.key(3), (d_out,))}
  params["train"]["out"] = out
  a = np.asarray(z)
  for layer in hidden:
    a = np.maximum(np.asarray(layer["w"]) @ a + np.asarray(layer["b"]), 0.0)
  expected = np.asarray(out["w"]) @ a + np.asarray(out["b"])
  assert rel_err(synth.apply(params, z), jnp.asarray(expected)) < TOL


def test_get_synthesiser_by_name():
  assert bl.get_synthesiser("linear").linear
  s = bl.get_synthesiser("mlp", hidden_layers=2, hidden_size=3, train_last_only=True)
  params = s.init(jax.random.key(0), 4, 2)
  assert len(params["frozen"]["hidden"]) == 2 and params["frozen"]["hidden"][0]["w"].shape == (3, 4)
