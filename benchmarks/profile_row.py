"""Where a row's time goes: ``python -m benchmarks.profile_row ROW [--calls N] [--top K]``.

Builds the row's compiled program with :class:`benchmarks.harness.Runner` (the program the suite
times), warms it up, records ``--calls`` calls with ``jax.profiler`` and prints, per XLA
operation of the compiled program (a fusion, a dot, a while loop, …), its milliseconds per call
and how many times one call runs it (an operation inside a ``scan`` of T steps runs T times; a
``while`` line is its whole loop, its body's operations are listed too). The operation names are
those of the compiled HLO (``--hlo FILE`` writes it, to look an operation up). On a machine
shared with other jobs the absolute times move with the load; the shares of one profile are what
to read.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import sys
import tempfile
import time
from typing import Optional

import jax

from benchmarks import cases as cases_lib
from benchmarks import harness

# Events of the runtime and of Python, not operations of the program.
NOT_OPS = ("ThunkExecutor", "PjitFunction", "$", "CommonPjRt", "ParseArguments", "SlinkyThreadPool",
          "end: ")


def profile(name: str, calls: int) -> tuple[dict, dict, float, object]:
  """(ms per call by operation, runs per call by operation, wall seconds per call, compiled)."""
  case = {c.name: c for c in cases_lib.all_cases()}.get(name)
  if case is None or case.kind != "update":
    raise SystemExit(f"{name!r} is not an update row (python -m benchmarks.run --list).")
  with jax.enable_x64(False):
    runner = harness.Runner()
    prog, _ = runner._update_program(case)
  compiled, args = prog["compiled"], prog["args"]
  for _ in range(2):
    jax.block_until_ready(compiled(*args))
  with tempfile.TemporaryDirectory(prefix="profile_row_") as d:
    jax.profiler.start_trace(d)
    t0 = time.perf_counter()
    for _ in range(calls):
      jax.block_until_ready(compiled(*args))
    wall = (time.perf_counter() - t0) / calls
    jax.profiler.stop_trace()
    path = glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True)[0]
    with gzip.open(path) as f:
      events = json.load(f)["traceEvents"]
  total, count = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") == "X" and not e["name"].startswith(NOT_OPS):
      total[e["name"]] += e["dur"] / 1e3 / calls
      count[e["name"]] += 1 / calls
  return total, count, wall, compiled


def main(argv: Optional[list] = None) -> int:
  p = argparse.ArgumentParser(prog="python -m benchmarks.profile_row",
                              description=__doc__.split("\n")[0])
  p.add_argument("row", help="an update row's name (python -m benchmarks.run --list)")
  p.add_argument("--calls", type=int, default=5, help="profiled calls (default 5)")
  p.add_argument("--top", type=int, default=25, help="operations listed (default 25)")
  p.add_argument("--hlo", metavar="FILE", help="also write the compiled HLO text here")
  args = p.parse_args(argv)
  if args.calls < 1 or args.top < 1:
    raise SystemExit("--calls and --top must be >= 1.")
  total, count, wall, compiled = profile(args.row, args.calls)
  print(f"{args.row}: {wall * 1e3:.2f} ms per call (wall, {args.calls} profiled calls, load "
        f"{harness.loadavg()})")
  print("| operation | ms per call | runs per call |\n|---|---|---|")
  for op, ms in total.most_common(args.top):
    print(f"| {op} | {ms:.3f} | {count[op]:.0f} |")
  if args.hlo:
    with open(args.hlo, "w") as f:
      f.write(compiled.as_text())
  return 0


if __name__ == "__main__":
  sys.exit(main())
