"""The chunked linear-synthesiser trace equals the dense trace step by step (float64).

Oracle: the dense step ``internals.trace_step_diag_reference`` (E ← c·M·E + D(a), inc = mean_b δ·E)
iterated over a random sequence, including zero decays (the first TD step) and chunk lengths that
do and do not divide the sequence. At the rule level, ``bp_lambda``'s online mode with chunked
traces must give the dense trace's gradients, also with per-step clipping and per-step synthesiser
updates, where every single increment matters (the latter by a loop over the rule's ``step``
with per-step SGD on the synthesiser, ``synth_sgd``).
"""


import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bplambda_jax as bl
from bplambda_jax import bp_lambda, kernels, mlp_synthesiser
from bplambda_jax import credit as traces
from bplambda_jax.model import make_model
from bplambda_jax import internals

from helpers import jit as _jit, random_batch, randomize, rel_err, step_loop

pytestmark = pytest.mark.x64  # float64 oracles

TOL = 1e-12


def _sequence(seed, S, B, d, n):
  r = np.random.default_rng(seed)
  M = r.standard_normal((S, B, d, d)) / np.sqrt(d)
  a = r.standard_normal((S, B, n))
  delta = r.standard_normal((S, B, d))
  c = r.uniform(0.3, 1.0, S)
  c[0] = 0.0  # the first TD step: no decay term (and the rule's a is 0 there too)
  c[S // 2] = 0.0  # a reset inside the sequence
  return M, a, delta, c


def _dense_incs(M, a, delta, c):
  S, B, d, _ = M.shape
  step = _jit(internals.trace_step_diag_reference)
  E = jnp.zeros((B, d, d, a.shape[-1]))
  incs = []
  for t in range(S):
    E, inc = step(E, M[t], a[t], delta[t], c[t])
    incs.append(inc)
  return jnp.stack(incs), E


@pytest.mark.parametrize("chunk", [1, 2, 3, 6, 7, 50])
def test_chunked_equals_dense_step_by_step(chunk):
  S, B, d, n = 7, 3, 4, 5
  M, a, delta, c = _sequence(chunk, S, B, d, n)
  want, E_final = _dense_incs(M, a, delta, c)

  link = lambda m, v: jnp.einsum("bk,bki->bi", v, m)  # the context is M itself: v·M

  @_jit
  def run(M, a, delta, c):
    tr = internals.chunked_init(M[0], d, n, bias=False, chunk=chunk, steps=S, dtype=jnp.float64)

    def body(tr, xs):
      return internals.chunked_step(tr, xs[0], *xs[1:], link)

    return jax.lax.scan(body, tr, (M, a, delta, c))

  tr, got = run(M, a, delta, c)
  assert got.shape == (S, d, n)
  assert rel_err(got, want) < TOL, chunk
  assert (tr.base is None) == (chunk >= S)
  assert tr.ctxs.shape == (min(chunk, S), B, d, d)
  if tr.base is not None and S % chunk == 0:  # folded at the last step: E⁰ is the dense trace
    assert rel_err(tr.base, E_final) < TOL
  # Wrong-sign or dropped decay terms are O(1) errors at this tolerance.
  assert rel_err(_dense_incs(M, a, delta, 0 * c)[0], want) > 0.1


def test_chunk_must_be_positive():
  with pytest.raises(ValueError, match="chunk must be an int >= 1"):
    internals.chunked_init(jnp.zeros((2, 3)), 3, 4, bias=True, chunk=0, steps=5, dtype=jnp.float32)


_RULES = {
    # name: (cell, flavour, extra bp_lambda kwargs)
    "tanh_state_clip": ("tanh", "state", dict(clip_increments=True)),
    "lstm_state_alpha": ("lstm", "state", dict(synth_sgd=0.3)),
    "lstm_eprop_faithful": ("lstm", "eprop", dict(faithful=True)),
    "lstm_eprop_alpha": ("lstm", "eprop", dict(synth_sgd=0.3)),
}


@pytest.mark.parametrize("name", sorted(_RULES))
def test_bp_lambda_online_chunked_equals_dense(name):
  cell_name, flavour, kw = _RULES[name]
  T, B, D, H = 7, 3, 2, 3
  model = make_model(cell_name, "mse", D, 2, hidden_size=H)
  kw = dict(flavour=flavour, lambda_=0.8, gamma=0.9, sg_scale=0.7, **kw)
  alpha = kw.pop("synth_sgd", None)  # per-step synthesiser SGD: a loop over rule.step

  def run(rule):
    if alpha is None:
      return _jit(rule.grads)(params, batch)
    out = step_loop(rule, params, batch, faithful=kw.get("faithful", False), synth_sgd=alpha)
    return {k: out[k] for k in ("cell", "readout", "synth")}, out

  dense = bp_lambda(model, trace_chunk=0, **kw)
  k1, k2, k3 = jax.random.split(jax.random.key(sorted(_RULES).index(name)), 3)
  params = dense.init(k1)
  params["synth"]["train"] = randomize(params["synth"]["train"], k2, 0.5)
  batch = random_batch(k3, T, B, D, 2)
  g_dense, aux_dense = run(dense)
  if alpha is not None:  # the per-step updates really move θ
    assert rel_err(aux_dense["synth_params"], params["synth"]) > 1e-3
  # None: the default chunk (> T; in grads E⁰ is never stored, while the step state of a loop
  # over rule.step, which does not know T, stores it and never folds).
  for chunk in (1, 3, None):
    rule = bp_lambda(model, trace_chunk=chunk, **kw)
    g, aux = run(rule)
    assert rel_err(g, g_dense) < 1e-11, (chunk, rel_err(g, g_dense))
    assert rel_err(aux["td_error_norm"], aux_dense["td_error_norm"]) < 1e-11
    if alpha is not None:
      assert rel_err(aux["synth_params"], aux_dense["synth_params"]) < 1e-11


def test_trace_chunk_validation():
  model = make_model("tanh", "mse", 2, 2, hidden_size=3)
  with pytest.raises(ValueError, match="trace_chunk must be None or an int >= 0"):
    bp_lambda(model, trace_chunk=-1)
  # mode='sequence' computes grads without traces, but its step (the same online step) has
  # them: trace_chunk sets their form there.
  params = bp_lambda(model).init(jax.random.key(0))
  for chunk, chunked in ((4, True), (0, False)):
    rule = bp_lambda(model, trace_chunk=chunk, mode="sequence")
    trace = jax.eval_shape(lambda p: rule.init_state(p, 2), params).td.trace
    assert isinstance(trace, internals.ChunkedTrace) == chunked, chunk
    if chunked:
      assert trace.decays.shape == (chunk,)
  with pytest.raises(ValueError, match="needs a linear synthesiser"):
    bp_lambda(model, mlp_synthesiser(1, 4), trace_chunk=4)
  bp_lambda(model, mlp_synthesiser(1, 4), trace_chunk=0)  # dense: allowed


def test_trace_memory_is_logged_and_a_run_that_cannot_fit_fails_early(monkeypatch, caplog):
  """The driver-side check (``training.check_memory``, before anything is compiled) estimates the
  online step state's memory: logged per seed, and a MemoryError naming the sequence mode when the
  estimate exceeds the available memory. It counts every seed of a vmapped sweep."""
  memory = importlib.import_module("bplambda_jax.training._memory")
  T, B, D, H = 6, 4, 2, 5
  model = make_model("lstm", "mse", D, 2, hidden_size=H)
  batch = random_batch(jax.random.key(0), T, B, D, 2)
  dense = bp_lambda(model, flavour="eprop", trace_chunk=0)
  chunked = bp_lambda(model, flavour="eprop")
  params = dense.init(jax.random.key(1))
  theta = params["synth"]["train"]  # w [H, 2H], b [H]
  n_theta = H * 2 * H + H
  # The dense trace and its transition: H·(|θ| + H) per example (float64).
  td = jax.eval_shape(lambda p: dense.init_state(p, B), params).td
  td_bytes = lambda tree: sum(l.size * l.dtype.itemsize for l in jax.tree.leaves(tree))
  assert td_bytes((td.trace, td.m)) == B * H * (n_theta + H) * 8
  ctx = 3 * H + H + H  # the e-prop flavour's link context: π [3, H], f [H], D [H]
  assert theta["w"].shape == (H, 2 * H)
  tr = jax.eval_shape(lambda p: chunked.init_state(p, B), params).td.trace
  L = internals.DEFAULT_CHUNK  # a stream's state keeps E⁰ (it does not know T)
  assert td_bytes((tr.base, tr.ctxs, tr.inputs)) == B * internals.chunked_bytes_per_example(
      H, 2 * H + 1, L, 8, base=True, ctx_size=ctx)
  # check_memory: 3 buffers of the whole step state per seed.
  for rule in (dense, chunked):
    assert bl.training.check_memory(rule, params, B) == 3 * bl.internals.state_bytes(rule, params,
                                                                                    B)
  with caplog.at_level("INFO", logger="bplambda_jax"):
    need1 = bl.training.check_memory(chunked, params, B)
  assert any("MB per seed" in r.getMessage() for r in caplog.records)
  # seeds=8 needs 8 times the memory of seeds=1.
  need8 = bl.training.check_memory(chunked, params, B, seeds=8)
  assert need8 == 8 * need1
  monkeypatch.setattr(memory, "available_memory_bytes", lambda: 1000)
  for rule in (dense, chunked):
    with pytest.raises(MemoryError, match="mode='sequence'"):
      bl.training.check_memory(rule, params, B)
  dense.grads(params, batch)  # grads itself no longer checks: the drivers do
  # a sweep checks before compiling, counting its seeds
  opt = bl.training.optimiser(1e-3, 1e-3, 1e-3)
  with pytest.raises(MemoryError, match="8 seed"):
    bl.training.sweep(chunked, opt, lambda k, s: batch, jax.random.split(jax.random.key(2), 8), 1)
  # room for one seed but not for eight
  monkeypatch.setattr(memory, "available_memory_bytes", lambda: (need1 + need8) // 2)
  assert bl.training.check_memory(chunked, params, B, seeds=1) == need1
  with pytest.raises(MemoryError, match="8 seed"):
    bl.training.check_memory(chunked, params, B, seeds=8)
  monkeypatch.setattr(memory, "available_memory_bytes", lambda: 10**12)
  for rule in (dense, chunked):
    bl.training.check_memory(rule, params, B, seeds=8)  # fits
  # a rule computing grads in sequence mode has no step state to check
  assert bl.training.check_memory(bp_lambda(model, mode="sequence"), params, B) is None
