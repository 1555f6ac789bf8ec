"""The learning-rule protocol shared by every rule, and its hyper-parameter checks.

A :class:`Rule` is a NamedTuple of pure functions closed over the model and the rule's static
choices (modelled on ``optax.GradientTransformation``). Two levels:

* **Sequence level**, every rule::

      params = rule.init(key)                          # {'cell', 'readout'[, 'synth']}
      grads, aux = rule.grads(params, batch)           # grads: same tree as params
      grads, aux = rule.grads(params, batch, {'lambda_': 0.5})   # vmappable hyper-parameters

  ``grads`` is a *descent* direction for every group, ready for an optax optimiser (the
  synthesiser's entry is minus the accumulated TD increment). ``aux`` always holds ``'loss'`` (the
  batch objective, a scalar) and ``'learning_signal'`` ([T, B, n]: the signal the rule credits to
  each state s_t, per example), plus rule-specific diagnostics.

* **Step level**, every online rule (and, one chunk of n steps at a time, truncated BPTT and
  DNI)::

      state = rule.init_state(params, batch_size)      # a named <Rule>State NamedTuple
      grads_t, state, metrics_t = rule.step(params, state, x_t, y_t, mask_t, hparams, last=False)

  ``x_t [B, D_in]``, ``y_t [B, D_out]`` or int ``[B]``, ``mask_t [B]`` (the weight of step t's loss
  for each example). ``grads_t`` is the step's share of the descent direction; summed over the
  steps of a sequence (with ``mask_t`` = mask/Σ_t mask and ``last=True`` at its final step) it is
  ``grads`` of the sequence, which is exactly how the online modes compute ``grads``. Users can
  stream an unbounded sequence, carry state across batches and apply an optimiser after every
  step (:func:`bplambda_jax.training.stream`). ``last`` marks the final step of a sequence (the
  synthesiser's prediction of the empty future is 0, lagged credit is flushed); after it, start
  the next sequence from a fresh ``init_state``. For chunk rules (``rule.chunk`` = n) ``step``
  takes ``x [n, B, D_in]``, ``y``, ``mask [n, B]``.

Numeric hyper-parameters live in ``rule.hparams`` (an immutable mapping of floats) and may be
overridden per call with arrays, so a sweep over λ or γ is a ``jax.vmap``, not a recompile.
"""

from __future__ import annotations

import types
from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

Params = Any

MODES = ("online", "sequence")


class Rule(NamedTuple):
  """A learning rule (see the module docstring).

  Attributes:
    name: the rule's spec, e.g. 'bptt', 'tbptt:3', 'bp_lambda', 'snap:2'.
    init: ``init(key) -> params``.
    grads: ``grads(params, batch, hparams=None) -> (grads, aux)``.
    hparams: default numeric hyper-parameters (an immutable mapping of Python floats).
    mode: how ``grads`` computes: 'online' (a scan over ``step``; memory independent of T) or
      'sequence' (stores the sequence: BPTT and the exact sequence modes).
    init_state: ``init_state(params, batch_size) -> state``, or None (BPTT).
    step: ``step(params, state, x_t, y_t, mask_t, hparams=None, *, last=False)
      -> (grads_t, state, metrics_t)``, or None.
    chunk: None for per-step rules; n for rules whose ``step`` takes a chunk of n steps.
    model: the model the rule was built for.
  """

  name: str
  init: Callable[..., Params]
  grads: Callable[..., tuple[Params, dict]]
  hparams: Mapping[str, float]
  mode: str
  init_state: Optional[Callable[..., Any]] = None
  step: Optional[Callable[..., tuple]] = None
  chunk: Optional[int] = None
  model: Any = None


def frozen(hparams: Mapping[str, float]) -> Mapping[str, float]:
  """An immutable copy of a hyper-parameter dict."""
  return types.MappingProxyType(dict(hparams))


def _concrete(value):
  return not isinstance(value, jax.core.Tracer)


def check_unit_interval(name: str, value) -> None:
  """ValueError unless ``value`` is a scalar in [0, 1] (traced values: the rank only)."""
  check_scalar(name, value)
  if _concrete(value):
    v = float(np.asarray(value))
    if not (np.isfinite(v) and 0.0 <= v <= 1.0):
      raise ValueError(f"{name} must lie in [0, 1], got {value!r}.")


def check_nonnegative(name: str, value) -> None:
  """ValueError unless ``value`` is a finite scalar >= 0 (traced values: the rank only)."""
  check_scalar(name, value)
  if _concrete(value):
    v = float(np.asarray(value))
    if not (np.isfinite(v) and v >= 0.0):
      raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")


def check_scalar(name: str, value) -> None:
  """ValueError unless ``value`` is a real scalar (rank 0; sweep over values with vmap)."""
  if jnp.ndim(value) != 0:
    raise ValueError(f"{name} must be a scalar (one value per call; use jax.vmap to sweep), got "
                     f"shape {jnp.shape(value)}.")
  if not jnp.issubdtype(jnp.result_type(value), jnp.number) or jnp.issubdtype(
      jnp.result_type(value), jnp.complexfloating):
    raise ValueError(f"{name} must be a real number, got {value!r}.")


def merge_hparams(defaults: Mapping[str, float], hparams, checks: Mapping[str, Callable], dtype):
  """Defaults overridden by ``hparams``, checked, as arrays of ``dtype``; unknown keys: error."""
  hparams = dict(hparams or {})
  unknown = set(hparams) - set(defaults)
  if unknown:
    raise ValueError(f"unknown hyper-parameters {sorted(unknown)}; accepted: {sorted(defaults)}.")
  merged = {**defaults, **hparams}
  for k, check in checks.items():
    check(k, merged[k])
  return {k: jnp.asarray(v, dtype) for k, v in merged.items()}


def init_with_synthesiser(model, synthesiser, d_in: int, d_out: int) -> Callable:
  """``init(key) -> params``: the model's parameters plus ``'synth'``, ĝ from d_in to d_out."""

  def init(key):
    k1, k2 = jax.random.split(key)
    params = model.init(k1)
    params["synth"] = synthesiser.init(k2, d_in, d_out, model.param_dtype)
    return params

  return init


def zeros_like_tree(tree):
  return jax.tree.map(jnp.zeros_like, tree)


def add_trees(a, b):
  return jax.tree.map(lambda x, y: x + y.astype(x.dtype), a, b)


def check_step_inputs(model, x_t, y_t, mask_t, batch_size: Optional[int] = None) -> None:
  """Shapes of one step's inputs (x_t [B, D_in], y_t, mask_t [B]); ValueError naming the field.

  ``batch_size``: the B of the step state, when known.
  """
  if jnp.ndim(x_t) != 2 or x_t.shape[-1] != model.input_size:
    raise ValueError(f"x_t must have shape [B, {model.input_size}], got {jnp.shape(x_t)}.")
  B = x_t.shape[0]
  if batch_size is not None and B != batch_size:
    raise ValueError(f"x_t has batch size {B} but the state was made for batch size "
                     f"{batch_size} (init_state(params, {batch_size})); start a new state.")
  if not jnp.issubdtype(jnp.result_type(x_t), jnp.floating):
    raise ValueError(f"x_t must hold floating-point inputs, got dtype {jnp.result_type(x_t)}.")
  if model.loss.name == "ce":
    if jnp.shape(y_t) != (B,) or not jnp.issubdtype(jnp.result_type(y_t), jnp.integer):
      raise ValueError(f"y_t for loss 'ce' must be integer labels of shape [B] = ({B},), got "
                       f"{jnp.shape(y_t)} {jnp.result_type(y_t)}.")
  elif jnp.shape(y_t) != (B, model.output_size):
    raise ValueError(f"y_t must have shape [B, D_out] = {(B, model.output_size)}, got "
                     f"{jnp.shape(y_t)}.")
  if jnp.shape(mask_t) != (B,):
    raise ValueError(f"mask_t must have shape [B] = ({B},), got {jnp.shape(mask_t)}.")


def check_last(last) -> None:
  if isinstance(last, (bool, np.bool_)):
    return
  if jnp.ndim(last) != 0:
    raise ValueError(f"last must be a scalar bool (True at the final step of a sequence), got "
                     f"shape {jnp.shape(last)}.")
