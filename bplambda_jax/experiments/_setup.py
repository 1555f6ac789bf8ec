"""What a run needs from its task: the model, the rules, the data stream, evaluation and test.

Everything here is per seed and traceable; the runner vmaps it over seeds and scans it over
updates. Data that live on the device (the MNIST splits) are passed to the compiled programs as
arguments (``Setup.data``), never baked into them as constants.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from bplambda_jax import tasks
from bplambda_jax._errors import ConfigError
from bplambda_jax.experiments import _metrics
from bplambda_jax.experiments import _task_metrics
from bplambda_jax.experiments._config import RULE_KEYS, RunConfig
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


def _streams(key):
  """(training key, evaluation key) of a seed's data key: independent streams."""
  return jax.random.split(key)


def load_data(cfg: RunConfig, *, verbose: bool = True):
  """(MnistData, provenance dict) for sequential MNIST configs, (None, None) otherwise."""
  if not cfg.task.startswith("seqmnist"):
    return None, None
  data = tasks.load_mnist(cfg.data_path, data_dir=cfg.data_dir, seed=cfg.seed, verbose=verbose)
  return data, dict(data.source._asdict())


def make_setup(cfg: RunConfig, data=None, source=None) -> Setup:
  """The :class:`Setup` of a resolved config (``data`` from :func:`load_data` for MNIST)."""
  dtype = jnp.dtype(cfg.dtype)
  extra = {"copy-repeat": {"max_n": cfg.max_n},
           "copy": {"pattern_length": cfg.pattern_length, "repeats": cfg.repeats}}
  task = tasks.get_task(cfg.task, **extra.get(cfg.task, {}))
  model = make_model(cfg.cell, task.loss, task.input_size, task.output_size, cfg.hidden_size,
                     param_dtype=dtype)
  B = cfg.batch_size
  level0, advance, select, test = None, None, None, None

  if cfg.task.startswith("seqmnist"):
    layout = cfg.task[len("seqmnist-"):]
    arrays = {"train": data.train, "validation": data.validation, "test": data.test}
    per_epoch = tasks.mnist_num_batches(data.train, B)

    def batch(d, key, level, step):
      del level
      return tasks.mnist_batch(d["train"], key, step // per_epoch, step % per_epoch, B, layout,
                               dtype=dtype)

    def split_metrics(params, d, split):
      n = tasks.mnist_num_batches(data.validation if split == "validation" else data.test,
                                  cfg.eval_batch_size, padded=True)
      return _task_metrics.evaluate(
          model, params, lambda i: tasks.mnist_eval_batch(d[split], i, cfg.eval_batch_size,
                                                          layout, dtype=dtype), n)

    def evaluate(rule, params, d, key):
      del rule, key
      return split_metrics(params, d, "validation")

    def test(params, d):
      return split_metrics(params, d, "test")

    return Setup(cfg, task, model, arrays, source, batch, None, None, evaluate, "loss", test)

  if cfg.task == "copy-repeat":
    max_len = task.seq_len
    level0 = tasks.curriculum_init()

    def batch(d, key, level, step):
      del d
      return tasks.curriculum_batch(level, jax.random.fold_in(_streams(key)[0], step), B,
                                    max_len, dtype)

    def advance(level, loss):
      return tasks.curriculum_update(level, loss, max_len)

    # copy-repeat is scored by its training batches (bits, curriculum level): no evaluation
    return Setup(cfg, task, model, None, None, batch, level0, advance, None, None, None)

  T = cfg.seq_len

  def generate(key, batch_size):
    if cfg.task == "copy":
      return tasks.copy_repeat_batch(key, cfg.pattern_length, cfg.repeats, batch_size,
                                     task.seq_len, dtype)
    if cfg.task == "toy":
      return tasks.toy_batch(batch_size, T, dtype)
    if cfg.task == "plastic-toy":
      return tasks.plastic_toy_batch(key, batch_size, T, dtype=dtype)
    return tasks.line_draw_batch(key, batch_size, T, npoints=3, noise=0.1, end_only=False,
                                 dtype=dtype)

  def batch(d, key, level, step):
    del d, level
    return generate(jax.random.fold_in(_streams(key)[0], step), B)

  def evaluate(rule, params, d, key):
    del d
    fresh = generate(_streams(key)[1], B)  # the same evaluation batch throughout a run
    if cfg.task in ("toy", "plastic-toy"):
      res = _metrics.alignment(rule, params, fresh, model=model)
      return {"alignment": res["learning_signal"], "grad_cosine": res["all"],
              "loss": _task_metrics.task_metrics(model, params, fresh, ("loss",))["loss"]}
    names = ("loss", "bits", "accuracy") if cfg.task == "copy" else ("loss",)
    return _task_metrics.task_metrics(model, params, fresh, names)

  return Setup(cfg, task, model, None, None, batch, None, None, evaluate, None, None)


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
