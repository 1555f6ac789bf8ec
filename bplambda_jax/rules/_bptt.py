"""Backpropagation through time: the exact gradient.

It is the oracle every other rule is tested against.
"""

from __future__ import annotations

from bplambda_jax.model import Model, validate_batch
from bplambda_jax.oracles import exact_gradients
from bplambda_jax.rules import _base as base


def bptt(model: Model) -> base.Rule:
  """Full BPTT via ``jax.grad`` of the unrolled (``lax.scan``) loss.

  ``aux['learning_signal']`` is the exact total gradient dL_b/ds_t, [T, B, n]. No step-level
  protocol: BPTT needs the whole sequence.
  """

  def init(key):
    return model.init(key)

  def grads(params, batch, hparams=None):
    base.merge_hparams({}, hparams, {}, batch.x.dtype)
    validate_batch(model, batch)
    loss, g, dl_ds = exact_gradients(model, params, batch)
    out = dict(g)
    if "synth" in params:
      out["synth"] = base.zeros_like_tree(params["synth"])
    return out, {"loss": loss, "learning_signal": dl_ds}

  return base.Rule("bptt", init, grads, base.frozen({}), "sequence", model=model)
