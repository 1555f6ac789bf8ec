"""The sensitivity family (RTRL, e-prop, SnAp-n, columnar RTRL; dense and compressed traces) and the
generic online rule, against float64 oracles: BPTT, hand-written spec §5.2 loops and brute-force
masked recursions.

To keep the file fast, every rule a cell needs is compiled into one XLA program per cell
(``BUNDLES``), built once and reused by every test with different parameters.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import bplambda_jax as O
from bplambda_jax import bp_lambda, bptt, linear_synthesiser, make_rule
from bplambda_jax import credit as S
from bplambda_jax import model as cells
from bplambda_jax import model as model_lib
from bplambda_jax.credit import _cell_structure
from bplambda_jax.credit._sensitivities import _protocol
from bplambda_jax import internals
from helpers import flat, grads_bundle, jit as _jit, random_batch, randomize, rel_err

pytestmark = pytest.mark.x64  # float64 oracles

T, B, D_IN, D_OUT, H = 5, 2, 2, 2, 3
TOL = 1e-9
# Unit k reads unit j when CHAIN[k, j] = 1: a chain 0 → 1 → 2.
CHAIN = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]])

CELLS = {
    "linear": lambda: cells.linear_rnn(H),
    "tanh": lambda: cells.tanh_rnn(H),
    "lstm": lambda: cells.lstm(H),
    "gru": lambda: cells.gru(H),
    "columnar": lambda: cells.columnar_lstm(H),
    "columnar_chain": lambda: cells.columnar_lstm(H, CHAIN),
    "flax_gru": lambda: cells.from_flax(nn.GRUCell(features=H)),
    "flax_lstm": lambda: cells.from_flax(nn.LSTMCell(features=H)),
}


@functools.cache
def _model(cell_name):
  return model_lib.make_model(CELLS[cell_name](), "mse", D_IN, D_OUT)


def _rule(cell_name, key):
  """A rule by key: 'bptt', or '<sensitivity>[/dense][/seq]' for the online rule."""
  model = _model(cell_name)
  if key == "bptt":
    return bptt(model)
  parts = key.split("/")
  name, dense, mode = parts[0], "dense" in parts, "sequence" if "seq" in parts else "online"
  cell = model.cell
  if name == "eprop":
    sens = S.eprop(cell, compressed=False if dense else None)
  elif name == "snap:1":
    sens = S.snap(cell, 1, compressed=False if dense else None)
  elif name == "columnar_rtrl":
    sens = S.columnar_rtrl(cell, compressed=not dense)
  else:
    sens = name
  return O.from_sensitivity(model, sens, mode=mode)


# The rules compiled for each cell (keys as in _rule).
BUNDLES = {
    "linear": ("bptt", "rtrl", "eprop"),
    "tanh": ("bptt", "rtrl", "eprop", "snap:1", "snap:2"),
    "gru": ("bptt", "rtrl", "eprop", "snap:1"),
    "lstm": ("bptt", "rtrl", "eprop", "eprop/dense", "snap:1", "snap:1/dense", "eprop/seq",
             "rtrl/seq", "immediate"),
    "columnar": ("bptt", "rtrl", "columnar_rtrl", "snap:1", "snap:1/dense"),
    "columnar_chain": ("bptt", "rtrl", "columnar_rtrl", "columnar_rtrl/dense",
                       "columnar_rtrl/seq", "snap:2"),
    "flax_gru": ("bptt", "rtrl"),
    "flax_lstm": ("bptt", "rtrl"),
}


@functools.cache
def _bundle(cell_name):
  return grads_bundle({key: _rule(cell_name, key) for key in BUNDLES[cell_name]})


def _grads(cell_name, key):
  """``(params, batch) -> (grads, aux)`` of one rule, through the cell's compiled bundle."""
  if key not in BUNDLES[cell_name]:
    raise KeyError(f"add {key!r} to BUNDLES[{cell_name!r}]")
  return lambda params, batch: _bundle(cell_name)(params, batch)[key]


def _params(cell_name, seed):
  """Float64 parameters (flax creates float32 ones; float64 oracles need float64 throughout)."""
  params = _model(cell_name).init(jax.random.key(seed))
  return jax.tree.map(lambda l: l.astype(jnp.float64), params)


def _batch(seed):
  return random_batch(jax.random.key(1000 + seed), T, B, D_IN, D_OUT, mask_prob=2.0)


def _cell_grads(cell_name, key, params, batch):
  return _grads(cell_name, key)(params, batch)[0]["cell"]


# -------------------------------------------------------------------------- RTRL = BPTT


@pytest.mark.parametrize("cell_name", list(CELLS))
def test_rtrl_equals_bptt(cell_name):
  params, batch = _params(cell_name, 1), _batch(1)
  got, aux = _grads(cell_name, "rtrl")(params, batch)
  want, want_aux = _grads(cell_name, "bptt")(params, batch)
  assert rel_err(got, want) < TOL
  assert abs(float(aux["loss"]) - float(want_aux["loss"])) < TOL * float(want_aux["loss"])
  assert aux["learning_signal"].shape == (T, B, _model(cell_name).cell.state_size)


# ------------------------------------------------------------------------------- e-prop


def _diagonal_w_hh(cell_name, params):
  """W_hh with only self-weights (each gate block diagonal) or, for the LSTM, W_hh = 0."""
  w = params["cell"]["w_hh"]
  if cell_name == "lstm":
    w = jnp.zeros_like(w)
  else:
    gates = w.shape[0] // H
    keep = jnp.tile(jnp.eye(H), (gates, 1))  # [gates·H, H]
    w = w * keep
  return {**params, "cell": {**params["cell"], "w_hh": w}}


@pytest.mark.parametrize("cell_name", ["linear", "tanh", "gru", "lstm"])
def test_eprop_equals_rtrl_when_explicit_part_vanishes(cell_name):
  batch = _batch(2)
  params = _params(cell_name, 2)
  # Control: with generic recurrent weights e-prop is an approximation.
  assert rel_err(_cell_grads(cell_name, "eprop", params, batch),
                 _cell_grads(cell_name, "rtrl", params, batch)) > 1e-3
  params = _diagonal_w_hh(cell_name, params)
  got = _cell_grads(cell_name, "eprop", params, batch)
  assert rel_err(got, _cell_grads(cell_name, "rtrl", params, batch)) < TOL
  assert rel_err(got, _cell_grads(cell_name, "bptt", params, batch)) < TOL


def _sigmoid(a):
  return 1.0 / (1.0 + np.exp(-a))


def test_lstm_eprop_matches_spec_5_2_term_by_term():
  """ε^q_t = f_t⊙ε^q_{t−1} + π^q_t⊗pre_t (q = i, f, g), e^o_t = π^o_t⊗pre_t, D_t = o⊙(1 − tanh²c).

  Checks the compressed trace rows (h-row: D⊙ε^q and e^o; c-row: ε^q and 0), the credit for a
  learning signal with h and c parts ((ls_h⊙D + ls_c)⊙ε^q; ls_h⊙e^o), and the e-prop rule's
  update mean_b Σ_t ℓ_t⊙(D_t⊙ε^q_t | e^o_t), gate block by gate block.
  """
  model = _model("lstm")
  cell = model.cell
  params, batch = _params("lstm", 3), _batch(3)
  cp = params["cell"]
  sens = S.eprop(cell)
  assert jax.tree.leaves(sens.init(cp))[0].shape[0] == 2  # compressed: k = 2 rows (h, c)

  @_jit
  def advance(cp, z, s_prev, x, ls):  # Z_t and ls·Z_t for the batch
    z = jax.vmap(sens.update, in_axes=(None, 0, 0, 0))(cp, z, s_prev, x)
    return z, jax.vmap(sens.credit, in_axes=(None, 0, 0, 0, 0))(cp, z, s_prev, x, ls)

  ls_rng = np.random.default_rng(0)

  w_ih, w_hh, b = (np.asarray(cp[k]) for k in ("w_ih", "w_hh", "b"))
  w_out, b_out = np.asarray(params["readout"]["w"]), np.asarray(params["readout"]["b"])
  x, y = np.asarray(batch.x), np.asarray(batch.y)
  h, c = np.zeros((B, H)), np.zeros((B, H))
  z = jax.vmap(lambda _: sens.init(cp))(jnp.arange(B))
  eps = {k: {q: 0.0 for q in "ifg"} for k in ("w_ih", "w_hh", "b")}
  update_sum = {k: np.zeros_like(np.asarray(cp[k])) for k in ("w_ih", "w_hh", "b")}
  for t in range(T):
    s_prev = jnp.asarray(np.concatenate([h, c], axis=1))
    a = x[t] @ w_ih.T + h @ w_hh.T + b  # [B, 4H]
    i, f, g, o = (_sigmoid(a[:, :H]), _sigmoid(a[:, H:2 * H]), np.tanh(a[:, 2 * H:3 * H]),
                  _sigmoid(a[:, 3 * H:]))
    c_new = f * c + i * g
    h_new = o * np.tanh(c_new)
    d = o * (1.0 - np.tanh(c_new) ** 2)  # D_t
    pi = {"i": g * i * (1 - i), "f": c * f * (1 - f), "g": i * (1 - g ** 2),
          "o": np.tanh(c_new) * o * (1 - o)}
    # Immediate learning signal ℓ_t: w_t = 1/T (every step carries a loss), mse over D_out.
    ell = (2.0 / D_OUT) * (h_new @ w_out.T + b_out - y[t]) / T @ w_out  # [B, H]
    ls_h, ls_c = ls_rng.standard_normal((B, H)), ls_rng.standard_normal((B, H))
    z, got_credit = advance(cp, z, s_prev, batch.x[t], jnp.asarray(np.concatenate([ls_h, ls_c], 1)))
    for name, pre in (("w_ih", x[t]), ("w_hh", h), ("b", np.ones((B, 1)))):
      rows_h = np.zeros((B, 4 * H, pre.shape[1]))
      rows_c = np.zeros_like(rows_h)
      want_credit = np.zeros_like(rows_h)
      for qi, q in enumerate("ifgo"):
        local = pi[q][:, :, None] * pre[:, None, :]  # π^q⊗pre, [B, H, |pre|]
        blk = slice(qi * H, (qi + 1) * H)
        if q == "o":
          rows_h[:, blk] = local
          want_credit[:, blk] = ls_h[:, :, None] * local
          update_sum[name][blk] += np.reshape(
              np.mean(ell[:, :, None] * local, axis=0), update_sum[name][blk].shape)
        else:
          eps[name][q] = f[:, :, None] * eps[name][q] + local
          rows_h[:, blk] = d[:, :, None] * eps[name][q]
          rows_c[:, blk] = eps[name][q]
          want_credit[:, blk] = (ls_h * d + ls_c)[:, :, None] * eps[name][q]
          update_sum[name][blk] += np.reshape(
              np.mean((ell * d)[:, :, None] * eps[name][q], axis=0), update_sum[name][blk].shape)
      squeeze = (lambda v: v[..., 0]) if name == "b" else (lambda v: v)
      assert rel_err(z[name][:, 0], squeeze(rows_h)) < TOL, (t, name, "h-row")
      assert rel_err(z[name][:, 1], squeeze(rows_c)) < TOL, (t, name, "c-row")
      assert rel_err(got_credit[name], squeeze(want_credit)) < TOL, (t, name, "credit")
    h, c = h_new, c_new

  got = _cell_grads("lstm", "eprop", params, batch)
  for name in update_sum:
    for qi, q in enumerate("ifgo"):
      blk = slice(qi * H, (qi + 1) * H)
      assert rel_err(got[name][blk], update_sum[name][blk]) < TOL, (name, q)


def test_eprop_on_flax_cell_with_split_step_uses_dense_trace():
  """A flax SimpleCell with a declared split gives the library tanh RNN's e-prop numbers."""

  def split_step(p, s_imp, s_exp, x):
    k = p["h"]["kernel"]  # [H, H], h @ k
    diag = jnp.diagonal(k)
    a = x @ p["i"]["kernel"] + p["i"]["bias"] + s_exp @ k - diag * s_exp + diag * s_imp
    return jnp.tanh(a)

  flax_cell = cells.from_flax(nn.SimpleCell(features=H), split_step=split_step)
  flax_model = model_lib.make_model(flax_cell, "mse", D_IN, D_OUT)
  sens = S.eprop(flax_cell)
  # flax creates float32 parameters even with x64 on: cast, so both sides run in float64.
  params = jax.tree.map(lambda a: a.astype(jnp.float64), flax_model.init(jax.random.key(4)))
  assert jax.tree.leaves(sens.init(params["cell"]))[0].shape[0] == H  # dense [n, *P]
  batch = _batch(4)
  got = _jit(O.from_sensitivity(flax_model, sens).grads)(params, batch)[0]["cell"]
  fp = params["cell"]
  lib_params = {**params, "cell": {"w_ih": fp["i"]["kernel"].T, "w_hh": fp["h"]["kernel"].T,
                                   "b": fp["i"]["bias"]}}
  want = _cell_grads("tanh", "eprop", lib_params, batch)
  assert rel_err({"i": {"kernel": got["i"]["kernel"].T, "bias": got["i"]["bias"]},
                  "h": {"kernel": got["h"]["kernel"].T}},
                 {"i": {"kernel": want["w_ih"], "bias": want["b"]},
                  "h": {"kernel": want["w_hh"]}}) < TOL


# --------------------------------------------------------------------------------- SnAp


def test_snap2_fills_a_dense_rnn_and_equals_rtrl():
  params, batch = _params("tanh", 5), _batch(5)
  want = _cell_grads("tanh", "rtrl", params, batch)
  assert rel_err(_cell_grads("tanh", "snap:2", params, batch), want) < TOL
  assert rel_err(_cell_grads("tanh", "snap:1", params, batch), want) > 1e-3
  pattern = internals.snap_pattern(_model("tanh").cell, params["cell"], batch.x[0, 0], 2)
  assert all(bool(np.all(m)) for m in jax.tree.leaves(pattern))


@pytest.mark.parametrize("cell_name", ["tanh", "gru"])
def test_snap1_equals_eprop_on_single_state_cells(cell_name):
  """For RNN/GRU units, SnAp-1 keeps ∂h_k/∂(unit k's params) through J's diagonal = D."""
  params, batch = _params(cell_name, 6), _batch(6)
  got = _cell_grads(cell_name, "snap:1", params, batch)
  assert rel_err(got, _cell_grads(cell_name, "eprop", params, batch)) < TOL
  assert rel_err(got, _cell_grads(cell_name, "rtrl", params, batch)) > 1e-3


def _state_index(unit, comp):
  """Index in s = [h; c] of component comp (0 = h, 1 = c) of a columnar/LSTM unit."""
  return comp * H + unit


def test_snap_pattern_follows_the_connection_graph():
  cell = _model("columnar_chain").cell
  cp = _params("columnar_chain", 7)["cell"]
  x = jnp.zeros((D_IN,))
  pat = {n: internals.snap_pattern(cell, cp, x, n)["w_ih"][:, :, 0] for n in (1, 2, 3)}  # [2H, 4H]
  gate_i, gate_o = 0, 3
  row = lambda gate, unit: gate * H + unit
  # One step: a unit's gate-i weights reach its own h and c; gate-o weights only its h.
  for s_unit in range(H):
    for comp in range(2):
      idx = _state_index(s_unit, comp)
      assert pat[1][idx, row(gate_i, 0)] == (s_unit == 0)
      assert pat[1][idx, row(gate_o, 0)] == (s_unit == 0 and comp == 0)
  # Two steps: unit 0's weights reach unit 1 (and gate o now reaches c_0), not unit 2.
  assert pat[2][_state_index(0, 1), row(gate_o, 0)]
  assert pat[2][_state_index(1, 0), row(gate_i, 0)] and pat[2][_state_index(1, 1), row(gate_i, 0)]
  assert not pat[2][_state_index(2, 0), row(gate_i, 0)]
  # Three steps: unit 2 too; nothing ever flows backwards along the chain.
  assert pat[3][_state_index(2, 0), row(gate_i, 0)]
  assert not pat[3][_state_index(0, 0), row(gate_i, 2)]


def _brute_force_snap(cell_name, params, batch, n_steps):
  """Masked RTRL Z_t = M⊙(J_t Z_{t−1} + Ī_t) with Python loops; M from fresh random probes."""
  model = _model(cell_name)
  cell = model.cell
  cp = params["cell"]
  flat0, unravel = ravel_pytree(cp)
  n = cell.state_size
  step_flat = lambda fp, s, x: cell.step(unravel(fp), s, x)
  jac_s = _jit(jax.jacfwd(step_flat, argnums=1))
  jac_p = _jit(jax.jacfwd(step_flat, argnums=0))
  rng = np.random.default_rng(99)
  nz_j = np.zeros((n, n), bool)
  nz_i = np.zeros((n, flat0.size), bool)
  for _ in range(3):
    fp = jnp.asarray(rng.standard_normal(flat0.size))
    s, x = jnp.asarray(rng.standard_normal(n)), jnp.asarray(rng.standard_normal(D_IN))
    nz_j |= np.asarray(jac_s(fp, s, x)) != 0
    nz_i |= np.asarray(jac_p(fp, s, x)) != 0
  mask = nz_i.copy()
  for _ in range(n_steps - 1):
    mask = mask | ((nz_j.astype(int) @ mask.astype(int)) > 0)
  w = np.asarray(model_lib.step_weights(batch.mask))
  total = np.zeros(flat0.size)
  for b in range(B):
    s = jnp.zeros(n)
    z = np.zeros((n, flat0.size))
    for t in range(T):
      x = batch.x[t, b]
      z = mask * (np.asarray(jac_s(flat0, s, x)) @ z + np.asarray(jac_p(flat0, s, x)))
      s = cell.step(cp, s, x)
      ell = w[t, b] * np.asarray(jax.grad(
          lambda ss: model.loss.value(model.readout(params, ss), batch.y[t, b]))(s))
      total += ell @ z
  return unravel(jnp.asarray(total / B)), mask


def test_snap_with_sparse_connections_is_masked_rtrl():
  params, batch = _params("columnar_chain", 8), _batch(8)
  want, mask = _brute_force_snap("columnar_chain", params, batch, 2)
  assert not mask.all()
  got = _cell_grads("columnar_chain", "snap:2", params, batch)
  assert rel_err(got, want) < TOL
  assert rel_err(got, _cell_grads("columnar_chain", "rtrl", params, batch)) > 1e-4


# ------------------------------------------------------------------------- columnar RTRL


def test_columnar_rtrl_is_exact_without_connections():
  params, batch = _params("columnar", 9), _batch(9)
  got = _cell_grads("columnar", "columnar_rtrl", params, batch)
  assert rel_err(got, _cell_grads("columnar", "rtrl", params, batch)) < TOL
  assert rel_err(got, _cell_grads("columnar", "bptt", params, batch)) < TOL


def test_columnar_rtrl_with_connections_is_an_approximation():
  params, batch = _params("columnar_chain", 10), _batch(10)
  got = _cell_grads("columnar_chain", "columnar_rtrl", params, batch)
  assert rel_err(got, _cell_grads("columnar_chain", "rtrl", params, batch)) > 1e-4


# ------------------------------------------------------------------- compressed == dense


@pytest.mark.parametrize("cell_name,key", [
    ("lstm", "eprop"), ("lstm", "snap:1"), ("columnar", "snap:1"),
    ("columnar_chain", "columnar_rtrl"),
])
def test_compressed_trace_equals_dense_trace(cell_name, key):
  """SnAp-1 takes J's blocks from k jvps when J is block-diagonal (columnar without connections)
  and from the dense J otherwise (LSTM); columnar RTRL's compressed blocks (of D) must equal the
  unit-block diagonal of the dense J."""
  params, batch = _params(cell_name, 11), _batch(11)
  got, aux = _grads(cell_name, key)(params, batch)
  want, want_aux = _grads(cell_name, key + "/dense")(params, batch)
  assert rel_err(got, want) < TOL
  assert rel_err(aux, want_aux) < TOL
  # The compressed trace really is unit-local: [k, *P] with k = 2 (h, c).
  sens = S.get_sensitivity(key, _model(cell_name).cell)
  assert jax.tree.leaves(sens.init(params["cell"]))[0].shape[0] == 2


def test_unit_spread_views_and_gather_fallback():
  """Gate-major leaves get a gather-free view; other layouts fall back to a gather; both spread
  a per-unit table to the entries exactly as indexing by the unit array does."""
  U, rng = 3, np.random.default_rng(0)
  gate_major = np.tile(np.arange(U), 4)[:, None] * np.ones((1, 5), np.int64)  # [4U, 5]
  shuffled = rng.permutation(gate_major.ravel()).reshape(gate_major.shape)
  per_unit = np.arange(U)
  for pu, has_view in ((gate_major, True), (shuffled, False), (per_unit, True)):
    sp = _cell_structure.spread_of(pu, U)
    assert (sp.axis is not None) == has_view, pu
    table = rng.standard_normal((2, 7, U))  # [*lead, U]
    z = rng.standard_normal((2, 7) + pu.shape)
    got = np.asarray(sp.table(jnp.asarray(table)) * sp.view(jnp.asarray(z), 2)).reshape(z.shape)
    np.testing.assert_allclose(got, table[..., pu] * z, rtol=1e-14)
    summed = internals.sum_leading(jnp.asarray(got), 2)
    np.testing.assert_allclose(np.asarray(summed), got.sum(axis=(0, 1)), rtol=1e-12)
  big = rng.standard_normal((4, _protocol.SUM_AS_PRODUCT_MIN_SIZE // 4 + 1))  # the product branch
  np.testing.assert_allclose(np.asarray(internals.sum_leading(jnp.asarray(big))), big.sum(0), rtol=1e-12)


def test_unit_layout_gather_and_scatter():
  """Component-major layouts ([h; c]) gather by reshape, others by index; both invert."""
  U, k = 3, 2
  major = internals.UnitLayout(np.arange(k * U).reshape(k, U).T)  # index[u, c] = c·U + u
  interleaved = internals.UnitLayout(np.arange(k * U).reshape(U, k))  # index[u, c] = u·k + c
  assert major.component_major and not interleaved.component_major
  v = jnp.asarray(np.random.default_rng(2).standard_normal((4, k * U)))
  for layout in (major, interleaved):
    g = layout.gather(v)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(v)[:, layout.index])
    np.testing.assert_array_equal(np.asarray(layout.scatter(g)), np.asarray(v))


def test_batch_credit_equals_summed_credit():
  """The compressed trace's batched credit equals Σ_b of its per-example credit."""
  cell = _model("lstm").cell
  params, batch = _params("lstm", 13), _batch(13)
  sens = S.get_sensitivity("eprop", cell)
  assert sens.credit_sum is not None
  cp, x = params["cell"], batch.x[0]
  Bn = x.shape[0]
  r = np.random.default_rng(1)
  s = jnp.asarray(r.standard_normal((Bn, cell.state_size)))
  ls = jnp.asarray(r.standard_normal((Bn, cell.state_size)))
  z = jax.vmap(sens.update, in_axes=(None, 0, 0, 0))(cp, jax.vmap(lambda _: sens.init(cp))(
      jnp.arange(Bn)), s, x)
  want = jax.tree.map(lambda g: jnp.sum(g, axis=0),
                      jax.vmap(sens.credit, in_axes=(None, 0, 0, 0, 0))(cp, z, s, x, ls))
  assert rel_err(internals.batch_credit(sens, cp, z, s, x, ls), want) < TOL
  dense = S.get_sensitivity("rtrl", cell)  # no credit_sum: the vmapped fallback
  assert dense.credit_sum is None


# ------------------------------------------------------------- online == sequence modes


@pytest.mark.parametrize("cell_name,key", [
    ("lstm", "eprop"), ("lstm", "rtrl"), ("columnar_chain", "columnar_rtrl"),
])
def test_online_rule_online_equals_sequence(cell_name, key):
  params, batch = _params(cell_name, 12), _batch(12)
  got, aux = _grads(cell_name, key + "/seq")(params, batch)
  want, want_aux = _grads(cell_name, key)(params, batch)
  assert rel_err(got, want) < TOL
  assert rel_err(aux, want_aux) < TOL
  assert _rule(cell_name, key + "/seq").mode == "sequence"


def test_immediate_rule_is_the_one_step_truncated_gradient():
  """Σ_t ∇_Ψ (w_t·loss_t) through step t alone, s_{t−1} held fixed, averaged over the batch."""
  model = _model("lstm")
  params, batch = _params("lstm", 13), _batch(13)
  _, states = internals.loss_and_states(model, params, batch)
  s_prev = jax.lax.stop_gradient(jnp.concatenate([jnp.zeros_like(states[:1]), states[:-1]]))
  w = model_lib.step_weights(batch.mask)

  def surrogate(cp):
    s = jax.vmap(jax.vmap(model.cell.step, in_axes=(None, 0, 0)), in_axes=(None, 0, 0))(
        cp, s_prev, batch.x)
    out = model.readout(params, s)
    return jnp.sum(w * jax.vmap(jax.vmap(model.loss.value))(out, batch.y)) / B

  want = _jit(jax.grad(surrogate))(params["cell"])
  assert rel_err(_cell_grads("lstm", "immediate", params, batch), want) < TOL


def test_bp_lambda_with_sensitivity_online_equals_sequence():
  """bp_lambda's online form (traces, compressed where the sensitivity is) equals its sequence
  form (the sensitivity's reverse form) with a non-zero synthesiser. The three cases share one compiled
  program; 'immediate' is covered by test_bp_lambda.py, m-order e-prop by test_eprop_m.py."""
  cases = (("eprop", "lstm"), ("rtrl", "tanh"), ("columnar_rtrl", "columnar_chain"))
  rules, params = {}, {}
  for i, (sens_name, cell_name) in enumerate(cases):
    for mode in ("online", "sequence"):
      rules[sens_name, mode] = bp_lambda(_model(cell_name), linear_synthesiser(), lambda_=0.7,
                                         gamma=0.9, flavour="state", sensitivity=sens_name,
                                         mode=mode)
    p = rules[sens_name, "online"].init(jax.random.key(14 + i))
    p["synth"]["train"] = randomize(p["synth"]["train"], jax.random.key(20 + i), 0.3)
    params[sens_name] = p
  batch = _batch(14)
  out = _jit(lambda ps, b: {k: r.grads(ps[k[0]], b) for k, r in rules.items()})(params, batch)
  for sens_name, _ in cases:
    (got, aux), (want, want_aux) = out[sens_name, "sequence"], out[sens_name, "online"]
    assert rel_err(got, want) < TOL, sens_name
    assert rel_err(aux["learning_signal"], want_aux["learning_signal"]) < TOL, sens_name
    assert float(jnp.linalg.norm(flat(got["synth"]["train"]))) > 1e-6, sens_name


# --------------------------------------------------------------------------------- errors


def test_errors():
  lstm_model = _model("lstm")
  # flax's own cells now declare their split and units; these copies declare neither.
  no_split = _model("flax_gru").cell._replace(split_step=None)
  no_split_lstm = _model("flax_lstm")._replace(
      cell=_model("flax_lstm").cell._replace(split_step=None))
  no_units = _model("gru").cell._replace(unit_of_state=None, param_units=None)
  with pytest.raises(ValueError, match="split_step"):
    S.eprop(no_split)
  with pytest.raises(ValueError, match="split_step"):
    O.eprop(no_split_lstm)
  with pytest.raises(ValueError, match="columnar_lstm"):
    S.columnar_rtrl(no_units)
  with pytest.raises(ValueError, match="columnar_lstm"):
    O.columnar_rtrl(_model("gru")._replace(cell=no_units))
  # Any cell that declares its units is accepted (not only columnar_lstm).
  assert S.columnar_rtrl(lstm_model.cell).name == "columnar_rtrl"
  with pytest.raises(ValueError, match="declare its units"):
    S.snap(no_units, 1, compressed=True)
  with pytest.raises(ValueError, match="n = 1 only"):
    S.snap(lstm_model.cell, 2, compressed=True)
  with pytest.raises(ValueError, match="n must be an integer >= 1"):
    S.snap(lstm_model.cell, 0)
  with pytest.raises(ValueError, match="compressed must be"):
    S.eprop(lstm_model.cell, compressed="yes")
  with pytest.raises(ValueError, match="mode='sequence'.*'snap:2' has none"):
    O.from_sensitivity(lstm_model, "snap:2", mode="sequence")
  with pytest.raises(ValueError, match="mode='sequence'"):
    bp_lambda(lstm_model, flavour="state", sensitivity="snap:1", mode="sequence")
  # The learning signal is no longer an option of the sensitivity rules (signal= was removed).
  with pytest.raises(ValueError, match=r"does not take option\(s\) \['signal'\]"):
    make_rule("rtrl", lstm_model, signal="bptt")
  with pytest.raises(ValueError, match="mode must be one of"):
    O.from_sensitivity(lstm_model, "rtrl", mode="offline")
  with pytest.raises(ValueError, match="'snap:n'"):
    S.get_sensitivity("snap", lstm_model.cell)
  assert S.get_sensitivity("snap:3", lstm_model.cell).name == "snap:3"
  assert S.get_sensitivity("eprop_m:2", lstm_model.cell).name == "eprop_m:2"
  assert S.get_sensitivity("columnar_rtrl", _model("columnar").cell).name == "columnar_rtrl"


def test_compressed_trace_rejects_shared_parameters():
  cell = cells.tanh_rnn(H)
  base_units = cell.param_units

  def shared_bias(p):
    units = dict(base_units(p))
    units["b"] = -np.ones(p["b"].shape, int)
    return units

  cell = cell._replace(param_units=shared_bias)
  params = cell.init(jax.random.key(0), D_IN)
  for sens in (S.eprop(cell), S.snap(cell, 1)):
    with pytest.raises(ValueError, match=r"shared entries \(unit -1\) in params\['b'\]"):
      sens.init(params)
  assert jax.tree.leaves(S.eprop(cell, compressed=False).init(params))[0].shape[0] == H


def test_check_structure():
  x = jnp.zeros((D_IN,))
  tanh = cells.tanh_rnn(H)
  params = tanh.init(jax.random.key(0), D_IN)
  S.check_structure(tanh, params, x)
  # Declared units that do not match what the weights feed.
  lying = tanh._replace(param_units=lambda p: jax.tree.map(
      lambda u: (u + 1) % H, tanh.param_units(p)))
  with pytest.raises(ValueError, match="param_units"):
    S.check_structure(lying, params, x)
  # A split that calls the whole state Jacobian implicit: D is not block-diagonal.
  all_implicit = tanh._replace(split_step=lambda p, si, se, xx: tanh.step(p, si, xx))
  with pytest.raises(ValueError, match="unit-block-diagonal"):
    S.check_structure(all_implicit, params, x)
