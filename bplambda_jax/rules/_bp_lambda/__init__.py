"""Accumulate BP(λ) (Pemberton & Costa, TMLR 2024): synthetic gradients learned by TD(λ).

A synthesiser ĝ(z; θ) predicts the future loss gradient with respect to a recurrent state. It is a
TD problem with vector-valued values, "rewards" u and transitions M:

    δ_τ = u_τ + γ·ĝ(z_τ)·M_τ − ĝ(z_{τ−1})                  (ĝ ≡ 0 at the final step)
    E_τ = γλ·M_{τ−1}·E_{τ−1} + ∂ĝ(z_{τ−1})/∂θ               (E per example, [d_out, *θ])
    θ  += α·δ_τ·E_τ                                          (ascent; summed or applied per step)

and the recurrent network learns from the signal ls = ℓ + sg_scale·ĝ contracted with a
sensitivity (immediate, e-prop, RTRL, ...; see :mod:`bplambda_jax.credit`). The flavours (what ĝ
predicts) are described in :mod:`bplambda_jax.rules._bp_lambda._flavours`:

* ``'state'`` (any cell): ĝ(s_τ) ≈ Σ_{τ'>τ} γ^{τ'−τ−1}·∂L_{τ'}/∂s_τ, M_τ = J_τ; for the vanilla RNN
  this is the paper's rule, for the LSTM its [h, c] flavour in the consistent Markov convention.
* ``'eprop'`` (cells with an LSTM cell-state path): ĝ(s_{τ−1}) ≈ ∂L_{≥τ}/∂c_τ, M_τ = ∂c_τ/∂c_{τ−1}
  through h_{τ−1}; the learning signal for h_{τ−1} is ℓ_{τ−1} + sg·ĝ·∂c_τ/∂h_{τ−1}, one step late,
  and the default sensitivity is e-prop (the paper's LSTM experiments).

``grads`` has two exact modes. ``'online'`` scans the per-step ``step`` (the algorithm as
published; memory independent of T). ``'sequence'`` computes the same summed update by one reverse
recursion at about the cost of a BPTT pass (:mod:`bplambda_jax.rules._bp_lambda._sequence`). Both
rules offer the same ``init_state``/``step``.

Faithful vs fixed (``faithful=True`` reproduces the authors' code; each switch below):

=========================  ==========================================  ===========================
switch                     faithful (the authors' code)                fixed (default)
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
from typing import Optional

import jax
import numpy as np

from bplambda_jax import _validation
from bplambda_jax import credit
from bplambda_jax.model import Model, Synthesiser, linear_synthesiser, step_weights, validate_batch
from bplambda_jax.model import objective
from bplambda_jax.rules import _base as base
from bplambda_jax.rules._bp_lambda._flavours import context_zeros, eprop_link, hc, state_link
from bplambda_jax.rules._bp_lambda._online import (BIAS_NAMES, CHECKS, BPLambdaState, Config,
                                                   EpropLag, make_online)
from bplambda_jax.rules._bp_lambda._sequence import make_sequence
from bplambda_jax.rules._bp_lambda._trace_forms import TDState, trace_form
from bplambda_jax.rules._from_sensitivity import scan_steps
from bplambda_jax.credit._synth_traces import _chunked
from bplambda_jax.credit._synth_traces import _structured

FLAVOURS = ("state", "eprop")
TRACES = ("auto", "dense", "chunked") + _structured.STRUCTURES


def bp_lambda(model: Model,
              synthesiser: Optional[Synthesiser] = None,
              *,
              lambda_: float = 1.0,
              gamma: float = 1.0,
              sg_scale: float = 1.0,
              flavour: Optional[str] = None,
              sensitivity=None,
              mode: str = "online",
              faithful: bool = False,
              clip_increments: Optional[bool] = None,
              readout_scale: Optional[float] = None,
              bias_grad_scale: Optional[float] = None,
              trace: str = "auto",
              trace_chunk: Optional[int] = None,
              trace_dtype=None) -> base.Rule:
  """Accumulate BP(λ) as a :class:`~bplambda_jax.Rule` (see the module docstring).

  Args:
    model: the recurrent model.
    synthesiser: ĝ; default the zero-initialised linear synthesiser.
    lambda_: λ ∈ [0, 1], trace decay (hyper-parameter ``'lambda_'``).
    gamma: γ ∈ [0, 1], discount of the bootstrapped term (``'gamma'``).
    sg_scale: ≥ 0, scale of ĝ in the network's learning signal (the authors' sg_weight;
      ``'sg_scale'``).
    flavour: 'state' or 'eprop'; default 'eprop' for cells with an LSTM cell-state path
      (``Cell.lstm``: the paper's LSTM setting) and 'state' otherwise.
    sensitivity: name or :class:`~bplambda_jax.credit.Sensitivity` for the network's credit;
      default 'immediate' for 'state' and 'eprop' for 'eprop'.
    mode: how ``grads`` computes: 'online' (a scan of ``step``) or 'sequence' (same numbers).
    faithful: reproduce the authors' conventions and quirks (table above).
    clip_increments: per-step, per-tensor renormalisation of the synthesiser increment (Q7);
      default ``faithful``. Online mode only.
    readout_scale: κ of the readout gradient (faithful only; default 1).
    bias_grad_scale: factor on the gradient of the cell's bias leaves (named b, b_ih, b_hh or
      bias; Q12); default 2 when faithful and the cell has an LSTM cell-state path, else 1.
    trace: the form of the synthesiser's online trace (all give the same numbers, per step):

      * 'auto' (default): for a linear synthesiser, the structured trace that the flavour's
        transition M has by the cell's declarations ('diagonal' or 'block', below), else the
        chunked trace; for a non-linear synthesiser the dense trace.
      * 'dense': E [B, d_out, *θ], E ← γλ·M·E + ∂ĝ/∂θ with M formed (the fused trace-step
        kernel): O(B·d_out³·d_in) per step.
      * 'chunked' (linear ĝ): chunks of L steps kept as link contexts
        (:class:`~bplambda_jax.internals.ChunkedTrace`): O(B·L·d_out²) per step plus a fold.
      * 'diagonal' (linear ĝ, M diagonal: the state flavour on a cell declaring
        ``jacobian='diagonal'``, or the e-prop flavour when K_t is diagonal,
        :func:`~bplambda_jax.internals.eprop_transition`): E [B, d_out, d_in], O(B·d_out·d_in).
      * 'block' (linear ĝ, M unit-block-diagonal: the state flavour on a cell declaring
        ``jacobian='block'``, over its units; a diagonal M counts): M's blocks only,
        O(B·k²·U·d_in) for U units of k components (:mod:`bplambda_jax.credit`).

      In mode 'sequence' no trace is stored by ``grads``: 'diagonal' and 'block' (also chosen by
      'auto') make the reverse recursion's link a product with M's diagonal or blocks instead of
      a vjp, and ``trace`` sets the form of the trace ``step`` carries. ValueError when the
      synthesiser or the cell lacks what the form needs.
    trace_chunk: the chunked trace's chunk length: None (default
      ``bplambda_jax.internals.DEFAULT_CHUNK``) or an int L ≥ 1. Also a shorthand kept from
      before ``trace``: with trace='auto', L ≥ 1 selects trace='chunked' and 0 selects
      trace='dense'. Any other combination with trace_chunk set
      (e.g. trace='diagonal', or trace='chunked' with 0) is a ValueError.
    trace_dtype: dtype of the traces in the step state (synthesiser and sensitivity); None: the
      parameters' dtype. E.g. float32 traces for a bfloat16 model.

  Returns:
    A rule with ``init_state``/``step`` (:class:`BPLambdaState`; ``step`` also takes
    ``synth_sgd``, see its docstring) whose ``grads`` returns {'cell', 'readout', 'synth'}
    descent directions and aux with 'loss', 'learning_signal' [T, B, n] (per example, in state
    coordinates) and 'td_error_norm' (mean over the batch of ‖δ‖ per TD step: [T], or [T+1] in
    the e-prop flavour, whose first is 0).
  """
  cfg = _configure(model, synthesiser, lambda_=lambda_, gamma=gamma, sg_scale=sg_scale,
                   flavour=flavour, sensitivity=sensitivity, mode=mode, faithful=faithful,
                   clip_increments=clip_increments, readout_scale=readout_scale,
                   bias_grad_scale=bias_grad_scale, trace=trace, trace_chunk=trace_chunk,
                   trace_dtype=trace_dtype)
  init_state_steps, step, flush = make_online(cfg)
  init = base.init_with_synthesiser(model, cfg.synthesiser, cfg.d_in, cfg.d_out)

  def init_state(params, batch_size):
    _check_params(params)
    return init_state_steps(params, batch_size)

  grads = _make_grads(cfg, mode, init_state_steps, step, flush)
  return base.Rule("bp_lambda", init, grads, cfg.defaults, mode, init_state, step, model=model)


def _configure(model: Model, synthesiser: Optional[Synthesiser], *, lambda_, gamma, sg_scale,
               flavour, sensitivity, mode, faithful, clip_increments, readout_scale,
               bias_grad_scale, trace, trace_chunk, trace_dtype) -> Config:
  """The rule's :class:`Config` from the factory's arguments, checked (ValueError naming one)."""
  cell = model.cell
  synthesiser = synthesiser or linear_synthesiser()
  if flavour is None:
    flavour = "eprop" if cell.lstm is not None else "state"
  _check_choices(flavour=flavour, mode=mode, faithful=faithful,
                 clip_increments=clip_increments, readout_scale=readout_scale,
                 bias_grad_scale=bias_grad_scale)
  base.check_unit_interval("lambda_", lambda_)
  base.check_unit_interval("gamma", gamma)
  base.check_nonnegative("sg_scale", sg_scale)
  if clip_increments is None:
    clip_increments = faithful
  if readout_scale is not None and not faithful:
    raise ValueError("readout_scale (the authors' κ, quirk Q14) applies only with "
                     "faithful=True; the fixed convention uses the exact readout gradient.")
  if bias_grad_scale is None:
    bias_grad_scale = 2.0 if (faithful and cell.lstm is not None) else 1.0
  elif bias_grad_scale != 1.0:
    _check_has_biases(model)
  if mode == "sequence" and clip_increments:
    raise ValueError("mode='sequence' computes the summed update exactly and cannot apply "
                     "per-step clipping (clip_increments=True, the faithful default, quirk Q7); "
                     "use mode='online' or pass clip_increments=False.")
  trace = _resolve_trace(trace, trace_chunk, synthesiser)
  if flavour == "eprop" and cell.lstm is None:
    raise ValueError(f"flavour='eprop' needs a cell with an LSTM cell-state path (Cell.lstm: "
                     f"library lstm and columnar_lstm, flax LSTMCell and OptimizedLSTMCell); "
                     f"cell {cell.name!r} has none. Use flavour='state'.")
  sens = _sensitivity(cell, flavour, sensitivity, faithful, mode)
  trace_dtype = _trace_dtype(trace_dtype)
  hc_parts, link, d_in, d_out = _flavour_parts(cell, flavour, faithful)
  structure = None
  if trace in ("auto",) + _structured.STRUCTURES and synthesiser.linear:
    structure = _structured.trace_structure(cell, flavour, link, want=trace)
  chunk = 0
  if structure is None and synthesiser.linear and trace in ("auto", "chunked"):
    chunk = _chunked.DEFAULT_CHUNK if trace_chunk is None else trace_chunk
  form = trace_form(synthesiser, link, d_in, d_out, input_size=model.input_size,
                    structure=structure, chunk=chunk,
                    context_zeros=functools.partial(context_zeros, flavour, cell, model.input_size))
  return Config(
      model=model, synthesiser=synthesiser, flavour=flavour, d_in=d_in, d_out=d_out, link=link,
      hc=hc_parts, sens=sens, faithful=faithful, clip=bool(clip_increments),
      readout_scale=1.0 if readout_scale is None else float(readout_scale),
      bias_grad_scale=float(bias_grad_scale), structure=structure, trace=form,
      trace_dtype=trace_dtype,
      defaults=base.frozen({"lambda_": float(lambda_), "gamma": float(gamma),
                            "sg_scale": float(sg_scale)}))


def _flavour_parts(cell, flavour: str, faithful: bool):
  """(hc, link, d_in, d_out): the faithful [h, c] pieces (or None), the flavour's link and ĝ's
  sizes (state: n → n; e-prop: n → H)."""
  n = cell.state_size
  if flavour == "eprop":
    return None, eprop_link(cell), n, cell.hidden_size
  if faithful and cell.lstm is not None:  # the authors' [h, c] flavour (quirk Q1)
    parts = hc(cell)
    return parts, parts.link, n, n
  return None, state_link(cell), n, n


def _check_choices(*, flavour, mode, faithful, clip_increments, readout_scale,
                   bias_grad_scale) -> None:
  """ValueError for a flavour, mode, switch or scale out of range."""
  if flavour not in FLAVOURS:
    raise ValueError(f"flavour must be one of {FLAVOURS}, got {flavour!r}.")
  if mode not in base.MODES:
    raise ValueError(f"mode must be one of {base.MODES}, got {mode!r}.")
  _validation.flag("faithful", faithful)
  _validation.flag("clip_increments", clip_increments, allow_none=True)
  for name, v in (("readout_scale", readout_scale), ("bias_grad_scale", bias_grad_scale)):
    if v is not None:
      _validation.number(name, v, above=0.0, what="None or a finite number > 0")


def _check_has_biases(model: Model) -> None:
  cell = model.cell
  cell_params = jax.eval_shape(lambda: cell.init(jax.random.key(0), model.input_size))
  names = {getattr(p[-1], "key", None) for p, _ in
           jax.tree_util.tree_flatten_with_path(cell_params)[0]}
  if not names & set(BIAS_NAMES):
    raise ValueError(f"bias_grad_scale applies to bias leaves (named {BIAS_NAMES}); cell "
                     f"{cell.name!r} has none.")


def _sensitivity(cell, flavour, sensitivity, faithful, mode) -> credit.Sensitivity:
  """The network's sensitivity (default by flavour), checked against the faithful [h, c] flavour
  and the sequence mode."""
  if sensitivity is None:
    sensitivity = "eprop" if flavour == "eprop" else "immediate"
  sens = credit.get_sensitivity(sensitivity, cell)
  if faithful and flavour == "state" and cell.lstm is not None and sens.name != "immediate":
    raise ValueError("the faithful LSTM [h, c] flavour uses the authors' local eligibilities "
                     f"(sensitivity='immediate'); got {sens.name!r}.")
  if mode == "sequence" and sens.reverse is None:
    raise ValueError(f"mode='sequence' needs a sensitivity with a reverse form; {sens.name!r} "
                     f"has none. Use mode='online'.")
  return sens


def _trace_dtype(trace_dtype):
  if trace_dtype is None:
    return None
  try:
    trace_dtype = np.dtype(trace_dtype)
  except TypeError:
    raise ValueError(f"trace_dtype must be a floating-point dtype, got {trace_dtype!r}.") from None
  if not np.issubdtype(trace_dtype, np.floating) and trace_dtype != jax.numpy.bfloat16:
    raise ValueError(f"trace_dtype must be a floating-point dtype, got {trace_dtype}.")
  return trace_dtype


def _check_params(params):
  if "synth" not in params:
    raise ValueError("params has no 'synth' entry; build params with rule.init(key).")


def _make_grads(cfg: Config, mode: str, init_state_steps, step, flush):
  """The rule's ``grads``: a scan of ``step`` (online) or the reverse recursion (sequence). In
  the e-prop flavour the scan takes every step with ``last=False`` and ``flush`` ends the
  sequence after it (the numbers of a last step taken with ``last=True``)."""
  model, eprop = cfg.model, cfg.flavour == "eprop"
  sequence_grads = make_sequence(cfg)

  def grads(params, batch, hparams=None):
    validate_batch(model, batch)
    _check_params(params)
    dtype = batch.x.dtype
    hp = base.merge_hparams(cfg.defaults, hparams, CHECKS, dtype)
    w = step_weights(batch.mask).astype(dtype)
    # the weight each step's loss gets: the objective's (fixed), or the raw mask with the
    # authors' hand derivative (faithful, whose 1/B and κ carry the scale)
    weights = batch.mask.astype(dtype) if cfg.faithful else w
    if mode == "sequence":
      return sequence_grads(params, batch, hp, weights, w)
    T, B = batch.x.shape[:2]
    state0 = init_state_steps(params, B, steps=T + 1 if eprop else T)
    acc0 = base.zeros_like_tree(params)
    if eprop:
      acc, state, m = _scan_all(step, params, state0, batch, hp, weights, acc0)
      g, state, final_norm = flush(params, state, hp)
      acc = base.add_trees(acc, g)
      m["final_td_error_norm"] = m["final_td_error_norm"].at[-1].set(final_norm)
    else:
      acc, state, m = scan_steps(step, params, state0, batch, hp, weights, acc0)
    aux = {"loss": objective(w, m["example_loss"]), "learning_signal": m["learning_signal"],
           "td_error_norm": m["td_error_norm"]}
    if eprop:  # the signals are one step late; the last one is ℓ_{T−1} alone
      H = model.cell.hidden_size
      last = jax.numpy.concatenate([state.lag.ell, jax.numpy.zeros_like(state.s[:, H:])], -1)
      aux["learning_signal"] = jax.numpy.concatenate([m["learning_signal"][1:], last[None]])
      aux["td_error_norm"] = jax.numpy.concatenate([m["td_error_norm"],
                                                    m["final_td_error_norm"][-1:]])
    return acc, aux

  return grads


def _scan_all(step, params, state, batch, hparams, weights, acc0):
  """Σ_t of ``step`` over every step of a batch with ``last=False``: (grads, state, metrics)."""
  def body(carry, inp):
    st, acc = carry
    g, st, met = step(params, st, *inp, hparams, last=False)
    return (st, base.add_trees(acc, g)), met

  (state, acc), metrics = jax.lax.scan(body, (state, acc0), (batch.x, batch.y, weights))
  return acc, state, metrics


def _resolve_trace(trace, trace_chunk, synthesiser) -> str:
  """The trace form after ``trace_chunk``'s shorthand; ValueError for invalid combinations."""
  if trace not in TRACES:
    raise ValueError(f"trace must be one of {TRACES}, got {trace!r}.")
  if trace_chunk is not None:
    trace_chunk = _validation.integer("trace_chunk", trace_chunk, minimum=0,
                                      what="None or an int >= 0 (0: dense trace)")
    if trace == "auto":
      trace = "chunked" if trace_chunk else "dense"
    elif trace != ("chunked" if trace_chunk else "dense"):
      raise ValueError(f"trace_chunk={trace_chunk} selects the "
                       f"{'chunked' if trace_chunk else 'dense'} trace, but trace={trace!r}; "
                       f"pass trace_chunk only with trace='auto' or "
                       f"trace='{'chunked' if trace_chunk else 'dense'}'.")
  if trace in ("chunked",) + _structured.STRUCTURES and not synthesiser.linear:
    what = f"trace_chunk={trace_chunk} (the chunked trace)" if trace_chunk else f"trace={trace!r}"
    raise ValueError(f"{what} needs a linear synthesiser; {synthesiser.name!r} uses the dense "
                     f"trace (trace='dense' or 'auto').")
  return trace


__all__ = ["BPLambdaState", "EpropLag", "FLAVOURS", "TDState", "TRACES", "bp_lambda"]
