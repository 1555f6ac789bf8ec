"""A recurrent model = cell + linear readout + per-step loss, and the data it consumes.

Data are **time-major**: a :class:`Batch` holds ``x [T, B, D_in]``, ``y [T, B, D_out]`` (float
targets) or ``[T, B]`` (integer class labels), and ``mask [T, B]`` ({0, 1}: which steps carry a
loss). Parameters are a dict ``{'cell': ..., 'readout': {'w': [D_out, H], 'b': [D_out]}}`` plus
``'synth'`` for rules with a synthesiser. The objective is :func:`bplambda_jax.model.objective`.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np

from bplambda_jax.model._cells import Cell, check_size, float_dtype
from bplambda_jax.model._losses import Loss, get_loss, objective, step_weights
from bplambda_jax.model._registry import get_cell

Params = Any


class Batch(NamedTuple):
  """A batch of sequences, time-major.

  Attributes:
    x: inputs, [T, B, D_in].
    y: targets, [T, B, D_out] (float) or [T, B] (int labels for 'ce').
    mask: which steps carry a loss, [T, B] (float {0, 1}; any weights >= 0).
  """

  x: jax.Array
  y: jax.Array
  mask: jax.Array


class Model(NamedTuple):
  """Cell + linear readout + loss.

  Attributes:
    cell: a :class:`~bplambda_jax.model.Cell`.
    loss: a :class:`~bplambda_jax.model.Loss`.
    input_size: D_in.
    output_size: D_out.
    param_dtype: float dtype of the parameters ``init`` makes (None: the default float type).
  """

  cell: Cell
  loss: Loss
  input_size: int
  output_size: int
  param_dtype: Optional[Any] = None

  def init(self, key) -> Params:
    """{'cell': cell params, 'readout': {'w' [D_out, H], 'b' [D_out]}}; readout U(±1/√H)."""
    k1, k2, k3 = jax.random.split(key, 3)
    H = self.cell.hidden_size
    bound = 1.0 / np.sqrt(H)
    dtype = float_dtype(self.param_dtype)
    return {
        "cell": self.cell.init(k1, self.input_size, dtype),
        "readout": {
            "w": jax.random.uniform(k2, (self.output_size, H), dtype, -bound, bound),
            "b": jax.random.uniform(k3, (self.output_size,), dtype, -bound, bound),
        },
    }

  def readout(self, params, s):
    """y = W_out h + b_out, with h = s[:H]; s [..., n] -> y [..., D_out]."""
    h = self.cell.hidden(s)
    return h @ params["readout"]["w"].T + params["readout"]["b"]

  def initial_states(self, params, batch_size: int):
    """The cell's initial state for a batch, [B, n], in the dtype of the cell's parameters (the
    dtype every rule keeps the recurrent state in)."""
    s0 = self.cell.initial_state(jnp.result_type(*jax.tree.leaves(params["cell"])))
    return jnp.broadcast_to(s0, (batch_size,) + s0.shape)

  def step_losses(self, params, states, y):
    """Per-step, per-example losses from states [T, B, n] and targets: [T, B]."""
    out = self.readout(params, states)  # [T, B, D_out]
    return jax.vmap(jax.vmap(self.loss.value))(out, y)


def make_model(cell: Cell | str, loss: str, input_size: int, output_size: int,
               hidden_size: Optional[int] = None, *, param_dtype=None) -> Model:
  """Build a :class:`Model` from a cell (or a cell name plus ``hidden_size``) and a loss name.

  Args:
    cell: a :class:`Cell`, or a library cell name (``CELLS``: 'linear', 'tanh', 'lstm', 'gru',
      'columnar_lstm', 'elementwise_lstm', 'lru', 'linear_lru') together with ``hidden_size``.
    loss: 'mse', 'ce' or 'bce'.
    input_size: D_in.
    output_size: D_out (the number of classes for 'ce').
    hidden_size: H, only with a cell name.
    param_dtype: float dtype of the parameters (None: the default float type).
  """
  if isinstance(cell, str):
    if hidden_size is None:
      raise ValueError("hidden_size is required when cell is given by name.")
    cell = get_cell(cell, hidden_size)
  elif not isinstance(cell, Cell):
    raise TypeError(f"cell must be a Cell or a cell name, got {type(cell).__name__}.")
  elif hidden_size is not None:
    raise ValueError(f"hidden_size applies only to a cell given by name; the Cell {cell.name!r} "
                     f"already has hidden_size={cell.hidden_size}.")
  if param_dtype is not None:
    param_dtype = float_dtype(param_dtype, "param_dtype")
  return Model(cell, get_loss(loss), check_size("input_size", input_size),
               check_size("output_size", output_size), param_dtype)


def validate_batch(model: Model, batch: Batch) -> None:
  """Check shapes, dtypes and values of a batch; raise ValueError naming the field.

  Runs at Python time. Values (finiteness, label range) are checked only for concrete arrays;
  under ``jit`` the training drivers check them on device.
  """
  if not isinstance(batch, Batch):
    raise TypeError(f"batch must be a bplambda_jax.Batch, got {type(batch).__name__}.")
  x, y, mask = batch
  if x.ndim != 3 or x.shape[-1] != model.input_size:
    raise ValueError(f"batch.x must have shape [T, B, {model.input_size}] (time-major), got "
                     f"{tuple(x.shape)}.")
  T, B = x.shape[:2]
  if T < 1 or B < 1:
    raise ValueError(f"batch.x must have T >= 1 and B >= 1, got shape {tuple(x.shape)}.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"batch.x must hold floating-point inputs, got dtype {x.dtype} (cast it, "
                     f"e.g. x.astype(jnp.float32)).")
  pd = None if model.param_dtype is None else jnp.dtype(model.param_dtype)
  if pd is not None and jnp.promote_types(x.dtype, pd) != pd:
    raise ValueError(f"batch.x has dtype {x.dtype}, wider than the model's param_dtype {pd}: "
                     f"the recurrent state would change dtype at every step. Cast the inputs "
                     f"(x.astype(jnp.{pd})) or make the model with param_dtype={x.dtype}.")
  if model.loss.name == "ce":
    if y.shape != (T, B) or not jnp.issubdtype(y.dtype, jnp.integer):
      raise ValueError(f"batch.y for loss 'ce' must be integer labels of shape [T, B] = "
                       f"{(T, B)}, got {tuple(y.shape)} {y.dtype}.")
  elif y.shape != (T, B, model.output_size):
    raise ValueError(f"batch.y for loss '{model.loss.name}' must have shape [T, B, D_out] = "
                     f"{(T, B, model.output_size)}, got {tuple(y.shape)}.")
  if mask.shape != (T, B):
    raise ValueError(f"batch.mask must have shape [T, B] = {(T, B)}, got {tuple(mask.shape)}.")
  for name, arr in (("x", x), ("y", y), ("mask", mask)):
    if isinstance(arr, jax.core.Tracer):
      continue
    if jnp.issubdtype(arr.dtype, jnp.inexact) and not np.all(np.isfinite(np.asarray(arr))):
      raise ValueError(f"batch.{name} contains NaN or infinite values.")
  if not isinstance(mask, jax.core.Tracer) and np.any(np.asarray(mask) < 0):
    raise ValueError("batch.mask holds negative values; it weights each step's loss and must be "
                     ">= 0 (1 where a step carries a loss, 0 elsewhere).")
  if model.loss.name == "ce" and not isinstance(y, jax.core.Tracer):
    labels = np.asarray(y)
    if np.any((labels < 0) | (labels >= model.output_size)):
      raise ValueError(f"batch.y labels must lie in [0, {model.output_size}) (output_size), got "
                       f"values in [{labels.min()}, {labels.max()}].")


def unroll(model: Model, params, x: jax.Array, s0: Optional[jax.Array] = None,
           perturb: Optional[jax.Array] = None) -> jax.Array:
  """The states s_t of a batch, [T, B, n], by ``lax.scan`` from s0 (default: the initial state).

  Args:
    model: the model.
    params: its parameters ({'cell', ...}).
    x: inputs, [T, B, D_in].
    s0: the state before the first step, [B, n]; default ``model.initial_states`` (in the
      parameters' dtype).
    perturb: optional [T, B, n] added to every state after its step, so that ``jax.grad`` with
      respect to it reads off the total gradients dL/ds_t (BPTT and the alignment tools).
  """
  chex.assert_rank(x, 3)
  if s0 is None:
    s0 = model.initial_states(params, x.shape[1])
  step_b = jax.vmap(model.cell.step, in_axes=(None, 0, 0))

  def body(s, inp):
    x_t, e_t = inp
    s = step_b(params["cell"], s, x_t)
    if e_t is not None:
      s = s + e_t
    return s, s

  return jax.lax.scan(body, s0, (x, perturb))[1]


def loss_and_states(model: Model, params, batch: Batch, perturb=None):
  """The batch objective L (a scalar) and the states [T, B, n] (see :func:`unroll`)."""
  states = unroll(model, params, batch.x, perturb=perturb)
  return objective(step_weights(batch.mask), model.step_losses(params, states, batch.y)), states
