"""The benchmark suite: every case runs at the tiny size and yields a complete row; CLI flags work.

No timing asserts: only that each row is complete and self-consistent.
"""

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bplambda_jax as bl
from benchmarks import cases as cases_lib
from benchmarks import flops
from benchmarks import harness
from benchmarks import report
from benchmarks import run


@pytest.fixture(scope="module")
def tiny_rows():
  return harness.run_cases(tiny=True, repeats=1, log=lambda s: None)


def test_rows_record_the_commit_they_ran_at(tiny_rows):
  """Every row names the checkout's commit (or None outside git), and the rendered report says
  it, or that it was not recorded."""
  import subprocess
  head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), capture_output=True, text=True).stdout.strip() or None
  assert {r["git_sha"] for r in tiny_rows} == {head}
  summary = report.run_summary(tiny_rows)
  assert (f"- commit: `{head[:7]}`" if head else "- commit: not recorded") in summary
  old = [dict(r, git_sha=None, code_dirty=None) for r in tiny_rows]
  assert "- commit: not recorded" in report.run_summary(old)
  mixed = old[:1] + [dict(r, code_dirty=True) for r in tiny_rows[1:]]
  if head:
    assert ("and not recorded for some rows (with uncommitted changes to the code)"
            in report.run_summary(mixed))


@pytest.mark.slow
def test_every_case_runs_tiny_with_complete_rows(tiny_rows):
  names = [c.name for c in cases_lib.all_cases()]
  assert [r["name"] for r in tiny_rows] == names
  json.dumps(tiny_rows)  # the rows are plain JSON
  for r in tiny_rows:
    harness.check_row(r)
    assert r["tiny"] is True and r["dtype"] == "float32"
    # Every rule builds and tiny sizes are never skipped.
    assert r["status"] == "ok", (r["name"], r["status"], r["note"])
    assert r["repeats"] == 1
    assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"]
    assert r["first_run_s"] > 0 and r["compile_s"] > 0
    assert r["peak_bytes"] == r["argument_bytes"] + r["output_bytes"] + r["temp_bytes"] > 0
    # The chunked BP(λ) trace loops over its filled slots (a while loop with a data-dependent
    # trip count), which the jaxpr counter refuses to guess; everything else (the structured
    # traces of the element-wise cells included) is counted.
    chunked = (r["rule"] == "bp_lambda" and r["mode"] == "online" and "dense" not in r["name"]
               and r["family"] != "elementwise")
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


@pytest.mark.slow
def test_rows_refer_to_the_right_cases(tiny_rows):
  by = {r["name"]: r for r in tiny_rows}
  assert by["seqmnist_lstm30_bplambda_online"]["mode"] == "online"
  assert by["seqmnist_lstm30_bplambda_sequence"]["mode"] == "sequence"
  assert by["seqmnist_lstm30_bptt"]["mode"] == "sequence"
  # The rule column is the registry's spec (case names keep the old spelling, for comparisons).
  for suffix, spec in (("dni3", "dni:3"), ("tbptt3", "tbptt:3"), ("snap1", "snap:1"),
                       ("eprop_m1", "eprop_m:1"), ("eprop_m2", "eprop_m:2"), ("rtrl", "rtrl")):
    assert by[f"seqmnist_lstm30_{suffix}"]["rule"] == spec
    assert by[f"seqmnist_lstm30_{suffix}"]["mode"] == "online"
  assert by["copyrepeat_lstm100_eprop"]["loss"] == "bce"
  assert by["scale_h64_t28_columnar_rtrl"]["cell"] == "columnar_lstm"
  assert by["scale_h64_t28_columnar_rtrl"]["bptt_ref"] == "scale_h64_t28_columnar_bptt"
  assert by["kernel_trace_step_xla"]["rule"] == "internals.linear_trace_step[xla]"
  assert by["kernel_structured_step_lru_n1024_xla"]["rule"] == "internals.structured_trace_step[xla]"
  for cell in ("lru", "lstm"):
    for n in (64, 256, 1024):
      r = by[f"elementwise_{cell}_n{n}_t1000_bplambda_online"]
      assert r["mode"] == "online" and r["bptt_ref"] == f"elementwise_{cell}_n{n}_t1000_bptt"
      assert r["cell"] == {"lru": "lru", "lstm": "elementwise_lstm"}[cell]
  assert by["seeds2_vmap"]["timed"] == "train_update_vmap_seeds"
  assert by["seeds2_loop"]["timed"] == "train_update_loop_seeds"
  auto = "loop" if jax.default_backend() == "cpu" else "vmap"  # seed_axis='auto'
  assert by["seeds32_auto"]["timed"] == f"train_update_{auto}_seeds"
  # The loop's FLOPs are S single-seed updates; the vmapped program does the same work.
  assert by["seeds2_loop"]["flops"] == pytest.approx(2 * by["seqmnist_lstm30_bplambda_sequence"]["flops"])
  assert by["seeds2_vmap"]["flops"] == pytest.approx(by["seeds2_loop"]["flops"], rel=1e-2)
  bptt = by["seqmnist_lstm30_bptt"]
  assert bptt["ratio_to_bptt"] == pytest.approx(1.0)
  r = by["seeds2_vmap"]
  assert r["ratio_to_bptt"] == pytest.approx(r["median_s"] / 2 / bptt["median_s"])


def test_cases_name_registry_rules_with_their_options():
  for c in cases_lib.all_cases():
    if c.rule is None:
      continue
    bl.rules.parse_rule_spec(c.rule)
    assert {k for k, _ in c.options} <= set(bl.rules.rule_options(c.rule)), c.name
  by = {c.name: c for c in cases_lib.all_cases()}
  assert dict(by["seqmnist_lstm30_bplambda_online"].options)["flavour"] == "eprop"
  assert dict(by["seqmnist_lstm30_dni3"].options)["sg_scale"] == 0.1
  assert cases_lib.rule_mode(by["copyrepeat_lstm100_bplambda_sequence"]) == "sequence"
  # An option the rule does not take is refused when the registry is built...
  bad = by["seqmnist_lstm30_bplambda_online"]._replace(options=(("alpha_learning", 0.1),))
  with pytest.raises(ValueError, match="alpha_learning"):
    cases_lib.check_options(bad)
  # ... and a case whose rule cannot be built is an error row, not an exception.
  row = harness.Runner(repeats=1, tiny=True, log=lambda s: None).run_case(bad)
  harness.check_row(row)
  assert row["status"] == "error" and "alpha_learning" in row["note"]


@pytest.mark.slow
def test_table_and_targets_render(tiny_rows):
  text = report.table(tiny_rows)
  for r in tiny_rows:
    assert f"| {r['name']} |" in text
  summary = report.targets(tiny_rows)
  for tag in ("(a)", "(b)", "(c)", "(d)", "(e)", "(f)", "(g)", "(h)", "(i)", "(j)"):
    assert tag in summary
  assert "\n### Targets\n" in report.report(tiny_rows)


@pytest.mark.slow
def test_targets_come_from_the_data_file(tiny_rows):
  spec = report.load_targets()
  assert {t["kind"] for t in spec["targets"]} == set(report.CHECKS)
  # A threshold changed in the data changes the verdict; a missing row is reported as such.
  by = {r["name"]: r for r in tiny_rows}
  t = dict(next(t for t in spec["targets"] if t["kind"] == "speedup"))
  lenient = dict(t, reference_s=1e9 * by[t["row"]]["median_s"])
  assert "**met**" in report.targets(tiny_rows, {"targets": [lenient]})
  strict = dict(t, reference_s=1e-9 * by[t["row"]]["median_s"])
  assert "**not met**" in report.targets(tiny_rows, {"targets": [strict]})
  assert "not measured" in report.targets([], {"targets": [t]})


def test_row_ratio_peer_and_memory_slope_targets():
  row = lambda name, **kw: dict(dict(name=name, status="ok", rule="r", hidden=None,
                                     peak_bytes=None, median_s=1.0), **kw)
  rows = [row("a", median_s=1.5), row("b", median_s=1.0), row("peer", median_s=6.0, rule="p"),
          row("m1", hidden=10, peak_bytes=100.0), row("m2", hidden=100, peak_bytes=1e4)]
  ratio = {"id": "x", "kind": "row_ratio", "row": "a", "over": "b", "text": "t", "missing": "m"}
  assert "**met**" in report.targets(rows, {"targets": [dict(ratio, max_ratio=1.6)]})
  assert "**not met**" in report.targets(rows, {"targets": [dict(ratio, max_ratio=1.4)]})
  assert "1.50×" in report.targets(rows, {"targets": [dict(ratio, max_ratio=1.4)]})
  peer = {"id": "y", "kind": "peer_speedup", "row": "b", "peer": "peer", "text": "t",
          "missing": "m"}
  assert "**met**" in report.targets(rows, {"targets": [dict(peer, min_speedup=5.0)]})
  assert "**not met**" in report.targets(rows, {"targets": [dict(peer, min_speedup=7.0)]})
  slope = {"id": "z", "kind": "rows_memory_slope", "rows": ["m1", "m2"], "text": "t",
           "missing": "m"}
  assert "slope 2.00" in report.targets(rows, {"targets": [dict(slope, max_slope=2.2)]})
  assert "**not met**" in report.targets(rows, {"targets": [dict(slope, max_slope=1.9)]})
  assert "not measured" in report.targets(rows[:3], {"targets": [dict(slope, max_slope=2.2)]})


def test_bad_targets_file(tmp_path):
  path = tmp_path / "targets.json"
  path.write_text(json.dumps({"targets": [{"id": "z", "kind": "no_such_kind"}]}))
  with pytest.raises(ValueError, match="no_such_kind"):
    report.load_targets(str(path))


def test_memory_fit_reads_the_exponents():
  rows = []
  for h, t in [(32, 28), (64, 28), (128, 28), (32, 100), (32, 300)]:
    row = dict.fromkeys(harness.FIELDS)
    row.update(status="ok", family="scale", rule="bp_lambda", mode="sequence", cell="lstm",
               hidden=h, seq_len=t, peak_bytes=int(16 * 7 * h**2 * t))  # ∝ H²·T
    rows.append(row)
  fit = report.memory_fit(rows)
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
  assert flops.count_flops(jax.make_jaxpr(f)(x)) == T * (2 * n**3 + n**2) + n**2
  with pytest.raises(flops.Uncountable):
    flops.count_flops(jax.make_jaxpr(lambda v: jax.lax.while_loop(lambda c: c < 3,
                                                                  lambda c: c + 1, v))(0))


def test_list_and_only(capsys, tmp_path):
  assert run.main(["--list"]) == 0
  listed = capsys.readouterr().out.split("\n")
  assert [line.split()[0] for line in listed if line] == [c.name for c in cases_lib.all_cases()]
  assert any("skipped at full size" in line for line in listed)

  out = tmp_path / "rows.json"
  assert run.main(["--only", "floor_matmul", "--tiny", "--repeats", "1", "--json", str(out)]) == 0
  rows = json.loads(out.read_text())
  assert [r["name"] for r in rows] == ["floor_matmul"] and rows[0]["status"] == "ok"
  assert run.main(["--table", str(out)]) == 0
  assert "| floor_matmul |" in capsys.readouterr().out
  # --only adds the floor and the BPTT row a case is compared with, unless --no-refs.
  names = {c.name for c in cases_lib.select(["seqmnist_lstm30_bplambda_online"])}
  assert names == {"floor_matmul", "seqmnist_lstm30_bptt", "seqmnist_lstm30_bplambda_online"}
  assert [c.name for c in cases_lib.select(["seeds4_loop"], with_refs=False)] == ["seeds4_loop"]


def test_interleave_times_rows_together(tmp_path, capsys):
  """benchmarks.interleave: rows in the suite's format, timed in the same rounds, ratio_to_bptt
  from the interleaved medians, rendered by --table; bad arguments are refused."""
  from benchmarks import interleave
  from benchmarks import profile_row
  out = tmp_path / "rows.json"
  names = ["scale_h32_t28_bptt", "scale_h32_t28_bplambda_sequence"]
  assert interleave.main([",".join(names), "--tiny", "--rounds", "2", "--calls", "1", "--json",
                          str(out)]) == 0
  rows = json.loads(out.read_text())
  assert [r["name"] for r in rows] == names
  for r in rows:
    harness.check_row(r)
    assert r["repeats"] == 2 and r["min_s"] <= r["median_s"] <= r["max_s"]
    assert "timed interleaved with" in r["note"] and "CPU seconds per call" in r["note"]
  assert rows[1]["ratio_to_bptt"] == pytest.approx(rows[1]["median_s"] / rows[0]["median_s"])
  assert run.main(["--table", str(out)]) == 0
  assert "| scale_h32_t28_bplambda_sequence |" in capsys.readouterr().out
  with pytest.raises(SystemExit, match="at least two distinct rows"):
    interleave.main(["scale_h32_t28_bptt", "--tiny"])
  with pytest.raises(SystemExit, match="unknown case"):
    interleave.main(["scale_h32_t28_bptt,no_such_case", "--tiny"])
  with pytest.raises(SystemExit, match="not an update row"):
    profile_row.main(["floor_matmul"])


def test_bad_arguments(tmp_path):
  with pytest.raises(SystemExit, match="unknown case"):
    run.main(["--only", "no_such_case", "--tiny", "--json", str(tmp_path / "x.json")])
  with pytest.raises(SystemExit, match="--repeats must be >= 5"):
    run.main(["--repeats", "2", "--json", str(tmp_path / "x.json")])
  with pytest.raises(ValueError, match="repeats must be a positive integer"):
    harness.Runner(repeats=0)


def test_check_row_rejects_bad_rows(tiny_rows):
  row = dict(tiny_rows[0])
  row["median_s"] = "fast"
  with pytest.raises(ValueError, match="median_s"):
    harness.check_row(row)
  row = dict(tiny_rows[0])
  del row["device"]
  with pytest.raises(ValueError, match="device"):
    harness.check_row(row)
  row = dict(tiny_rows[0], gflops=float(np.nan))
  with pytest.raises(ValueError, match="gflops"):
    harness.check_row(row)
  with pytest.raises(ValueError, match="status"):
    harness.check_row(dict(tiny_rows[0], status="unavailable"))


def test_the_readme_results_are_rendered_from_the_results_file():
  """benchmarks/README.md's results block is the report of benchmarks/results/latest.json, and an
  edited number in it is caught."""
  root = pathlib.Path(__file__).resolve().parent.parent
  text = (root / "benchmarks" / "README.md").read_text()
  assert report.README_BLOCK.search(text), "benchmarks/README.md has no results block"
  assert report.render_readme(text, str(root)) == text, "run: python -m benchmarks.run --readme"
  edited = text.replace("| floor_matmul |", "| floor_matmul_x |", 1)
  assert report.render_readme(edited, str(root)) != edited
