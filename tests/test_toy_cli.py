"""The toy task and the `bplambda toy` command (shortened runs)."""

import json
import re

import matplotlib.image
import numpy as np
import pytest

from bplambda_jax import cli
from bplambda_jax import experiments
from bplambda_jax import tasks
from bplambda_jax import internals
from helpers import counting_traces


def test_toy_batch_matches_spec():
  b = tasks.toy_batch(4, 10)
  assert b.x.shape == (10, 4, 10) and b.y.shape == (10, 4, 2) and b.mask.shape == (10, 4)
  np.testing.assert_array_equal(b.x[0, 0], [1, 1, 0, 1, 0, 0, 0, 0, 0, 1])
  assert float(np.abs(b.x[1:]).sum()) == 0.0
  np.testing.assert_array_equal(b.y[-1, 0], [0.0, 1.0])
  np.testing.assert_array_equal(b.mask[:, 0], [0] * 9 + [1])


@pytest.mark.slow
def test_alignment_rises_with_lambda():
  res = experiments.run_toy(lambdas=(0.0, 0.5, 1.0), seeds=(0, 1), steps=1500, record_every=500)
  final = np.asarray(res["alignment"])[:, :, -1].mean(0)
  assert final[0] < final[1] < final[2], final
  assert final[2] > 0.9, final
  first = np.asarray(res["alignment"])[:, 2, 0].mean()
  assert first == 0.0  # ĝ starts at zero: the signal is the immediate gradient, 0 before T−1


def _exit_code_and_error(argv, capsys):
  """Run the command; (exit code, stderr). Argument-parsing errors exit, config errors return."""
  try:
    code = cli.main(argv)
  except SystemExit as e:
    code = e.code
  return code, capsys.readouterr().err


def test_cli_toy_writes_results_and_plot(tmp_path, capsys, monkeypatch):
  traces = counting_traces(monkeypatch)
  out = tmp_path / "toy"
  code = cli.main(["toy", "--lambdas", "0,1", "--seeds", "2", "--steps", "200",
                   "--set", "chunk=50", "--set", "eval_every=50", "--out", str(out),
                   "--no-progress"])
  assert code == 0
  assert traces["chunk_one"] == 1  # every (λ, seed) pair in one compiled program
  text = capsys.readouterr().out
  assert "final alignment" in text
  summary = json.loads((out / "summary.json").read_text())
  runs = summary["rules"]
  assert [r["changes"]["lambda_"] for r in runs.values()] == [0.0, 1.0]
  lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]
  for label, r in runs.items():
    final = r["eval"]["alignment"]
    assert len(final["values"]) == final["n"] == 2  # one final alignment per seed
    np.testing.assert_allclose(final["mean"], np.mean(final["values"]), rtol=1e-12)
    assert r["steps"] == 200
    for seed in r["seeds"]:  # the curve: 0, 50, 100, 150 and the last
      steps = [l["step"] for l in lines
               if l["rule"] == label and l["seed"] == seed and l["kind"] == "eval"]
      assert steps == [0, 50, 100, 150, 200]
  # On the command's own path, λ = 1 aligns better than λ = 0 on every seed (about 0.76 against
  # 0.37 after these 200 updates).
  by_lambda = {r["changes"]["lambda_"]: r["eval"]["alignment"]["values"] for r in runs.values()}
  assert min(by_lambda[1.0]) > max(by_lambda[0.0]) + 0.1, by_lambda
  best = summary["grid"]["best"]["bp_lambda"]  # by the toy's score, the final alignment
  assert best["point"] == {"lambda_": 1.0} and best["mean"] == np.mean(by_lambda[1.0])
  assert "grid_lambda_.png" in summary["figures"]
  assert json.loads((out / "config.json").read_text())["steps"] == 200
  image = matplotlib.image.imread(out / "alignment.png")  # a real PNG with something drawn
  assert image.ndim == 3 and min(image.shape[:2]) > 100
  assert float(np.std(image[..., :3])) > 0.01


@pytest.mark.parametrize("argv, match", [
    (["toy", "--lambdas", "0,1.5"], "lambda"),
    (["toy", "--gamma", "2"], "gamma"),
    (["toy", "--mode", "batch"], "mode"),
    (["toy", "--seeds", "a"], "seeds"),
    (["toy", "--set", "lr_rnn=0.1"], "lr_rnn"),  # --lr-rnn is gone: the toy's rates are keys
])
def test_cli_rejects_bad_arguments(argv, match, capsys):
  code, err = _exit_code_and_error(argv, capsys)
  assert code == 2
  assert re.search(match, err), err


@pytest.mark.slow
def test_cli_align_table(tmp_path, capsys):
  out = tmp_path / "align"
  code = cli.main(["align", "--task", "copy", "--hidden-size", "3", "--rule",
                   "bptt,tbptt:1,rtrl,columnar_rtrl", "--seeds", "1",
                   "--synth-steps", "3", "--out", str(out), "--no-progress"])
  assert code == 0
  text = capsys.readouterr().out
  assert "n/a:" not in text  # columnar_rtrl now applies to any cell declaring units (the LSTM)
  rows = json.loads((out / "alignment.json").read_text())["rows"]
  by_rule = {r["rule"]: r for r in rows}
  assert by_rule["bptt"]["all"] == pytest.approx(1.0, abs=1e-6)
  assert by_rule["rtrl"]["cell"] == pytest.approx(1.0, abs=1e-5)
  assert by_rule["tbptt:1"]["cell"] < 0.9999
  # On the LSTM's units columnar RTRL is measured: an approximation of the gradient.
  assert "error" not in by_rule["columnar_rtrl"]
  assert by_rule["columnar_rtrl"]["cell"] < 0.9999
  # A rule that does not apply is reported, not fatal: "n/a" and the reason in the table.
  table = internals.format_rows(rows + [{"rule": "columnar_rtrl", "error": "no units"}])
  assert "n/a: no units" in table and len(table.splitlines()) == 2 + len(rows) + 1
  # config.json and alignment.json record what ran: the copy task at (3, 2), an LSTM of 3 units
  config = json.loads((out / "config.json").read_text())
  assert (config["task"], config["cell"], config["hidden_size"], config["batch_size"]) == \
      ("copy", "lstm", 3, 16)
  assert (config["pattern_length"], config["repeats"]) == (3, 2)
  recorded = json.loads((out / "alignment.json").read_text())["config"]
  assert (recorded["task"], recorded["cell"], recorded["hidden"], recorded["seeds"]) == \
      ("copy", "lstm", 3, 1)


def test_cli_align_print_config_resolves_the_sizes(capsys):
  assert cli.main(["align", "--task", "toy", "--print-config"]) == 0
  config = json.loads(capsys.readouterr().out)
  assert (config["cell"], config["hidden"]) == ("linear", 30)


def test_cli_align_rejects_unknown_rule(capsys):
  code, err = _exit_code_and_error(["align", "--rule", "bptt,magic"], capsys)
  assert code == 2
  assert "unknown rule 'magic'" in err
