"""Backpropagation through time: the exact gradient, the oracle every other rule is tested against."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bplambda_jax import model as model_lib
from bplambda_jax.rules import base


def exact_gradients(model: model_lib.Model, params, batch: model_lib.Batch):
  """Exact gradients of the batch loss and the total per-example gradients dL_b/ds_t.

  Returns:
    (loss [], grads {'cell','readout'}, dl_ds [T, B, n]) where dl_ds is the gradient of the
    per-example loss L_b (no 1/B) with respect to each state, through all future steps.
  """
  T, B = batch.x.shape[:2]
  zeros = jnp.zeros((T, B, model.cell.state_size), batch.x.dtype)
  net = {"cell": params["cell"], "readout": params["readout"]}

  def f(p, e):
    return model_lib.loss_and_states(model, p, batch, e)[0]

  loss, (g, dl_ds) = jax.value_and_grad(f, argnums=(0, 1))(net, zeros)
  return loss, g, dl_ds * B


def bptt(model: model_lib.Model) -> base.Rule:
  """Full BPTT via ``jax.grad`` of the unrolled (``lax.scan``) loss.

  ``aux['learning_signal']`` is the exact total gradient dL_b/ds_t, [T, B, n].
  """

  def init(key):
    return model.init(key)

  def grads(params, batch, hparams=None):
    base.merge_hparams({}, hparams, {})
    model_lib.validate_batch(model, batch)
    loss, g, dl_ds = exact_gradients(model, params, batch)
    out = dict(g)
    if "synth" in params:
      out["synth"] = jax.tree.map(jnp.zeros_like, params["synth"])
    return out, {"loss": loss, "learning_signal": dl_ds}

  return base.Rule("bptt", init, grads, {}, online=False)
