"""Run the benchmark suite: ``python -m benchmarks.run [--list | --only A,B | --tiny] [--json F]``.

The command line only: the cases are in :mod:`benchmarks.cases`, the measuring in
:mod:`benchmarks.harness` (its :func:`~benchmarks.harness.run_cases` is the Python API), the FLOP
counter in :mod:`benchmarks.flops` and the markdown report in :mod:`benchmarks.report` (targets
in ``benchmarks/targets.json``). What each row field means: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

from benchmarks import cases as cases_lib
from benchmarks import harness
from benchmarks import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_JSON = os.path.join(ROOT, "benchmarks", "results", "latest.json")


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
  p.add_argument("--list", action="store_true", help="list the case names and exit")
  p.add_argument("--only", metavar="NAME[,NAME...]",
                 help="run only these cases (plus the floor and BPTT rows they refer to)")
  p.add_argument("--no-refs", action="store_true",
                 help="with --only, do not add the floor and BPTT reference rows")
  p.add_argument("--json", default=DEFAULT_JSON, metavar="FILE",
                 help=f"where to write the rows (a JSON list); default {DEFAULT_JSON}")
  p.add_argument("--repeats", type=int, default=harness.MIN_REPEATS,
                 help=f"timed calls per case after one warm-up call (>= {harness.MIN_REPEATS}; "
                      f"any >= 1 with --tiny)")
  p.add_argument("--budget", type=float, default=harness.DEFAULT_BUDGET_S, metavar="SECONDS",
                 help="per-case budget for the timed calls; slower cases get fewer repeats "
                      "(noted in the row)")
  p.add_argument("--tiny", action="store_true", help="run every case at a tiny size (smoke test)")
  p.add_argument("--table", metavar="FILE.json",
                 help="print the markdown table and targets for a results file and exit")
  p.add_argument("--readme", action="store_true",
                 help="re-render the results blocks of benchmarks/README.md from their JSON files "
                      "and exit")
  return p


def main(argv: Optional[list[str]] = None) -> int:
  args = _parser().parse_args(argv)
  if args.table:
    with open(args.table) as f:
      rows = json.load(f)
    print(report.report(rows))
    return 0
  if args.readme:
    path = os.path.join(ROOT, "benchmarks", "README.md")
    with open(path) as f:
      text = report.render_readme(f.read(), ROOT)
    with open(path, "w") as f:
      f.write(text)
    print(f"rewrote the results blocks of {path}")
    return 0
  if args.list:
    for c in cases_lib.all_cases():
      print(c.name + (f"  [skipped at full size: {c.skip}]" if c.skip else ""))
    return 0
  if args.repeats < 1 or (args.repeats < harness.MIN_REPEATS and not args.tiny):
    raise SystemExit(f"--repeats must be >= {harness.MIN_REPEATS} (or >= 1 with --tiny), got "
                     f"{args.repeats}.")
  names = None
  if args.only:
    names = [n.strip() for n in args.only.split(",") if n.strip()]
  try:
    rows = harness.run_cases(names, tiny=args.tiny, repeats=args.repeats, budget_s=args.budget,
                             with_refs=not args.no_refs, log=lambda s: print(s, flush=True))
  except ValueError as e:
    raise SystemExit(str(e)) from e
  for r in rows:
    harness.check_row(r)
  os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
  with open(args.json, "w") as f:
    json.dump(rows, f, indent=1)
  info = harness.machine_info()
  print(f"wrote {len(rows)} rows to {args.json} ({info['nproc']} cores, {info['cpu_model']}, "
        f"{info['mem_total_gb']} GB)")
  return 0 if all(r["status"] != "error" for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
