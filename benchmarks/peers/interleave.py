"""Our e-prop against a peer library's, timed interleaved: ``python -m benchmarks.peers.interleave``.

For each shape (the benchmark rows ``seqmnist_lstm30_eprop`` and ``copyrepeat_lstm100_eprop``)
this builds our row's program with :class:`benchmarks.harness.Runner` (the same compiled update
the suite times) and starts the peer's worker (``benchmarks/peers/braintrace_eprop.py --serve``)
in the peer's own Python (``--python``, a virtual environment: the peer is never a dependency of
bplambda_jax). After the warm-ups it alternates timed batches: ``--calls`` of ours, then
``--calls`` of theirs (the other process idles, waiting on its pipe), ``--rounds`` times, with the
order swapped every round, so both sides see the same load. The rows (the suite's row format,
family 'peer') go to ``--json``; ``--into FILE`` also adds them to a results file of
``benchmarks.run`` (replacing rows of the same name). The report's peer target reads the two rows of one shape: both medians come from
the same interleaved run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Optional

import jax

from benchmarks import cases as cases_lib
from benchmarks import harness

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "braintrace_eprop.py")
SHAPES = {"seqmnist": "seqmnist_lstm30_eprop", "copyrepeat": "copyrepeat_lstm100_eprop"}
PEER_LABEL = "braintrace.EProp"
DEFAULT_JSON = os.path.join(os.path.dirname(HERE), "results", "peer_braintrace.json")


def peer_names(shape: str) -> tuple[str, str]:
  """(our row's name, the peer's row's name) of one shape."""
  ours = SHAPES[shape]
  return f"peer_{ours}", f"peer_{ours.rsplit('_', 1)[0]}_braintrace_eprop"


class Worker:
  """The peer's worker process (stdin commands, one JSON line per answer on stdout)."""

  def __init__(self, python: str, case: cases_lib.Case, log_path: str):
    args = [python, WORKER, "--serve", "--batch", str(case.batch), "--seq-len",
            str(case.seq_len), "--inputs", str(case.input_size), "--hidden", str(case.hidden),
            "--outputs", str(case.output_size), "--loss", case.loss, "--lr", str(case.lrs[0])]
    self.log = open(log_path, "w")
    self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=self.log, text=True, bufsize=1)
    self.info = self._read()

  def _read(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"the peer worker stopped (see {self.log.name}).")
    return json.loads(line)

  def run(self, n: int) -> list:
    self.proc.stdin.write(f"run {n}\n")
    return self._read()["times"]

  def close(self):
    try:
      self.proc.stdin.write("quit\n")
      self.proc.stdin.close()
      self.proc.wait(timeout=60)
    finally:
      self.log.close()


def measure(shape: str, python: str, rounds: int, calls: int, tiny: bool, log_dir: str) -> list:
  """The two rows of one shape (ours, the peer's), timed interleaved."""
  case = {c.name: c for c in cases_lib.all_cases()}[SHAPES[shape]]
  if tiny:
    case = case.tiny()
  kept = {}
  with jax.enable_x64(False):
    row = harness.Runner(timer=harness.keeping_timer(kept), log=lambda s: print(s, flush=True)).run_case(case)
  if row["status"] != "ok":
    raise RuntimeError(f"{case.name}: {row['status']}: {row['note']}")
  ours = kept["call"]
  print(f"{shape}: starting the peer worker ({python})", flush=True)
  worker = Worker(python, case, os.path.join(log_dir, f"peer_braintrace_{shape}.log"))
  try:
    ours_t, theirs_t, ratios = [], [], []
    load = harness.loadavg()
    for r in range(rounds):
      def run_ours():
        out = []
        for _ in range(calls):
          t0 = time.perf_counter()
          jax.block_until_ready(ours())
          out.append(time.perf_counter() - t0)
        return out
      if r % 2 == 0:
        a, b = run_ours(), worker.run(calls)
      else:
        b, a = worker.run(calls), run_ours()
      ours_t += a
      theirs_t += b
      ratios.append(statistics.median(b) / statistics.median(a))
      print(f"  round {r}: ours {statistics.median(a):.4g} s, theirs {statistics.median(b):.4g} "
            f"s ({ratios[-1]:.2f}×)", flush=True)
  finally:
    worker.close()
  info = worker.info
  name_ours, name_theirs = peer_names(shape)
  speedup = statistics.median(theirs_t) / statistics.median(ours_t)
  common = (f"interleaved with the other row of this shape: {rounds} rounds of {calls} calls "
            f"each, alternating; peer speed-up {speedup:.2f}× (median of the rounds' ratios "
            f"{statistics.median(ratios):.2f}×)")
  mine = dict(row, name=name_ours, family="peer", note=f"bplambda_jax e-prop, the program of "
              f"{case.name}; {common}", loadavg_1m=load, bptt_ref=None, analytic_flops=None)
  _fill(mine, ours_t)
  theirs = dict.fromkeys(harness.FIELDS)
  theirs.update({k: row[k] for k in ("kind", "mode", "cell", "loss", "batch", "seq_len", "hidden",
                                     "input_size", "output_size", "seeds", "dtype", "tiny",
                                     "device", "host", "date", "git_sha", "code_dirty")})
  versions = info["versions"]
  theirs.update(name=name_theirs, family="peer", status="ok", rule=PEER_LABEL,
                timed="train_update", loadavg_1m=load, jax_version=versions["jax"],
                first_run_s=info["first_run_s"],
                note=f"braintrace {versions['braintrace']} (brainstate {versions['brainstate']}) "
                     f"EProp on braintrace.nn.LSTMCell + linear readout, etrace_grad + Adam, its "
                     f"own venv; the second warm-up call recompiles ({info['second_run_s']:.3g} "
                     f"s); {common}")
  _fill(theirs, theirs_t)
  for r_ in (mine, theirs):
    harness.check_row(r_)
  return [mine, theirs]


def _fill(row: dict, times: list) -> None:
  row.update(repeats=len(times), median_s=float(statistics.median(times)),
             min_s=float(min(times)), max_s=float(max(times)),
             sequences_per_s=row["batch"] * row["seeds"] / statistics.median(times),
             flops=None, gflops=None, ratio_to_bptt=None, flop_floor_s=None,
             ratio_to_flop_floor=None)


def merge_rows(path: str, rows: list) -> None:
  """Add ``rows`` to a results file of benchmarks.run, replacing rows of the same name."""
  with open(path) as f:
    old = json.load(f)
  names = {r["name"] for r in rows}
  with open(path, "w") as f:
    json.dump([r for r in old if r["name"] not in names] + rows, f, indent=1)


def main(argv: Optional[list] = None) -> int:
  p = argparse.ArgumentParser(prog="python -m benchmarks.peers.interleave",
                              description=__doc__.split("\n")[0])
  p.add_argument("--python", required=True, help="the peer environment's Python, e.g. "
                 "venvs/braintrace/bin/python")
  p.add_argument("--shapes", default=",".join(SHAPES), help=f"subset of {list(SHAPES)}")
  p.add_argument("--rounds", type=int, default=8)
  p.add_argument("--calls", type=int, default=3, help="timed calls per batch")
  p.add_argument("--tiny", action="store_true", help="tiny sizes (a smoke test)")
  p.add_argument("--json", default=DEFAULT_JSON, help=f"output rows (default {DEFAULT_JSON})")
  p.add_argument("--into", metavar="RESULTS.json",
                 help="also add the rows to this results file of benchmarks.run")
  p.add_argument("--log-dir", default="/tmp", help="where the worker's stderr goes")
  args = p.parse_args(argv)
  shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
  unknown = [s for s in shapes if s not in SHAPES]
  if unknown:
    raise SystemExit(f"unknown shape(s) {unknown}; choose from {list(SHAPES)}.")
  rows = []
  for shape in shapes:
    rows += measure(shape, args.python, args.rounds, args.calls, args.tiny, args.log_dir)
  os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
  with open(args.json, "w") as f:
    json.dump(rows, f, indent=1)
  if args.into:
    merge_rows(args.into, rows)
  for r in rows:
    print(f"{r['name']}: median {r['median_s']:.4g} s ({r['repeats']} calls)")
  print(f"wrote {len(rows)} rows to {args.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
