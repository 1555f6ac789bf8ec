"""An independent emulation of the authors' PyTorch reference, checked against faithful=True.

The emulation below is written straight from the spec (reference-algorithms.md §2.3, §2.4, §4.2,
§4.4, §5.1, §5.3, §5.4) in batched numpy, with a Python loop over time and hand formulas for
every quantity (gates, D_t, π^q, P_t, F_t, J^{hc}_t, K_t, eligibility vectors, trace increments of
the linear synthesiser). It uses nothing from ``bp_lambda`` except the parameters it is given.
It reproduces the reference's quirks: per-step per-tensor clipping of the synthesiser increment
(Q7), the doubled LSTM bias gradient (Q12), the hand output derivative with its 1/B and the batch
sums (Q13), the readout factor κ (Q14), and ĝ emitted with the freshly updated θ under
alpha_learning (Q29; in the library, per-step SGD on θ through ``rule.step(..., synth_sgd=α)``,
driven here by a hand-written loop over the steps).

The library returns the reference's synthesiser ``.grad`` (−Σ_t Δ_t) as grads['synth']['train'].
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bplambda_jax import bp_lambda
from bplambda_jax.model import Batch, make_model, step_weights

from helpers import jit as _jit, randomize, rel_err, step_loop

pytestmark = pytest.mark.x64  # float64 oracles


TOL = 1e-9
B, D_IN = 3, 2


# ------------------------------------------------------------------------------- emulation


def _sigmoid(a):
  return 1.0 / (1.0 + np.exp(-a))


def _output_derivative(loss, y, target):
  """The reference's hand derivative dy before its 1/B (spec §2.4), [B, D_out]."""
  if loss == "mse":
    return y - target
  if loss == "ce":
    e = np.exp(y - y.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True) - np.eye(y.shape[-1])[target]
  if loss == "bce":
    return (_sigmoid(y) - target) / y.shape[-1]
  raise ValueError(loss)


class _Synth:
  """The reference's linear synthesiser ĝ(s) = W s + β with accumulate BP(λ) (spec §4.2, §4.4)."""

  def __init__(self, w, b, gamma, lambda_, clip, alpha_learning, synth_alpha):
    self.w, self.b = w.copy(), b.copy()  # [d_out, d_in], [d_out]
    self.gamma, self.lambda_ = gamma, lambda_
    self.clip, self.alpha_learning, self.synth_alpha = clip, alpha_learning, synth_alpha
    d_out, d_in = w.shape
    self.trace_w = np.zeros((B, d_out, d_out, d_in))  # E for W, [B, d_out, *W.shape]
    self.trace_b = np.zeros((B, d_out, d_out))  # E for β
    self.grad_w, self.grad_b = np.zeros_like(w), np.zeros_like(b)  # the .grad buffers
    self.s_prev = self.m_prev = self.g_prev = None
    self.clipped = 0  # number of (step, tensor) increments that were renormalised
    self.increments = 0
    self.td_norms = []  # mean over the batch of ‖δ_b‖, per TD step

  def predict(self, s):
    return s @ self.w.T + self.b

  def __call__(self, s, u, m, first, final):
    """One call at a learning-signal step; returns g_t [B, d_out]."""
    d_out = self.w.shape[0]
    if not first:
      p = np.zeros((B, d_out)) if final else self.predict(s)
      delta = u + self.gamma * np.einsum("bi,bij->bj", p, m) - self.g_prev  # [B, d_out]
      self.td_norms.append(np.mean(np.linalg.norm(delta, axis=-1)))
      # ∂ĝ_k/∂W_{k'j} = 1[k = k']·s_j and ∂ĝ_k/∂β_{k'} = 1[k = k'] at s = s_prev.
      inc_w = np.zeros_like(self.trace_w)
      inc_b = np.zeros_like(self.trace_b)
      for k in range(d_out):
        inc_w[:, k, k, :] = self.s_prev
        inc_b[:, k, k] = 1.0
      decay = self.gamma * self.lambda_
      self.trace_w = decay * np.einsum("bij,bjkl->bikl", self.m_prev, self.trace_w) + inc_w
      self.trace_b = decay * np.einsum("bij,bjk->bik", self.m_prev, self.trace_b) + inc_b
      deltas = []
      for trace in (self.trace_w, self.trace_b):
        d = np.einsum("bi,bi...->...", delta, trace) / B  # batch mean of δ·E
        norm = np.linalg.norm(d.ravel())
        self.increments += 1
        if self.clip and norm > 1.0:
          d = d / norm
          self.clipped += 1
        deltas.append(d)
      if self.alpha_learning:
        self.w = self.w + self.synth_alpha * deltas[0]
        self.b = self.b + self.synth_alpha * deltas[1]
      else:
        self.grad_w -= deltas[0]
        self.grad_b -= deltas[1]
    else:
      self.td_norms.append(0.0)
    g = np.zeros((B, d_out)) if final else self.predict(s)  # with the updated θ (Q29)
    self.s_prev, self.m_prev, self.g_prev = s, m, g
    return g


def _unpack(params):
  cell = {k: np.asarray(v, np.float64) for k, v in params["cell"].items()}
  ro = {k: np.asarray(v, np.float64) for k, v in params["readout"].items()}
  th = {k: np.asarray(v, np.float64) for k, v in params["synth"]["train"].items()}
  return cell, ro, th


def _readout_step(ro, h, target, mask_t, loss, kappa, grads):
  """Hand output derivative, readout update and ℓ_t = dy·W_out (spec §2.4)."""
  y = h @ ro["w"].T + ro["b"]
  dy = mask_t[:, None] * _output_derivative(loss, y, target) / B  # [B, D_out]
  grads["readout_w"] += kappa * dy.T @ h  # κ·Σ_b dy ⊗ h
  grads["readout_b"] += kappa * dy.sum(0)
  return dy @ ro["w"]  # ℓ_t, [B, H]


def _prelude(params, batch, hp):
  """Shared set-up of the emulations: cell and readout params, numpy data, the reference
  synthesiser and zeroed gradient accumulators (cell leaves plus readout_w, readout_b)."""
  p, ro, th = _unpack(params)
  x, y, mask = (np.asarray(a) for a in batch)
  synth = _Synth(th["w"], th["b"], hp["gamma"], hp["lambda_"], hp["clip"],
                 hp["alpha_learning"], hp["synth_alpha"])
  grads = {k: np.zeros_like(v) for k, v in p.items()}
  grads.update(readout_w=np.zeros_like(ro["w"]), readout_b=np.zeros_like(ro["b"]))
  return p, ro, x, y, mask, synth, grads


def emulate_rnn(params, batch, loss, activation, hp):
  """Reference vanilla RNN with BP(λ) (spec §2.2, §4.1, §5.1, §9); one batch of sequences."""
  p, ro, x, y, mask, synth, grads = _prelude(params, batch, hp)
  T_, H = x.shape[0], p["w_hh"].shape[1]
  phi, dphi = {"identity": (lambda a: a, lambda a: np.ones_like(a)),
               "tanh": (np.tanh, lambda a: 1.0 - np.tanh(a) ** 2)}[activation]
  h = np.zeros((B, H))
  ls_all = []
  for t in range(T_):
    a = x[t] @ p["w_ih"].T + h @ p["w_hh"].T + p["b"]
    h_new = phi(a)
    ell = _readout_step(ro, h_new, y[t], mask[t], loss, hp["kappa"], grads)
    jac = dphi(a)[:, :, None] * p["w_hh"][None]  # J_t = diag(φ'(a_t))·W_hh, [B, H, H]
    u = np.einsum("bi,bij->bj", ell, jac)  # ℓ_t·J_t
    g = synth(h_new, u, jac, first=(t == 0), final=(t == T_ - 1))
    ls = ell + hp["sg"] * g
    e = ls * dphi(a)  # LS ⊙ φ'(a_t)
    grads["w_ih"] += e.T @ x[t]
    grads["w_hh"] += e.T @ h
    grads["b"] += e.sum(0)  # not doubled in the online RNN update (Q12)
    ls_all.append(ls)
    h = h_new
  return grads, np.stack(ls_all), synth


def _lstm_forward(p, x_t, h, c):
  """Gates and helper quantities of spec §2.3 for one step, all [B, H] (P_t [B, H, H])."""
  H = h.shape[1]
  z = x_t @ p["w_ih"].T + h @ p["w_hh"].T + p["b"]
  i, f = _sigmoid(z[:, :H]), _sigmoid(z[:, H:2 * H])
  g, o = np.tanh(z[:, 2 * H:3 * H]), _sigmoid(z[:, 3 * H:])
  c_new = f * c + i * g
  h_new = o * np.tanh(c_new)
  d = o * (1.0 - np.tanh(c_new) ** 2)
  pi = {"i": g * i * (1 - i), "f": c * f * (1 - f), "g": i * (1 - g ** 2),
        "o": np.tanh(c_new) * o * (1 - o)}
  w_hh = {q: p["w_hh"][k * H:(k + 1) * H] for k, q in enumerate("ifgo")}
  P = sum(pi[q][:, :, None] * w_hh[q][None] for q in "ifg")  # ∂c_t/∂h_{t−1}
  return dict(i=i, f=f, g=g, o=o, c=c_new, h=h_new, d=d, pi=pi, P=P)


def _lstm_add(grads, signal, H, bias_scale):
  """grads of gate block q += Σ_b signal_q[b, k]·pre[b, j] for the three weight families.

  signal: {q: [B, H] or [B, H, P] per family}; pre: {'w_ih': x [B, D], 'w_hh': h [B, H]}.
  """
  for k, q in enumerate("ifgo"):
    rows = slice(k * H, (k + 1) * H)
    for fam in ("w_ih", "w_hh", "b"):
      sig = signal[q][fam]
      if fam == "b":
        grads["b"][rows] += bias_scale * sig.sum(0)
      else:
        grads[fam][rows] += sig.sum(0)


def emulate_lstm_hc(params, batch, loss, hp):
  """Reference LSTM [h, c] flavour: use_etraces=False, apply_sg=True (spec §5.3)."""
  p, ro, x, y, mask, synth, grads = _prelude(params, batch, hp)
  T_, H = x.shape[0], p["w_hh"].shape[1]
  h, c = np.zeros((B, H)), np.zeros((B, H))
  ls_all = []
  for t in range(T_):
    fw = _lstm_forward(p, x[t], h, c)
    ell = _readout_step(ro, fw["h"], y[t], mask[t], loss, hp["kappa"], grads)
    v = np.concatenate([ell, ell * fw["d"]], axis=1)  # [ℓ, ℓ⊙D] (total-c convention)
    dmat = fw["d"][:, :, None]
    fmat = np.einsum("bk,kj->bkj", fw["f"], np.eye(H))  # F_t = diag(f_t)
    jhc = np.concatenate([np.concatenate([dmat * fw["P"], dmat * fmat], axis=2),
                          np.concatenate([fw["P"], fmat], axis=2)], axis=1)  # [B, 2H, 2H]
    u = np.einsum("bi,bij->bj", v, jhc)
    s = np.concatenate([fw["h"], fw["c"]], axis=1)
    g = synth(s, u, jhc, first=(t == 0), final=(t == T_ - 1))
    ls = v + hp["sg"] * g
    ls_h, ls_c = ls[:, :H], ls[:, H:]
    pre = {"w_ih": x[t], "w_hh": h}
    signal = {}
    for q in "ifgo":
      base = (ls_h if q == "o" else ls_c) * fw["pi"][q]  # LS^h⊙e^o, LS^c⊙ε^q (local, κ = 0)
      signal[q] = {"w_ih": base[:, :, None] * pre["w_ih"][:, None, :],
                   "w_hh": base[:, :, None] * pre["w_hh"][:, None, :], "b": base}
    _lstm_add(grads, signal, H, hp["bias_scale"])
    ls_all.append(ls)
    h, c = fw["h"], fw["c"]
  return grads, np.stack(ls_all), synth


def emulate_lstm_eprop(params, batch, loss, hp):
  """Reference LSTM e-prop flavour: use_etraces=True, apply_sg=True (spec §5.2, §5.4)."""
  p, ro, x, y, mask, synth, grads = _prelude(params, batch, hp)
  T_, H = x.shape[0], p["w_hh"].shape[1]
  fams = {"w_ih": x.shape[2], "w_hh": H, "b": 1}
  eps = {q: {f: np.zeros((B, H, n)) for f, n in fams.items()} for q in "ifg"}  # ε^q
  e_o = {f: np.zeros((B, H, n)) for f, n in fams.items()}  # e^o
  h, c = np.zeros((B, H)), np.zeros((B, H))
  d_cur = np.zeros((B, H))  # D buffer, zero before the first step
  ell_prev = np.zeros((B, H))  # a_prev = ℓ_{t−1}, the zero-reset buffer at t = 0
  ls_all = []

  def update(ls, d, eps_, e_o_):  # gates i,f,g: (LS⊙D)⊙ε^q; gate o: LS⊙e^o; biases doubled
    signal = {q: {f: (ls * d)[:, :, None] * eps_[q][f] for f in fams} for q in "ifg"}
    signal["o"] = {f: ls[:, :, None] * e_o_[f] for f in fams}
    for q in signal:
      signal[q]["b"] = signal[q]["b"][..., 0]
    _lstm_add(grads, signal, H, hp["bias_scale"])

  for t in range(T_):
    fw = _lstm_forward(p, x[t], h, c)
    eps_old = {q: {f: a.copy() for f, a in eps[q].items()} for q in "ifg"}
    e_o_old = {f: a.copy() for f, a in e_o.items()}
    pre = {"w_ih": x[t], "w_hh": h, "b": np.ones((B, 1))}
    for q in "ifg":  # ε^q_t = f_t⊙ε^q_{t−1} + π^q_t⊗pre_t (κ = evec_scale = 1)
      for f_ in fams:
        eps[q][f_] = fw["f"][:, :, None] * eps[q][f_] + fw["pi"][q][:, :, None] * pre[f_][:, None]
    for f_ in fams:
      e_o[f_] = fw["pi"]["o"][:, :, None] * pre[f_][:, None]
    d_prev, d_cur = d_cur, fw["d"]
    ell = _readout_step(ro, fw["h"], y[t], mask[t], loss, hp["kappa"], grads)
    q_mat = fw["P"]  # Q_t = P_t = ∂c_t/∂h_{t−1}
    k_mat = q_mat * d_prev[:, None, :] + np.einsum("bk,kj->bkj", fw["f"], np.eye(H))
    u = ell_prev * d_prev  # ∂L_{t−1}/∂c_{t−1}, not mapped through any Jacobian
    s_prev = np.concatenate([h, c], axis=1)  # [h_{t−1}; c_{t−1}]
    g = synth(s_prev, u, k_mat, first=(t == 0), final=False)
    ls_prev = ell_prev + hp["sg"] * np.einsum("bi,bij->bj", g, q_mat)  # LS_{t−1}
    if t > 0:
      update(ls_prev, d_prev, eps_old, e_o_old)
      ls_all.append(ls_prev)
    ell_prev = ell
    h, c = fw["h"], fw["c"]
  # After the loop: the final TD update (ĝ ≡ 0) and the RNN update with LS_{T−1} = ℓ_{T−1}.
  synth(np.zeros((B, 2 * H)), ell_prev * d_cur, np.zeros((B, H, H)), first=False, final=True)
  update(ell_prev, d_cur, eps, e_o)
  ls_all.append(ell_prev)
  return grads, np.stack(ls_all), synth


# --------------------------------------------------------------------------------- harness


def _make(cell_name, loss, d_out, T_, seed, synth_scale, flavour="state", mask_kind="random",
          input_kind="all"):
  model = make_model(cell_name, loss, D_IN, d_out, hidden_size=3)
  key = jax.random.key(seed)
  k_init, k_synth, kx, ky, km = jax.random.split(key, 5)
  rule0 = bp_lambda(model, flavour=flavour)
  params = rule0.init(k_init)
  params["synth"]["train"] = randomize(params["synth"]["train"], k_synth, synth_scale)
  x = jax.random.normal(kx, (T_, B, D_IN))
  if input_kind == "first":  # the toy task: input at t = 0 only
    x = x.at[1:].set(0.0)
  if loss == "ce":
    y = jax.random.randint(ky, (T_, B), 0, d_out)
  else:
    y = jax.random.normal(ky, (T_, B, d_out))
    if loss == "bce":
      y = (y > 0).astype(jnp.float64)
  if mask_kind == "last":  # predict_last
    mask = jnp.zeros((T_, B)).at[-1].set(1.0)
  elif mask_kind == "all":
    mask = jnp.ones((T_, B))
  else:  # the same random target steps for every example, always including T−1
    m = (jax.random.uniform(km, (T_,)) < 0.6).at[-1].set(True)
    mask = jnp.broadcast_to(m[:, None], (T_, B)).astype(jnp.float64)
  return model, params, Batch(x, y, mask)


def _compare(model, params, batch, rule_kw, emulate, hp_emul):
  rule_kw = dict(rule_kw)
  alpha = rule_kw.pop("synth_alpha", None) if rule_kw.pop("alpha_learning", False) else None
  rule = bp_lambda(model, faithful=True, mode="online", **rule_kw)
  if alpha is None:
    got, aux = _jit(rule.grads)(params, batch)
  else:  # per-step SGD on θ: a loop over rule.step, the step's mask_t the raw mask (faithful)
    got = aux = step_loop(rule, params, batch, faithful=True, synth_sgd=alpha)
  grads, ls, synth = emulate(params, batch, hp_emul)
  expected_cell = {k: grads[k] for k in params["cell"]}
  assert rel_err(got["cell"], jax.tree.map(jnp.asarray, expected_cell)) < TOL
  assert rel_err(got["readout"], {"w": jnp.asarray(grads["readout_w"]),
                                  "b": jnp.asarray(grads["readout_b"])}) < TOL
  n = model.cell.state_size
  ls_full = np.zeros(ls.shape[:2] + (n,))
  ls_full[..., :ls.shape[-1]] = ls  # the e-prop flavour's signal lives on h only
  assert rel_err(aux["learning_signal"], jnp.asarray(ls_full)) < TOL
  assert rel_err(aux["td_error_norm"], jnp.asarray(synth.td_norms)) < TOL
  if alpha is not None:
    assert rel_err(aux["synth_params"]["train"],
                   {"w": jnp.asarray(synth.w), "b": jnp.asarray(synth.b)}) < TOL
    assert float(jnp.max(jnp.abs(synth.w - params["synth"]["train"]["w"]))) > 1e-3
  else:
    assert rel_err(got["synth"]["train"], {"w": jnp.asarray(synth.grad_w),
                                           "b": jnp.asarray(synth.grad_b)}) < TOL
  return synth


def _hp(rule_kw, bias_scale, clip=True):
  return {"gamma": rule_kw["gamma"], "lambda_": rule_kw["lambda_"], "sg": rule_kw["sg_scale"],
          "kappa": rule_kw.get("readout_scale", 1.0), "clip": clip,
          "alpha_learning": rule_kw.get("alpha_learning", False),
          "synth_alpha": rule_kw.get("synth_alpha", 0.1), "bias_scale": bias_scale}


# -------------------------------------------------------------------------------------- tests

# (cell, loss, d_out, T, mask, input, synth scale, rule kwargs, expected clipping)
_RNN_CASES = {
    # The toy task: fixed linear RNN, input at t = 0 only, MSE at the last step, D_out = 2,
    # γ = λ = 1, sg = 1, and κ = 1/D_out for the end-only rank-2 target (Q14). No clipping.
    "toy": ("linear", "mse", 2, 6, "last", "first", 0.2,
            dict(gamma=1.0, lambda_=1.0, sg_scale=1.0, readout_scale=0.5), "none"),
    # Per-step targets with κ = 1/T, λ < 1, γ < 1, and ĝ large enough that clipping triggers at
    # some steps (asserted: some but not all increments are renormalised).
    "linear_clipped": ("linear", "mse", 2, 5, "all", "all", 0.5,
                       dict(gamma=0.9, lambda_=0.6, sg_scale=0.5, readout_scale=0.2), "some"),
    "tanh_bce": ("tanh", "bce", 2, 5, "random", "all", 0.5,
                 dict(gamma=0.8, lambda_=0.5, sg_scale=0.3), "some"),
}


def _check_clipping(synth, expected):
  if expected == "none":
    assert synth.clipped == 0
  elif expected == "some":
    assert 0 < synth.clipped < synth.increments, (synth.clipped, synth.increments)


@pytest.mark.parametrize("case", sorted(_RNN_CASES))
def test_vanilla_rnn_matches_reference(case):
  cell_name, loss, d_out, T_, mask, inp, scale, kw, clipping = _RNN_CASES[case]
  model, params, batch = _make(cell_name, loss, d_out, T_, 1, scale, mask_kind=mask,
                               input_kind=inp)
  activation = "identity" if cell_name == "linear" else "tanh"
  emulate = lambda p, b, hp: emulate_rnn(p, b, loss, activation, hp)
  synth = _compare(model, params, batch, kw, emulate, _hp(kw, bias_scale=1.0))
  _check_clipping(synth, clipping)


_LSTM_CASES = {
    "hc_ce": ("ce", 3, 5, "last", 0.3, dict(gamma=0.9, lambda_=0.7, sg_scale=0.5), "none"),
    "hc_mse_clipped": ("mse", 2, 5, "all", 0.6,
                       dict(gamma=1.0, lambda_=1.0, sg_scale=1.0, readout_scale=0.2), "some"),
    "eprop_mse": ("mse", 2, 5, "random", 0.3, dict(gamma=0.9, lambda_=0.5, sg_scale=0.7), "none"),
    "eprop_bce_clipped": ("bce", 2, 6, "all", 0.6,
                          dict(gamma=1.0, lambda_=1.0, sg_scale=1.0, readout_scale=1 / 6),
                          "some"),
}


@pytest.mark.parametrize("case", sorted(_LSTM_CASES))
def test_lstm_matches_reference(case):
  loss, d_out, T_, mask, scale, kw, clipping = _LSTM_CASES[case]
  flavour = "eprop" if case.startswith("eprop") else "state"
  model, params, batch = _make("lstm", loss, d_out, T_, 2, scale, flavour=flavour, mask_kind=mask)
  fn = emulate_lstm_eprop if flavour == "eprop" else emulate_lstm_hc
  emulate = lambda p, b, hp: fn(p, b, loss, hp)
  synth = _compare(model, params, batch, dict(kw, flavour=flavour), emulate,
                   _hp(kw, bias_scale=2.0))
  _check_clipping(synth, clipping)


@pytest.mark.parametrize("flavour", ["rnn", "hc", "eprop"])
def test_alpha_learning_matches_reference(flavour):
  """Plain SGD on θ at every step (after clipping); ĝ is emitted with the updated θ (Q29)."""
  kw = dict(gamma=0.9, lambda_=0.8, sg_scale=0.6, alpha_learning=True, synth_alpha=0.3)
  if flavour == "rnn":
    model, params, batch = _make("tanh", "mse", 2, 5, 3, 1.0)
    emulate = lambda p, b, hp: emulate_rnn(p, b, "mse", "tanh", hp)
    bias = 1.0
  else:
    model, params, batch = _make("lstm", "mse", 2, 5, 3, 1.0,
                                 flavour="eprop" if flavour == "eprop" else "state")
    fn = emulate_lstm_eprop if flavour == "eprop" else emulate_lstm_hc
    emulate = lambda p, b, hp: fn(p, b, "mse", hp)
    kw["flavour"] = "eprop" if flavour == "eprop" else "state"
    bias = 2.0
  synth = _compare(model, params, batch, kw, emulate, _hp(kw, bias_scale=bias))
  assert synth.clipped > 0  # the clipped path is exercised together with the per-step updates


def test_clipping_switch_off_matches_unclipped_reference():
  """faithful with clip_increments=False equals the emulation without clipping (where the default
  clipped run differs)."""
  model, params, batch = _make("lstm", "mse", 2, 5, 4, 1.2, mask_kind="all")
  kw = dict(gamma=0.9, lambda_=0.9, sg_scale=1.0, flavour="state")  # the [h, c] flavour
  emulate = lambda p, b, hp: emulate_lstm_hc(p, b, "mse", hp)
  _compare(model, params, batch, dict(kw, clip_increments=False), emulate,
           _hp(kw, bias_scale=2.0, clip=False))
  _, _, clipped = emulate_lstm_hc(params, batch, "mse", _hp(kw, bias_scale=2.0, clip=True))
  assert clipped.clipped > 0


@pytest.mark.parametrize("loss,d_out", [("ce", 3), ("mse", 2)])
def test_eprop_emulation_without_quirks_matches_fixed_convention(loss, d_out):
  """The emulated e-prop flavour with every quirk switched off is the fixed convention.

  Switched off: no clipping (Q7), bias gradient not doubled (Q12), κ = 1 (Q14), and the step
  weights of the fixed objective as the emulation's mask. What stays is the documented 1/B of the
  authors' targets (Q13): their ĝ predicts the per-example gradient of the batch-mean loss, the
  fixed ĝ the per-example gradient of the per-example loss. So the emulation runs with θ/B, and
  its synthesiser gradient, learning signals and TD error norms are 1/B of the fixed ones; the
  network and readout gradients are equal. (ce's hand derivative is its exact gradient, and mse's
  is for D_out = 2.)
  """
  kw = dict(gamma=0.9, lambda_=0.6, sg_scale=0.7)
  model, params, batch = _make("lstm", loss, d_out, 5, 7, 0.5, flavour="eprop")
  rule = bp_lambda(model, flavour="eprop", faithful=False, clip_increments=False, **kw)
  got, aux = _jit(rule.grads)(params, batch)
  scaled = dict(params, synth=dict(params["synth"], train=jax.tree.map(
      lambda a: a / B, params["synth"]["train"])))
  hp = _hp(kw, bias_scale=1.0, clip=False)
  grads, ls, synth = emulate_lstm_eprop(scaled, batch._replace(mask=step_weights(batch.mask)),
                                        loss, hp)
  assert rel_err(got["cell"], {k: jnp.asarray(grads[k]) for k in params["cell"]}) < TOL
  assert rel_err(got["readout"], {"w": jnp.asarray(grads["readout_w"]),
                                  "b": jnp.asarray(grads["readout_b"])}) < TOL
  assert rel_err(got["synth"]["train"], {"w": B * jnp.asarray(synth.grad_w),
                                         "b": B * jnp.asarray(synth.grad_b)}) < TOL
  ls_full = np.concatenate([ls, np.zeros_like(ls)], -1)
  assert rel_err(aux["learning_signal"], B * jnp.asarray(ls_full)) < TOL
  assert rel_err(aux["td_error_norm"], B * jnp.asarray(synth.td_norms)) < TOL
  # Not a tautology: the faithful rule (its quirks on) differs from the fixed one here.
  faithful, _ = _jit(bp_lambda(model, flavour="eprop", faithful=True, **kw).grads)(params, batch)
  assert rel_err(faithful["cell"], got["cell"]) > 1e-3
