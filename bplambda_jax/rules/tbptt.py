"""Truncated backpropagation through time (TBPTT) over chunks of n steps.

The sequence s_0 … s_{T−1} is cut into C = ⌈T/n⌉ chunks aligned to the *end* of the sequence, as
in the reference (spec §6.2): the first chunk holds T mod n steps (n when that is 0) and every later
chunk holds n. The state entering a chunk is carried over from the previous chunk without gradient
(``stop_gradient``); each chunk backpropagates its own part of the objective, and the chunk
gradients are summed:

    ∇̃Ψ = Σ_c ∂/∂Ψ [ Σ_{t∈c} mean_b w_{t,b}·loss_{t,b} ]   with s_{start(c)} held fixed,

where w = mask/Σ_t mask is computed once over the whole sequence (model.step_weights), so the chunk
losses add up to exactly the objective L of :func:`bplambda_jax.model.loss_and_states`.

Targets stay attached to their own steps: the reference slices per-step targets as
[i·n, (i+1)·n) while its inputs use the remainder-first split (quirk Q15); here inputs, targets and
masks are split by the same index map.

Implementation: :func:`split_chunks` pads the sequence *at the front* with P = C·n − T masked steps
so that every chunk has length n and the chunks can be scanned with ``lax.scan``; a padded step
leaves the state unchanged (``jnp.where`` on a validity flag) and carries no loss. Each chunk runs
one ``jax.vjp``; memory is O(n·B·state), independent of T.

Per-chunk parameter updates (the reference's ``opt_each_trunc``) belong to the trainer: the rule
returns the summed gradient of the batch. A trainer that wants an optimiser step after every chunk
scans :func:`split_chunks`' output itself and calls :func:`chunk_grads` on each chunk with the
current parameters, carrying ``s_end`` forward.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from bplambda_jax import model as model_lib
from bplambda_jax.rules import base


class Chunks(NamedTuple):
  """A batch split into C equal chunks of n steps, front-padded (time-major inside a chunk).

  Attributes:
    x: inputs, [C, n, B, D_in] (zeros at padded steps).
    y: targets, [C, n, B, D_out] or [C, n, B] int (zeros at padded steps).
    w: per-step loss weights of the whole-sequence objective, [C, n, B] (0 at padded steps).
    valid: 1 for a real step and 0 for a padded one, [C, n].
  """

  x: jax.Array
  y: jax.Array
  w: jax.Array
  valid: jax.Array


def check_chunk_length(n) -> int:
  """Return n as an int; raise ValueError unless it is a positive integer."""
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"n (the truncation length) must be a positive integer, got {n!r}.")
  return int(n)


def num_chunks(T: int, n: int) -> int:
  """C = ⌈T/n⌉."""
  return -(-T // n)


def split_chunks(batch: model_lib.Batch, n: int) -> Chunks:
  """Split a batch into end-aligned chunks of n steps (spec §6.2), padding at the front.

  Real step t of the sequence lands in chunk (t + P) // n at position (t + P) % n, with
  P = C·n − T, so the first chunk holds T − (C−1)·n real steps and every later chunk n.

  Args:
    batch: time-major batch, x [T, B, D_in].
    n: chunk length.

  Returns:
    :class:`Chunks` with leading axes [C, n].
  """
  n = check_chunk_length(n)
  T = batch.x.shape[0]
  C = num_chunks(T, n)
  pad = C * n - T
  dtype = batch.x.dtype
  w = model_lib.step_weights(batch.mask).astype(dtype)

  def fold(a):  # [T, ...] -> [C, n, ...] with `pad` zero steps in front
    a = jnp.concatenate([jnp.zeros((pad,) + a.shape[1:], a.dtype), a])
    return a.reshape((C, n) + a.shape[1:])

  valid = fold(jnp.ones((T,), dtype))
  return Chunks(fold(batch.x), fold(batch.y), fold(w), valid)


def unfold(a: jax.Array, T: int) -> jax.Array:
  """Inverse of the chunk fold for per-step outputs: [C, n, ...] -> [T, ...] (padding dropped)."""
  a = a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:])
  return a[a.shape[0] - T:]


def chunk_vjp(model: model_lib.Model, net, s_start: jax.Array, x, y, w, valid):
  """Forward pass of one chunk and its vector–Jacobian product.

  The chunk function maps (net, s_start, e) to (per-step losses [n], s_end), where e [n, B, S] is a
  perturbation added to every state after its step (it reads off ∂/∂s_t), and a per-step loss is
  Σ_b w_{t,b}·loss_{t,b} / B, so Σ_t of the losses is this chunk's share of the batch objective L.

  Args:
    model: the model.
    net: {'cell', 'readout'} parameters.
    s_start: state entering the chunk (treated as a constant input), [B, S].
    x, y, w, valid: one chunk of :class:`Chunks` ([n, B, D_in], [n, B, ...], [n, B], [n]).

  Returns:
    (losses [n], s_end [B, S], states [n, B, S], vjp) where
    ``vjp((ct_losses [n], ct_end [B, S])) -> (net grads, ct_start [B, S], ct_states [n, B, S])``.
  """
  cell = model.cell
  B = x.shape[1]
  step_b = jax.vmap(cell.step, in_axes=(None, 0, 0))

  def f(p, s0, e):
    def body(s, inp):
      x_t, v_t, e_t = inp
      s = jnp.where(v_t > 0, step_b(p["cell"], s, x_t), s) + e_t  # padded steps keep s
      return s, s

    s_end, states = jax.lax.scan(body, s0, (x, valid, e))
    out = model.readout(p, states)  # [n, B, D_out]
    per_step = jax.vmap(jax.vmap(model.loss.value))(out, y)  # [n, B]
    return (jnp.sum(w * per_step, axis=1) / B, s_end), states

  e0 = jnp.zeros((x.shape[0],) + s_start.shape, s_start.dtype)
  (losses, s_end), vjp, states = jax.vjp(f, net, jax.lax.stop_gradient(s_start), e0,
                                         has_aux=True)
  return losses, s_end, states, vjp


def chunk_grads(model: model_lib.Model, params, s_start: jax.Array, chunk: Chunks,
                inject: Optional[jax.Array] = None):
  """Gradients of one chunk's share of the objective (the building block for per-chunk updates).

  Args:
    model: the model.
    params: parameters with 'cell' and 'readout' (other entries are ignored).
    s_start: state entering the chunk, [B, S] (gradient stopped).
    chunk: one chunk, i.e. :class:`Chunks` with the leading C axis indexed away
      (x [n, B, D_in], y, w [n, B], valid [n]).
    inject: optional extra cotangent on the chunk's last state, per example, [B, S]; it is added as
      inject/B (the batch objective is a mean over examples), as DNI does with ĝ(s_end).

  Returns:
    (loss [], grads {'cell', 'readout'}, g_start [B, S], ls [n, B, S], s_end [B, S]) with the
    per-example gradients (no 1/B) g_start = ∂/∂s_start and ls_t = ∂/∂s_t of the chunk objective
    (plus the injected term), and the chunk loss (this chunk's part of L).
  """
  net = {"cell": params["cell"], "readout": params["readout"]}
  losses, s_end, _, vjp = chunk_vjp(model, net, s_start, *chunk)
  B = s_start.shape[0]
  ct_end = jnp.zeros_like(s_end) if inject is None else inject / B
  g, ct_start, ct_states = vjp((jnp.ones_like(losses), ct_end))
  return jnp.sum(losses), g, ct_start * B, ct_states * B, s_end


def tbptt(model: model_lib.Model, n: int) -> base.Rule:
  """Truncated BPTT with end-aligned chunks of n steps, gradients summed over chunks.

  tbptt(model, T) (or any n ≥ T) is full BPTT; tbptt(model, 1) backpropagates each step's loss
  through that step only.

  Args:
    model: the recurrent model.
    n: chunk (truncation) length, a positive integer.

  Returns:
    A rule whose ``grads`` returns {'cell', 'readout'} (plus zeros for a 'synth' entry, if present)
    and aux with 'loss' (the batch objective L) and 'learning_signal' [T, B, S]: the per-example
    gradient of the chunk objective with respect to s_t, i.e. dL_b/ds_t through the future steps
    of t's own chunk only.
  """
  n = check_chunk_length(n)

  def init(key):
    return model.init(key)

  def grads(params, batch, hparams=None):
    base.merge_hparams({}, hparams, {})
    model_lib.validate_batch(model, batch)
    T, B = batch.x.shape[:2]
    chunks = split_chunks(batch, n)
    net = {"cell": params["cell"], "readout": params["readout"]}
    s0 = jnp.zeros((B, model.cell.state_size), batch.x.dtype)

    def body(carry, chunk):
      s, acc = carry
      loss, g, _, ls, s_end = chunk_grads(model, net, s, chunk)
      acc = jax.tree.map(jnp.add, acc, g)
      return (s_end, acc), (loss, ls)

    zeros = jax.tree.map(jnp.zeros_like, net)
    (_, g), (losses, ls) = jax.lax.scan(body, (s0, zeros), chunks)
    out = dict(g)
    if "synth" in params:
      out["synth"] = jax.tree.map(jnp.zeros_like, params["synth"])
    return out, {"loss": jnp.sum(losses), "learning_signal": unfold(ls, T)}

  return base.Rule("tbptt", init, grads, {}, online=True)
