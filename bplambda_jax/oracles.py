"""Float64-grade references: the exact gradient by ``jax.grad`` through the unrolled network.

Every learning rule is tested against these (RTRL = BPTT, BP(λ) at λ = γ = 1 = regression onto
the true future gradient, ...), and the alignment metrics use them as the truth.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bplambda_jax.model import Batch, Model
from bplambda_jax.model._model import loss_and_states


def exact_gradients(model: Model, params, batch: Batch):
  """Exact gradients of the batch objective and the total per-example gradients dL_b/ds_t.

  Args:
    model: the model.
    params: parameters with 'cell' and 'readout' (other entries are ignored).
    batch: a time-major batch.

  Returns:
    (loss [], grads {'cell', 'readout'}, dl_ds [T, B, n]) where dl_ds is the gradient of the
    per-example loss L_b (no 1/B) with respect to each state, through all future steps.
  """
  T, B = batch.x.shape[:2]
  dtype = jnp.result_type(*jax.tree.leaves(params["cell"]))  # the state's dtype
  zeros = jnp.zeros((T, B, model.cell.state_size), dtype)
  net = {"cell": params["cell"], "readout": params["readout"]}

  def f(p, e):
    return loss_and_states(model, p, batch, e)[0]

  loss, (g, dl_ds) = jax.value_and_grad(f, argnums=(0, 1))(net, zeros)
  return loss, g, dl_ds * B
