"""The learning-rule protocol shared by every rule.

A :class:`Rule` is a NamedTuple of pure functions closed over the model and the rule's static
choices (modelled on ``optax.GradientTransformation``)::

    rule = bp_lambda(model, synthesiser=linear(), lambda_=1.0, gamma=0.9)
    params = rule.init(key)                          # {'cell', 'readout'[, 'synth']}
    grads, aux = rule.grads(params, batch)           # grads: same tree as params
    grads, aux = rule.grads(params, batch, {'lambda_': 0.5})   # vmappable hyper-parameters

``grads`` is a *descent* direction for every group, ready for an optax optimiser (the
synthesiser's entry is minus the accumulated TD increment). ``aux`` always holds ``'loss'`` (the
batch loss, a scalar) and ``'learning_signal'`` ([T, B, n]: the signal the rule credits to each
state s_t, per example), plus rule-specific diagnostics. Numeric hyper-parameters live in
``rule.hparams`` (a dict of floats) and may be overridden per call with arrays, so a sweep over λ
or γ is a ``jax.vmap``, not a recompile.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import numpy as np

Params = Any


class Rule(NamedTuple):
  """A learning rule.

  Attributes:
    name: the rule's name, e.g. 'bptt', 'bp_lambda'.
    init: ``init(key) -> params``.
    grads: ``grads(params, batch, hparams=None) -> (grads, aux)``.
    hparams: default numeric hyper-parameters (dict of Python floats).
    online: True when the rule needs no storage that grows with T (BPTT and sequence modes: False).
  """

  name: str
  init: Callable[..., Params]
  grads: Callable[..., tuple[Params, dict]]
  hparams: Mapping[str, float]
  online: bool


def check_unit_interval(name: str, value) -> None:
  """Raise ValueError unless a concrete value lies in [0, 1] (traced values are skipped)."""
  if isinstance(value, jax.core.Tracer):
    return
  arr = np.asarray(value, dtype=float)
  if not np.all(np.isfinite(arr)) or np.any((arr < 0) | (arr > 1)):
    raise ValueError(f"{name} must lie in [0, 1], got {value!r}.")


def check_nonnegative(name: str, value) -> None:
  if isinstance(value, jax.core.Tracer):
    return
  arr = np.asarray(value, dtype=float)
  if not np.all(np.isfinite(arr)) or np.any(arr < 0):
    raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")


def merge_hparams(defaults: Mapping[str, float], hparams, checks: Mapping[str, Callable]):
  """Defaults overridden by ``hparams``; unknown keys are an error; values are checked."""
  hparams = dict(hparams or {})
  unknown = set(hparams) - set(defaults)
  if unknown:
    raise ValueError(f"unknown hyper-parameters {sorted(unknown)}; accepted: {sorted(defaults)}.")
  merged = {**defaults, **hparams}
  for k, check in checks.items():
    check(k, merged[k])
  return merged
