"""Truncated backpropagation through time (TBPTT) over chunks of n steps.

The sequence s_0 … s_{T−1} is cut into C = ⌈T/n⌉ chunks aligned to the *end* of the sequence, as
in the authors' code: the first chunk holds T mod n steps (n when that is 0) and every later chunk
holds n. The state entering a chunk is carried over from the previous chunk without gradient
(``stop_gradient``); each chunk backpropagates its own part of the objective, and the chunk
gradients are summed:

    ∇̃Ψ = Σ_c ∂/∂Ψ [ Σ_{t∈c} mean_b w_{t,b}·loss_{t,b} ]   with s_{start(c)} held fixed,

where w = mask/Σ_t mask is computed once over the whole sequence, so the chunk losses add up to
exactly the objective. Targets stay attached to their own steps (the authors' code slices
per-step targets with another split than its inputs, quirk Q15; here inputs, targets and masks are
split alike).

Step level: one *chunk* is one step. ``step(params, state, x [n', B, D_in], y, mask [n', B])``
runs a chunk of n' ≤ n steps from the carried state (:class:`ChunkState`) and returns that chunk's
gradients; ``grads`` is the first (short) chunk plus a ``lax.scan`` over the full ones. Memory is
O(n·B·state), independent of T. Applying an optimiser after every chunk (the authors'
``opt_each_trunc``) is the streaming driver with ``every`` = 1 chunk.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from bplambda_jax import _validation
from bplambda_jax.model import Batch, Model, step_weights, validate_batch
from bplambda_jax.rules import _base as base
from bplambda_jax.rules._from_sensitivity import check_batch_size


class ChunkState(NamedTuple):
  """The state carried between chunks.

  Attributes:
    s: the state entering the next chunk, [B, n].
    t: chunks taken, shape=(), int32.
  """

  s: jax.Array
  t: jax.Array


def check_chunk_length(n) -> int:
  """Return n as an int; raise ValueError unless it is a positive integer."""
  return _validation.integer("n (the truncation length)", n, minimum=1)


def chunk_vjp(model: Model, net, s_start: jax.Array, x, y, w):
  """Forward pass of one chunk and its vector–Jacobian product.

  The chunk function maps (net, s_start, e) to (per-step losses [n], s_end), where e [n, B, S] is a
  perturbation added to every state after its step (it reads off ∂/∂s_t), and a per-step loss is
  Σ_b w_{t,b}·loss_{t,b} / B, so Σ_t of the losses is this chunk's share of the batch objective.

  Args:
    model: the model.
    net: {'cell', 'readout'} parameters.
    s_start: state entering the chunk (treated as a constant input), [B, S].
    x, y, w: one chunk ([n, B, D_in], [n, B, ...], [n, B]).

  Returns:
    (losses [n], s_end [B, S], states [n, B, S], vjp) where
    ``vjp((ct_losses [n], ct_end [B, S])) -> (net grads, ct_start [B, S], ct_states [n, B, S])``.
  """
  B = x.shape[1]
  step_b = jax.vmap(model.cell.step, in_axes=(None, 0, 0))

  def f(p, s0, e):
    def body(s, inp):
      x_t, e_t = inp
      s = step_b(p["cell"], s, x_t) + e_t
      return s, s

    s_end, states = jax.lax.scan(body, s0, (x, e))
    per_step = model.step_losses(p, states, y)  # [n, B]
    return (jnp.sum(w * per_step, axis=1) / B, s_end), states

  e0 = jnp.zeros((x.shape[0],) + s_start.shape, s_start.dtype)
  (losses, s_end), vjp, states = jax.vjp(f, net, jax.lax.stop_gradient(s_start), e0,
                                         has_aux=True)
  return losses, s_end, states, vjp


def chunk_grads(model: Model, params, s_start: jax.Array, x, y, w,
                inject: Optional[jax.Array] = None):
  """Gradients of one chunk's share of the objective.

  Args:
    model: the model.
    params: parameters with 'cell' and 'readout' (other entries are ignored).
    s_start: state entering the chunk, [B, S] (gradient stopped).
    x, y, w: the chunk's inputs [n, B, D_in], targets and loss weights [n, B].
    inject: optional extra cotangent on the chunk's last state, per example, [B, S]; it is added
      as inject/B (the batch objective is a mean over examples), as DNI does with ĝ(s_end).

  Returns:
    (loss [], grads {'cell', 'readout'}, g_start [B, S], ls [n, B, S], s_end [B, S]) with the
    per-example gradients (no 1/B) g_start = ∂/∂s_start and ls_t = ∂/∂s_t of the chunk objective
    (plus the injected term), and the chunk loss (this chunk's part of the objective).
  """
  net = {"cell": params["cell"], "readout": params["readout"]}
  losses, s_end, _, vjp = chunk_vjp(model, net, s_start, x, y, w)
  B = s_start.shape[0]
  ct_end = jnp.zeros_like(s_end) if inject is None else inject / B
  g, ct_start, ct_states = vjp((jnp.ones_like(losses), ct_end))
  return jnp.sum(losses), g, ct_start * B, ct_states * B, s_end


def check_chunk_inputs(model: Model, x, y, mask, batch_size: Optional[int] = None) -> None:
  """Shapes of one chunk (x [n, B, D_in], y, mask [n, B]); ValueError naming the field."""
  if jnp.ndim(x) != 3 or x.shape[-1] != model.input_size:
    raise ValueError(f"a chunk's x must have shape [n, B, {model.input_size}], got "
                     f"{jnp.shape(x)}.")
  n, B = x.shape[:2]
  if batch_size is not None and B != batch_size:
    raise ValueError(f"the chunk has batch size {B} but the state was made for batch size "
                     f"{batch_size}; start a new state.")
  want = (n, B) if model.loss.name == "ce" else (n, B, model.output_size)
  if jnp.shape(y) != want:
    raise ValueError(f"a chunk's y must have shape {want}, got {jnp.shape(y)}.")
  if jnp.shape(mask) != (n, B):
    raise ValueError(f"a chunk's mask must have shape [n, B] = {(n, B)}, got {jnp.shape(mask)}.")


def chunked_grads(step: Callable, init_state: Callable, params, batch: Batch, hparams, n: int):
  """Σ over end-aligned chunks of ``step``: the short first chunk, then a scan over full ones.

  Returns:
    (summed grads, the objective (the chunk losses summed), learning signals [T, B, S], the list
    of the metrics of the short first chunk (if any) and of the stacked full chunks).
  """
  T, B = batch.x.shape[:2]
  w = step_weights(batch.mask).astype(batch.x.dtype)
  r = T % n
  C = T // n
  state = init_state(params, B)
  acc = base.zeros_like_tree(params)
  loss = jnp.zeros((), batch.x.dtype)
  ls, extra = [], []
  if r:
    g, state, m = step(params, state, batch.x[:r], batch.y[:r], w[:r], hparams, last=C == 0)
    acc, loss = base.add_trees(acc, g), loss + m["loss"]
    ls.append(m["learning_signal"])
    extra.append(m)
  if C:
    fold = lambda a: a[r:].reshape((C, n) + a.shape[1:])

    def body(carry, inp):
      st, acc_ = carry
      c, x, y, wc = inp
      g, st, m = step(params, st, x, y, wc, hparams, last=c == C - 1)
      return (st, base.add_trees(acc_, g)), m

    (state, acc), m = jax.lax.scan(body, (state, acc),
                                   (jnp.arange(C), fold(batch.x), fold(batch.y), fold(w)))
    loss = loss + jnp.sum(m["loss"])
    ls.append(m["learning_signal"].reshape((C * n,) + m["learning_signal"].shape[2:]))
    extra.append(m)
  return acc, loss, jnp.concatenate(ls), extra


def tbptt(model: Model, n: int) -> base.Rule:
  """Truncated BPTT with end-aligned chunks of n steps, gradients summed over chunks.

  tbptt(model, T) (or any n ≥ T) is full BPTT; tbptt(model, 1) backpropagates each step's loss
  through that step only.

  Args:
    model: the recurrent model.
    n: chunk (truncation) length, a positive integer.

  Returns:
    A rule with ``chunk`` = n and a chunk-level ``init_state``/``step`` (:class:`ChunkState`;
    step metrics 'loss' and 'learning_signal' [n', B, S]) whose ``grads`` returns {'cell',
    'readout'} (plus zeros for a 'synth' entry, if present) and aux with 'loss' (the batch
    objective) and 'learning_signal' [T, B, S]: the per-example gradient of the chunk objective
    with respect to s_t, i.e. dL_b/ds_t through the future steps of t's own chunk only.
  """
  n = check_chunk_length(n)

  def init(key):
    return model.init(key)

  def init_state(params, batch_size):
    B = check_batch_size(batch_size)
    return ChunkState(model.initial_states(params, B), jnp.zeros((), jnp.int32))

  def step(params, state, x, y, mask, hparams=None, *, last=False):
    base.merge_hparams({}, hparams, {}, x.dtype)
    check_chunk_inputs(model, x, y, mask, state.s.shape[0])
    base.check_last(last)
    del last
    loss, g, _, ls, s_end = chunk_grads(model, params, state.s, x, y, mask)
    out = dict(g)
    if "synth" in params:
      out["synth"] = base.zeros_like_tree(params["synth"])
    return out, ChunkState(s_end.astype(state.s.dtype), state.t + 1), {"loss": loss,
                                                                        "learning_signal": ls}

  def grads(params, batch, hparams=None):
    base.merge_hparams({}, hparams, {}, batch.x.dtype)
    validate_batch(model, batch)
    acc, loss, ls, _ = chunked_grads(step, init_state, params, batch, None, n)
    return acc, {"loss": loss, "learning_signal": ls}

  return base.Rule(f"tbptt:{n}", init, grads, base.frozen({}), "online", init_state, step, n,
                   model)
