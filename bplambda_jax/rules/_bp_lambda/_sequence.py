"""BP(λ)'s sequence mode: the summed online update by one reverse recursion.

With θ fixed within the sequence, Σ_τ δ_τ·E_τ = Σ_k w_k·∂ĝ(z_k)/∂θ with

    w_{N−1} = 0,     w_k = δ_{k+1} + γλ·w_{k+1}·M_{k+1}

(:func:`bplambda_jax.internals.reverse_recurrence`), so the whole update is one vjp of ĝ over every
(k, b) and the recursion needs only the flavour's link: the same numbers as the online mode at
about the cost of one BPTT pass. With a structured trace (M diagonal or unit-blocked) M's blocks
are prepared for every (k, b) in parallel and the link is a product with them, not a vjp. The
network's credit uses the sensitivity's reverse form.

Tested by tests/test_bp_lambda.py (online against sequence, every flavour and trace form) and
tests/test_structured_traces.py.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from bplambda_jax import credit
from bplambda_jax.credit import _reverse
from bplambda_jax.credit._synth_traces import _structured
from bplambda_jax.model import objective
from bplambda_jax.rules import _base as base
from bplambda_jax.rules._bp_lambda._flavours import eprop_q
from bplambda_jax.rules._bp_lambda._online import (Config, TDInputs, network_grads,
                                                   readout_factor)
from bplambda_jax.rules._bp_lambda._trace_forms import synth_apply
from bplambda_jax.rules._signals import hidden_signal, output_grads, pad_state, readout_grads


def _tb(f):
  """f mapped over [T, B]."""
  return jax.vmap(jax.vmap(f))


class _Forward(NamedTuple):
  """The network's forward pass over a batch of sequences."""

  s0: jax.Array  # s_{−1}, [B, n]
  states: jax.Array  # s_t, [T, B, n]
  s_prev: jax.Array  # s_{t−1}, [T, B, n]
  ell_h: jax.Array  # ℓ_t with respect to h_t, [T, B, H]


def make_sequence(cfg: Config):
  """``sequence_grads(params, batch, hp, weights, w) -> (grads, aux)``."""
  model, cell = cfg.model, cfg.model.cell
  n = cell.state_size
  step_b = jax.vmap(cell.step, in_axes=(None, 0, 0))
  td_inputs = _eprop_inputs if cfg.flavour == "eprop" else _state_inputs

  def sequence_grads(params, batch, hp, weights, w):
    """``weights`` [T, B]: the per-step loss weights the online step would get; ``w``: the
    objective's weights (for the reported loss)."""
    cp, frozen = params["cell"], params["synth"]["frozen"]
    B = batch.x.shape[1]
    s0 = model.initial_states(params, B)
    states = jax.lax.scan(lambda s, x: (step_b(cp, s, x),) * 2, s0, batch.x)[1]  # [T, B, n]
    dy, loss = jax.vmap(functools.partial(output_grads, model, params, faithful=cfg.faithful))(
        states, batch.y, weights)
    fwd = _Forward(s0, states, _reverse.previous_states(states, s0), hidden_signal(params, dy))
    inp, v = td_inputs(cfg, cp, fwd, batch.x)  # the TD steps' inputs, [N, B, ...]
    p, qg, delta, synth_grad = _synthesiser(cfg, hp, cp, params["synth"], inp)
    if v is not None:  # the learning signal for s_t
      ls = v + hp["sg_scale"] * p
    else:  # ℓ_t + sg·ĝ_{t+1}·∂c_{t+1}/∂h_t
      ls = pad_state(fwd.ell_h + hp["sg_scale"] * qg[1:], n)
    if cfg.hc:
      _, hc_vjp = jax.vjp(lambda q: _tb(functools.partial(cfg.hc.local, q))(fwd.s_prev, batch.x),
                          cp)
      cell_sum = hc_vjp(ls)[0]
    else:
      cell_sum = _reverse.sequence_credit(cfg.sens, cell.step, cp, ls, states, batch.x, s0)
    flat = lambda a: a.reshape((-1,) + a.shape[2:])
    grads = {
        "cell": network_grads(cfg, cell_sum, B),
        "readout": readout_grads(flat(dy), flat(cell.hidden(states)), readout_factor(cfg, B)),
        "synth": {"train": synth_grad, "frozen": base.zeros_like_tree(frozen)},
    }
    aux = {"loss": objective(w, loss), "learning_signal": ls,
           "td_error_norm": jnp.mean(jnp.linalg.norm(delta, axis=-1), axis=1)}
    return grads, aux

  return sequence_grads


def _state_inputs(cfg: Config, cp, fwd: _Forward, x):
  """The state flavour's TD steps τ = t (N = T): z_τ = s_τ, u_τ = v_τ·J_τ; and v (ℓ in state
  space, or the authors' [ℓ, ℓ⊙D])."""
  T = x.shape[0]
  ctx = (fwd.s_prev, x)
  if cfg.hc:
    v = _tb(functools.partial(cfg.hc.vector, cp))(ctx, fwd.ell_h)
  else:
    v = pad_state(fwd.ell_h, cfg.model.cell.state_size)
  final = (jnp.arange(T) == T - 1).astype(x.dtype)
  return TDInputs(fwd.states, ctx, _tb(functools.partial(cfg.link, cp))(ctx, v), None, final), v


def _eprop_inputs(cfg: Config, cp, fwd: _Forward, x):
  """The e-prop flavour's TD steps τ = 0..T (N = T + 1): z_τ = s_{τ−1}, u_τ = ℓ_{τ−1}⊙D_{τ−1}
  (the learning signal comes from ĝ, so no v)."""
  cell, T = cfg.model.cell, x.shape[0]
  # π_t, f_t, o_t once for all (t, b), without recomputing the forward pass.
  pi, f, o = _tb(functools.partial(cell.lstm.c_partials, cp))(fwd.s_prev, x)
  d = cell.lstm.output_derivative(o, fwd.states[..., cell.hidden_size:])  # D_t, [T, B, H]
  d_prev = jnp.concatenate([jnp.zeros_like(d[:1]), d[:-1]])  # D_{t−1}
  ctx = jax.tree.map(lambda a: jnp.concatenate([a, a[-1:]]), (pi, f, d_prev))  # any ctx at τ = T
  z = jnp.concatenate([fwd.s_prev, fwd.states[-1:]])  # z_τ = s_{τ−1}, τ = 0..T
  ell_prev = jnp.concatenate([jnp.zeros_like(fwd.ell_h[:1]), fwd.ell_h])  # ℓ_{τ−1}
  u = ell_prev * jnp.concatenate([d_prev, d[-1:]])
  final = (jnp.arange(T + 1) == T).astype(x.dtype)
  return TDInputs(z, ctx, u, None, final), None


def _synthesiser(cfg: Config, hp, cp, synth, inp: TDInputs):
  """(p, q, δ, descent direction of θ): ĝ_τ [N, B, d_out] (0 at the final step), in the e-prop
  flavour q = ĝ_τ·∂c_τ/∂h_{τ−1} [N, B, H] (else None), δ_τ [N, B, d_out] (δ_0 := 0) and
  −(1/B)·Σ_k w_k·∂ĝ(z_k)/∂θ from the reverse recursion."""
  gamma, lam = hp["gamma"], hp["lambda_"]
  dtype, B = inp.final.dtype, inp.u.shape[1]
  if cfg.structure is not None:  # M_τ's blocks for every (τ, b), [N, B, k, k, U]
    layout = cfg.structure.layout
    blocks = lambda c: _structured.unit_blocks(functools.partial(cfg.link, cp, c), layout,
                                               cfg.d_out, dtype)
    ctx_m = _tb(blocks)(inp.ctx)
    link_m = functools.partial(_apply_blocks, layout=layout)
  else:
    ctx_m, link_m = inp.ctx, functools.partial(cfg.link, cp)
  apply_all = lambda th: _tb(functools.partial(synth_apply, cfg.synthesiser, th, synth["frozen"]))(
      inp.z)
  p, synth_vjp = jax.vjp(apply_all, synth["train"])
  p = p * (1.0 - inp.final)[:, None, None]  # [N, B, d_out]
  qg = None
  if cfg.flavour == "state":
    r = inp.u + gamma * jax.vmap(jax.vmap(link_m))(ctx_m, p)
  else:  # link = (ĝ·∂c/∂h)⊙D_{τ−1} + ĝ⊙f; its first factor is also the learning signal's
    qg = _tb(functools.partial(eprop_q(cfg.model.cell), cp))(inp.ctx, p)  # [N, B, H]
    r = inp.u + gamma * (qg * inp.ctx[2] + p * inp.ctx[1])
  delta = jnp.concatenate([jnp.zeros_like(r[:1]), r[1:] - p[:-1]])  # δ_0 := 0
  # w_k = δ_{k+1} + γλ·w_{k+1}·M_{k+1}, w_{N−1} = 0: one scan over time whose link maps the
  # batch (time-major operands, no transposes).
  x_k = jnp.concatenate([delta[1:], jnp.zeros_like(delta[:1])])
  ctx_next = jax.tree.map(lambda a: a[1:], ctx_m)
  w_all = _reverse.reverse_recurrence(x_k, jax.vmap(link_m), ctx_next, gamma * lam)
  return p, qg, delta, jax.tree.map(lambda g: -g / B, synth_vjp(w_all)[0])


def _apply_blocks(blocks, v, *, layout):
  return _structured.apply_blocks(blocks, v, layout)
