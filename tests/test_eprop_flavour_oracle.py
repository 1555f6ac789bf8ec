"""An independent oracle for BP(λ)'s e-prop flavour in the fixed convention (the LSTM default).

At λ = γ = 1 (no clipping), the summed synthesiser update of the e-prop flavour equals the gradient
of the regression ½·mean_b Σ_{k=0}^{T−1} ‖ĝ(s_{k−1}) − stop_grad(C_k)‖², where C_k is the gradient
of the future losses L_{≥k} with respect to the cell state c_k along the cell-state path: every
later output gate is held at its value (docs/concepts.md, "The e-prop flavour at λ = γ = 1").

Everything on the oracle's side (tests/rule_oracles.py) is built from the parameters alone: a
hand-written LSTM step (gate order i, f, g, o), a Python loop over time, and ``jax.vjp`` of
explicitly unrolled networks:

* C_k: the vjp with respect to c_k of the losses of a network unrolled from step k whose output
  gates are constants (their values on the actual trajectory);
* the learning signal ls_t = ℓ_t + sg·ĝ(s_t)·∂c_{t+1}/∂h_t (ls_{T−1} = ℓ_{T−1});
* the cell gradient mean_b Σ_t ls_t·Z_t, as the vjp of the unrolled hidden states with respect to
  the cell parameters with cotangents ls_t, in three networks: the real one (Z the RTRL
  sensitivity), one whose h_{t−1} enters every gate as a constant (e-prop: only the c_{t−1}
  carry is differentiated), and one with the whole previous state constant (immediate).

The library is used only for the model's parameters, its readout and the loss functions.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bplambda_jax import bp_lambda, linear_synthesiser
from bplambda_jax.model import make_model, step_weights
from bplambda_jax.rules import _bp_lambda as bpl_module

import rule_oracles as ro
from helpers import jit as _jit, random_batch, randomize, rel_err

pytestmark = pytest.mark.x64

TOL = 1e-10
T, B, D_IN, H = 5, 3, 2, 3
SG = 0.7


def _oracle(model, params, batch, sensitivity, sg=SG):
  """(synthesiser gradient, learning signals [T, B, 2H], cell gradient, readout gradient)."""
  return ro.bp_lambda_eprop_parts(model, params, batch, linear_synthesiser(), sensitivity, sg)


def _setup(seed, loss="mse", d_out=2):
  model = make_model("lstm", loss, D_IN, d_out, hidden_size=H)
  k_init, k_synth, k_data = jax.random.split(jax.random.key(seed), 3)
  params = bp_lambda(model, flavour="eprop").init(k_init)
  params["synth"]["train"] = randomize(params["synth"]["train"], k_synth, 0.4)
  batch = random_batch(k_data, T, B, D_IN, d_out, loss=loss)
  return model, params, batch


def _rule(model, sensitivity, mode, **kw):
  kw = dict(dict(flavour="eprop", sensitivity=sensitivity, mode=mode, lambda_=1.0, gamma=1.0,
                 sg_scale=SG, clip_increments=False), **kw)
  return bp_lambda(model, **kw)


# ------------------------------------------------------------------------------------- tests


def test_hand_lstm_is_the_library_lstm():
  """The oracle's hand-written step is the model's LSTM (parameter layout and gate order)."""
  model, params, batch = _setup(60)
  hs, cs, _ = ro.lstm_trajectory(params["cell"], batch.x[:, 0])
  s = jnp.zeros(2 * H)
  for t in range(T):
    s = model.cell.step(params["cell"], s, batch.x[t, 0])
    np.testing.assert_allclose(s, jnp.concatenate([hs[t], cs[t]]), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("sensitivity,mode,loss,seed", [
    ("eprop", "online", "mse", 61), ("eprop", "sequence", "ce", 62),
    ("immediate", "online", "ce", 63), ("immediate", "sequence", "mse", 64),
    ("rtrl", "online", "bce", 65), ("rtrl", "sequence", "mse", 66)])
def test_eprop_flavour_is_regression_on_c_path_gradient(sensitivity, mode, loss, seed):
  model, params, batch = _setup(seed, loss)
  rule = _rule(model, sensitivity, mode)
  synth_grad, ls, cell_grad, readout_grad = _jit(
      lambda p, b: _oracle(model, p, b, sensitivity))(params, batch)
  got, aux = _jit(rule.grads)(params, batch)
  assert float(jnp.linalg.norm(synth_grad["w"])) > 1e-3
  assert rel_err(got["synth"]["train"], synth_grad) < TOL
  assert rel_err(aux["learning_signal"], ls) < TOL
  assert rel_err(got["cell"], cell_grad) < TOL
  assert rel_err(got["readout"], readout_grad) < TOL


def test_oracle_sensitivities_differ():
  """The three credit oracles give different cell gradients here (so each check has teeth)."""
  model, params, batch = _setup(67)
  grads = {s: _jit(lambda p, b, s=s: _oracle(model, p, b, s))(params, batch)[2]
           for s in ("eprop", "immediate", "rtrl")}
  assert rel_err(grads["eprop"], grads["rtrl"]) > 1e-3
  assert rel_err(grads["immediate"], grads["eprop"]) > 1e-3


def _perturbed_link(cell):
  """The e-prop flavour's transition K_τ with its path through h_{τ−1} at 1.01 of its size."""
  lstm = cell.lstm

  def link(cp, ctx, v):
    pi, f, d_tm1 = ctx
    return 1.01 * lstm.c_vjp(cp, pi * v) * d_tm1 + v * f

  return link


@pytest.mark.parametrize("mode", ["online", "sequence"])
def test_oracle_fails_when_c_path_target_is_perturbed(mode, monkeypatch):
  """A 1 % change of the h-path of the c-path transition is caught far above the tolerance;
  so is a regression onto the total gradient instead of the c-path one."""
  model, params, batch = _setup(68)
  expected = _jit(lambda p, b: _oracle(model, p, b, "eprop"))(params, batch)[0]
  monkeypatch.setattr(bpl_module, "eprop_link", _perturbed_link)
  rule = _rule(model, "eprop", mode, trace="dense")
  got, _ = _jit(rule.grads)(params, batch)
  assert rel_err(got["synth"]["train"], expected) > 1e3 * TOL
  monkeypatch.undo()
  got, _ = _jit(_rule(model, "eprop", mode, trace="dense").grads)(params, batch)
  assert rel_err(got["synth"]["train"], expected) < TOL


def test_c_path_target_is_not_the_total_cell_gradient():
  """C_k differs from the total ∂L_{≥k}/∂c_k (which also flows through later output gates)."""
  model, params, batch = _setup(69)
  x, y, w = batch.x[:, 0], batch.y[:, 0], step_weights(batch.mask)[:, 0]
  C = ro.c_path_targets(model, params, x, y, w)
  cp = params["cell"]

  def total(c0):  # L_{≥0} through the real network from c_0 (h_{−1} = 0)
    i, f, g, o = ro.lstm_gates(cp, jnp.zeros(H), x[0])
    h, c = o * jnp.tanh(c0), c0
    acc = w[0] * model.loss.value(model.readout(params, h), y[0])
    for m in range(1, T):
      i, f, g, o = ro.lstm_gates(cp, h, x[m])
      c = f * c + i * g
      h = o * jnp.tanh(c)
      acc = acc + w[m] * model.loss.value(model.readout(params, h), y[m])
    return acc

  _, cs, _ = ro.lstm_trajectory(cp, x)
  full = jax.grad(total)(cs[0])
  assert rel_err(C[0], full) > 1e-3


@pytest.mark.parametrize("sensitivity", ["immediate", "rtrl"])
def test_eprop_flavour_online_equals_sequence(sensitivity):
  """At λ, γ < 1 (outside the oracle's reach) the online TD(λ) scan and the sequence mode's
  reverse recursion agree for the e-prop flavour with the immediate and RTRL sensitivities."""
  model, params, batch = _setup(70 + len(sensitivity))
  kw = dict(lambda_=0.6, gamma=0.85)
  f = _jit(lambda p, b: {m: _rule(model, sensitivity, m, **kw).grads(p, b)
                         for m in ("online", "sequence")})
  out = f(params, batch)
  (g_on, aux_on), (g_seq, aux_seq) = out["online"], out["sequence"]
  for group in ("cell", "readout", "synth"):
    assert rel_err(g_on[group], g_seq[group]) < TOL, group
  assert rel_err(aux_on["learning_signal"], aux_seq["learning_signal"]) < TOL
  assert float(jnp.linalg.norm(g_seq["synth"]["train"]["w"])) > 1e-3
