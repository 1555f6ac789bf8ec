"""The accelerator check: ``python -m benchmarks.device_check [--json FILE] [--deadline SECONDS]``.

On a GPU or TPU, in one run (under 8 minutes on one GPU) that writes one JSON file:

1. the kernel tests (``tests/test_kernels.py``) on the compiled kernels instead of the Pallas
   interpreter (``BPLAMBDA_KERNELS_COMPILED=1``), as a pytest subprocess;
2. each Pallas kernel, compiled, at the library's shapes (:data:`DENSE_SHAPES`,
   :data:`STRUCTURED_SHAPES`; the same that ``tests/test_export.py`` lowers on a CPU) against its
   pure-``jnp`` reference in float32, with whether the compiled program really holds the kernel
   (or fell back to XLA) and the time of one call of each path;
3. the benchmark rows of :data:`ROWS` (kernels, seqMNIST, copy-repeat, element-wise cells, 32
   seeds as a vmap, a loop and ``seed_axis='auto'``) through :mod:`benchmarks.harness`, until
   the deadline (rows past it are written as skipped).

On a CPU it only says that it needs an accelerator and exits with status 2: the CPU proves the
accelerator paths by lowering (``tests/test_export.py``) and by the interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from bplambda_jax import kernels
from bplambda_jax import internals

NEEDS_ACCELERATOR = ("benchmarks.device_check needs an accelerator (a GPU or a TPU): JAX's default "
                     "backend here is {backend!r}. Nothing was run or written. On a CPU the "
                     "accelerator paths are checked by tests/test_export.py (lowering for cuda "
                     "and tpu) and the interpreted kernel tests.")
EXIT_NO_ACCELERATOR = 2
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (id, B, d, P) of the dense trace step (the linear synthesiser's W [d, P/d] when d divides P).
DENSE_SHAPES = [
    ("seqmnist_lstm30", 50, 30, 30 * 60),
    ("copyrepeat_lstm100", 100, 100, 100 * 200),
    ("lru_n64", 8, 128, 128 * 128),
    ("elementwise_lstm_n64", 8, 64, 64 * 128),
    ("odd_d30_p512", 8, 30, 512),
    ("odd_d7_p130", 3, 7, 130),
    ("bias_p1", 50, 30, 1),
]
_PATTERNS = {"diagonal": [[True]], "lru": [[False, True], [False, True]],
             "full2": [[True, True], [True, True]]}
# (id, B, pattern name, U, P) of the structured trace step (P = 2n + 1 for the element-wise cells).
STRUCTURED_SHAPES = [(f"{cell}_n{n}", 8, pat, n, 2 * n + 1) for n in (64, 256, 1024)
                     for cell, pat in (("elementwise_lstm", "diagonal"), ("lru", "lru"))]
STRUCTURED_SHAPES += [("odd_u30_p61", 8, "diagonal", 30, 61),
                      ("full2_u64_p130", 8, "full2", 64, 130),
                      ("full2_b100_u100_p211", 100, "full2", 100, 211)]

ROWS = ["kernel_trace_step_xla", "kernel_trace_step_pallas"]
ROWS += [f"kernel_structured_step_{c}_n1024_{i}" for c in ("lru", "lstm")
         for i in ("xla", "pallas")]
ROWS += [f"seqmnist_lstm30_{r}" for r in ("bptt", "eprop", "bplambda_online", "bplambda_sequence")]
ROWS += [f"copyrepeat_lstm100_{r}" for r in ("bptt", "eprop", "bplambda_online",
                                             "bplambda_online_dense")]
ROWS += [f"elementwise_{c}_n{n}_t1000_{r}" for c in ("lru", "lstm") for n in (64, 1024)
         for r in ("bptt", "eprop", "bplambda_online")]
ROWS += ["seeds32_vmap", "seeds32_loop", "seeds32_auto"]


def pattern(name: str) -> kernels.BlockPattern:
  return kernels.block_pattern(_PATTERNS[name])


def _rel(a, b) -> float:
  fa = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(a)])
  fb = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(b)])
  return float(np.linalg.norm(fa - fb) / max(np.linalg.norm(fb), 1e-30))


def _time(fn, args, repeats=5) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def _kernel_row(kind, case, fn_auto, fn_xla, fn_ref, args, name):
  row = {"kind": kind, "case": case, "shape": [list(a.shape) for a in args]}
  try:
    auto = jax.jit(fn_auto)
    row["kernel_in_program"] = name in auto.lower(*args).as_text(debug_info=True)
    got = auto(*args)
    row["rel_error"] = _rel(got, jax.jit(fn_ref)(*args))
    row["ok"] = row["rel_error"] < 1e-4
    row["auto_s"] = _time(auto, args)
    row["xla_s"] = _time(jax.jit(fn_xla), args)
  except Exception as e:  # report and go on: one failing shape must not hide the others
    row.update(ok=False, error=f"{type(e).__name__}: {e}")
  return row


def kernel_rows(log=print) -> list[dict]:
  """Compiled kernels (the automatic choice) against the references at the library's shapes."""
  rng = np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape, np.float32))
  rows = []
  for case, B, d, P in DENSE_SHAPES:
    args = (normal(B, d, P), normal(B, d, d) / np.sqrt(d), normal(B, d, P), normal(B, d))
    rows.append(_kernel_row("trace_step", case, lambda *a: kernels.trace_step(*a, 0.9),
                            lambda *a: kernels.trace_step(*a, 0.9, impl="xla"),
                            lambda *a: internals.trace_step_reference(*a, 0.9), args,
                            "bplambda_trace_step"))
    log(f"trace_step {case}: {rows[-1]}")
  for case, B, name, U, P in STRUCTURED_SHAPES:
    pat = pattern(name)
    k = pat.k
    args = (normal(B, len(pat.stored), U, P), normal(B, k, k, U) / 2, normal(B, P),
            normal(B, k, U))
    rows.append(_kernel_row("structured_step", case,
                            lambda *a, p=pat: kernels.structured_step(*a, 0.9, p),
                            lambda *a, p=pat: kernels.structured_step(*a, 0.9, p, impl="xla"),
                            lambda *a, p=pat: internals.structured_step_reference(*a, 0.9, p), args,
                            "bplambda_structured_step"))
    log(f"structured_step {case}: {rows[-1]}")
  return rows


def kernel_tests(timeout_s: float) -> dict:
  """tests/test_kernels.py on the compiled kernels (a pytest subprocess)."""
  env = dict(os.environ, BPLAMBDA_KERNELS_COMPILED="1", PYTHONPATH=REPO)
  cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
         os.path.join(REPO, "tests", "test_kernels.py")]
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout_s)
  except subprocess.TimeoutExpired:
    return {"command": " ".join(cmd[1:]), "ok": False, "summary": f"timed out after {timeout_s} s"}
  lines = proc.stdout.strip().splitlines()
  return {"command": "BPLAMBDA_KERNELS_COMPILED=1 python " + " ".join(cmd[1:]),
          "ok": proc.returncode == 0, "returncode": proc.returncode,
          "summary": lines[-1] if lines else "", "wall_s": time.perf_counter() - t0,
          "output_tail": "\n".join(lines[-40:]) + proc.stderr[-2000:]}


def benchmark_rows(deadline: float, repeats: int, budget_s: float, log=print) -> list[dict]:
  """The benchmark rows of :data:`ROWS` (with their reference rows) until ``deadline``."""
  from benchmarks import cases as cases_lib
  from benchmarks import harness

  runner = harness.Runner(repeats=repeats, budget_s=budget_s, log=log)
  rows = []
  for case in cases_lib.select(ROWS):
    if time.perf_counter() > deadline:
      row = harness.base_row(case, False)
      row.update(status="skipped", note="past the device check's deadline")
    else:
      t0 = time.perf_counter()
      row = runner.run_case(case)
      log(f"[{time.perf_counter() - t0:6.1f} s] {row['name']}: {row['status']}")
    rows.append(row)
  return harness.add_derived(rows)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m benchmarks.device_check",
                              description=__doc__.split("\n")[0])
  p.add_argument("--json", metavar="FILE", help="where to write the results (default: "
                 "benchmarks/results/device_check_<platform>.json)")
  p.add_argument("--deadline", type=float, default=420.0, metavar="SECONDS",
                 help="stop starting benchmark rows after this many seconds (default 420)")
  p.add_argument("--repeats", type=int, default=5, help="timed calls per benchmark row")
  p.add_argument("--budget", type=float, default=5.0, metavar="SECONDS",
                 help="per-row budget for the timed calls (default 5)")
  return p


def main(argv: Optional[list[str]] = None) -> int:
  args = _parser().parse_args(argv)
  backend = jax.default_backend()
  if backend == "cpu":
    print(NEEDS_ACCELERATOR.format(backend=backend), file=sys.stderr)
    return EXIT_NO_ACCELERATOR
  from benchmarks import harness

  t0 = time.perf_counter()
  path = args.json or os.path.join(REPO, "benchmarks", "results",
                                   f"device_check_{backend}.json")
  out = {"device": harness.device(), "host": harness.host(), "jax": jax.__version__,
         "deadline_s": args.deadline}
  out["kernel_tests"] = kernel_tests(timeout_s=max(60.0, args.deadline / 3))
  print(f"kernel tests: {out['kernel_tests']['summary']}")
  with jax.enable_x64(False):
    out["kernels"] = kernel_rows()
  out["rows"] = benchmark_rows(t0 + args.deadline, args.repeats, args.budget)
  out["wall_s"] = time.perf_counter() - t0
  out["ok"] = out["kernel_tests"]["ok"] and all(r["ok"] for r in out["kernels"])
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(out, f, indent=1, default=str)
  print(f"wrote {path} ({out['wall_s']:.0f} s; kernels {'ok' if out['ok'] else 'FAILED'})")
  return 0 if out["ok"] else 1


if __name__ == "__main__":
  sys.exit(main())
