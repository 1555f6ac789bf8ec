"""Pieces every online rule shares: the immediate loss gradient of one step and the readout's.

Per step and example, with the step's loss weight m_t (``mask_t``):

* fixed (default): dy_t = m_t·∂loss_t/∂y_t, the exact gradient of the weighted per-example loss;
* faithful: dy_t = m_t·(the authors' hand derivative)/B (so that network and readout gradients are
  sums over the batch and every synthetic-gradient target carries 1/B, their quirk Q13).

ℓ_t = dy_t·W_out is the immediate gradient with respect to h_t (zero on the rest of s_t), and the
readout's own gradient is Σ_b dy_t⊗h_t times 1/B (fixed) or the factor κ (faithful, quirk Q14).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def output_grads(model, params, s_t, y_t, mask_t, *, faithful: bool = False):
  """(dy_t [B, D_out], loss_t [B]) for one step of a batch (see the module docstring)."""
  B = s_t.shape[0]

  def one(s, y, m):
    out = model.readout(params, s)
    loss, g = jax.value_and_grad(model.loss.value)(out, y)
    if faithful:
      return m * model.loss.reference_grad(out, y) / B, loss
    return m * g, loss

  return jax.vmap(one)(s_t, y_t, mask_t)


def hidden_signal(params, dy):
  """ℓ_t = dy_t·W_out, [B, D_out] -> [B, H]."""
  return dy @ params["readout"]["w"]


def pad_state(v, n: int):
  """[..., H] -> [..., n] with zeros on the non-hidden part of the state."""
  return jnp.concatenate([v, jnp.zeros(v.shape[:-1] + (n - v.shape[-1],), v.dtype)], axis=-1)


def readout_grads(dy, h, scale):
  """scale·Σ_b dy⊗h and scale·Σ_b dy: dy [B, D_out], h [B, H]."""
  return {"w": scale * jnp.einsum("bo,bh->oh", dy, h), "b": scale * jnp.sum(dy, axis=0)}


def weighted_loss(loss_t, mask_t):
  """The step's share of the objective under its weights: Σ_b m_t·loss_t / B."""
  return jnp.sum(mask_t * loss_t) / loss_t.shape[0]
