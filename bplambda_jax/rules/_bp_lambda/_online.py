"""BP(λ)'s online mode: the per-step TD(λ) engine (``init_state`` and ``step``).

One TD step τ on a batch, with ĝ's input z_τ, its context ctx_τ and the "reward" u_τ:

    p_τ = ĝ_θ(z_τ)·(1 − final)                    δ_τ = (u_τ + γ·p_τ·M_τ − g_{τ−1})·(1 − first)
    E_τ = γλ·M_{τ−1}·E_{τ−1} + ∂ĝ(z_{τ−1})/∂θ     inc_τ = mean_b δ_τ·E_τ        (ascent)

and ĝ emitted at τ is g_τ = p_τ (or ĝ at the θ updated by the step's own SGD, ``synth_sgd``; the
order of the authors' per-step learning, quirk Q29). The step returns −inc_τ as the synthesiser's
descent direction. :func:`td_step` is this step; how E and M are stored is the rule's
:class:`~bplambda_jax.rules._bp_lambda._trace_forms.TraceForm`, chosen once by the factory.

Each flavour has its own step around :func:`td_step`, each in five parts: the network's step, the
sensitivity trace, the TD step (δ and E), the learning signal with ĝ, and the network's credit
(:func:`state_step`, :func:`eprop_step`).

Tested by tests/test_bp_lambda.py (the λ = γ = 1 oracle, TD(0), one step against ``jacrev``),
tests/test_step_protocol.py, tests/test_structured_traces.py, tests/test_traces.py and
tests/test_reference_emulation.py.
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np

from bplambda_jax import credit
from bplambda_jax.credit._sensitivities import _protocol
from bplambda_jax.credit._synth_traces import _structured
from bplambda_jax.model import Model, Synthesiser
from bplambda_jax.rules import _base as base
from bplambda_jax.rules._bp_lambda._flavours import HC, Context, eprop_q
from bplambda_jax.rules._bp_lambda._trace_forms import TDState, TraceForm, synth_apply
from bplambda_jax.rules._from_sensitivity import check_batch_size, param_dtype
from bplambda_jax.rules._signals import (hidden_signal, output_grads, pad_state, readout_grads,
                                         weighted_loss)

BIAS_NAMES = ("b", "b_ih", "b_hh", "bias")


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
    td: the synthesiser's :class:`TDState` (its ``m`` and ``trace`` in the rule's trace form).
    lag: :class:`EpropLag` in the e-prop flavour, None in the state flavour.
    t: steps taken, shape=(), int32.
  """

  s: jax.Array
  sens: chex.ArrayTree
  td: TDState
  lag: Optional[EpropLag]
  t: jax.Array


class Config(NamedTuple):
  """The static choices of one BP(λ) rule (built with keywords by :func:`bplambda_jax.bp_lambda`).

  Attributes:
    model: the recurrent model.
    synthesiser: ĝ.
    flavour: 'state' or 'eprop' (:mod:`bplambda_jax.rules._bp_lambda._flavours`).
    d_in, d_out: ĝ's input and output sizes.
    link: the flavour's ``link(cp, ctx, v) -> v·M`` per example.
    hc: the authors' [h, c] pieces (faithful state flavour of an LSTM-like cell, quirk Q1) or None.
    sens: the network's sensitivity.
    faithful: the authors' conventions (the factory's table).
    clip: per-step, per-tensor clipping of the synthesiser increment (quirk Q7).
    readout_scale: κ of the faithful readout gradient.
    bias_grad_scale: factor on the gradient of the cell's bias leaves (quirk Q12).
    structure: M's declared structure (the sequence mode's link by blocks), or None.
    trace: the online trace's form.
    trace_dtype: dtype of the step state's traces, or None (the parameters').
    defaults: the rule's default hyper-parameters (λ, γ, sg_scale).
  """

  model: Model
  synthesiser: Synthesiser
  flavour: str
  d_in: int
  d_out: int
  link: Callable
  hc: Optional[HC]
  sens: credit.Sensitivity
  faithful: bool
  clip: bool
  readout_scale: float
  bias_grad_scale: float
  structure: Optional[_structured.TraceStructure]
  trace: TraceForm
  trace_dtype: Optional[np.dtype]
  defaults: Mapping[str, float]


class Engine(NamedTuple):
  """The batched pieces of one rule's online step, built once by :func:`make_online`."""

  cfg: Config
  cell_step: Callable  # (cp, s_tm1 [B, n], x_t [B, D_in]) -> s_t [B, n]
  link: Callable  # (cp, ctx, v [B, d_out]) -> v·M [B, d_out]
  sens_update: Callable  # (cp, Z_{t−1}, s_tm1, x_t) -> Z_t
  synth: Callable  # (theta, frozen, z [B, d_in]) -> ĝ(z) [B, d_out]


class TDInputs(NamedTuple):
  """What TD step τ reads besides the TD state (module docstring). The sequence mode uses the
  same fields for all its TD steps at once, with a leading axis [N] (``first`` unused there).

  Attributes:
    z: ĝ's input z_τ, [B, d_in].
    ctx: the link context of M_τ (:data:`~bplambda_jax.rules._bp_lambda._flavours.Context`).
    u: the "reward" u_τ, [B, d_out].
    first: 1 at a sequence's first TD step (δ = 0, nothing traced), else 0; shape=(), or None.
    final: 1 at its final TD step (ĝ ≡ 0), else 0; shape=().
  """

  z: jax.Array
  ctx: Context
  u: jax.Array
  first: Optional[jax.Array]
  final: jax.Array


class TDResult(NamedTuple):
  """What TD step τ gives.

  Attributes:
    td: the TD state after the step.
    theta: θ after the step's own SGD (``synth_sgd``), else θ.
    inc: inc_τ = mean_b δ_τ·E_τ (ascent, clipped if the rule clips), θ's tree.
    g: ĝ emitted at τ, [B, d_out].
    delta_norm: the mean over the batch of ‖δ_τ‖, shape=().
  """

  td: TDState
  theta: chex.ArrayTree
  inc: chex.ArrayTree
  g: jax.Array
  delta_norm: jax.Array


def scale_biases(g, factor):
  """The gradient with every bias leaf (keys b, b_ih, b_hh, bias) times ``factor``."""
  if factor == 1.0:
    return g

  def one(path, leaf):
    key = path[-1]
    name = getattr(key, "key", getattr(key, "name", None))
    return leaf * factor if name in BIAS_NAMES else leaf

  return jax.tree_util.tree_map_with_path(one, g)


def network_grads(cfg: Config, cell_sum, B: int):
  """The cell's descent direction from the batch sum of its credit: the batch mean (or the sum,
  faithful), bias leaves scaled by ``bias_grad_scale``."""
  g = cell_sum if cfg.faithful else jax.tree.map(lambda a: a / B, cell_sum)
  return scale_biases(g, cfg.bias_grad_scale)


def readout_factor(cfg: Config, B: int) -> float:
  """The readout gradient's factor: κ (faithful) or the batch mean's 1/B."""
  return cfg.readout_scale if cfg.faithful else 1.0 / B


def td_step(eng: Engine, hp, cp, theta, frozen, td: TDState, inp: TDInputs,
            synth_sgd) -> TDResult:
  """One TD step (module docstring) in the rule's trace form."""
  form, gamma, lam = eng.cfg.trace, hp["gamma"], hp["lambda_"]
  keep = 1.0 - inp.final
  p = eng.synth(theta, frozen, inp.z) * keep  # ĝ(z_τ), [B, d_out]
  m = form.next_m(cp, inp.ctx, inp.z.dtype)  # M_τ, the next step's M_{τ−1}
  delta = (inp.u + gamma * form.apply_m(cp, inp.ctx, m, p) - td.g) * (1.0 - inp.first)  # [B, d_out]
  keep_trace = 1.0 - inp.first  # nothing is traced at the first step
  c = gamma * lam * keep_trace
  trace, inc = form.step(cp, theta, frozen, td, delta, c, keep_trace)  # E_τ, mean_b δ_τ·E_τ
  trace = jax.tree.map(lambda new, old: new.astype(old.dtype), trace, td.trace)
  inc = jax.tree.map(lambda d, t_: d.astype(t_.dtype), inc, theta)
  if eng.cfg.clip:  # quirk Q7: per tensor, per step
    inc = jax.tree.map(lambda d: d / jnp.maximum(1.0, jnp.linalg.norm(d.ravel())), inc)
  g = p
  if synth_sgd is not None:  # quirk Q29: ĝ emitted with the θ the step's own SGD produced
    theta = jax.tree.map(lambda t_, d: t_ + synth_sgd * d, theta, inc)
    g = eng.synth(theta, frozen, inp.z) * keep
  return TDResult(TDState(inp.z, g, m, trace), theta, inc, g,
                  jnp.mean(jnp.linalg.norm(delta, axis=-1)))


def state_step(eng: Engine, params, state: BPLambdaState, x_t, y_t, mask_t, hp, last, synth_sgd):
  """The state flavour: TD step τ = t on z_τ = s_t; the network learns from ls_t = v_t + sg·ĝ(s_t).

  v_t is ℓ_t in state space (or the authors' [ℓ, ℓ⊙D] with the [h, c] pieces); u_t = v_t·J_t.
  """
  cfg = eng.cfg
  cp, theta, frozen = params["cell"], params["synth"]["train"], params["synth"]["frozen"]
  dtype, s_tm1, ctx = x_t.dtype, state.s, (state.s, x_t)
  s = eng.cell_step(cp, s_tm1, x_t).astype(s_tm1.dtype)  # the network's step, s_t
  sens_t = eng.sens_update(cp, state.sens, s_tm1, x_t)  # its sensitivity trace, Z_t
  dy, loss = output_grads(cfg.model, params, s, y_t, mask_t, faithful=cfg.faithful)
  v = _state_vector(cfg, cp, ctx, hidden_signal(params, dy))
  inp = TDInputs(s, ctx, eng.link(cp, ctx, v), (state.t == 0).astype(dtype),
                 jnp.asarray(last, dtype))
  r = td_step(eng, hp, cp, theta, frozen, state.td, inp, synth_sgd)  # δ_t and E_t
  ls = v + hp["sg_scale"] * r.g  # the learning signal for s_t
  if cfg.hc:  # the network's credit
    cell_sum = _protocol.sum_leading(
        jax.vmap(cfg.hc.credit, in_axes=(None, 0, 0, 0))(cp, s_tm1, x_t, ls))
  else:
    cell_sum = _protocol.batch_credit(cfg.sens, cp, sens_t, s_tm1, x_t, ls)
  new = BPLambdaState(s, sens_t, r.td, None, state.t + 1)
  return _outputs(cfg, params, state, new, cell_sum, r.inc, dy, loss, mask_t, ls,
                  {"td_error_norm": r.delta_norm})


def _state_vector(cfg: Config, cp, ctx, ell_h):
  """ℓ_t in ĝ's output space: padded to [B, n], or the authors' [ℓ, ℓ⊙D] (quirk Q1)."""
  if cfg.hc:
    return jax.vmap(cfg.hc.vector, in_axes=(None, 0, 0))(cp, ctx, ell_h)
  return pad_state(ell_h, cfg.model.cell.state_size)


def eprop_step(eng: Engine, params, state: BPLambdaState, x_t, y_t, mask_t, hp, last, synth_sgd):
  """The e-prop flavour: TD step τ = t on z_τ = s_{t−1} with u_τ = ℓ_{t−1}⊙D_{t−1}; the network
  learns one step late, for s_{t−1}, from ℓ_{t−1} + sg·ĝ·∂c_t/∂h_{t−1}. At a sequence's last step
  a final TD step τ = T (ĝ ≡ 0) and the credit for s_{T−1} follow (:func:`_eprop_final`).
  """
  cfg = eng.cfg
  cell, n = cfg.model.cell, cfg.model.cell.state_size
  cp, theta, frozen = params["cell"], params["synth"]["train"], params["synth"]["frozen"]
  dtype, s_tm1, lag = x_t.dtype, state.s, state.lag
  first = (state.t == 0).astype(dtype)
  s = eng.cell_step(cp, s_tm1, x_t).astype(s_tm1.dtype)  # the network's step, s_t
  sens_t = eng.sens_update(cp, state.sens, s_tm1, x_t)  # its sensitivity trace, Z_t
  dy, loss = output_grads(cfg.model, params, s, y_t, mask_t, faithful=cfg.faithful)
  pi, f, o = jax.vmap(cell.lstm.c_partials, in_axes=(None, 0, 0))(cp, s_tm1, x_t)
  ctx = (pi, f, lag.d)
  inp = TDInputs(s_tm1, ctx, lag.ell * lag.d, first, jnp.zeros((), dtype))
  r = td_step(eng, hp, cp, theta, frozen, state.td, inp, synth_sgd)  # δ_t and E_t
  q = jax.vmap(eprop_q(cell), in_axes=(None, 0, 0))(cp, ctx, r.g)  # ĝ·∂c_t/∂h_{t−1}
  ls = pad_state(lag.ell + hp["sg_scale"] * q, n)  # the learning signal for s_{t−1}
  cell_sum = _protocol.batch_credit(cfg.sens, cp, state.sens, lag.s, lag.x, ls)  # its credit
  cell_sum = jax.tree.map(lambda a: a * (1.0 - first), cell_sum)
  lag_t = EpropLag(s_tm1, x_t, hidden_signal(params, dy),
                   cell.lstm.output_derivative(o, s[:, cell.hidden_size:]))
  new = BPLambdaState(s, sens_t, r.td, lag_t, state.t + 1)
  fin = _eprop_final(eng, hp, params, new, r, cell_sum, (pi, f), last, synth_sgd)
  return _outputs(cfg, params, state, new._replace(td=fin.td), base.add_trees(cell_sum, fin.credit),
                  base.add_trees(r.inc, fin.inc), dy, loss, mask_t, ls,
                  {"td_error_norm": r.delta_norm, "final_td_error_norm": fin.delta_norm})


class _Final(NamedTuple):
  td: TDState
  inc: chex.ArrayTree
  credit: chex.ArrayTree
  delta_norm: jax.Array


def _eprop_final(eng: Engine, hp, params, new: BPLambdaState, r: TDResult, cell_sum, pi_f, last,
                 synth_sgd) -> _Final:
  """At a sequence's last step (``last``, possibly traced) the final TD step τ = T from ``new``:
  ĝ ≡ 0, δ = ℓ_{T−1}⊙D_{T−1} − g_{T−1} (link context (π_T, f_T) = ``pi_f``, D_{T−1}), and the
  credit of ℓ_{T−1} alone for s_{T−1}; zeros like the step's own otherwise."""
  cfg, lag = eng.cfg, new.lag
  cp, frozen = params["cell"], params["synth"]["frozen"]

  def flush(args):
    td, theta = args
    zero, one = jnp.zeros((), lag.x.dtype), jnp.ones((), lag.x.dtype)
    inp = TDInputs(new.s, pi_f + (lag.d,), lag.ell * lag.d, zero, one)
    f = td_step(eng, hp, cp, theta, frozen, td, inp, synth_sgd)
    ell = pad_state(lag.ell, cfg.model.cell.state_size)
    return _Final(f.td, f.inc, _protocol.batch_credit(cfg.sens, cp, new.sens, lag.s, lag.x, ell),
                  f.delta_norm)

  def no_flush(args):
    return _Final(args[0], base.zeros_like_tree(r.inc), base.zeros_like_tree(cell_sum),
                  jnp.zeros((), r.delta_norm.dtype))

  if not isinstance(last, jax.core.Tracer):
    return (flush if bool(last) else no_flush)((r.td, r.theta))
  return jax.lax.cond(last, flush, no_flush, (r.td, r.theta))


def eprop_flush(eng: Engine, params, state: BPLambdaState, hp):
  """The e-prop flavour's end of a sequence after ``state``, the state of a step taken with
  ``last=False`` at its last step: that step's :func:`_eprop_final` part, on its own.

  ``step(..., last=True)`` equals ``step(..., last=False)`` followed by this (the grads add up;
  the TD state is this one's). The online ``grads`` runs every step in its scan and this once
  after it, so the credit for s_{T−1} reads Z_{T−1} from the scan's result: taken at the last step
  itself, XLA:CPU fuses Z_{T−1}'s update into that credit's reduction, several times slower than
  the two apart.

  Returns (grads, state, final_td_error_norm).
  """
  cfg, lag = eng.cfg, state.lag
  cp = params["cell"]
  pi, f, _ = jax.vmap(cfg.model.cell.lstm.c_partials, in_axes=(None, 0, 0))(cp, lag.s, lag.x)
  theta = params["synth"]["train"]  # no per-step SGD on θ within grads
  before = TDResult(state.td, theta, base.zeros_like_tree(theta), state.td.g,
                    jnp.zeros((), lag.x.dtype))
  fin = _eprop_final(eng, hp, params, state, before, base.zeros_like_tree(cp), (pi, f), True,
                     None)
  B = state.s.shape[0]
  grads = {
      "cell": jax.tree.map(lambda a, p_: a.astype(p_.dtype), network_grads(cfg, fin.credit, B),
                           cp),
      "readout": base.zeros_like_tree(params["readout"]),
      "synth": {"train": jax.tree.map(jnp.negative, fin.inc),
                "frozen": base.zeros_like_tree(params["synth"]["frozen"])},
  }
  new = state._replace(td=jax.tree.map(lambda a, b: a.astype(b.dtype), fin.td, state.td))
  return grads, new, fin.delta_norm


def _outputs(cfg: Config, params, state, new: BPLambdaState, cell_sum, synth_inc, dy, loss,
             mask_t, ls, metrics):
  """(grads_t, state, metrics_t) of a step: descent directions in the parameters' dtypes."""
  cp, frozen = params["cell"], params["synth"]["frozen"]
  B = new.s.shape[0]
  grads = {
      "cell": jax.tree.map(lambda a, p_: a.astype(p_.dtype), network_grads(cfg, cell_sum, B), cp),
      "readout": readout_grads(dy, cfg.model.cell.hidden(new.s), readout_factor(cfg, B)),
      "synth": {"train": jax.tree.map(jnp.negative, synth_inc),
                "frozen": base.zeros_like_tree(frozen)},
  }
  metrics.update(loss=weighted_loss(loss, mask_t), example_loss=loss, learning_signal=ls)
  return grads, jax.tree.map(lambda a, b: a.astype(b.dtype), new, state), metrics


def init_state(eng: Engine, params, batch_size, steps: Optional[int] = None) -> BPLambdaState:
  """The state before the first step; ``steps`` (the TD steps of a sequence, if known) lets
  the chunked trace skip its dense part when the whole sequence fits in one chunk."""
  cfg, model = eng.cfg, eng.cfg.model
  B = check_batch_size(batch_size)
  cp, theta = params["cell"], params["synth"]["train"]
  dtype = param_dtype(params)
  tdt = cfg.trace_dtype or jnp.result_type(*jax.tree.leaves(theta))
  m0, trace0 = cfg.trace.init(cp, theta, B, dtype, tdt, steps)
  td0 = TDState(jnp.zeros((B, cfg.d_in), dtype), jnp.zeros((B, cfg.d_out), dtype), m0, trace0)
  sens0 = jax.vmap(lambda _: cfg.sens.init(cp))(jnp.arange(B))
  if cfg.trace_dtype is not None:
    sens0 = jax.tree.map(lambda z: z.astype(cfg.trace_dtype), sens0)
  s0 = model.initial_states(params, B)
  lag = None
  if cfg.flavour == "eprop":
    zH = jnp.zeros((B, model.cell.hidden_size), dtype)
    lag = EpropLag(s0, jnp.zeros((B, model.input_size), dtype), zH, zH)
  return BPLambdaState(s0, sens0, td0, lag, jnp.zeros((), jnp.int32))


def make_online(cfg: Config):
  """(init_state, step, flush) of the online mode: the flavour's step chosen once; ``flush``
  is :func:`eprop_flush` in the e-prop flavour, None in the state flavour."""
  cell = cfg.model.cell
  eng = Engine(cfg, jax.vmap(cell.step, in_axes=(None, 0, 0)),
               jax.vmap(cfg.link, in_axes=(None, 0, 0)),
               jax.vmap(cfg.sens.update, in_axes=(None, 0, 0, 0)),
               jax.vmap(functools.partial(synth_apply, cfg.synthesiser), in_axes=(None, None, 0)))
  flavour_step = eprop_step if cfg.flavour == "eprop" else state_step

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
    hp = base.merge_hparams(cfg.defaults, hparams, CHECKS, x_t.dtype)
    base.check_step_inputs(cfg.model, x_t, y_t, mask_t, state.s.shape[0])
    base.check_last(last)
    if synth_sgd is not None:
      base.check_nonnegative("synth_sgd", synth_sgd)
    return flavour_step(eng, params, state, x_t, y_t, mask_t, hp, last, synth_sgd)

  flush = None
  if cfg.flavour == "eprop":
    def flush(params, state, hparams=None):
      return eprop_flush(eng, params, state, base.merge_hparams(cfg.defaults, hparams, CHECKS,
                                                               state.s.dtype))

  return functools.partial(init_state, eng), step, flush


CHECKS = {"lambda_": base.check_unit_interval, "gamma": base.check_unit_interval,
          "sg_scale": base.check_nonnegative}
