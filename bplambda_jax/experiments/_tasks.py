"""The tasks of ``bplambda run``, each in one place: data, evaluation, figures, preset, model size.

A :class:`RunTask` is everything the runner knows of a task; the config checks, the presets, the
setup and the figures read it and name no task. Adding a task is one module that builds a
``RunTask`` and calls :func:`register_task`, plus its test (docs/extending.md, "A new task").

Every function here is per seed and traceable: the runner vmaps it over seeds and scans it over
updates.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax

from bplambda_jax import tasks
from bplambda_jax._errors import ConfigError
from bplambda_jax.experiments import _metrics
from bplambda_jax.experiments import _task_metrics
from bplambda_jax.tasks import _curriculum


class Parts(NamedTuple):
  """What a task gives a run (see :class:`bplambda_jax.experiments._setup.Setup`).

  Attributes:
    batch: ``batch(data, key, level, step) -> Batch``: the training batch of one seed.
    level0: the curriculum's initial state, or None.
    advance: ``advance(level, loss) -> level``: the curriculum after a batch, or None.
    evaluate: ``evaluate(rule, params, data, key) -> {name: scalar}``, or None.
    select: the evaluation metric that selects the model (lower is better), or None.
    test: ``test(params, data) -> {name: scalar}`` on a held-out split, or None.
    arrays: device arrays the programs take as their ``data`` argument (never baked into them
      as constants), or None.
  """

  batch: Callable
  level0: Any = None
  advance: Optional[Callable] = None
  evaluate: Optional[Callable] = None
  select: Optional[str] = None
  test: Optional[Callable] = None
  arrays: Any = None


class RunTask(NamedTuple):
  """A task of ``bplambda run``.

  Attributes:
    name: the task's name (``bplambda run NAME``).
    describe: ``describe(config) -> tasks.Task``: shapes, loss, metrics and the paper's cell,
      hidden size and batch size, for the config's task keys (``describe(None)``: the task's
      defaults, which give the preset's model size).
    preset: the run's preset values beyond the paper's model size (learning rates, γ, sg_scale,
      budget, ``eval_every``, ``chunk``, and the defaults of the task's own keys).
    build: ``build(config, task, model, data) -> Parts`` for a resolved config.
    figures: the metrics plotted (``metrics.jsonl`` names; an ``eval_`` prefix for an
      evaluation metric shared with training).
    keys: the config keys that only this task (and others listing them) takes, e.g. 'seq_len'.
    faithful: preset values that ``faithful=True`` changes.
    load: ``load(config, verbose) -> (data, provenance dict)`` for a task whose data are loaded
      (its budget may be given in ``epochs`` over the training split), or None for generated data.
    max_batch_size: the largest batch any of its data can give, or None.
  """

  name: str
  describe: Callable
  preset: Mapping[str, Any]
  build: Callable
  figures: tuple
  keys: tuple = ()
  faithful: Mapping[str, Any] = {}
  load: Optional[Callable] = None
  max_batch_size: Optional[int] = None

  def paper_preset(self) -> dict:
    """The preset: the paper's cell, hidden size and batch size, then :attr:`preset`."""
    t = self.describe(None)
    return {"cell": t.cell, "hidden_size": t.hidden_size, "batch_size": t.batch_size,
            **self.preset}


RUN_TASKS: dict[str, RunTask] = {}


def register_task(task: RunTask) -> RunTask:
  """Make ``task`` known to ``bplambda run`` and ``RunConfig`` (a name is registered once)."""
  if not isinstance(task, RunTask):
    raise TypeError(f"register_task takes a RunTask, got {type(task).__name__}.")
  if task.name in RUN_TASKS:
    raise ValueError(f"task {task.name!r} is registered already.")
  RUN_TASKS[task.name] = task
  return task


def run_task(name: str) -> RunTask:
  """The registered task ``name``; ConfigError naming the registered ones."""
  if name not in RUN_TASKS:
    raise ConfigError(f"config key 'task' = {name!r} is not a task; accepted: "
                      f"{', '.join(RUN_TASKS)}.")
  return RUN_TASKS[name]


def _streams(key):
  """(training key, evaluation key) of a seed's data key: independent streams."""
  return jax.random.split(key)


def generated(generate: Callable) -> Callable:
  """The ``build`` of a task whose batches are generated: ``generate(config, task, dtype) ->
  fn(key, batch_size) -> Batch``. Training batches come from the seed's training stream; the
  evaluation is one batch from its evaluation stream, the same throughout a run, scored by the
  task's metrics ('alignment': the learning-signal cosine with BPTT, with the loss)."""

  def build(cfg, task, model, data):
    del data
    gen, B = generate(cfg, task, jax.numpy.dtype(cfg.dtype)), cfg.batch_size

    def batch(d, key, level, step):
      del d, level
      return gen(jax.random.fold_in(_streams(key)[0], step), B)

    def evaluate(rule, params, d, key):
      del d
      fresh = gen(_streams(key)[1], B)  # the same evaluation batch throughout a run
      if "alignment" in task.metrics:
        res = _metrics.alignment(rule, params, fresh, model=model)
        return {"alignment": res["learning_signal"], "grad_cosine": res["all"],
                "loss": _task_metrics.task_metrics(model, params, fresh, ("loss",))["loss"]}
      return _task_metrics.task_metrics(model, params, fresh, task.metrics)

    return Parts(batch, evaluate=evaluate)

  return build


# --------------------------------------------------------------------------- the paper's tasks

_SEQ_LEN = ("seq_len",)


def _toy_like(name):
  return lambda cfg: tasks.get_task(name)


register_task(RunTask(
    "toy", _toy_like("toy"),
    dict(seq_len=10, lr_cell=0.0, lr_readout=0.0, lr_synth=1e-3, gamma=1.0, sg_scale=1.0,
         steps=10_000, eval_every=100, chunk=100),
    generated(lambda cfg, task, dtype: lambda key, B: tasks.toy_batch(B, cfg.seq_len, dtype)),
    ("alignment", "loss"), _SEQ_LEN, faithful=dict(lr_synth=1e-4, steps=1_000)))

register_task(RunTask(
    "plastic-toy", _toy_like("plastic-toy"),
    dict(seq_len=10, lr_cell=1e-4, lr_readout=1e-4, lr_synth=1e-3, gamma=1.0, sg_scale=1.0,
         steps=10_000, eval_every=100, chunk=100),
    generated(lambda cfg, task, dtype: lambda key, B: tasks.plastic_toy_batch(
        key, B, cfg.seq_len, dtype=dtype)),
    ("alignment", "loss"), _SEQ_LEN))

register_task(RunTask(
    "line-draw", _toy_like("line-draw"),
    dict(seq_len=10, lr_cell=1e-3, lr_readout=1e-3, lr_synth=1e-3, gamma=0.9, sg_scale=0.5,
         steps=5_000, eval_every=500, chunk=100),
    generated(lambda cfg, task, dtype: lambda key, B: tasks.line_draw_batch(
        key, B, cfg.seq_len, npoints=3, noise=0.1, end_only=False, dtype=dtype)),
    ("loss", "eval_loss"), _SEQ_LEN))


def _copy_repeat(cfg, task, model, data):
  """copy-repeat: the curriculum's batches, scored by themselves (bits, level): no evaluation."""
  del model, data
  max_len, B, dtype = task.seq_len, cfg.batch_size, jax.numpy.dtype(cfg.dtype)

  def batch(d, key, level, step):
    del d
    return tasks.curriculum_batch(level, jax.random.fold_in(_streams(key)[0], step), B,
                                  max_len, dtype)

  def advance(level, loss):
    return _curriculum.curriculum_update(level, loss, max_len)

  return Parts(batch, tasks.curriculum_init(), advance)


register_task(RunTask(
    "copy-repeat", lambda cfg: tasks.get_task("copy-repeat",
                                              max_n=None if cfg is None else cfg.max_n),
    dict(max_n=10, lr_cell=1e-3, lr_readout=1e-3, lr_synth=1e-5, gamma=0.9, sg_scale=1.0,
         steps=150_000, eval_every=1000, chunk=100),
    _copy_repeat, ("bits", "level"), ("max_n",)))

register_task(RunTask(
    "copy", lambda cfg: tasks.get_task("copy") if cfg is None else tasks.get_task(
        "copy", pattern_length=cfg.pattern_length, repeats=cfg.repeats),
    dict(pattern_length=48, repeats=1, lr_cell=1e-3, lr_readout=1e-3, lr_synth=1e-4, gamma=0.9,
         sg_scale=1.0, steps=5_000, eval_every=500, chunk=100),
    generated(lambda cfg, task, dtype: lambda key, B: tasks.copy_repeat_batch(
        key, cfg.pattern_length, cfg.repeats, B, task.seq_len, dtype)),
    ("bits", "eval_loss", "accuracy"), ("pattern_length", "repeats")))


def _load_mnist(cfg, verbose):
  data = tasks.load_mnist(cfg.data_path, data_dir=cfg.data_dir, seed=cfg.seed, verbose=verbose)
  return data, dict(data.source._asdict())


def _seq_mnist(layout, cfg, task, model, data):
  """Sequential MNIST: batches of the training split by epoch; model selection on the
  validation loss; the test split scored once with the selected parameters."""
  del task
  dtype, B = jax.numpy.dtype(cfg.dtype), cfg.batch_size
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

  arrays = {"train": data.train, "validation": data.validation, "test": data.test}
  return Parts(batch, evaluate=evaluate, select="loss", test=test, arrays=arrays)


MAX_MNIST_TRAIN = 48_000  # 60,000 training images less the validation fifth
for _layout in ("row", "pixel", "permuted"):
  register_task(RunTask(
      f"seqmnist-{_layout}", functools.partial(lambda name, cfg: tasks.get_task(name),
                                               f"seqmnist-{_layout}"),
      dict(lr_cell=3e-4, lr_readout=3e-4, lr_synth=3e-4, gamma=0.9, sg_scale=0.1, chunk=96),
      functools.partial(_seq_mnist, _layout), ("loss", "accuracy"),
      ("epochs", "data_dir", "data_path"), load=_load_mnist, max_batch_size=MAX_MNIST_TRAIN))
