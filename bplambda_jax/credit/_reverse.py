"""The reverse (sequence) forms: one reverse linear recurrence, and the credit it gives.

Both sequence modes of the library run backwards through a sequence with the same recurrence,
written for a single trajectory (no batch axis; ``jax.vmap`` it over the batch, as rlax does):

    y_{T−1} = x_{T−1},     y_t = x_t + c_t·link(ctx_t, y_{t+1})    (t = T−2, …, 0)

with ``link`` linear in its second argument. The sensitivities' co-states are y = a with x_t the
learning signal ls_t, c_t = 1 and link(ctx_t, a) = a·A_{t+1} (:func:`costates`); BP(λ)'s sequence
mode has y = w with x_t = δ_{t+1}, c_t = γλ and link(ctx_t, w) = w·M_{t+1}.
"""

from __future__ import annotations

from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp

from bplambda_jax.credit._sensitivities._protocol import Reverse, Sensitivity


def reverse_recurrence(x_t: jax.Array, link: Callable[[Any, jax.Array], jax.Array], ctx_t: Any,
                       discount_t=1.0) -> jax.Array:
  """y_{T−1} = x_{T−1} and y_t = x_t + c_t·link(ctx_t, y_{t+1}) backwards, for one trajectory.

  Args:
    x_t: inputs x_t for t in [0, T), [T, ...].
    link: ``link(ctx, y) -> y'`` of y's shape, linear in y.
    ctx_t: contexts ctx_t for t in [0, T−1) (the link from step t+1 back to t), a pytree with
      leading axis [T−1].
    discount_t: c_t, a scalar or one per link, [T−1].

  Returns:
    y_t for t in [0, T), [T, ...].
  """
  chex.assert_rank(discount_t, {0, 1})
  T = x_t.shape[0]
  for leaf in jax.tree.leaves(ctx_t):
    if leaf.shape[0] != T - 1:
      raise ValueError(f"ctx_t must have a leading axis of T − 1 = {T - 1} (one context per "
                       f"link), got a leaf of shape {leaf.shape}.")
  discount_t = jnp.broadcast_to(jnp.asarray(discount_t, x_t.dtype), (T - 1,))

  def body(y_next, inp):
    x, ctx, c = inp
    y = x + c * link(ctx, y_next)
    return y, y

  y_last = x_t[-1]
  _, ys = jax.lax.scan(body, y_last, (x_t[:-1], ctx_t, discount_t), reverse=True)
  return jnp.concatenate([ys, y_last[None]])


def previous_states(states, s0):
  """s_{t−1} for t = 0..T−1: states [T, B, n] shifted by one step, with s_{−1} = s0 [B, n]."""
  return jnp.concatenate([s0[None], states[:-1]])


def costates(rev: Reverse, params, ls, states, xs, s0):
  """The reverse-form co-states a_t[0] of a sequence, [T, B, n].

  a_{T−1} = 1⊗ls_{T−1} and a_t = 1⊗ls_t + a_{t+1}·A_{t+1}, with A_{t+1} evaluated at (s_t, x_{t+1});
  then Σ_t ls_t·Z_t = Σ_t a_t[0]·Ī_t.

  Args:
    rev: the sensitivity's :class:`Reverse` form.
    params: the cell parameters.
    ls: learning signals [T, B, n].
    states: s_t [T, B, n].
    xs: inputs x_t [T, B, D_in].
    s0: the state before the first step, [B, n].
  """
  if rev.apply is None:  # A_t = 0
    return ls
  tb = lambda f: jax.vmap(jax.vmap(f, in_axes=(None, 0, 0)), in_axes=(None, 0, 0))
  # A_t at (s_{t−1}, x_t) for every (t, b) in parallel; the link from t+1 back to t is entry t+1.
  ctx = jax.tree.map(lambda c: c[1:], tb(rev.prepare)(params, previous_states(states, s0), xs))
  lifted = jnp.broadcast_to(ls[:, :, None, :], ls.shape[:2] + (rev.copies, ls.shape[-1]))
  # one scan over time whose link maps the batch: time-major operands, no transposes
  link = jax.vmap(lambda c, a: rev.apply(params, c, a))
  return reverse_recurrence(lifted, link, ctx)[:, :, 0]


def sequence_credit(sens: Sensitivity, step, params, ls, states, xs, s0):
  """Σ_{t,b} ls_{t,b}·Z_{t,b} of a whole sequence by the reverse form (batch-summed, like params).

  The co-states a_t (:func:`costates`), then Σ_t a_t·Ī_t as one vjp of the step over every (t, b).

  Args:
    sens: a sensitivity with a reverse form.
    step: the cell's ``step(params, s_tm1, x_t)``.
    params: the cell parameters.
    ls: learning signals [T, B, n].
    states: s_t [T, B, n].
    xs: inputs x_t [T, B, D_in].
    s0: the state before the first step, [B, n].
  """
  if sens.reverse is None:
    raise ValueError(f"sensitivity {sens.name!r} has no reverse form; use the online mode.")
  a = costates(sens.reverse, params, ls, states, xs, s0)
  step_tb = jax.vmap(jax.vmap(step, in_axes=(None, 0, 0)), in_axes=(None, 0, 0))
  s_prev = previous_states(states, s0)
  return jax.vjp(lambda q: step_tb(q, s_prev, xs), params)[1](a)[0]
