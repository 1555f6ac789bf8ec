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
    fig.tight_layout()
    path = os.path.join(out, name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    os.chmod(path, FILE_MODE)
    written.append(path)
  return written
