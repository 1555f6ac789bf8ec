"""The benchmark suite: every case runs at the tiny size and yields a complete row; CLI flags work.

No timing asserts: only that each row is complete and self-consistent.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import cases as cases_lib
from benchmarks import run


@pytest.fixture(scope="module")
def tiny_rows():
  return run.run_cases(tiny=True, repeats=1, log=lambda s: None)


def test_every_case_runs_tiny_with_complete_rows(tiny_rows):
  names = [c.name for c in cases_lib.all_cases()]
  assert [r["name"] for r in tiny_rows] == names
  json.dumps(tiny_rows)  # the rows are plain JSON
  for r in tiny_rows:
    run.check_row(r)
    assert r["tiny"] is True and r["dtype"] == "float32"
    # Every rule module exists in this checkout and tiny sizes are never skipped.
    assert r["status"] == "ok", (r["name"], r["status"], r["note"])
    assert r["repeats"] == 1
    assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"]
    assert r["first_run_s"] > 0 and r["compile_s"] > 0
    assert r["peak_bytes"] == r["argument_bytes"] + r["output_bytes"] + r["temp_bytes"] > 0
    # The chunked BP(λ) trace loops over its filled slots (a while loop with a data-dependent
    # trip count), which the jaxpr counter refuses to guess; everything else is counted.
    chunked = r["rule"] == "bp_lambda" and r["mode"] == "online" and "dense" not in r["name"]
    if chunked:
      assert r["flops"] is None and r["gflops"] is None
    else:
      assert r["flops"] > 0 and r["gflops"] > 0
    if r["kind"] == "update":
      assert r["timed"].startswith("train_update")
      assert r["mode"] in ("online", "sequence")
      assert r["batch"] == cases_lib.TINY["batch"] and r["hidden"] == cases_lib.TINY["hidden"]
      assert r["sequences_per_s"] == pytest.approx(r["batch"] * r["seeds"] / r["median_s"])
      assert r["ratio_to_bptt"] > 0
    if r["analytic_flops"] is not None:
      assert r["ratio_to_flop_floor"] == pytest.approx(r["median_s"] / r["flop_floor_s"])


def test_rows_refer_to_the_right_cases(tiny_rows):
  by = {r["name"]: r for r in tiny_rows}
  assert by["seqmnist_lstm30_bplambda_online"]["mode"] == "online"
  assert by["seqmnist_lstm30_bplambda_sequence"]["mode"] == "sequence"
  assert by["copyrepeat_lstm100_eprop"]["loss"] == "bce"
  assert by["scale_h64_t28_columnar_rtrl"]["cell"] == "columnar_lstm"
  assert by["scale_h64_t28_columnar_rtrl"]["bptt_ref"] == "scale_h64_t28_columnar_bptt"
  assert by["seeds2_vmap"]["timed"] == "train_update_vmap_seeds"
  assert by["seeds2_loop"]["timed"] == "train_update_loop_seeds"
  # The loop's FLOPs are S single-seed updates; the vmapped program does the same work.
  assert by["seeds2_loop"]["flops"] == pytest.approx(2 * by["seqmnist_lstm30_bplambda_sequence"]["flops"])
  assert by["seeds2_vmap"]["flops"] == pytest.approx(by["seeds2_loop"]["flops"], rel=1e-2)
  bptt = by["seqmnist_lstm30_bptt"]
  assert bptt["ratio_to_bptt"] == pytest.approx(1.0)
  r = by["seeds2_vmap"]
  assert r["ratio_to_bptt"] == pytest.approx(r["median_s"] / 2 / bptt["median_s"])


def test_table_and_targets_render(tiny_rows):
  text = run.table(tiny_rows)
  for r in tiny_rows:
    assert f"| {r['name']} |" in text
  summary = run.targets(tiny_rows)
  for tag in ("(a)", "(b)", "(c)", "(d)", "(e)"):
    assert tag in summary


def test_memory_fit_reads_the_exponents():
  rows = []
  for h, t in [(32, 28), (64, 28), (128, 28), (32, 100), (32, 300)]:
    row = dict.fromkeys(run.FIELDS)
    row.update(status="ok", family="scale", rule="bp_lambda", mode="sequence", cell="lstm",
               hidden=h, seq_len=t, peak_bytes=int(16 * 7 * h**2 * t))  # ∝ H²·T
    rows.append(row)
  fit = run.memory_fit(rows)
  assert fit["hidden"] == pytest.approx(2.0, abs=1e-3)
  assert fit["seq_len"] == pytest.approx(1.0, abs=1e-3)


def test_jaxpr_flop_count_multiplies_scan_bodies():
  n, T = 8, 7

  def f(x):
    def body(c, _):
      return jnp.tanh(c @ x), None
    return jax.lax.scan(body, x, None, length=T)[0].sum()

  x = jnp.ones((n, n), jnp.float32)
  # Per step: a matmul (2·n³) and a tanh (n²); then the final sum (n² inputs).
  assert run.count_flops(jax.make_jaxpr(f)(x)) == T * (2 * n**3 + n**2) + n**2
  with pytest.raises(run.Uncountable):
    run.count_flops(jax.make_jaxpr(lambda v: jax.lax.while_loop(lambda c: c < 3, lambda c: c + 1,
                                                                v))(0))


def test_list_and_only(capsys, tmp_path):
  assert run.main(["--list"]) == 0
  listed = capsys.readouterr().out.split("\n")
  assert [line.split()[0] for line in listed if line] == [c.name for c in cases_lib.all_cases()]
  assert any("skipped at full size" in line for line in listed)

  out = tmp_path / "rows.json"
  assert run.main(["--only", "floor_matmul", "--tiny", "--repeats", "1", "--json", str(out)]) == 0
  rows = json.loads(out.read_text())
  assert [r["name"] for r in rows] == ["floor_matmul"] and rows[0]["status"] == "ok"
  # --only adds the floor and the BPTT row a case is compared with, unless --no-refs.
  names = {c.name for c in run.select(["seqmnist_lstm30_bplambda_online"])}
  assert names == {"floor_matmul", "seqmnist_lstm30_bptt", "seqmnist_lstm30_bplambda_online"}
  assert [c.name for c in run.select(["seeds4_loop"], with_refs=False)] == ["seeds4_loop"]


def test_bad_arguments(tmp_path):
  with pytest.raises(SystemExit, match="unknown case"):
    run.main(["--only", "no_such_case", "--tiny", "--json", str(tmp_path / "x.json")])
  with pytest.raises(SystemExit, match="--repeats must be >= 5"):
    run.main(["--repeats", "2", "--json", str(tmp_path / "x.json")])
  with pytest.raises(ValueError, match="repeats must be a positive integer"):
    run.Runner(repeats=0)


def test_missing_rule_module_is_reported_not_run():
  spec = cases_lib.RuleSpec("ghost", "online", "bplambda_jax.rules.no_such_rule", "ghost")
  case = cases_lib.Case("ghost_case", "seqmnist", rule=spec, **cases_lib.SEQMNIST, hidden=3,
                        batch=2)
  assert "not available" in cases_lib.availability(case)
  row = run.Runner(repeats=1).run_case(case)
  run.check_row(row)
  assert row["status"] == "unavailable" and "no_such_rule" in row["note"]
  missing_attr = spec._replace(module="bplambda_jax.rules.online")
  assert "not available" in cases_lib.availability(case._replace(rule=missing_attr))


def test_check_row_rejects_bad_rows(tiny_rows):
  row = dict(tiny_rows[0])
  row["median_s"] = "fast"
  with pytest.raises(ValueError, match="median_s"):
    run.check_row(row)
  row = dict(tiny_rows[0])
  del row["device"]
  with pytest.raises(ValueError, match="device"):
    run.check_row(row)
  row = dict(tiny_rows[0], gflops=float(np.nan))
  with pytest.raises(ValueError, match="gflops"):
    run.check_row(row)
