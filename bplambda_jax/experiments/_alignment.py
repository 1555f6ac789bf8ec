"""Gradient alignment of many rules on one task: the experiment behind ``bplambda align``.

For every seed, all rules share the same network initialisation. Rules with a synthesiser (BP(λ),
DNI) first train it for ``synth_steps`` updates with the network fixed (Adam on ĝ only), as in the
toy experiment; the other rules need no training. Each rule is then measured on a fresh batch with
:func:`bplambda_jax.experiments.alignment`: the cosine between its gradient estimate and the exact
BPTT gradient (cell, readout, all) and the mean cosine between its learning signals and the true
dL/ds_t for t < T−1. Seeds are a ``jax.vmap`` axis; results are means and sds over seeds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bplambda_jax import tasks
from bplambda_jax import training
from bplambda_jax.experiments import _metrics as metrics
from bplambda_jax.model import make_model
from bplambda_jax.rules import make_rule, parse_rule_spec

TASKS = ("toy", "copy")
COLUMNS = ("cell", "readout", "all", "learning_signal")
# The experiment's λ, γ and synthetic-gradient scale go to the rules that have them.
SHARED_OPTIONS = {"bp_lambda": ("lambda_", "gamma", "sg_scale"), "dni": ("sg_scale",)}


def task_setup(task: str, cell: str | None = None, hidden: int | None = None,
               batch_size: int | None = None, n: int = 3, r: int = 2):
  """(model, data_fn) for a task; data_fn(key, step) -> Batch.

  toy: the linear RNN (H = 30) on the toy batch (B = 10, T = 10); copy: an LSTM (H = 16) on
  copy-repeat at (n, r) (B = 16). ``cell``, ``hidden`` and ``batch_size`` override the sizes.
  """
  if task == "toy":
    hidden = hidden or 30
    model = (tasks.toy_model(hidden) if cell in (None, "linear") else
             make_model(cell, "mse", tasks.TOY_INPUT_SIZE, tasks.TOY_OUTPUT_SIZE, hidden))
    batch = tasks.toy_batch(batch_size or 10, 10)
    return model, lambda key, step: batch
  if task == "copy":
    model = make_model(cell or "lstm", "bce", tasks.COPY_INPUT_SIZE, tasks.COPY_OUTPUT_SIZE,
                       hidden or 16)
    max_len = tasks.copy_repeat_len(n, r)
    B = batch_size or 16
    return model, lambda key, step: tasks.copy_repeat_batch(key, n, r, B, max_len)
  raise ValueError(f"task must be one of {TASKS}, got {task!r}.")


def run_alignment(task: str, rule_specs, seeds, *, cell: str | None = None,
                  hidden: int | None = None, synth_steps: int = 2000, lr_synth: float = 1e-3,
                  lambda_: float = 1.0, gamma: float = 1.0, sg_scale: float = 1.0) -> list[dict]:
  """Rows {'rule', 'error' or per-column mean/sd over seeds} for every rule spec."""
  model, data_fn = task_setup(task, cell, hidden)
  keys = jnp.stack([jax.random.key_data(jax.random.key(int(s))) for s in seeds])
  rows = []
  for spec in rule_specs:
    try:
      given = {"lambda_": lambda_, "gamma": gamma, "sg_scale": sg_scale}
      name = parse_rule_spec(spec)[0]
      rule = make_rule(spec, model, **{k: given[k] for k in SHARED_OPTIONS.get(name, ())})
    except ValueError as e:  # a rule not defined for this cell: reported, not fatal
      rows.append({"rule": spec, "error": str(e)})
      continue

    def one(kd, rule=rule):
      k_model, k_rule, k_train, k_eval = jax.random.split(jax.random.wrap_key_data(kd), 4)
      params = {**rule.init(k_rule), **model.init(k_model)}  # shared network init
      if "synth" in params:
        opt = training.optimiser(0.0, 0.0, lr_synth)
        state = training.TrainState(params, opt.init(params), jnp.zeros((), jnp.int32))
        state, _ = training.run(rule, opt, data_fn, k_train, synth_steps, state=state)
        params = state.params
      res = metrics.alignment(rule, params, data_fn(k_eval, 0), model=model)
      return {c: res[c] for c in COLUMNS}

    res = jax.jit(jax.vmap(one))(keys)
    row = {"rule": spec}
    for c in COLUMNS:
      v = np.asarray(res[c], dtype=np.float64)
      row[c] = float(np.mean(v))  # a diverged seed (NaN) makes the row NaN, never hidden
      row[c + "_sd"] = float(np.std(v, ddof=1)) if v.size > 1 else float("nan")
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
    cells = "".join(f"  {r[c]:>9.4f} ± {r[c + '_sd']:<6.4f}" for c in COLUMNS)
    lines.append(r["rule"].ljust(width) + cells)
  return "\n".join(lines)
