"""A recurrent model = cell + linear readout + per-step loss, and the data it consumes.

Data are **time-major**: a :class:`Batch` holds ``x [T, B, D_in]``, ``y [T, B, D_out]`` (float
targets) or ``[T, B]`` (integer class labels), and ``mask [T, B]`` ({0, 1}: which steps carry a
loss). Parameters are a dict ``{'cell': ..., 'readout': {'w': [D_out, H], 'b': [D_out]}}`` plus
``'synth'`` for rules with a synthesiser.

The objective (the "fixed" convention used by every rule unless ``faithful=True``) is

    L = mean_b Σ_t w_{t,b} · loss(y_{t,b}, y*_{t,b}),   w_{t,b} = mask_{t,b} / max(Σ_t mask_{t,b}, 1),

i.e. the mean over examples of the mean over target steps, with per-step losses
``mse`` = mean over features of (y − y*)², ``ce`` = softmax cross-entropy, ``bce`` = mean over
features of binary cross-entropy with logits. This equals the reference's reported loss in all its
tasks (spec §7).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bplambda_jax import cells as cells_lib

Params = Any


class Batch(NamedTuple):
  """A batch of sequences, time-major.

  Attributes:
    x: inputs, [T, B, D_in].
    y: targets, [T, B, D_out] (float) or [T, B] (int labels for 'ce').
    mask: which steps carry a loss, [T, B] (float {0, 1}).
  """

  x: jax.Array
  y: jax.Array
  mask: jax.Array


class Loss(NamedTuple):
  """A per-step loss.

  Attributes:
    name: 'mse', 'ce' or 'bce'.
    value: ``value(y [D_out], target) -> scalar``.
    reference_grad: the reference's hand-written output derivative before its 1/B factor
      (spec §2.4): mse (y − y*), ce softmax(y) − onehot, bce (σ(y) − y*)/D_out.
  """

  name: str
  value: Callable[[jax.Array, jax.Array], jax.Array]
  reference_grad: Callable[[jax.Array, jax.Array], jax.Array]


def _mse(y, t):
  return jnp.mean((y - t) ** 2)


def _ce(y, label):
  return jax.nn.logsumexp(y) - y[label]


def _bce(y, t):
  return jnp.mean(jnp.maximum(y, 0) - y * t + jnp.log1p(jnp.exp(-jnp.abs(y))))


LOSSES = {
    "mse": Loss("mse", _mse, lambda y, t: y - t),
    "ce": Loss("ce", _ce, lambda y, l: jax.nn.softmax(y) - jax.nn.one_hot(l, y.shape[-1], dtype=y.dtype)),
    "bce": Loss("bce", _bce, lambda y, t: (jax.nn.sigmoid(y) - t) / y.shape[-1]),
}


def get_loss(name: str) -> Loss:
  if name not in LOSSES:
    raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {name!r}.")
  return LOSSES[name]


class Model(NamedTuple):
  """Cell + linear readout + loss.

  Attributes:
    cell: a :class:`bplambda_jax.cells.Cell`.
    loss: a :class:`Loss`.
    input_size: D_in.
    output_size: D_out.
  """

  cell: cells_lib.Cell
  loss: Loss
  input_size: int
  output_size: int

  def init(self, key) -> Params:
    """{'cell': cell params, 'readout': {'w' [D_out, H], 'b' [D_out]}}; readout U(±1/√H)."""
    k1, k2, k3 = jax.random.split(key, 3)
    H = self.cell.hidden_size
    bound = 1.0 / np.sqrt(H)
    dtype = jnp.result_type(float)
    return {
        "cell": self.cell.init(k1, self.input_size),
        "readout": {
            "w": jax.random.uniform(k2, (self.output_size, H), dtype, -bound, bound),
            "b": jax.random.uniform(k3, (self.output_size,), dtype, -bound, bound),
        },
    }

  def readout(self, params, s):
    """y = W_out h + b_out, with h = s[:H]; s [..., n] -> y [..., D_out]."""
    h = self.cell.hidden(s)
    return h @ params["readout"]["w"].T + params["readout"]["b"]


def make_model(cell: cells_lib.Cell | str, loss: str, input_size: int, output_size: int,
               hidden_size: int | None = None) -> Model:
  """Build a :class:`Model` from a cell (or a cell name plus ``hidden_size``) and a loss name."""
  if isinstance(cell, str):
    if hidden_size is None:
      raise ValueError("hidden_size is required when cell is given by name.")
    cell = cells_lib.get_cell(cell, hidden_size)
  for name, v in (("input_size", input_size), ("output_size", output_size)):
    if not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"{name} must be a positive integer, got {v!r}.")
  return Model(cell, get_loss(loss), int(input_size), int(output_size))


def step_weights(mask: jax.Array) -> jax.Array:
  """w_{t,b} = mask_{t,b} / max(Σ_t mask_{t,b}, 1); [T, B] -> [T, B]."""
  if not jnp.issubdtype(mask.dtype, jnp.floating):
    mask = mask.astype(jnp.result_type(float))
  return mask / jnp.maximum(jnp.sum(mask, axis=0, keepdims=True), 1.0)


def validate_batch(model: Model, batch: Batch) -> None:
  """Check shapes, dtypes and finiteness of a batch; raise ValueError naming the field.

  Runs at Python time. Finiteness is checked only for concrete (non-traced) arrays.
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
  if model.loss.name == "ce" and not isinstance(y, jax.core.Tracer):
    labels = np.asarray(y)
    if np.any((labels < 0) | (labels >= model.output_size)):
      raise ValueError(f"batch.y labels must lie in [0, {model.output_size}).")


def loss_and_states(model: Model, params, batch: Batch, perturb=None):
  """Batch loss L (mean over examples) and the states [T, B, n].

  ``perturb`` [T, B, n], added to every state after the step, lets ``jax.grad`` read off the
  total gradients dL/ds_t (used by BPTT and the alignment tools).
  """
  w = step_weights(batch.mask)
  s0 = jnp.zeros((batch.x.shape[1], model.cell.state_size), batch.x.dtype)
  step_b = jax.vmap(model.cell.step, in_axes=(None, 0, 0))

  def body(s, inp):
    x, e = inp
    s = step_b(params["cell"], s, x)
    if e is not None:
      s = s + e
    return s, s

  if perturb is None:
    _, states = jax.lax.scan(lambda s, x: body(s, (x, None)), s0, batch.x)
  else:
    _, states = jax.lax.scan(body, s0, (batch.x, perturb))
  out = model.readout(params, states)  # [T, B, D_out]
  per_step = jax.vmap(jax.vmap(model.loss.value))(out, batch.y)  # [T, B]
  return jnp.sum(w * per_step) / batch.x.shape[1], states
