"""The streaming section's fair tuning: each rule's settings picked on validation streams.

    python docs/results/stream_tuning.py --cell elementwise_lstm   # -> docs/results/
    python docs/results/stream_tuning.py --cell lstm               #    stream_tuning_CELL.json

Section 7 of the reproduction report streams trace conditioning (a cue, a delay of 8–16 steps, the
signal to predict one step ahead; ``bplambda stream``) to every online rule and to truncated BPTT.
Before its final runs, every rule gets the same chance: a grid over its learning rates (and, for
BP(λ), the synthesiser's learning rate, λ and γ) is streamed on *validation* streams (seeds
100–102: networks and streams that the final runs, seeds 0–4, never see) at a smaller budget
(``BUDGET``), and each rule keeps the point with the lowest MSE over the last quarter of its
stream. Truncated BPTT is tuned at two windows: n = 4, shorter than every delay (the comparison
the section is about), and n = 40, longer than every delay (a reference).

The script also gives the task's two reference errors in closed form: the best memoryless
predictor's (``tasks.trace_memoryless_mse``) and the best predictor *with memory*
(:func:`optimal_mse`), which knows the steps since the cue but not the trial's delay.

A tuning file of the same settings is extended, not redone: its points are kept and only the
grid's new points are streamed (``--fresh`` streams all). Run time of the whole grid on 2 CPU
cores shared with other runs: about 20 minutes for the element-wise cell, 50 for the LSTM.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import time
from typing import Optional

import numpy as np

from bplambda_jax import experiments, tasks
from bplambda_jax.training import GuardError

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TRACE = tasks.TraceConfig(isi_min=8, isi_max=16, iti_min=8, iti_max=24)
CELLS = ("elementwise_lstm", "lstm")
HIDDEN, BATCH, CHUNK = 16, 4, 1000
VALIDATION_SEED, VALIDATION_SEEDS = 100, 3
BUDGET = {"elementwise_lstm": 50_000, "lstm": 20_000}  # steps of each grid point's stream
LRS = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
# BP(λ): (λ, γ) points and the synthesiser's learning rates, every one with every rate of LRS
BP_LAMBDA_GAMMA = ((1.0, 0.9), (0.5, 0.9), (1.0, 1.0))
BP_LR_SYNTH = (1e-5, 1e-4, 1e-3, 1e-2)
RULES = {"elementwise_lstm": ("bp_lambda", "eprop", "columnar_rtrl", "snap:1", "tbptt:4",
                              "tbptt:40"),
         "lstm": ("bp_lambda", "eprop", "snap:1", "tbptt:4", "tbptt:40")}


def out_path(cell: str) -> str:
  return os.path.join(HERE, f"stream_tuning_{cell}.json")


def grid(rule: str) -> list:
  """The rule's grid: [(spec, lr, lr_synth)]."""
  if rule == "bp_lambda":
    return [(f"bp_lambda(lambda_={lam:g}, gamma={gam:g})", lr, ls)
            for (lam, gam), lr, ls in itertools.product(BP_LAMBDA_GAMMA, LRS, BP_LR_SYNTH)]
  return [(rule, lr, 1e-3) for lr in LRS]  # lr_synth: no synthesiser, no effect


def optimal_mse(cfg: tasks.TraceConfig = TRACE) -> float:
  """The long-run MSE of the best predictor of the next step's US that knows the steps since the
  last CS (and whether its US came), but not the trial's ISI, for ISI uniform in [a, b].

  k steps after the CS with no US yet, the next step is the US with the hazard
  h_k = P(ISI = k + 1 | ISI > k) = 1 / (b − k) for a − 1 <= k <= b − 1 (0 before), and the error
  is h_k (1 − h_k) on the fraction P(ISI > k) = (b − k) / (b − a + 1) of trials; every other step
  is predicted exactly. Per trial: Σ_{j=1}^{b−a+1} (1 − 1/j) / (b − a + 1); over the stream
  (renewal–reward) divided by the mean trial length E[L] = E[ISI] + E[ITI].
  """
  cfg = cfg.checked()
  width = cfg.isi_max - cfg.isi_min + 1
  per_trial = sum(1 - 1 / j for j in range(1, width + 1)) / width
  return per_trial / ((cfg.isi_min + cfg.isi_max + cfg.iti_min + cfg.iti_max) / 2)


def optimal_prediction(x: np.ndarray, cfg: tasks.TraceConfig = TRACE) -> np.ndarray:
  """The predictor of :func:`optimal_mse` on one stream's inputs x [T, D_in]: [T] (0 until the
  stream's first CS is seen)."""
  cfg = cfg.checked()
  out, since = np.zeros(len(x)), None
  for t, (cs, us) in enumerate(x[:, :2]):
    if cs:
      since = 0
    elif us or since is None:
      since = None
    else:
      since += 1
    if since is not None and cfg.isi_min - 1 <= since <= cfg.isi_max - 1:
      out[t] = 1 / (cfg.isi_max - since)
  return out


def tune(cell: str, done: Optional[dict] = None, verbose: bool = True) -> dict:
  """Stream every rule's grid on the validation seeds; {rule: {'grid': [...], 'pick': {...}}}.
  A point already in ``done`` (the 'rules' of an earlier tuning file of the same settings) is
  kept, not streamed again."""
  steps, results = BUDGET[cell], {}
  for rule in RULES[cell]:
    points = []
    old = {(p["spec"], p["lr"], p["lr_synth"]): p
           for p in (done or {}).get(rule, {}).get("grid", ())}
    for spec, lr, lr_synth in grid(rule):
      if (spec, lr, lr_synth) in old:
        points.append(old[(spec, lr, lr_synth)])
        continue
      t0 = time.perf_counter()
      try:
        res = experiments.run_stream(
            [spec], trace=TRACE, cell=cell, hidden_size=HIDDEN, batch_size=BATCH, steps=steps,
            chunk=CHUNK, lr=lr, lr_synth=lr_synth, seeds=VALIDATION_SEEDS, seed=VALIDATION_SEED)
        r = res["results"][spec]
        tail = float(np.mean(r["tail_mse"]))
        base = float(np.mean(r["memoryless_tail_mse"]))
        status = "ok"
      except GuardError as e:  # diverged: the point is kept, with why
        tail, base, status = None, None, f"stopped: {str(e).splitlines()[0]}"
      points.append({"spec": spec, "lr": lr, "lr_synth": lr_synth, "tail_mse": tail,
                     "memoryless_tail_mse": base, "status": status,
                     "seconds": round(time.perf_counter() - t0, 1)})
      if verbose:
        print(f"{cell} {spec} lr={lr:g} lr_synth={lr_synth:g}: {tail} ({status})", flush=True)
    ok = [p for p in points if p["tail_mse"] is not None]
    pick = min(ok, key=lambda p: p["tail_mse"]) if ok else None
    results[rule] = {"grid": points, "pick": pick}
  return results


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--cell", required=True, choices=CELLS, help="the network to tune")
  p.add_argument("--fresh", action="store_true",
                 help="stream every point again (default: keep the points of an earlier "
                 "tuning file of the same settings and stream only the new ones)")
  args = p.parse_args(argv)
  t0, load0 = time.time(), os.getloadavg()[0]
  dirty = subprocess.run(["git", "status", "--porcelain", "--", "bplambda_jax"], cwd=REPO,
                         capture_output=True, text=True).stdout.strip()
  doc = {"cell": args.cell, "trace": TRACE._asdict(), "hidden_size": HIDDEN,
         "batch_size": BATCH, "chunk": CHUNK, "steps": BUDGET[args.cell],
         "validation_seeds": list(range(VALIDATION_SEED, VALIDATION_SEED + VALIDATION_SEEDS)),
         "memoryless_mse": tasks.trace_memoryless_mse(TRACE), "optimal_mse": optimal_mse(TRACE)}
  earlier = None if args.fresh or not os.path.exists(out_path(args.cell)) else json.load(
      open(out_path(args.cell)))
  same = earlier is not None and all(earlier.get(k) == v for k, v in doc.items())
  doc["rules"] = tune(args.cell, earlier["rules"] if same else None)
  # wall time of every invocation that streamed a point of this file
  doc["wall_s"] = round(time.time() - t0 + (earlier["wall_s"] if same else 0.0), 1)
  doc["loadavg_1m"] = [load0, os.getloadavg()[0]]
  doc["code_dirty"] = bool(dirty)
  from bplambda_jax.experiments._results import provenance
  doc["provenance"] = provenance()
  with open(out_path(args.cell), "w") as f:
    json.dump(doc, f, indent=1)
  print(f"wrote {out_path(args.cell)} in {doc['wall_s']} s")


if __name__ == "__main__":
  main()
