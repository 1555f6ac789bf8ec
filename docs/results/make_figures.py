"""The figures of docs/reproduction.md, made from the JSON files in docs/results/ only.

    python docs/results/make_figures.py        # writes docs/figures/fig_*.png

Every point is a mean over the seeds of a run (5; 3 for the long horizons); error bars are ± 1 sd
(ddof = 1). A figure whose runs are all missing is not written.
"""

from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIGURES = os.path.join(os.path.dirname(HERE), "figures")
LAMBDAS = ("0.0", "0.25", "0.5", "0.75", "1.0")


def load(name):
  path = os.path.join(HERE, f"{name}.json")
  return json.load(open(path)) if os.path.exists(path) else None


def save(fig, name):
  os.makedirs(FIGURES, exist_ok=True)
  path = os.path.join(FIGURES, name)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  print("wrote", path)


def stat(rules, label, group, metric):
  s = rules.get(label, {}).get(group, {}).get(metric)
  return (np.nan, np.nan) if s is None else (s["mean"], s["sd"] or 0.0)


def _run_rows(doc, table):
  """The rows of a results table that show a run (a table not run yet has one placeholder row
  of text)."""
  return [r for r in doc["tables"].get(table, {}).get("rows", ()) if isinstance(r[-1], str)
          and r[-1].startswith("`")]


def _table_runs(doc, table):
  """{run name: run} of the runs a results table shows (its last column names the run)."""
  return {r[-1].strip("`"): doc["runs"][r[-1].strip("`")] for r in _run_rows(doc, table)}


# the curves of a λ grid are kept under the command's labels (the tables say 'λ=1.0')
LAMBDA_CURVE = "bp_lambda lambda_={:g}"


def _T(name):
  return int(name.split("_T")[1].split("_")[0])


def _seeds(doc):
  """'seeds 0–k' of a toy section's runs (their seed count; the tuning grids left out)."""
  n = {r["config"]["seeds"] for name, r in doc["runs"].items() if "_tune_" not in name}
  return f"seeds 0–{max(n) - 1}"


def _Ts(doc, suffix=""):
  """The horizons T of a toy section's runs with ``suffix`` ('': the preset's settings), tuning
  grids left out."""
  return sorted({_T(n) for n in doc["runs"] if "_tune_" not in n
                 and (n.endswith(suffix) if suffix else not n.endswith(("_faithful", "_tuned")))})


def band_and_dots(ax, x, stats, label):
  """The mean over seeds (line), its bootstrap 95 % interval (band; ± 1 sd where a statistic
  has none) and every seed's value (dots)."""
  x = np.asarray(x, float)
  m = np.array([s["mean"] for s in stats])
  lo = np.array([(s.get("ci95") or [s["mean"] - (s["sd"] or 0)] * 2)[0] for s in stats])
  hi = np.array([(s.get("ci95") or [0, s["mean"] + (s["sd"] or 0)])[1] for s in stats])
  line, = ax.plot(x, m, marker="o", label=f"{label} (n = {stats[0]['n']})")
  ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)
  for xi, s in zip(x, stats):
    ax.scatter(np.full(len(s["values"]), xi), s["values"], color=line.get_color(), s=9,
               alpha=0.6, zorder=3)


def alignment_panels(doc, rows, prefix_bp, prefix_dni, title, loss=False):
  """rows: [(row title, suffix)]; per entry a row of panels: BP(λ) against λ, DNI against n (and,
  with loss, the final loss of both)."""
  ncol = 3 if loss else 2
  fig, axes = plt.subplots(len(rows), ncol, figsize=(5 * ncol, 3.6 * len(rows)), squeeze=False)
  for i, (row_title, suffix) in enumerate(rows):
    for T in _Ts(doc, suffix):
      a = doc["runs"].get(f"{prefix_bp}_T{T}{suffix}")
      b = doc["runs"].get(f"{prefix_dni}_T{T}{suffix}")
      if a:
        lams = [l for l in LAMBDAS if f"λ={l}" in a["rules"]]  # tuned plastic: λ = 1 only
        band_and_dots(axes[i, 0], [float(l) for l in lams],
                      [a["rules"][f"λ={l}"]["eval"]["alignment"] for l in lams], f"T = {T}")
      if b:
        ns = [n for n in range(1, 6) if f"dni:{n}" in b["rules"]]  # tuned plastic: n = 5 only
        band_and_dots(axes[i, 1], ns, [b["rules"][f"dni:{n}"]["eval"]["alignment"] for n in ns],
                      f"T = {T}")
      if loss and a and b:
        c = doc["runs"].get(f"plastic_bptt_T{T}{suffix}")
        m, s = zip(*([stat(a["rules"], f"λ={l}", "eval", "loss") for l in LAMBDAS]
                     + [stat(b["rules"], f"dni:{n}", "eval", "loss") for n in range(1, 6)]
                     + [stat(c["rules"] if c else {}, "bptt", "eval", "loss")]))
        axes[i, 2].errorbar(range(11), m, s, marker="o", capsize=3, label=f"T = {T}")
    axes[i, 0].set_xlabel("λ")
    axes[i, 1].set_xlabel("DNI truncation n")
    axes[i, 0].set_ylabel("final alignment\ncos(learning signal, dL/dh_t), t < T−1")
    axes[i, 0].set_title(f"BP(λ), {row_title}", fontsize=9)
    axes[i, 1].set_title(f"BPTT + SG (DNI), {row_title}", fontsize=9)
    for ax in axes[i, :2]:
      ax.axhline(0, color="grey", lw=0.5)
      ax.set_ylim(-0.25, 1.05)
      ax.legend(fontsize=8)
    if loss:
      axes[i, 2].set_xticks(range(11), [f"λ={float(l):g}" for l in LAMBDAS]
                            + [f"n={n}" for n in range(1, 6)] + ["BPTT"], rotation=60,
                            fontsize=8)
      axes[i, 2].set_ylabel("final evaluation loss (MSE)")
      axes[i, 2].set_yscale("log")
      axes[i, 2].set_title("final loss: BP(λ), DNI, full BPTT", fontsize=9)
      axes[i, 2].legend(fontsize=8)
  fig.suptitle(title + (" (line: mean over seeds; band: bootstrap 95 % interval of the mean, "
                        "± 1 sd where none; dots: seeds" + ("; loss: mean ± sd" if loss else "")
                        + ")"), fontsize=9)
  return fig


def curve_panel(ax, run, rule, metric, kind="eval", scale=1.0, **kw):
  if rule not in run["curves"]:  # a label that names no curve is a mistake, not a gap
    raise KeyError(f"no curves of {rule!r} in {run['out']} (it has {sorted(run['curves'])})")
  c = run["curves"][rule].get(kind)
  if not c or metric not in c:
    return
  v = scale * np.array(c[metric], float)
  m, s = v.mean(1), v.std(1, ddof=1) if v.shape[1] > 1 else 0 * v.mean(1)
  line, = ax.plot(c["step"], m, **kw)
  ax.fill_between(c["step"], m - s, m + s, color=line.get_color(), alpha=0.15)


def toy():
  doc = load("toy")
  if doc and doc["runs"]:
    rows = [("ours: Adam 1e-3, 10,000 updates", "")]
    if _Ts(doc, "_tuned"):
      rows.append(("each family's tuned ĝ rate, 10,000 updates", "_tuned"))
    if _Ts(doc, "_faithful"):
      rows.append(("--faithful: Adam 1e-4, 1,000 updates", "_faithful"))
    save(alignment_panels(doc, rows, "toy", "dni", "Fixed linear RNN"), "fig_toy_alignment.png")
    # alignment during training: λ = 1 and DNI n = 5, every horizon (ours)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for T in _Ts(doc):
      for ax, name, label in ((axes[0], f"toy_T{T}", LAMBDA_CURVE.format(1)),
                              (axes[1], f"dni_T{T}", "dni:5")):
        if name in doc["runs"]:
          curve_panel(ax, doc["runs"][name], label, "alignment", label=f"T = {T}", marker=".")
    axes[0].set_title("BP(λ = 1)", fontsize=9)
    axes[1].set_title("BPTT + SG (DNI), n = 5", fontsize=9)
    axes[0].set_ylabel(f"alignment (mean ± sd, {_seeds(doc)})")
    for ax in axes:
      ax.set_xscale("symlog", linthresh=100)
      ax.set_xlim(left=0)
      ax.set_xlabel("update")
      ax.axhline(0, color="grey", lw=0.5)
      ax.legend(fontsize=8)
    fig.suptitle("Fixed linear RNN: alignment during training (ours: Adam 1e-3)", fontsize=11)
    save(fig, "fig_toy_curves.png")
  doc = load("plastic")
  if doc and doc["runs"]:
    rows = [("the preset's rates, 10,000 updates", "")]
    if _Ts(doc, "_tuned"):
      rows.append(("each family's tuned rates, 10,000 updates", "_tuned"))
    save(alignment_panels(doc, rows, "plastic", "plastic_dni", "Plastic linear RNN", loss=True),
         "fig_plastic_alignment.png")
    _plastic_curves(doc, "", "fig_plastic_curves.png")
    if _Ts(doc, "_tuned"):
      _plastic_curves(doc, "_tuned", "fig_plastic_tuned_curves.png")


def _plastic_curves(doc, suffix, file):
  """Alignment and loss during training: λ = 0, λ = 1, DNI n = 5 and BPTT, per horizon."""
  Ts = _Ts(doc, suffix)
  fig, axes = plt.subplots(2, len(Ts), figsize=(4.2 * len(Ts), 6.4), squeeze=False,
                           sharex=True)
  for j, T in enumerate(Ts):
    for name, rule, label, text in (
        (f"plastic_T{T}{suffix}", LAMBDA_CURVE.format(0), "λ=0.0", "BP(λ = 0)"),
        (f"plastic_T{T}{suffix}", LAMBDA_CURVE.format(1), "λ=1.0", "BP(λ = 1)"),
        (f"plastic_dni_T{T}{suffix}", "dni:5", "dni:5", "DNI n = 5"),
        (f"plastic_bptt_T{T}{suffix}", "bptt", "bptt", "full BPTT")):
      # the tuned runs train one λ and one n: a rule the run did not train is left out
      if name in doc["runs"] and label in doc["runs"][name]["rules"]:
        for i, metric in enumerate(("alignment", "loss")):
          if rule == "bptt" and metric == "alignment":
            continue  # 1 by definition
          curve_panel(axes[i, j], doc["runs"][name], rule, metric, label=text, marker=".")
    axes[0, j].set_title(f"T = {T}", fontsize=9)
    axes[0, j].axhline(0, color="grey", lw=0.5)
    axes[1, j].set_yscale("log")
    axes[1, j].set_xlabel("update")
    for i in range(2):
      axes[i, j].set_xscale("symlog", linthresh=1000)
      axes[i, j].set_xlim(left=0)
      axes[i, j].legend(fontsize=7)
  axes[0, 0].set_ylabel(f"alignment (mean ± sd, {_seeds(doc)})")
  axes[1, 0].set_ylabel("evaluation loss (MSE)")
  fig.suptitle("Plastic linear RNN: alignment and loss during training"
               + (", tuned rates" if suffix else ""), fontsize=11)
  save(fig, file)


def seqmnist():
  doc = load("seqmnist")
  if not doc or not doc["runs"]:
    return
  for table, tag in (("results", ""), ("results_full", "_full")):
    rows = _run_rows(doc, table)
    if rows:
      _seqmnist_figures(doc["runs"], rows, tag)


def _seqmnist_figures(all_runs, rows, tag):
  names, means, sds, runs = [], [], [], {}
  for row in rows:
    ref = row[2]["ref"].split("/")
    runs[ref[1]] = all_runs[ref[1]]
    s = all_runs[ref[1]]["rules"][ref[3]]["test"]["accuracy"]
    names.append(row[0])
    means.append(100 * s["mean"])
    sds.append(100 * s["sd"])
  data = next(iter(runs.values()))
  seeds = f"seeds 0–{data['config']['seeds'] - 1}"
  src = data.get("data") or {}
  train = src.get("num_train")
  fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.4))
  y = np.arange(len(names))[::-1]
  colours = ["C0" if "BP(λ" in n else "C2" if "e-prop" in n else "C1" if "SG" in n
             else "C3" if "truncated" in n else "C4" for n in names]
  ax.barh(y, means, xerr=sds, color=colours, capsize=3)
  ax.set_yticks(y, names, fontsize=8)
  ax.set_xlim(max(0, min(means) - 10), min(100, max(means) + 5))
  ax.set_xlabel(f"test accuracy % (best validation loss), mean ± sd over {seeds}")
  ax.set_title(f"Row-wise sequential MNIST, LSTM 30: {train or '?':,} training "
               f"digits, {data['config']['steps']:,} updates", fontsize=10)
  save(fig, f"fig_seqmnist{tag}_accuracy.png")
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  for run in runs.values():
    for label in run["curves"]:
      name = label if label != "bp_lambda" else f"bp_lambda λ={run['config']['lambda_']:g}"
      bold = "bp_lambda" in name or name in ("bptt", "eprop")
      curve_panel(ax, run, label, "accuracy", scale=100, label=name, lw=2 if bold else 1,
                  ls="-" if bold else "--")
  epoch = (f"{train // data['config']['batch_size']:,} updates = 1 epoch of the {train:,} "
           "training digits" if train else "updates")
  ax.set_xlabel(f"update ({epoch})")
  ax.set_ylabel(f"validation accuracy % (mean ± sd, {seeds})")
  ax.legend(fontsize=7, ncol=3)
  ax.set_title("Row-wise sequential MNIST: validation accuracy during training", fontsize=10)
  save(fig, f"fig_seqmnist{tag}_curves.png")


def _level_name(i):
  if i == 0:
    return "none"
  n = (i + 2) // 2
  r = i + 1 - n
  return f"({n},{r})"


def copy_repeat():
  doc = load("copy_repeat")
  if not doc or not doc["runs"]:
    return
  for table, tag in (("results", ""), ("results_paper", "_paper"), ("results_tuned", "_tuned")):
    rows = _run_rows(doc, table)
    if rows:
      _copy_levels(doc, rows, tag)


def _copy_levels(doc, rows, tag):
  fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 0.35 * len(rows) + 2.5),
                                gridspec_kw={"width_ratios": [1, 1.3]})
  y = np.arange(len(rows))[::-1]
  names = []
  top = 1
  for yi, row in zip(y, rows):
    ref = row[2]["ref"].split("/")
    run, label = ref[1], ref[3]
    lv = doc["runs"][run]["rules"][label]["solved_level"]
    top = max(top, max(lv["values"]))
    ax.scatter(lv["values"], [yi] * len(lv["values"]), color="grey", s=12, zorder=2)
    ax.errorbar(lv["mean"], yi, xerr=lv["sd"], marker="D", color="C0", capsize=3, zorder=3)
    names.append(f"{label} [{run}]")
    curve_panel(ax2, doc["runs"][run], label, "level", kind="train", label=names[-1],
                lw=2 if label in ("bptt", "bp_lambda", "eprop") else 1)
  cfg = doc["runs"][run]["config"]
  ticks = range(0, int(top) + 2)
  ax.set_yticks(y, names, fontsize=7)
  ax.set_xticks(ticks, [_level_name(i) for i in ticks], rotation=90, fontsize=7)
  ax.set_xlabel("largest (N, R) solved (dots: seeds; diamond: mean ± sd of the index)")
  ax2.set_yticks(ticks, [_level_name(i) for i in ticks], fontsize=7)
  ax2.set_xlabel("update")
  ax2.set_ylabel("largest (N, R) solved\n"
                 f"(mean ± sd of the index, seeds 0–{cfg['seeds'] - 1})")
  ax2.legend(fontsize=6, ncol=2)
  fig.suptitle(f"Copy-repeat curriculum, LSTM {cfg['hidden_size']}, batch {cfg['batch_size']}, "
               f"{cfg['steps']:,} updates" + (", every rule at its tuned setting"
                                              if tag == "_tuned" else ""), fontsize=11)
  save(fig, f"fig_copy{tag}_levels.png")


def cost():
  doc = load("cost")
  if not doc:
    return
  points = [p for p in doc["points"] if p["kind"] == "seqmnist"]
  if not points:
    return
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
  for p in points:
    b = doc["benchmark"]["rows"][p["case"]]
    acc = p["value"]
    for ax, x in ((axes[0], b["median_ms"]), (axes[1], b["peak_mib"])):
      ax.errorbar(x, 100 * acc["mean"], yerr=100 * acc["sd"], marker="o", capsize=3)
      ax.annotate(p["label"], (x, 100 * acc["mean"]), fontsize=8, xytext=(4, 4),
                  textcoords="offset points")
  axes[0].set_xlabel("ms per update (benchmark: LSTM 30, batch 50, T = 28, one seed)")
  axes[1].set_xlabel("peak memory of the compiled update, MiB (same benchmark)")
  axes[0].set_ylabel("seqMNIST test accuracy %\n(this report, seeds 0–4)")
  for ax in axes:
    ax.set_xscale("log")
  fig.suptitle("Cost against accuracy, row-wise sequential MNIST", fontsize=10)
  save(fig, "fig_cost_accuracy.png")


def long_horizons():
  cost_doc, doc = load("cost"), load("long")
  # the runs at the library's default rates (the tuning and the tuned runs: fig_long_tuned.png)
  runs = _table_runs(doc, "results") if doc else {}
  ncol = max(3, len(runs))
  fig, grid = plt.subplots(2 if runs else 1, ncol, figsize=(4.8 * ncol, 7.6 if runs else 3.8),
                           squeeze=False)
  axes = list(grid[0][:2]) + (list(grid[1][:len(runs)]) if runs else [])
  for ax in list(grid[0][2:]) + (list(grid[1][len(runs):]) if runs else []):
    ax.axis("off")
  rows = cost_doc["benchmark"]["rows"] if cost_doc else {}
  for r in ("bptt", "eprop", "bplambda_sequence", "bplambda_online", "columnar_rtrl", "rtrl"):
    pts = [(T, rows[n]["median_ms"], rows[n]["peak_mib"]) for T in (28, 100, 300, 1000)
           for n in [f"scale_h32_t{T}_{r}"] if n in rows and rows[n]["status"] == "ok"]
    if not pts:
      continue
    T, ms, mib = zip(*sorted(pts))
    name = r + (", columnar LSTM 32" if r.startswith("columnar") else ", LSTM 32") + ", batch 16"
    axes[0].plot(T, ms, marker="o", label=name)
    axes[1].plot(T, mib, marker="o", label=name)
  for r, colour in (("bptt", "C0"), ("eprop", "C1"), ("bplambda_online", "C3")):
    k = rows.get(f"elementwise_lstm_n64_t1000_{r}")
    if k and k["status"] == "ok":
      axes[0].scatter([1000], [k["median_ms"]], marker="x", s=60, color=colour,
                      label=f"{r}, element-wise LSTM 64, batch 8")
      axes[1].scatter([1000], [k["peak_mib"]], marker="x", s=60, color=colour,
                      label=f"{r}, element-wise LSTM 64, batch 8")
  for ax, what in ((axes[0], "ms per update"), (axes[1], "peak MiB")):
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("T")
    ax.set_ylabel(what)
    ax.set_title(f"benchmark: {what}", fontsize=9)
  handles, labels = axes[0].get_legend_handles_labels()
  grid[0][2].legend(handles, labels, fontsize=8, loc="center left")
  for ax, (name, run) in zip(axes[2:], sorted(runs.items(), key=lambda kv: _T(kv[0]))):
    for label in run["curves"]:
      curve_panel(ax, run, label, "bits", label=label, marker=".",
                  ls="--" if label == "columnar_rtrl" else "-")
    ax.axhline(8 / 9, color="grey", lw=0.8, ls=":", label="8/9 bit (no memory)")
    ax.set_xlabel("update")
    ax.set_ylabel("evaluation bits per target step")
    ax.set_title(f"copy, element-wise LSTM 64, T = {_T(name)} (seeds 0–2)", fontsize=9)
    ax.legend(fontsize=7)
  fig.suptitle("Long horizons", fontsize=11)
  save(fig, "fig_long_horizons.png")


LONG_COLOURS = {"bp_lambda": "C0", "eprop": "C1", "columnar_rtrl": "C2", "tbptt:10": "C3"}


def long_tuned():
  """Section 6 tuned: every grid point's validation bits per rule (the pick circled), and the
  tuned runs' evaluation bits during training at each horizon, against the two references."""
  doc = load("long")
  picks = (doc or {}).get("derived", {}).get("picks", {})
  if not picks:
    return
  Ts = sorted(int(T) for T in doc["derived"]["memoryless_bits"])
  fig, axes = plt.subplots(1, 1 + len(Ts), figsize=(4.4 * (1 + len(Ts)), 3.8))
  for i, (rule, pick) in enumerate(picks.items()):
    pts = [p["mean"] for name, run in doc["runs"].items() if "grid" in run
           for p in run["grid"]["points"] if p["rule"] == rule]
    x = i + np.linspace(-0.25, 0.25, len(pts))
    axes[0].scatter(x, pts, s=12, color=LONG_COLOURS.get(rule), alpha=0.7)
    axes[0].scatter([i], [pick["mean"]], s=90, facecolors="none", edgecolors="k")
  axes[0].set_xticks(range(len(picks)), list(picks), fontsize=8)
  axes[0].set_ylabel("validation bits per target step")
  axes[0].set_title("tuning at T = 103: every grid point\n(500 updates, seeds 100–101; "
                    "○ the pick)", fontsize=9)
  tuned = _table_runs(doc, "results_tuned")
  for ax, T in zip(axes[1:], Ts):
    for name, run in tuned.items():
      if _T(name) == T:
        (rule,) = run["rules"]
        curve_panel(ax, run, rule, "bits", label=rule, marker=".",
                    color=LONG_COLOURS.get(rule), ls="--" if rule == "columnar_rtrl" else "-")
    ax.set_title(f"tuned, T = {T} (seeds 0–2)", fontsize=9)
    ax.set_xlabel("update")
    ax.set_ylabel("evaluation bits per target step")
  for ax, T in zip(axes, [103] + Ts):
    ax.axhline(doc["derived"]["memoryless_bits"][str(T)], color="grey", lw=0.8, ls=":",
               label="no memory")
    ax.axhline(doc["derived"]["unordered_bits"][str(T)], color="grey", lw=0.8, ls="-.",
               label="bit counts, no order")
  axes[1].legend(fontsize=7)
  fig.suptitle("Long horizons, tuned (element-wise LSTM 64, copy N = 4)", fontsize=11)
  save(fig, "fig_long_tuned.png")


# one colour per rule in both panels (e-prop and columnar RTRL coincide on the element-wise LSTM)
STREAM_COLOURS = {"bp_lambda": "C0", "eprop": "C1", "columnar_rtrl": "C2", "snap:1": "C3",
                  "tbptt:4": "C4", "tbptt:40": "C5"}


def stream():
  doc = load("stream")
  if not doc or not doc.get("runs"):
    return
  cells = [c for c in ("elementwise_lstm", "lstm") if c in doc.get("tuning", {})]
  fig, axes = plt.subplots(1, len(cells), figsize=(6.4 * len(cells), 4.2), squeeze=False)
  for ax, cell in zip(axes[0], cells):
    tuning = doc["tuning"][cell]
    for run, rec in doc["runs"].items():
      if not run.startswith(f"stream_{cell}_") or rec.get("stopped"):
        continue  # a run a guard stopped has no curve (its table row says why)
      for rule, c in rec["curves"].items():
        mse = np.asarray(c["mse"])  # [windows, seeds]
        label = rule + (f", lr {rec['settings']['lr']:g}" if "_lr" in run else "")
        line, = ax.plot(c["step"], mse.mean(axis=1), label=f"{label} (n = {mse.shape[1]})",
                        ls="--" if rule.startswith("tbptt") else "-", lw=1.2,
                        color=STREAM_COLOURS.get(rule))
        ax.fill_between(c["step"], mse.min(axis=1), mse.max(axis=1), color=line.get_color(),
                        alpha=0.08)
    ax.axhline(tuning["memoryless_mse"], color="grey", lw=0.8, ls=":",
               label="best memoryless predictor")
    ax.axhline(tuning["optimal_mse"], color="k", lw=0.8, ls="-.",
               label="best predictor with memory")
    ax.set_xscale("log")
    ax.set_ylim(0.9 * tuning["optimal_mse"], 1.5 * tuning["memoryless_mse"])
    ax.set_xlabel("step of the stream")
    ax.set_ylabel("MSE over a window of the stream")
    ax.set_title(f"trace conditioning, {tuning['name']} {tuning['hidden_size']} (mean; band: "
                 "min–max over seeds)", fontsize=9)
    ax.legend(fontsize=7)
  fig.suptitle("Streaming: weights updated at every step", fontsize=11)
  save(fig, "fig_stream.png")


if __name__ == "__main__":
  toy()
  seqmnist()
  copy_repeat()
  cost()
  long_horizons()
  long_tuned()
  stream()
