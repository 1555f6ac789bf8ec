"""Streaming: an online rule's ``step`` with an optimiser update every k steps (or every step).

::

    drv = stream(rule, optimiser(1e-3, 1e-3, 1e-5), every=1)    # update after every step
    state = drv.init(params, batch_size)
    state, metrics = drv.step(state, x_t, y_t, mask_t)         # x_t [B, D_in]
    state, metrics = drv.run(state, xs, ys, masks)             # a segment [T, B, ...], lax.scan

Each call of ``step`` runs ``rule.step``, adds its gradients to an accumulator and, when ``every``
steps have been accumulated (or at the ``last`` step of a sequence), applies the optimiser to the
accumulated gradients. After a ``last`` step the rule's state starts afresh (the next sequence
begins from the cell's initial state). ``every=None`` updates once per sequence, at its last step,
which is how ``rule.grads`` plus one optimiser step trains: ``run`` then needs ``lasts`` (without
sequence ends it would never update, so it refuses).

``synth_sgd=α`` is the authors' per-step synthesiser learning (their ``alpha_learning`` with rate
``synth_alpha``): plain SGD θ ← θ − α·(step gradient) on the synthesiser at *every* step, applied
inside the step between its TD update and the emission of ĝ (quirk Q29), while the other groups
follow ``every`` and the optimiser (whose synthesiser group then receives zero gradients). SGD is
linear, so applying it here after the step gives exactly the θ the step used.

For chunk rules (truncated BPTT, DNI: ``rule.chunk`` = n) a step is a chunk ([n, B, ...] inputs)
and ``every`` counts chunks; ``every=1`` is the authors' ``opt_each_trunc``.

``checked=True`` (the default) checks every step on device as
:func:`bplambda_jax.training.make_update` does (the step's data, traced hyper-parameters, finite
loss, gradients, learning signals and parameters, divergence): the first failure's code is kept in
``StreamState.guard`` and ``metrics['guard']``, and from then on every step is skipped (the state
stays at its last good value). ``step`` and ``run`` called outside ``jit`` then raise
:class:`~bplambda_jax.training.GuardError` (one host read per call); under ``jit`` call
:func:`~bplambda_jax.training.raise_if_failed` on the returned state or metrics.
``checked=False`` opts out.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from bplambda_jax import _validation
from bplambda_jax.model import Batch
from bplambda_jax.rules import Rule
from bplambda_jax.training import _guards as guards

Params = Any


class StreamState(NamedTuple):
  """Everything that changes while streaming.

  Attributes:
    params: the parameters {'cell', 'readout'[, 'synth']}.
    opt_state: the optax state.
    rule_state: the rule's step state (its ``init_state``).
    acc: gradients accumulated since the last optimiser update, like params.
    count: steps accumulated since the last update, shape=(), int32.
    step: steps taken, shape=(), int32.
    updates: optimiser updates applied, shape=(), int32.
    guard: the code of the first failed check (0: none; ``checked=True`` only), shape=(), int32.
  """

  params: Params
  opt_state: Any
  rule_state: Any
  acc: Params
  count: jax.Array
  step: jax.Array
  updates: jax.Array
  guard: jax.Array


class Stream(NamedTuple):
  """A streaming driver (see the module docstring).

  Attributes:
    init: ``init(params, batch_size) -> StreamState``.
    step: ``step(state, x_t, y_t, mask_t, hparams=None, *, last=False) -> (state, metrics_t)``.
    run: ``run(state, xs, ys, masks, hparams=None, *, lasts=None) -> (state, metrics)``: ``step``
      scanned over the leading (time or chunk) axis of a segment; ``lasts`` [T] bool marks
      sequence ends (default: none, an unbounded stream).
  """

  init: Callable[..., StreamState]
  step: Callable[..., tuple]
  run: Callable[..., tuple]


def _check_arguments(rule, every, synth_sgd, checked, divergence):
  """The stream's arguments checked: (checked, divergence, every, synth_sgd)."""
  if rule.step is None or rule.init_state is None:
    raise ValueError(f"rule {rule.name!r} has no step-level protocol (it needs whole sequences); "
                     f"use training.make_update.")
  if _validation.flag("checked", checked) and rule.model is None:
    raise ValueError(f"the checked stream (the default) needs a rule built for a model to check "
                     f"its data; rule {rule.name!r} has rule.model = None. Build the rule with "
                     f"model=..., or pass checked=False to stream without checks.")
  divergence = guards.check_divergence(divergence)
  if every is not None:
    every = _validation.integer("every", every, minimum=1, what="None or a positive integer")
  if synth_sgd is not None:
    if "synth_sgd" not in inspect.signature(rule.step).parameters:
      raise ValueError(f"synth_sgd is per-step learning of a BP(λ) synthesiser; rule "
                       f"{rule.name!r} has none.")
    synth_sgd = _validation.number("synth_sgd", synth_sgd, minimum=0.0)
  return bool(checked), divergence, every, synth_sgd


def _apply(opt, args):
  """One optimiser update with the accumulated gradients; the accumulator restarts at zero."""
  params, opt_state, acc = args
  updates, opt_state = opt.update(acc, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, jax.tree.map(jnp.zeros_like, acc)


def stream(rule: Rule, opt: optax.GradientTransformation, *, every: Optional[int] = 1,
           synth_sgd: Optional[float] = None, checked: bool = True,
           divergence: Optional[guards.Divergence] = guards.Divergence()) -> Stream:
  """A streaming driver for an online rule.

  Args:
    rule: a rule with a step-level protocol (every online rule, truncated BPTT, DNI).
    opt: the optimiser, e.g. :func:`bplambda_jax.training.optimiser`.
    every: apply ``opt`` after this many steps (chunks); None: only at the last step of each
      sequence. A sequence's last step always applies it.
    synth_sgd: per-step SGD rate on the synthesiser (the authors' ``alpha_learning``), a finite
      number >= 0, or None.
    checked: check every step on device (see the module docstring); False opts out.
    divergence: the divergence limits (see :func:`bplambda_jax.training.make_update`).
  """
  checked, divergence, every, synth_sgd = _check_arguments(rule, every, synth_sgd, checked,
                                                          divergence)
  kw = {} if synth_sgd is None else {"synth_sgd": synth_sgd}

  def init(params, batch_size):
    zero = jnp.zeros((), jnp.int32)
    return StreamState(params, opt.init(params), rule.init_state(params, batch_size),
                       jax.tree.map(jnp.zeros_like, params), zero, zero, zero, zero)

  def step(state, x_t, y_t, mask_t, hparams=None, *, last=False):
    new, metrics = _checked_step(state, x_t, y_t, mask_t, hparams, last)
    _raise_if_failed(new, metrics, ())
    return new, metrics

  def _checked_step(state, x_t, y_t, mask_t, hparams, last):
    new, metrics, grads = _step(state, x_t, y_t, mask_t, hparams, last)
    if not checked:
      return new, metrics
    batch = Batch(x_t, y_t, mask_t)
    code = guards.first_failure(
        *guards.input_checks(rule.model.output_size, rule.model.loss.name, batch, hparams),
        *guards.output_checks(metrics["loss"], grads, metrics["learning_signal"], state.params,
                              divergence))
    code = jnp.where(state.guard != 0, state.guard, code)
    new = guards.keep_if_ok(code, new._replace(guard=code), state._replace(guard=code))
    return new, {**metrics, "guard": code}

  def _raise_if_failed(state, metrics, axes):
    """Outside jit: one host read of the guard, a GuardError if a step failed."""
    if checked and not guards.is_traced(state.guard) and int(state.guard):
      guards.raise_if_failed(metrics, rule=rule.name, state=state, axes=axes)

  def _step(state, x_t, y_t, mask_t, hparams, last):
    params = state.params
    grads, rule_state, metrics = rule.step(params, state.rule_state, x_t, y_t, mask_t, hparams,
                                           last=last, **kw)
    if synth_sgd is not None:
      train = jax.tree.map(lambda p, g: p - synth_sgd * g, params["synth"]["train"],
                           grads["synth"]["train"])
      params = {**params, "synth": {**params["synth"], "train": train}}
      grads = {**grads, "synth": jax.tree.map(jnp.zeros_like, grads["synth"])}
    acc = jax.tree.map(lambda a, g: a + g.astype(a.dtype), state.acc, grads)
    count = state.count + 1
    do = jnp.asarray(last) if every is None else (count >= every) | jnp.asarray(last)
    params, opt_state, acc = jax.lax.cond(do, functools.partial(_apply, opt), lambda args: args,
                                          (params, state.opt_state, acc))
    fresh = rule.init_state(params, x_t.shape[-2])  # B: x_t is [B, D_in] or a chunk [n, B, D_in]
    rule_state = jax.tree.map(lambda f, r: jnp.where(last, f, r), fresh, rule_state)
    new = StreamState(params, opt_state, rule_state, acc, jnp.where(do, 0, count),
                      state.step + 1, state.updates + do.astype(jnp.int32), state.guard)
    return new, metrics, grads

  def run(state, xs, ys, masks, hparams=None, *, lasts=None):
    T = jax.tree.leaves(xs)[0].shape[0]
    if lasts is None and every is None:
      raise ValueError("stream(every=None) updates only at the last step of a sequence, and run "
                       "was given no lasts (an unbounded stream): it would never update. Pass "
                       "lasts, a [T] bool array marking the sequence ends, or use every=k.")
    lasts = jnp.zeros((T,), bool) if lasts is None else jnp.asarray(lasts, bool)
    if lasts.shape != (T,):
      raise ValueError(f"lasts must have shape [T] = ({T},), got {lasts.shape}.")

    def body(st, inp):
      x, y, m, last = inp
      return _checked_step(st, x, y, m, hparams, last=last)

    state, metrics = jax.lax.scan(body, state, (xs, ys, masks, lasts))
    _raise_if_failed(state, metrics, ("update",))
    return state, metrics

  return Stream(init, step, run)
