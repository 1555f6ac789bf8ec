"""Gradient alignment of many rules on one task: the experiment behind ``bplambda align``.

For every seed, all rules share the same network initialisation. Rules with a synthesiser (BP(λ),
DNI) first train it for ``synth_steps`` updates with the network fixed (Adam on ĝ only), through
the runner's loop (progress bar, seeds vmapped); the other rules need no training. Each rule is
then measured on a fresh batch with :func:`bplambda_jax.experiments.alignment`: the cosine between
its gradient estimate and the exact BPTT gradient (cell, readout, all) and the mean cosine between
its learning signals and the true dL/ds_t for t < T−1. Results are means ± sd (ddof = 1) over
seeds; a diverged seed makes its row NaN, never hidden.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Optional

import jax

from bplambda_jax import _validation
from bplambda_jax import tasks
from bplambda_jax._errors import ConfigError
from bplambda_jax.experiments import _metrics
from bplambda_jax.experiments import _results as results
from bplambda_jax.experiments._config import RunConfig
from bplambda_jax.experiments._runner import Run, stop_signals, train_one
from bplambda_jax.experiments._setup import Setup, make_run_rule
from bplambda_jax.model import make_model
from bplambda_jax.rules import rule_options

TASKS = ("toy", "copy")
COLUMNS = ("cell", "readout", "all", "learning_signal")


def task_sizes(task: str, cell: Optional[str] = None, hidden: Optional[int] = None,
               batch_size: Optional[int] = None) -> tuple[str, int, int]:
  """(cell, hidden size, batch size) that ``task`` runs with: the arguments, or the task's own
  (toy: linear, 30, 10; copy: lstm, 16, 16). ValueError for an unknown task or a size < 1."""
  if task not in TASKS:
    raise ConfigError(f"task must be one of {TASKS}, got {task!r}.")
  for name, v in (("hidden", hidden), ("batch_size", batch_size)):
    if v is not None:
      _validation.integer(name, v, minimum=1)
  own = {"toy": ("linear", 30, 10), "copy": ("lstm", 16, 16)}[task]
  return (own[0] if cell is None else cell, own[1] if hidden is None else hidden,
          own[2] if batch_size is None else batch_size)


def task_setup(task: str, cell: Optional[str] = None, hidden: Optional[int] = None,
               batch_size: Optional[int] = None, n: int = 3, r: int = 2):
  """(model, data_fn) for a task; data_fn(key, step) -> Batch.

  toy: the linear RNN (H = 30) on the toy batch (B = 10, T = 10); copy: an LSTM (H = 16) on
  copy-repeat at (n, r) (B = 16). ``cell``, ``hidden`` and ``batch_size`` override the sizes
  (:func:`task_sizes`).
  """
  cell, hidden, B = task_sizes(task, cell, hidden, batch_size)
  if task == "toy":
    model = (tasks.toy_model(hidden) if cell == "linear" else
             make_model(cell, "mse", tasks.TOY_INPUT_SIZE, tasks.TOY_OUTPUT_SIZE, hidden))
    batch = tasks.toy_batch(B, 10)
    return model, lambda key, step: batch
  model = make_model(cell, "bce", tasks.COPY_INPUT_SIZE, tasks.COPY_OUTPUT_SIZE, hidden)
  max_len = tasks.copy_repeat_len(n, r)
  return model, lambda key, step: tasks.copy_repeat_batch(key, n, r, B, max_len)


def run_alignment(task: str, rule_specs, seeds, *, cell: Optional[str] = None,
                  hidden: Optional[int] = None, synth_steps: int = 1000, lr_synth: float = 1e-3,
                  lambda_: float = 1.0, gamma: float = 1.0, sg_scale: float = 1.0,
                  out: Optional[str] = None, overwrite: bool = False,
                  progress: bool = True) -> list[dict]:
  """Rows {'rule', 'error' or per-column mean and sd over seeds} for every rule spec.

  Args:
    task: 'toy' or 'copy'.
    rule_specs: rule specs ('bptt', 'dni:3', 'bp_lambda', ...).
    seeds: the integer seeds (consecutive: seeds[0], seeds[0] + 1, ...).
    cell, hidden: override the task's cell and size.
    synth_steps: updates that train each synthesiser first (network fixed).
    lr_synth: Adam learning rate of ĝ.
    lambda_, gamma, sg_scale: BP(λ)'s (and DNI's sg_scale).
    out: a results directory for the config, the metrics log and the checkpoints (default: a
      temporary one); an existing run there is refused unless ``overwrite``.
    overwrite: replace the run in ``out``.
    progress: show progress bars.
  """
  _validation.integer("synth_steps", synth_steps, minimum=1)
  seeds = [int(s) for s in seeds]
  if not seeds:
    raise ConfigError("seeds must name at least one seed, got none.")
  if seeds != list(range(seeds[0], seeds[0] + len(seeds))):
    raise ConfigError(f"seeds must be consecutive integers, got {seeds}.")
  cell, hidden, B = task_sizes(task, cell, hidden)
  model, data_fn = task_setup(task, cell, hidden, B)
  chunk = min(100, synth_steps)
  shared = {k: v for k, v in dict(lambda_=lambda_, gamma=gamma, sg_scale=sg_scale).items()
            if any(k in rule_options(spec) for spec in rule_specs)}  # for the rules that take them
  # what runs, recorded as it runs: the copy task at the level (3, 2) is the 'copy' task there
  cfg = RunConfig(task=task, rules=tuple(rule_specs), seeds=len(seeds), seed=seeds[0],
                  steps=synth_steps, batch_size=B, cell=cell, hidden_size=hidden,
                  lr_cell=0.0, lr_readout=0.0, lr_synth=lr_synth, mode="online", chunk=chunk,
                  eval_every=chunk * -(-synth_steps // chunk), max_to_keep=1,
                  **shared, **({"seq_len": 10} if task == "toy" else
                               {"pattern_length": 3, "repeats": 2})).resolve()

  def batch(d, key, level, step):
    del d, level
    return data_fn(jax.random.fold_in(jax.random.split(key)[0], step), step)

  def evaluate(rule, params, d, key):
    del d
    res = _metrics.alignment(rule, params, data_fn(jax.random.split(key)[1], 0), model=model)
    return {c: res[c] for c in COLUMNS}

  setup = Setup(cfg, None, model, None, None, batch, None, None, evaluate, None, None)
  rows = []
  with contextlib.ExitStack() as stack:
    if out:
      directory, lock = results.prepare(out, resume=False, overwrite=overwrite)
      stack.callback(lock.release)
    else:
      directory = stack.enter_context(tempfile.TemporaryDirectory())
    stop = stack.enter_context(stop_signals())
    results.write_json(os.path.join(directory, "config.json"), cfg.to_dict())
    log = results.MetricsLog(os.path.join(directory, "metrics.jsonl"))
    for spec in rule_specs:
      try:
        make_run_rule(cfg, spec, model)
      except ConfigError as e:  # a rule not defined for this cell: reported, not fatal
        rows.append({"rule": spec, "error": str(e)})
        continue
      summary = train_one(cfg, setup, Run(spec, spec, {}), directory, log, resume=False,
                          progress=progress, stop=stop)
      row = {"rule": spec}
      for c in COLUMNS:
        stat = summary["eval"][c]
        row[c], row[c + "_sd"] = stat["mean"], stat["sd"]
      rows.append(row)
  return rows


def format_rows(rows: list[dict]) -> str:
  """A plain-text table: mean ± sd over seeds per column, or the reason a rule does not apply."""
  width = max(len("rule"), *(len(r["rule"]) for r in rows))
  head = "rule".ljust(width) + "".join(f"  {c:>18}" for c in COLUMNS)
  lines = [head, "-" * len(head)]
  for r in rows:
    if "error" in r:
      lines.append(r["rule"].ljust(width) + "  n/a: " + r["error"])
      continue
    sd = lambda c: "" if r[c + "_sd"] is None else f"{r[c + '_sd']:<6.4f}"
    cells = "".join(f"  {r[c]:>9.4f} ± {sd(c):<6}" for c in COLUMNS)
    lines.append(r["rule"].ljust(width) + cells)
  return "\n".join(lines)


__all__ = ["COLUMNS", "TASKS", "format_rows", "run_alignment", "task_setup"]
