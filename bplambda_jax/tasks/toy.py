"""The toy gradient-alignment task (spec §7.1; the reference's line-draw script at its HEAD config).

A fixed linear RNN (H = 30) sees one static 10-bit code at t = 0 and zeros afterwards, and has an
MSE loss only at the last step t = T−1 against the 2-D target (0, 1). Every example of every batch
is the same sequence. Only the synthesiser learns (unless the RNN is made plastic); the measure is
the cosine between the learning signal the rule gives each state and the true BPTT gradient
dL/dh_t, for t < T−1 (at T−1 both equal the immediate gradient).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from bplambda_jax import cells
from bplambda_jax import model as model_lib

# RandomState(123).choice(1024, 1) = 833 in binary, right-aligned (spec §7.1).
CODE = (1, 1, 0, 1, 0, 0, 0, 0, 0, 1)
TARGET = (0.0, 1.0)
INPUT_SIZE = len(CODE)
OUTPUT_SIZE = len(TARGET)


def toy_model(hidden_size: int = 30) -> model_lib.Model:
  """The linear RNN (identity activation) with a 2-D MSE readout."""
  return model_lib.Model(cells.linear_rnn(hidden_size), model_lib.get_loss("mse"), INPUT_SIZE,
                         OUTPUT_SIZE)


def toy_batch(batch_size: int = 10, seq_len: int = 10, dtype=None) -> model_lib.Batch:
  """The toy batch: x [T, B, 10] (code at t = 0), y [T, B, 2] (target at T−1), mask [T, B]."""
  if not isinstance(seq_len, int) or seq_len < 2:
    raise ValueError(f"seq_len must be an integer >= 2, got {seq_len!r}.")
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
  dtype = dtype or jnp.result_type(float)
  x = np.zeros((seq_len, batch_size, INPUT_SIZE))
  x[0] = CODE
  y = np.zeros((seq_len, batch_size, OUTPUT_SIZE))
  y[-1] = TARGET
  mask = np.zeros((seq_len, batch_size))
  mask[-1] = 1.0
  return model_lib.Batch(jnp.asarray(x, dtype), jnp.asarray(y, dtype), jnp.asarray(mask, dtype))


def run_toy(lambdas=(0.0, 0.5, 0.9, 1.0), seeds=(0, 1, 2, 3, 4), *, steps: int = 10000,
            gamma: float = 1.0, seq_len: int = 10, hidden_size: int = 30, batch_size: int = 10,
            lr_synth: float = 1e-3, lr_rnn: float = 0.0, mode: str = "sequence",
            faithful: bool = False, record_every: int = 100):
  """Train the synthesiser on the toy task for every (seed, λ), all in one compiled program.

  The same seed gives the same RNN initialisation for every λ (matched runs). Returns a dict
  with ``'lambdas'`` [L], ``'seeds'`` [S], ``'steps'`` [K] (the recorded update indices) and
  ``'alignment'`` [S, L, K]: the mean over examples and steps t < T−1 of
  cos(learning signal_t, dL/dh_t), recorded every ``record_every`` updates (and at the end).

  Args:
    lambdas: λ values, each in [0, 1].
    seeds: integer seeds.
    steps: number of updates (batches).
    gamma: γ ∈ [0, 1].
    seq_len, hidden_size, batch_size: task sizes (reference: 10, 30, 10).
    lr_synth: Adam learning rate of the synthesiser.
    lr_rnn: Adam learning rate of the RNN and readout (0: the fixed RNN of the paper).
    mode: BP(λ) mode, 'sequence' (default: same numbers as 'online', much cheaper) or 'online'.
    faithful: reference conventions (spec §10) instead of the fixed ones.
    record_every: stride of the recorded alignment curve.
  """
  import jax

  from bplambda_jax import metrics
  from bplambda_jax import train
  from bplambda_jax.rules import bp_lambda
  from bplambda_jax.rules.bptt import exact_gradients

  lambdas = [float(l) for l in lambdas]
  for l in lambdas:
    if not 0.0 <= l <= 1.0:
      raise ValueError(f"every λ must lie in [0, 1], got {l!r}.")
  if not seeds:
    raise ValueError("seeds must be a non-empty list of integers.")
  if not isinstance(steps, int) or steps < 1:
    raise ValueError(f"steps must be a positive integer, got {steps!r}.")
  if not isinstance(record_every, int) or record_every < 1:
    raise ValueError(f"record_every must be a positive integer, got {record_every!r}.")
  model = toy_model(hidden_size)
  batch = toy_batch(batch_size, seq_len)
  rule = bp_lambda(model, gamma=gamma, mode=mode, faithful=faithful, clip_increments=False)
  opt = train.optimiser(lr_rnn, lr_rnn, lr_synth)

  def metric_fn(params, b, aux):
    _, _, dl_ds = exact_gradients(model, params, b)
    cos = metrics.cosine(aux["learning_signal"], dl_ds, axis=-1)  # [T, B]
    return {"alignment": jnp.mean(cos[:-1])}  # t < T−1 (spec §7.1)

  def one(key, lam):
    _, m = train.run(rule, opt, lambda k, s: batch, key, steps, hparams={"lambda_": lam},
                     metric_fn=metric_fn)
    return m["alignment"]

  keys = jnp.stack([jax.random.key_data(jax.random.key(int(s))) for s in seeds])
  sweep = jax.jit(jax.vmap(jax.vmap(lambda kd, lam: one(jax.random.wrap_key_data(kd), lam),
                                    in_axes=(None, 0)), in_axes=(0, None)))
  curves = np.asarray(sweep(keys, jnp.asarray(lambdas)))  # [S, L, steps]
  recorded = np.unique(np.append(np.arange(0, steps, record_every), steps - 1))
  return {"lambdas": lambdas, "seeds": [int(s) for s in seeds], "steps": recorded.tolist(),
          "alignment": curves[:, :, recorded]}
