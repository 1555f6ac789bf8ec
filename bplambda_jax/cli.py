"""The ``bplambda`` command.

``bplambda toy``    trains BP(λ) synthesisers on the toy task for several λ and seeds (one compiled
                    program) and reports gradient alignment with BPTT: terminal table,
                    ``results.json`` and ``alignment.png`` in ``--out``.
``bplambda align``  a table of rules (BPTT, truncated BPTT, DNI, BP(λ), RTRL, e-prop, SnAp-n,
                    columnar RTRL, m-order e-prop) and their alignment with BPTT on a task.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from bplambda_jax.rules import RULE_NAMES


def _floats(text: str, name: str) -> list[float]:
  try:
    return [float(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise SystemExit(f"error: --{name} must be a comma-separated list of numbers, got {text!r}")


def _ints(text: str, name: str) -> list[int]:
  try:
    return [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise SystemExit(f"error: --{name} must be a comma-separated list of integers, got {text!r}")


def _provenance() -> dict:
  import jax

  sha = None
  try:
    here = os.path.dirname(os.path.abspath(__file__))
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                         timeout=5).stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    pass
  return {"jax_version": jax.__version__, "device": str(jax.devices()[0]), "git_sha": sha,
          "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def write_json(path: str, obj) -> None:
  """Atomic JSON write (temporary file + rename)."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
  with os.fdopen(fd, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def _plot_alignment(path: str, result: dict, title: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  steps = np.asarray(result["steps"])
  fig, ax = plt.subplots(figsize=(6, 4))
  for lam, curve in zip(result["lambdas"], np.moveaxis(np.asarray(result["alignment"]), 1, 0)):
    mean, sd = curve.mean(0), curve.std(0)
    ax.plot(steps, mean, label=f"λ = {lam:g}")
    ax.fill_between(steps, mean - sd, mean + sd, alpha=0.2)
  ax.set_xlabel("update")
  ax.set_ylabel("cos(learning signal, BPTT dL/dh_t)")
  ax.set_ylim(-0.1, 1.02)
  ax.set_title(title)
  ax.legend(loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def cmd_toy(args) -> int:
  from bplambda_jax import experiments

  lambdas = _floats(args.lambdas, "lambdas")
  seeds = _ints(args.seeds, "seeds")
  for lam in lambdas:
    if not 0.0 <= lam <= 1.0:
      raise SystemExit(f"error: --lambdas values must lie in [0, 1], got {lam}")
  if not 0.0 <= args.gamma <= 1.0:
    raise SystemExit(f"error: --gamma must lie in [0, 1], got {args.gamma}")
  if args.mode not in ("online", "sequence"):
    raise SystemExit(f"error: --mode must be 'online' or 'sequence', got {args.mode!r}")
  if args.lr_rnn is not None and not args.plastic:
    raise SystemExit("error: --lr-rnn only applies with --plastic")
  lr_rnn = (1e-4 if args.lr_rnn is None else args.lr_rnn) if args.plastic else 0.0
  config = {"lambdas": lambdas, "seeds": seeds, "steps": args.steps, "gamma": args.gamma,
            "seq_len": args.T, "hidden_size": args.hidden, "batch_size": args.batch,
            "lr_synth": args.lr_synth, "lr_rnn": lr_rnn, "mode": args.mode,
            "faithful": args.faithful, "record_every": args.record_every}
  print(f"toy task: {len(seeds)} seeds x {len(lambdas)} λ values, {args.steps} updates, "
        f"{'plastic' if args.plastic else 'fixed'} linear RNN (H={args.hidden}, T={args.T}), "
        f"mode={args.mode}{', faithful' if args.faithful else ''}", flush=True)
  t0 = time.perf_counter()
  result = experiments.run_toy(**config)
  elapsed = time.perf_counter() - t0
  align = np.asarray(result["alignment"])  # [S, L, K]
  rows = []
  print(f"\n{'λ':>6} {'final alignment':>18} {'sd':>7}   curve (mean over seeds)")
  marks = np.linspace(0, len(result["steps"]) - 1, 5).astype(int)
  for i, lam in enumerate(lambdas):
    final = align[:, i, -1]
    curve = align[:, i].mean(0)
    rows.append({"lambda": lam, "final_mean": float(final.mean()), "final_sd": float(final.std()),
                 "final_per_seed": final.tolist(), "curve_mean": curve.tolist(),
                 "curve_sd": align[:, i].std(0).tolist()})
    marks_txt = " ".join(f"{curve[m]:.3f}@{result['steps'][m]}" for m in marks)
    print(f"{lam:>6g} {final.mean():>18.4f} {final.std():>7.4f}   {marks_txt}")
  print(f"\n{elapsed:.1f} s (compile included)")
  if args.out:
    out = {"task": "toy", "config": config, "provenance": _provenance(),
           "seconds": elapsed, "steps": result["steps"], "results": rows}
    write_json(os.path.join(args.out, "results.json"), out)
    _plot_alignment(os.path.join(args.out, "alignment.png"), result,
                    f"BP(λ) toy task, γ = {args.gamma:g}")
    print(f"wrote {os.path.join(args.out, 'results.json')} and alignment.png")
  return 0


DEFAULT_ALIGN_RULES = ("bptt,tbptt:1,tbptt:3,dni:1,dni:3,bp_lambda,rtrl,eprop,snap:1,snap:2,"
                       "columnar_rtrl,eprop_m:1,eprop_m:2,eprop_m:3")


def cmd_align(args) -> int:
  from bplambda_jax import experiments as alignment
  from bplambda_jax.rules import parse_rule_spec

  specs = [s.strip() for s in args.rules.split(",") if s.strip()]
  try:
    for spec in specs:
      parse_rule_spec(spec)
  except ValueError as e:
    raise SystemExit(f"error: --rules: {e}")
  if args.task not in alignment.ALIGNMENT_TASKS:
    raise SystemExit(f"error: --task must be one of {alignment.ALIGNMENT_TASKS}, got {args.task!r}")
  seeds = _ints(args.seeds, "seeds")
  for name in ("lambda_", "gamma"):
    if not 0.0 <= getattr(args, name) <= 1.0:
      raise SystemExit(f"error: --{name.rstrip('_')} must lie in [0, 1], got {getattr(args, name)}")
  config = {"task": args.task, "rules": specs, "seeds": seeds, "cell": args.cell,
            "hidden": args.hidden, "synth_steps": args.synth_steps, "lr_synth": args.lr_synth,
            "lambda_": args.lambda_, "gamma": args.gamma}
  print(f"alignment with BPTT on task {args.task!r}: {len(specs)} rules, {len(seeds)} seeds; "
        f"synthesisers trained for {args.synth_steps} updates first", flush=True)
  t0 = time.perf_counter()
  rows = alignment.run_alignment(args.task, specs, seeds, cell=args.cell, hidden=args.hidden,
                                 synth_steps=args.synth_steps, lr_synth=args.lr_synth,
                                 lambda_=args.lambda_, gamma=args.gamma)
  print(alignment.format_rows(rows))
  elapsed = time.perf_counter() - t0
  print(f"\n{elapsed:.1f} s")
  if args.out:
    write_json(os.path.join(args.out, "alignment.json"),
               {"config": config, "provenance": _provenance(), "seconds": elapsed, "rows": rows})
    print(f"wrote {os.path.join(args.out, 'alignment.json')}")
  return 0


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="bplambda", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True)

  t = sub.add_parser("toy", help="gradient alignment of BP(λ) synthetic gradients on the toy task")
  t.add_argument("--lambdas", default="0,0.5,0.9,1", help="comma-separated λ values in [0, 1]")
  t.add_argument("--gamma", type=float, default=1.0, help="discount γ in [0, 1]")
  t.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated integer seeds")
  t.add_argument("--steps", type=int, default=10000, help="number of updates (batches)")
  t.add_argument("--T", type=int, default=10, help="sequence length (horizon)")
  t.add_argument("--hidden", type=int, default=30, help="hidden size of the linear RNN")
  t.add_argument("--batch", type=int, default=10, help="batch size")
  t.add_argument("--lr-synth", type=float, default=1e-3, help="Adam learning rate of ĝ")
  t.add_argument("--plastic", action="store_true",
                 help="also train the RNN and readout (default: fixed RNN, as in the paper)")
  t.add_argument("--lr-rnn", type=float, default=None,
                 help="Adam learning rate of the RNN and readout with --plastic (default 1e-4)")
  t.add_argument("--mode", default="sequence", help="BP(λ) mode: 'sequence' or 'online'")
  t.add_argument("--faithful", action="store_true", help="the authors' conventions and quirks")
  t.add_argument("--record-every", type=int, default=100, help="stride of the recorded curve")
  t.add_argument("--out", default=None, help="output directory for results.json and the plot")
  t.set_defaults(func=cmd_toy)

  a = sub.add_parser("align", help="alignment of many learning rules with BPTT on one task")
  a.add_argument("--task", default="copy", help="'toy' (linear RNN, H=30) or 'copy' "
                 "(copy-repeat N=3, R=2, batch 16)")
  a.add_argument("--rules", default=DEFAULT_ALIGN_RULES,
                 help="comma-separated rule specs: name or name:k, from " + ", ".join(RULE_NAMES))
  a.add_argument("--cell", default=None,
                 help="cell name (default: linear for toy, lstm for copy; e.g. columnar_lstm)")
  a.add_argument("--hidden", type=int, default=None, help="hidden size (toy 30, copy 16)")
  a.add_argument("--seeds", default="0,1,2", help="comma-separated integer seeds")
  a.add_argument("--synth-steps", type=int, default=1000,
                 help="updates that train each synthesiser (network fixed) before measuring")
  a.add_argument("--lr-synth", type=float, default=1e-3, help="Adam learning rate of ĝ")
  a.add_argument("--lambda", dest="lambda_", type=float, default=1.0, help="BP(λ)'s λ")
  a.add_argument("--gamma", type=float, default=1.0, help="BP(λ)'s γ")
  a.add_argument("--out", default=None, help="output directory for alignment.json")
  a.set_defaults(func=cmd_align)
  return p


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  return args.func(args)


if __name__ == "__main__":
  sys.exit(main())
