"""The toy gradient-alignment experiment behind ``bplambda toy`` (the paper's Fig. 2).

A fixed linear RNN, the synthesiser alone learning; every (seed, λ) pair runs in one compiled
program (two nested ``jax.vmap``); the measure is the cosine between the learning signal of each
state and the true BPTT gradient dL/dh_t, for t < T−1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bplambda_jax import tasks
from bplambda_jax import training
from bplambda_jax.experiments import _metrics as metrics
from bplambda_jax.oracles import exact_gradients
from bplambda_jax.rules import bp_lambda


def run_toy(lambdas=(0.0, 0.5, 0.9, 1.0), seeds=(0, 1, 2, 3, 4), *, steps: int = 10000,
            gamma: float = 1.0, seq_len: int = 10, hidden_size: int = 30, batch_size: int = 10,
            lr_synth: float = 1e-3, lr_rnn: float = 0.0, mode: str = "sequence",
            faithful: bool = False, record_every: int = 100):
  """Train the synthesiser on the toy task for every (seed, λ), all in one compiled program.

  The same seed gives the same RNN initialisation for every λ (matched runs). Returns a dict
  with ``'lambdas'`` [L], ``'seeds'`` [S], ``'steps'`` [K] (the recorded update indices) and
  ``'alignment'`` [S, L, K]: the mean over examples and steps t < T−1 of
  cos(learning signal_t, dL/dh_t), measured before updates 0, E, 2E, … (E = ``record_every``)
  and after the last one; nothing is measured in between (an exact-gradient pass per point).

  Args:
    lambdas: λ values, each in [0, 1].
    seeds: integer seeds.
    steps: number of updates (batches).
    gamma: γ ∈ [0, 1].
    seq_len, hidden_size, batch_size: task sizes (reference: 10, 30, 10).
    lr_synth: Adam learning rate of the synthesiser.
    lr_rnn: Adam learning rate of the RNN and readout (0: the fixed RNN of the paper).
    mode: BP(λ) mode, 'sequence' (default: same numbers as 'online', much cheaper) or 'online'.
    faithful: the authors' conventions instead of the fixed ones.
    record_every: stride of the recorded alignment curve.

  Every update is checked (see :func:`bplambda_jax.training.make_update`): a run that produces
  non-finite values or diverges (``training.Divergence``) raises
  :class:`~bplambda_jax.training.GuardError` naming the seed, λ and update; no curve is returned.
  """
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
  model = tasks.toy_model(hidden_size)
  batch = tasks.toy_batch(batch_size, seq_len)
  rule = bp_lambda(model, flavour="state", gamma=gamma, mode=mode, faithful=faithful,
                   clip_increments=False)
  opt = training.optimiser(lr_rnn, lr_rnn, lr_synth)

  def alignment(params, hp):
    _, aux = rule.grads(params, batch, hp)
    _, _, dl_ds = exact_gradients(model, params, batch)
    cos = metrics.cosine(aux["learning_signal"], dl_ds, axis=-1)  # [T, B]
    return jnp.mean(cos[:-1])  # t < T−1

  n_chunks, rest = divmod(steps, record_every)

  def one(key, lam):
    hp = {"lambda_": lam}
    k_init, _ = jax.random.split(key)
    state = training.init_state(rule, opt, k_init)

    def chunk(st, _):  # the alignment before a chunk of record_every updates, then the chunk
      a = alignment(st.params, hp)
      st, m = training.run(rule, opt, lambda k, s: batch, key, record_every, state=st,
                           hparams=hp)
      return st, (a, m["guard"])

    state, (curve, guard) = jax.lax.scan(chunk, state, None, length=n_chunks)
    guard = guard.reshape(-1)
    if rest:
      state, m = training.run(rule, opt, lambda k, s: batch, key, rest, state=state, hparams=hp)
      guard = jnp.concatenate([guard, m["guard"]])
    return jnp.concatenate([curve, alignment(state.params, hp)[None]]), guard

  keys = jnp.stack([jax.random.key_data(jax.random.key(int(s))) for s in seeds])
  sweep = jax.jit(jax.vmap(jax.vmap(lambda kd, lam: one(jax.random.wrap_key_data(kd), lam),
                                    in_axes=(None, 0)), in_axes=(0, None)))
  curves, guard = jax.device_get(sweep(keys, jnp.asarray(lambdas)))  # [S, L, K], [S, L, steps]
  bad = np.argwhere(guard != 0)
  if len(bad):  # the checked updates froze a seed: never a result
    i, l, step = (int(v) for v in bad[0])
    raise training.GuardError(
        training.guard_message(int(guard[i, l, step]), step=step + 1, seed=int(seeds[i]),
                               rule=f"bp_lambda, λ = {lambdas[l]:g}"),
        int(guard[i, l, step]), (i, l, step))
  curves = np.asarray(curves)
  recorded = list(range(0, n_chunks * record_every, record_every)) + [steps]
  return {"lambdas": lambdas, "seeds": [int(s) for s in seeds], "steps": recorded,
          "alignment": curves}
