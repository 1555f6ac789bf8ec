"""The default Python path is checked: every driver guards by default, raises outside jit, and
reports through metrics['guard'] and raise_if_failed under jit; checked=False opts out."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bplambda_jax as bl
from bplambda_jax import _validation
from bplambda_jax import rules
from bplambda_jax import training
from bplambda_jax.model import Batch, make_model


def _setup(loss="mse", rule=rules.bptt):
  model = make_model("tanh", loss, 3, 2, 4)
  rule = rule(model)
  opt = training.optimiser(1e-2, 1e-2)
  x = jax.random.normal(jax.random.key(1), (5, 2, 3))
  y = jnp.zeros((5, 2), jnp.int32) if loss == "ce" else jnp.full((5, 2, 2), 0.5)
  return rule, opt, Batch(x, y, jnp.ones((5, 2)))


@pytest.mark.slow  # an un-jitted update compiles every operation on its own
def test_eager_update_raises_with_the_last_good_state():
  rule, opt, batch = _setup()
  rule = rule._replace(grads=jax.jit(rule.grads))  # the update runs eagerly, its grads compiled
  state = jax.jit(lambda k: training.init_state(rule, opt, k))(jax.random.key(0))
  update = training.make_update(rule, opt)
  new, m = update(state, batch)  # all is well: no error, a guard of 0
  assert int(m["guard"]) == 0 and int(new.step) == 1
  # Concrete data are validated before anything runs (a ValueError); what only the update can
  # see, here a loss past a divergence limit, raises GuardError.
  strict = training.make_update(rule, opt, divergence=training.Divergence(max_loss=1e-9))
  with pytest.raises(training.GuardError, match=r"divergence: .* at rule 'bptt'") as e:
    strict(new, batch)
  assert e.value.code == 10 and int(e.value.state.step) == 1  # the update was skipped
  eprop = rules.eprop(rule.model)
  strict = training.stream(eprop, opt, divergence=training.Divergence(max_loss=1e-9))
  with pytest.raises(training.GuardError, match="divergence"):  # an eager stream step too
    strict.step(strict.init(eprop.init(jax.random.key(0)), 2), batch.x[4], batch.y[4],
                batch.mask[4])


def test_jitted_drivers_report_through_raise_if_failed():
  rule, opt, batch = _setup()
  bad = batch._replace(y=batch.y.at[4, 1, 0].set(jnp.nan))
  nan_y = lambda key, s: batch._replace(y=jnp.where(s >= 1, bad.y, batch.y))  # traced: on device
  _, m = jax.jit(lambda k: training.run(rule, opt, nan_y, k, 3))(jax.random.key(0))
  assert np.asarray(m["guard"]).tolist() == [0, 2, 2]
  with pytest.raises(training.GuardError, match=r"Found at metrics\['guard'\]\[1\]"):
    training.raise_if_failed(m)
  rule = rules.eprop(rule.model)
  drv = training.stream(rule, opt)
  s = drv.init(rule.init(jax.random.key(0)), 2)
  s, _ = jax.jit(drv.step)(s, bad.x[4], bad.y[4], bad.mask[4])
  with pytest.raises(training.GuardError, match="non-finite targets"):
    training.raise_if_failed(s)  # a StreamState works too
  training.raise_if_failed({"guard": jnp.zeros((2, 3), jnp.int32)})  # nothing failed


def test_checked_false_opts_out():
  rule, opt, batch = _setup()
  nan_x = lambda k, s: batch._replace(x=jnp.where(s >= 0, jnp.nan, batch.x))  # traced
  state, m = training.run(rule, opt, nan_x, jax.random.key(0), 2, checked=False)
  assert "guard" not in m and not np.isfinite(np.asarray(m["loss"])).any()
  with pytest.raises(ValueError, match="checked must be True or False"):
    training.make_update(rule, opt, checked="yes")


def test_bce_targets_in_unit_interval_pass():
  """Targets on the boundary of [0, 1] are valid; only values outside are code 9."""
  rule, opt, batch = _setup("bce")
  ok = batch._replace(y=jnp.concatenate([jnp.zeros((5, 2, 1)), jnp.ones((5, 2, 1))], -1))
  _, m = training.run(rule, opt, lambda k, s: ok, jax.random.key(0), 2)
  assert np.asarray(m["guard"]).tolist() == [0, 0]
  update = jax.jit(training.make_update(rule, opt))
  state = training.init_state(rule, opt, jax.random.key(0))
  for value, code in ((-0.01, 9), (1.01, 9), (jnp.nan, 2), (jnp.inf, 2)):
    _, m = update(state, ok._replace(y=ok.y.at[2, 1, 0].set(value)))
    assert int(m["guard"]) == code, value


def test_validation_module():
  assert _validation.integer("n", np.int64(5), minimum=1) == 5
  assert _validation.integer("n", jnp.asarray(3), minimum=1) == 3
  assert _validation.number("lr", np.float32(0.5), minimum=0) == 0.5
  for bad in (True, np.bool_(True), 2.0, "3", jnp.arange(2)):
    with pytest.raises(ValueError, match="n must be a positive integer"):
      _validation.integer("n", bad, minimum=1)
  for bad in (False, float("nan"), -1.0, "x", None):
    with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
      _validation.number("lr", bad, minimum=0)
  with pytest.raises(ValueError, match="a traced value"):
    jax.jit(lambda v: _validation.number("lr", v, minimum=0))(1.0)
  with pytest.raises(ValueError, match="checked must be True or False, got 1"):
    _validation.flag("checked", 1)
  with pytest.raises(ValueError, match="num_steps must be a positive integer, got True"):
    bl.run(*_setup()[:2], lambda k, s: None, jax.random.key(0), True)
