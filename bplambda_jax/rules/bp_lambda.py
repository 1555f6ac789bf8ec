"""Accumulate BP(λ) (Pemberton & Costa, TMLR 2024): synthetic gradients learned by TD(λ).

A synthesiser ĝ(z; θ) predicts the future loss gradient with respect to a recurrent state. It is a
TD problem with vector-valued values, "rewards" u and transitions M (spec §4):

    δ_τ = u_τ + γ·ĝ(z_τ)·M_τ − ĝ(z_{τ−1})                  (ĝ ≡ 0 at the final step)
    E_τ = γλ·M_{τ−1}·E_{τ−1} + ∂ĝ(z_{τ−1})/∂θ               (E per example, [d_out, *θ])
    θ  += α·δ_τ·E_τ                                          (ascent; summed or applied per step)

and the recurrent network learns from the signal ls = ℓ + sg_scale·ĝ contracted with a
sensitivity (immediate, e-prop, RTRL, ...; see :mod:`bplambda_jax.sensitivity`).

Flavours (what ĝ predicts):

* ``'state'`` (any cell): z_τ = s_τ, ĝ(s_τ) ≈ Σ_{τ'>τ} γ^{τ'−τ−1} ∂L_{τ'}/∂s_τ, u_τ = ℓ_τ·J_τ,
  M_τ = J_τ = ∂s_τ/∂s_{τ−1}. For the vanilla RNN this is spec §5.1; for the LSTM (s = [h; c]) it
  is the [h, c] flavour of spec §5.3 in the consistent Markov convention. With ``faithful=True``
  the LSTM uses the reference's Jacobian J^{hc} and total-c vectors instead (quirk Q1).
* ``'eprop'`` (LSTM only, spec §5.4): z_τ = s_{τ−1}, ĝ(s_{τ−1}) ≈ ∂L_{≥τ}/∂c_τ (ignoring paths
  through later output gates, Q2), u_τ = ℓ_{τ−1}⊙D_{τ−1}, M_τ = K_τ = ∂c_τ/∂c_{τ−1} through
  h_{τ−1} = o_{τ−1}⊙tanh(c_{τ−1}); the learning signal for h_{τ−1} is ℓ_{τ−1} + sg·ĝ·∂c_τ/∂h_{τ−1},
  one step late, and the default sensitivity is e-prop.

Modes:

* ``'online'``: the algorithm as published, traces carried in the ``lax.scan`` state; memory
  independent of T, exact per-step increments. The dense trace costs O(B·d_out²·|θ|) per step;
  a linear synthesiser uses the chunked trace of :mod:`bplambda_jax.traces` by default,
  O(B·d_out·|θ|) per step plus one link per chunk slot (``trace_chunk``).
* ``'sequence'``: with θ fixed within the sequence, Σ_τ δ_τ·E_τ = Σ_k w_k·∂ĝ(z_k)/∂θ with the
  reverse recursion w_k = δ_{k+1} + γλ·w_{k+1}·M_{k+1}: the same numbers at about the cost of one
  BPTT pass, using only vector–Jacobian products. Per-step clipping or per-step synthesiser updates
  break the identity, so asking for them in this mode is an error.

Faithful vs fixed (``faithful=True`` reproduces the reference, spec §10; each switch below):

=========================  ==========================================  ===========================
switch                     faithful (reference)                        fixed (default)
=========================  ==========================================  ===========================
output derivative (Q13)    hand derivative / B; network and readout    exact gradient of the
                           summed over the batch, so ĝ carries 1/B     per-example loss; batch
                                                                       mean; ĝ per example
readout scale (Q14)        κ·Σ dy⊗h with κ = ``readout_scale``         exact readout gradient
[h,c] Jacobian (Q1)        J^{hc} with total-c vectors                 Markov Jacobian of (h, c)
per-step clipping (Q7)     ‖Δ_p‖ > 1 → Δ_p/‖Δ_p‖ per tensor per step   off
LSTM bias gradient (Q12)   doubled                                     not doubled
=========================  ==========================================  ===========================
"""

from __future__ import annotations

import functools
import logging
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from bplambda_jax import cells as cells_lib
from bplambda_jax import kernels
from bplambda_jax import model as model_lib
from bplambda_jax import sensitivity as sens_lib
from bplambda_jax import synthesisers as synth_lib
from bplambda_jax import traces as traces_lib
from bplambda_jax.rules import base

logger = logging.getLogger("bplambda_jax")

FLAVOURS = ("state", "eprop")
MODES = ("online", "sequence")


class _Flavour(NamedTuple):
  """Per-example pieces of one flavour (all pure, vmappable over time and batch).

  ctx is a per-step pytree of arrays; ``link(cp, ctx, v) = v·M`` for v in ĝ's output space and
  ``transition(cp, ctx) = M`` [d_out, d_out] (None: built from d_out links of the unit rows).
  """

  d_in: int
  d_out: int
  link: Any
  transition: Any = None


def _lstm_only(cell, what):
  if cell.name != "lstm":
    raise ValueError(f"{what} is defined for the library LSTM cell (cells.lstm) only; got cell "
                     f"{cell.name!r}.")


def _lstm_c(cell, cp, h, c, x):
  """c_t as a function of (h_{t−1}, c_{t−1}), [H]."""
  H = cell.hidden_size
  return cell.step(cp, jnp.concatenate([h, c]), x)[H:]


def _lstm_c_partials(cell, cp, s_tm1, x):
  """(π [3, H], f_t [H]) with π_q = ∂c_t/∂z^q for the pre-activations of gates q = i, f, g.

  Then v·∂c_t/∂h_{t−1} = Σ_q (v⊙π_q)·W_hh^q and v·∂c_t/∂c_{t−1} = v⊙f_t: the e-prop flavour's
  maps as one [3H]·[3H, H] product, with no forward recomputation inside reverse scans.
  """
  H = cell.hidden_size
  i, f, g, _ = cells_lib.lstm_gates(cp, x, s_tm1[:H], H)
  return _lstm_pi(i, f, g, s_tm1[H:]), f


def _lstm_pi(i, f, g, c_tm1):
  """π [..., 3, H] = ∂c_t/∂(z^i, z^f, z^g) from the gate activations and c_{t−1} ([..., H] each)."""
  return jnp.stack([g * i * (1.0 - i), c_tm1 * f * (1.0 - f), i * (1.0 - g * g)], axis=-2)


def _lstm_dc_dh(cp, pi, v):
  """v·∂c_t/∂h_{t−1} = Σ_q (v⊙π_q)·W_hh^q for v [H], π [3, H] (gate rows i, f, g of W_hh)."""
  H = v.shape[-1]
  return (pi * v[None]).reshape(3 * H) @ cp["w_hh"][:3 * H]  # [3H]·[3H, H] -> [H]


def _lstm_d(cell, cp, s_tm1, x):
  """D_t = o_t⊙(1 − tanh² c_t) = ∂h_t/∂c_t at fixed o_t, [H]."""
  H = cell.hidden_size
  _, _, _, o = cells_lib.lstm_gates(cp, x, s_tm1[:H], H)
  c = cell.step(cp, s_tm1, x)[H:]
  return o * (1.0 - jnp.tanh(c) ** 2)


def trace_bytes_per_example(theta, d_out: int, chunk: int = 0, steps: Optional[int] = None,
                            ctx_size: int = 0) -> int:
  """Bytes of the online-mode traces of one example.

  Dense (chunk = 0): d_out·|θ| entries plus M [d_out, d_out]. Chunked (linear θ = {'w', 'b'},
  chunk L ≥ 1, ``steps`` TD steps, ``ctx_size`` numbers per step context): see
  :func:`bplambda_jax.traces.bytes_per_example`.
  """
  leaves = jax.tree.leaves(theta)
  itemsize = jnp.dtype(leaves[0].dtype).itemsize if leaves else 4
  if chunk:
    n_cols = theta["w"].shape[1] + int("b" in theta)
    L = chunk if steps is None else min(chunk, steps)
    return traces_lib.bytes_per_example(d_out, n_cols, L, itemsize,
                                        base=steps is None or L < steps, ctx_size=ctx_size)
  return int(d_out * (sum(int(np.prod(l.shape)) for l in leaves) + d_out) * itemsize)


def available_memory_bytes() -> Optional[int]:
  """Free memory of the default device (accelerator stats, else the host's MemAvailable)."""
  try:
    stats = jax.devices()[0].memory_stats()
    if stats and "bytes_limit" in stats:
      return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
  except (RuntimeError, AttributeError, NotImplementedError):
    pass
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def check_trace_memory(theta, d_out: int, batch_size: int, chunk: int = 0,
                       steps: Optional[int] = None, ctx_size: int = 0) -> int:
  """Log the online trace memory and fail early if it cannot fit.

  Runs at trace time, before compilation. The estimate counts three trace-sized buffers (the
  carried trace, its decayed copy and the scan's double buffer).

  Raises:
    MemoryError: when the estimate exceeds the available memory, suggesting mode='sequence'
      (whose memory grows with B·T·n, not with B·d_out·|θ|) or a smaller batch.
  """
  per_example = trace_bytes_per_example(theta, d_out, chunk, steps, ctx_size)
  need = 3 * batch_size * per_example
  logger.info("BP(λ) online traces: %.1f MB per example, about %.1f MB for batch %d",
              per_example / 2**20, need / 2**20, batch_size)
  avail = available_memory_bytes()
  if avail is not None and need > avail:
    raise MemoryError(
        f"BP(λ) online mode needs about {need / 2**30:.2f} GiB for its traces "
        f"({per_example / 2**20:.1f} MB per example × batch {batch_size} × 3 buffers) but only "
        f"{avail / 2**30:.2f} GiB is available. Use mode='sequence' (same numbers, memory "
        f"O(B·T·n)) or a smaller batch.")
  return per_example


def bp_lambda(model: model_lib.Model,
              synthesiser: Optional[synth_lib.Synthesiser] = None,
              *,
              lambda_: float = 1.0,
              gamma: float = 1.0,
              sg_scale: float = 1.0,
              flavour: str = "state",
              sensitivity=None,
              mode: str = "online",
              faithful: bool = False,
              clip_increments: Optional[bool] = None,
              alpha_learning: bool = False,
              synth_alpha: float = 0.1,
              readout_scale: Optional[float] = None,
              bias_grad_scale: Optional[float] = None,
              trace_chunk: Optional[int] = None) -> base.Rule:
  """Accumulate BP(λ) as a :class:`~bplambda_jax.rules.base.Rule`.

  Args:
    model: the recurrent model.
    synthesiser: ĝ; default the zero-initialised linear synthesiser.
    lambda_: λ ∈ [0, 1], trace decay (hyper-parameter ``'lambda_'``).
    gamma: γ ∈ [0, 1], discount of the bootstrapped term (``'gamma'``).
    sg_scale: ≥ 0, scale of ĝ in the network's learning signal (the reference's sg_weight).
    flavour: 'state' or 'eprop' (see the module docstring).
    sensitivity: name or :class:`~bplambda_jax.sensitivity.Sensitivity` for the network's credit;
      default 'immediate' for 'state' and 'eprop' for 'eprop'.
    mode: 'online' or 'sequence'.
    faithful: reproduce the reference's conventions and quirks (table above).
    clip_increments: per-step, per-tensor renormalisation of the synthesiser increment (Q7);
      default ``faithful``. Online mode only.
    alpha_learning: apply plain SGD to θ at every step (θ += synth_alpha·Δ) instead of returning the
      summed gradient; the rule then returns the updated θ in ``aux['synth_params']`` and a zero
      synthesiser gradient. Online mode only.
    synth_alpha: the SGD step size with ``alpha_learning`` (hyper-parameter ``'synth_alpha'``).
    readout_scale: κ of spec §2.4 (faithful only; default 1).
    bias_grad_scale: factor on the LSTM bias gradient (Q12); default 2 if faithful and LSTM, else 1.
    trace_chunk: online mode's trace representation. For a linear synthesiser the default (None)
      is the chunked trace of :mod:`bplambda_jax.traces` with chunks of
      ``traces.DEFAULT_CHUNK`` steps: the same per-step increments at O(B·d_out²·d_in) per step
      instead of O(B·d_out³·d_in). An int L ≥ 1 sets the chunk length (memory B·(d_out²·d_in +
      L·(c + d_in)) with c the numbers in one step's link context, the first term only when the
      sequence is longer than a chunk); 0 selects the dense per-step trace (the fused kernel of
      :mod:`bplambda_jax.kernels`), which is also what non-linear synthesisers always use.

  Returns:
    A rule whose ``grads`` returns {'cell', 'readout', 'synth'} descent directions and aux with
    'loss', 'learning_signal' [T, B, n] (per example, in state coordinates), 'td_error_norm' [T]
    (mean over the batch of ‖δ‖ per TD step; the e-prop flavour has T+1 TD steps, the first 0).
  """
  cell = model.cell
  synthesiser = synthesiser or synth_lib.linear()
  if flavour not in FLAVOURS:
    raise ValueError(f"flavour must be one of {FLAVOURS}, got {flavour!r}.")
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
  base.check_unit_interval("lambda_", lambda_)
  base.check_unit_interval("gamma", gamma)
  base.check_nonnegative("sg_scale", sg_scale)
  base.check_nonnegative("synth_alpha", synth_alpha)
  if clip_increments is None:
    clip_increments = faithful
  if readout_scale is not None and not faithful:
    raise ValueError("readout_scale (the reference's κ, quirk Q14) applies only with "
                     "faithful=True; the fixed convention uses the exact readout gradient.")
  readout_scale = 1.0 if readout_scale is None else float(readout_scale)
  if bias_grad_scale is None:
    bias_grad_scale = 2.0 if (faithful and cell.name == "lstm") else 1.0
  elif bias_grad_scale != 1.0:
    cell_params = jax.eval_shape(lambda: cell.init(jax.random.key(0), model.input_size))
    if "b" not in cell_params:
      raise ValueError(f"bias_grad_scale applies to cells with a bias 'b'; cell {cell.name!r} "
                       f"has parameters {sorted(cell_params)}.")
  if mode == "sequence" and clip_increments:
    raise ValueError("mode='sequence' computes the summed update exactly and cannot apply "
                     "per-step clipping (clip_increments=True, the faithful default, quirk Q7); "
                     "use mode='online' or pass clip_increments=False.")
  if mode == "sequence" and alpha_learning:
    raise ValueError("mode='sequence' needs θ fixed within the sequence; alpha_learning=True "
                     "updates θ at every step. Use mode='online'.")
  if trace_chunk is not None:
    if not isinstance(trace_chunk, int) or isinstance(trace_chunk, bool) or trace_chunk < 0:
      raise ValueError(f"trace_chunk must be None or an int >= 0 (0: dense trace), got "
                       f"{trace_chunk!r}.")
    if mode == "sequence":
      raise ValueError("trace_chunk sets the online mode's trace representation; "
                       "mode='sequence' has no trace. Leave trace_chunk=None.")
    if trace_chunk and not synthesiser.linear:
      raise ValueError(f"trace_chunk={trace_chunk} (the chunked trace) needs a linear "
                       f"synthesiser; {synthesiser.name!r} uses the dense trace (trace_chunk=0 "
                       f"or None).")
  chunk = 0
  if synthesiser.linear:
    chunk = traces_lib.DEFAULT_CHUNK if trace_chunk is None else trace_chunk
  if flavour == "eprop":
    _lstm_only(cell, "flavour='eprop'")
  if sensitivity is None:
    sensitivity = "eprop" if flavour == "eprop" else "immediate"
  sens = sens_lib.get_sensitivity(sensitivity, cell)
  hc_faithful = faithful and flavour == "state" and cell.name == "lstm"
  if hc_faithful and sens.name != "immediate":
    raise ValueError("the faithful LSTM [h, c] flavour uses the reference's local eligibilities "
                     f"(sensitivity='immediate'); got {sens.name!r}.")
  if mode == "sequence" and sens_lib.reverse_form(sens) is None:  # SnAp: its mask acts on Z
    raise ValueError(f"mode='sequence' needs a sensitivity with a reverse (adjoint) form; "
                     f"{sens.name!r} has none. Use mode='online'.")

  H, n = cell.hidden_size, cell.state_size
  defaults = {"lambda_": float(lambda_), "gamma": float(gamma), "sg_scale": float(sg_scale)}
  if alpha_learning:
    defaults["synth_alpha"] = float(synth_alpha)
  checks = {"lambda_": base.check_unit_interval, "gamma": base.check_unit_interval,
            "sg_scale": base.check_nonnegative}
  if alpha_learning:
    checks["synth_alpha"] = base.check_nonnegative

  # ------------------------------------------------------------------- flavour definitions
  if flavour == "state" and not hc_faithful:
    def link(cp, ctx, v):  # v·J_t, one vjp of the step
      s_tm1, x = ctx
      return jax.vjp(lambda s: cell.step(cp, s, x), s_tm1)[1](v)[0]
    flav = _Flavour(n, n, link)
  elif flavour == "state":
    def link(cp, ctx, v):  # v·J^{hc}_t = (v_h⊙D_t + v_c)·∂c_t/∂(h_{t−1}, c_{t−1})  (Q1)
      s_tm1, x = ctx
      d = _lstm_d(cell, cp, s_tm1, x)
      _, vjp = jax.vjp(lambda h, c: _lstm_c(cell, cp, h, c, x), s_tm1[:H], s_tm1[H:])
      a_h, a_c = vjp(v[:H] * d + v[H:])
      return jnp.concatenate([a_h, a_c])
    flav = _Flavour(n, n, link)
  else:
    # ctx = (π_t [3, H], f_t [H], D_{t−1} [H]) from eprop_ctx; h_{t−1} = o_{t−1}⊙tanh(c_{t−1}).
    def link(cp, ctx, v):  # v·K_t = (v·∂c_t/∂h_{t−1})⊙D_{t−1} + v⊙f_t
      pi, f_, d_tm1 = ctx
      return _lstm_dc_dh(cp, pi, v) * d_tm1 + v * f_

    def transition(cp, ctx):  # K_t[k, l] = Σ_q π_q[k]·W_hh^q[k, l]·D_{t−1}[l] + 1[k = l]·f_t[k]
      pi, f_, d_tm1 = ctx
      w3 = cp["w_hh"][:3 * H].reshape(3, H, H)
      return jnp.einsum("qk,qkl->kl", pi, w3) * d_tm1[None, :] + jnp.diag(f_)
    flav = _Flavour(n, H, link, transition)

  def q_map(cp, ctx, v):  # e-prop flavour: v·∂c_t/∂h_{t−1}
    return _lstm_dc_dh(cp, ctx[0], v)

  def eprop_ctx(cp, s_tm1, x, d_tm1):  # the e-prop flavour's per-step ctx (one example)
    return _lstm_c_partials(cell, cp, s_tm1, x) + (d_tm1,)

  def pad_h(v):  # [..., H] -> [..., n] with zeros on the non-hidden part
    return jnp.concatenate([v, jnp.zeros(v.shape[:-1] + (n - H,), v.dtype)], axis=-1)

  def hc_vector(cp, ctx, ell_h):  # faithful [h, c]: v = [ℓ, ℓ⊙D]
    s_tm1, x = ctx
    return jnp.concatenate([ell_h, ell_h * _lstm_d(cell, cp, s_tm1, x)])

  def hc_local(p, s_tm1, x):  # (h_t through the output gate only, c_t through local ∂c/∂θ)
    i, f_, g, o = cells_lib.lstm_gates(p, x, s_tm1[:H], H)
    c = f_ * s_tm1[H:] + i * g
    return jnp.concatenate([o * jnp.tanh(jax.lax.stop_gradient(c)), c])

  def hc_credit(cp, s_tm1, x, ls):  # faithful [h, c] weight update (spec §5.3 step 5)
    return jax.vjp(lambda p: hc_local(p, s_tm1, x), cp)[1](ls)[0]

  # ------------------------------------------------------------------------ shared pieces
  def td_steps(T):  # TD steps per sequence (the e-prop flavour has a final one after the loop)
    return T + 1 if flavour == "eprop" else T

  def ctx_zeros(cp, batch_size, dtype):  # a zero link context for a batch (the flavour's ctx)
    s = jnp.zeros((batch_size, n), dtype)
    x = jnp.zeros((batch_size, model.input_size), dtype)
    if flavour == "state":
      return (s, x)
    shapes = jax.eval_shape(jax.vmap(eprop_ctx, in_axes=(None, 0, 0, 0)), cp, s, x, s[:, :H])
    return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)

  def out_grad(params, s, y, w, m, batch_size):
    """dy_t [D_out] for one example and step (fixed: exact; faithful: reference hand form)."""
    out = model.readout(params, s)
    if faithful:
      return m * model.loss.reference_grad(out, y) / batch_size
    return w * jax.grad(model.loss.value)(out, y)

  def net_reduce(tree, batch_size):
    return tree if faithful else jax.tree.map(lambda g: g / batch_size, tree)

  def finish_cell_grads(g):
    if bias_grad_scale != 1.0:
      g = dict(g)
      g["b"] = g["b"] * bias_grad_scale
    return g

  def readout_grads(dy, states, batch_size):
    """Σ_{t,b} dy⊗h (faithful ×κ; fixed /B): exact immediate readout gradient."""
    h = cell.hidden(states)
    gw = jnp.einsum("tbo,tbh->oh", dy, h)  # [T,B,D_out]·[T,B,H] -> [D_out, H]
    gb = jnp.sum(dy, axis=(0, 1))
    scale = readout_scale if faithful else 1.0 / batch_size
    return {"w": gw * scale, "b": gb * scale}

  def synth_apply(train, frozen, z):
    return synthesiser.apply({"train": train, "frozen": frozen}, z)

  def check(params, batch, hparams):
    model_lib.validate_batch(model, batch)
    if "synth" not in params:
      raise ValueError("params has no 'synth' entry; build params with rule.init(key).")
    return base.merge_hparams(defaults, hparams, checks)

  def init(key):
    k1, k2 = jax.random.split(key)
    params = model.init(k1)
    params["synth"] = synthesiser.init(k2, flav.d_in, flav.d_out)
    return params

  def batch_loss(params, states, batch):
    w = model_lib.step_weights(batch.mask)
    out = model.readout(params, states)
    per_step = jax.vmap(jax.vmap(model.loss.value))(out, batch.y)
    return jnp.sum(w * per_step) / batch.x.shape[1]

  # -------------------------------------------------------------------------- online mode
  def td_step(hp, theta, frozen, td, z, ctx, u, first, final, cp):
    """One TD(λ) step on the batch. td = (z_prev, g_prev, m_prev, trace).

    m_prev is M_{τ−1} [B, d_out, d_out] for the dense trace, and its context ctx_{τ−1} (the
    arguments of ``flav.link``) for the chunked trace, which never forms M.
    """
    z_prev, g_prev, m_prev, trace = td
    gamma_, lam = hp["gamma"], hp["lambda_"]
    apply_b = jax.vmap(synth_apply, in_axes=(None, None, 0))
    keep = 1.0 - final
    p = apply_b(theta, frozen, z) * keep  # [B, d_out]
    r = u + gamma_ * jax.vmap(flav.link, in_axes=(None, 0, 0))(cp, ctx, p)
    delta = (r - g_prev) * (1.0 - first)  # [B, d_out]
    # E ← γλ·M_{τ−1}·E + ∂ĝ(z_{τ−1})/∂θ and Δ = mean_b δ·E in one fused step (a Pallas kernel on
    # GPU/TPU, XLA on CPU); nothing happens at the first step. A linear ĝ = W z + β has
    # ∂ĝ_o/∂W_ij = 1[o = i]·z_j (spec §4.4): added on the diagonal, the Jacobian is never formed.
    keep_trace = 1.0 - first
    if chunk:
      a = z_prev * keep_trace  # [B, d_in], then β's input column of ones
      if "b" in theta:
        a = jnp.concatenate([a, jnp.broadcast_to(keep_trace, a.shape[:1] + (1,)).astype(a.dtype)],
                            axis=1)
      link_b = lambda c, v: jax.vmap(flav.link, in_axes=(None, 0, 0))(cp, c, v)
      trace, inc_wb = traces_lib.chunked_step(trace, m_prev, a, delta, gamma_ * lam * keep_trace,
                                              link_b)
      inc = {"w": inc_wb[:, :flav.d_in]}
      if "b" in theta:
        inc["b"] = inc_wb[:, flav.d_in]
    elif synthesiser.linear:
      trace, inc = kernels.linear_trace_step(trace, m_prev, z_prev, delta,
                                             gamma_ * lam * keep_trace, g_scale=keep_trace)
    else:
      dgdth = jax.vmap(jax.jacrev(synth_apply), in_axes=(None, None, 0))(theta, frozen, z_prev)
      trace, inc = kernels.trace_step_tree(trace, m_prev,
                                           jax.tree.map(lambda g: g * keep_trace, dgdth), delta,
                                           gamma_ * lam * keep_trace)
    if clip_increments:  # quirk Q7
      inc = jax.tree.map(lambda d: d / jnp.maximum(1.0, jnp.linalg.norm(d.ravel())), inc)
    if alpha_learning:
      theta = jax.tree.map(lambda t_, d: t_ + hp["synth_alpha"] * d, theta, inc)
      g = apply_b(theta, frozen, z) * keep  # Q29: emitted with the updated θ
    else:
      g = p
    if chunk:
      m = ctx  # the chunked trace keeps contexts, not matrices
    elif flav.transition is not None:
      m = jax.vmap(flav.transition, in_axes=(None, 0))(cp, ctx)  # [B, d_out, d_out]
    else:
      m = jax.vmap(lambda c: jax.vmap(lambda v: flav.link(cp, c, v))(
          jnp.eye(flav.d_out, dtype=z.dtype)))(ctx)  # rows e_i·M -> M, [B, d_out, d_out]
    td = (z, g, m, trace)
    return td, theta, inc, g, jnp.mean(jnp.linalg.norm(delta, axis=-1))

  def online_grads(params, batch, hp):
    cp, theta, frozen = params["cell"], params["synth"]["train"], params["synth"]["frozen"]
    T, B = batch.x.shape[:2]
    dtype = batch.x.dtype
    w = model_lib.step_weights(batch.mask)
    step_b = jax.vmap(cell.step, in_axes=(None, 0, 0))
    out_grad_b = jax.vmap(out_grad, in_axes=(None, 0, 0, 0, 0, None))
    sens_state0 = jax.vmap(lambda _: sens.init(cp))(jnp.arange(B))
    s0 = jnp.zeros((B, n), dtype)
    if chunk:
      m0 = ctx_zeros(cp, B, dtype)
      trace0 = traces_lib.chunked_init(m0, flav.d_out, flav.d_in, bias="b" in theta, chunk=chunk,
                                       steps=td_steps(T), dtype=theta["w"].dtype)
    else:
      m0 = jnp.zeros((B, flav.d_out, flav.d_out), dtype)
      trace0 = jax.tree.map(lambda t_: jnp.zeros((B, flav.d_out) + t_.shape, t_.dtype), theta)
    td0 = (jnp.zeros((B, flav.d_in), dtype), jnp.zeros((B, flav.d_out), dtype), m0, trace0)
    zero_cell = jax.tree.map(jnp.zeros_like, cp)
    zero_synth = jax.tree.map(jnp.zeros_like, theta)
    sens_update_b = jax.vmap(sens.update, in_axes=(None, 0, 0, 0))
    sens_credit_b = functools.partial(sens_lib.batch_credit, sens)  # Σ_b ls_b·Z_b
    ts = jnp.arange(T)
    firsts = (ts == 0).astype(dtype)
    finals = (ts == T - 1).astype(dtype)
    sum_b = sens_lib.sum_leading

    if flavour == "state":
      def body(carry, inp):
        s_tm1, sstate, td, th, acc_c, acc_s = carry
        x, y, wt, mt, first, final = inp
        s = step_b(cp, s_tm1, x)
        sstate = sens_update_b(cp, sstate, s_tm1, x)
        dy = out_grad_b(params, s, y, wt, mt, B)  # [B, D_out]
        ell_h = dy @ params["readout"]["w"]  # [B, H]
        ctx = (s_tm1, x)
        if hc_faithful:
          v = jax.vmap(hc_vector, in_axes=(None, 0, 0))(cp, ctx, ell_h)
        else:
          v = pad_h(ell_h)
        u = jax.vmap(flav.link, in_axes=(None, 0, 0))(cp, ctx, v)
        td, th, inc, g, dnorm = td_step(hp, th, frozen, td, s, ctx, u, first, final, cp)
        ls = v + hp["sg_scale"] * g
        if hc_faithful:
          credit = sum_b(jax.vmap(hc_credit, in_axes=(None, 0, 0, 0))(cp, s_tm1, x, ls))
        else:
          credit = sens_credit_b(cp, sstate, s_tm1, x, ls)
        acc_c = jax.tree.map(jnp.add, acc_c, credit)
        acc_s = jax.tree.map(jnp.subtract, acc_s, inc)
        return (s, sstate, td, th, acc_c, acc_s), (s, dy, ls, dnorm)

      carry0 = (s0, sens_state0, td0, theta, zero_cell, zero_synth)
      carry, (states, dy, ls, dnorm) = jax.lax.scan(
          body, carry0, (batch.x, batch.y, w, batch.mask.astype(dtype), firsts, finals))
      _, _, _, theta_t, acc_c, acc_s = carry
    else:
      def body(carry, inp):
        s_tm1, sstate_tm1, s_tm2, x_tm1, ell_tm1, d_tm1, td, th, acc_c, acc_s = carry
        x, y, wt, mt, first = inp
        s = step_b(cp, s_tm1, x)
        ctx = jax.vmap(eprop_ctx, in_axes=(None, 0, 0, 0))(cp, s_tm1, x, d_tm1)
        u = ell_tm1 * d_tm1
        td, th, inc, g, dnorm = td_step(hp, th, frozen, td, s_tm1, ctx, u, first,
                                        jnp.zeros((), dtype), cp)
        ls = pad_h(ell_tm1 + hp["sg_scale"] * jax.vmap(q_map, in_axes=(None, 0, 0))(cp, ctx, g))
        credit = sens_credit_b(cp, sstate_tm1, s_tm2, x_tm1, ls)
        acc_c = jax.tree.map(lambda a, c: a + c * (1.0 - first), acc_c, credit)
        acc_s = jax.tree.map(jnp.subtract, acc_s, inc)
        sstate = sens_update_b(cp, sstate_tm1, s_tm1, x)
        dy = out_grad_b(params, s, y, wt, mt, B)
        ell = dy @ params["readout"]["w"]
        d = jax.vmap(_lstm_d, in_axes=(None, None, 0, 0))(cell, cp, s_tm1, x)
        carry = (s, sstate, s_tm1, x, ell, d, td, th, acc_c, acc_s)
        return carry, (s, dy, ls, dnorm)

      zH = jnp.zeros((B, H), dtype)
      carry0 = (s0, sens_state0, s0, jnp.zeros_like(batch.x[0]), zH, zH, td0, theta, zero_cell,
                zero_synth)
      carry, (states, dy, ls, dnorm) = jax.lax.scan(
          body, carry0, (batch.x, batch.y, w, batch.mask.astype(dtype), firsts))
      s_last, sstate_last, s_tm2, x_tm1, ell, d, td, theta_t, acc_c, acc_s = carry
      # The final TD step τ = T (spec §5.4, after the loop): ĝ ≡ 0, δ = ℓ_{T−1}⊙D_{T−1} − ĝ_prev.
      # unused by the link since ĝ ≡ 0 at the final step; any ctx of the right shapes will do
      ctx = jax.vmap(eprop_ctx, in_axes=(None, 0, 0, 0))(cp, s_last, x_tm1, d)
      td, theta_t, inc, _, dnorm_f = td_step(hp, theta_t, frozen, td, s_last, ctx, ell * d,
                                             jnp.zeros((), dtype), jnp.ones((), dtype), cp)
      acc_s = jax.tree.map(jnp.subtract, acc_s, inc)
      ls_last = pad_h(ell)
      credit = sens_credit_b(cp, sstate_last, s_tm2, x_tm1, ls_last)
      acc_c = jax.tree.map(jnp.add, acc_c, credit)
      ls = jnp.concatenate([ls[1:], ls_last[None]], axis=0)
      dnorm = jnp.concatenate([dnorm, dnorm_f[None]])

    grads = {
        "cell": finish_cell_grads(net_reduce(acc_c, B)),
        "readout": readout_grads(dy, states, B),
        "synth": {"train": zero_synth if alpha_learning else acc_s,
                  "frozen": jax.tree.map(jnp.zeros_like, frozen)},
    }
    aux = {"loss": batch_loss(params, states, batch), "learning_signal": ls,
           "td_error_norm": dnorm}
    if alpha_learning:
      aux["synth_params"] = {"train": theta_t, "frozen": frozen}
    return grads, aux

  # ------------------------------------------------------------------------ sequence mode
  def sequence_grads(params, batch, hp):
    cp, theta, frozen = params["cell"], params["synth"]["train"], params["synth"]["frozen"]
    T, B = batch.x.shape[:2]
    dtype = batch.x.dtype
    gamma_, lam, sg = hp["gamma"], hp["lambda_"], hp["sg_scale"]
    states = model_lib.loss_and_states(model, params, batch)[1]  # [T, B, n]
    s_prev = sens_lib.previous_states(states)  # s_{t−1}
    w = model_lib.step_weights(batch.mask)
    tb = lambda f: jax.vmap(jax.vmap(f))  # map over [T, B]
    dy = tb(lambda s, y, wt, mt: out_grad(params, s, y, wt, mt, B))(
        states, batch.y, w, batch.mask.astype(dtype))  # [T, B, D_out]
    ell_h = dy @ params["readout"]["w"]  # [T, B, H]
    link_tb = tb(lambda c, v: flav.link(cp, c, v))

    if flavour == "state":
      ctx = (s_prev, batch.x)
      v = tb(lambda c, e: hc_vector(cp, c, e))(ctx, ell_h) if hc_faithful else pad_h(ell_h)
      z = states
      u = link_tb(ctx, v)
      final = (jnp.arange(T) == T - 1).astype(dtype)
    else:
      # The gates once for all (t, b): D_t, π_t, f_t without recomputing the forward pass.
      i_, f_, g_, o_ = tb(lambda s, x: cells_lib.lstm_gates(cp, x, s[:H], H))(s_prev, batch.x)
      d = o_ * (1.0 - jnp.tanh(states[..., H:]) ** 2)  # D_t, [T, B, H]
      d_prev = jnp.concatenate([jnp.zeros_like(d[:1]), d[:-1]])  # D_{t−1}
      ctx = (_lstm_pi(i_, f_, g_, s_prev[..., H:]), f_, d_prev)  # eprop_ctx for every (t, b)
      ctx = jax.tree.map(lambda a: jnp.concatenate([a, a[-1:]]), ctx)  # dummy ctx at τ = T
      z = jnp.concatenate([s_prev, states[-1:]])  # z_τ = s_{τ−1}, τ = 0..T
      ell_prev = jnp.concatenate([jnp.zeros_like(ell_h[:1]), ell_h])  # ℓ_{τ−1}
      u = ell_prev * jnp.concatenate([d_prev, d[-1:]])
      final = (jnp.arange(T + 1) == T).astype(dtype)

    apply_all = lambda th: tb(lambda zz: synth_apply(th, frozen, zz))(z)
    p, synth_vjp = jax.vjp(apply_all, theta)
    p = p * (1.0 - final)[:, None, None]  # [N, B, d_out]
    if flavour == "state":
      r = u + gamma_ * link_tb(ctx, p)
    else:  # link = (ĝ·∂c/∂h)⊙D_{τ−1} + ĝ⊙f; the first factor is also the learning signal's q_map
      pi, f_, d_tm1 = ctx
      qg_all = tb(lambda pp, vv: _lstm_dc_dh(cp, pp, vv))(pi, p)  # ĝ_τ·∂c_τ/∂h_{τ−1}, [N, B, H]
      r = u + gamma_ * (qg_all * d_tm1 + p * f_)
    delta = jnp.concatenate([jnp.zeros_like(r[:1]), r[1:] - p[:-1]])  # δ_0 := 0

    def rev(w_next, inp):  # w_k = δ_{k+1} + γλ·w_{k+1}·M_{k+1}
      delta_k1, ctx_k1 = inp
      w_k = delta_k1 + gamma_ * lam * jax.vmap(lambda c, vv: flav.link(cp, c, vv))(ctx_k1, w_next)
      return w_k, w_k

    ctx_next = jax.tree.map(lambda a: a[1:], ctx)
    _, w_seq = jax.lax.scan(rev, jnp.zeros_like(p[0]), (delta[1:], ctx_next), reverse=True)
    w_all = jnp.concatenate([w_seq, jnp.zeros_like(p[:1])])  # w_{N−1} = 0
    synth_grad = jax.tree.map(lambda g: -g / B, synth_vjp(w_all)[0])

    if flavour == "state":
      ls = v + sg * p
    else:
      ls = pad_h(ell_h + sg * qg_all[1:])  # ĝ_{t+1}·∂c_{t+1}/∂h_t

    if hc_faithful:
      _, hc_vjp = jax.vjp(lambda q: tb(lambda s, x: hc_local(q, s, x))(s_prev, batch.x), cp)
      cell_grads = hc_vjp(ls)[0]
    else:
      cell_grads = sens_lib.sequence_credit(sens, cell, cp, ls, states, batch.x)

    grads = {
        "cell": finish_cell_grads(net_reduce(cell_grads, B)),
        "readout": readout_grads(dy, states, B),
        "synth": {"train": synth_grad, "frozen": jax.tree.map(jnp.zeros_like, frozen)},
    }
    aux = {"loss": batch_loss(params, states, batch), "learning_signal": ls,
           "td_error_norm": jnp.mean(jnp.linalg.norm(delta, axis=-1), axis=1)}
    return grads, aux

  def grads(params, batch, hparams=None):
    hp = check(params, batch, hparams)
    hp = {k: jnp.asarray(v, batch.x.dtype) for k, v in hp.items()}
    if mode == "online":
      ctx_size = 0
      if chunk:
        ctx = jax.eval_shape(lambda: ctx_zeros(params["cell"], 1, batch.x.dtype))
        ctx_size = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(ctx))
      check_trace_memory(params["synth"]["train"], flav.d_out, batch.x.shape[1], chunk,
                         td_steps(batch.x.shape[0]), ctx_size)
      return online_grads(params, batch, hp)
    return sequence_grads(params, batch, hp)

  return base.Rule("bp_lambda", init, grads, defaults, online=(mode == "online"))
