"""Rows of this suite timed interleaved: ``python -m benchmarks.interleave ROW,ROW,... [--into F]``.

A target that compares two rows (online BP(λ) over e-prop, the sequence mode over BPTT) reads
their ratio; on a shared machine two rows timed one after the other, as ``benchmarks.run`` does,
see different loads. This tool builds every named row's program with
:class:`benchmarks.harness.Runner` (the same compiled update the suite times, its warm-up call
included), then calls them in rounds: each round calls every row ``--calls`` times, the order of
the rows reversed every other round, so load drift reaches all rows alike. Per row it keeps the
wall seconds of every call (``median_s``, ``min_s``, ``max_s`` as in the suite) and writes the
rows, in the suite's row format with a note naming the rows they were interleaved with, to
``--json``; ``--into FILE`` also puts them into a results file of ``benchmarks.run`` (replacing
rows of the same name), where the report's targets read them. The process's CPU seconds per call
(both sides' threads) are printed beside the wall seconds: under heavy load they move less.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Optional

import jax

from benchmarks import cases as cases_lib
from benchmarks import harness
from benchmarks.peers.interleave import merge_rows

DEFAULT_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                            "interleaved.json")


def build(names: list[str], tiny: bool = False) -> tuple[list[dict], list]:
  """(rows, calls): each named case's row (compile and memory fields; timing from its warm-up
  call only) and its compiled call."""
  by_name = {c.name: c for c in cases_lib.all_cases()}
  unknown = [n for n in names if n not in by_name]
  if unknown:
    raise SystemExit(f"unknown case(s) {unknown}; see python -m benchmarks.run --list.")
  rows, calls = [], []
  for name in names:
    kept = {}
    with jax.enable_x64(False):
      row = harness.Runner(timer=harness.keeping_timer(kept), tiny=tiny, log=lambda s: print(s, flush=True)).run_case(
          by_name[name])
    if row["status"] != "ok":
      raise RuntimeError(f"{name}: {row['status']}: {row['note']}")
    rows.append(row)
    calls.append(kept["call"])
  return rows, calls


def interleave(calls: list, rounds: int, per_round: int) -> tuple[list, list]:
  """(wall seconds, CPU seconds) per call of each closure, ``rounds`` rounds of ``per_round``
  calls each, the order reversed every other round."""
  wall = [[] for _ in calls]
  cpu = [[] for _ in calls]
  for r in range(rounds):
    order = list(range(len(calls)))
    if r % 2:
      order.reverse()
    for i in order:
      for _ in range(per_round):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(calls[i]())
        wall[i].append(time.perf_counter() - t0)
        cpu[i].append(time.process_time() - c0)
  return wall, cpu


def main(argv: Optional[list] = None) -> int:
  p = argparse.ArgumentParser(prog="python -m benchmarks.interleave",
                              description=__doc__.split("\n")[0])
  p.add_argument("rows", help="case names, comma-separated (python -m benchmarks.run --list)")
  p.add_argument("--rounds", type=int, default=10)
  p.add_argument("--calls", type=int, default=3, help="calls of each row per round")
  p.add_argument("--tiny", action="store_true", help="tiny sizes (a smoke test)")
  p.add_argument("--json", default=DEFAULT_JSON, help=f"output rows (default {DEFAULT_JSON})")
  p.add_argument("--into", metavar="RESULTS.json",
                 help="also put the rows into this results file of benchmarks.run")
  args = p.parse_args(argv)
  if args.rounds < 1 or args.calls < 1:
    raise SystemExit("--rounds and --calls must be >= 1.")
  names = [n.strip() for n in args.rows.split(",") if n.strip()]
  if len(set(names)) != len(names) or len(names) < 2:
    raise SystemExit("name at least two distinct rows.")
  rows, calls = build(names, args.tiny)
  load0 = harness.loadavg()
  t0 = time.perf_counter()
  wall, cpu = interleave(calls, args.rounds, args.calls)
  load1 = harness.loadavg()
  for row, w, c in zip(rows, wall, cpu):
    others = [n for n in names if n != row["name"]]
    others = ", ".join(others) if len(others) <= 3 else f"{len(others)} other rows ({names[0]}, …)"
    note = (f"timed interleaved with {others} (python -m benchmarks.interleave: {args.rounds} "
            f"rounds of {args.calls} calls, order reversed every other round; load average "
            f"{load0:.1f} at the start, {load1:.1f} at the end; CPU seconds per call "
            f"{statistics.median(c):.4g})")
    row.update(repeats=len(w), median_s=float(statistics.median(w)), min_s=float(min(w)),
               max_s=float(max(w)), loadavg_1m=load0,
               note="; ".join(x for x in (row["note"], note) if x))
    if row["flops"] is not None:
      row["gflops"] = row["flops"] / row["median_s"] / 1e9
    if row["sequences_per_s"] is not None:
      row["sequences_per_s"] = row["batch"] * row["seeds"] / row["median_s"]
    harness.check_row(row)
  harness.add_derived(rows)
  for row, c in zip(rows, cpu):
    print(f"{row['name']}: median {row['median_s']:.4g} s wall, {statistics.median(c):.4g} s CPU "
          f"({row['repeats']} calls)")
  base = rows[0]
  for row, c in zip(rows[1:], cpu[1:]):
    print(f"  {row['name']} / {base['name']}: {row['median_s'] / base['median_s']:.3f} wall, "
          f"{statistics.median(c) / statistics.median(cpu[0]):.3f} CPU")
  print(f"{time.perf_counter() - t0:.0f} s of interleaved calls, load {load0} -> {load1}")
  os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
  with open(args.json, "w") as f:
    json.dump(rows, f, indent=1)
  if args.into:
    merge_rows(args.into, rows)
  print(f"wrote {len(rows)} rows to {args.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
