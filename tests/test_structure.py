"""Cells declare their structure; ``check_structure`` compares every declaration with the step.

The library cells and flax's own cells pass; a cell that declares a structure it does not have
(a Jacobian shape, an implicit part, units, LSTM parts) is caught, each by its own message.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bplambda_jax as bl

pytestmark = pytest.mark.x64  # float64 oracles

D = 3

CELLS = {
    "linear": lambda: bl.linear_rnn(4),
    "tanh": lambda: bl.tanh_rnn(4),
    "gru": lambda: bl.gru(4),
    "lstm": lambda: bl.lstm(4),
    "columnar": lambda: bl.columnar_lstm(4),
    "columnar_connected": lambda: bl.columnar_lstm(4, np.array(
        [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0]])),
    "elementwise_lstm": lambda: bl.elementwise_lstm(4),
    "lru": lambda: bl.lru(4),
    "lru_relu": lambda: bl.lru(4, "relu"),
    "linear_lru": lambda: bl.linear_lru(4),
    "flax_lstm": lambda: bl.from_flax(nn.LSTMCell(4)),
    "flax_optimized_lstm": lambda: bl.from_flax(nn.OptimizedLSTMCell(4)),
    "flax_gru": lambda: bl.from_flax(nn.GRUCell(4)),
    "flax_mgu": lambda: bl.from_flax(nn.MGUCell(4)),
    "flax_simple": lambda: bl.from_flax(nn.SimpleCell(4)),
}


def _params(cell):
  return cell.init(jax.random.key(0), D, jnp.float64)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_declared_structure_holds(name):
  cell = CELLS[name]()
  bl.check_structure(cell, _params(cell), jnp.zeros((D,)))


def test_what_each_cell_declares():
  assert bl.columnar_lstm(3).jacobian == "block"
  assert bl.columnar_lstm(3, np.eye(3)[::-1] * (1 - np.eye(3))).jacobian == "dense"
  assert bl.lstm(3).lstm is not None and not bl.lstm(3).implicit_units
  assert bl.gru(3).implicit_units and bl.gru(3).lstm is None
  for flax_cell in (nn.LSTMCell(3), nn.OptimizedLSTMCell(3)):
    cell = bl.from_flax(flax_cell)
    assert cell.lstm is not None and cell.split_step is not None
    assert cell.unit_of_state.tolist() == [0, 1, 2, 0, 1, 2]
  for flax_cell in (nn.GRUCell(3), nn.MGUCell(3), nn.SimpleCell(3)):
    cell = bl.from_flax(flax_cell)
    assert cell.split_step is not None and cell.implicit_units and cell.lstm is None
  # the element-wise cells: all recurrence inside a unit
  assert bl.lru(3).jacobian == "block" and bl.lru(3).state_size == 6 and bl.lru(3).implicit_units
  assert bl.linear_lru(3).jacobian == "diagonal" and bl.linear_lru(3).state_size == 3
  ew = bl.elementwise_lstm(3)
  assert ew.jacobian == "block" and ew.implicit_units and ew.lstm is not None
  # the e-prop flavour's transition K_t, derived from the declarations
  assert bl.internals.eprop_transition(ew) == "diagonal"
  assert bl.internals.eprop_transition(bl.columnar_lstm(3)) == "diagonal"
  assert bl.internals.eprop_transition(bl.lstm(3)) == "dense"
  assert bl.internals.eprop_transition(bl.from_flax(nn.LSTMCell(3))) == "dense"
  assert bl.internals.eprop_transition(bl.columnar_lstm(
      3, np.eye(3)[::-1] * (1 - np.eye(3)))) == "dense"
  with pytest.raises(ValueError, match="needs a cell with an LSTM cell-state path"):
    bl.internals.eprop_transition(bl.gru(3))


def _lie(name, **changes):
  cell = CELLS[name]()
  return cell._replace(**changes)


def _wrong_c_vjp(p, v):  # the rows of the gates f, g, o instead of i, f, g
  H = v.shape[-1]
  return v.reshape(3 * H) @ p["w_hh"][H:]


def _coupling_c_vjp(p, v):  # the columns' c_vjp plus a cross-unit term the step does not have
  return bl.elementwise_lstm(4).lstm.c_vjp(p, v) + jnp.roll(v[0], 1) * 0.5


LIES = {
    "block_jacobian": (lambda: _lie("lstm", jacobian="block"),
                       "declares jacobian='block', but J_t couples units"),
    "diagonal_jacobian": (lambda: _lie("tanh", jacobian="diagonal"),
                          "declares jacobian='diagonal', but J_t is not diagonal"),
    "implicit_units": (lambda: _lie("lstm", implicit_units=True),
                       "declares implicit_units=True, but its implicit"),
    "split_step": (lambda: _lie("tanh", split_step=lambda p, si, se, x: jnp.tanh(
        p["w_ih"] @ x + p["w_hh"] @ se)), r"split_step\(p, s, s, x\) differs from step"),
    "param_units": (lambda: _lie("gru", param_units=lambda params: jax.tree.map(
        lambda p: (np.broadcast_to(np.tile(np.arange(4), 3).reshape((-1,) + (1,) * (
            len(p.shape) - 1)), p.shape) + 1) % 4, params)),
                    "some parameter entry influences the state of a unit other than its own"),
    "lstm_c_vjp": (lambda: _lie("lstm", lstm=bl.lstm(4).lstm._replace(c_vjp=_wrong_c_vjp)),
                   "LSTMParts.c_vjp differs"),
    "lstm_step": (lambda: _lie("lstm", lstm=bl.lstm(4).lstm._replace(gate_fn=jnp.tanh)),
                  "its LSTMParts do not reproduce its step"),
    "lru_diagonal": (lambda: _lie("lru", jacobian="diagonal"),
                     "declares jacobian='diagonal', but J_t is not diagonal"),
    "lru_units": (lambda: _lie("lru", unit_of_state=np.concatenate([np.arange(4),
                                                                    np.roll(np.arange(4), 1)])),
                  "some parameter entry influences the state of a unit other than its own"),
    "eprop_transition": (
        lambda: _lie("elementwise_lstm",
                     lstm=bl.elementwise_lstm(4).lstm._replace(c_vjp=_coupling_c_vjp)),
        "imply a diagonal e-prop transition K_t, but LSTMParts.c_vjp couples units"),
    "block_without_units": (lambda: _lie("tanh", jacobian="block", unit_of_state=None,
                                         param_units=None),
                            "declares jacobian='block' but no units"),
}


@pytest.mark.parametrize("lie", sorted(LIES))
def test_a_cell_that_lies_about_its_structure_is_caught(lie):
  make, message = LIES[lie]
  cell = make()
  with pytest.raises(ValueError, match=message):
    bl.check_structure(cell, _params(cell), jnp.zeros((D,)))


def test_columnar_rtrl_uses_the_declared_blocks_for_any_cell_with_units():
  """On a plain LSTM (dense J) columnar RTRL keeps each unit's (h, c) block of J: its dense and
  compressed traces agree, and it differs from e-prop (whose implicit part drops W_hh's self
  weights) and from RTRL."""
  model = bl.make_model("lstm", "mse", D, 2, hidden_size=3)
  params = model.init(jax.random.key(1))
  k1, k2 = jax.random.split(jax.random.key(2))
  batch = bl.Batch(jax.random.normal(k1, (6, 2, D)), jax.random.normal(k2, (6, 2, 2)),
                   jnp.ones((6, 2)))
  flat = lambda t: jnp.concatenate([jnp.ravel(l) for l in jax.tree.leaves(t)])
  grads = {name: flat(rule.grads(params, batch)[0]["cell"]) for name, rule in {
      "compressed": bl.columnar_rtrl(model),
      "dense": bl.columnar_rtrl(model, compressed=False),
      "eprop": bl.eprop(model), "rtrl": bl.rtrl(model)}.items()}
  rel = lambda a, b: float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
  assert rel(grads["compressed"], grads["dense"]) < 1e-12
  assert rel(grads["compressed"], grads["eprop"]) > 1e-3
  assert rel(grads["compressed"], grads["rtrl"]) > 1e-3
