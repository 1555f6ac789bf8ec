"""BP(λ)'s sequence mode: the summed online update by one reverse recursion.

With θ fixed within the sequence, Σ_τ δ_τ·E_τ = Σ_k w_k·∂ĝ(z_k)/∂θ with

    w_{N−1} = 0,     w_k = δ_{k+1} + γλ·w_{k+1}·M_{k+1}

(:func:`bplambda_jax.credit.reverse_recurrence`), so the whole update is one vjp of ĝ over every
(k, b) and the recursion needs only the flavour's link: the same numbers as the online mode at
about the cost of one BPTT pass. With a structured trace (M diagonal or unit-blocked) M's blocks
are prepared for every (k, b) in parallel and the link is a product with them, not a vjp. The
network's credit uses the sensitivity's reverse form.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bplambda_jax import credit
from bplambda_jax.model import objective
from bplambda_jax.rules import _base as base
from bplambda_jax.rules._bp_lambda._flavours import eprop_q
from bplambda_jax.rules._bp_lambda._online import Config, scale_biases
from bplambda_jax.rules._signals import hidden_signal, output_grads, pad_state, readout_grads


def make_sequence(cfg: Config):
  """``sequence_grads(params, batch, hp, weights, w) -> (grads, aux)``."""
  model = cfg.model
  cell = model.cell
  H, n = cell.hidden_size, cell.state_size
  eprop = cfg.flavour == "eprop"
  tb = lambda f: jax.vmap(jax.vmap(f))  # map over [T, B]
  step_b = jax.vmap(cell.step, in_axes=(None, 0, 0))

  def sequence_grads(params, batch, hp, weights, w):
    """``weights`` [T, B]: the per-step loss weights the online step would get; ``w``: the
    objective's weights (for the reported loss)."""
    cp, theta, frozen = params["cell"], params["synth"]["train"], params["synth"]["frozen"]
    T, B = batch.x.shape[:2]
    dtype = batch.x.dtype
    gamma, lam, sg = hp["gamma"], hp["lambda_"], hp["sg_scale"]
    s0 = model.initial_states(params, B)
    states = jax.lax.scan(lambda s, x: (step_b(cp, s, x),) * 2, s0, batch.x)[1]  # [T, B, n]
    s_prev = credit.previous_states(states, s0)  # s_{t−1}
    dy, loss = jax.vmap(lambda s, y, m: output_grads(model, params, s, y, m,
                                                     faithful=cfg.faithful))(
                                                         states, batch.y, weights)
    ell_h = hidden_signal(params, dy)  # [T, B, H]
    link_tb = tb(lambda c, v: cfg.link(cp, c, v))

    if not eprop:
      ctx = (s_prev, batch.x)
      v = tb(lambda c, e: cfg.hc.vector(cp, c, e))(ctx, ell_h) if cfg.hc else pad_state(ell_h, n)
      z = states
      u = link_tb(ctx, v)
      final = (jnp.arange(T) == T - 1).astype(dtype)
    else:
      # π_t, f_t, o_t once for all (t, b), without recomputing the forward pass.
      pi, f, o = tb(lambda s, x: cell.lstm.c_partials(cp, s, x))(s_prev, batch.x)
      d = cell.lstm.output_derivative(o, states[..., H:])  # D_t, [T, B, H]
      d_prev = jnp.concatenate([jnp.zeros_like(d[:1]), d[:-1]])  # D_{t−1}
      ctx = (pi, f, d_prev)
      ctx = jax.tree.map(lambda a: jnp.concatenate([a, a[-1:]]), ctx)  # any ctx at τ = T
      z = jnp.concatenate([s_prev, states[-1:]])  # z_τ = s_{τ−1}, τ = 0..T
      ell_prev = jnp.concatenate([jnp.zeros_like(ell_h[:1]), ell_h])  # ℓ_{τ−1}
      u = ell_prev * jnp.concatenate([d_prev, d[-1:]])
      final = (jnp.arange(T + 1) == T).astype(dtype)

    if cfg.structure is not None:  # M_τ's blocks for every (τ, b), [N, B, k, k, U]
      layout = cfg.structure.layout
      ctx_m = tb(lambda c: credit.unit_blocks(lambda v: cfg.link(cp, c, v), layout, cfg.d_out,
                                              dtype))(ctx)
      link_m = lambda blk, v: credit.apply_blocks(blk, v, layout)
    else:
      ctx_m, link_m = ctx, lambda c, v: cfg.link(cp, c, v)
    apply_all = lambda th: tb(lambda zz: cfg.synthesiser.apply({"train": th, "frozen": frozen},
                                                               zz))(z)
    p, synth_vjp = jax.vjp(apply_all, theta)
    p = p * (1.0 - final)[:, None, None]  # [N, B, d_out]
    if not eprop:
      r = u + gamma * jax.vmap(jax.vmap(link_m))(ctx_m, p)
    else:  # link = (ĝ·∂c/∂h)⊙D_{τ−1} + ĝ⊙f; its first factor is also the learning signal's
      qg = tb(lambda c, v: eprop_q(cell)(cp, c, v))(ctx, p)  # ĝ_τ·∂c_τ/∂h_{τ−1}, [N, B, H]
      r = u + gamma * (qg * ctx[2] + p * ctx[1])
    delta = jnp.concatenate([jnp.zeros_like(r[:1]), r[1:] - p[:-1]])  # δ_0 := 0
    # w_k = δ_{k+1} + γλ·w_{k+1}·M_{k+1}, w_{N−1} = 0: one scan over time whose link maps the
    # batch (time-major operands, no transposes).
    x_k = jnp.concatenate([delta[1:], jnp.zeros_like(delta[:1])])
    ctx_next = jax.tree.map(lambda a: a[1:], ctx_m)
    w_all = credit.reverse_recurrence(x_k, jax.vmap(link_m), ctx_next, gamma * lam)
    synth_grad = jax.tree.map(lambda g: -g / B, synth_vjp(w_all)[0])

    ls = v + sg * p if not eprop else pad_state(ell_h + sg * qg[1:], n)  # ĝ_{t+1}·∂c_{t+1}/∂h_t
    if cfg.hc:
      _, hc_vjp = jax.vjp(lambda q: tb(lambda s, x: cfg.hc.local(q, s, x))(s_prev, batch.x), cp)
      cell_sum = hc_vjp(ls)[0]
    else:
      cell_sum = credit.sequence_credit(cfg.sens, cell.step, cp, ls, states, batch.x, s0)
    net = cell_sum if cfg.faithful else jax.tree.map(lambda g: g / B, cell_sum)
    flat = lambda a: a.reshape((-1,) + a.shape[2:])
    grads = {
        "cell": scale_biases(net, cfg.bias_grad_scale),
        "readout": readout_grads(flat(dy), flat(cell.hidden(states)),
                                 cfg.readout_scale if cfg.faithful else 1.0 / B),
        "synth": {"train": synth_grad, "frozen": base.zeros_like_tree(frozen)},
    }
    aux = {"loss": objective(w, loss), "learning_signal": ls,
           "td_error_norm": jnp.mean(jnp.linalg.norm(delta, axis=-1), axis=1)}
    return grads, aux

  return sequence_grads
