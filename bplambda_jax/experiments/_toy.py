"""The toy gradient-alignment experiment (the paper's Fig. 2) as a function: ``bplambda toy``.

A fixed linear RNN, the synthesiser alone learning; BP(λ) at every λ and seed. It is ``run`` of the
toy task with a grid over λ (one compiled program for all (λ, seed) pairs), into a temporary
results directory, so the same seeds and settings give the same numbers as ``bplambda toy`` and
``bplambda run toy --grid lambda_=...``. The measure is the cosine between the learning signal of
each state and the true BPTT gradient dL/ds_t, for t < T−1.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from bplambda_jax._errors import ConfigError
from bplambda_jax.experiments._config import RunConfig
from bplambda_jax.experiments._experiment import run_experiment
from bplambda_jax.experiments._runner import RunError


def run_toy(lambdas=(0.0, 0.5, 0.9, 1.0), seeds=(0, 1, 2, 3, 4), *, steps: int = 10000,
            gamma: float = 1.0, seq_len: int = 10, hidden_size: int = 30, batch_size: int = 10,
            lr_synth: float = 1e-3, lr_rnn: float = 0.0, mode: str = "auto",
            faithful: bool = False, record_every: int = 100):
  """Train the synthesiser on the toy task for every (seed, λ): ``bplambda toy`` as a function.

  The same seed gives the same RNN initialisation for every λ (matched runs). Returns a dict
  with ``'lambdas'`` [L], ``'seeds'`` [S], ``'steps'`` [K] (the recorded update indices) and
  ``'alignment'`` [S, L, K]: the mean over examples and steps t < T−1 of
  cos(learning signal_t, dL/ds_t), measured before update 0, after every ``record_every``
  updates and after the last one.

  Args:
    lambdas: λ values, each in [0, 1], each once.
    seeds: consecutive integer seeds (seed s gives the numbers of ``--seed s`` in the CLI).
    steps: number of updates (batches).
    gamma: γ ∈ [0, 1].
    seq_len, hidden_size, batch_size: task sizes (reference: 10, 30, 10).
    lr_synth: Adam learning rate of the synthesiser.
    lr_rnn: Adam learning rate of the RNN and readout (0: the fixed RNN of the paper).
    mode: BP(λ) mode: 'auto' (the sequence mode, the same numbers as 'online', cheaper),
      'sequence' or 'online'.
    faithful: the authors' conventions instead of the fixed ones.
    record_every: updates between measurements (the compiled chunk's length).

  Raises:
    ConfigError: a bad argument (named), before anything is compiled.
    RunError: a seed produced non-finite values or diverged (``training.Divergence``); no curve
      is returned.
  """
  seeds = [int(s) for s in seeds]
  if not seeds:
    raise ConfigError("seeds must be a non-empty list of integers.")
  if seeds != list(range(seeds[0], seeds[0] + len(seeds))):
    raise ConfigError(f"seeds must be consecutive integers, got {seeds}.")
  lambdas = [float(l) for l in lambdas]
  cfg = RunConfig(task="toy", rules=("bp_lambda",), seeds=len(seeds), seed=seeds[0],
                  steps=steps, gamma=gamma, seq_len=seq_len, hidden_size=hidden_size,
                  batch_size=batch_size, lr_synth=lr_synth, lr_cell=lr_rnn, lr_readout=lr_rnn,
                  mode=mode, faithful=faithful, chunk=record_every, eval_every=record_every,
                  grid={"lambda_": lambdas})
  with tempfile.TemporaryDirectory() as out:
    try:
      summary = run_experiment(cfg, out, progress=False, verbose=False)
    except RunError as e:  # its checkpoint goes with the temporary directory
      raise RunError(f"{e.reason} (run_toy keeps no results: run 'bplambda toy' or "
                     f"experiments.run_experiment for a checkpoint of the last good state)",
                     e.reason) from None
    with open(os.path.join(out, "metrics.jsonl")) as f:
      lines = [json.loads(l) for l in f if l.strip()]
  labels = [p["label"] for p in summary["grid"]["points"]]
  evals = [l for l in lines if l["kind"] == "eval"]
  recorded = sorted({l["step"] for l in evals})
  curves = np.full((len(seeds), len(lambdas), len(recorded)), np.nan)
  for l in evals:
    curves[l["seed"] - seeds[0], labels.index(l["rule"]), recorded.index(l["step"])] = (
        l["alignment"])
  return {"lambdas": lambdas, "seeds": seeds, "steps": recorded, "alignment": curves}
