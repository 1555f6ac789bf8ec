"""flax's own cells learn by e-prop and both BP(λ) flavours with no user-written split.

With the same weights (mapped between the layouts), a flax ``OptimizedLSTMCell``/``LSTMCell``
gives the library LSTM's gradients under e-prop and under BP(λ)'s e-prop and state flavours (both
modes), and a flax ``GRUCell`` gives the library GRU's e-prop gradients — all to 1e-10 in float64.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

import bplambda_jax as bl

from helpers import jit, random_batch, rel_err

pytestmark = pytest.mark.x64  # float64 oracles

T, B, D, D_OUT, H = 6, 3, 3, 2, 4
TOL = 1e-10


def _lstm_to_flax(p):
  """Library LSTM params (rows i, f, g, o; PyTorch layout) -> flax LSTM params (Dense kernels)."""
  out = {}
  for k, q in enumerate("ifgo"):
    rows = slice(k * H, (k + 1) * H)
    out[f"i{q}"] = {"kernel": p["w_ih"][rows].T}
    out[f"h{q}"] = {"kernel": p["w_hh"][rows].T, "bias": p["b"][rows]}
  return out


def _gru_to_flax(p, grads=False):
  """Library GRU (r, z, n; b_ih and b_hh) -> flax GRUCell. flax sums the two r and z biases into
  the input Dense; so for gradients the flax bias gradient is either library bias gradient."""
  out = {}
  for k, q in enumerate("rzn"):
    rows = slice(k * H, (k + 1) * H)
    bias = p["b_ih"][rows] if (grads or q == "n") else p["b_ih"][rows] + p["b_hh"][rows]
    out[f"i{q}"] = {"kernel": p["w_ih"][rows].T, "bias": bias}
    out[f"h{q}"] = {"kernel": p["w_hh"][rows].T}
  out["hn"]["bias"] = p["b_hh"][2 * H:]
  return out


def _pair(flax_cell, library_cell, loss="mse"):
  lib = bl.make_model(library_cell, loss, D, D_OUT)
  fx = bl.make_model(bl.from_flax(flax_cell), loss, D, D_OUT, param_dtype=jnp.float64)
  return lib, fx


RULES = {
    "eprop": lambda m: bl.eprop(m),
    "eprop_sequence": lambda m: bl.eprop(m, mode="sequence"),
    "bp_eprop": lambda m: bl.bp_lambda(m, flavour="eprop", lambda_=0.8, gamma=0.9),
    "bp_eprop_sequence": lambda m: bl.bp_lambda(m, flavour="eprop", mode="sequence"),
    "bp_state": lambda m: bl.bp_lambda(m, flavour="state", sensitivity="eprop", gamma=0.9),
    "bp_state_sequence": lambda m: bl.bp_lambda(m, flavour="state", mode="sequence"),
    "bp_state_faithful": lambda m: bl.bp_lambda(m, flavour="state", faithful=True),
}


@pytest.mark.parametrize("flax_cls", [nn.OptimizedLSTMCell, nn.LSTMCell])
@pytest.mark.parametrize("rule_name", sorted(RULES))
def test_flax_lstm_equals_library_lstm(flax_cls, rule_name):
  lib, fx = _pair(flax_cls(H), bl.lstm(H))
  rule_lib, rule_fx = RULES[rule_name](lib), RULES[rule_name](fx)
  params = rule_lib.init(jax.random.key(0))
  if "synth" in params:
    params["synth"]["train"] = jax.tree.map(
        lambda a: 0.3 * jax.random.normal(jax.random.key(1), a.shape), params["synth"]["train"])
  params_fx = {**params, "cell": _lstm_to_flax(params["cell"])}
  batch = random_batch(jax.random.key(2), T, B, D, D_OUT)
  g_lib, aux_lib = jit(rule_lib.grads)(params, batch)
  g_fx, aux_fx = jit(rule_fx.grads)(params_fx, batch)
  expected = {**g_lib, "cell": _lstm_to_flax(g_lib["cell"])}
  assert rel_err(g_fx, expected) < TOL
  assert rel_err(aux_fx["learning_signal"], aux_lib["learning_signal"]) < TOL
  assert float(jnp.linalg.norm(jnp.concatenate(
      [jnp.ravel(l) for l in jax.tree.leaves(g_fx["cell"])]))) > 0


@pytest.mark.parametrize("mode", ["online", "sequence"])
def test_flax_gru_eprop_equals_library_gru(mode):
  lib, fx = _pair(nn.GRUCell(H), bl.gru(H))
  params = lib.init(jax.random.key(3))
  params_fx = {**params, "cell": _gru_to_flax(params["cell"])}
  batch = random_batch(jax.random.key(4), T, B, D, D_OUT)
  g_lib, _ = jit(bl.eprop(lib, mode=mode).grads)(params, batch)
  g_fx, _ = jit(bl.eprop(fx, mode=mode).grads)(params_fx, batch)
  expected = {**g_lib, "cell": _gru_to_flax(g_lib["cell"], grads=True)}
  assert rel_err(g_fx, expected) < TOL
  # the library GRU's two r/z biases get equal gradients (they enter as a sum)
  assert rel_err(g_lib["cell"]["b_ih"][:2 * H], g_lib["cell"]["b_hh"][:2 * H]) < TOL


def test_flax_lstm_trains_with_bp_lambda():
  """End to end: BP(λ) (e-prop flavour) on a flax OptimizedLSTMCell lowers the loss."""
  model = bl.make_model(bl.from_flax(nn.OptimizedLSTMCell(8)), "mse", D, D_OUT,
                        param_dtype=jnp.float32)
  rule = bl.bp_lambda(model, gamma=0.9, mode="sequence")
  opt = bl.optimiser(1e-2, 1e-2, 1e-3)
  batch = random_batch(jax.random.key(5), T, 8, D, D_OUT, dtype=jnp.float32)
  batch = batch._replace(mask=batch.mask.astype(jnp.float32))
  _, curves = jit(lambda k: bl.run(rule, opt, lambda key, step: batch, k, 60))(jax.random.key(6))
  loss = curves["loss"]
  assert float(loss[-5:].mean()) < 0.7 * float(loss[:5].mean())
