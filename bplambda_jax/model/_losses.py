"""Per-step losses and the one objective every rule optimises.

The objective of a batch is

    L = mean_b Σ_t w_{t,b} · loss(y_{t,b}, y*_{t,b}),
    w_{t,b} = mask_{t,b} / max(Σ_t mask_{t,b}, 1),

i.e. the mean over examples of the mean over target steps, with per-step losses ``mse`` = mean over
features of (y − y*)², ``ce`` = softmax cross-entropy (integer labels), ``bce`` = mean over
features of binary cross-entropy with logits. This equals the loss the authors' code reports on all
its tasks.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class Loss(NamedTuple):
  """A per-step loss.

  Attributes:
    name: 'mse', 'ce' or 'bce'.
    value: ``value(y [D_out], target) -> scalar``.
    reference_grad: the authors' hand-written output derivative before its 1/B factor:
      mse (y − y*), ce softmax(y) − onehot(y*), bce (σ(y) − y*)/D_out (used by ``faithful=True``).
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
    "ce": Loss("ce", _ce, lambda y, l: jax.nn.softmax(y) - jax.nn.one_hot(l, y.shape[-1],
                                                                          dtype=y.dtype)),
    "bce": Loss("bce", _bce, lambda y, t: (jax.nn.sigmoid(y) - t) / y.shape[-1]),
}


def get_loss(name: str) -> Loss:
  """A loss by name: 'mse', 'ce' or 'bce'."""
  if name not in LOSSES:
    raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {name!r}.")
  return LOSSES[name]


def step_weights(mask: jax.Array) -> jax.Array:
  """w_{t,b} = mask_{t,b} / max(Σ_t mask_{t,b}, 1); [T, B] -> [T, B]."""
  if not jnp.issubdtype(mask.dtype, jnp.floating):
    mask = mask.astype(jnp.result_type(float))
  return mask / jnp.maximum(jnp.sum(mask, axis=0, keepdims=True), 1.0)


def objective(w: jax.Array, per_step: jax.Array) -> jax.Array:
  """L = mean_b Σ_t w_{t,b}·loss_{t,b} from the weights and per-step losses ([T, B] each)."""
  return jnp.sum(w * per_step) / per_step.shape[1]
