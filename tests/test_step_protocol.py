"""The step-level protocol of every online rule: the scan of ``step`` is ``grads``; state carries.

* ``lax.scan`` of ``rule.step`` (written here, not the library's scan) equals ``rule.grads`` to a
  relative 1e-12 in float64, for every online rule and both BP(λ) flavours with several
  sensitivities, the faithful conventions, the dense trace, a folding chunked trace, an MLP
  synthesiser, truncated BPTT and DNI (one chunk per step);
* a sequence split in two, each half compiled on its own and the state passed through the host in
  between, equals one pass;
* the streaming driver (optax updates every k steps, per-step synthesiser SGD) equals a
  hand-written Python loop of ``rule.step`` and ``optax`` updates.
"""

import functools

import chex

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bplambda_jax as bl

from helpers import jit, random_batch, rel_err

pytestmark = pytest.mark.x64  # float64 oracles

TOL = 1e-12
T, B, D_IN, D_OUT, H = 7, 3, 3, 2, 4


def _model(cell="lstm", loss="mse"):
  return bl.make_model(cell, loss, D_IN, 3 if loss == "ce" else D_OUT, hidden_size=H)


# id -> (cell, loss, spec, options)
RULES = {
    "bp_state_immediate": ("lstm", "mse", "bp_lambda", dict(flavour="state")),
    "bp_state_eprop": ("lstm", "bce", "bp_lambda", dict(flavour="state", sensitivity="eprop")),
    "bp_state_rtrl_gru": ("gru", "mse", "bp_lambda", dict(flavour="state", sensitivity="rtrl")),
    "bp_state_faithful": ("lstm", "ce", "bp_lambda", dict(flavour="state", faithful=True)),
    "bp_state_tanh_faithful": ("tanh", "mse", "bp_lambda", dict(faithful=True,
                                                                readout_scale=0.5)),
    "bp_eprop": ("lstm", "mse", "bp_lambda", dict(flavour="eprop")),
    "bp_eprop_immediate": ("lstm", "mse", "bp_lambda", dict(flavour="eprop",
                                                            sensitivity="immediate")),
    "bp_eprop_rtrl": ("lstm", "bce", "bp_lambda", dict(flavour="eprop", sensitivity="rtrl")),
    "bp_eprop_faithful": ("lstm", "mse", "bp_lambda", dict(flavour="eprop", faithful=True)),
    "bp_eprop_columnar": ("columnar_lstm", "mse", "bp_lambda", dict(flavour="eprop",
                                                                    sensitivity="columnar_rtrl")),
    "bp_dense_trace": ("lstm", "mse", "bp_lambda", dict(flavour="eprop", trace_chunk=0)),
    "bp_chunk_folds": ("tanh", "mse", "bp_lambda", dict(trace_chunk=2, lambda_=0.6, gamma=0.8)),
    "bp_mlp_synth": ("tanh", "mse", "bp_lambda",
                     dict(synthesiser=bl.mlp_synthesiser(1, 5), lambda_=0.5)),
    "bp_sequence_mode": ("lstm", "mse", "bp_lambda", dict(flavour="eprop", mode="sequence")),
    "rtrl": ("lstm", "mse", "rtrl", {}),
    "eprop": ("lstm", "ce", "eprop", {}),
    "eprop_sequence": ("gru", "mse", "eprop", dict(mode="sequence")),
    "snap1": ("lstm", "mse", "snap:1", {}),
    "snap2": ("tanh", "mse", "snap:2", {}),
    "eprop_m1": ("lstm", "mse", "eprop_m:1", {}),
    "columnar_rtrl": ("columnar_lstm", "mse", "columnar_rtrl", {}),
    "tbptt3": ("lstm", "mse", "tbptt:3", {}),
    "tbptt1": ("tanh", "ce", "tbptt:1", {}),
    "dni2": ("lstm", "mse", "dni:2", dict(sg_scale=0.5)),
    "dni3_gamma": ("tanh", "mse", "dni:3", dict(bootstrap="gamma", gamma=0.8)),
}


def _setup(case, key=0):
  cell, loss, spec, options = RULES[case]
  model = _model(cell, loss)
  rule = bl.make_rule(spec, model, **options)
  params = rule.init(jax.random.key(key))
  if "synth" in params:  # a non-zero synthesiser, so every term of the TD step is exercised
    leaves, treedef = jax.tree.flatten(params["synth"]["train"])
    keys = jax.random.split(jax.random.key(key + 1), len(leaves))
    params["synth"]["train"] = treedef.unflatten(
        [0.2 * jax.random.normal(k, l.shape, l.dtype) for k, l in zip(keys, leaves)])
  batch = random_batch(jax.random.key(key + 2), T, B, D_IN, model.output_size, loss=loss)
  return model, rule, params, batch


def _segments(rule, T_):
  """(start, stop, last) of each step (per-step rules) or end-aligned chunk (chunk rules)."""
  if rule.chunk is None:
    return [(t, t + 1, t == T_ - 1) for t in range(T_)]
  n = rule.chunk
  r = T_ % n
  starts = ([0] if r else []) + list(range(r, T_, n))
  ends = starts[1:] + [T_]
  return [(s, e, i == len(starts) - 1) for i, (s, e) in enumerate(zip(starts, ends))]


def _scan_steps(rule, params, state, batch, weights, lasts):
  """Σ_t rule.step over a per-step batch segment with lax.scan (chunk rules: one chunk)."""
  acc = jax.tree.map(jnp.zeros_like, params)
  if rule.chunk is not None:
    g, state, _ = rule.step(params, state, batch.x, batch.y, weights, last=bool(lasts[-1]))
    return g, state

  def body(carry, inp):
    st, a = carry
    x, y, w, last = inp
    g, st, _ = rule.step(params, st, x, y, w, last=last)
    return (st, jax.tree.map(jnp.add, a, g)), None

  (state, acc), _ = jax.lax.scan(body, (state, acc), (batch.x, batch.y, weights,
                                                      jnp.asarray(lasts)))
  return acc, state


@pytest.mark.parametrize("case", sorted(RULES))
def test_scan_of_step_equals_grads(case):
  model, rule, params, batch = _setup(case)
  faithful = RULES[case][3].get("faithful", False)
  weights = batch.mask if faithful else bl.step_weights(batch.mask)
  expected, _ = jit(rule.grads)(params, batch)

  @jit
  def by_steps(params, batch, weights):
    state = rule.init_state(params, B)
    acc = jax.tree.map(jnp.zeros_like, params)
    for s, e, last in _segments(rule, T) if rule.chunk else [(0, T, True)]:
      seg = jax.tree.map(lambda a: a[s:e], batch)
      lasts = np.arange(s, e) == T - 1 if rule.chunk is None else [last]
      g, state = _scan_steps(rule, params, state, seg, weights[s:e], lasts)
      acc = jax.tree.map(jnp.add, acc, g)
    return acc

  got = by_steps(params, batch, weights)
  assert jax.tree.structure(got) == jax.tree.structure(expected)
  assert rel_err(got, expected) < TOL, case


@pytest.mark.parametrize("case", ["bp_state_faithful", "bp_eprop", "bp_chunk_folds", "eprop_m1",
                                  "snap2", "tbptt3", "dni2"])
def test_split_sequence_with_carried_state_equals_one_pass(case):
  """Two separately compiled halves with the state through numpy in between = one pass."""
  model, rule, params, batch = _setup(case, key=3)
  faithful = RULES[case][3].get("faithful", False)
  weights = batch.mask if faithful else bl.step_weights(batch.mask)
  expected, _ = jit(rule.grads)(params, batch)
  segs = _segments(rule, T)
  k = len(segs) // 2
  halves = [(segs[0][0], segs[k][0]), (segs[k][0], T)]

  @functools.partial(jit, static_argnums=(4, 5))
  def half(params, state, batch, weights, start, stop):
    acc = jax.tree.map(jnp.zeros_like, params)
    for s, e, last in [g for g in segs if start <= g[0] < stop]:
      seg = jax.tree.map(lambda a: a[s:e], batch)
      lasts = np.arange(s, e) == T - 1 if rule.chunk is None else [last]
      g, state = _scan_steps(rule, params, state, seg, weights[s:e], lasts)
      acc = jax.tree.map(jnp.add, acc, g)
    return acc, state

  state = rule.init_state(params, B)
  total = jax.tree.map(jnp.zeros_like, params)
  for start, stop in halves:
    acc, state = half(params, state, batch, weights, start, stop)
    state = jax.tree.map(np.asarray, state)  # the state is all there is: it survives the host
    total = jax.tree.map(jnp.add, total, acc)
  assert int(state.t) == len(segs)
  assert rel_err(total, expected) < TOL


# ------------------------------------------------------------------------- streaming driver


def _hand_loop(rule, opt, params, batches, every, synth_sgd=None):
  """The driver's semantics written out: step, (synthesiser SGD), accumulate, update, reset."""
  kw = {} if synth_sgd is None else {"synth_sgd": synth_sgd}
  step = jit(functools.partial(rule.step, **kw), static_argnames="last")
  update = jit(opt.update)
  opt_state = opt.init(params)
  acc = jax.tree.map(jnp.zeros_like, params)
  count, losses = 0, []
  for batch in batches:
    state = rule.init_state(params, B)
    w = bl.step_weights(batch.mask)
    for t in range(T):
      last = t == T - 1
      g, state, m = step(params, state, batch.x[t], batch.y[t], w[t], last=last)
      losses.append(float(m["loss"]))
      if synth_sgd is not None:
        params = {**params, "synth": {**params["synth"], "train": jax.tree.map(
            lambda p, d: p - synth_sgd * d, params["synth"]["train"], g["synth"]["train"])}}
        g = {**g, "synth": jax.tree.map(jnp.zeros_like, g["synth"])}
      acc = jax.tree.map(jnp.add, acc, g)
      count += 1
      if (every is not None and count >= every) or last:
        updates, opt_state = update(acc, opt_state, params)
        params = optax.apply_updates(params, updates)
        acc = jax.tree.map(jnp.zeros_like, acc)
        count = 0
  return params, np.asarray(losses)


@pytest.mark.parametrize("case,every,synth_sgd", [
    ("bp_eprop", 1, None),
    ("bp_state_immediate", 3, None),
    ("bp_eprop_faithful", None, 0.3),
    ("eprop", 2, None),
])
def test_streaming_driver_equals_hand_written_loop(case, every, synth_sgd):
  model, rule, params, batch = _setup(case, key=5)
  batches = [batch, random_batch(jax.random.key(9), T, B, D_IN, model.output_size,
                                 loss=RULES[case][1])]
  opt = bl.optimiser(1e-2, 1e-2, 0.0 if synth_sgd else 1e-2)
  expected, losses = _hand_loop(rule, opt, params, batches, every, synth_sgd)

  drv = bl.stream(rule, opt, every=every, synth_sgd=synth_sgd)
  run = jit(drv.run)
  state = drv.init(params, B)
  got_losses = []
  for b in batches:
    lasts = np.arange(T) == T - 1
    state, m = run(state, b.x, b.y, bl.step_weights(b.mask), lasts=lasts)
    got_losses.append(np.asarray(m["loss"]))
  assert rel_err(state.params, expected) < TOL
  np.testing.assert_allclose(np.concatenate(got_losses), losses, rtol=TOL)
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), state.params, params)
  assert min(jax.tree.leaves(moved["cell"])) > 0  # the updates happened
  updates_per_batch = 1 if every is None else -(-T // every)
  if every is None or T % every == 0 or every == 1:
    assert int(state.updates) == len(batches) * updates_per_batch
  assert int(state.rule_state.t) == 0  # a fresh state after each sequence's last step


def test_streaming_an_unbounded_sequence_updates_every_step():
  """No sequence end: the state is carried through every segment, the loss falls."""
  model = _model("lstm", "mse")
  rule = bl.eprop(model)
  params = rule.init(jax.random.key(0))
  drv = bl.stream(rule, optax.sgd(0.05), every=1)
  run = jit(drv.run)
  state = drv.init(params, 4)
  x = jnp.ones((20, 4, D_IN))
  y = jnp.full((20, 4, D_OUT), 0.5)
  w = jnp.ones((20, 4))
  first = last = None
  for _ in range(5):
    state, m = run(state, x, y, w)
    first = float(m["loss"][0]) if first is None else first
    last = float(m["loss"][-1])
  assert int(state.rule_state.t) == 100 and int(state.updates) == 100
  assert last < 0.5 * first


def test_stream_rejects_what_it_cannot_do():
  model = _model()
  with pytest.raises(ValueError, match="no step-level protocol"):
    bl.stream(bl.bptt(model), optax.sgd(0.1))
  with pytest.raises(ValueError, match="synth_sgd is per-step learning of a BP"):
    bl.stream(bl.eprop(model), optax.sgd(0.1), synth_sgd=0.1)
  with pytest.raises(ValueError, match="every must be None or a positive integer"):
    bl.stream(bl.eprop(model), optax.sgd(0.1), every=0)


@pytest.mark.parametrize("spec", ["bp_lambda", "eprop"])
def test_trace_dtype_keeps_float32_traces_for_a_bfloat16_model(spec):
  """A bfloat16 model with float32 traces: the state keeps its dtypes through steps, and the
  gradients are closer to the float64 ones than with bfloat16 traces."""
  model = bl.make_model("lstm", "mse", D_IN, D_OUT, hidden_size=H, param_dtype=jnp.bfloat16)
  options = {"flavour": "eprop", "gamma": 0.9} if spec == "bp_lambda" else {}
  rule16 = bl.make_rule(spec, model, **options)
  rule32 = bl.make_rule(spec, model, trace_dtype=jnp.float32, **options) if spec == "bp_lambda" \
      else bl.from_sensitivity(model, "eprop", trace_dtype=jnp.float32)
  params = rule16.init(jax.random.key(0))
  if "synth" in params:
    params["synth"]["train"] = jax.tree.map(
        lambda a: (0.2 * jax.random.normal(jax.random.key(1), a.shape)).astype(a.dtype),
        params["synth"]["train"])
  batch = random_batch(jax.random.key(2), 20, B, D_IN, D_OUT, dtype=jnp.float32)
  batch16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), batch)
  w = bl.step_weights(batch16.mask)

  def run(rule, params, batch, w):
    state0 = rule.init_state(params, B)

    def body(carry, inp):
      st, acc = carry
      x, y, m, last = inp
      g, st, _ = rule.step(params, st, x, y, m, last=last)
      return (st, jax.tree.map(lambda a, b: a + b.astype(a.dtype), acc, g)), None

    acc0 = jax.tree.map(lambda a: jnp.zeros(a.shape, jnp.float64), params)
    (state, acc), _ = jax.lax.scan(body, (state0, acc0), (batch.x, batch.y, w,
                                                         jnp.arange(20) == 19))
    return state0, state, acc

  s0, s32, g32 = jax.jit(lambda p, b, w: run(rule32, p, b, w))(params, batch16, w)
  chex.assert_trees_all_equal_dtypes(s32, s0)
  traces = [l for l in jax.tree.leaves(s32.sens) if jnp.issubdtype(l.dtype, jnp.floating)]
  if spec == "bp_lambda":  # the chunked trace's accumulated parts (its contexts are the model's)
    tr = s32.td.trace
    traces += [l for l in (tr.base, tr.inputs, tr.decays) if l is not None]
  assert traces and all(l.dtype == jnp.float32 for l in traces)
  _, _, g16 = jax.jit(lambda p, b, w: run(rule16, p, b, w))(params, batch16, w)
  p64 = jax.tree.map(lambda a: a.astype(jnp.float64), params)
  b64 = jax.tree.map(lambda a: a.astype(jnp.float64), batch16)
  model64 = bl.make_model("lstm", "mse", D_IN, D_OUT, hidden_size=H, param_dtype=jnp.float64)
  rule64 = bl.make_rule(spec, model64, **options)
  g64, _ = jit(rule64.grads)(p64, b64)
  group = "synth" if spec == "bp_lambda" else "cell"  # what the traced quantity feeds
  assert rel_err(g32[group], g64[group]) < rel_err(g16[group], g64[group])
