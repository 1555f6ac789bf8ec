"""Oracle tests for the core accumulate BP(λ) engine (spec §11.1–§11.5).

Every oracle below is written independently of ``bp_lambda``'s internals: Python loops over time,
``jax.grad``/``jax.jacrev``/``jax.jacfwd`` of the cell and synthesiser, and hand formulas from the
spec. All checks run in float64 with a relative tolerance of 1e-9 unless stated otherwise.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bplambda_jax import bp_lambda, exact_gradients, linear_synthesiser, mlp_synthesiser
from bplambda_jax import credit as sens_lib
from bplambda_jax.model import make_model, step_weights

from helpers import flat, jit as _jit, random_batch, randomize, rel_err, to_f32

pytestmark = pytest.mark.x64  # float64 oracles


TOL = 1e-9
T, B, D_IN, H = 5, 3, 2, 3


# ----------------------------------------------------------------------------- shared oracles


def _setup(cell_name, seed, loss="mse", d_out=2, synth=None, synth_scale=0.3, flavour="state",
           T_=T, **rule_kw):
  """A model, a rule, params with random non-zero synthesiser weights, and a random batch."""
  model = make_model(cell_name, loss, D_IN, d_out, hidden_size=H)
  rule = bp_lambda(model, synth, flavour=flavour, **rule_kw)
  k_init, k_synth, k_data = jax.random.split(jax.random.key(seed), 3)
  params = rule.init(k_init)
  params["synth"]["train"] = randomize(params["synth"]["train"], k_synth, synth_scale)
  batch = random_batch(k_data, T_, B, D_IN, d_out, loss=loss)
  return model, rule._replace(grads=_jit(rule.grads)), params, batch


def _exact(model, params, batch):
  """BPTT (loss, grads, dL_b/ds_t), compiled once per call site."""
  return _jit(lambda p, b: exact_gradients(model, p, b))(params, batch)


def _states(cell, cp, x):
  """States s_0..s_{T−1} by a Python loop over time, [T, B, n]."""
  s = jnp.zeros((x.shape[1], cell.state_size), x.dtype)
  out = []
  for t in range(x.shape[0]):
    s = jax.vmap(cell.step, in_axes=(None, 0, 0))(cp, s, x[t])
    out.append(s)
  return jnp.stack(out)


def _step_loss(model, params, s, y, w):
  """w · loss(readout(s), y) for one example and one step."""
  return w * model.loss.value(model.readout(params, s), y)


def _immediate_grads(model, params, states, batch):
  """ℓ_t = ∂(w_t·loss_t)/∂s_t per example (no 1/B), in state coordinates, [T, B, n]."""
  w = step_weights(batch.mask)
  g = jax.grad(_step_loss, argnums=2)
  return jax.vmap(jax.vmap(lambda s, y, wt: g(model, params, s, y, wt)))(states, batch.y, w)


def _future_grads(model, params, batch):
  """G_k = ∂/∂s_k Σ_{m>k} w_m·loss_m per example (no 1/B), [T, B, n], via an unrolled vjp."""
  cell, cp = model.cell, params["cell"]
  states = _states(cell, cp, batch.x)
  w = step_weights(batch.mask)
  Tn = batch.x.shape[0]
  out = []
  for k in range(Tn):
    def tail(s_k, xs, ys, ws, k=k):
      total, s = 0.0, s_k
      for m in range(k + 1, Tn):
        s = cell.step(cp, s, xs[m])
        total = total + _step_loss(model, params, s, ys[m], ws[m])
      return total

    def grad_one(s_k, xs, ys, ws, tail=tail):
      _, vjp = jax.vjp(lambda s: tail(s, xs, ys, ws), s_k)
      return vjp(jnp.ones((), s_k.dtype))[0]

    out.append(jax.vmap(grad_one, in_axes=(0, 1, 1, 1))(states[k], batch.x, batch.y, w))
  return jnp.stack(out), states


# ------------------------------------------------------------------- §11.1: λ = γ = 1 identity


@pytest.mark.parametrize("mode", ["online", "sequence"])
@pytest.mark.parametrize("cell_name,seed", [("linear", 0), ("tanh", 1), ("lstm", 2)])
def test_lambda_one_gamma_one_is_regression_on_future_gradient(cell_name, seed, mode):
  """Σ_t δ_t·E_t = Σ_k (G_k − ĝ(s_k))·∂ĝ(s_k)/∂θ, so the synthesiser gradient is ∇½‖ĝ − G‖²."""
  model, rule, params, batch = _setup(cell_name, seed, lambda_=1.0, gamma=1.0, mode=mode,
                                      faithful=False, clip_increments=False, sg_scale=0.7)
  synth = linear_synthesiser()
  G, states = _jit(lambda p, b: _future_grads(model, p, b))(params, batch)
  frozen = params["synth"]["frozen"]

  def regression(theta):
    g = jax.vmap(jax.vmap(lambda s: synth.apply({"train": theta, "frozen": frozen}, s)))(
        states[:-1])  # ĝ(s_k), k = 0..T−2, [T−1, B, n]
    sq = jnp.sum((g - jax.lax.stop_gradient(G[:-1])) ** 2, axis=(0, 2))  # [B]
    return 0.5 * jnp.mean(sq)

  expected = jax.grad(regression)(params["synth"]["train"])
  got, aux = rule.grads(params, batch)
  assert float(jnp.linalg.norm(expected["w"])) > 1e-3
  assert rel_err(got["synth"]["train"], expected) < TOL
  # The oracle's G is BPTT's total gradient minus the immediate one.
  loss, exact, dl_ds = _exact(model, params, batch)
  ell = _immediate_grads(model, params, states, batch)
  assert rel_err(dl_ds - ell, G) < TOL
  # The readout gets the exact gradient, and the signal is ℓ_t + sg·ĝ(s_t) with ĝ(s_{T−1}) ≡ 0.
  assert rel_err(got["readout"], exact["readout"]) < TOL
  assert abs(float(aux["loss"]) - float(loss)) < TOL * float(loss)
  ghat = jax.vmap(jax.vmap(lambda s: synth.apply(params["synth"], s)))(states)
  ghat = ghat.at[-1].set(0.0)  # spec §4.3
  assert rel_err(aux["learning_signal"], ell + 0.7 * ghat) < TOL


# ---------------------------------------------------------------------- §11.2: λ = 0 is TD(0)

_SYNTHS = {
    "linear": lambda: linear_synthesiser(),
    "mlp1": lambda: mlp_synthesiser(1, 4),
    "mlp1_last_only": lambda: mlp_synthesiser(1, 4, train_last_only=True),
    "mlp2": lambda: mlp_synthesiser(2, 3),
}


def _td0_oracle(model, synth, params, batch, gamma):
  """−mean_b Σ_{t≥1} δ_t·∂ĝ(s_{t−1})/∂θ, δ_t = (ℓ_t + γ·ĝ(s_t))·J_t − ĝ(s_{t−1}), ĝ(s_{T−1}) ≡ 0.

  Jacobians J_t by jax.jacfwd of the cell step, ∂ĝ/∂θ by jax.jacrev of the synthesiser, one
  example and one step at a time.
  """
  cell, cp = model.cell, params["cell"]
  theta, frozen = params["synth"]["train"], params["synth"]["frozen"]
  states = _states(cell, cp, batch.x)
  ell = _immediate_grads(model, params, states, batch)
  g_of = lambda th, s: synth.apply({"train": th, "frozen": frozen}, s)
  Tn, Bn = batch.x.shape[:2]
  total = jax.tree.map(jnp.zeros_like, theta)
  for t in range(1, Tn):
    def one(s_tm1, s_t, x_t, ell_t, final=(t == Tn - 1)):
      jac = jax.jacfwd(cell.step, argnums=1)(cp, s_tm1, x_t)  # [n, n]
      pred = jnp.zeros_like(s_t) if final else g_of(theta, s_t)
      delta = (ell_t + gamma * pred) @ jac - g_of(theta, s_tm1)
      dg = jax.jacrev(g_of)(theta, s_tm1)  # leaves [n, *θ]
      return jax.tree.map(lambda d: jnp.tensordot(delta, d, axes=1), dg)

    per_example = jax.vmap(one)(states[t - 1], states[t], batch.x[t], ell[t])
    total = jax.tree.map(lambda a, d: a - jnp.sum(d, axis=0) / Bn, total, per_example)
  return total


@pytest.mark.parametrize("synth_name,mode", [
    ("linear", "online"), ("linear", "sequence"), ("mlp1", "online"), ("mlp1", "sequence"),
    ("mlp1_last_only", "online"), ("mlp2", "online")])
def test_lambda_zero_is_one_step_td(synth_name, mode):
  """λ = 0: the summed update is Σ_t δ_t·∂ĝ(s_{t−1})/∂θ, so every trace increment is jacrev(ĝ)."""
  gamma = 0.9
  synth = _SYNTHS[synth_name]()
  model, rule, params, batch = _setup("tanh", 10, synth=synth, lambda_=0.0, gamma=gamma,
                                      mode=mode, clip_increments=False)
  expected = _jit(lambda p, b: _td0_oracle(model, synth, p, b, gamma))(params, batch)
  got, _ = rule.grads(params, batch)
  assert float(jnp.linalg.norm(flat(expected))) > 1e-3
  assert rel_err(got["synth"]["train"], expected) < TOL


def test_lambda_zero_lstm_state_flavour():
  synth = linear_synthesiser()
  model, rule, params, batch = _setup("lstm", 11, synth=synth, lambda_=0.0, gamma=0.8,
                                      clip_increments=False)
  expected = _jit(lambda p, b: _td0_oracle(model, synth, p, b, 0.8))(params, batch)
  got, _ = rule.grads(params, batch)
  assert rel_err(got["synth"]["train"], expected) < TOL


def test_single_td_update_increment_is_jacrev():
  """With T = 2 there is one TD update, δ_1·E_1, with E_1 = jacrev(ĝ)(s_0) (MLP, all layers
  trained: the case whose hand-written increments the reference gets wrong, quirk Q4)."""
  synth = _SYNTHS["mlp1"]()
  lam = 0.6  # irrelevant: the first trace has nothing to decay
  model, rule, params, batch = _setup("tanh", 12, synth=synth, lambda_=lam, gamma=0.7, T_=2,
                                      clip_increments=False)
  cell, cp = model.cell, params["cell"]
  theta, frozen = params["synth"]["train"], params["synth"]["frozen"]
  g_of = lambda th, s: synth.apply({"train": th, "frozen": frozen}, s)

  def oracle(params, batch):
    w = step_weights(batch.mask)

    def one(x0, x1, y1, w1):
      s0 = cell.step(cp, jnp.zeros(H), x0)
      s1 = cell.step(cp, s0, x1)
      ell1 = jax.grad(_step_loss, argnums=2)(model, params, s1, y1, w1)
      jac = jax.jacfwd(cell.step, argnums=1)(cp, s0, x1)
      delta = ell1 @ jac - g_of(theta, s0)  # final step: ĝ(s_1) ≡ 0
      e1 = jax.jacrev(g_of)(theta, s0)  # the trace after its first increment
      return jax.tree.map(lambda e: -jnp.tensordot(delta, e, axes=1), e1)

    per_example = jax.vmap(one)(batch.x[0], batch.x[1], batch.y[1], w[1])
    return jax.tree.map(lambda a: jnp.mean(a, axis=0), per_example)

  expected = _jit(oracle)(params, batch)
  got, _ = rule.grads(params, batch)
  assert rel_err(got["synth"]["train"], expected) < TOL


# ------------------------------------------------------------------------ online == sequence

_CONFIGS = {
    # name: (cell, loss, d_out, flavour, faithful)
    "linear_state": ("linear", "mse", 2, "state", False),
    "tanh_state": ("tanh", "bce", 2, "state", False),
    "lstm_state_fixed": ("lstm", "ce", 3, "state", False),
    "lstm_state_faithful": ("lstm", "mse", 2, "state", True),
    "lstm_eprop_fixed": ("lstm", "mse", 2, "eprop", False),
    "lstm_eprop_faithful": ("lstm", "ce", 3, "eprop", True),
}
_HPARAMS = [(lam, gam) for lam in (0.0, 0.5, 1.0) for gam in (0.9, 1.0)]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("config", sorted(_CONFIGS))
def test_online_equals_sequence(config, dtype):
  cell_name, loss, d_out, flavour, faithful = _CONFIGS[config]
  seed = sorted(_CONFIGS).index(config) + 20
  kw = dict(flavour=flavour, faithful=faithful, clip_increments=False, sg_scale=0.7)
  model, online, params, batch = _setup(cell_name, seed, loss=loss, d_out=d_out, mode="online",
                                        **kw)
  sequence = bp_lambda(model, None, mode="sequence", **kw)
  tol = TOL
  if dtype == "float32":
    params, batch, tol = to_f32(params), to_f32(batch), 1e-5
  f_on, f_seq = online.grads, _jit(sequence.grads)  # online.grads is jitted by _setup
  for lam, gam in _HPARAMS:
    hp = {"lambda_": jnp.asarray(lam, dtype), "gamma": jnp.asarray(gam, dtype)}
    g_on, aux_on = f_on(params, batch, hp)
    g_seq, aux_seq = f_seq(params, batch, hp)
    for group in ("cell", "readout", "synth"):
      assert jax.tree.leaves(g_on[group])[0].dtype == jnp.dtype(dtype)
      err = rel_err(g_on[group], g_seq[group])
      assert err < tol, (group, lam, gam, err)
    err = rel_err(aux_on["learning_signal"], aux_seq["learning_signal"])
    assert err < tol, ("learning_signal", lam, gam, err)
    assert abs(float(aux_on["loss"]) - float(aux_seq["loss"])) <= tol * abs(float(aux_seq["loss"]))
    assert float(jnp.linalg.norm(flat(g_seq["synth"]["train"]))) > 1e-4


# ------------------------------------------------- §11.3: e-prop with BPTT signals is exact


def _eprop_traces(sens, cell, cp, batch, ls_of_t=None):
  """Runs a sensitivity over the batch; returns its per-step states and mean_b Σ_t ls_t·Z_t."""
  Tn, Bn = batch.x.shape[:2]
  update = _jit(jax.vmap(sens.update, in_axes=(None, 0, 0, 0)))
  credit = _jit(jax.vmap(sens.credit, in_axes=(None, 0, 0, 0, 0)))
  step = _jit(jax.vmap(cell.step, in_axes=(None, 0, 0)))
  z = jax.vmap(lambda _: sens.init(cp))(jnp.arange(Bn))
  s_prev = jnp.zeros((Bn, cell.state_size), batch.x.dtype)
  acc = jax.tree.map(jnp.zeros_like, cp)
  traces = []
  for t in range(Tn):
    z = update(cp, z, s_prev, batch.x[t])
    traces.append(z)
    if ls_of_t is not None:
      c = credit(cp, z, s_prev, batch.x[t], ls_of_t(t))
      acc = jax.tree.map(lambda a, ct: a + jnp.sum(ct, axis=0) / Bn, acc, c)
    s_prev = step(cp, s_prev, batch.x[t])
  return traces, acc


@pytest.mark.parametrize("dense", [False, True])
def test_lstm_eprop_with_bptt_learning_signals_is_exact(dense):
  """ls_t = [dL_b/dh_t (total), 0] with e-prop traces: mean_b Σ_t ls_t·Z_t is the exact gradient."""
  model, _, params, batch = _setup("lstm", 30)
  _, exact, dl_ds = _exact(model, params, batch)
  ls = lambda t: jnp.concatenate([dl_ds[t, :, :H], jnp.zeros_like(dl_ds[t, :, H:])], axis=-1)
  sens = sens_lib.eprop(model.cell, compressed=False) if dense else sens_lib.eprop(model.cell)
  _, got = _eprop_traces(sens, model.cell, params["cell"], batch, ls)
  assert rel_err(got, exact["cell"]) < TOL
  # Not a tautology: the immediate signal alone (ls_t = ℓ_t) gives a different gradient.
  states = _states(model.cell, params["cell"], batch.x)
  ell = _immediate_grads(model, params, states, batch)
  _, approx = _eprop_traces(sens, model.cell, params["cell"], batch, lambda t: ell[t])
  assert rel_err(approx, exact["cell"]) > 1e-3


def _sigmoid(a):
  return 1.0 / (1.0 + np.exp(-a))


def test_lstm_eprop_traces_match_spec_5_2():
  """e-prop traces Z_t: h-rows D_t⊙ε^q_t (q = i,f,g) and e^o_t; c-rows ε^q_t and 0 (o).

  Checked for the dense trace ([n, *P] per example) and for the compressed unit-local trace
  ([2, *P]: row 0 the h entry, row 1 the c entry of the unit that the parameter row feeds).
  """
  model, _, params, batch = _setup("lstm", 31)
  cp = params["cell"]
  traces, _ = _eprop_traces(sens_lib.eprop(model.cell, compressed=False), model.cell, cp, batch)
  packed, _ = _eprop_traces(sens_lib.eprop(model.cell, compressed=True), model.cell, cp, batch)
  rows = np.tile(np.arange(H), 4)  # unit fed by each gate-major parameter row
  w_ih, w_hh, b = (np.asarray(cp[k]) for k in ("w_ih", "w_hh", "b"))
  x = np.asarray(batch.x)
  h = np.zeros((B, H))
  c = np.zeros((B, H))
  pres = {"w_ih": None, "w_hh": None, "b": None}
  eps = {k: {q: None for q in "ifg"} for k in pres}
  for t in range(T):
    z = x[t] @ w_ih.T + h @ w_hh.T + b  # [B, 4H]
    i, f, g, o = (_sigmoid(z[:, :H]), _sigmoid(z[:, H:2 * H]), np.tanh(z[:, 2 * H:3 * H]),
                  _sigmoid(z[:, 3 * H:]))
    c_new = f * c + i * g
    d = o * (1.0 - np.tanh(c_new) ** 2)  # D_t
    pi = {"i": g * i * (1 - i), "f": c * f * (1 - f), "g": i * (1 - g ** 2),
          "o": np.tanh(c_new) * o * (1 - o)}
    pres = {"w_ih": x[t], "w_hh": h, "b": np.ones((B, 1))}
    expected = {}
    for name, pre in pres.items():
      local = {q: pi[q][:, :, None] * pre[:, None, :] for q in "ifgo"}  # π^q ⊗ pre, [B, H, P]
      for q in "ifg":
        prev = eps[name][q] if eps[name][q] is not None else 0.0
        eps[name][q] = f[:, :, None] * prev + local[q]  # ε^q_t = f_t⊙ε^q_{t−1} + π^q⊗pre
      P = pre.shape[1]
      full = np.zeros((B, 2 * H, 4 * H, P))
      for qi, q in enumerate("ifgo"):
        for k in range(H):
          if q == "o":
            full[:, k, qi * H + k] = local["o"][:, k]  # e^o_t
          else:
            full[:, k, qi * H + k] = d[:, k, None] * eps[name][q][:, k]  # D_t⊙ε^q_t
            full[:, H + k, qi * H + k] = eps[name][q][:, k]  # ∂c_t/∂W (implicit part)
      expected[name] = full if name != "b" else full[..., 0]
    for name in expected:
      assert rel_err(traces[t][name], expected[name]) < TOL, (t, name)
      unit_rows = np.stack([expected[name][:, rows, np.arange(4 * H)],
                            expected[name][:, H + rows, np.arange(4 * H)]], axis=1)
      assert rel_err(packed[t][name], unit_rows) < TOL, (t, name)
    assert np.linalg.norm(expected["w_hh"]) > 1e-3 or t == 0
    h, c = o * np.tanh(c_new), c_new


# ----------------------------------------------- §11.4: no-SG one-step truncated LSTM gradient


def _one_step_oracle(model, params, batch, faithful):
  """Σ_t grad of the step-t loss through step t alone, (h_{t−1}, c_{t−1}) held fixed.

  fixed: mean_b Σ_t ∇ w_t·loss_t. faithful: Σ_b Σ_t (mask_t·dy_t/B)·∇y_t with the reference's
  hand output derivative dy (mse: y − y*, ce: softmax(y) − onehot), and the bias gradient doubled.
  """
  cell, cp = model.cell, params["cell"]
  states = _states(cell, cp, batch.x)
  s_prev = jax.lax.stop_gradient(jnp.concatenate([jnp.zeros_like(states[:1]), states[:-1]]))
  w = step_weights(batch.mask)
  step_tb = jax.vmap(jax.vmap(cell.step, in_axes=(None, 0, 0)), in_axes=(None, 0, 0))
  if not faithful:
    def surrogate(q):
      out = model.readout(params, step_tb(q, s_prev, batch.x))  # [T, B, D_out]
      per = jax.vmap(jax.vmap(model.loss.value))(out, batch.y)
      return jnp.sum(w * per) / B
    return jax.grad(surrogate)(cp)
  out = np.asarray(model.readout(params, states))
  if model.loss.name == "mse":
    dy = out - np.asarray(batch.y)
  else:
    e = np.exp(out - out.max(-1, keepdims=True))
    dy = e / e.sum(-1, keepdims=True) - np.eye(out.shape[-1])[np.asarray(batch.y)]
  dy = jnp.asarray(dy * np.asarray(batch.mask)[..., None] / B)

  def surrogate(q):
    return jnp.sum(dy * model.readout(params, step_tb(q, s_prev, batch.x)))

  g = jax.grad(surrogate)(cp)
  g["b"] = 2.0 * g["b"]
  return g


@pytest.mark.parametrize("faithful,mode,loss", [(False, "online", "mse"), (False, "sequence", "ce"),
                                                (True, "online", "mse"), (True, "sequence", "ce")])
def test_no_sg_one_step_truncated_lstm(faithful, mode, loss):
  kw = {"clip_increments": False} if mode == "sequence" else {}
  model, rule, params, batch = _setup("lstm", 40, loss=loss, d_out=3, sg_scale=0.0,
                                      sensitivity="immediate", faithful=faithful, mode=mode,
                                      synth_scale=1.0, **kw)
  expected = _one_step_oracle(model, params, batch, faithful)
  got, _ = rule.grads(params, batch)
  assert rel_err(got["cell"], expected) < TOL
  # The oracle is not the full gradient: the truncation matters at these sizes.
  _, exact, _ = _exact(model, params, batch)
  if not faithful:
    assert rel_err(expected, exact["cell"]) > 1e-3


# ------------------------------------------------------------ further identities of the engine


@pytest.mark.parametrize("cell_name,mode", [("gru", "online"), ("lstm", "sequence")])
def test_rtrl_sensitivity_with_immediate_signal_is_bptt(cell_name, mode):
  """sg_scale = 0 with the RTRL sensitivity: the signal is ℓ_t and Σ_t ℓ_t·Z_t is exact."""
  model, rule, params, batch = _setup(cell_name, 50, sg_scale=0.0, sensitivity="rtrl", mode=mode,
                                      clip_increments=False)
  loss, exact, _ = _exact(model, params, batch)
  got, aux = rule.grads(params, batch)
  assert rel_err(got["cell"], exact["cell"]) < TOL
  assert rel_err(got["readout"], exact["readout"]) < TOL
  assert abs(float(aux["loss"]) - float(loss)) < TOL * float(loss)
