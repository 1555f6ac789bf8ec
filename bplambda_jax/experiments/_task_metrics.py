"""Task metrics: predictions, loss and bits per target step, accuracy; mask-aware and jittable.

Every metric averages like the training objective: per example, the mean over its target steps
(``mask = 1``); then the mean over the examples that have at least one target step. For a batch in
which every example has a target this *is* the objective (:func:`bplambda_jax.model.objective`);
examples without any target (the padding of :func:`mnist_eval_batch`) are left out instead of
counted as zero. Masks only select; they never hide a diverged network: a NaN anywhere in the
outputs (target step or not) makes every metric NaN.

* ``loss``: nats per target step, ``Σ_b Σ_t w_tb·ℓ_tb / #{b with targets}``, w from
  :func:`step_weights`.
* ``bits``: the same in bits, loss / ln 2 (copy-repeat's curriculum threshold is 0.15 bits).
* ``accuracy``: 'ce': argmax of the logits equals the label; 'bce': the fraction of features whose
  sign of the logit matches the 0/1 target (bit accuracy). Not defined for 'mse'.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import chex
import jax
import jax.numpy as jnp

from bplambda_jax.model import Batch, Loss, Model, get_loss, step_weights, unroll

METRICS = ("loss", "bits", "accuracy")
DEFAULT_METRICS = {"ce": ("loss", "accuracy"), "bce": ("loss", "bits", "accuracy"),
                   "mse": ("loss",)}


def _loss(loss) -> Loss:
  return loss if isinstance(loss, Loss) else get_loss(loss)


def predict(model: Model, params, x: jax.Array) -> jax.Array:
  """The model's outputs (logits for 'ce' and 'bce') at every step, [T, B, D_out].

  Args:
    model: the model.
    params: its parameters.
    x: inputs, [T, B, D_in].
  """
  chex.assert_rank(x, 3)
  return model.readout(params, unroll(model, params, x))


def _weights(outputs, batch: Batch):
  """(step weights w [T, B], number of examples with a target step, float)."""
  chex.assert_rank(outputs, 3)
  if not isinstance(batch, Batch):
    raise TypeError(f"batch must be a bplambda_jax.Batch, got {type(batch).__name__}.")
  if batch.mask.shape != outputs.shape[:2]:
    raise ValueError(f"batch.mask must have shape [T, B] = {outputs.shape[:2]} (the outputs' "
                     f"first two axes), got {tuple(batch.mask.shape)}.")
  mask = batch.mask.astype(outputs.dtype)
  return step_weights(mask), jnp.sum(jnp.any(mask > 0, axis=0)).astype(outputs.dtype)


def _per_step(name: str, outputs, batch: Batch, loss: Loss):
  """The per-(t, b) quantity a metric averages, [T, B]."""
  if name in ("loss", "bits"):
    per_step = jax.vmap(jax.vmap(loss.value))(outputs, batch.y)
    return per_step / math.log(2.0) if name == "bits" else per_step
  if loss.name == "ce":
    return (jnp.argmax(outputs, axis=-1) == batch.y).astype(outputs.dtype)
  if loss.name == "bce":
    return jnp.mean(((outputs > 0) == (batch.y > 0.5)).astype(outputs.dtype), axis=-1)
  raise ValueError(f"accuracy is defined for loss 'ce' or 'bce', got {loss.name!r}.")


def _sums(names, outputs, batch: Batch, loss: Loss):
  """({name: Σ_tb w_tb·value_tb}, count, whether any output is NaN)."""
  w, count = _weights(outputs, batch)
  sums = {n: jnp.sum(w * _per_step(n, outputs, batch, loss)) for n in names}
  return sums, count, jnp.any(jnp.isnan(outputs))


def _means(sums, count, nan):
  return {n: jnp.where(nan, jnp.nan, v / count) for n, v in sums.items()}


def loss_per_step(outputs: jax.Array, batch: Batch, loss) -> jax.Array:
  """Loss in nats per target step (the objective over the examples with targets), shape=().

  Args:
    outputs: model outputs, [T, B, D_out].
    batch: the batch (y [T, B, D_out] or int labels [T, B]; mask [T, B]).
    loss: 'mse', 'ce', 'bce' or a :class:`Loss`.

  Returns:
    The mean over examples with a target of their mean loss over target steps (NaN when no
    example has a target, or any output is NaN).
  """
  return _means(*_sums(("loss",), outputs, batch, _loss(loss)))["loss"]


def bits_per_step(outputs: jax.Array, batch: Batch, loss) -> jax.Array:
  """Loss in bits per target step, ``loss_per_step / ln 2``, shape=(). Args as
  :func:`loss_per_step`."""
  return _means(*_sums(("bits",), outputs, batch, _loss(loss)))["bits"]


def accuracy(outputs: jax.Array, batch: Batch, loss="ce") -> jax.Array:
  """Fraction correct over the target steps, shape=().

  Args:
    outputs: logits, [T, B, D_out].
    batch: the batch; 'ce': int labels y [T, B]; 'bce': 0/1 targets y [T, B, D_out].
    loss: 'ce' (argmax = label) or 'bce' (per-feature sign of the logit = target, averaged over
      features).
  """
  loss = _loss(loss)
  if loss.name not in ("ce", "bce"):
    raise ValueError(f"accuracy is defined for loss 'ce' or 'bce', got {loss.name!r}.")
  return _means(*_sums(("accuracy",), outputs, batch, loss))["accuracy"]


def _check_names(names, loss_name):
  names = tuple(DEFAULT_METRICS[loss_name] if names is None else names)
  if isinstance(names, str) or not names:
    raise ValueError(f"names must be a non-empty sequence of metric names from {METRICS}, got "
                     f"{names!r}.")
  for n in names:
    if n not in METRICS:
      raise ValueError(f"every metric name must be one of {METRICS}, got {n!r}.")
  if "accuracy" in names and loss_name == "mse":
    raise ValueError("metric 'accuracy' is defined for loss 'ce' or 'bce', not 'mse'.")
  return names


def task_metrics(model: Model, params, batch: Batch,
                 names: Optional[Sequence[str]] = None) -> dict:
  """The named metrics of a batch, from one forward pass.

  Args:
    model: the model.
    params: its parameters.
    batch: the batch.
    names: any of 'loss', 'bits', 'accuracy' (default: ce → loss, accuracy; bce → loss, bits,
      accuracy; mse → loss).

  Returns:
    {name: scalar} plus 'count', the number of examples with at least one target step.
  """
  names = _check_names(names, model.loss.name)
  sums, count, nan = _sums(names, predict(model, params, batch.x), batch, model.loss)
  return {**_means(sums, count, nan), "count": count}


def evaluate(model: Model, params, batch_fn: Callable, num_batches: int,
             names: Optional[Sequence[str]] = None) -> dict:
  """Metrics over a whole split, batch by batch in one ``lax.scan``.

  Each example with a target step counts once, whatever batch it is in (padded examples, with no
  target, are left out), so the result equals :func:`task_metrics` on the whole split at once.

  Args:
    model: the model.
    params: its parameters.
    batch_fn: ``batch_fn(index) -> Batch`` for index in [0, num_batches), traceable (e.g.
      ``lambda i: mnist_eval_batch(data.validation, i, 500)``).
    num_batches: how many batches.
    names: as in :func:`task_metrics`.

  Returns:
    {name: scalar} plus 'count' (the number of examples with a target step).
  """
  if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
    raise ValueError(f"num_batches must be a positive integer, got {num_batches!r}.")
  names = _check_names(names, model.loss.name)

  def body(acc, index):
    batch = batch_fn(index)
    sums, count, nan = _sums(names, predict(model, params, batch.x), batch, model.loss)
    sums = {n: acc[0][n] + sums[n] for n in names}
    return (sums, acc[1] + count, acc[2] | nan), None

  outputs = jax.eval_shape(lambda i: predict(model, params, batch_fn(i).x),
                           jnp.zeros((), jnp.int32))
  zero = jnp.zeros((), outputs.dtype)
  init = ({n: zero for n in names}, zero, jnp.zeros((), bool))
  (sums, count, nan), _ = jax.lax.scan(body, init, jnp.arange(num_batches))
  return {**_means(sums, count, nan), "count": count}
