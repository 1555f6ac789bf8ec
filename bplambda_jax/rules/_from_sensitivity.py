"""Online rules from a sensitivity and the immediate loss gradient: RTRL, e-prop, SnAp-n, ...

Every online rule contracts a learning signal with a sensitivity (the two axes of credit
assignment): the gradient estimate for the recurrent parameters Ψ is

    ĝ_Ψ = mean_b Σ_t ls_{t,b}·Z_{t,b},      Z_t = A_t·Z_{t−1} + Ī_t

(:mod:`bplambda_jax.credit` gives Z for each sensitivity). :func:`from_sensitivity` builds the rule
whose learning signal is the immediate loss gradient ℓ_t = ∂(w_t·loss_t)/∂s_t, per example (zero
on the non-hidden part of s); the readout gets its exact gradient, which is immediate. Which rule
each combination gives:

=================  ===============================  =========================================
sensitivity        signal ℓ_t (this module)         signal ℓ_t + ĝ(s_t) (BP(λ)), sensitivity=
=================  ===============================  =========================================
``immediate``      one-step truncated gradient      ``bp_lambda(model, flavour='state')``
``eprop``          e-prop, :func:`eprop`            ``bp_lambda(model, sensitivity='eprop')``
``eprop_m:m``      m-order e-prop, :func:`eprop_m`  ``'eprop_m:1'``
``snap:n``         SnAp-n, :func:`snap`             ``'snap:2'`` (online mode only)
``columnar_rtrl``  :func:`columnar_rtrl`            ``'columnar_rtrl'``
``rtrl``           RTRL = the exact gradient        ``'rtrl'``
=================  ===============================  =========================================

The third learning signal, the exact total gradient dL/ds_t, with the immediate sensitivity is
BPTT (:func:`bplambda_jax.bptt`); RTRL with the immediate signal equals BPTT too, which is the
oracle the tests use.

Modes of ``grads``: ``'online'`` scans ``step`` (Z in the scan state, memory independent of T).
``'sequence'`` computes the same numbers backwards with the sensitivity's reverse form (a
co-state recursion of vector–Jacobian products, about the cost of one BPTT pass); it exists for
every sensitivity above except SnAp, whose mask acts entry-wise on Z. ``step`` is the online step
in both modes.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from bplambda_jax import _validation
from bplambda_jax import credit
from bplambda_jax.credit import _reverse
from bplambda_jax.credit._sensitivities import _protocol
from bplambda_jax.model import Batch, Model, objective, step_weights, validate_batch
from bplambda_jax.rules import _base as base
from bplambda_jax.rules._signals import (hidden_signal, output_grads, pad_state, readout_grads,
                                         weighted_loss)


class OnlineState(NamedTuple):
  """The state of a sensitivity rule between two steps.

  Attributes:
    s: s_{t−1}, the recurrent state, [B, n].
    sens: Z_{t−1}, the sensitivity's traces (leaves with a leading [B] axis).
    t: steps taken, shape=(), int32.
  """

  s: jax.Array
  sens: Any
  t: jax.Array


def check_batch_size(batch_size) -> int:
  return _validation.integer("batch_size", batch_size, minimum=1)


def param_dtype(params):
  return jnp.result_type(*jax.tree.leaves(params["cell"]))


def scan_steps(rule_step, params, state, batch: Batch, hparams, weights, acc0):
  """Σ_t of ``rule_step`` over a batch from ``state``, last=True at the final step.

  The first T − 1 steps run in a ``lax.scan`` with ``last=False`` and the final step after it
  with ``last=True``, both as Python bools: the scan body then holds no conditional on ``last``
  (a ``lax.cond`` inside the scan would carry the whole step state through both branches at
  every step). The numbers are those of one scan with a traced ``last``.

  Returns (accumulated grads, final state, stacked metrics [T, ...]).
  """
  def body(carry, inp):
    st, acc = carry
    x, y, m = inp
    g, st, met = rule_step(params, st, x, y, m, hparams, last=False)
    return (st, base.add_trees(acc, g)), met

  head = (batch.x[:-1], batch.y[:-1], weights[:-1])
  (state, acc), metrics = jax.lax.scan(body, (state, acc0), head)
  g, state, final = rule_step(params, state, batch.x[-1], batch.y[-1], weights[-1], hparams,
                              last=True)
  metrics = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), metrics, final)
  return base.add_trees(acc, g), state, metrics


def from_sensitivity(model: Model, sensitivity, *, mode: str = "online",
                     trace_dtype=None) -> base.Rule:
  """The rule (sensitivity × immediate learning signal) as a :class:`~bplambda_jax.Rule`.

  grads['cell'] = mean_b Σ_t ℓ_{t,b}·Z_{t,b} and grads['readout'] = the exact readout gradient,
  with ℓ_t = ∂(w_t·loss_t)/∂s_t (per example, no 1/B). Gradients are descent directions.

  Args:
    model: the recurrent model.
    sensitivity: a name accepted by :func:`bplambda_jax.credit.get_sensitivity` ('rtrl', 'eprop',
      'snap:2', 'columnar_rtrl', 'eprop_m:1', ...) or a ready ``Sensitivity``.
    mode: how ``grads`` computes, 'online' (a scan of ``step``) or 'sequence' (the reverse form;
      same numbers).
    trace_dtype: dtype of the sensitivity traces in the step state (None: the parameters'
      dtype); e.g. float32 traces for a bfloat16 model.

  Returns:
    A rule named after the sensitivity, with ``init_state``/``step`` (:class:`OnlineState`).
    ``grads`` returns {'cell', 'readout'} (and a zero 'synth' entry if params carry one) and aux
    with 'loss' (scalar) and 'learning_signal' ℓ [T, B, n]. Step metrics: 'loss' (the step's
    weighted loss), 'example_loss' [B], 'learning_signal' [B, n].
  """
  if mode not in base.MODES:
    raise ValueError(f"mode must be one of {base.MODES}, got {mode!r}.")
  cell = model.cell
  sens = credit.get_sensitivity(sensitivity, cell)
  if mode == "sequence" and sens.reverse is None:
    raise ValueError(f"mode='sequence' needs a sensitivity with a reverse form; {sens.name!r} has "
                     f"none. Use mode='online'.")
  n = cell.state_size
  step_b = jax.vmap(cell.step, in_axes=(None, 0, 0))
  update_b = jax.vmap(sens.update, in_axes=(None, 0, 0, 0))

  def init(key):
    return model.init(key)

  def init_state(params, batch_size):
    B = check_batch_size(batch_size)
    cp = params["cell"]
    z0 = jax.vmap(lambda _: sens.init(cp))(jnp.arange(B))
    if trace_dtype is not None:
      z0 = jax.tree.map(lambda z: z.astype(trace_dtype), z0)
    return OnlineState(model.initial_states(params, B), z0, jnp.zeros((), jnp.int32))

  def step(params, state, x_t, y_t, mask_t, hparams=None, *, last=False):
    base.merge_hparams({}, hparams, {}, x_t.dtype)
    base.check_step_inputs(model, x_t, y_t, mask_t, state.s.shape[0])
    base.check_last(last)
    del last  # no lagged terms: every step's credit is complete
    cp = params["cell"]
    B = x_t.shape[0]
    s = step_b(cp, state.s, x_t).astype(state.s.dtype)
    z = update_b(cp, state.sens, state.s, x_t)
    z = jax.tree.map(lambda new, old: new.astype(old.dtype), z, state.sens)
    dy, loss = output_grads(model, params, s, y_t, mask_t)
    ell = pad_state(hidden_signal(params, dy), n)  # [B, n]
    cell_sum = _protocol.batch_credit(sens, cp, z, state.s, x_t, ell)  # Σ_b ℓ_b·Z_b
    grads = {"cell": jax.tree.map(lambda g, p: (g / B).astype(p.dtype), cell_sum, cp),
             "readout": readout_grads(dy, cell.hidden(s), 1.0 / B)}
    if "synth" in params:
      grads["synth"] = base.zeros_like_tree(params["synth"])
    metrics = {"loss": weighted_loss(loss, mask_t), "example_loss": loss,
               "learning_signal": ell}
    return grads, OnlineState(s, z, state.t + 1), metrics

  def grads(params, batch, hparams=None):
    base.merge_hparams({}, hparams, {}, batch.x.dtype)
    validate_batch(model, batch)
    w = step_weights(batch.mask).astype(batch.x.dtype)
    if mode == "online":
      acc, _, metrics = scan_steps(step, params, init_state(params, batch.x.shape[1]), batch,
                                   None, w, base.zeros_like_tree(params))
      return acc, {"loss": objective(w, metrics["example_loss"]),
                   "learning_signal": metrics["learning_signal"]}
    return sequence_grads(params, batch, w)

  def sequence_grads(params, batch, w):
    cp = params["cell"]
    B = batch.x.shape[1]
    s0 = model.initial_states(params, B)
    states = jax.lax.scan(lambda s, x: (step_b(cp, s, x),) * 2, s0, batch.x)[1]  # [T, B, n]
    dy, loss = jax.vmap(lambda s, y, m: output_grads(model, params, s, y, m))(states, batch.y, w)
    ell = pad_state(hidden_signal(params, dy), n)  # [T, B, n]
    cell_sum = _reverse.sequence_credit(sens, cell.step, cp, ell, states, batch.x, s0)
    out = {"cell": jax.tree.map(lambda g: g / B, cell_sum),
           "readout": readout_grads(dy.reshape(-1, dy.shape[-1]),
                                    cell.hidden(states).reshape(-1, cell.hidden_size), 1.0 / B)}
    if "synth" in params:
      out["synth"] = base.zeros_like_tree(params["synth"])
    return out, {"loss": objective(w, loss), "learning_signal": ell}

  return base.Rule(sens.name, init, grads, base.frozen({}), mode, init_state, step,
                   model=model)


def rtrl(model: Model, *, mode: str = "online") -> base.Rule:
  """Exact RTRL with the immediate signal (equals BPTT). O(n·P) memory per example."""
  return from_sensitivity(model, credit.rtrl(model.cell), mode=mode)


def eprop(model: Model, *, mode: str = "online", compressed: Optional[bool] = None) -> base.Rule:
  """e-prop (Bellec et al. 2020) with the immediate signal.

  See :func:`bplambda_jax.credit.eprop`.
  """
  return from_sensitivity(model, credit.eprop(model.cell, compressed), mode=mode)


def snap(model: Model, n: int, *, compressed: Optional[bool] = None) -> base.Rule:
  """SnAp-n (Menick et al. 2021) with the immediate signal; online mode only."""
  return from_sensitivity(model, credit.snap(model.cell, n, compressed), mode="online")


def columnar_rtrl(model: Model, *, mode: str = "online",
                  compressed: Optional[bool] = None) -> base.Rule:
  """Columnar RTRL (Javed et al. 2021); exact for cells of independent units (columns)."""
  return from_sensitivity(model, credit.columnar_rtrl(model.cell, compressed), mode=mode)


def eprop_m(model: Model, m: int, *, mode: str = "online") -> base.Rule:
  """m-order e-prop (m = 0: e-prop; m ≥ T − 1: RTRL) with the immediate signal."""
  return from_sensitivity(model, credit.eprop_m(model.cell, m), mode=mode)
