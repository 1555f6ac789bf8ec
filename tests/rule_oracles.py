"""Independent oracles for every rule of the registry (used by the rule sweep and the float32 lane).

Each oracle is written from the rule's definition (docs/concepts.md) with Python loops over time,
``jax.grad``/``jax.vjp``/``jax.jacfwd`` of explicitly unrolled networks and the cell's ``step`` (or
``split_step``, for the implicit/explicit split of m-order e-prop); none uses a rule, a
sensitivity or ``bplambda_jax.oracles``. All take the model, the parameters, the batch and the
rule's options, and return what ``rule.grads`` returns first (descent directions).

* exact rules (BPTT; RTRL; SnAp-2 on a dense RNN, whose pattern is full; columnar RTRL on
  independent columns): ``jax.grad`` of the unrolled objective;
* m-order e-prop (e-prop is m = 0): mean_b Σ_t ℓ_t·Σ_{j≤m} Z⁽ʲ⁾_t with Z⁽⁰⁾_t = D_t·Z⁽⁰⁾_{t−1} + Ī_t,
  Z⁽ʲ⁾_t = D_t·Z⁽ʲ⁾_{t−1} + X_t·Z⁽ʲ⁻¹⁾_{t−1} from ``jax.jacfwd`` of ``split_step``;
* truncated BPTT and n-step DNI: the chunk-by-chunk oracles of tests/test_tbptt_dni.py;
* BP(λ) at λ = γ = 1 without clipping: the regression identities of docs/concepts.md, the state
  flavour's onto the future gradient G_t − ℓ_t (by a vjp through added state perturbations), the
  e-prop flavour's onto the cell-state-path gradient C_k (a hand-written LSTM whose later output
  gates are constants), each with its learning signal and its sensitivity's credit.
"""

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from bplambda_jax.model import step_weights


# ----------------------------------------------------------------------------- shared pieces


def _states(model, cp, x, e=None):
  """s_0..s_{T−1} of a batch by a Python loop, [T, B, n]; e [T, B, n] is added to each state."""
  step = jax.vmap(model.cell.step, in_axes=(None, 0, 0))
  s = jnp.zeros((x.shape[1], model.cell.state_size), x.dtype)
  out = []
  for t in range(x.shape[0]):
    s = step(cp, s, x[t]) + (0.0 if e is None else e[t])
    out.append(s)
  return jnp.stack(out)


def _objective(model, params, batch, e=None):
  """L = mean_b Σ_t w_{t,b}·loss_{t,b} by the loop above."""
  s = _states(model, params["cell"], batch.x, e)
  per = jax.vmap(jax.vmap(lambda st, y: model.loss.value(model.readout(params, st), y)))(s, batch.y)
  return jnp.sum(step_weights(batch.mask).astype(s.dtype) * per) / batch.x.shape[1]


def _net(params):
  return {"cell": params["cell"], "readout": params["readout"]}


def _with_synth(params, net_grads, synth_grads):
  return dict(net_grads, synth={"train": synth_grads,
                                "frozen": jax.tree.map(jnp.zeros_like, params["synth"]["frozen"])})


def _immediate(model, params, batch, states):
  """ℓ_t = ∂(w_t·loss_t)/∂s_t per example (no 1/B), [T, B, n]."""
  w = step_weights(batch.mask).astype(states.dtype)
  g = jax.grad(lambda s, y, wt: wt * model.loss.value(model.readout(params, s), y))
  return jax.vmap(jax.vmap(g))(states, batch.y, w)


def exact(model, params, batch, **_):
  """BPTT, RTRL, SnAp-2 on a dense RNN, columnar RTRL on independent columns."""
  return jax.grad(lambda net: _objective(model, net, batch))(_net(params))


def _readout(model, params, batch):
  return exact(model, params, batch)["readout"]


# ------------------------------------------------------------------------------ m-order e-prop


def eprop_m(model, params, batch, m=0, **_):
  """mean_b Σ_t ℓ_t·Σ_{j≤m} Z⁽ʲ⁾_t with D, X and Ī from jax.jacfwd of split_step."""
  cell, cp = model.cell, params["cell"]
  flat0, unravel = ravel_pytree(cp)
  states = _states(model, cp, batch.x)
  ell = _immediate(model, params, batch, states)
  s_prev = jnp.concatenate([jnp.zeros_like(states[:1]), states[:-1]])

  def pieces(s, x):  # D_t, X_t [n, n] and Ī_t [n, P] at (s_{t−1}, x_t)
    d = jax.jacfwd(cell.split_step, argnums=1)(cp, s, s, x)
    xx = jax.jacfwd(cell.split_step, argnums=2)(cp, s, s, x)
    return d, xx, jax.jacfwd(lambda f: cell.step(unravel(f), s, x))(flat0)

  def one(s_prev_b, x_b, ell_b):  # one example: Σ_t ℓ_t·Σ_j Z⁽ʲ⁾_t, [P]
    z = [jnp.zeros((cell.state_size, flat0.size), flat0.dtype)] * (m + 1)
    total = jnp.zeros_like(flat0)
    for t in range(x_b.shape[0]):
      d, xx, ibar = pieces(s_prev_b[t], x_b[t])
      z = [d @ z[0] + ibar] + [d @ z[j] + xx @ z[j - 1] for j in range(1, m + 1)]
      total = total + ell_b[t] @ sum(z)
    return total

  per = jax.vmap(one, in_axes=(1, 1, 1))(s_prev, batch.x, ell)
  return {"cell": unravel(jnp.mean(per, 0)), "readout": _readout(model, params, batch)}


# --------------------------------------------------------------------------- truncated rules


def tbptt(model, params, batch, n, **_):
  from test_tbptt_dni import _tbptt_oracle  # pylint: disable=import-outside-toplevel
  return _tbptt_oracle(model, params, batch, n)[0]


def dni(model, params, batch, n, synthesiser, sg_scale=1.0, **_):
  from test_tbptt_dni import _dni_oracle  # pylint: disable=import-outside-toplevel
  net, synth, _ = _dni_oracle(model, synthesiser, params, batch, n, sg_scale)
  return _with_synth(params, net, synth)


# ------------------------------------------------------------------ BP(λ), state flavour, λ = γ = 1


def bp_lambda_state(model, params, batch, synthesiser, sg_scale=1.0, **_):
  """Synthesiser: ∇ ½·mean_b Σ_{k<T−1} ‖ĝ(s_k) − (G_k − ℓ_k)‖²; cell: immediate credit of
  ls_t = ℓ_t + sg·ĝ(s_t) (ĝ(s_{T−1}) ≡ 0)."""
  cell, cp, theta = model.cell, params["cell"], params["synth"]["train"]
  frozen = params["synth"]["frozen"]
  T, B = batch.x.shape[:2]
  states = _states(model, cp, batch.x)
  zeros = jnp.zeros_like(states)
  total = jax.grad(lambda e: _objective(model, params, batch, e))(zeros) * B  # dL_b/ds_t
  ell = _immediate(model, params, batch, states)
  future = jax.lax.stop_gradient(total - ell)
  g_of = lambda th, s: jax.vmap(jax.vmap(lambda z: synthesiser.apply(
      {"train": th, "frozen": frozen}, z)))(s)

  def regression(th):
    return 0.5 * jnp.sum((g_of(th, states[:-1]) - future[:-1]) ** 2) / B

  ghat = g_of(theta, states).at[-1].set(0.0)
  ls = ell + sg_scale * ghat
  s_prev = jnp.concatenate([jnp.zeros_like(states[:1]), states[:-1]])

  def surrogate(q):  # Σ_t ls_t·∂s_t/∂Ψ at fixed s_{t−1}, batch mean
    s = jax.vmap(jax.vmap(cell.step, in_axes=(None, 0, 0)), in_axes=(None, 0, 0))(q, s_prev,
                                                                                 batch.x)
    return jnp.sum(jax.lax.stop_gradient(ls) * s) / B

  net = {"cell": jax.grad(surrogate)(cp), "readout": _readout(model, params, batch)}
  return _with_synth(params, net, jax.grad(regression)(theta))


# ---------------------------------------------------------------- BP(λ), e-prop flavour, λ = γ = 1


def lstm_gates(cp, h, x):
  """(i, f, g, o) of an LSTM at (h_{t−1}, x_t); rows of W in the order i, f, g, o."""
  z = cp["w_ih"] @ x + cp["w_hh"] @ h + cp["b"]
  zi, zf, zg, zo = jnp.split(z, 4)
  return jax.nn.sigmoid(zi), jax.nn.sigmoid(zf), jnp.tanh(zg), jax.nn.sigmoid(zo)


def lstm_trajectory(cp, x):
  """h_t, c_t, o_t for t = 0..T−1 of one example (x [T, D_in]), each [T, H]."""
  H = cp["w_hh"].shape[1]
  h = c = jnp.zeros(H, x.dtype)
  hs, cs, os_ = [], [], []
  for t in range(x.shape[0]):
    i, f, g, o = lstm_gates(cp, h, x[t])
    c = f * c + i * g
    h = o * jnp.tanh(c)
    hs.append(h)
    cs.append(c)
    os_.append(o)
  return jnp.stack(hs), jnp.stack(cs), jnp.stack(os_)


def c_path_targets(model, params, x, y, w):
  """C_k = ∂L_{≥k}/∂c_k along the cell-state path (later output gates held fixed), [T, H]."""
  cp = params["cell"]
  _, cs, os_ = lstm_trajectory(cp, x)
  loss = lambda h, t: w[t] * model.loss.value(model.readout(params, h), y[t])
  out = []
  for k in range(x.shape[0]):
    def tail(c_k, k=k):
      h = os_[k] * jnp.tanh(c_k)
      total = loss(h, k)
      c = c_k
      for m in range(k + 1, x.shape[0]):
        i, f, g, _ = lstm_gates(cp, h, x[m])
        c = f * c + i * g
        h = os_[m] * jnp.tanh(c)  # o_m as a constant: no path through a later output gate
        total = total + loss(h, m)
      return total

    out.append(jax.vjp(tail, cs[k])[1](jnp.ones((), x.dtype))[0])
  return jnp.stack(out)


def _eprop_flavour_signals(model, params, synthesiser, x, y, w, sg):
  """ls_t (h part) = ℓ_t + sg·ĝ(s_t)·∂c_{t+1}/∂h_t, and ls_{T−1} = ℓ_{T−1}; [T, H]."""
  cp = params["cell"]
  hs, cs, _ = lstm_trajectory(cp, x)
  out = []
  for t in range(x.shape[0]):
    ell = jax.grad(lambda h: w[t] * model.loss.value(model.readout(params, h), y[t]))(hs[t])
    if t < x.shape[0] - 1:
      ghat = synthesiser.apply(params["synth"], jnp.concatenate([hs[t], cs[t]]))
      c_next = lambda h: (lambda i, f, g, o: f * cs[t] + i * g)(*lstm_gates(cp, h, x[t + 1]))
      ell = ell + sg * jax.vjp(c_next, hs[t])[1](ghat)[0]
    out.append(ell)
  return jnp.stack(out)


def lstm_unrolled_hidden(cp, x, traj, which):
  """h_0..h_{T−1} as functions of the cell parameters, [T, H].

  which: 'rtrl' (the real network), 'eprop' (h_{t−1} in the gates a constant; c carried) or
  'immediate' (h_{t−1} and c_{t−1} both constants); ``traj`` holds the constants.
  """
  hs, cs, _ = traj
  H = cp["w_hh"].shape[1]
  h = c = jnp.zeros(H, x.dtype)
  out = []
  for t in range(x.shape[0]):
    h_in = h if which == "rtrl" else (hs[t - 1] if t else jnp.zeros(H, x.dtype))
    c_in = c if which != "immediate" else (cs[t - 1] if t else jnp.zeros(H, x.dtype))
    i, f, g, o = lstm_gates(cp, h_in, x[t])
    c = f * c_in + i * g
    h = o * jnp.tanh(c)
    out.append(h)
  return jnp.stack(out)


def bp_lambda_eprop_parts(model, params, batch, synthesiser, sensitivity="eprop", sg_scale=1.0):
  """(synthesiser gradient, learning signals [T, B, 2H], cell gradient, readout gradient) of the
  e-prop flavour at λ = γ = 1 in the fixed convention (docs/concepts.md)."""
  cp, frozen = params["cell"], params["synth"]["frozen"]
  w = step_weights(batch.mask).astype(batch.x.dtype)
  xs, ys, ws = (jnp.moveaxis(a, 1, 0) for a in (batch.x, batch.y, w))  # example-major

  C = jax.vmap(lambda x, y, wt: c_path_targets(model, params, x, y, wt))(xs, ys, ws)  # [B,T,H]
  traj = jax.vmap(lambda x: lstm_trajectory(cp, x))(xs)
  s = jnp.concatenate([traj[0], traj[1]], -1)  # [B, T, 2H]
  s_prev = jnp.concatenate([jnp.zeros_like(s[:, :1]), s[:, :-1]], 1)  # s_{k−1}, s_{−1} = 0

  def regression(theta):
    g = jax.vmap(jax.vmap(lambda z: synthesiser.apply({"train": theta, "frozen": frozen}, z)))(
        s_prev)
    return 0.5 * jnp.mean(jnp.sum((g - jax.lax.stop_gradient(C)) ** 2, axis=(1, 2)))

  synth_grad = jax.grad(regression)(params["synth"]["train"])
  ls = jax.vmap(lambda x, y, wt: _eprop_flavour_signals(model, params, synthesiser, x, y, wt,
                                                        sg_scale))(xs, ys, ws)

  def credit(x, l, traj):
    return jax.vjp(lambda q: lstm_unrolled_hidden(q, x, traj, sensitivity), cp)[1](l)[0]

  cell_grad = jax.tree.map(lambda a: jnp.mean(a, 0), jax.vmap(credit)(xs, ls, traj))
  ls_t = jnp.moveaxis(ls, 0, 1)
  ls_full = jnp.concatenate([ls_t, jnp.zeros_like(ls_t)], -1)
  return synth_grad, ls_full, cell_grad, _readout(model, params, batch)


def bp_lambda_eprop(model, params, batch, synthesiser, sensitivity="eprop", sg_scale=1.0, **_):
  synth, _, cell, readout = bp_lambda_eprop_parts(model, params, batch, synthesiser,
                                                  sensitivity, sg_scale)
  return _with_synth(params, {"cell": cell, "readout": readout}, synth)
