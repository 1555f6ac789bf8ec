"""Structured BP(λ) traces, the element-wise cells, and the structured trace-step kernel.

* The kernel: the full-block ``jnp`` reference is pinned by an explicit loop over the dense trace
  (E ← c·M·E + D(a) with M block-diagonal, read back on the blocks); the XLA path and the Pallas
  kernel (interpret mode on CPU) equal the reference on odd shapes and several block patterns;
  ``structured_step`` picks XLA on CPU and Pallas for GPU/TPU.
* The rule: for every structured cell and flavour the structured trace gives the dense trace's
  gradients and TD errors (float64, relative 1e-10) for λ ∈ {0, 0.5, 1}, in the online mode and
  in the sequence mode (whose reverse recursion then multiplies by M's blocks instead of taking a
  vjp); per step too, with per-step clipping and per-step synthesiser SGD. The trace and its
  memory per example are n·d_in-sized, the dense trace's n²·d_in.
* ``trace=`` selects the form automatically from the cell's declarations and can be overridden;
  invalid combinations raise.
* The new cells run through every rule of the registry; e-prop, columnar RTRL and 1-order
  e-prop are exact RTRL on them, SnAp-1 too on the LRUs (= BPTT, float64, 1e-10).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bplambda_jax as bl
from bplambda_jax import credit, kernels
from bplambda_jax import internals

from helpers import jit, random_batch, randomize, rel_err

pytestmark = pytest.mark.x64  # float64 oracles

TOL = 1e-10
T, B, D, H = 6, 3, 3, 4
ON_CPU = jax.default_backend() == "cpu"
# The kernel's references, jitted: one compilation per shape instead of one per op.
_REF = jax.jit(internals.structured_step_reference, static_argnames="pattern")
_XLA = jax.jit(internals.structured_step_xla, static_argnames="pattern")


def _np_rel(a, b):
  fa = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(a)])
  fb = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(b)])
  return float(np.linalg.norm(fa - fb) / max(np.linalg.norm(fb), 1e-300))


# ------------------------------------------------------------------------------------- kernel

PATTERNS = {
    "diagonal": [[True]],
    "h_of_x": [[False, True], [False, True]],  # a unit whose output h = φ(x) is not recurrent
    "full2": [[True, True], [True, True]],  # an LSTM column's (h, c)
    "chain3": [[True, False, False], [True, True, False], [False, True, True]],
}


def _kernel_inputs(seed, pattern, Bn, U, P):
  """Random stored pairs, blocks masked to the pattern, a, δ (numpy float64)."""
  r = np.random.default_rng(seed)
  k, S = pattern.k, len(pattern.stored)
  M = r.standard_normal((Bn, k, k, U)) * np.asarray(pattern.m, float)[None, :, :, None]
  return (r.standard_normal((Bn, S, U, P)), M, r.standard_normal((Bn, P)),
          r.standard_normal((Bn, k, U)))


def test_block_pattern_keeps_what_the_next_step_reads():
  assert kernels.DIAGONAL.stored == ((0, 0),)
  p = kernels.block_pattern(PATTERNS["h_of_x"])
  assert p.live == ((0, 0), (0, 1), (1, 1)) and p.stored == ((1, 1),)
  assert len(kernels.block_pattern(PATTERNS["full2"]).stored) == 4
  with pytest.raises(ValueError, match="square pattern"):
    kernels.block_pattern([[True, False]])
  assert internals.padded_columns(130, "xla") == 130
  assert internals.padded_columns(130, "pallas") == 256 and internals.padded_columns(5, "pallas") == 8


def test_reference_is_the_dense_trace_step_on_the_blocks():
  """Explicit loops over the dense trace E [B, d, d, P] with d = k·U (component-major)."""
  pattern = kernels.block_pattern(PATTERNS["h_of_x"])
  Bn, U, P, c = 2, 3, 4, 0.7
  E, M, a, delta = _kernel_inputs(0, pattern, Bn, U, P)
  k, d = pattern.k, pattern.k * U
  dense = np.zeros((Bn, d, d, P))
  Md = np.zeros((Bn, d, d))
  for b in range(Bn):
    for u in range(U):
      for s, (r, y) in enumerate(pattern.stored):
        dense[b, r * U + u, y * U + u] = E[b, s, u]
      for r in range(k):
        for x in range(k):
          Md[b, r * U + u, x * U + u] = M[b, r, x, u]
  new = c * np.einsum("bok,bkij->boij", Md, dense)
  for i in range(d):
    new[:, i, i, :] += a
  inc = np.einsum("bo,boij->ij", delta.reshape(Bn, d), new) / Bn  # δ component-major
  got_E, got_inc = _REF(E, M, a, delta, c, pattern=pattern)
  for s, (r, y) in enumerate(pattern.stored):
    want = np.stack([new[:, r * U + u, y * U + u] for u in range(U)], axis=1)
    assert _np_rel(got_E[:, s], want) < 1e-14
  assert _np_rel(np.asarray(got_inc).reshape(k * U, P), inc) < 1e-14  # rows c'·U + u
  # The dense step stays block-diagonal: nothing outside the units' blocks.
  in_blocks = np.kron(np.ones((k, k)), np.eye(U)).astype(bool)
  assert np.abs(new[:, ~in_blocks]).max() == 0


# (pattern, B, U, P, block_u, block_p): B, S, k padded to powers of two, U and P to whole tiles,
# up to two tiles each way (the interpreter runs every grid program: keep the grids small)
KERNEL_CASES = [
    ("diagonal", 20, 5, 7, 8, 128),  # B > 16: the XLA path's batch sum is a reduction
    ("h_of_x", 2, 9, 33, 8, 32),
    ("full2", 3, 6, 40, 4, 64),
    ("chain3", 1, 3, 5, 8, 128),
]


@pytest.mark.parametrize("name,Bn,U,P,block_u,block_p", KERNEL_CASES)
def test_xla_and_pallas_paths_match_the_reference(name, Bn, U, P, block_u, block_p):
  pattern = kernels.block_pattern(PATTERNS[name])
  args = _kernel_inputs(len(name) + U, pattern, Bn, U, P)
  want = _REF(*args, 0.8, pattern=pattern)
  got_xla = _XLA(*args, 0.8, pattern=pattern)
  got_pallas = internals.structured_step_pallas(*args, jnp.float64(0.8), pattern, interpret=True,
                                              block_u=block_u, block_p=block_p)
  for got in (got_xla, got_pallas):
    assert got[0].shape == (Bn, len(pattern.stored), U, P) and got[1].shape == (pattern.k, U, P)
    assert _np_rel(got, want) < 1e-13
  # Dropping the decay term is an O(1) error at this tolerance.
  assert _np_rel(_REF(*args, 0.0, pattern=pattern), want) > 1e-2


def test_pallas_path_is_differentiable_like_the_formula():
  pattern = kernels.block_pattern(PATTERNS["full2"])
  args = _kernel_inputs(5, pattern, 2, 3, 6)
  tangents = _kernel_inputs(6, pattern, 2, 3, 6)
  f_xla = lambda *a: internals.structured_step_xla(*a, 0.6, pattern)
  f_pallas = lambda *a: internals.structured_step_pallas(*a, 0.6, pattern, interpret=True)
  jvp = lambda f: jax.jit(lambda a, t: jax.jvp(f, a, t))(args, tangents)
  assert _np_rel(jvp(f_pallas), jvp(f_xla)) < 1e-13


def test_structured_step_selects_by_backend():
  pattern = kernels.DIAGONAL
  args = [a.astype(np.float32) for a in _kernel_inputs(7, pattern, 2, 3, 5)]  # TPU: no float64
  jaxpr = lambda **kw: str(jax.make_jaxpr(
      lambda *a: kernels.structured_step(*a, 0.5, pattern, **kw))(*args))
  assert "pallas_call" in jaxpr(backend="gpu") and "pallas_call" in jaxpr(backend="tpu")
  assert "pallas_call" not in jaxpr(backend="cpu")
  assert "pallas_call" in jaxpr(impl="pallas") and "pallas_call" not in jaxpr(impl="xla")
  # backend=None: chosen when lowering (XLA for CPU; tests/test_export.py checks GPU and TPU).
  lowered = jax.jit(lambda *a: kernels.structured_step(*a, 0.5, pattern)).lower(*args)
  assert "bplambda_structured_step" not in lowered.as_text(debug_info=True)
  if not ON_CPU:
    pytest.skip("the automatic choice on this backend is Pallas; the CPU assertions do not apply")
  assert internals.select_impl() == "xla"
  with pytest.raises(ValueError, match="impl must be one of"):
    kernels.structured_step(*args, 0.5, pattern, impl="triton")
  with pytest.raises(ValueError, match="delta must have shape"):
    kernels.structured_step(*args[:3], args[3][:, :, :2], 0.5, pattern)


# --------------------------------------------------------------------------------- the rule

# id -> (cell, flavour, expected trace [S, U, P] per example)
STRUCTURED = {
    "lru_state": ("lru", "state", (1, H, 2 * H + 1)),  # J blocks [[0, φ'λ], [0, λ]]: one pair
    "linear_lru_state": ("linear_lru", "state", (1, H, H + 1)),  # J diagonal
    "elementwise_lstm_eprop": ("elementwise_lstm", "eprop", (1, H, 2 * H + 1)),  # K diagonal
    "elementwise_lstm_state": ("elementwise_lstm", "state", (4, H, 2 * H + 1)),  # (h, c) blocks
}


@pytest.mark.parametrize("case", sorted(STRUCTURED))
def test_structured_trace_equals_dense_in_both_modes(case):
  """Online and sequence mode with the structured trace against the dense online trace."""
  cell, flavour, trace_shape = STRUCTURED[case]
  model = bl.make_model(cell, "mse", D, 2, hidden_size=H)
  # the network's sensitivity is another axis (immediate keeps the programs small)
  kw = dict(flavour=flavour, gamma=0.9, sg_scale=0.7, sensitivity="immediate")
  rules = {"dense": bl.bp_lambda(model, trace="dense", **kw),
           "online": bl.bp_lambda(model, **kw),
           "sequence": bl.bp_lambda(model, mode="sequence", **kw)}
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  params = rules["dense"].init(k1)
  params["synth"]["train"] = randomize(params["synth"]["train"], k2, 0.5)
  batch = random_batch(k3, T, B, D, 2)
  trace = jax.eval_shape(lambda p: rules["online"].init_state(p, B), params).td.trace
  assert trace.shape == (B,) + trace_shape, trace.shape
  run = jit(lambda lam: {k: r.grads(params, batch, {"lambda_": lam}) for k, r in rules.items()})
  synth = []
  for lam in (0.0, 0.5, 1.0):  # λ is traced: one compilation for the three
    out = run(lam)
    g_dense, aux_dense = out["dense"]
    for key in ("online", "sequence"):
      g, aux = out[key]
      assert rel_err(g, g_dense) < TOL, (key, lam, rel_err(g, g_dense))
      assert rel_err(aux["td_error_norm"], aux_dense["td_error_norm"]) < TOL, (key, lam)
    synth.append(g_dense["synth"])
  assert rel_err(synth[0], synth[2]) > 1e-3  # λ matters: the three comparisons are not one


def _steps(rule, params, batch, alpha, faithful):
  """Σ_t rule.step with plain SGD on θ after every step (the authors' per-step learning)."""
  weights = batch.mask if faithful else bl.step_weights(batch.mask)

  def body(carry, inp):
    state, theta, acc = carry
    x, y, w, last = inp
    p = {**params, "synth": {**params["synth"], "train": theta}}
    g, state, _ = rule.step(p, state, x, y, w, last=last, synth_sgd=alpha)
    theta = jax.tree.map(lambda t_, d: t_ - alpha * d, theta, g["synth"]["train"])
    return (state, theta, jax.tree.map(jnp.add, acc, g)), None

  carry = (rule.init_state(params, B), params["synth"]["train"],
           jax.tree.map(jnp.zeros_like, params))
  lasts = jnp.arange(T) == T - 1
  (_, theta, acc), _ = jax.lax.scan(body, carry, (batch.x, batch.y, weights, lasts))
  return acc, theta


# id -> (cell, flavour, faithful): per-step clipping is on (faithful's default, or asked for)
PER_STEP = {
    "lru_state": ("lru", "state", False),
    "elementwise_lstm_eprop_faithful": ("elementwise_lstm", "eprop", True),
    "columnar_lstm_hc_faithful": ("columnar_lstm", "state", True),  # the [h, c] link's blocks
}


@pytest.mark.parametrize("case", sorted(PER_STEP))
def test_structured_trace_is_exact_per_step_with_clipping_and_synth_sgd(case):
  cell, flavour, faithful = PER_STEP[case]
  model = bl.make_model(cell, "mse", D, 2, hidden_size=H)
  kw = dict(flavour=flavour, lambda_=0.5, gamma=0.9, clip_increments=True, faithful=faithful)
  dense, structured = bl.bp_lambda(model, trace="dense", **kw), bl.bp_lambda(model, **kw)
  params = dense.init(jax.random.key(3))
  params["synth"]["train"] = randomize(params["synth"]["train"], jax.random.key(4), 2.0)
  batch = random_batch(jax.random.key(5), T, B, D, 2)
  assert jax.eval_shape(lambda p: structured.init_state(p, B), params).td.trace.ndim == 4
  out = jit(lambda p: {k: _steps(r, p, batch, 0.3, faithful) for k, r in
                       (("dense", dense), ("structured", structured))})(params)
  assert rel_err(out["dense"][1], params["synth"]["train"]) > 1e-3  # θ really moves
  assert rel_err(out["structured"], out["dense"]) < TOL


def test_trace_memory_grows_as_n_d_in_and_the_dense_as_n2_d_in():
  """Trace entries per example: structured S·U·(d_in + 1) against dense d_out²·(d_in + 1)."""
  sizes = {}
  for h in (4, 8):
    model = bl.make_model("elementwise_lstm", "mse", D, 2, hidden_size=h)
    for trace in ("auto", "dense"):
      rule = bl.bp_lambda(model, trace=trace)
      params = jax.eval_shape(rule.init, jax.random.key(0))
      td = jax.eval_shape(lambda p: rule.init_state(p, 1), params).td
      sizes[trace, h] = sum(l.size for l in jax.tree.leaves(td.trace))
    pattern, n_cols = kernels.DIAGONAL, 2 * h + 1
    assert sizes["auto", h] == h * n_cols  # e[o, j], o < d_out = H, j < d_in + 1
    assert internals.structured_bytes_per_example(pattern, h, n_cols, 8) == (n_cols + 1) * h * 8
    assert sizes["dense", h] == h * h * n_cols  # W's trace [d, d, d_in] and β's [d, d]
  assert sizes["auto", 8] / sizes["auto", 4] == pytest.approx(2 * 17 / 9)  # n·d_in
  assert sizes["dense", 8] / sizes["dense", 4] > 7  # n²·d_in


# ------------------------------------------------------------------------------ trace= choice


def _trace_kind(rule, params):
  trace = jax.eval_shape(lambda p: rule.init_state(p, 2), params).td.trace
  if isinstance(trace, internals.ChunkedTrace):
    return "chunked"
  if isinstance(trace, dict):
    return "dense"
  return f"structured{trace.shape[1:]}"


def test_trace_is_chosen_from_the_declarations_and_can_be_overridden():
  lru = bl.make_model("lru", "mse", D, 2, hidden_size=H)
  linear = bl.make_model("linear_lru", "mse", D, 2, hidden_size=H)
  ew = bl.make_model("elementwise_lstm", "mse", D, 2, hidden_size=H)
  lstm = bl.make_model("lstm", "mse", D, 2, hidden_size=H)
  params = {m.cell.name: jax.eval_shape(bl.bp_lambda(m).init, jax.random.key(0))
            for m in (lru, linear, ew, lstm)}
  kind = lambda m, **kw: _trace_kind(bl.bp_lambda(m, **kw), params[m.cell.name])
  assert kind(lru) == f"structured(1, {H}, {2 * H + 1})"
  assert kind(linear) == kind(linear, trace="diagonal") == f"structured(1, {H}, {H + 1})"
  assert kind(linear, trace="block") == f"structured(1, {H}, {H + 1})"
  assert kind(ew) == kind(ew, trace="diagonal") == f"structured(1, {H}, {2 * H + 1})"
  assert kind(ew, flavour="state") == f"structured(4, {H}, {2 * H + 1})"
  assert kind(lstm) == kind(ew, trace="chunked") == kind(ew, trace_chunk=3) == "chunked"
  assert kind(ew, trace="dense") == kind(ew, trace_chunk=0) == kind(ew, trace="dense",
                                                                   trace_chunk=0) == "dense"
  assert kind(lru, synthesiser=bl.mlp_synthesiser(1, 3)) == "dense"
  assert kind(lru, mode="sequence") == f"structured(1, {H}, {2 * H + 1})"  # the step's trace
  f32 = bl.bp_lambda(ew, trace_dtype=jnp.float32)
  td = jax.eval_shape(lambda p: f32.init_state(p, 2), params[ew.cell.name]).td
  assert td.trace.dtype == jnp.float32 and td.m.dtype == jnp.float64  # M's blocks: params' dtype
  # the e-prop flavour's K_t is derived from the declarations
  assert internals.eprop_transition(ew.cell) == "diagonal"
  assert internals.eprop_transition(bl.columnar_lstm(3)) == "diagonal"
  assert internals.eprop_transition(lstm.cell) == "dense"


@pytest.mark.parametrize("cell,kw,message", [
    ("lru", dict(trace="diagonal"), "trace='diagonal' needs a diagonal transition"),
    ("lstm", dict(trace="block"), "declares a dense K_t"),
    ("tanh", dict(trace="diagonal"), "declares a dense J_t"),
    ("lru", dict(trace="sparse"), "trace must be one of"),
    ("lru", dict(trace="chunked", trace_chunk=0), "trace_chunk=0 selects the dense trace"),
    ("lru", dict(trace="dense", trace_chunk=4), "trace_chunk=4 selects the chunked trace"),
    ("lru", dict(trace="diagonal", trace_chunk=4), "pass trace_chunk only with"),
    ("lru", dict(trace="block", synthesiser=bl.mlp_synthesiser(1, 3)),
     "trace='block' needs a linear synthesiser"),
    ("lru", dict(trace="chunked", synthesiser=bl.mlp_synthesiser(1, 3)),
     "needs a linear synthesiser"),
])
def test_invalid_trace_choices_raise(cell, kw, message):
  with pytest.raises(ValueError, match=message):
    bl.bp_lambda(bl.make_model(cell, "mse", D, 2, hidden_size=H), **kw)


# ----------------------------------------------------------------------------- the new cells


@pytest.mark.parametrize("cell", ["lru", "linear_lru", "elementwise_lstm"])
def test_new_cells_run_every_rule_and_eprop_is_exact_rtrl(cell):
  """Every registry rule on the LRU and the element-wise LSTM (the linear LRU, the same code
  with φ = identity, with the rules that must be exact and BP(λ))."""
  model = bl.make_model(cell, "mse", D, 2, hidden_size=H)
  specs = {name: name.replace(":n", ":2").replace(":m", ":1") for name in bl.RULE_NAMES}
  specs["tbptt_full"] = f"tbptt:{T}"
  if cell == "linear_lru":
    specs = {k: specs[k] for k in ("bptt", "rtrl", "eprop", "columnar_rtrl", "snap:n",
                                   "bp_lambda")}
  rules = {k: bl.make_rule(s, model) for k, s in specs.items()}
  base = model.init(jax.random.key(6))
  params = {}
  for k, r in rules.items():  # the same network for every rule, plus a synthesiser if it has one
    params[k] = dict(base)
    if "synth" in jax.eval_shape(r.init, jax.random.key(0)):
      synth = r.init(jax.random.key(7))["synth"]
      params[k]["synth"] = {**synth, "train": randomize(synth["train"], jax.random.key(8), 0.3)}
  batch = random_batch(jax.random.key(9), T, B, D, 2)
  out = jit(lambda ps: {k: r.grads(ps[k], batch)[0] for k, r in rules.items()})(params)
  cell_grads = {k: g["cell"] for k, g in out.items()}
  for k, g in out.items():
    assert jax.tree.structure(g) == jax.tree.structure(params[k]), k
    assert all(bool(jnp.all(jnp.isfinite(l))) for l in jax.tree.leaves(g)), k
  exact = cell_grads["bptt"]
  # element-wise: the implicit part is all of J_t (e-prop), the unit blocks are J_t (columnar)
  exact_here = ["rtrl", "eprop", "columnar_rtrl", "eprop_m:m", "tbptt_full"]
  if cell != "elementwise_lstm":  # one step reaches every component of an LRU unit (SnAp-1)
    exact_here.append("snap:n")
  for k in exact_here:
    if k in cell_grads:
      assert rel_err(cell_grads[k], exact) < TOL, (k, rel_err(cell_grads[k], exact))
  if "tbptt:n" in cell_grads:
    assert rel_err(cell_grads["tbptt:n"], exact) > 1e-6  # truncation does lose credit here


def test_lru_decay_is_stable_and_initialised_on_the_ring():
  cell = bl.lru(64, r_min=0.5, r_max=0.9)
  p = jax.jit(cell.init, static_argnums=1)(jax.random.key(0), 2)
  lam = jnp.exp(-jnp.exp(p["nu"]))
  assert float(lam.min()) >= 0.5 - 1e-6 and float(lam.max()) <= 0.9 + 1e-6
  quiet = {**p, "b": jnp.zeros_like(p["b"])}
  step = jax.jit(cell.step)
  for nu in (-30.0, 0.0, 30.0):  # any real ν gives λ ∈ [0, 1): without input x_t shrinks
    q = {**quiet, "nu": jnp.full_like(p["nu"], nu)}
    s = step(q, jnp.ones(128), jnp.zeros(2))
    assert bool(jnp.all(jnp.isfinite(s))) and bool(jnp.all(jnp.abs(s[64:]) <= 1.0))
    lam = jnp.exp(-jnp.exp(q["nu"]))
    assert bool(jnp.all((lam >= 0) & (lam < 1)))
  assert bl.get_cell("lru", 3).state_size == 6 and bl.get_cell("linear_lru", 3).state_size == 3
  assert bl.elementwise_lstm(3).name == "elementwise_lstm"
  with pytest.raises(ValueError, match="r_max must be a number in"):
    bl.lru(3, r_max=1.0)
  with pytest.raises(ValueError, match="r_min must be <= r_max"):
    bl.lru(3, r_min=0.9, r_max=0.5)
  with pytest.raises(ValueError, match="activation must be one of"):
    bl.lru(3, "swish")
