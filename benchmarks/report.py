"""The markdown report of a results file: one table per family, the targets, memory exponents.

The targets (thresholds, the rows they read, their sentences) are data, in
``benchmarks/targets.json``; this module only knows how each *kind* of target is checked.
"""

from __future__ import annotations

import json
import os
import re
from typing import Callable, Optional

import numpy as np

from benchmarks import cases as cases_lib

TARGETS_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "targets.json")

FAMILY_TITLES = {
    "floor": "Floors", "seqmnist": "Sequential MNIST shapes (LSTM 30, B = 50, T = 28)",
    "guard": "The checks' cost: seqMNIST rows with checked=False (compare with the rows above)",
    "copyrepeat": "Copy-repeat shapes (LSTM 100, B = 100, T = 40)",
    "scale": "Scaling (seqMNIST shapes, B = 16)",
    "seeds": "Seeds: vmap vs loop (BP(λ) sequence mode, seqMNIST shapes, H = 30, B = 50 per seed; `_b10` rows: B = 10)",
    "elementwise": "Element-wise cells, structured BP(λ) traces (B = 8, T = 1000, D_in = H = n)",
    "kernel": "Trace-step kernels (one TD step: dense at B = 100, d_out = 100, d_in = 200; "
              "structured at B = 8, n = 1024)",
    "peer": "Peer: braintrace 0.2.6's e-prop, timed interleaved with ours (benchmarks/peers/)",
}

# memory_fit's axes: H at the scaling family's first T, T at its first H (T = 28, H = 32).
FIT_T, FIT_H = cases_lib.SCALE_TIME[0], cases_lib.SCALE_HIDDEN[0]


def _fmt(v, spec="{:.3g}"):
  return "–" if v is None else spec.format(v)


def _mb(v):
  return "–" if v is None else f"{v / 2**20:.1f}"


def table(rows: list[dict]) -> str:
  """A markdown table of the rows, one section per family."""
  head = ("| case | rule | mode | B | T | H | median s | min–max s | compile s | peak MB | "
          "GFLOP/s | × BPTT | × FLOP floor | seq/s | note |")
  rule = "|" + "---|" * 15
  out = []
  for family, title in FAMILY_TITLES.items():
    fam = [r for r in rows if r["family"] == family]
    if not fam:
      continue
    out += [f"### {title}", "", head, rule]
    for r in fam:
      status = "" if r["status"] == "ok" else f"**{r['status']}**: "
      out.append("| " + " | ".join([
          r["name"], r["rule"] or "–", r["mode"] or "–", _fmt(r["batch"], "{}"),
          _fmt(r["seq_len"], "{}"), _fmt(r["hidden"], "{}"), _fmt(r["median_s"], "{:.4g}"),
          "–" if r["min_s"] is None else f"{r['min_s']:.3g}–{r['max_s']:.3g}",
          _fmt(r["compile_s"], "{:.1f}"), _mb(r["peak_bytes"]), _fmt(r["gflops"], "{:.2f}"),
          _fmt(r["ratio_to_bptt"], "{:.2f}"), _fmt(r["ratio_to_flop_floor"], "{:.2f}"),
          _fmt(r["sequences_per_s"], "{:.0f}"),
          (status + (r["note"] or "")).replace("|", "/")]) + " |")
    out.append("")
  return "\n".join(out)


def memory_fit(rows: list[dict], rule_label: str = "bp_lambda", mode: str = "sequence"):
  """Least-squares exponents of peak bytes in H (at T = 28) and in T (at H = 32) for one rule."""
  ok = [r for r in rows if r["status"] == "ok" and r["family"] == "scale"
        and r["rule"] == rule_label and r["mode"] == mode and r["cell"] == "lstm"]
  out = {}
  for axis, fixed_key, fixed in (("hidden", "seq_len", FIT_T), ("seq_len", "hidden", FIT_H)):
    pts = [(r[axis], r["peak_bytes"]) for r in ok if r[fixed_key] == fixed and r["peak_bytes"]]
    if len(pts) >= 2:
      xs, ys = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
      out[axis] = float(np.polyfit(xs, ys, 1)[0])
  return out


# ------------------------------------------------------------------------------ targets


def load_targets(path: Optional[str] = None) -> dict:
  """The targets file (default :data:`TARGETS_JSON`), checked for known kinds."""
  with open(path or TARGETS_JSON) as f:
    spec = json.load(f)
  for t in spec["targets"]:
    if t.get("kind") not in CHECKS:
      raise ValueError(f"target {t.get('id')!r}: kind must be one of {sorted(CHECKS)}, got "
                       f"{t.get('kind')!r}.")
  return spec


def _verdict(ok: bool) -> str:
  return "**met**" if ok else "**not met**"


def _flop_floor(t: dict, by: dict, rows: list[dict]) -> Optional[str]:
  r = by.get(t["row"])
  if not r or r["ratio_to_flop_floor"] is None:
    return None
  line = (f"{_verdict(r['ratio_to_flop_floor'] <= t['max_ratio'])} — {r['median_s']:.3g} s per "
          f"batch vs floor {r['flop_floor_s']:.3g} s ({r['analytic_flops']:.3g} FLOP at "
          f"{by['floor_matmul']['gflops']:.1f} GFLOP/s): {r['ratio_to_flop_floor']:.2f}×")
  end = by.get(t.get("end_floor_row"))
  if end:
    alt = r["median_s"] / (r["analytic_flops"] / (end["gflops"] * 1e9))
    line += f" ({alt:.2f}× with the end-of-run floor, {end['gflops']:.1f} GFLOP/s)"
  return line


def _ratio_to_bptt(t: dict, by: dict, rows: list[dict]) -> Optional[str]:
  sel = [x for x in by.values() if x["rule"] == t["rule"] and x["mode"] == t["mode"]
         and not x["seed_impl"] and x["ratio_to_bptt"] is not None]
  if not sel:
    return None
  worst = max(sel, key=lambda x: x["ratio_to_bptt"])
  detail = ", ".join(f"{x['name']} {x['ratio_to_bptt']:.2f}×" for x in sel)
  return (f"{_verdict(worst['ratio_to_bptt'] <= t['max_ratio'])} — worst {worst['name']} "
          f"{worst['ratio_to_bptt']:.2f}× ({detail})")


def _speedup(t: dict, by: dict, rows: list[dict]) -> Optional[str]:
  x = by.get(t["row"])
  if not x:
    return None
  speedup = t["reference_s"] / x["median_s"]
  return (f"{_verdict(speedup >= t['min_speedup'])} — {x['median_s']:.3g} s/batch, "
          f"{speedup:.1f}× faster")


def _seed_throughput(t: dict, by: dict, rows: list[dict]) -> Optional[str]:
  v, lp = by.get(t["vmap"]), by.get(t["loop"])
  if not (v and lp):
    return None
  gain = v["sequences_per_s"] / lp["sequences_per_s"]
  return (f"{_verdict(gain >= t['min_gain'])} — {v['sequences_per_s']:.0f} vs "
          f"{lp['sequences_per_s']:.0f} sequences/s: {gain:.2f}×")


def _memory_slope(t: dict, by: dict, rows: list[dict]) -> Optional[str]:
  mem = [x for x in by.values() if x["family"] == "scale" and x["rule"] == t["rule"]
         and x["mode"] == t["mode"]]
  fit = memory_fit(rows, t["rule"], t["mode"])
  if not (mem and fit):
    return None
  pts = ", ".join(f"H={x['hidden']} T={x['seq_len']}: {_mb(x['peak_bytes'])} MB"
                  for x in sorted(mem, key=lambda x: (x["seq_len"], x["hidden"])))
  nan = float("nan")
  ok = fit.get("hidden", 9) < t["max_slope"] and fit.get("seq_len", 9) < t["max_slope"]
  return (f"{_verdict(ok)} — log-log slope of peak bytes in H (T = {FIT_T}) "
          f"{fit.get('hidden', nan):.2f}, in T (H = {FIT_H}) {fit.get('seq_len', nan):.2f}; "
          f"peak MB at B = {mem[0]['batch']}: {pts}")


def _row_ratio(t: dict, by: dict, rows: list[dict]) -> Optional[str]:
  """median(row) / median(over) ≤ max_ratio, both rows of the same run."""
  x, y = by.get(t["row"]), by.get(t["over"])
  if not (x and y):
    return None
  ratio = x["median_s"] / y["median_s"]
  return (f"{_verdict(ratio <= t['max_ratio'])} — {x['median_s']:.3g} s vs {y['median_s']:.3g} s "
          f"per update: {ratio:.2f}×")


def _peer_speedup(t: dict, by: dict, rows: list[dict]) -> Optional[str]:
  """A peer library's row over ours (both timed interleaved by benchmarks/peers/) ≥ min_speedup."""
  ours, peer = by.get(t["row"]), by.get(t["peer"])
  if not (ours and peer):
    return None
  speedup = peer["median_s"] / ours["median_s"]
  return (f"{_verdict(speedup >= t['min_speedup'])} — {ours['median_s']:.3g} s against "
          f"{peer['median_s']:.3g} s ({peer['rule']}): {speedup:.1f}×")


def _rows_memory_slope(t: dict, by: dict, rows: list[dict]) -> Optional[str]:
  """Log-log slope of peak bytes against ``hidden`` over the named rows ≤ max_slope."""
  pts = [(by[n]["hidden"], by[n]["peak_bytes"]) for n in t["rows"]
         if n in by and by[n]["peak_bytes"]]
  if len({h for h, _ in pts}) < 2:
    return None
  slope = float(np.polyfit(np.log([p[0] for p in pts]), np.log([p[1] for p in pts]), 1)[0])
  detail = ", ".join(f"n={h}: {_mb(b)} MB" for h, b in pts)
  return f"{_verdict(slope <= t['max_slope'])} — slope {slope:.2f} ({detail})"


CHECKS: dict[str, Callable[[dict, dict, list], Optional[str]]] = {
    "flop_floor": _flop_floor, "ratio_to_bptt": _ratio_to_bptt, "speedup": _speedup,
    "seed_throughput": _seed_throughput, "memory_slope": _memory_slope, "row_ratio": _row_ratio,
    "peer_speedup": _peer_speedup, "rows_memory_slope": _rows_memory_slope,
}


def targets(rows: list[dict], spec: Optional[dict] = None) -> str:
  """The targets of ``spec`` (default: :func:`load_targets`), each with the measured numbers and
  met / not met, or 'not measured in this run' when its rows are missing."""
  spec = spec or load_targets()
  by = {r["name"]: r for r in rows if r["status"] == "ok"}
  lines = []
  for t in spec["targets"]:
    found = CHECKS[t["kind"]](t, by, rows)
    if found is None:
      lines.append(f"- ({t['id']}) {t['missing']}: not measured in this run.")
    else:
      lines.append(f"- ({t['id']}) {t['text']}: {found}.")
  return "\n".join(lines)


def run_summary(rows: list[dict]) -> str:
  """Where and when the rows ran: commit(s), dates, machine, load, and the matmul floor."""
  shas = {r.get("git_sha") for r in rows}
  commit = ", ".join(f"`{s[:7]}`" for s in sorted(s for s in shas if s))
  if None in shas:
    commit += ", and not recorded for some rows" if commit else "not recorded"
  if any(r.get("code_dirty") for r in rows):
    commit += " (with uncommitted changes to the code)"
  dates = sorted(r["date"][:16].replace("T", " ") for r in rows if r.get("date"))
  loads = [r["loadavg_1m"] for r in rows if r.get("loadavg_1m") is not None]
  floors = {r["name"]: r["gflops"] for r in rows if r["name"].startswith("floor_matmul")
            and r.get("gflops")}
  out = ["### Where and when\n", f"- commit: {commit}",
         f"- rows: {len(rows)}" + (f", measured {dates[0]} to {dates[-1]} UTC" if dates else ""),
         f"- machine: {rows[0].get('host')}; device `{rows[0].get('device')}`; jax "
         f"{rows[0].get('jax_version')}"]
  if loads:
    out.append(f"- 1-minute load average when a case started: {min(loads):.1f}–{max(loads):.1f}")
  if "floor_matmul" in floors:
    out.append(f"- matmul floor: {floors['floor_matmul']:.0f} GFLOP/s at the start"
               + (f", {floors['floor_matmul_end']:.0f} GFLOP/s at the end"
                  if "floor_matmul_end" in floors else ""))
  return "\n".join(out) + "\n"


def report(rows: list[dict], spec: Optional[dict] = None) -> str:
  """Where the rows ran, the tables, the targets and the peak-memory exponents (what ``--table``
  prints)."""
  spec = spec or load_targets()
  out = [run_summary(rows), table(rows), "### Targets\n", targets(rows, spec),
         f"\n### Peak-memory exponents (log-log slope of peak bytes; H at T = {FIT_T}, T at "
         f"H = {FIT_H})\n"]
  for label, mode in spec.get("memory_exponents", ()):
    fit = memory_fit(rows, label, mode)
    if fit:
      out.append(f"- {label} ({mode}): " + ", ".join(f"{k} {v:.2f}" for k, v in fit.items()))
  return "\n".join(out)


# benchmarks/README.md holds the report of a results file between these markers; ``python -m
# benchmarks.run --readme`` re-renders it and tests/test_benchmarks.py checks that it is current
README_BLOCK = re.compile(r"(<!-- results (\S+) -->\n).*?(<!-- /results -->)", re.S)


def render_readme(text: str, root: str) -> str:
  """``text`` (benchmarks/README.md) with every results block re-rendered from its JSON file (a
  path relative to ``root``, the repository)."""
  def sub(m):
    with open(os.path.join(root, m.group(2))) as f:
      rows = json.load(f)
    return f"{m.group(1)}{report(rows)}\n{m.group(3)}"
  return README_BLOCK.sub(sub, text)
