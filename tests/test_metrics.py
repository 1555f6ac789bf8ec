"""Gradient-alignment metrics: cosine conventions, alignment against exact BPTT, several rules."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bplambda_jax import Rule, bptt, dni, exact_gradients, make_model, tbptt
from bplambda_jax import experiments as metrics
from bplambda_jax.model import Batch
from bplambda_jax import internals

from helpers import random_batch

TOL = 1e-9
D_IN, D_OUT, B, T = 3, 2, 3, 6


@functools.lru_cache(maxsize=None)
def _model(cell):
  return make_model(cell, "mse", D_IN, D_OUT, hidden_size=4)


def _setup(cell, key):
  k1, k2 = jax.random.split(key)
  model = _model(cell)
  return model, model.init(k1), random_batch(k2, T, B, D_IN, D_OUT)


def _align(rule, params, batch, **kw):
  """metrics.alignment under jax.jit (one compilation instead of many eager dispatches)."""
  return jax.jit(lambda p, b: metrics.alignment(rule, p, b, **kw))(params, batch)


def _fake_rule(model, transform_grads, transform_ls):
  """A rule that returns a known transformation of the exact gradients and signals."""

  def grads(params, batch, hparams=None):
    loss, g, dl_ds = exact_gradients(model, params, batch)
    return transform_grads(g), {"loss": loss, "learning_signal": transform_ls(dl_ds)}

  return Rule("fake", model.init, grads, {}, "sequence")


# ------------------------------------------------------------------------------------ cosine


def test_cosine_conventions():
  a = jnp.array([1.0, 2.0, -3.0])
  orth = jnp.array([3.0, 0.0, 1.0])  # ⟨a, orth⟩ = 0
  assert abs(float(metrics.cosine(a, orth))) < 1e-15
  assert abs(float(metrics.cosine(a, -2.5 * a)) + 1.0) < 1e-15
  assert abs(float(metrics.cosine(a, 7.0 * a)) - 1.0) < 1e-15
  assert float(metrics.cosine(a, jnp.zeros(3))) == 0.0
  assert float(metrics.cosine(jnp.zeros(3), jnp.zeros(3))) == 0.0
  # a generic pair against the textbook formula
  b = jnp.array([0.5, -1.0, 2.0])
  expected = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
  assert abs(float(metrics.cosine(a, b)) - expected) < 1e-15
  # pytrees: all leaves flattened into one vector
  ta, tb = {"u": a[:2], "v": a[2:]}, {"u": b[:2], "v": b[2:]}
  assert abs(float(metrics.cosine(ta, tb)) - expected) < 1e-15
  # along an axis: one cosine per row
  rows = metrics.cosine(jnp.stack([a, a, a]), jnp.stack([orth, -a, b]), axis=-1)
  np.testing.assert_allclose(rows, [0.0, -1.0, expected], atol=1e-15)
  # a NaN or infinite input gives NaN (a diverged run is never reported as "no alignment")
  assert np.isnan(float(metrics.cosine(a.at[1].set(jnp.nan), b)))
  assert np.isnan(float(metrics.cosine(a, b.at[0].set(jnp.inf))))
  assert np.isnan(float(metrics.cosine(jnp.zeros(3).at[0].set(jnp.nan), jnp.zeros(3))))
  with pytest.raises(ValueError, match="same structure"):
    metrics.cosine({"u": a}, {"v": a})
  with pytest.raises(ValueError, match="equal shape"):
    metrics.cosine(a, a[:2], axis=0)


# --------------------------------------------------------------------------------- alignment


@pytest.mark.x64
@pytest.mark.parametrize("cell", ["linear", "lstm"])
def test_bptt_is_aligned_with_itself(cell):
  model, params, batch = _setup(cell, jax.random.key(1))
  res = _align(bptt(model), params, batch, model=model,
                          step_mask=jnp.ones((T, B)))
  leaves = {k for k in res if "/" in k}
  assert leaves == {f"cell/{k}" for k in params["cell"]} | {"readout/w", "readout/b"}
  for k in leaves | {"cell", "readout", "all", "learning_signal"}:
    assert abs(float(res[k]) - 1.0) < TOL, k
  # every (t, b) with a non-zero true signal counts (the last step always carries a loss)
  n_nonzero = int(jnp.sum(jnp.linalg.norm(exact_gradients(model, params, batch)[2], axis=-1) > 0))
  assert int(res["learning_signal_count"]) == n_nonzero and n_nonzero >= B
  np.testing.assert_allclose(res["learning_signal_per_step"], 1.0, atol=TOL)


@pytest.mark.x64
def test_alignment_of_known_transformations():
  """Negated, zeroed and partially zeroed estimates give −1, 0 and the exact partial cosine."""
  model, params, batch = _setup("lstm", jax.random.key(2))
  H = model.cell.hidden_size

  def neg_cell(g):
    return {"cell": jax.tree.map(jnp.negative, g["cell"]), "readout": g["readout"]}

  def zero_readout_b(g):
    return {"cell": g["cell"], "readout": {"w": g["readout"]["w"],
                                           "b": jnp.zeros_like(g["readout"]["b"])}}

  res = _align(_fake_rule(model, neg_cell, lambda s: -s), params, batch, model=model)
  for k in ("cell", "cell/w_ih", "cell/w_hh", "cell/b", "learning_signal"):
    assert abs(float(res[k]) + 1.0) < TOL, k
  assert abs(float(res["readout"]) - 1.0) < TOL
  _, g, dl_ds = jax.jit(lambda p, b: exact_gradients(model, p, b))(params, batch)
  n_cell = sum(float(jnp.sum(l ** 2)) for l in jax.tree.leaves(g["cell"]))
  n_read = sum(float(jnp.sum(l ** 2)) for l in jax.tree.leaves(g["readout"]))
  assert abs(float(res["all"]) - (n_read - n_cell) / (n_read + n_cell)) < TOL

  # signal on h only: 'hidden' coordinates see a perfect match, 'state' coordinates do not
  keep_h = lambda s: s.at[..., H:].set(0.0)
  rule = _fake_rule(model, zero_readout_b, keep_h)
  res_s, res_h = jax.jit(lambda p, b: tuple(
      metrics.alignment(rule, p, b, model=model, step_mask=jnp.ones(T), coords=c)
      for c in ("state", "hidden")))(params, batch)
  assert float(res_s["readout/b"]) == 0.0 and abs(float(res_s["readout/w"]) - 1.0) < TOL
  assert abs(float(res_h["learning_signal"]) - 1.0) < TOL
  cos = np.linalg.norm(dl_ds[..., :H], axis=-1) / np.linalg.norm(dl_ds, axis=-1)  # [T, B]
  valid = np.linalg.norm(dl_ds, axis=-1) > 0
  assert abs(float(res_s["learning_signal"]) - cos[valid].mean()) < TOL
  assert float(res_s["learning_signal"]) < 0.999
  with pytest.raises(ValueError, match="coords"):
    _align(rule, params, batch, model=model, coords="c")
  with pytest.raises(ValueError, match="step_mask"):
    _align(rule, params, batch, model=model, step_mask=jnp.ones((T, B + 1)))


def test_alignment_undefined_when_truth_is_zero():
  model, params, batch = _setup("linear", jax.random.key(3))
  batch = batch._replace(mask=jnp.zeros((T, B)))  # no loss anywhere: the exact gradient is 0
  res = _align(bptt(model), params, batch, model=model)
  for k in ("cell", "readout", "all", "cell/w_hh", "learning_signal"):
    assert np.isnan(float(res[k])), k
  assert float(res["learning_signal_count"]) == 0.0


@pytest.mark.x64
def test_alignment_is_jittable():
  """One compilation serves new data and a traced step mask."""
  model, params, batch = _setup("lstm", jax.random.key(4))
  rule = tbptt(model, 2)
  traces = []

  @jax.jit
  def f(p, b, m):
    traces.append(1)
    return metrics.alignment(rule, p, b, model=model, step_mask=m)

  res = f(params, batch, internals.default_step_mask(T, B))
  _, params2, batch2 = _setup("lstm", jax.random.key(40))
  res_all = f(params2, batch2, jnp.ones((T, B)))
  assert len(traces) == 1
  assert all(jnp.shape(v) == () for k, v in res.items() if k != "learning_signal_per_step")
  assert 0.0 < float(res["cell"]) < 0.9999  # truncation at n = 2 is visibly inexact here
  # with every step selected, the last (immediate, hence exact) step enters the mean
  assert abs(float(res_all["learning_signal_per_step"][T - 1]) - 1.0) < TOL
  assert float(res_all["learning_signal_count"]) == T * B


@pytest.mark.x64
def test_truncation_misaligns_on_a_long_dependency():
  """Linear RNN, input at t = 0 only, loss at t = T−1 only (the toy task's structure).

  tbptt(n) carries no signal to the steps before the last chunk, so the learning-signal alignment
  over t < T−1 is exactly (n−1)/(T−1); for n < T no chunk links x_0 to the loss, so the input-weight
  gradient is zero (cosine 0) and the cell gradient is misaligned, more so for n = 1; tbptt(T) is
  exact.
  """
  model = _model("linear")
  params = model.init(jax.random.key(5))
  x = jnp.zeros((T, B, D_IN)).at[0].set(jax.random.normal(jax.random.key(6), (B, D_IN)))
  y = jax.random.normal(jax.random.key(7), (T, B, D_OUT))
  batch = Batch(x, y, jnp.zeros((T, B)).at[T - 1].set(1.0))
  res = {n: _align(tbptt(model, n), params, batch, model=model) for n in (1, 3, T)}
  for n in (1, 3, T):
    assert abs(float(res[n]["learning_signal"]) - (n - 1) / (T - 1)) < TOL, n
    assert abs(float(res[n]["readout"]) - 1.0) < TOL  # the readout gradient is exact
  assert float(res[1]["cell/w_ih"]) == 0.0 and float(res[3]["cell/w_ih"]) == 0.0
  assert float(res[1]["cell"]) < 0.95
  assert float(res[1]["cell"]) < float(res[3]["cell"]) < 1.0 - 1e-6
  assert abs(float(res[T]["cell"]) - 1.0) < TOL
  np.testing.assert_allclose(res[3]["learning_signal_per_step"][:T - 1],
                             [0.0, 0.0, 0.0, 1.0, 1.0], atol=TOL)


def test_alignment_of_several_rules():
  """Several rules on one batch, each through ``alignment`` (the removed alignment_table's rows)."""
  model, params, batch = _setup("tanh", jax.random.key(8))
  rule_dni = dni(model, n=2)
  params = dict(params, synth=rule_dni.init(jax.random.key(0))["synth"])
  rules = {"bptt": bptt(model), "tbptt(1)": tbptt(model, 1), "dni(2)": rule_dni}
  hparams_by_rule = {"dni(2)": {"sg_scale": 0.5}}
  rows = []
  for name, rule in rules.items():
    res = jax.jit(lambda p, b, hp, rule=rule: metrics.alignment(rule, p, b, hp, model=model))(
        params, batch, hparams_by_rule.get(name))
    rows.append({"rule": name, **{k: float(np.asarray(v)) for k, v in res.items()
                                  if k != "learning_signal_per_step"}})
  assert [r["rule"] for r in rows] == list(rules)
  assert all(isinstance(v, float) for r in rows for k, v in r.items() if k != "rule")
  assert abs(rows[0]["cell"] - 1.0) < TOL and rows[1]["cell"] < 1.0 - 1e-6
  assert 0.0 < rows[1]["learning_signal"] < 1.0 - 1e-6  # tbptt(1): immediate signals only
