"""Hyper-parameter grids: a grid × seeds in one compiled program per structural configuration.

A grid maps config keys to the values to try, e.g. ``{"lambda_": [0, 0.5, 1], "lr_synth":
[1e-4, 1e-3]}`` (``--grid lambda_=0,0.5,1 --grid lr_synth=1e-4,1e-3``); every rule of the run is
trained at every point of the product, each with the run's seeds. Two kinds of keys:

- *traced* (:data:`TRACED`): λ, γ, the synthetic gradient's scale and the three learning rates.
  They are arguments of the compiled programs, not constants: λ, γ and sg_scale go to the rule as
  hyper-parameters (``rule.grads(params, batch, hparams)``), the learning rates live in the
  optimiser state (``_train.set_learning_rates``). All points of one rule and one structural
  configuration share one program.
- *structural* (:data:`STRUCTURAL`): the cell, the hidden size, the toy tasks' sequence length
  and the mode change the shapes or the program itself: one program per value. (Rule options
  such as BP(λ)'s flavour or trace are structural too; compare them as several rules.)

How the points run: the (point, seed) pairs of a program form one leading axis of P·S elements,
mapped like the seeds (``seed_axis``: one vmapped program on GPU/TPU, one single-element program
called P·S times per chunk on CPU; either way it is compiled once). Seed s starts from the same
initialisation at every point (matched comparisons).

The results: one summary entry per point (labelled ``'<rule> key=value ...'``: mean ± sd over
seeds, ddof = 1, n), ``summary['grid']`` with the points and the best one by the selection metric
(the validation loss of the model-selected parameters where the task has a validation split, and
there its test metrics at those parameters; otherwise the task's score on the final evaluation),
and a figure per grid axis (the selection metric against the axis, a line per setting of the
other axes with a band of ± 1 sd over seeds), plus a heatmap when the grid has two axes.

A grid is checked before anything is compiled: an unknown key, a key that is neither traced nor
structural, an empty list, a repeated value, a value out of the key's range, or a traced key that
a rule of the run does not take is a ConfigError naming it.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import numpy as np

from bplambda_jax._errors import ConfigError
from bplambda_jax.training import _train

RULE_KEYS = ("lambda_", "gamma", "sg_scale")  # the rules' hyper-parameters
RATES = {"lr_cell": "cell", "lr_readout": "readout", "lr_synth": "synth"}  # key -> group
TRACED = RULE_KEYS + tuple(RATES)
STRUCTURAL = ("cell", "hidden_size", "seq_len", "mode")


def check_grid(grid, accepted_keys) -> dict:
  """``grid`` as {key: tuple of values}, or a ConfigError for an empty grid axis, a repeated value
  or a key that cannot be an axis (the values' types and ranges are the config's own checks)."""
  if not isinstance(grid, dict):
    raise ConfigError(f"config key 'grid' must map config keys to lists of values, got "
                     f"{grid!r}.")
  out = {}
  for key, values in grid.items():
    check_key(key, accepted_keys)
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
      raise ConfigError(f"grid key {key!r} needs a list of values, got {values!r}.")
    if not values:
      raise ConfigError(f"grid key {key!r} has no values; give at least one.")
    if len(set(values)) != len(values):
      raise ConfigError(f"grid key {key!r} repeats a value: {list(values)}; give each once.")
    out[key] = tuple(values)
  return out


def check_key(key, accepted_keys) -> None:
  """ConfigError unless ``key`` (a config key among ``accepted_keys``) can be a grid axis."""
  if key not in accepted_keys:
    raise ConfigError(f"grid key {key!r} is not a config key; a grid axis is a traced "
                     f"hyper-parameter ({', '.join(TRACED)}) or a structural key "
                     f"({', '.join(STRUCTURAL)}).")
  if key not in TRACED + STRUCTURAL:
    raise ConfigError(f"grid key {key!r} cannot be a grid axis: it is neither a traced "
                     f"hyper-parameter ({', '.join(TRACED)}) nor a structural key "
                     f"({', '.join(STRUCTURAL)}).")


def points(grid: dict) -> list[dict]:
  """Every point of the grid ({key: value}), the first key varying slowest."""
  keys = list(grid)
  return [dict(zip(keys, values)) for values in itertools.product(*grid.values())]


def label(spec: str, point: dict) -> str:
  """The label of a rule at a grid point: ``'bp_lambda lambda_=0.5 lr_synth=0.0001'``."""
  return " ".join([spec] + [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in point.items()])


def structural(changes: dict) -> tuple:
  """The structural part of a run's config changes, as a sortable key."""
  return tuple(sorted((k, v) for k, v in changes.items() if k not in TRACED))


def traced(changes: dict) -> dict:
  return {k: v for k, v in changes.items() if k in TRACED}


def check_rule_keys(spec: str, keys, rule_hparams, groups, written=()) -> None:
  """ConfigError for a traced grid key that the rule ``spec`` does not take: a hyper-parameter
  that is not among ``rule_hparams`` or that its spec sets (``written``), or the learning rate of
  a group it has no parameters in."""
  for key in keys:
    if key in written:
      raise ConfigError(f"grid key {key!r} is set by rule {spec!r} itself; remove it from the "
                        f"spec or from the grid.")
    if key in RULE_KEYS and key not in rule_hparams:
      raise ConfigError(f"grid key {key!r} is not a hyper-parameter of rule {spec!r} (its traced "
                       f"hyper-parameters: {sorted(rule_hparams) or 'none'}); grid over it with "
                       f"rules that take it only.")
    if key in RATES and RATES[key] not in groups:
      raise ConfigError(f"grid key {key!r} does nothing for rule {spec!r}: it has no "
                       f"{RATES[key]!r} parameters (its groups: {sorted(groups)}).")


class Score(NamedTuple):
  """How the points of a grid are compared: a summary entry's per-seed values of ``name``."""

  name: str
  higher_is_better: bool


def score(entry: dict, task_score: str) -> tuple[Score, np.ndarray]:
  """(how the point is scored, its per-seed values) from a rule's summary entry."""
  if "best_score" in entry:  # model selection on the validation split
    return Score("validation loss", False), np.asarray(entry["best_score"]["values"])
  if task_score == "solved":  # the curriculum: the largest level solved, as its index
    levels = [0 if n == 0 else n + r - 1 for n, r in zip(entry["solved"]["n"],
                                                         entry["solved"]["r"])]
    return Score("curriculum level solved (index)", True), np.asarray(levels, float)
  name = task_score if task_score in entry.get("eval", {}) else "loss"
  higher = name in ("alignment", "accuracy")
  return Score(f"final evaluation {name}", higher), np.asarray(entry["eval"][name]["values"])


def summarize(grid: dict, runs, summary: dict, task_score: str) -> dict:
  """``summary['grid']``: the axes, one row per (rule, point), and the best point of each rule."""
  rows = []
  for r in runs:
    entry = summary["rules"][r.label]
    how, values = score(entry, task_score)
    mean = float(np.mean(values)) if values.size else math.nan
    rows.append({"label": r.label, "rule": r.spec, "point": {k: r.changes[k] for k in grid},
                 "score": how.name, "higher_is_better": how.higher_is_better, "mean": mean,
                 "values": values.tolist()})
  best = {}
  for spec in dict.fromkeys(r["rule"] for r in rows):
    mine = [r for r in rows if r["rule"] == spec and math.isfinite(r["mean"])]
    if not mine:
      best[spec] = None  # every point diverged: no best point, never a NaN picked
      continue
    sign = -1 if mine[0]["higher_is_better"] else 1
    b = min(mine, key=lambda r: sign * r["mean"])
    entry = summary["rules"][b["label"]]
    best[spec] = {"label": b["label"], "point": b["point"], "score": b["score"],
                  "mean": b["mean"], "test": entry.get("test")}
  return {"axes": {k: list(v) for k, v in grid.items()}, "points": rows, "best": best}
