"""Finite divergence is detected: the overflow-free cosine and the configurable growth limits.

All in float32 (the precision where the cosine used to overflow).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bplambda_jax import rules
from bplambda_jax import tasks
from bplambda_jax import training
from bplambda_jax.experiments import cosine


def _reference(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("scale_a, scale_b", [(1.0, 1.0), (1e30, 1.0), (1e-30, 1e25),
                                              (3e38, 1e-30), (1e20, 1e20)])
def test_cosine_does_not_overflow_or_underflow(scale_a, scale_b):
  """‖a‖·‖b‖ overflowing float32 made the cosine 0; it is now the cosine, to float32 rounding."""
  rng = np.random.default_rng(0)
  a, b = rng.standard_normal(7), rng.standard_normal(7)
  expected = _reference(a, b)
  fa = jnp.asarray(a / np.abs(a).max() * scale_a, jnp.float32)
  fb = jnp.asarray(b / np.abs(b).max() * scale_b, jnp.float32)
  for fn in (cosine, jax.jit(cosine)):
    np.testing.assert_allclose(float(fn(fa, fb)), expected, rtol=1e-5, atol=1e-6)
  batched = jax.jit(lambda x, y: cosine(x, y, axis=-1))(jnp.stack([fa, -fa]), jnp.stack([fb, fb]))
  np.testing.assert_allclose(np.asarray(batched), [expected, -expected], rtol=1e-5, atol=1e-6)


def test_cosine_nan_when_undefined_and_zero_for_zero_vectors():
  one = jnp.ones(3, jnp.float32)
  assert np.isnan(float(cosine(one.at[0].set(jnp.inf), one)))
  assert np.isnan(float(cosine(one, one.at[1].set(jnp.nan))))
  assert float(cosine(jnp.zeros(3, jnp.float32), one)) == 0.0
  assert np.isnan(float(jax.jit(cosine)(jnp.full(3, jnp.inf, jnp.float32), one)))


def _toy(lr_synth):
  model = tasks.toy_model(8)
  rule = rules.bp_lambda(model, mode="sequence")
  return rule, training.optimiser(0.0, 0.0, lr_synth), tasks.toy_batch(2, 5)


def test_divergence_limits_are_configurable_and_can_be_turned_off():
  rule, opt, batch = _toy(1e-2)
  data = lambda k, s: batch
  # A learning rate of 10 moves ĝ's zero-initialised weights by about 10 at the first update:
  # past a limit of 5 (above every initial parameter), so update 2, which starts there, stops.
  rule, opt, batch = _toy(10.0)
  start = training.init_state(rule, opt, jax.random.key(0))
  assert float(jnp.max(jnp.abs(start.params["cell"]["w_hh"]))) < 5
  tight = training.Divergence(max_loss=1e8, max_param=5.0)
  with pytest.raises(training.GuardError, match=r"divergence: .* update 2:") as e:
    training.run(rule, opt, data, jax.random.key(0), 4, divergence=tight)
  assert e.value.code == 10 and e.value.index == (1,)
  assert float(jnp.max(jnp.abs(e.value.state.params["synth"]["train"]["w"]))) > 5
  # The loss limit alone.
  with pytest.raises(training.GuardError, match="divergence"):
    training.run(rule, opt, data, jax.random.key(0), 2,
                 divergence=training.Divergence(max_loss=1e-9))
  # The defaults let this run through; None turns the limits off even for a blown-up run.
  training.run(rule, opt, data, jax.random.key(0), 4)
  rule, opt, batch = _toy(1e30)
  _, m = training.run(rule, opt, lambda k, s: batch, jax.random.key(0), 3, divergence=None)
  assert np.asarray(m["guard"]).tolist() == [0, 0, 0]


@pytest.mark.parametrize("bad", [training.Divergence(max_loss=0.0), training.Divergence(
    max_param=float("inf")), training.Divergence(max_param=True), (1e8, 1e6)])
def test_divergence_limits_checked(bad):
  rule, opt, _ = _toy(1e-2)
  with pytest.raises(ValueError, match=r"Divergence|divergence must be"):
    training.make_update(rule, opt, divergence=bad)


def test_stream_and_sweep_stop_on_divergence():
  rule, opt, batch = _toy(1e30)
  drv = training.stream(rule, opt)
  state = drv.init(rule.init(jax.random.key(0)), 2)
  twice = lambda a: jnp.concatenate([a, a])  # two sequences: ĝ first learns at the first's end
  lasts = jnp.arange(10) % 5 == 4
  with pytest.raises(training.GuardError, match=r"divergence: .* at rule 'bp_lambda', update 6:"):
    drv.run(state, twice(batch.x), twice(batch.y), twice(batch.mask), lasts=lasts)
  keys = jax.random.split(jax.random.key(0), 2)
  with pytest.raises(training.GuardError, match=r"divergence: .* seed 0, update 2:"):
    training.sweep(rule, opt, lambda k, s: batch, keys, 3)
