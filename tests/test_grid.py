"""Hyper-parameter grids: one compiled program per structural configuration, the same numbers as
single runs, the best point, and the toy experiment's entry points (tiny budgets)."""

import collections
import json

import numpy as np
import pytest

from bplambda_jax import cli
from bplambda_jax import experiments
from bplambda_jax.experiments import _grid
from helpers import counting_traces
from test_readme_commands import COMMANDS as README_COMMANDS

TINY = ["--seeds", "2", "--steps", "4", "--no-progress", "--set", "batch_size=4",
        "--set", "seq_len=4", "--set", "chunk=2", "--set", "eval_every=2"]


def _by_label(out, kind, key):
  """{(rule label, seed): [values by step]} of the metrics log."""
  got = collections.defaultdict(list)
  for line in (out / "metrics.jsonl").read_text().splitlines():
    row = json.loads(line)
    if row["kind"] == kind:
      got[(row["rule"], row["seed"])].append(row[key])
  return got


@pytest.mark.slow  # 9 small compilations (3 programs × 3 structures) and 7 figures: ~25 s
def test_a_grid_compiles_once_per_structure_and_gives_the_numbers_of_single_runs(
    tmp_path, monkeypatch, capsys):
  traces = counting_traces(monkeypatch)
  grid = tmp_path / "grid"
  assert cli.main(["run", "toy", *TINY, "--out", str(grid), "--set", "seed_axis=vmap",
                   "--grid", "hidden_size=4,6", "--grid", "lambda_=0,1",
                   "--grid", "lr_synth=1e-3,1e-2"]) == 0
  assert traces["chunk_one"] == 2  # 2 hidden sizes × (2 λ × 2 learning rates × 2 seeds)
  summary = json.loads((grid / "summary.json").read_text())
  points = summary["grid"]["points"]
  assert len(points) == 8 and len(summary["rules"]) == 8
  for p in points:  # one entry per point: mean ± sd over the seeds
    stat = summary["rules"][p["label"]]["eval"]["alignment"]
    assert stat["n"] == 2
    np.testing.assert_allclose(stat["sd"], np.std(stat["values"], ddof=1), rtol=1e-12)
    assert p["values"] == stat["values"]
  best = summary["grid"]["best"]["bp_lambda"]
  assert best["mean"] == max(p["mean"] for p in points)  # the toy's score: higher is better
  for name in ("grid_hidden_size.png", "grid_lambda_.png", "grid_lr_synth.png"):
    assert name in summary["figures"] and (grid / name).stat().st_size > 1000
  saved = json.loads((grid / "config.json").read_text())
  assert saved["grid"] == {"hidden_size": [4, 6], "lambda_": [0.0, 1.0], "lr_synth": [1e-3, 1e-2]}
  assert experiments.RunConfig.from_dict(
      {k: v for k, v in saved.items() if k != "runs"}).to_dict() == {
          k: v for k, v in saved.items() if k != "runs"}
  # one grid point against the same settings as a plain run (constants, a loop over seeds)
  traces.clear()
  single = tmp_path / "single"
  assert cli.main(["run", "toy", *TINY, "--out", str(single), "--set", "hidden_size=6",
                   "--set", "lambda_=0", "--set", "lr_synth=1e-2"]) == 0
  assert traces["chunk_one"] == 1
  capsys.readouterr()
  label = "bp_lambda hidden_size=6 lambda_=0 lr_synth=0.01"
  for kind, key in (("eval", "alignment"), ("train", "loss")):
    a, b = _by_label(grid, kind, key), _by_label(single, kind, key)
    for seed in (0, 1):
      assert len(a[(label, seed)]) == len(b[("bp_lambda", seed)]) >= 2
      np.testing.assert_allclose(a[(label, seed)], b[("bp_lambda", seed)], rtol=1e-5, atol=1e-6)


def test_the_best_point_is_selected_on_validation_with_its_test_metrics():
  runs = [experiments.Run(_grid.label("eprop", {"lr_cell": lr}), "eprop", {"lr_cell": lr})
          for lr in (1e-3, 1e-2, 1e-1)]
  val = {1e-3: [0.5, 0.7], 1e-2: [0.3, 0.4], 1e-1: [np.nan, 0.1]}  # a diverged seed: NaN mean
  summary = {"rules": {r.label: {"best_score": experiments.mean_sd(val[r.changes["lr_cell"]]),
                                 "eval": {"loss": experiments.mean_sd([9.0, 9.0])},
                                 "test": {"accuracy": experiments.mean_sd([r.changes["lr_cell"]] * 2)}}
                       for r in runs}}
  out = _grid.summarize({"lr_cell": (1e-3, 1e-2, 1e-1)}, runs, summary, "test_accuracy")
  best = out["best"]["eprop"]
  assert best["point"] == {"lr_cell": 1e-2} and best["score"] == "validation loss"
  np.testing.assert_allclose(best["mean"], 0.35)
  assert best["test"]["accuracy"]["values"] == [1e-2, 1e-2]  # the test at the best point


@pytest.mark.slow  # four entry points, each compiling its own programs: ~20 s
def test_the_toy_experiment_gives_the_same_numbers_through_every_entry_point(tmp_path, capsys):
  common = ["--seeds", "2", "--steps", "4", "--no-progress", "--set", "hidden_size=4",
            "--set", "chunk=2", "--set", "eval_every=2"]
  assert cli.main(["toy", "--lambdas", "0,1", *common, "--out", str(tmp_path / "toy")]) == 0
  assert cli.main(["run", "toy", "--grid", "lambda_=0,1", *common,
                   "--out", str(tmp_path / "run")]) == 0
  assert cli.main(["align", "--task", "toy", "--rule", "bp_lambda", "--seeds", "2",
                   "--synth-steps", "4", "--hidden-size", "4", "--no-progress",
                   "--out", str(tmp_path / "align")]) == 0
  capsys.readouterr()
  res = experiments.run_toy(lambdas=(0.0, 1.0), seeds=(0, 1), steps=4, hidden_size=4,
                            record_every=2)
  toy = _by_label(tmp_path / "toy", "eval", "alignment")
  assert toy == _by_label(tmp_path / "run", "eval", "alignment")
  assert res["steps"] == [0, 2, 4]
  for j, lam in enumerate(("0", "1")):
    for seed in (0, 1):
      np.testing.assert_array_equal(res["alignment"][seed, j], toy[(f"bp_lambda lambda_={lam}",
                                                                     seed)])
  assert np.all(res["alignment"][:, 1, -1] > res["alignment"][:, 1, 0])  # ĝ learns at λ = 1
  # align measures λ = 1 after its synthesiser's 4 updates (BP(λ)'s online mode there, the
  # sequence mode here: the same numbers to rounding)
  aligned = _by_label(tmp_path / "align", "eval", "learning_signal")
  for seed in (0, 1):
    np.testing.assert_allclose(aligned[("bp_lambda", seed)][-1], res["alignment"][seed, 1, -1],
                               rtol=1e-5)


@pytest.mark.parametrize("grid, match", [
    ({}, "names no key"),
    ({"lambda_": 0.5}, "needs a list of values"),
    ({"seeds": [1, 2]}, "cannot be a grid axis"),
    ({"lambda_": []}, "has no values"),
    ({"gamma": [0.9, 0.9]}, "repeats a value"),
    ({"cell": ["lstm", "gru2"]}, "'cell' = 'gru2' is out of range"),
])
def test_a_bad_grid_is_refused_when_the_config_is_built(grid, match):
  with pytest.raises(ValueError, match=match):
    experiments.RunConfig(grid=grid)


def _grid_signature(command):
  """(task, first rule's name without its window, grid keys): the documented grid commands that
  compile the same kind of program (the report's tuning grids repeat a few of these)."""
  argv = command.split()
  rule = argv[argv.index("--rule") + 1].split(",")[0].split(":")[0] if "--rule" in argv else None
  keys = tuple(argv[i + 1].split("=")[0] for i, a in enumerate(argv) if a == "--grid")
  return argv[2], rule, keys


def _grid_size(command):
  argv = command.split()
  return int(np.prod([len(argv[i + 1].split(",")) for i, a in enumerate(argv) if a == "--grid"]))


# one documented command per signature, the largest grid of it (an extension of a grid beyond
# its edge may have two points), its first rule only (each rule compiles its own program)
_BY_SIGNATURE = {}
for _, _c in README_COMMANDS:
  if "--grid" in _c:
    _BY_SIGNATURE.setdefault(_grid_signature(_c), []).append(_c)
DOCUMENTED_GRIDS = [max(cs, key=_grid_size) for cs in _BY_SIGNATURE.values()]


@pytest.mark.slow  # the documented grid commands at a tiny budget, one rule each: ~10 s each
@pytest.mark.parametrize("command", DOCUMENTED_GRIDS)
def test_the_documented_grids_compile_once(command, tmp_path, monkeypatch, capsys):
  traces = counting_traces(monkeypatch)
  small = {"toy": ["--set", "hidden_size=4"], "plastic-toy": ["--set", "hidden_size=4"],
           "copy-repeat": ["--set", "hidden_size=4", "--set", "batch_size=4", "--set", "max_n=2"],
           "copy": ["--set", "hidden_size=4", "--set", "batch_size=4", "--set", "repeats=1",
                    "--set", "eval_batch_size=4"]}
  argv = command.split()[1:]
  if "--rule" in argv:
    i = argv.index("--rule") + 1
    argv[i] = argv[i].split(",")[0]
  assert cli.main(argv + small[argv[1]] + ["--steps", "2", "--set", "chunk=2", "--seeds", "2",
                                           "--no-progress", "--out", str(tmp_path / "out")]) == 0
  capsys.readouterr()
  assert traces["chunk_one"] == 1
  summary = json.loads((tmp_path / "out" / "summary.json").read_text())
  n = np.prod([len(v) for v in summary["grid"]["axes"].values()])
  assert len(summary["grid"]["points"]) == len(summary["rules"]) == n >= 5
