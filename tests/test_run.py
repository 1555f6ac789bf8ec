"""``bplambda run``: every task end to end at tiny sizes; interruption and resume; guards.

* every task runs with a couple of rules and writes config.json, metrics.jsonl, summary.json
  (mean ± sd with ddof = 1 over seeds), its figures and checkpoints, readable by everyone;
* a real ``bplambda run`` subprocess interrupted by SIGINT resumes to the same numbers as an
  uninterrupted run;
* a run made to diverge stops with the guard's message and leaves a checkpoint that loads.
"""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import bplambda_jax as bl
from bplambda_jax import cli
from bplambda_jax.experiments import RunConfig
from bplambda_jax.experiments import _runner
from bplambda_jax.experiments._setup import make_run_rule, make_setup

TINY = ["--seeds", "2", "--no-progress", "--set", "batch_size=4", "--set", "hidden_size=4",
        "--set", "chunk=2", "--set", "eval_every=4"]


def _run(argv, capsys=None):
  code = cli.main(argv)
  out = capsys.readouterr() if capsys is not None else None
  return code, out


def _mnist_npz(path, n_train=60, n_test=20):
  rng = np.random.default_rng(0)
  np.savez(path, x_train=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
           y_train=rng.integers(0, 10, n_train), x_test=rng.integers(0, 256, (n_test, 28, 28),
                                                                     dtype=np.uint8),
           y_test=rng.integers(0, 10, n_test))
  return str(path)


TASKS = {
    "toy": (["--rule", "bp_lambda,dni:2"], ("alignment.png", "loss.png")),
    "plastic-toy": (["--rule", "bp_lambda,eprop"], ("alignment.png", "loss.png")),
    "line-draw": (["--rule", "tbptt:3"], ("loss.png", "eval_loss.png")),
    "copy-repeat": (["--rule", "bp_lambda,bptt", "--set", "max_n=2"], ("bits.png", "level.png")),
    "copy": (["--rule", "bp_lambda,tbptt:4", "--set", "pattern_length=3", "--set",
              "cell=elementwise_lstm", "--set", "mode=online"], ("bits.png", "accuracy.png")),
    "seqmnist-row": (["--rule", "eprop", "--set", "eval_batch_size=8"],
                     ("loss.png", "accuracy.png")),
    "seqmnist-pixel": (["--rule", "tbptt:50", "--set", "eval_batch_size=8"],
                       ("loss.png", "accuracy.png")),
    "seqmnist-permuted": (["--rule", "bp_lambda", "--set", "eval_batch_size=8"],
                          ("loss.png", "accuracy.png")),
}


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_runs_and_writes_its_results(task, tmp_path, capsys):
  extra, figures = TASKS[task]
  out = tmp_path / "out"
  argv = ["run", task, "--steps", "4", "--out", str(out)] + TINY + extra
  if task.startswith("seqmnist"):
    argv += ["--data-path", _mnist_npz(tmp_path / "mnist.npz")]
  code, captured = _run(argv, capsys)
  assert code == 0, captured.err
  names = set(os.listdir(out))
  assert {"config.json", "metrics.jsonl", "summary.json", "checkpoints"} <= names
  assert set(figures) <= names, names
  for name in names - {"checkpoints"}:
    mode = stat.S_IMODE(os.stat(out / name).st_mode)
    assert mode & 0o044 == 0o044, f"{name} is not readable by group and others: {oct(mode)}"
  config = json.loads((out / "config.json").read_text())
  assert config["task"] == task and config["steps"] == 4
  summary = json.loads((out / "summary.json").read_text())
  specs = extra[1].split(",")
  assert list(summary["rules"]) == specs
  assert summary["provenance"]["jax"] == jax.__version__
  for spec in specs:
    s = summary["rules"][spec]
    assert s["steps"] == 4 and s["seeds"] == [0, 1]
    for group in ("final", "eval", "test"):
      for stat_ in (s.get(group) or {}).values():
        values = np.asarray(stat_["values"])
        assert stat_["n"] == 2 and np.isclose(stat_["mean"], values.mean())
        assert np.isclose(stat_["sd"], values.std(ddof=1))
    if task.startswith("seqmnist"):
      assert 0.0 <= s["test"]["accuracy"]["mean"] <= 1.0
      assert summary["data"]["name"] == "npz" and summary["data"]["num_test"] == 20
    if task == "copy-repeat":
      assert len(s["solved"]["n"]) == 2
  lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
  train = [l for l in lines if l["kind"] == "train"]
  assert len(train) == len(specs) * 2 * 2  # rules × seeds × chunks of 2 updates
  assert {l["seed"] for l in train} == {0, 1}


def test_a_results_directory_is_never_overwritten_by_accident(tmp_path, capsys):
  out = str(tmp_path / "out")
  argv = ["run", "toy", "--steps", "2", "--out", out, "--seeds", "2", "--no-progress",
          "--set", "chunk=1", "--set", "eval_every=2"]
  assert _run(argv, capsys)[0] == 0
  before = open(os.path.join(out, "summary.json")).read()
  code, captured = _run(argv, capsys)
  assert code == cli.EXIT_ERROR
  assert "already holds a run; pass --resume to continue it or --overwrite" in captured.err
  assert open(os.path.join(out, "summary.json")).read() == before
  assert _run(argv + ["--resume"], capsys)[0] == 0  # finished rules are kept, not recomputed
  assert open(os.path.join(out, "summary.json")).read().split('"provenance"')[0] == \
      before.split('"provenance"')[0]
  assert _run(argv + ["--overwrite"], capsys)[0] == 0


def test_help_lists_defaults_and_rules(capsys):
  with pytest.raises(SystemExit):
    cli.main(["run", "--help"])
  text = capsys.readouterr().out
  for name in bl.RULE_NAMES:
    assert name in text
  assert "(default: None)" in text or "default:" in text
  for task in bl.tasks.TASK_NAMES:
    assert task in text


def test_print_config_shows_the_resolved_preset(capsys):
  assert cli.main(["run", "copy-repeat", "--faithful", "--set", "lr_synth=2e-5",
                   "--print-config"]) == 0
  cfg = json.loads(capsys.readouterr().out)
  assert cfg["hidden_size"] == 100 and cfg["batch_size"] == 100 and cfg["gamma"] == 0.9
  assert cfg["lr_synth"] == 2e-5 and cfg["faithful"] is True and cfg["steps"] == 150_000
  assert RunConfig.from_dict(cfg) == RunConfig.from_dict(cfg).resolve()  # a fixed point


def test_config_round_trips_through_json(tmp_path):
  cfg = RunConfig(task="line-draw", rules=("eprop", "tbptt:3"), seeds=4, lr_cell=1e-2)
  assert RunConfig.from_json(cfg.to_json()) == cfg
  path = tmp_path / "c.json"
  path.write_text(cfg.to_json())
  args = cli.build_parser().parse_args(["run", "line-draw", "--config", str(path),
                                        "--set", "seeds=5"])
  assert cli.build_config(args) == cfg.replace(seeds=5)


# ------------------------------------------------------------------ interruption and resume

_SUB = ["run", "copy-repeat", "--rule", "bp_lambda", "--seeds", "2", "--steps", "300",
        "--no-progress", "--set", "batch_size=4", "--set", "hidden_size=6", "--set", "max_n=3",
        "--set", "chunk=10", "--set", "eval_every=100", "--set", "checkpoint_every=10"]


def _cli(argv, **kw):
  return subprocess.Popen([sys.executable, "-m", "bplambda_jax.cli"] + argv,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_sigint_saves_and_resume_gives_identical_numbers(tmp_path):
  interrupted, whole = str(tmp_path / "a"), str(tmp_path / "b")
  proc = _cli(_SUB + ["--out", interrupted])
  reference = _cli(_SUB + ["--out", whole])
  ckpt = os.path.join(interrupted, "checkpoints", "bp_lambda")
  deadline = time.time() + 300
  while time.time() < deadline and not (os.path.isdir(ckpt) and os.listdir(ckpt)):
    time.sleep(0.2)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == cli.EXIT_INTERRUPTED, err
  assert "SIGINT: stopped after update" in err and "--resume" in err
  stopped_at = int(err.split("stopped after update ")[1].split()[0])
  assert stopped_at < 300
  resumed = _cli(_SUB + ["--out", interrupted, "--resume"])
  _, err = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, err
  _, err = reference.communicate(timeout=600)
  assert reference.returncode == 0, err
  a = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
  b = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
  assert a == b  # every logged number, in the same order, bit for bit
  sa = json.loads((tmp_path / "a" / "summary.json").read_text())["rules"]["bp_lambda"]
  sb = json.loads((tmp_path / "b" / "summary.json").read_text())["rules"]["bp_lambda"]
  assert sa["final"] == sb["final"] and sa["solved"] == sb["solved"]


@pytest.mark.slow
def test_a_diverging_run_stops_and_leaves_a_checkpoint_that_loads(tmp_path, capsys):
  out = tmp_path / "out"
  argv = ["run", "plastic-toy", "--rule", "eprop", "--steps", "20", "--out", str(out),
          "--seeds", "2", "--no-progress", "--set", "lr_cell=1e30", "--set", "chunk=5",
          "--set", "eval_every=10"]
  code, captured = _run(argv, capsys)
  assert code == cli.EXIT_STOPPED
  err = captured.err
  assert "non-finite" in err and "rule 'eprop', seed 0, update 2" in err
  assert "Every seed is saved at its last good state" in err and "checkpoint 5 of" in err
  cfg = RunConfig.from_dict({k: v for k, v in json.loads((out / "config.json").read_text())
                             .items() if k != "runs"})
  setup = make_setup(cfg)
  rule = make_run_rule(cfg, "eprop", setup.model)
  opt = bl.optimiser(cfg.lr_cell, cfg.lr_readout, cfg.lr_synth)
  template = _runner._programs(setup, rule, opt, cfg)[0](_runner.seed_keys(cfg), {})
  ckpt = bl.training.Checkpointer(str(out / "checkpoints" / "eprop"))
  state, meta = ckpt.restore(ckpt.latest_step(), template)
  ckpt.close()
  assert meta["stopped"] == "guard"
  assert np.asarray(state.guard)[:, 0].tolist() == [5, 5]  # code 5: non-finite loss
  finite = jax.tree.map(lambda a: bool(np.all(np.isfinite(a))), state.train.params)
  assert all(jax.tree.leaves(finite))  # the last good state, not the diverged one
  summary = out / "summary.json"
  assert not summary.exists() or "eprop" not in json.loads(summary.read_text())["rules"]
