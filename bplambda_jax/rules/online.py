"""Online rules from a sensitivity and the immediate loss gradient: RTRL, e-prop, SnAp-n, ...

Every online rule contracts a learning signal with a sensitivity (``design.md``, "two axes of
credit assignment"): the gradient estimate for the recurrent parameters Ψ is

    ĝ_Ψ = mean_b Σ_t ls_{t,b}·Z_{t,b},      Z_t = A_t·Z_{t−1} + Ī_t

(:mod:`bplambda_jax.sensitivity` gives Z for each sensitivity). :func:`online` builds the rule whose
learning signal is the immediate loss gradient ℓ_t = ∂(w_t·loss_t)/∂s_t, per example (the
objective's step weight w_t included, zero on the non-hidden part of s); the readout gets its exact
gradient, which is immediate. Which rule each combination gives:

=================  ===============================  =========================================
sensitivity        signal ℓ_t (this module)         signal ℓ_t + ĝ(s_t) (BP(λ)), sensitivity=
=================  ===============================  =========================================
``immediate``      one-step truncated gradient      ``bp_lambda(model)`` (the default)
``eprop``          e-prop, :func:`eprop`            ``bp_lambda(model, sensitivity='eprop')``
``eprop_m<m>``     m-order e-prop, :func:`eprop_m`  ``'eprop_m1'`` (see Modes for m ≥ 1)
``snap<n>``        SnAp-n, :func:`snap`             ``'snap2'`` (online mode only)
``columnar_rtrl``  :func:`columnar_rtrl`            ``'columnar_rtrl'`` (columnar_lstm only)
``rtrl``           RTRL = the exact gradient        ``'rtrl'``
=================  ===============================  =========================================

The third learning signal, the exact total gradient dL/ds_t, with the immediate sensitivity is
BPTT (:func:`bplambda_jax.rules.bptt`); RTRL with the immediate signal equals BPTT too, which is
the oracle the tests use.

Modes: ``'online'`` carries Z in the ``lax.scan`` state (memory independent of T). ``'sequence'``
computes the same numbers backwards with the sensitivity's reverse form
(:func:`bplambda_jax.sensitivity.reverse_form`: a co-state recursion of vector–Jacobian products,
about the cost of one BPTT pass); it exists for every sensitivity above except SnAp, whose mask
acts entry-wise on Z. ``bp_lambda``'s sequence mode uses the same reverse forms.

The convenience factories here (:func:`rtrl`, :func:`eprop`, :func:`snap`,
:func:`columnar_rtrl`, :func:`eprop_m`) take a *model* and return a rule; they share their names
with the sensitivity factories of :mod:`bplambda_jax.sensitivity`, which take a *cell* and return
a :class:`~bplambda_jax.sensitivity.Sensitivity`. Import them through their modules
(``rules.online.eprop`` vs ``sensitivity.eprop``) to keep the two apart.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from bplambda_jax import model as model_lib
from bplambda_jax import sensitivity as sens_lib
from bplambda_jax.rules import base

SIGNALS = ("immediate",)
MODES = ("online", "sequence")


def online(model: model_lib.Model, sensitivity, *, signal: str = "immediate",
           mode: str = "online") -> base.Rule:
  """The rule (sensitivity × immediate learning signal) as a :class:`~bplambda_jax.rules.base.Rule`.

  grads['cell'] = mean_b Σ_t ℓ_{t,b}·Z_{t,b} and grads['readout'] = the exact readout gradient,
  with ℓ_t = ∂(w_t·loss_t)/∂s_t (per example, no 1/B). Gradients are descent directions.

  Args:
    model: the recurrent model.
    sensitivity: a name accepted by :func:`bplambda_jax.sensitivity.get_sensitivity` (e.g.
      'rtrl', 'eprop', 'snap2', 'columnar_rtrl', 'eprop_m1') or a ready ``Sensitivity``.
    signal: the learning signal; 'immediate' is the one defined here (for immediate + synthetic
      gradients use :func:`bplambda_jax.rules.bp_lambda`, which takes the same sensitivities).
    mode: 'online' (forward traces in the scan state) or 'sequence' (reverse form; same numbers).

  Returns:
    A rule named after the sensitivity. ``grads(params, batch)`` returns {'cell', 'readout'} (and
    a zero 'synth' entry if params carry one) and aux with 'loss' (scalar) and
    'learning_signal' ℓ [T, B, n].
  """
  if signal not in SIGNALS:
    raise ValueError(f"signal must be one of {SIGNALS}, got {signal!r}; for immediate + "
                     f"synthetic-gradient signals use rules.bp_lambda(model, sensitivity=...).")
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
  cell = model.cell
  sens = sens_lib.get_sensitivity(sensitivity, cell)
  rev = sens_lib.reverse_form(sens)
  if mode == "sequence" and rev is None:
    raise ValueError(f"mode='sequence' needs a sensitivity with a reverse (adjoint) form; "
                     f"{sens.name!r} has none. Use mode='online'.")
  H, n = cell.hidden_size, cell.state_size

  def init(key):
    return model.init(key)

  def step_signal(params, s, y, w):
    """dy_t [D_out] = w_t·∂loss/∂y and ℓ_t [n] = dy_t·W_out on h, 0 elsewhere (one example)."""
    out = model.readout(params, s)
    dy = w * jax.grad(model.loss.value)(out, y)
    ell_h = dy @ params["readout"]["w"]  # [D_out]·[D_out, H] -> [H]
    return dy, jnp.concatenate([ell_h, jnp.zeros((n - H,), ell_h.dtype)])

  def finish(params, batch, states, dy, ell, cell_sum):
    B = batch.x.shape[1]
    h = cell.hidden(states)
    grads = {
        "cell": jax.tree.map(lambda g: g / B, cell_sum),
        "readout": {"w": jnp.einsum("tbo,tbh->oh", dy, h) / B,  # [T,B,D_out]·[T,B,H]
                    "b": jnp.sum(dy, axis=(0, 1)) / B},
    }
    if "synth" in params:
      grads["synth"] = jax.tree.map(jnp.zeros_like, params["synth"])
    w = model_lib.step_weights(batch.mask)
    per_step = jax.vmap(jax.vmap(model.loss.value))(model.readout(params, states), batch.y)
    loss = jnp.sum(w * per_step) / B
    return grads, {"loss": loss, "learning_signal": ell}

  signal_b = jax.vmap(step_signal, in_axes=(None, 0, 0, 0))

  def online_grads(params, batch):
    cp = params["cell"]
    B = batch.x.shape[1]
    w = model_lib.step_weights(batch.mask)
    step_b = jax.vmap(cell.step, in_axes=(None, 0, 0))
    update_b = jax.vmap(sens.update, in_axes=(None, 0, 0, 0))
    z0 = jax.vmap(lambda _: sens.init(cp))(jnp.arange(B))
    s0 = jnp.zeros((B, n), batch.x.dtype)
    acc0 = jax.tree.map(jnp.zeros_like, cp)

    def body(carry, inp):
      s_tm1, z, acc = carry
      x, y, wt = inp
      s = step_b(cp, s_tm1, x)
      z = update_b(cp, z, s_tm1, x)
      dy, ell = signal_b(params, s, y, wt)
      credit = sens_lib.batch_credit(sens, cp, z, s_tm1, x, ell)  # Σ_b ℓ_b·Z_b, like params
      acc = jax.tree.map(lambda a, c: a + c.astype(a.dtype), acc, credit)
      return (s, z, acc), (s, dy, ell)

    (_, _, acc), (states, dy, ell) = jax.lax.scan(body, (s0, z0, acc0), (batch.x, batch.y, w))
    return finish(params, batch, states, dy, ell, acc)

  def sequence_grads(params, batch):
    cp = params["cell"]
    w = model_lib.step_weights(batch.mask)
    states = model_lib.loss_and_states(model, params, batch)[1]  # [T, B, n]
    dy, ell = jax.vmap(signal_b, in_axes=(None, 0, 0, 0))(params, states, batch.y, w)
    cell_sum = sens_lib.sequence_credit(sens, cell, cp, ell, states, batch.x)
    return finish(params, batch, states, dy, ell, cell_sum)

  def grads(params, batch, hparams=None):
    base.merge_hparams({}, hparams, {})
    model_lib.validate_batch(model, batch)
    if mode == "online":
      return online_grads(params, batch)
    return sequence_grads(params, batch)

  return base.Rule(sens.name, init, grads, {}, online=(mode == "online"))


def rtrl(model: model_lib.Model, *, mode: str = "online") -> base.Rule:
  """Exact RTRL with the immediate signal (equals BPTT). O(n·P) memory per example."""
  return online(model, sens_lib.rtrl(model.cell), mode=mode)


def eprop(model: model_lib.Model, *, mode: str = "online",
          compressed: Optional[bool] = None) -> base.Rule:
  """e-prop (Bellec et al. 2020) with the immediate signal; see ``sensitivity.eprop``."""
  return online(model, sens_lib.eprop(model.cell, compressed), mode=mode)


def snap(model: model_lib.Model, n: int, *, compressed: Optional[bool] = None) -> base.Rule:
  """SnAp-n (Menick et al. 2021) with the immediate signal; online mode only."""
  return online(model, sens_lib.snap(model.cell, n, compressed), mode="online")


def columnar_rtrl(model: model_lib.Model, *, mode: str = "online",
                  compressed: Optional[bool] = None) -> base.Rule:
  """Columnar RTRL (Javed et al. 2021) for ``columnar_lstm`` models; exact without connections."""
  return online(model, sens_lib.columnar_rtrl(model.cell, compressed), mode=mode)


def eprop_m(model: model_lib.Model, m: int, *, mode: str = "online") -> base.Rule:
  """m-order e-prop (m = 0: e-prop; m ≥ T − 1: RTRL) with the immediate signal."""
  return online(model, sens_lib.eprop_m(model.cell, m), mode=mode)
