"""Truncated BPTT and n-step DNI against independent float64 oracles.

The oracles below use Python loops over chunks and steps (allowed in tests only) and ``jax.grad``
of explicitly built chunk objectives, so they share no code with the scanned implementations.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bplambda_jax import bp_lambda, bptt, dni, linear_synthesiser, make_model, mlp_synthesiser
from bplambda_jax import tbptt
from bplambda_jax.model import Batch, step_weights

from helpers import randomize, random_batch, rel_err, to_f32

pytestmark = pytest.mark.x64  # float64 oracles

TOL = 1e-9
D_IN, D_OUT, B = 3, 2, 3
CELLS = ["linear", "tanh", "lstm", "gru"]


T7 = 7  # most tests use T = 7 so that compiled functions are shared between them


@functools.lru_cache(maxsize=None)
def _model(cell):
  return make_model(cell, "mse", D_IN, D_OUT, hidden_size=4)


@functools.lru_cache(maxsize=None)
def _rule(kind, cell, *args, **kw):
  """A rule built once per configuration (its jitted grads are reused across tests)."""
  model = _model(cell)
  if kind == "bptt":
    rule = bptt(model)
  elif kind == "tbptt":
    rule = tbptt(model, *args)
  elif kind == "dni":
    synth = mlp_synthesiser(1, 5) if kw.pop("synth", "linear") == "mlp" else linear_synthesiser()
    rule = dni(model, synth, *args, **kw)
  else:
    rule = bp_lambda(model, **kw)
  return rule, jax.jit(rule.grads)


def _grads(kind, cell, *args, params, batch, hparams=None, **kw):
  return _rule(kind, cell, *args, **kw)[1](params, batch, hparams)


def _setup(cell, key, T=T7):
  k1, k2 = jax.random.split(key)
  model = _model(cell)
  params = model.init(k1)
  batch = random_batch(k2, T, B, D_IN, D_OUT)
  return model, params, batch


def _chunk_bounds(T, n):
  """End-aligned chunk boundaries, written independently of the library: [(a, b), ...]."""
  bounds, b = [], T
  while b > 0:
    a = max(b - n, 0)
    bounds.append((a, b))
    b = a
  return bounds[::-1]


def _chunk_objective(model, net, s_start, batch, w, a, b, e, loss_weights=None):
  """Σ_{t∈[a,b)} c_t·mean_b w_{t,b}·loss_{t,b} from s_start, with perturbations e [b−a, B, S].

  Returns (objective, s_end). c_t = 1 unless ``loss_weights`` (length b−a) is given.
  """
  s = s_start
  obj = 0.0
  step_b = jax.vmap(model.cell.step, in_axes=(None, 0, 0))
  loss_b = jax.vmap(model.loss.value)
  for j, t in enumerate(range(a, b)):
    s = step_b(net["cell"], s, batch.x[t]) + e[j]
    out = model.readout(net, s)
    c = 1.0 if loss_weights is None else loss_weights[j]
    obj = obj + c * jnp.sum(w[t] * loss_b(out, batch.y[t])) / batch.x.shape[1]
  return obj, s


@functools.lru_cache(maxsize=None)
def _jit_tbptt_oracle(cell, n):
  return jax.jit(lambda p, b: _tbptt_oracle(_model(cell), p, b, n))


def _tbptt_oracle(model, params, batch, n):
  """Explicit chunks, jax.grad per chunk with stop_gradient at the chunk start."""
  T, Bsz = batch.x.shape[:2]
  S = model.cell.state_size
  w = step_weights(batch.mask)
  net = {"cell": params["cell"], "readout": params["readout"]}
  total = jax.tree.map(jnp.zeros_like, net)
  s = jnp.zeros((Bsz, S), batch.x.dtype)
  ls, loss = [], 0.0
  for a, b in _chunk_bounds(T, n):
    s_start = jax.lax.stop_gradient(s)
    e = jnp.zeros((b - a, Bsz, S), batch.x.dtype)
    f = lambda p, e_: _chunk_objective(model, p, s_start, batch, w, a, b, e_)
    (obj, s), (g, g_e) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(net, e)
    total = jax.tree.map(jnp.add, total, g)
    ls.append(g_e * Bsz)
    loss = loss + obj
  return total, jnp.concatenate(ls), loss


def _dni_oracle(model, synth, params, batch, n, sg_scale, gamma=None):
  """DNI by hand: per chunk, jax.grad of the chunk loss + ⟨stop_grad(sg·ĝ(s_end))/B, s_end⟩.

  gamma=None is the faithful target (same objective); otherwise the target comes from the
  γ-discounted objective Σ_j γ^{j−1}·L_{a+j} + γ^{b−a}·⟨ĝ(s_end)/B, s_end⟩.
  """
  T, Bsz = batch.x.shape[:2]
  S = model.cell.state_size
  w = step_weights(batch.mask)
  net = {"cell": params["cell"], "readout": params["readout"]}
  theta, frozen = params["synth"]["train"], params["synth"]["frozen"]
  g_hat = lambda th, s: jax.vmap(lambda z: synth.apply({"train": th, "frozen": frozen}, z))(s)
  total = jax.tree.map(jnp.zeros_like, net)
  synth_total = jax.tree.map(jnp.zeros_like, theta)
  s = jnp.zeros((Bsz, S), batch.x.dtype)
  bounds = _chunk_bounds(T, n)
  ls = []
  for c, (a, b) in enumerate(bounds):
    s_start = jax.lax.stop_gradient(s)
    e = jnp.zeros((b - a, Bsz, S), batch.x.dtype)
    last = c == len(bounds) - 1
    _, s_end = _chunk_objective(model, net, s_start, batch, w, a, b, e)
    g_end = jnp.zeros_like(s_end) if last else jax.lax.stop_gradient(g_hat(theta, s_end))

    def obj(p, s0, e_, scale, loss_weights=None):
      o, s_e = _chunk_objective(model, p, s0, batch, w, a, b, e_, loss_weights)
      return o + scale * jnp.sum(g_end * s_e) / Bsz

    g, g_s0, g_e = jax.grad(obj, argnums=(0, 1, 2))(net, s_start, e, sg_scale)
    total = jax.tree.map(jnp.add, total, g)
    ls.append(g_e * Bsz)
    if gamma is None:
      target = g_s0 * Bsz
    else:
      disc = [gamma ** j for j in range(b - a)]
      target = jax.grad(obj, argnums=1)(net, s_start, e, gamma ** (b - a), disc) * Bsz
    if c > 0:
      target = jax.lax.stop_gradient(target)
      f = lambda th: 0.5 * jnp.mean(jnp.sum((g_hat(th, s_start) - target) ** 2, axis=-1))
      synth_total = jax.tree.map(jnp.add, synth_total, jax.grad(f)(theta))
    s = s_end
  return total, synth_total, jnp.concatenate(ls)


# ---------------------------------------------------------------------------------- chunking


@pytest.mark.parametrize("T,n,first", [(7, 3, 1), (6, 3, 3), (3, 5, 3)])
def test_chunks_end_aligned(T, n, first):
  """Chunks are aligned to the sequence end: the first holds T mod n steps (n when that is 0, T
  when n > T), every later one n; nothing is padded. grads equals the python-loop oracle over
  those chunks, and a loop over the chunk-level step with them gives the same numbers, every step
  keeping its own input, target and weight (no Q15 misalignment)."""
  bounds = _chunk_bounds(T, n)
  assert bounds[0] == (0, first) and all(b - a == n for a, b in bounds[1:])
  assert bounds[-1][1] == T and len(bounds) == -(-T // n)
  _, params, batch = _setup("tanh", jax.random.key(T), T=T)
  rule, grads = _rule("tbptt", "tanh", n)
  g, aux = grads(params, batch)
  g_ref, ls_ref, loss_ref = _jit_tbptt_oracle("tanh", n)(params, batch)
  assert rel_err(g, g_ref) < TOL
  assert rel_err(aux["learning_signal"], ls_ref) < TOL
  assert abs(float(aux["loss"] - loss_ref)) < TOL * float(loss_ref)
  assert rule.chunk == n
  w = step_weights(batch.mask)
  step = jax.jit(rule.step, static_argnames="last")
  state = rule.init_state(params, B)
  acc, ls, loss = None, [], 0.0
  for a, b in bounds:
    g_c, state, m = step(params, state, batch.x[a:b], batch.y[a:b], w[a:b], last=b == T)
    acc = g_c if acc is None else jax.tree.map(jnp.add, acc, g_c)
    ls.append(m["learning_signal"])
    loss = loss + m["loss"]
  assert rel_err(acc, g_ref) < TOL
  assert rel_err(jnp.concatenate(ls), ls_ref) < TOL
  assert abs(float(loss - loss_ref)) < TOL * float(loss_ref)
  assert int(state.t) == len(bounds)


# -------------------------------------------------------------------------------------- TBPTT


@pytest.mark.parametrize("cell,n", [("linear", T7), ("tanh", T7 + 2), ("lstm", T7), ("gru", T7 + 1)])
def test_tbptt_full_length_equals_bptt(cell, n):
  """n = T: one chunk; n > T: one chunk of T steps (no padding). Both are full BPTT."""
  _, params, batch = _setup(cell, jax.random.key(1))
  g_ref, aux_ref = _grads("bptt", cell, params=params, batch=batch)
  g, aux = _grads("tbptt", cell, n, params=params, batch=batch)
  assert rel_err(g, g_ref) < TOL
  assert rel_err(aux["learning_signal"], aux_ref["learning_signal"]) < TOL
  assert abs(float(aux["loss"] - aux_ref["loss"])) < TOL * float(aux_ref["loss"])


@pytest.mark.parametrize("cell,n", [("tanh", 2), ("lstm", 3), ("gru", 1)])
def test_tbptt_matches_python_loop_oracle(cell, n):
  """T = 7, n ∤ T (first chunk 1 step) and n = 1 (spec §11.4: each loss through its step only)."""
  _, params, batch = _setup(cell, jax.random.key(2 + n))
  g, aux = _grads("tbptt", cell, n, params=params, batch=batch)
  g_ref, ls_ref, loss_ref = _jit_tbptt_oracle(cell, n)(params, batch)
  assert rel_err(g, g_ref) < TOL
  assert rel_err(aux["learning_signal"], ls_ref) < TOL
  # The chunk losses add up to the model's objective L.
  assert abs(float(aux["loss"] - loss_ref)) < TOL * float(loss_ref)
  # n < T truncates: the recurrent gradient differs from BPTT (the oracle is not BPTT in disguise).
  g_full, _ = _grads("bptt", cell, params=params, batch=batch)
  assert rel_err(g["cell"], g_full["cell"]) > 1e-3
  assert rel_err(g["readout"], g_full["readout"]) < TOL  # the readout gradient is never truncated


def test_tbptt_float32():
  """A float32 run agrees with the float64 oracle to float32 precision."""
  _, params, batch = _setup("lstm", jax.random.key(3))
  g_ref, _, _ = _jit_tbptt_oracle("lstm", 3)(params, batch)
  b32 = Batch(batch.x.astype(jnp.float32), batch.y.astype(jnp.float32),
              batch.mask.astype(jnp.float32))
  g32, _ = _grads("tbptt", "lstm", 3, params=to_f32(params), batch=b32)
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(g32))
  assert rel_err(jax.tree.map(lambda a: a.astype(jnp.float64), g32), g_ref) < 1e-4


def test_tbptt_targets_stay_on_their_steps():
  """T mod n ≠ 0 with a single per-step target: its signal lives only in its own chunk (Q15)."""
  n, t0 = 3, 3  # T = 7: chunks [0], [1, 2, 3], [4, 5, 6]
  model, params, batch = _setup("lstm", jax.random.key(4))
  batch = batch._replace(mask=jnp.zeros((T7, B)).at[t0].set(1.0))
  _, aux = _grads("tbptt", "lstm", n, params=params, batch=batch)
  norms = np.asarray(jnp.linalg.norm(aux["learning_signal"], axis=-1))  # [T, B]
  assert np.all(norms[[0, 4, 5, 6]] == 0.0)
  assert np.all(norms[[1, 2, 3]] > 1e-6)
  # Within t0's chunk the signal is the BPTT one (at t0 itself the immediate loss gradient).
  _, aux_full = _grads("bptt", "lstm", params=params, batch=batch)
  np.testing.assert_allclose(aux["learning_signal"][1:4], aux_full["learning_signal"][1:4],
                             rtol=TOL, atol=1e-14)
  # The loss of the single target step is counted once, with its own target.
  states = jax.vmap(lambda xs: _states(model, params, xs), 1, 1)(batch.x)  # [T, B, S]
  out = model.readout(params, states[t0])
  expected = jnp.mean(jax.vmap(model.loss.value)(out, batch.y[t0]))
  assert abs(float(aux["loss"] - expected)) < TOL * float(expected)


def _states(model, params, xs):
  s = model.cell.initial_state(xs.dtype)
  out = []
  for x in xs:
    s = model.cell.step(params["cell"], s, x)
    out.append(s)
  return jnp.stack(out)


def test_tbptt_eager_synth_passthrough_and_errors():
  model, params, batch = _setup("gru", jax.random.key(5))
  rule = tbptt(model, 1)
  params_s = dict(params, synth=linear_synthesiser().init(jax.random.key(0), 4, 4))
  g_s, _ = rule.grads(params_s, batch)  # eager (not jitted), with an extra 'synth' entry
  g_jit, _ = _grads("tbptt", "gru", 1, params=params, batch=batch)
  assert set(g_s) == {"cell", "readout", "synth"}
  assert rel_err({"cell": g_s["cell"], "readout": g_s["readout"]}, g_jit) < TOL
  assert float(jnp.sum(jnp.abs(g_s["synth"]["train"]["w"]))) == 0.0
  for bad in (0, -1, 2.5, True, "3"):
    with pytest.raises(ValueError, match="truncation length"):
      tbptt(model, bad)
  with pytest.raises(ValueError, match="unknown hyper-parameters"):
    rule.grads(params, batch, {"gamma": 0.5})


# ---------------------------------------------------------------------------------------- DNI


def _with_random_synth(rule, params, key, scale=0.3):
  p = dict(params)
  p["synth"] = randomize(rule.init(jax.random.key(0))["synth"], key, scale)
  return p


@pytest.mark.parametrize("cell,n", [("lstm", 3), ("gru", 1)])
def test_dni_zero_synthesiser_equals_tbptt(cell, n):
  _, params, batch = _setup(cell, jax.random.key(6 + n))
  rule, _ = _rule("dni", cell, n, sg_scale=0.7)
  p = dict(params, synth=rule.init(jax.random.key(0))["synth"])  # zero-initialised ĝ
  g, aux = _grads("dni", cell, n, sg_scale=0.7, params=p, batch=batch)
  g_ref, aux_ref = _grads("tbptt", cell, n, params=params, batch=batch)
  assert rel_err(g["cell"], g_ref["cell"]) < TOL
  assert rel_err(g["readout"], g_ref["readout"]) < TOL
  assert rel_err(aux["learning_signal"], aux_ref["learning_signal"]) < TOL
  assert abs(float(aux["loss"] - aux_ref["loss"])) < TOL * float(aux_ref["loss"])
  # ĝ = 0 is still regressed onto the true chunk gradient: a non-zero synthesiser gradient.
  assert float(jnp.linalg.norm(g["synth"]["train"]["w"])) > 1e-6


@pytest.mark.parametrize("cell,bootstrap,synth", [("linear", "faithful", "linear"),
                                                  ("lstm", "gamma", "mlp")])
def test_dni_matches_python_loop_oracle(cell, bootstrap, synth):
  n, sg = 3, 0.6
  model, params, batch = _setup(cell, jax.random.key(7))
  kw = {"gamma": 0.8} if bootstrap == "gamma" else {}
  rule, grads = _rule("dni", cell, n, bootstrap=bootstrap, sg_scale=sg, synth=synth, **kw)
  p = _with_random_synth(rule, params, jax.random.key(8))
  g, aux = grads(p, batch)
  synthesiser = mlp_synthesiser(1, 5) if synth == "mlp" else linear_synthesiser()
  oracle = jax.jit(lambda q, b: _dni_oracle(model, synthesiser, q, b, n, sg, kw.get("gamma")))
  g_net, g_synth, ls = oracle(p, batch)
  assert rel_err({"cell": g["cell"], "readout": g["readout"]}, g_net) < TOL
  assert rel_err(g["synth"]["train"], g_synth) < TOL
  assert rel_err(aux["learning_signal"], ls) < TOL
  # The injected ĝ changes the cell gradient relative to plain truncation.
  g_tb, _ = _grads("tbptt", cell, n, params=params, batch=batch)
  assert rel_err(g["cell"], g_tb["cell"]) > 1e-4
  assert aux["synth_error_norm"].shape == (3,) and float(aux["synth_error_norm"][0]) == 0.0
  assert float(aux["synth_error_norm"][1]) > 0.0


@pytest.mark.parametrize("T,bootstrap", [(4, "faithful"), (5, "faithful"), (5, "gamma")])
def test_dni_synthesiser_target_by_hand(T, bootstrap):
  """Linear RNN, n = 2, linear ĝ: G from explicit matrix products (spec §6.3)."""
  n, H, sg, gamma = 2, 3, 0.7, 0.6
  model = make_model("linear", "mse", D_IN, D_OUT, hidden_size=H)
  key = jax.random.key(9 + T)
  batch = random_batch(key, T, 2, D_IN, D_OUT, mask_prob=0.7)
  kw = {"gamma": gamma} if bootstrap == "gamma" else {}
  rule = dni(model, n=n, bootstrap=bootstrap, sg_scale=sg, **kw)
  params = rule.init(jax.random.key(10))
  params["synth"] = randomize(params["synth"], jax.random.key(11), 0.5)
  g, _ = rule.grads(params, batch)

  # numpy, by hand
  P = jax.tree.map(np.asarray, params)
  x, y = np.asarray(batch.x), np.asarray(batch.y)
  w = np.asarray(step_weights(batch.mask))
  W_ih, W_hh, b = P["cell"]["w_ih"], P["cell"]["w_hh"], P["cell"]["b"]
  W_o, b_o = P["readout"]["w"], P["readout"]["b"]
  W_s, beta = P["synth"]["train"]["w"], P["synth"]["train"]["b"]
  Bn = x.shape[1]
  s = np.zeros((T, Bn, H))
  prev = np.zeros((Bn, H))
  for t in range(T):
    prev = prev @ W_hh.T + x[t] @ W_ih.T + b
    s[t] = prev
  # ℓ_t = ∂(w_t·mean_k (W_o s + b_o − y)_k²)/∂s_t, per example (row vectors)
  ell = np.stack([(w[t][:, None] * 2.0 / D_OUT * (s[t] @ W_o.T + b_o - y[t])) @ W_o
                  for t in range(T)])
  g_hat = lambda z: z @ W_s.T + beta
  J = W_hh  # ∂s_t/∂s_{t−1}
  if T == 4:  # chunks [0, 1], [2, 3]; only the second (final) chunk trains ĝ, at s_1
    starts = [(1, ell[2] @ J + ell[3] @ J @ J * (gamma if bootstrap == "gamma" else 1.0))]
  else:  # chunks [0], [1, 2], [3, 4]
    c = gamma if bootstrap == "gamma" else 1.0
    boot = gamma ** 2 if bootstrap == "gamma" else sg
    starts = [(0, ell[1] @ J + c * ell[2] @ J @ J + boot * g_hat(s[2]) @ J @ J),
              (2, ell[3] @ J + c * ell[4] @ J @ J)]
  dW, db = np.zeros_like(W_s), np.zeros_like(beta)
  for t_start, G in starts:
    err = g_hat(s[t_start]) - G  # [B, H]
    dW += err.T @ s[t_start] / Bn  # gradient of mean_b ½‖ĝ − G‖²
    db += err.mean(axis=0)
  np.testing.assert_allclose(g["synth"]["train"]["w"], dW, rtol=TOL, atol=1e-13)
  np.testing.assert_allclose(g["synth"]["train"]["b"], db, rtol=TOL, atol=1e-13)
  assert np.linalg.norm(dW) > 1e-3


def test_dni_one_step_is_bp_lambda_zero():
  """n = 1 with the γ bootstrap is BP(λ = 0) (spec §11.2) for every parameter group."""
  gamma, sg = 0.7, 0.4
  _, params, batch = _setup("lstm", jax.random.key(12))
  r_bpl, bpl = _rule("bp_lambda", "lstm", lambda_=0.0, mode="sequence", flavour="state")
  p = _with_random_synth(r_bpl, params, jax.random.key(13))
  hp = {"lambda_": 0.0, "gamma": gamma, "sg_scale": sg}
  g1, a1 = _grads("dni", "lstm", 1, bootstrap="gamma", params=p, batch=batch,
                  hparams={"gamma": gamma, "sg_scale": sg})
  g2, a2 = bpl(p, batch, hp)
  assert rel_err(g1, g2) < TOL
  assert rel_err(a1["learning_signal"], a2["learning_signal"]) < TOL
  # The faithful bootstrap with sg_scale = γ gives the same numbers.
  g3, _ = _grads("dni", "lstm", 1, params=p, batch=batch, hparams={"sg_scale": gamma})
  g4, _ = bpl(p, batch, dict(hp, sg_scale=gamma))
  assert rel_err(g3, g4) < TOL


def test_dni_hparams_vmap_and_errors():
  model, params, batch = _setup("lstm", jax.random.key(14))
  rule, grads = _rule("dni", "lstm", 1)
  p = _with_random_synth(rule, params, jax.random.key(15))
  # a jax.vmap sweep over sg_scale equals separate calls (hyper-parameters are not baked in)
  sweep = jax.vmap(lambda sg: rule.grads(p, batch, {"sg_scale": sg})[0])(jnp.array([0.3, 1.0]))
  for i, sg in enumerate((0.3, 1.0)):
    assert rel_err(jax.tree.map(lambda a: a[i], sweep), grads(p, batch, {"sg_scale": sg})[0]) < TOL
  assert rule.init(jax.random.key(0))["synth"]["train"]["w"].shape == (8, 8)  # [h; c], H = 4
  with pytest.raises(ValueError, match="no 'synth'"):
    rule.grads(params, batch)
  with pytest.raises(ValueError, match="bootstrap"):
    dni(model, n=2, bootstrap="lambda")
  with pytest.raises(ValueError, match="gamma is used only"):
    dni(model, n=2, gamma=0.9)
  with pytest.raises(ValueError, match="gamma"):
    dni(model, n=2, bootstrap="gamma", gamma=1.5)
  with pytest.raises(ValueError, match="sg_scale"):
    dni(model, n=2, sg_scale=-1.0)
  with pytest.raises(ValueError, match="unknown hyper-parameters"):
    rule.grads(p, batch, {"gamma": 0.5})
  with pytest.raises(ValueError, match="truncation length"):
    dni(model, n=0)
