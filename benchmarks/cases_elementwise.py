"""Benchmark cases for element-wise recurrent cells: structured BP(λ) traces against e-prop.

Rows (float32, batch 8, T = 1000, H = n units, input size D_in = n, 8 outputs, BCE on every
step, random bits), for n ∈ {64, 256, 1024}:

* ``elementwise_{lru,lstm}_n{n}_t1000_bplambda_online``: BP(λ) online with the default trace,
  which on these cells is structured (:func:`bplambda_jax.internals.trace_structure`). The LRU
  (``'lru'``, φ = gelu) uses the state flavour, M = J_t unit-block-diagonal with one stored
  block pair, and the immediate sensitivity; the element-wise LSTM (``'elementwise_lstm'``) uses
  the e-prop flavour, M = K_t diagonal, and e-prop's sensitivity. γ = 0.9, λ = 1, sg_scale = 1.
  The trace is [B, 1, H, d_in + 1] with d_in = ĝ's input (2H for both): memory per example
  grows as n·d_in.
* ``elementwise_{lru,lstm}_n{n}_t1000_eprop``: e-prop on the same cell (exact RTRL here), the
  cost the structured trace is measured against (target: BP(λ) ≤ 2× e-prop per update).
* ``elementwise_{lru,lstm}_n{n}_t1000_bptt``: BPTT on the same cell (``ratio_to_bptt``).
* ``elementwise_{lru,lstm}_n64_t1000_bplambda_online_dense``: the dense trace (trace_chunk=0),
  [B, d_out, d_out, d_in + 1] per step: memory per example grows as n²·d_in.

Why D_in = n: these cells sit between n-wide layers in a deep network, and e-prop's trace on an
element-wise cell is O(k·n·D_in) while the synthesiser's is O(n·d_in) with d_in ≈ 2n, so the ratio
of the two costs scales as n/D_in: with D_in ≪ n BP(λ) costs many times e-prop, whatever the trace.

:func:`kernel_cases` adds one structured trace step at n = 1024 (``kind='structured_step'``)
through the XLA path and the fused Pallas kernel; the Pallas rows are skipped without a GPU/TPU
(the kernel runs only in interpret mode on CPU, a correctness tool). They need the harness to
time the kind: :func:`structured_step_program` gives the function and its arguments.
"""

from __future__ import annotations

import jax
import numpy as np

import bplambda_jax as bl

SIZES = (64, 256, 1024)
SEQ_LEN = 1000
BATCH = 8
OUTPUTS = 8
BPL = dict(lambda_=1.0, gamma=0.9, sg_scale=1.0)
CELLS = {"lru": "lru", "lstm": "elementwise_lstm"}
LRS = (1e-3, 1e-3, 1e-5)


def _rule(spec: str, **options) -> dict:
  return {"rule": spec, "options": tuple(sorted(options.items()))}


def elementwise_cases() -> list:
  """The update rows (kind 'update'), in run order: per cell and size, BPTT, e-prop, BP(λ)."""
  from benchmarks.cases import Case  # here, so that benchmarks.cases can import this module
  out = []
  for label, cell in CELLS.items():
    for n in SIZES:
      prefix = f"elementwise_{label}_n{n}_t{SEQ_LEN}"
      shapes = dict(cell=cell, loss="bce", input_size=n, output_size=OUTPUTS, hidden=n,
                    batch=BATCH, seq_len=SEQ_LEN, lrs=LRS, bptt_ref=f"{prefix}_bptt")
      rules = {"bptt": _rule("bptt"), "eprop": _rule("eprop", mode="online"),
               "bplambda_online": _rule("bp_lambda", mode="online", **BPL)}
      notes = {"bplambda_online": "structured trace (the default on this cell)"}
      if n == SIZES[0]:
        rules["bplambda_online_dense"] = _rule("bp_lambda", mode="online", trace_chunk=0, **BPL)
        notes["bplambda_online_dense"] = ("trace_chunk=0: the dense per-step trace, for "
                                          "comparison (B·d_out³·d_in multiply-adds per step)")
      for k, r in rules.items():
        out.append(Case(f"{prefix}_{k}", "elementwise", **r, note=notes.get(k, ""), **shapes))
  return out


def kernel_cases() -> list:
  """One structured trace step at n = 1024 per cell and implementation (kind
  'structured_step'); Pallas rows are skipped on CPU."""
  from benchmarks.cases import Case
  out = []
  n = SIZES[-1]
  for label, cell in CELLS.items():
    for impl in ("xla", "pallas"):
      skip = None
      if impl == "pallas" and jax.default_backend() == "cpu":
        skip = "Pallas runs only in interpret mode on CPU (a correctness tool, not timed)"
      out.append(Case(f"kernel_structured_step_{label}_n{n}_{impl}", "kernel",
                      kind="structured_step", cell=cell, hidden=n, batch=BATCH, seq_len=1,
                      input_size=n, impl=impl, skip=skip,
                      note="one structured trace step of BP(λ) online "
                           "(internals.structured_trace_step)"))
  return out


def structured_step_program(case):
  """(fn, args) of a 'structured_step' case: one ``bl.internals.structured_trace_step`` on random
  float32 data of the shapes BP(λ)'s default flavour has on the case's cell (``fn(*args)`` is timed)."""
  model = bl.make_model(case.cell, "bce", case.input_size, OUTPUTS, hidden_size=case.hidden)
  cell = model.cell
  params = jax.eval_shape(bl.bp_lambda(model).init, jax.random.key(0))

  def state_link(p, ctx, v):  # the state flavour's v·J_t (only the LRU's pattern probes it)
    s, x = ctx
    return jax.vjp(lambda s_: cell.step(p, s_, x), s)[1](v)[0]

  flavour = "eprop" if cell.lstm is not None else "state"
  structure = bl.internals.trace_structure(cell, flavour, state_link)
  layout = structure.layout
  pattern = structure.pattern(params["cell"], jax.ShapeDtypeStruct((case.input_size,),
                                                                   np.float32))
  d = layout.units * layout.width
  n_cols = params["synth"]["train"]["w"].shape[1] + 1
  B = case.batch
  rng = np.random.default_rng(0)
  normal = lambda *shape: rng.standard_normal(shape, np.float32)
  P = bl.internals.padded_columns(n_cols, case.impl)
  args = jax.block_until_ready(jax.device_put(
      (normal(B, len(pattern.stored), layout.units, P),
       normal(B, layout.width, layout.width, layout.units) / 2, normal(B, n_cols),
       normal(B, d))))

  def fn(trace, blocks, a, delta):
    return bl.internals.structured_trace_step(trace, blocks, a, delta, 0.9, pattern, layout,
                                     impl=case.impl)

  return fn, args
