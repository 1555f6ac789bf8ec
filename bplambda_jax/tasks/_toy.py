"""The toy gradient-alignment task of the BP(λ) paper (the authors' line-drawing script at its final
configuration).

A fixed linear RNN (H = 30) sees one static 10-bit code at t = 0 and zeros afterwards, and has an
MSE loss only at the last step t = T−1 against the 2-D target (0, 1). Every example of every batch
is the same sequence. Only the synthesiser learns (unless the RNN is made plastic); the measure is
the cosine between the learning signal the rule gives each state and the true BPTT gradient
dL/dh_t, for t < T−1 (at T−1 both equal the immediate gradient).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from bplambda_jax import _validation
from bplambda_jax.model import Batch, Model, get_loss, linear_rnn

# The authors' code draws RandomState(123).choice(1024, 1) = 833 and writes it in binary.
CODE = (1, 1, 0, 1, 0, 0, 0, 0, 0, 1)
TARGET = (0.0, 1.0)
INPUT_SIZE = len(CODE)
OUTPUT_SIZE = len(TARGET)


def toy_model(hidden_size: int = 30) -> Model:
  """The linear RNN (identity activation) with a 2-D MSE readout."""
  hidden_size = _validation.integer("hidden_size", hidden_size, minimum=1)
  return Model(linear_rnn(hidden_size), get_loss("mse"), INPUT_SIZE, OUTPUT_SIZE)


def toy_batch(batch_size: int = 10, seq_len: int = 10, dtype=None) -> Batch:
  """The toy batch: x [T, B, 10] (code at t = 0), y [T, B, 2] (target at T−1), mask [T, B]."""
  seq_len = _validation.integer("seq_len", seq_len, minimum=2)
  batch_size = _validation.integer("batch_size", batch_size, minimum=1)
  dtype = dtype or jnp.result_type(float)
  x = np.zeros((seq_len, batch_size, INPUT_SIZE))
  x[0] = CODE
  y = np.zeros((seq_len, batch_size, OUTPUT_SIZE))
  y[-1] = TARGET
  mask = np.zeros((seq_len, batch_size))
  mask[-1] = 1.0
  return Batch(jnp.asarray(x, dtype), jnp.asarray(y, dtype), jnp.asarray(mask, dtype))
