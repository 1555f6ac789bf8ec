"""``run``: a whole experiment (every rule of a config) into a results directory."""

from __future__ import annotations

import os
from typing import Optional, Sequence

import jax

from bplambda_jax._errors import ConfigError
from bplambda_jax.experiments import _grid
from bplambda_jax.experiments import _plots as plots
from bplambda_jax.experiments import _results as results
from bplambda_jax.experiments._config import RunConfig, split_rule_entry
from bplambda_jax.experiments._runner import Interrupted, Run, RunError, group_config
from bplambda_jax.experiments._runner import group_rule, group_runs, train_group
from bplambda_jax.experiments._runner import stop_signals
from bplambda_jax.experiments._setup import load_data, make_setup
from bplambda_jax.experiments._tasks import run_task

# config keys a resumed run may change (extending its budget)
RESUMABLE_CHANGES = ("steps", "epochs")


def runs_of(cfg: RunConfig) -> list[Run]:
  """One :class:`Run` per rule of the config (labelled by its label or its spec as written) and
  per point of its grid (the label followed by the point's values)."""
  rules = [split_rule_entry(entry) for entry in cfg.rules]
  if cfg.grid is None:
    return [Run(label, spec, {}) for label, spec in rules]
  return [Run(_grid.label(label, point), spec, point) for label, spec in rules
          for point in _grid.points(cfg.grid)]


def _check_resume(out: str, cfg: RunConfig, runs, log: results.MetricsLog) -> None:
  """ResultsError unless ``cfg`` continues the run in ``out``: the same config, with a budget no
  smaller than what any rule has done."""
  saved = results.read_json(os.path.join(out, "config.json"))
  if not isinstance(saved, dict):
    raise results.ResultsError(f"{os.path.join(out, 'config.json')} is damaged (not a JSON "
                               f"object); restore it, or start again with --overwrite.")
  now = {**cfg.to_dict(), "runs": [r._asdict() for r in runs]}
  diff = sorted(k for k in set(saved) | set(now)
                if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k))
  if diff:
    raise results.ResultsError(
        f"--resume: the run in {out} was made with another config; differing keys: "
        + ", ".join(f"{k} (saved {saved.get(k)!r}, now {now.get(k)!r})" for k in diff)
        + ". Pass the same settings, or use --overwrite or another --out.")
  for r in runs:
    done = log.last_step(r.label)
    if cfg.steps < done:
      raise results.ResultsError(
          f"--resume: rule {r.label!r} of the run in {out} has already done {done} updates per "
          f"seed, more than the {cfg.steps} asked for; a run cannot be shortened. Pass --steps "
          f">= {done} to continue or extend it, or use --overwrite or another --out.")


def run_experiment(config: RunConfig, out: str, *, grid: Optional[dict] = None,
        runs: Optional[Sequence[Run]] = None, resume: bool = False, overwrite: bool = False,
        progress: bool = True, verbose: bool = True) -> dict:
  """Train every rule of ``config`` (each with its seeds) into the results directory ``out``.

  Args:
    config: the run config (resolved here from the task's presets).
    out: the results directory (see :mod:`bplambda_jax.experiments._results`).
    grid: a hyper-parameter grid {key: [values]} (replaces ``config.grid``): every rule at every
      point, the points of one rule and structural configuration in one compiled program (see
      :mod:`bplambda_jax.experiments._grid`); the summary gains ``'grid'`` (per point and the
      best point) and a figure per grid axis.
    runs: what to compare (default: one run per rule spec of the config and grid point). Runs
      of one rule spec that differ only in traced hyper-parameters share one compiled program.
    resume: continue the run in ``out`` from its checkpoints: finished rules are kept; with a
      larger ``steps`` than the run was made for, every rule is extended to it (to the numbers of
      an uninterrupted run of that budget) and config.json is rewritten; a ``steps`` smaller
      than what a rule has done is refused.
    overwrite: delete ``out`` first.
    progress: show a progress bar per rule.
    verbose: print the data source and where the results go.

  Returns:
    The summary (also written to ``out/summary.json``).

  Raises:
    ResultsError: ``out`` cannot be used (checked before anything is compiled): it holds another
      run, or another process is writing it (``out`` is locked while a run writes it).
    ConfigError: a bad config or grid, or ``dtype`` 'float64' without ``jax_enable_x64``.
    RunError: a guard stopped the run (non-finite values, bad labels...); the last good state is
      checkpointed.
    Interrupted: SIGINT or SIGTERM; a checkpoint was saved.
  """
  if grid is not None:
    config = config.replace(grid=grid)
  new = _missing_ancestors(out)  # the directories this run creates, innermost first
  out, lock = results.prepare(out, resume=resume, overwrite=overwrite)
  try:
    summary = _run_locked(config, out, runs, resume, progress, verbose)
  except BaseException as e:
    if new and not isinstance(e, (RunError, Interrupted, KeyboardInterrupt)):
      results.remove_if_unused(out, lock)  # no directory that a corrected retry would be refused
      for parent in new[1:]:
        if os.path.isdir(parent) and not os.listdir(parent):
          os.rmdir(parent)
    raise
  finally:
    lock.release()
  if verbose:
    print(f"results in {out}")
  return summary


def _missing_ancestors(path: str) -> list[str]:
  """``path`` and its ancestors that do not exist yet, innermost first."""
  path, missing = os.path.abspath(path), []
  while path and not os.path.exists(path) and path != os.path.dirname(path):
    missing.append(path)
    path = os.path.dirname(path)
  return missing


def prepare(cfg: RunConfig, runs, data=None, source=None) -> list:
  """[(runs that share a program, their Setup)] of a resolved config, every rule built (an option
  or a grid key that a rule does not take is refused here; nothing is compiled)."""
  for r in runs:
    cfg.replace(**r.changes)  # every value checked
  groups = [(group, make_setup(group_config(cfg, group), data, source))
            for group in group_runs(runs)]
  for group, setup in groups:
    group_rule(cfg, setup, group)
  return groups


def _run_locked(config, out, runs, resume, progress, verbose):
  if config.dtype == "float64" and not jax.config.jax_enable_x64:
    raise ConfigError("config key 'dtype' = 'float64' needs 64-bit JAX, which is off: call "
                      "jax.config.update('jax_enable_x64', True) before any computation (the "
                      "bplambda command does so itself), or use dtype 'float32'.")
  # everything that can be checked is checked before anything is written or compiled
  data, source = load_data(config, verbose=verbose)
  cfg = config.resolve(None if data is None else data.train.num_examples)
  if runs is not None and cfg.grid is not None:
    raise ConfigError("give a grid or explicit runs, not both (a grid makes the runs).")
  runs = list(runs or runs_of(cfg))
  if len({r.label for r in runs}) != len(runs):
    raise ConfigError(f"two runs have the same label: {[r.label for r in runs]}.")
  groups = prepare(cfg, runs, data, source)
  log_path = os.path.join(out, "metrics.jsonl")
  if resume:
    _check_resume(out, cfg, runs, results.MetricsLog(log_path))
  results.write_json(os.path.join(out, "config.json"),
                     {**cfg.to_dict(), "runs": [r._asdict() for r in runs]})
  log = results.MetricsLog(log_path)
  path = os.path.join(out, "summary.json")
  summary = results.read_json(path) if resume and os.path.exists(path) else {
      "task": cfg.task, "data": source, "rules": {}}
  summary["provenance"] = results.provenance()
  with stop_signals() as stop:
    for group, setup in groups:
      if all(summary["rules"].get(r.label, {}).get("budget") == cfg.steps for r in group):
        continue  # finished before: never recomputed, never lost
      summary["rules"].update(train_group(cfg, setup, group, out, log, resume=resume,
                                          progress=progress, stop=stop))
      results.write_json(path, summary)
  written = []
  if cfg.grid is not None:
    summary["grid"] = _grid.summarize(cfg.grid, runs, summary, groups[0][1].task.score)
    written = plots.plot_grid(out, summary["grid"], f"{cfg.task}: grid")
  figures = run_task(cfg.task).figures
  notes = {}
  if cfg.lr_cell == 0 and cfg.lr_readout == 0:
    notes["loss"] = notes["bits"] = ("the network is fixed (lr_cell = lr_readout = 0), so its loss "
                                     "cannot change; only the synthesiser learns")
  summary["figures"] = [os.path.basename(p) for p in written + plots.plot(
      out, log.lines(), figures, f"{cfg.task}: {', '.join(r.label for r in runs)}", notes)]
  results.write_json(path, summary)
  return summary


__all__ = ["Interrupted", "RunError", "run", "runs_of"]
