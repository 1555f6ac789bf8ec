"""BP(λ)'s online mode: the per-step TD(λ) engine (``init_state`` and ``step``).

One TD step τ on a batch, with ĝ's input z_τ, its context ctx_τ and the "reward" u_τ:

    p_τ = ĝ_θ(z_τ)·(1 − final)                    δ_τ = (u_τ + γ·p_τ·M_τ − g_{τ−1})·(1 − first)
    E_τ = γλ·M_{τ−1}·E_{τ−1} + ∂ĝ(z_{τ−1})/∂θ     inc_τ = mean_b δ_τ·E_τ        (ascent)

and ĝ emitted at τ is g_τ = p_τ (or ĝ at the θ updated by the step's own SGD, ``synth_sgd``; the
order of the authors' per-step learning, quirk Q29). The step returns −inc_τ as the synthesiser's
descent direction. For a linear ĝ the trace is structured when M is diagonal or unit-blocked
(M's blocks in ``m``, the trace [B, S, U, P]; :mod:`bplambda_jax.credit`), else chunked (chunk
L); it is dense ([B, d_out, *θ], the fused trace-step kernel) for a non-linear ĝ or on request
(the rule's ``trace`` argument).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from bplambda_jax import credit
from bplambda_jax.rules import _base as base
from bplambda_jax.rules._bp_lambda._flavours import HC, eprop_q, transition
from bplambda_jax.rules._from_sensitivity import check_batch_size, param_dtype
from bplambda_jax.rules._signals import (hidden_signal, output_grads, pad_state, readout_grads,
                                         weighted_loss)

BIAS_NAMES = ("b", "b_ih", "b_hh", "bias")


class TDState(NamedTuple):
  """The synthesiser's TD(λ) state between two TD steps.

  Attributes:
    z: ĝ's input at the previous TD step, z_{τ−1}, [B, d_in].
    g: ĝ emitted at the previous TD step, [B, d_out].
    m: M_{τ−1}: its link context, leaves [B, ...] (chunked trace), its blocks [B, k, k, U]
      (structured trace) or the matrix [B, d_out, d_out] (dense trace).
    trace: the eligibility trace: a :class:`~bplambda_jax.credit.ChunkedTrace`, the stored
      block pairs [B, S, U, P] of a structured trace (a diagonal one is [B, 1, d_out, P]:
      e[o, j] = E[o, o, j]; P = d_in + 1 with β, padded to whole kernel tiles on GPU/TPU), or
      leaves [B, d_out, *θ_leaf] (dense).
  """

  z: jax.Array
  g: jax.Array
  m: Any
  trace: Any


class EpropLag(NamedTuple):
  """What the e-prop flavour's one-step-late credit needs from the previous step.

  Attributes:
    s: s_{t−2}, [B, n].
    x: x_{t−1}, [B, D_in].
    ell: ℓ_{t−1}, the immediate gradient with respect to h_{t−1}, [B, H].
    d: D_{t−1} = ∂h_{t−1}/∂c_{t−1} at fixed o_{t−1}, [B, H].
  """

  s: jax.Array
  x: jax.Array
  ell: jax.Array
  d: jax.Array


class BPLambdaState(NamedTuple):
  """BP(λ)'s state between two steps.

  Attributes:
    s: s_{t−1}, the recurrent state, [B, n].
    sens: Z_{t−1}, the network's sensitivity traces (leaves [B, ...]).
    td: the synthesiser's :class:`TDState`.
    lag: :class:`EpropLag` in the e-prop flavour, None in the state flavour.
    t: steps taken, shape=(), int32.
  """

  s: jax.Array
  sens: Any
  td: TDState
  lag: Optional[EpropLag]
  t: jax.Array


class Config(NamedTuple):
  """The static choices of one BP(λ) rule (built by :func:`bplambda_jax.bp_lambda`)."""

  model: Any
  synthesiser: Any
  flavour: str
  d_in: int
  d_out: int
  link: Callable
  hc: Optional[HC]
  sens: Any
  faithful: bool
  clip: bool
  readout_scale: float
  bias_grad_scale: float
  chunk: int
  structure: Optional[credit.TraceStructure]  # the structured trace's, or None
  trace_dtype: Any
  defaults: Any  # the rule's default hyper-parameters (λ, γ, sg_scale)


def scale_biases(g, factor):
  """The gradient with every bias leaf (keys b, b_ih, b_hh, bias) times ``factor``."""
  if factor == 1.0:
    return g

  def one(path, leaf):
    key = path[-1]
    name = getattr(key, "key", getattr(key, "name", None))
    return leaf * factor if name in BIAS_NAMES else leaf

  return jax.tree_util.tree_map_with_path(one, g)


def make_online(cfg: Config):
  """(init_state, step) of the online mode."""
  model = cfg.model
  cell = model.cell
  H, n = cell.hidden_size, cell.state_size
  sens = cfg.sens
  step_b = jax.vmap(cell.step, in_axes=(None, 0, 0))
  link_b = jax.vmap(cfg.link, in_axes=(None, 0, 0))
  update_b = jax.vmap(sens.update, in_axes=(None, 0, 0, 0))
  eprop = cfg.flavour == "eprop"
  if eprop:
    partials_b = jax.vmap(cell.lstm.c_partials, in_axes=(None, 0, 0))
    q_b = jax.vmap(eprop_q(cell), in_axes=(None, 0, 0))

  def synth_apply(theta, frozen, z):
    return cfg.synthesiser.apply({"train": theta, "frozen": frozen}, z)

  apply_b = jax.vmap(synth_apply, in_axes=(None, None, 0))
  struct = cfg.structure
  if struct is not None:
    layout = struct.layout

    def blocks_b(cp, ctx, dtype):  # M_τ's blocks from k links per example, [B, k, k, U]
      return jax.vmap(lambda c_: credit.unit_blocks(lambda v: cfg.link(cp, c_, v), layout,
                                                     cfg.d_out, dtype))(ctx)

    def pattern_of(cp, dtype):
      return struct.pattern(cp, jax.ShapeDtypeStruct((model.input_size,), dtype))

  def ctx_zeros(cp, B, dtype):
    s = jnp.zeros((B, n), dtype)
    x = jnp.zeros((B, model.input_size), dtype)
    if not eprop:
      return (s, x)
    zH = jnp.zeros((B, H), dtype)
    return (jnp.zeros((B, 3, H), dtype), zH, zH)

  def init_state(params, batch_size, steps: Optional[int] = None):
    """The state before the first step; ``steps`` (the TD steps of a sequence, if known) lets
    the chunked trace skip its dense part when the whole sequence fits in one chunk."""
    B = check_batch_size(batch_size)
    cp, theta = params["cell"], params["synth"]["train"]
    dtype = param_dtype(params)
    tdt = cfg.trace_dtype or jnp.result_type(*jax.tree.leaves(theta))
    if struct is not None:
      pattern = pattern_of(cp, dtype)
      m0 = jnp.zeros((B, pattern.k, pattern.k, layout.units), dtype)
      trace0 = credit.structured_init(B, pattern, layout.units, cfg.d_in + ("b" in theta), tdt)
    elif cfg.chunk:
      m0 = ctx_zeros(cp, B, dtype)
      trace0 = credit.chunked_init(m0, cfg.d_out, cfg.d_in, bias="b" in theta, chunk=cfg.chunk,
                                   steps=steps, dtype=tdt)
    else:
      m0 = jnp.zeros((B, cfg.d_out, cfg.d_out), dtype)
      trace0 = jax.tree.map(lambda t_: jnp.zeros((B, cfg.d_out) + t_.shape, tdt), theta)
    td0 = TDState(jnp.zeros((B, cfg.d_in), dtype), jnp.zeros((B, cfg.d_out), dtype), m0, trace0)
    sens0 = jax.vmap(lambda _: sens.init(cp))(jnp.arange(B))
    if cfg.trace_dtype is not None:
      sens0 = jax.tree.map(lambda z: z.astype(cfg.trace_dtype), sens0)
    s0 = model.initial_states(params, B)
    lag = None
    if eprop:
      zH = jnp.zeros((B, H), dtype)
      lag = EpropLag(s0, jnp.zeros((B, model.input_size), dtype), zH, zH)
    return BPLambdaState(s0, sens0, td0, lag, jnp.zeros((), jnp.int32))

  def td_step(hp, cp, theta, frozen, td, z, ctx, u, first, final, synth_sgd):
    """One TD step (module docstring): (td, θ after the step's SGD, inc, g_τ, ‖δ‖)."""
    gamma, lam = hp["gamma"], hp["lambda_"]
    keep = 1.0 - final
    p = apply_b(theta, frozen, z) * keep  # [B, d_out]
    if struct is not None:  # M_τ's blocks: p·M_τ without a vjp, and the next step's M_{τ−1}
      blocks = blocks_b(cp, ctx, z.dtype)
      p_m = credit.apply_blocks(blocks, p, layout)
    else:
      p_m = link_b(cp, ctx, p)
    delta = (u + gamma * p_m - td.g) * (1.0 - first)  # [B, d_out]
    keep_trace = 1.0 - first  # nothing is traced at the first step
    c = gamma * lam * keep_trace
    if cfg.chunk or struct is not None:  # linear ĝ = W z + β: ∂ĝ_o/∂W_ij = 1[o = i]·z_j
      a = td.z * keep_trace  # [B, d_in], β as a column of ones
      if "b" in theta:
        a = jnp.concatenate([a, jnp.broadcast_to(keep_trace, a.shape[:1] + (1,)).astype(a.dtype)],
                            axis=1)
      if struct is not None:
        trace, inc_wb = credit.structured_step(td.trace, td.m, a, delta, c,
                                               pattern_of(cp, z.dtype), layout)
      else:
        trace, inc_wb = credit.chunked_step(td.trace, td.m, a, delta, c,
                                            lambda m, v: link_b(cp, m, v))
      inc = {"w": inc_wb[:, :cfg.d_in]}
      if "b" in theta:
        inc["b"] = inc_wb[:, cfg.d_in]
    elif cfg.synthesiser.linear:
      trace, inc = credit.linear_trace_step(td.trace, td.m, td.z, delta, c, g_scale=keep_trace)
    else:
      dgdth = jax.vmap(jax.jacrev(synth_apply), in_axes=(None, None, 0))(theta, frozen, td.z)
      trace, inc = credit.trace_step_tree(td.trace, td.m,
                                          jax.tree.map(lambda g: g * keep_trace, dgdth), delta, c)
    trace = jax.tree.map(lambda new, old: new.astype(old.dtype), trace, td.trace)
    inc = jax.tree.map(lambda d, t_: d.astype(t_.dtype), inc, theta)
    if cfg.clip:  # quirk Q7: per tensor, per step
      inc = jax.tree.map(lambda d: d / jnp.maximum(1.0, jnp.linalg.norm(d.ravel())), inc)
    g = p
    if synth_sgd is not None:  # quirk Q29: ĝ emitted with the θ the step's own SGD produced
      theta = jax.tree.map(lambda t_, d: t_ + synth_sgd * d, theta, inc)
      g = apply_b(theta, frozen, z) * keep
    if struct is not None:
      m = blocks
    elif cfg.chunk:
      m = ctx  # the chunked trace keeps contexts, not matrices
    else:
      m = jax.vmap(lambda c_: transition(cfg.link, cp, c_, cfg.d_out, z.dtype))(ctx)
    return TDState(z, g, m, trace), theta, inc, g, jnp.mean(jnp.linalg.norm(delta, axis=-1))

  def net_grads(cell_sum, B):
    g = cell_sum if cfg.faithful else jax.tree.map(lambda a: a / B, cell_sum)
    return scale_biases(g, cfg.bias_grad_scale)

  def readout(dy, s, B):
    return readout_grads(dy, cell.hidden(s), cfg.readout_scale if cfg.faithful else 1.0 / B)

  def step(params, state, x_t, y_t, mask_t, hparams=None, *, last=False, synth_sgd=None):
    """One step of BP(λ) (see :func:`bplambda_jax.bp_lambda`).

    Args:
      params: {'cell', 'readout', 'synth'}.
      state: a :class:`BPLambdaState`.
      x_t: inputs, [B, D_in].
      y_t: targets, [B, D_out] or int [B].
      mask_t: the step's loss weight per example, [B].
      hparams: hyper-parameter overrides (λ, γ, sg_scale), scalars.
      last: True at the final step of a sequence (a bool, possibly traced).
      synth_sgd: the rate α of per-step SGD on θ that the caller applies after the step
        (θ ← θ − α·grads_t['synth']['train']); the step emits ĝ with that updated θ, the order
        of the authors' per-step synthesiser learning (quirk Q29). None: no per-step update.

    Returns:
      (grads_t, state, metrics_t): descent directions like params; metrics 'loss' (the step's
      weighted loss), 'example_loss' [B], 'learning_signal' [B, n] (for s_t; the e-prop flavour's
      is for s_{t−1}, one step late), 'td_error_norm' (mean over the batch of ‖δ‖), and in the
      e-prop flavour 'final_td_error_norm' (the extra TD step at a sequence's end; 0 otherwise).
    """
    dtype = x_t.dtype
    hp = base.merge_hparams(cfg.defaults, hparams, CHECKS, dtype)
    base.check_step_inputs(model, x_t, y_t, mask_t, state.s.shape[0])
    base.check_last(last)
    if synth_sgd is not None:
      base.check_nonnegative("synth_sgd", synth_sgd)
    cp, theta, frozen = params["cell"], params["synth"]["train"], params["synth"]["frozen"]
    B = x_t.shape[0]
    first = (state.t == 0).astype(dtype)
    s_tm1 = state.s
    s = step_b(cp, s_tm1, x_t).astype(s_tm1.dtype)
    dy, loss = output_grads(model, params, s, y_t, mask_t, faithful=cfg.faithful)
    ell_h = hidden_signal(params, dy)  # [B, H]
    sg = hp["sg_scale"]
    if not eprop:
      sens_t = update_b(cp, state.sens, s_tm1, x_t)
      ctx = (s_tm1, x_t)
      v = jax.vmap(cfg.hc.vector, in_axes=(None, 0, 0))(cp, ctx, ell_h) if cfg.hc else pad_state(
          ell_h, n)
      final = jnp.asarray(last, dtype)
      td, theta, inc, g, dnorm = td_step(hp, cp, theta, frozen, state.td, s, ctx,
                                         link_b(cp, ctx, v), first, final, synth_sgd)
      ls = v + sg * g
      if cfg.hc:
        cell_sum = credit.sum_leading(
            jax.vmap(cfg.hc.credit, in_axes=(None, 0, 0, 0))(cp, s_tm1, x_t, ls))
      else:
        cell_sum = credit.batch_credit(sens, cp, sens_t, s_tm1, x_t, ls)
      new = BPLambdaState(s, sens_t, td, None, state.t + 1)
      synth_inc = inc
      metrics = {"td_error_norm": dnorm}
    else:
      lag = state.lag
      pi, f, o = partials_b(cp, s_tm1, x_t)
      ctx = (pi, f, lag.d)
      td, theta, inc, g, dnorm = td_step(hp, cp, theta, frozen, state.td, s_tm1, ctx,
                                         lag.ell * lag.d, first, jnp.zeros((), dtype), synth_sgd)
      ls = pad_state(lag.ell + sg * q_b(cp, ctx, g), n)  # the signal for s_{t−1}
      cell_sum = credit.batch_credit(sens, cp, state.sens, lag.s, lag.x, ls)
      cell_sum = jax.tree.map(lambda a: a * (1.0 - first), cell_sum)
      sens_t = update_b(cp, state.sens, s_tm1, x_t)
      d = cell.lstm.output_derivative(o, s[:, H:])
      new = BPLambdaState(s, sens_t, td, EpropLag(s_tm1, x_t, ell_h, d), state.t + 1)

      def flush(args):  # the final TD step τ = T: ĝ ≡ 0, δ = ℓ_{T−1}⊙D_{T−1} − g_{T−1}
        td_, theta_ = args
        td_, _, inc_f, _, dnorm_f = td_step(hp, cp, theta_, frozen, td_, s, (pi, f, d),
                                            ell_h * d, jnp.zeros((), dtype),
                                            jnp.ones((), dtype), synth_sgd)
        credit_f = credit.batch_credit(sens, cp, sens_t, s_tm1, x_t, pad_state(ell_h, n))
        return td_, inc_f, credit_f, dnorm_f

      def no_flush(args):
        td_, _ = args
        return (td_, base.zeros_like_tree(inc), base.zeros_like_tree(cell_sum),
                jnp.zeros((), dnorm.dtype))

      if isinstance(last, (bool,)) or not isinstance(last, jax.core.Tracer):
        td_f, inc_f, credit_f, dnorm_f = (flush if bool(last) else no_flush)((new.td, theta))
      else:
        td_f, inc_f, credit_f, dnorm_f = jax.lax.cond(last, flush, no_flush, (new.td, theta))
      new = new._replace(td=td_f)
      cell_sum = base.add_trees(cell_sum, credit_f)
      synth_inc = base.add_trees(inc, inc_f)
      metrics = {"td_error_norm": dnorm, "final_td_error_norm": dnorm_f}
    new = jax.tree.map(lambda a, b: a.astype(b.dtype), new, state)
    grads = {
        "cell": jax.tree.map(lambda a, p_: a.astype(p_.dtype), net_grads(cell_sum, B), cp),
        "readout": readout(dy, s, B),
        "synth": {"train": jax.tree.map(jnp.negative, synth_inc),
                  "frozen": base.zeros_like_tree(frozen)},
    }
    metrics.update(loss=weighted_loss(loss, mask_t), example_loss=loss, learning_signal=ls)
    return grads, new, metrics

  return init_state, step


CHECKS = {"lambda_": base.check_unit_interval, "gamma": base.check_unit_interval,
          "sg_scale": base.check_nonnegative}
