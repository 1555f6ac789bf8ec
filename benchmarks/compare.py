"""Before/after comparison: an older checkout's benchmark suite against this one, in one process.

``python -m benchmarks.compare OLD_TREE [--only A,B] [--repeats N] [--json FILE]``

OLD_TREE is a checkout of an older commit (its ``bplambda_jax/`` and ``benchmarks/``). Timing two
full suites one after the other on a shared machine compares the load more than the code (the
matmul floor alone can move 2–3× between two runs), so this script times both versions of each
row *interleaved*, in the same process:

1. The old tree's ``bplambda_jax`` and ``benchmarks`` packages are copied to a temporary
   directory as ``bplambda_jax_old`` and ``benchmarks_old`` (every ``.py`` file rewritten to
   import those names), so both versions of the library can be imported side by side.
2. For every case name present in both suites (``floor_matmul`` included, as the control: its
   ratio should be ≈ 1), the old harness builds and compiles the old program and the current
   harness (:mod:`benchmarks.harness`) the new one — each with its own builder, by running its
   ``Runner.run_case`` with a timer that makes the warm-up call and keeps the timed closure (the
   new harness takes it as ``Runner(timer=...)``; the old one's module-level ``_timed_calls`` is
   swapped for the call). Nothing else of either harness changes.
3. The two closures are then called alternately, old, new, old, new, … (at least ``--repeats``
   pairs, more for fast rows: about ``--target-s`` seconds of timed calls per side, at most
   :data:`MAX_REPEATS` pairs; each call synchronised with ``jax.block_until_ready``); a row whose
   warm-up call is slower than ``--slow-s`` gets ``--slow-repeats`` pairs (noted in the row).

Per row: the median of each side, ``ratio`` = new median / old median, ``pair_ratio`` = the
median of the per-pair ratios (each pair ran within seconds, so it is the least sensitive to load
drift), ``cpu_ratio`` = the same ratio of the process's CPU seconds per call (the wall time of a
call on a machine shared with other jobs also counts the time it waited for a core), and both
sides' compile time and peak bytes. Rows are written to ``--json`` after every
case. ``--table FILE`` prints the markdown table of a results file. This script is a tool, not a
module: nothing imports it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional

import jax

from benchmarks import cases as cases_lib
from benchmarks import harness

DEFAULT_REPEATS = 9
DEFAULT_TARGET_S = 8.0
MAX_REPEATS = 201
DEFAULT_SLOW_S = 20.0
DEFAULT_SLOW_REPEATS = 3
OLD_SUFFIX = "_old"
PACKAGES = ("bplambda_jax", "benchmarks")


# ------------------------------------------------------------------------------ the old tree


def copy_old_tree(tree: str, dest: str) -> None:
  """Copy ``tree``'s packages into ``dest`` under their ``_old`` names, rewriting the imports."""
  pattern = re.compile(r"\b(" + "|".join(PACKAGES) + r")\b")
  for pkg in PACKAGES:
    src = os.path.join(tree, pkg)
    if not os.path.isfile(os.path.join(src, "__init__.py")):
      raise SystemExit(f"{tree} has no package {pkg}/ (expected a checkout of this repository).")
    out = os.path.join(dest, pkg + OLD_SUFFIX)
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("__pycache__", "results"))
    for root, _, files in os.walk(out):
      for f in files:
        if f.endswith(".py"):
          path = os.path.join(root, f)
          with open(path) as fh:
            text = fh.read()
          with open(path, "w") as fh:
            fh.write(pattern.sub(lambda m: m.group(1) + OLD_SUFFIX, text))


def tree_label(tree: str) -> str:
  """The old tree's short commit hash (or its directory name if it is not a git checkout)."""
  try:
    out = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return os.path.basename(os.path.abspath(tree))


class Side:
  """One version of the suite: its cases module and a way to run one case with a given timer."""

  def __init__(self, label: str, cases_mod, run_case: Callable):
    self.label, self.cases, self._run_case = label, cases_mod, run_case

  def all_cases(self) -> dict:
    return {c.name: c for c in self.cases.all_cases()}

  def build(self, case, repeats: int) -> tuple[dict, Optional[Callable]]:
    """(row, call): the harness's row for the case (compile and memory fields filled; its timing
    fields hold the warm-up call only) and the timed closure, or None if the row is not 'ok'."""
    captured = {}

    def capture(call, repeats_, budget_s):
      t0 = time.perf_counter()
      jax.block_until_ready(call())
      first = time.perf_counter() - t0
      captured["call"] = call
      return first, [first], ""

    row = self._run_case(case, repeats, capture)
    call = captured.get("call") if row["status"] == "ok" else None
    return row, call


def _log(s: str) -> None:
  print(s, flush=True)


def _run_new(case, repeats, timer):
  return harness.Runner(repeats=repeats, log=_log, timer=timer).run_case(case)


def load_sides(tree: str, workdir: str) -> tuple[Side, Side]:
  """The old side and the new side (``harness.Runner``'s ``timer``). An old tree with the same
  harness API (``benchmarks/harness.py``'s ``Runner(timer=...)``) is timed like the new side;
  an older one (its Runner in ``benchmarks/run.py``) through a patched ``_timed_calls``, the only
  way in without changing its code."""
  copy_old_tree(tree, workdir)
  sys.path.insert(0, workdir)
  old_cases = importlib.import_module("benchmarks" + OLD_SUFFIX + ".cases")
  if os.path.isfile(os.path.join(tree, "benchmarks", "harness.py")):
    old_harness = importlib.import_module("benchmarks" + OLD_SUFFIX + ".harness")

    def run_old_harness(case, repeats, timer):
      return old_harness.Runner(repeats=repeats, log=_log, timer=timer).run_case(case)

    return Side("old", old_cases, run_old_harness), Side("new", cases_lib, _run_new)
  old_run = importlib.import_module("benchmarks" + OLD_SUFFIX + ".run")

  def run_old(case, repeats, timer):
    original = old_run._timed_calls
    old_run._timed_calls = timer
    try:
      return old_run.Runner(repeats=repeats, log=_log).run_case(case)
    finally:
      old_run._timed_calls = original

  return Side("old", old_cases, run_old), Side("new", cases_lib, _run_new)


# ------------------------------------------------------------------------------ timing


def alternate(calls: list[Callable], pairs: int) -> tuple[list[list[float]], list[list[float]]]:
  """(wall seconds, CPU seconds of this process) of ``pairs`` rounds of calls, each round
  calling every closure once in order."""
  times = [[] for _ in calls]
  cpu = [[] for _ in calls]
  for _ in range(pairs):
    for i, call in enumerate(calls):
      t0, c0 = time.perf_counter(), time.process_time()
      jax.block_until_ready(call())
      times[i].append(time.perf_counter() - t0)
      cpu[i].append(time.process_time() - c0)
  return times, cpu


def compare_case(name: str, old: Side, new: Side, old_case, new_case, args) -> dict:
  row = {"name": name, "family": new_case.family, "kind": new_case.kind, "status": "ok",
         "note": "", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
             timespec="seconds"), "loadavg_start": harness.loadavg()}
  t0 = time.perf_counter()
  old_row, old_call = old.build(old_case, args.repeats)
  new_row, new_call = new.build(new_case, args.repeats)
  row.update(old_rule=old_row["rule"], new_rule=new_row["rule"], mode=new_row["mode"],
             old_status=old_row["status"], new_status=new_row["status"])
  for side, r in (("old", old_row), ("new", new_row)):
    row[f"{side}_compile_s"] = r["compile_s"]
    row[f"{side}_peak_bytes"] = r["peak_bytes"]
    row[f"{side}_first_run_s"] = r["first_run_s"]
  if old_call is None or new_call is None:
    bad = [(s, r) for s, r in (("old", old_row), ("new", new_row)) if r["status"] != "ok"]
    row["status"] = "skipped" if all(r["status"] == "skipped" for _, r in bad) else "error"
    row["note"] = "; ".join(f"{s}: {r['status']}: {r['note']}" for s, r in bad)
    return row
  slowest = max(old_row["first_run_s"], new_row["first_run_s"])
  # Fast rows get more pairs (about --target-s seconds of timed calls per side): their medians
  # are the most sensitive to the load's minute-scale swings.
  pairs = max(args.repeats, min(MAX_REPEATS, int(args.target_s / max(slowest, 1e-6))))
  if slowest > args.slow_s:
    pairs = min(args.repeats, args.slow_repeats)
    row["note"] = (f"{pairs} pairs instead of {args.repeats}: one call ≈ {slowest:.3g} s "
                   f"(> {args.slow_s:g} s)")
  (old_t, new_t), (old_c, new_c) = alternate([old_call, new_call], pairs)
  del old_call, new_call
  # CPU seconds of this process per call: on a machine shared with other jobs the wall time
  # also counts the time the call waited for a core, the CPU time mostly does not.
  row.update(old_cpu_median_s=statistics.median(old_c), new_cpu_median_s=statistics.median(new_c))
  row["cpu_ratio"] = row["new_cpu_median_s"] / row["old_cpu_median_s"]
  row.update(repeats=pairs, old_times=old_t, new_times=new_t,
             old_median_s=statistics.median(old_t), new_median_s=statistics.median(new_t),
             old_min_s=min(old_t), new_min_s=min(new_t))
  row["ratio"] = row["new_median_s"] / row["old_median_s"]
  row["min_ratio"] = row["new_min_s"] / row["old_min_s"]
  row["pair_ratio"] = statistics.median(n / o for o, n in zip(old_t, new_t))
  row["loadavg_end"] = harness.loadavg()
  row["wall_s"] = time.perf_counter() - t0
  return row


# ------------------------------------------------------------------------------ the table


def table(result: dict, threshold: float = 1.15) -> str:
  """Markdown: one line per compared row (ratio = new/old medians; pair = median pair ratio)."""
  out = ["| case | old median s | new median s | new/old | pair ratio | min ratio | CPU ratio | "
         "pairs | load | note |", "|" + "---|" * 10]
  for r in result["rows"]:
    if r["status"] != "ok":
      out.append(f"| {r['name']} | – | – | – | – | – | – | – | – | **{r['status']}**: "
                 f"{r['note']} |".replace("\n", " "))
      continue
    flag = "**" if r["ratio"] > threshold else ""
    load = f"{r['loadavg_start']:.1f}" if r["loadavg_start"] is not None else "–"
    cpu = f"{r['cpu_ratio']:.2f}" if r.get("cpu_ratio") is not None else "–"  # older files: none
    out.append(f"| {r['name']} | {r['old_median_s']:.4g} | {r['new_median_s']:.4g} | "
               f"{flag}{r['ratio']:.2f}{flag} | {r['pair_ratio']:.2f} | {r['min_ratio']:.2f} | "
               f"{cpu} | {r['repeats']} | {load} | {r['note']} |")
  return "\n".join(out)


# ------------------------------------------------------------------------------ command line


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m benchmarks.compare",
                              description=__doc__.split("\n")[0])
  p.add_argument("old_tree", nargs="?", help="checkout of the older commit (has bplambda_jax/ "
                 "and benchmarks/)")
  p.add_argument("--only", metavar="NAME[,NAME...]", help="compare only these rows")
  p.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                 help=f"timed pairs per row after the warm-ups (default {DEFAULT_REPEATS})")
  p.add_argument("--target-s", type=float, default=DEFAULT_TARGET_S,
                 help="fast rows get more pairs: about this many seconds of timed calls per side "
                      f"(at most {MAX_REPEATS} pairs)")
  p.add_argument("--slow-s", type=float, default=DEFAULT_SLOW_S,
                 help="rows whose warm-up call exceeds this many seconds get --slow-repeats pairs")
  p.add_argument("--slow-repeats", type=int, default=DEFAULT_SLOW_REPEATS)
  p.add_argument("--tiny", action="store_true", help="both suites at their tiny sizes (smoke "
                 "test of this script)")
  p.add_argument("--json", metavar="FILE", help="where to write the rows (default "
                 "benchmarks/results/compare_<old commit>.json)")
  p.add_argument("--table", metavar="FILE", help="print the markdown table of a results file")
  return p


def main(argv: Optional[list[str]] = None) -> int:
  args = _parser().parse_args(argv)
  if args.table:
    with open(args.table) as f:
      print(table(json.load(f)))
    return 0
  if not args.old_tree:
    raise SystemExit("give the old tree's path (or --table FILE).")
  if args.repeats < 1 or args.slow_repeats < 1:
    raise SystemExit("--repeats and --slow-repeats must be >= 1.")
  label = tree_label(args.old_tree)
  out_path = args.json or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                       f"compare_{label}.json")
  with tempfile.TemporaryDirectory(prefix="bench_old_") as workdir:
    old, new = load_sides(args.old_tree, workdir)
    old_cases, new_cases = old.all_cases(), new.all_cases()
    names = [n for n in new_cases if n in old_cases]
    if args.only:
      wanted = [n.strip() for n in args.only.split(",") if n.strip()]
      unknown = [n for n in wanted if n not in names]
      if unknown:
        raise SystemExit(f"not in both suites: {unknown}")
      names = [n for n in names if n in wanted]
    result = {
        "about": "Interleaved same-process comparison of two versions of the benchmark suite "
                 "(python -m benchmarks.compare); ratio = new median / old median.",
        # the old tree's path is this machine's: the command names the checkout by its commit
        "old": label, "new": _git_head(), "command": " ".join(
            ["python -m benchmarks.compare"] + [f"<checkout of {label}>" if a == args.old_tree
                                                 else a for a in (argv or sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": harness.host(), "device": harness.device(), "jax_version": jax.__version__,
        "tiny": args.tiny, "repeats": args.repeats,
        "only_old": sorted(set(old_cases) - set(new_cases)),
        "only_new": sorted(set(new_cases) - set(old_cases)), "rows": []}
    wall0 = time.perf_counter()
    for name in names:
      oc, nc = old_cases[name], new_cases[name]
      if args.tiny:
        oc, nc = oc.tiny(), nc.tiny()
      with _x32():
        row = compare_case(name, old, new, oc, nc, args)
      result["rows"].append(row)
      gc.collect()
      msg = (f"new/old {row['ratio']:.3f} (pair {row['pair_ratio']:.3f}; {row['old_median_s']:.4g}"
             f" s vs {row['new_median_s']:.4g} s)" if row["status"] == "ok" else row["note"])
      print(f"[{row.get('wall_s', 0):6.1f} s, load {row['loadavg_start']}] {name}: "
            f"{row['status']} {msg}", flush=True)
      result["wall_s"] = time.perf_counter() - wall0
      result["loadavg_end"] = harness.loadavg()
      os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
      with open(out_path, "w") as f:
        json.dump(result, f, indent=1)
  print(table(result))
  print(f"wrote {len(result['rows'])} rows to {out_path} ({result['wall_s']:.0f} s)")
  return 0 if all(r["status"] != "error" for r in result["rows"]) else 1


@contextlib.contextmanager
def _x32():
  with jax.enable_x64(False):
    yield


def _git_head() -> str:
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return tree_label(here)


if __name__ == "__main__":
  sys.exit(main())
