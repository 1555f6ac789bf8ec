"""Gradient alignment of a learning rule against exact BPTT.

Two views of "how close is a rule to the true gradient":

* **parameter gradients**: the cosine similarity between the rule's gradient estimate and the
  exact BPTT gradient (:func:`bplambda_jax.oracles.exact_gradients`), per parameter leaf
  ('cell/w_ih', 'readout/b', ...), per group ('cell', 'readout') and overall ('all' = cell and
  readout together);
* **learning signals** (the paper's toy-task metric): the cosine, per example and per
  step, between the signal the rule credits to s_t (``aux['learning_signal']``) and the true total
  gradient dL_b/ds_t, averaged over the selected (t, b).

Conventions. ``cosine(a, b) = ⟨a, b⟩ / (‖a‖·‖b‖)``, taken as 0 when either vector is zero and NaN
when either holds a NaN or an infinity (a diverged run is never reported as "no alignment"). In
:func:`alignment`, the exact gradient is the reference: a group whose exact gradient is zero has no
direction to align with and reports NaN, while a rule that returns zero where the truth is not gets
0. Likewise the learning-signal mean skips the (t, b) where dL_b/ds_t = 0.

Everything is jit-compatible (no Python loops over steps, no host transfers).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from bplambda_jax.model import Batch, Model
from bplambda_jax.oracles import exact_gradients
from bplambda_jax.rules import Rule

COORDS = ("state", "hidden")


def _flat(tree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  if not leaves:
    raise ValueError("cosine needs at least one array; got an empty pytree.")
  return jnp.concatenate([jnp.ravel(l) for l in leaves])


def _rescaled(a, axis):
  """(a times a power of two that brings its largest |entry| near 1, that largest |entry|).

  The cosine does not change, and no norm or product can then overflow or underflow. The factor
  is applied in two halves, each >= 2^-64: XLA divides by multiplying with the reciprocal, which
  flushes to zero for a divisor above 2^126."""
  top = jnp.max(jnp.abs(a), axis=axis, keepdims=True)  # NaN if a holds a NaN, inf if an infinity
  e = jnp.floor(jnp.log2(jnp.where((top > 0) & jnp.isfinite(top), top, 1.0)))
  half = jnp.floor(e / 2)
  return a * jnp.exp2(-half) * jnp.exp2(half - e), jnp.squeeze(top, axis)


def _cos(a, b, axis=-1):
  a, ta = _rescaled(a, axis)
  b, tb = _rescaled(b, axis)
  norms = jnp.linalg.norm(a, axis=axis) * jnp.linalg.norm(b, axis=axis)
  cos = jnp.where((ta > 0) & (tb > 0), jnp.sum(a * b, axis=axis) / jnp.where(norms > 0, norms, 1.0),
                  0.0)
  return jnp.where(jnp.isfinite(ta) & jnp.isfinite(tb), cos, jnp.nan)


def cosine(a, b, axis: Optional[int] = None) -> jax.Array:
  """Cosine similarity ⟨a, b⟩/(‖a‖·‖b‖), 0 when either is zero, NaN when either is not finite.

  Args:
    a, b: arrays, or pytrees with the same structure.
    axis: None to flatten everything (all leaves of a pytree) into one vector; an int to take
      the cosine along that axis of two arrays of equal shape (batched cosines).

  Returns:
    A scalar (axis=None) or an array with ``axis`` removed.
  """
  if axis is None:
    if jax.tree.structure(a) != jax.tree.structure(b):
      raise ValueError(f"cosine needs two pytrees with the same structure, got "
                       f"{jax.tree.structure(a)} and {jax.tree.structure(b)}.")
    return _cos(_flat(a), _flat(b))
  a, b = jnp.asarray(a), jnp.asarray(b)
  if a.shape != b.shape:
    raise ValueError(f"cosine along an axis needs arrays of equal shape, got {a.shape} and "
                     f"{b.shape}.")
  return _cos(a, b, axis=axis)


def _against_exact(estimate, exact):
  """Cosine of estimate against exact; NaN when the exact reference is zero."""
  c = cosine(estimate, exact)
  return jnp.where(jnp.linalg.norm(_flat(exact)) > 0, c, jnp.nan)


def default_step_mask(T: int, B: int, dtype=None) -> jax.Array:
  """The toy-task selection: every step but the last, [T, B].

  At t = T−1 the learning signal of every rule is the immediate ℓ_{T−1} (nothing lies beyond), so
  the last step says nothing about credit assignment through time.
  """
  t = jnp.arange(T)[:, None]
  return jnp.broadcast_to(t < T - 1, (T, B)).astype(dtype or jnp.result_type(float))


def alignment(rule: Rule, params, batch: Batch, hparams=None, *,
              model: Model, step_mask: Optional[jax.Array] = None,
              coords: str = "state") -> dict:
  """Cosine alignment of a rule's gradients and learning signals with exact BPTT.

  Args:
    rule: the rule under test.
    params: parameters the rule accepts (with 'synth' if the rule needs it).
    batch: time-major batch.
    hparams: optional hyper-parameter overrides passed to ``rule.grads``.
    model: the model the rule was built for (gives the exact gradient).
    step_mask: which (t, b) enter the learning-signal mean, [T, B] or [T] ({0, 1}); default
      :func:`default_step_mask` (all t < T−1). (t, b) with dL_b/ds_t = 0 are always skipped.
    coords: 'state' compares the full state signals [S]; 'hidden' compares their first H entries
      (dL/dh_t, what the reference records; use it for rules whose signal lives on h only).

  Returns:
    A dict of scalars: one entry per parameter leaf ('cell/w_ih', 'readout/w', ...), 'cell',
    'readout', 'all', 'learning_signal' (mean over the selected (t, b); NaN when none is
    selected) and 'learning_signal_count' (how many (t, b) entered the mean), plus
    'learning_signal_per_step' [T] (mean over the selected examples of each step; NaN where none).
  """
  if coords not in COORDS:
    raise ValueError(f"coords must be one of {COORDS}, got {coords!r}.")
  T, B = batch.x.shape[:2]
  est, aux = rule.grads(params, batch, hparams)
  _, exact, dl_ds = exact_gradients(model, params, batch)
  if "learning_signal" not in aux:
    raise ValueError(f"rule {rule.name!r} returned no aux['learning_signal'].")
  ls = aux["learning_signal"]
  if ls.shape != dl_ds.shape:
    raise ValueError(f"rule {rule.name!r} returned aux['learning_signal'] of shape {ls.shape}; "
                     f"expected [T, B, S] = {dl_ds.shape}.")

  out = {}
  for group in ("cell", "readout"):
    if group not in est:
      raise ValueError(f"rule {rule.name!r} returned no {group!r} gradient.")
    leaves_est = jax.tree_util.tree_flatten_with_path(est[group])[0]
    leaves_exact = jax.tree.leaves(exact[group])
    if len(leaves_est) != len(leaves_exact):
      raise ValueError(f"rule {rule.name!r}: the {group!r} gradient tree does not match the "
                       f"parameters ({len(leaves_est)} vs {len(leaves_exact)} leaves).")
    for (path, g), g_exact in zip(leaves_est, leaves_exact):
      key = jax.tree_util.keystr(path, simple=True, separator="/")
      out[f"{group}/{key}"] = _against_exact(g, g_exact)
    out[group] = _against_exact(est[group], exact[group])
  out["all"] = _against_exact({k: est[k] for k in ("cell", "readout")},
                              {k: exact[k] for k in ("cell", "readout")})

  if coords == "hidden":
    H = model.cell.hidden_size
    ls, dl_ds = ls[..., :H], dl_ds[..., :H]
  if step_mask is None:
    step_mask = default_step_mask(T, B, ls.dtype)
  step_mask = jnp.asarray(step_mask, ls.dtype)
  if step_mask.shape == (T,):
    step_mask = jnp.broadcast_to(step_mask[:, None], (T, B))
  if step_mask.shape != (T, B):
    raise ValueError(f"step_mask must have shape [T] = {(T,)} or [T, B] = {(T, B)}, got "
                     f"{tuple(step_mask.shape)}.")
  cos_tb = cosine(ls, dl_ds, axis=-1)  # [T, B]
  sel = step_mask * (jnp.linalg.norm(dl_ds, axis=-1) > 0)  # [T, B]
  count = jnp.sum(sel)
  out["learning_signal"] = jnp.where(count > 0, jnp.sum(sel * cos_tb) / jnp.maximum(count, 1),
                                     jnp.nan)
  out["learning_signal_count"] = count
  per_t = jnp.sum(sel, axis=1)
  out["learning_signal_per_step"] = jnp.where(
      per_t > 0, jnp.sum(sel * cos_tb, axis=1) / jnp.maximum(per_t, 1), jnp.nan)
  return out
