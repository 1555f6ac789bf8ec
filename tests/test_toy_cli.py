"""The toy task and the `bplambda toy` command (shortened runs)."""

import json
import os

import numpy as np
import pytest

from bplambda_jax import cli
from bplambda_jax.tasks import toy


def test_toy_batch_matches_spec():
  b = toy.toy_batch(4, 10)
  assert b.x.shape == (10, 4, 10) and b.y.shape == (10, 4, 2) and b.mask.shape == (10, 4)
  np.testing.assert_array_equal(b.x[0, 0], [1, 1, 0, 1, 0, 0, 0, 0, 0, 1])
  assert float(np.abs(b.x[1:]).sum()) == 0.0
  np.testing.assert_array_equal(b.y[-1, 0], [0.0, 1.0])
  np.testing.assert_array_equal(b.mask[:, 0], [0] * 9 + [1])


def test_alignment_rises_with_lambda():
  res = toy.run_toy(lambdas=(0.0, 0.5, 1.0), seeds=(0, 1), steps=1500, record_every=500)
  final = np.asarray(res["alignment"])[:, :, -1].mean(0)
  assert final[0] < final[1] < final[2], final
  assert final[2] > 0.9, final
  first = np.asarray(res["alignment"])[:, 2, 0].mean()
  assert first == 0.0  # ĝ starts at zero: the signal is the immediate gradient, 0 before T−1


def test_cli_toy_writes_results_and_plot(tmp_path, capsys):
  out = tmp_path / "toy"
  code = cli.main(["toy", "--lambdas", "0,1", "--seeds", "0,1", "--steps", "200",
                   "--record-every", "50", "--out", str(out)])
  assert code == 0
  text = capsys.readouterr().out
  assert "final alignment" in text
  res = json.loads((out / "results.json").read_text())
  assert [r["lambda"] for r in res["results"]] == [0.0, 1.0]
  for r in res["results"]:
    assert len(r["final_per_seed"]) == 2
    assert len(r["curve_mean"]) == len(res["steps"]) == 5  # 0, 50, 100, 150 and the last
    assert 0.0 <= r["final_mean"] <= 1.0
  assert res["config"]["steps"] == 200
  assert os.path.getsize(out / "alignment.png") > 1000


@pytest.mark.parametrize("argv, match", [
    (["toy", "--lambdas", "0,1.5"], "lambdas"),
    (["toy", "--gamma", "2"], "gamma"),
    (["toy", "--mode", "batch"], "mode"),
    (["toy", "--seeds", "a"], "seeds"),
    (["toy", "--lr-rnn", "0.1"], "plastic"),
])
def test_cli_rejects_bad_arguments(argv, match):
  with pytest.raises(SystemExit, match=match):
    cli.main(argv)


def test_cli_align_table(tmp_path, capsys):
  out = tmp_path / "align"
  code = cli.main(["align", "--task", "copy", "--hidden", "3", "--rules",
                   "bptt,tbptt:1,rtrl,columnar_rtrl", "--seeds", "0",
                   "--synth-steps", "3", "--out", str(out)])
  assert code == 0
  text = capsys.readouterr().out
  assert "n/a" in text  # columnar_rtrl on an LSTM
  rows = json.loads((out / "alignment.json").read_text())["rows"]
  by_rule = {r["rule"]: r for r in rows}
  assert by_rule["bptt"]["all"] == pytest.approx(1.0, abs=1e-6)
  assert by_rule["rtrl"]["cell"] == pytest.approx(1.0, abs=1e-5)
  assert by_rule["tbptt:1"]["cell"] < 0.9999
  assert "error" in by_rule["columnar_rtrl"]


def test_cli_align_rejects_unknown_rule():
  with pytest.raises(SystemExit, match="unknown rule"):
    cli.main(["align", "--rules", "bptt,magic"])
