"""What a run needs from its task: the model, the rules, the data stream, evaluation and test.

Everything here is per seed and traceable; the runner vmaps it over seeds and scans it over
updates. Data that live on the device (the MNIST splits) are passed to the compiled programs as
arguments (``Setup.data``), never baked into them as constants.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax.numpy as jnp

from bplambda_jax._errors import ConfigError
from bplambda_jax.experiments._config import RULE_KEYS, RunConfig
from bplambda_jax.experiments._tasks import run_task
from bplambda_jax.model import Model, make_model
from bplambda_jax.rules import Rule, make_rule, parse_rule_spec, rule_options


class Setup(NamedTuple):
  """A task made ready for a run (see the module docstring).

  Attributes:
    config: the resolved run config.
    task: the task's description.
    model: the model every rule trains.
    data: device arrays the programs take as an argument (MNIST splits), or None.
    source: where the data came from (the provenance of MNIST), or None.
    batch: ``batch(data, key, level, step) -> Batch``: the training batch of one seed.
    level0: the curriculum's initial state (copy-repeat), or None.
    advance: ``advance(level, loss) -> level``: the curriculum after a batch, or None.
    evaluate: ``evaluate(rule, params, data, key) -> {name: scalar}``: a seed's evaluation, or
      None (copy-repeat is scored by its training batches).
    select: the evaluation metric that selects the model ('loss' on the validation split), or
      None (the final parameters are the result).
    test: ``test(params, data) -> {name: scalar}`` on the test split, or None.
  """

  config: RunConfig
  task: Any
  model: Model
  data: Any
  source: Optional[dict]
  batch: Callable
  level0: Any
  advance: Optional[Callable]
  evaluate: Optional[Callable]
  select: Optional[str]
  test: Optional[Callable]


def load_data(cfg: RunConfig, *, verbose: bool = True):
  """(data, provenance dict) of a task whose data are loaded (sequential MNIST), else (None,
  None)."""
  load = run_task(cfg.task).load
  return (None, None) if load is None else load(cfg, verbose)


def make_setup(cfg: RunConfig, data=None, source=None) -> Setup:
  """The :class:`Setup` of a resolved config (``data`` from :func:`load_data`), built by the
  config's task (:class:`~bplambda_jax.experiments._tasks.RunTask`)."""
  run = run_task(cfg.task)
  task = run.describe(cfg)
  model = make_model(cfg.cell, task.loss, task.input_size, task.output_size, cfg.hidden_size,
                     param_dtype=jnp.dtype(cfg.dtype))
  parts = run.build(cfg, task, model, data)
  return Setup(cfg, task, model, parts.arrays, source if run.load else None, parts.batch,
               parts.level0, parts.advance, parts.evaluate, parts.select, parts.test)


def make_run_rule(cfg: RunConfig, spec: str, model: Model) -> Rule:
  """The rule ``spec`` with the run's rule options and the resolved mode.

  The run's config keys that are rule options (``_config.RULE_KEYS``: λ, γ, sg_scale, faithful)
  go to the rule where its factory takes them and its spec does not set them; a numeric one (a
  hyper-parameter) only where the rule, as its spec configures it, has that hyper-parameter
  (``Rule.hparams``: DNI has γ only with bootstrap='gamma').

  ``mode='auto'`` takes the sequence mode wherever it gives the same numbers as the online mode
  (every rule with a reverse form, except BP(λ) with the authors' per-step clipping) and the
  online mode otherwise; truncated BPTT, DNI and SnAp have no mode. A spec that sets its own mode
  keeps it.
  """
  written = parse_rule_spec(spec).options
  keys = [k for k in RULE_KEYS if k in rule_options(spec) and k not in written]
  flags = {k: getattr(cfg, k) for k in keys if isinstance(getattr(cfg, k), bool)}
  hyper = [k for k in keys if k not in flags]
  hparams = _with_mode(cfg, spec, model, flags).hparams if hyper else {}
  options = {**flags, **{k: getattr(cfg, k) for k in hyper if k in hparams}}
  return _with_mode(cfg, spec, model, options)


def _with_mode(cfg: RunConfig, spec: str, model: Model, options: dict) -> Rule:
  """``make_rule(spec, model, **options)`` in the run's mode (see :func:`make_run_rule`)."""
  if "mode" in parse_rule_spec(spec).options:
    return make_rule(spec, model, **options)
  if "mode" not in rule_options(spec):
    if cfg.mode == "sequence":
      raise ConfigError(f"rule {spec!r} has no sequence mode; use mode 'auto' or 'online'.")
    return make_rule(spec, model, **options)
  if cfg.mode != "auto":
    return make_rule(spec, model, mode=cfg.mode, **options)
  try:  # the sequence mode refuses what it cannot compute exactly (clipping, SnAp-like traces)
    return make_rule(spec, model, mode="sequence", **options)
  except ValueError:
    return make_rule(spec, model, mode="online", **options)
