"""The run's figures: one PNG per metric, one line per rule, a band over seeds (mean ± sd)."""

from __future__ import annotations

import math
import os
from collections import defaultdict

import numpy as np

FILE_MODE = 0o644

# metric -> (kind of log line, y label, file name, (lowest, highest) value it can take)
FIGURES = {
    "loss": ("train", "training loss (nats per target step)", "loss.png", (0, None)),
    "bits": ("train", "training loss (bits per target step)", "bits.png", (0, None)),
    "level": ("train", "curriculum level (N, R) reached (index)", "level.png", (0, None)),
    "alignment": ("eval", "cos(learning signal, BPTT dL/ds_t), t < T−1", "alignment.png",
                  (-1, 1)),
    "accuracy": ("eval", "evaluation accuracy (validation split or fresh batches)",
                 "accuracy.png", (0, 1)),
    "eval_loss": ("eval", "evaluation loss (nats per target step)", "eval_loss.png", (0, None)),
}


def _curves(lines, metric, kind):
  """{rule: (steps [K], values [S, K])} from the metrics log."""
  key = {"bits": "loss", "level": "solved_level", "eval_loss": "loss"}.get(metric, metric)
  by_rule = defaultdict(lambda: defaultdict(dict))
  for row in lines:
    if row.get("kind") != kind:
      continue
    if metric == "level" and "n" in row:
      row = {**row, "solved_level": _level_index(row["solved_n"], row["solved_r"])}
    if key in row:
      by_rule[row["rule"]][row["seed"]][row["step"]] = row[key]
  out = {}
  for rule, seeds in by_rule.items():
    steps = sorted(set().union(*[set(s) for s in seeds.values()]))
    values = np.asarray([[s.get(t, np.nan) for t in steps] for s in seeds.values()], float)
    if metric == "bits":
      values = values / math.log(2)
    out[rule] = (np.asarray(steps), values)
  return out


def _level_index(n, r):
  """The position of level (N, R) in the curriculum (1,1)→(2,1)→(2,2)→(3,2)→…; 0 = none."""
  n, r = int(n), int(r)
  return 0 if n == 0 else n + r - 1  # the curriculum only visits r = n − 1 and r = n


def plot(out: str, lines, metrics, title: str, notes=None) -> list[str]:
  """Write the figures of ``metrics`` (keys of :data:`FIGURES`) that have data; their paths.

  The band (± 1 sd over seeds) is clipped to the values the metric can take; ``notes`` maps a
  metric to a line printed under its title (what the curve means in this run).
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  written = []
  for metric in metrics:
    kind, ylabel, name, (lo, hi) = FIGURES[metric]
    curves = _curves(lines, metric, kind)
    if not curves:
      continue
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    seeds = 0
    for rule, (steps, values) in curves.items():
      mean = np.nanmean(values, axis=0) if np.isfinite(values).any() else values[0]
      line, = ax.plot(steps, mean, label=rule, marker="o" if len(steps) < 3 else None)
      if values.shape[0] > 1:
        sd = np.nanstd(values, axis=0, ddof=1)
        ax.fill_between(steps, np.clip(mean - sd, lo, hi), np.clip(mean + sd, lo, hi), alpha=0.2,
                        color=line.get_color())
      seeds = max(seeds, values.shape[0])
    ax.set_xlabel("update")
    ax.set_ylabel(ylabel)
    if metric in ("loss", "bits", "eval_loss") and all(
        np.nanmin(v[1]) > 0 for v in curves.values() if np.isfinite(v[1]).any()):
      ax.set_yscale("log")
    band = f"line: mean over {seeds} seeds; band: ± 1 sd" if seeds > 1 else "one seed"
    note = (notes or {}).get(metric)
    ax.set_title(f"{title}\n{band}" + (f"\n{note}" if note else ""), fontsize=10)
    ax.legend(fontsize=8)
    written.append(_save(fig, out, name))
  return written


def _save(fig, out: str, name: str) -> str:
  """Write ``fig`` to ``out/name`` (readable by group and others), close it; the path."""
  import matplotlib.pyplot as plt

  fig.tight_layout()
  path = os.path.join(out, name)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  os.chmod(path, FILE_MODE)
  return path


def _axis_positions(values):
  """(x positions, tick labels, numeric?) of a grid axis's values."""
  numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
  if numeric:
    return np.asarray(values, float), None, True
  return np.arange(len(values), dtype=float), [str(v) for v in values], False


def plot_grid(out: str, grid: dict, title: str) -> list[str]:
  """The figures of a grid (``summary['grid']``, :mod:`bplambda_jax.experiments._grid`); paths.

  Per axis, ``grid_<axis>.png``: the selection score against the axis's values, one line per
  rule and setting of the other axes, a band of ± 1 sd over seeds. With two axes, per rule, also
  ``grid_<a>_<b>[_<i>].png``: a heatmap of the mean score.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  axes, rows = grid["axes"], grid["points"]
  score = rows[0]["score"]
  specs = list(dict.fromkeys(r["rule"] for r in rows))
  written = []

  def save(fig, name):
    written.append(_save(fig, out, name))

  for axis, values in axes.items():
    x, ticks, numeric = _axis_positions(values)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lines = defaultdict(dict)  # (rule, other axes) -> {value index: per-seed values}
    for r in rows:
      others = tuple((k, v) for k, v in r["point"].items() if k != axis)
      lines[(r["rule"], others)][values.index(r["point"][axis])] = np.asarray(r["values"], float)
    seeds = 0
    for (spec, others), by_value in lines.items():
      idx = sorted(by_value)
      v = [by_value[i] for i in idx]
      mean = np.asarray([np.mean(s) for s in v])
      name = " ".join(([spec] if len(specs) > 1 else []) + [f"{k}={o}" for k, o in others])
      line, = ax.plot(x[idx], mean, marker="o", label=name or None)
      if all(s.size > 1 for s in v):
        sd = np.asarray([np.std(s, ddof=1) for s in v])
        ax.fill_between(x[idx], mean - sd, mean + sd, alpha=0.2, color=line.get_color())
      seeds = max(seeds, *(s.size for s in v))
    if ticks is not None:
      ax.set_xticks(x, ticks)
    elif numeric and min(values) > 0 and max(values) / min(values) >= 100:
      ax.set_xscale("log")
    ax.set_xlabel(axis)
    ax.set_ylabel(score)
    band = f"line: mean over {seeds} seeds; band: ± 1 sd" if seeds > 1 else "one seed"
    ax.set_title(f"{title}\n{band}", fontsize=10)
    if any(h.get_label() and not h.get_label().startswith("_") for h in ax.get_lines()):
      ax.legend(fontsize=8)
    save(fig, f"grid_{axis}.png")
  if len(axes) == 2:
    (a, va), (b, vb) = axes.items()
    for i, spec in enumerate(specs):
      mean = np.full((len(va), len(vb)), np.nan)
      for r in rows:
        if r["rule"] == spec:
          mean[va.index(r["point"][a]), vb.index(r["point"][b])] = np.mean(r["values"])
      fig, ax = plt.subplots(figsize=(6.4, 4.8))
      im = ax.imshow(mean, origin="lower", aspect="auto", cmap="viridis")
      ax.set_xticks(range(len(vb)), [str(v) for v in vb])
      ax.set_yticks(range(len(va)), [str(v) for v in va])
      ax.set_xlabel(b)
      ax.set_ylabel(a)
      mid = np.nanmean(mean) if np.isfinite(mean).any() else 0.0
      for (j, k), m in np.ndenumerate(mean):  # dark text on the bright cells
        ax.text(k, j, f"{m:.3g}", ha="center", va="center", fontsize=8,
                color="k" if m > mid else "w")
      fig.colorbar(im, ax=ax, label=f"{score} (mean over seeds)")
      ax.set_title(f"{title}: {spec}", fontsize=10)
      save(fig, f"grid_{a}_{b}" + (f"_{i}" if len(specs) > 1 else "") + ".png")
  return written
