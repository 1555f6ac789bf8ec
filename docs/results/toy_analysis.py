"""Why BP(λ)'s alignment on the fixed toy RNN collapses at T = 30 and 60: the measurements.

    python docs/results/toy_analysis.py    # -> docs/results/toy_analysis.json,
                                           #    docs/figures/fig_toy_analysis.png

The networks are those of seeds 0–9 of the report's toy runs (the runner's network key of seed
i). Four measurements, each written to ``toy_analysis.json``:

1. **State convergence** (float64): the relative distance ‖h_t − h*‖ / ‖h*‖ of the state to the
   fixed point h* = (I − W_hh)⁻¹ b of the input-free recurrence, t = 0 … 59; the spectral radius
   of W_hh; and, in float32 (the runs' dtype), the first step from which h_t no longer changes.
2. **Rotating gradients** (float64): at T = 30 and 60, the cosine between consecutive true
   gradients dL/dh_t and dL/dh_{t+1}, and the smallest Lipschitz constant any synthesiser would
   need on the late steps, max ‖g_t − g_u‖ / ‖h_t − h_u‖ over pairs t < u < T−1 with t ≥ 20
   (for a linear ĝ(h) = W h + β it bounds ‖W‖₂ from below).
3. **The least-squares synthesiser** (float64): at λ = γ = 1, BP(λ)'s summed synthesiser update
   is the gradient of Σ_t ‖ĝ(s_t) − G_t‖²/2 with G_t the true future gradient (dL/ds_t for
   t < T−1, 0 at T−1); the script checks that the synthesiser gradient of ``bp_lambda(...).grads``
   vanishes at the least-squares optimum. For ridge strengths α (penalty α(‖W‖² + ‖β‖²), solved
   by SVD) it records the optimum's alignment (``experiments.alignment``), ‖W‖_F and that
   gradient's norm.
4. **Trained BP(λ)** (float32, the report's budget: Adam 1e-3 on ĝ, 10,000 updates, batch 10,
   γ = 1, sequence mode; the runs' own training, repeated here so the final ĝ is at hand): per
   seed and λ, the final alignment, the cosine of the summed learning signal Σ_{t<T−1} ℓ_t with
   the summed true gradient Σ_{t<T−1} dL/dh_t (per example), the RNN weight-gradient cosine
   (``alignment(...)['cell']``) and ‖W‖_F of ĝ.

Run time on 2 CPU cores: about 10 minutes, almost all of it in part 4 (``--steps`` shortens it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np

import bplambda_jax as bl
from bplambda_jax import experiments, oracles, tasks, training
from bplambda_jax.internals import loss_and_states

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FIGURES = os.path.join(os.path.dirname(HERE), "figures")
OUT = os.path.join(HERE, "toy_analysis.json")
SEEDS = tuple(range(10))
LAMBDAS = (0.0, 0.25, 0.5, 0.75, 1.0)
HORIZONS = (10, 30, 60)
ALPHAS = tuple(10.0 ** k for k in range(-16, 3, 2))
LATE = 20  # the first step of the 'late' window of measurement 2


def network(model, rule, seed, dtype):
  """The parameters of seed ``seed`` as the runner makes them (network from the seed alone)."""
  k_model, k_rule, _ = jax.random.split(jax.random.key(seed), 3)
  params = {**rule.init(k_rule), **model.init(k_model)}
  return jax.tree.map(lambda a: jnp.asarray(a, dtype), params)


def with_synth(params, w, b):
  return {**params, "synth": {"train": {"w": jnp.asarray(w), "b": jnp.asarray(b)}, "frozen": {}}}


def states_and_gradients(model, params, T, dtype):
  batch = tasks.toy_batch(1, T, dtype)
  _, states = loss_and_states(model, params, batch)
  _, _, g = oracles.exact_gradients(model, params, batch)
  return batch, np.asarray(states[:, 0], np.float64), np.asarray(g[:, 0], np.float64)


def convergence(model, rule, seed):
  p = network(model, rule, seed, jnp.float64)
  W, b = np.asarray(p["cell"]["w_hh"]), np.asarray(p["cell"]["b"])
  h_star = np.linalg.solve(np.eye(len(b)) - W, b)
  _, h, _ = states_and_gradients(model, p, 60, jnp.float64)
  dist = np.linalg.norm(h - h_star, axis=1) / np.linalg.norm(h_star)
  _, h32, _ = states_and_gradients(model, network(model, rule, seed, jnp.float32), 60,
                                   jnp.float32)
  same = [t for t in range(59) if np.array_equal(h32[t:], np.broadcast_to(h32[t], h32[t:].shape))]
  return {"spectral_radius": float(np.max(np.abs(np.linalg.eigvals(W)))),
          "rel_distance": dist.tolist(),
          "first_t_below_1e-3": int(np.argmax(dist < 1e-3)),
          "first_t_below_1e-6": int(np.argmax(dist < 1e-6)),
          "float32_constant_from_t": same[0] if same else None}


def rotation(model, rule, seed, T):
  p = network(model, rule, seed, jnp.float64)
  _, h, g = states_and_gradients(model, p, T, jnp.float64)
  cos_next = [float(g[t] @ g[t + 1] / (np.linalg.norm(g[t]) * np.linalg.norm(g[t + 1])))
              for t in range(T - 1)]
  late = range(LATE, T - 1)
  lip = max(np.linalg.norm(g[t] - g[u]) / max(np.linalg.norm(h[t] - h[u]), 1e-300)
            for t in late for u in late if u > t)
  return {"cos_next": cos_next, "grad_norm": np.linalg.norm(g, axis=1).tolist(),
          "late_min_cos_next": float(min(cos_next[LATE:T - 2])),
          "late_lipschitz": float(lip)}


_COMPILED = {}


def _compiled(model, rule, T):
  """(jitted rule.grads, jitted alignment) on the toy batch of length T, compiled once per T."""
  if T not in _COMPILED:
    batch = tasks.toy_batch(1, T, jnp.float64)
    _COMPILED[T] = (jax.jit(lambda q: rule.grads(q, batch)),
                    jax.jit(lambda q: experiments.alignment(rule, q, batch, model=model)))
  return _COMPILED[T]


def least_squares(model, rule, seed, T):
  """Alignment, ‖W‖_F and the BP(λ = 1) synthesiser-gradient norm of the ridge optimum per α."""
  p = network(model, rule, seed, jnp.float64)
  batch, h, g = states_and_gradients(model, p, T, jnp.float64)
  target = g.copy()
  target[-1] = 0.0  # no future after the last step
  Z = np.concatenate([h, np.ones((T, 1))], axis=1)  # [T, n + 1]
  U, s, Vt = np.linalg.svd(Z, full_matrices=False)
  out = {"alpha": list(ALPHAS), "alignment": [], "w_norm": [], "synth_grad_norm": [],
         "singular_values": s.tolist()}
  grads, align = _compiled(model, rule, T)
  for a in ALPHAS:
    A = Vt.T @ np.diag(s / (s ** 2 + a)) @ U.T @ target  # [n + 1, n]
    q = with_synth(p, A[:-1].T, A[-1])
    res = align(q)
    est, _ = grads(q)
    # the ridge term's gradient, added back: zero at the ridge optimum of the BP(λ = 1) objective
    gw = np.asarray(est["synth"]["train"]["w"]) + a * A[:-1].T
    gb = np.asarray(est["synth"]["train"]["b"]) + a * A[-1]
    out["alignment"].append(float(res["learning_signal"]))
    out["w_norm"].append(float(np.linalg.norm(A[:-1])))
    out["synth_grad_norm"].append(float(np.sqrt(np.sum(gw ** 2) + np.sum(gb ** 2))))
  return out


def trained(model, T, steps):
  """Per seed and λ (float32, the report's budget): final alignment, summed-signal cosine, RNN
  weight-gradient cosine, ‖W‖_F of ĝ. Arrays [S, L]."""
  rule = bl.bp_lambda(model, flavour="state", gamma=1.0, mode="sequence")
  opt = training.optimiser(0.0, 0.0, 1e-3)
  batch = tasks.toy_batch(10, T, jnp.float32)

  def one(seed_key, lam):
    k_model, k_rule, _ = jax.random.split(seed_key, 3)
    params = {**rule.init(k_rule), **model.init(k_model)}
    st = training.TrainState(params, opt.init(params), jnp.zeros((), jnp.int32))
    hp = {"lambda_": lam}
    st, _ = training.run(rule, opt, lambda k, s: batch, seed_key, steps, state=st, hparams=hp,
                         checked=False)
    res = experiments.alignment(rule, st.params, batch, hp, model=model)
    _, aux = rule.grads(st.params, batch, hp)
    _, _, dl = oracles.exact_gradients(model, st.params, batch)
    summed = experiments.cosine(jnp.sum(aux["learning_signal"][:-1], 0),
                                jnp.sum(dl[:-1], 0), axis=-1)  # [B]
    return {"alignment": res["learning_signal"], "summed_signal_cos": jnp.mean(summed),
            "cell_cos": res["cell"],
            "synth_w_norm": jnp.linalg.norm(st.params["synth"]["train"]["w"])}

  keys = jnp.stack([jax.random.key(s) for s in SEEDS])
  f = jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None)))
  out = f(keys, jnp.asarray(LAMBDAS, jnp.float32))
  return {k: np.asarray(v, np.float64).tolist() for k, v in out.items()}


def summary(doc):
  """The numbers the report quotes, from the measurements above (each a min/max or mean over the
  seeds; the report renders them from ``toy_analysis.json#summary``)."""
  conv, rot, ls, tr = doc["convergence"], doc["rotation"], doc["least_squares"], doc["trained"]
  span = lambda v: {"min": float(np.min(v)), "max": float(np.max(v))}  # noqa: E731
  out = {"spectral_radius": span([c["spectral_radius"] for c in conv]),
         "t_below_1e-3": span([c["first_t_below_1e-3"] for c in conv]),
         "t_below_1e-6": span([c["first_t_below_1e-6"] for c in conv])}
  for T in rot:
    out[f"late_min_cos_next_T{T}"] = span([r["late_min_cos_next"] for r in rot[T]])
    out[f"late_lipschitz_T{T}"] = span([r["late_lipschitz"] for r in rot[T]])
  i_small, i_reg = ALPHAS.index(1e-16), ALPHAS.index(1e-6)
  for T in ls:
    align = np.asarray([r["alignment"] for r in ls[T]])  # [S, α]
    w = np.asarray([r["w_norm"] for r in ls[T]])
    out[f"ls_T{T}"] = {
        "alignment_mean_smallest_alpha": float(align[:, i_small].mean()),
        "w_norm_median_smallest_alpha": float(np.median(w[:, i_small])),
        "alignment_mean_alpha_1e-6": float(align[:, i_reg].mean()),
        "w_norm_median_alpha_1e-6": float(np.median(w[:, i_reg])),
        "alignment_mean_alpha_ge_1e-4": span(align[:, i_reg + 1:].mean(0)),
        "alignment_mean_every_alpha": span(align.mean(0)),
        "synth_grad_norm_max_smallest_alpha": float(np.max([r["synth_grad_norm"][i_small]
                                                            for r in ls[T]]))}
  for T in tr:
    mean = {k: np.asarray(tr[T][k]).mean(0) for k in ("summed_signal_cos", "cell_cos",
                                                      "alignment")}  # [L]
    out[f"trained_T{T}"] = {
        "summed_signal_cos_lambda0": float(mean["summed_signal_cos"][0]),
        "summed_signal_cos_lambda1": float(mean["summed_signal_cos"][-1]),
        "cell_cos_lambda0": float(mean["cell_cos"][0]),
        "cell_cos_lambda1": float(mean["cell_cos"][-1]),
        "alignment_lambda1": float(mean["alignment"][-1]),
        "synth_w_norm_lambda1": span(np.asarray(tr[T]["synth_w_norm"])[:, -1])}
  return out


def figure(doc):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(2, 3, figsize=(15, 8))
  for c in doc["convergence"]:
    ax[0, 0].semilogy(np.maximum(c["rel_distance"], 1e-17), color="C0", alpha=0.6)
  ax[0, 0].axhline(2.0 ** -24, color="grey", ls=":", label="float32 rounding (2⁻²⁴)")
  ax[0, 0].set(xlabel="t", ylabel="‖h_t − h*‖ / ‖h*‖ (float64)",
               title="state against its fixed point, seeds 0–9")
  ax[0, 0].legend(fontsize=8)
  for T, style in ((30, "-"), (60, "--")):
    for r in doc["rotation"][str(T)]:
      ax[0, 1].plot(range(T - 1), r["cos_next"], style, color="C1" if T == 30 else "C2",
                    alpha=0.5)
  ax[0, 1].set(xlabel="t", ylabel="cos(dL/dh_t, dL/dh_{t+1})",
               title="consecutive true gradients (T = 30 solid, 60 dashed)")
  for T, colour in zip(HORIZONS, ("C0", "C1", "C2")):
    for i, r in enumerate(doc["least_squares"][str(T)]):
      ax[0, 2].semilogx(r["alpha"], r["alignment"], color=colour, alpha=0.6,
                        label=f"T = {T}" if i == 0 else None)
      ax[1, 0].loglog(r["alpha"], r["w_norm"], color=colour, alpha=0.6,
                      label=f"T = {T}" if i == 0 else None)
  ax[0, 2].set(xlabel="ridge α", ylabel="alignment of the least-squares ĝ",
               title="least-squares synthesiser (BP(λ = 1)'s fixed point at α → 0)")
  ax[1, 0].set(xlabel="ridge α", ylabel="‖W‖_F of the least-squares ĝ", title="its weights")
  for T, colour in zip(HORIZONS, ("C0", "C1", "C2")):
    tr = doc["trained"].get(str(T))
    if tr:
      w = np.asarray(tr["synth_w_norm"]).ravel()
      ax[1, 0].scatter(np.full(w.shape, ALPHAS[-1] * 3), w, color=colour, marker="x", s=12)
  ax[1, 0].annotate("×: trained BP(λ)", (0.6, 0.05), xycoords="axes fraction", fontsize=8)
  for a in ax[0, 2], ax[1, 0]:
    a.legend(fontsize=8)
  for j, (key, what) in enumerate((("summed_signal_cos", "cos(Σ ℓ_t, Σ dL/dh_t)"),
                                   ("cell_cos", "RNN weight-gradient cosine"))):
    a = ax[1, 1 + j]
    for k, T in enumerate(HORIZONS):
      tr = doc["trained"].get(str(T))
      if not tr:
        continue
      v = np.asarray(tr[key])  # [S, L]
      x = np.asarray(LAMBDAS) + (k - 1) * 0.03
      for s in range(v.shape[0]):
        a.scatter(x, v[s], color=f"C{k}", s=8, alpha=0.5)
      a.plot(x, v.mean(0), marker="o", color=f"C{k}", label=f"T = {T} (mean; dots: seeds)")
    a.set(xlabel="λ", ylabel=what, title=f"trained BP(λ): {what}")
    a.legend(fontsize=8)
  fig.suptitle("Fixed linear RNN: why the per-step alignment collapses at T = 30 and 60", fontsize=11)
  fig.tight_layout()
  os.makedirs(FIGURES, exist_ok=True)
  path = os.path.join(FIGURES, "fig_toy_analysis.png")
  fig.savefig(path, dpi=100)
  print("wrote", path)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=10_000, help="updates of the trained BP(λ) runs")
  p.add_argument("--figure-only", action="store_true",
                 help="redraw the figure and recompute the summary from the JSON")
  args = p.parse_args(argv)
  if args.figure_only:
    doc = json.load(open(OUT))
    doc["summary"] = summary(doc)
    with open(OUT, "w") as f:
      json.dump(doc, f, separators=(",", ":"))
      f.write("\n")
    figure(doc)
    return
  t0, load0 = time.time(), os.getloadavg()[0]
  dirty = subprocess.run(["git", "status", "--porcelain", "--", "bplambda_jax"], cwd=REPO,
                         capture_output=True, text=True).stdout.strip()
  model = tasks.toy_model(30)
  with jax.enable_x64(True):
    rule64 = bl.bp_lambda(model, flavour="state", lambda_=1.0, gamma=1.0, mode="sequence")
    doc = {"seeds": list(SEEDS), "lambdas": list(LAMBDAS), "late_from": LATE,
           "convergence": [convergence(model, rule64, s) for s in SEEDS],
           "rotation": {str(T): [rotation(model, rule64, s, T) for s in SEEDS] for T in (30, 60)},
           "least_squares": {str(T): [least_squares(model, rule64, s, T) for s in SEEDS]
                             for T in HORIZONS}}
  print(f"float64 parts: {time.time() - t0:.0f} s", flush=True)
  doc["trained"] = {}
  for T in HORIZONS:
    doc["trained"][str(T)] = trained(model, T, args.steps)
    print(f"trained BP(λ) at T = {T}: {time.time() - t0:.0f} s", flush=True)
  doc["steps"] = args.steps
  doc["wall_s"] = round(time.time() - t0, 1)
  doc["loadavg_1m"] = [load0, os.getloadavg()[0]]
  doc["code_dirty"] = bool(dirty)
  from bplambda_jax.experiments._results import provenance
  doc["provenance"] = provenance()
  doc["summary"] = summary(doc)
  with open(OUT, "w") as f:
    json.dump(doc, f, separators=(",", ":"))
    f.write("\n")
  print("wrote", OUT)
  figure(doc)


if __name__ == "__main__":
  main()
