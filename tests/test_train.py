"""Training loop: seed vmap equals a loop over seeds, jit equals eager, optimiser groups, streaming
with per-step synthesiser SGD, checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bplambda_jax as bl
from bplambda_jax import tasks
from bplambda_jax import training as train
from bplambda_jax import internals
from helpers import random_batch, rel_err, step_loop


def _setup(mode="online", cell="tanh", flavour="state"):
  model = bl.make_model(cell, "bce", 10, 9, hidden_size=4)
  rule = bl.bp_lambda(model, lambda_=0.7, gamma=0.9, flavour=flavour, mode=mode, sg_scale=0.5)
  opt = train.optimiser(1e-2, 1e-2, 1e-2)
  return model, rule, opt


def _data(key, step):
  del step
  return tasks.copy_repeat_batch(key, 2, 1, 3, 8)


@pytest.mark.x64
def test_vmap_over_seeds_equals_loop():
  _, rule, opt = _setup("online", "lstm", "eprop")
  keys = jax.random.split(jax.random.key(3), 4)
  run = lambda k: train.run(rule, opt, _data, k, 3)
  vm_state, vm_metrics = jax.jit(jax.vmap(run))(keys)
  for i, k in enumerate(keys):
    st, m = jax.jit(run)(k)
    assert rel_err(jax.tree.map(lambda a: a[i], vm_state.params), st.params) < 1e-12
    np.testing.assert_allclose(vm_metrics["loss"][i], m["loss"], rtol=1e-12)
  # Different seeds really are different runs.
  assert rel_err(jax.tree.map(lambda a: a[0], vm_state.params),
                 jax.tree.map(lambda a: a[1], vm_state.params)) > 1e-3


@pytest.mark.x64
def test_jit_equals_eager_and_compiles_once():
  _, rule, opt = _setup("sequence")
  state = train.init_state(rule, opt, jax.random.key(0))
  update = train.make_update(rule, opt)
  traces = []

  def counted(st, b):
    traces.append(1)
    return update(st, b)

  jitted = jax.jit(counted)
  eager_state, jit_state = state, state
  for i in range(3):
    batch = _data(jax.random.key(10 + i), i)
    eager_state, m_e = update(eager_state, batch)
    jit_state, m_j = jitted(jit_state, batch)
    np.testing.assert_allclose(m_e["loss"], m_j["loss"], rtol=1e-10)
  assert rel_err(jit_state.params, eager_state.params) < 1e-10
  assert len(traces) == 1
  assert int(jit_state.step) == 3


@pytest.mark.x64
def test_groups_get_their_own_learning_rate():
  model, rule, _ = _setup()
  opt = train.optimiser(0.0, 1e-2, 0.0)
  state = train.init_state(rule, opt, jax.random.key(0))
  new, _ = jax.jit(train.make_update(rule, opt))(state, _data(jax.random.key(1), 0))
  assert rel_err(new.params["cell"], state.params["cell"]) == 0.0
  assert rel_err(new.params["synth"], state.params["synth"]) == 0.0
  assert rel_err(new.params["readout"], state.params["readout"]) > 0.0


@pytest.mark.x64
def test_adam_matches_reference_settings():
  # Adam(0.9, 0.98, eps 1e-9 added to sqrt(v_hat)): first step is lr·g/(|g| + eps).
  opt = internals.adam(0.1)
  g = jnp.array([2.0, -3.0])
  upd, _ = opt.update(g, opt.init(g))
  np.testing.assert_allclose(upd, -0.1 * g / (jnp.abs(g) + 1e-9), rtol=1e-12)


def test_stream_with_synth_sgd_equals_a_loop_over_steps():
  """stream(every=None, synth_sgd=α): per-step SGD on ĝ inside the sequence (the authors'
  alpha_learning), one optimiser update of the other groups at its last step; the same numbers as
  a hand-written loop over rule.step."""
  alpha = 0.5
  model = bl.make_model("linear", "mse", 3, 2, hidden_size=4)
  rule = bl.bp_lambda(model)
  opt = train.optimiser(1e-2, 1e-2, 1e-2)
  params = rule.init(jax.random.key(0))
  batch = random_batch(jax.random.key(1), 5, 2, 3, 2)
  T, B = batch.x.shape[:2]
  drv = train.stream(rule, opt, every=None, synth_sgd=alpha)
  state = drv.init(params, B)
  lasts = jnp.arange(T) == T - 1
  new, metrics = jax.jit(lambda st: drv.run(st, batch.x, batch.y, bl.step_weights(batch.mask),
                                            lasts=lasts))(state)
  want = step_loop(rule, params, batch, synth_sgd=alpha)
  # The synthesiser followed per-step SGD (the optimiser's synth group saw zero gradients) ...
  assert rel_err(new.params["synth"], want["synth_params"]) < 1e-14
  assert rel_err(new.params["synth"], params["synth"]) > 0.0
  # ... and the other groups got one optimiser update with the summed step gradients.
  acc = {"cell": want["cell"], "readout": want["readout"],
         "synth": jax.tree.map(jnp.zeros_like, params["synth"])}
  upd, _ = opt.update(acc, opt.init(params), params)
  expected = optax.apply_updates(params, upd)
  for group in ("cell", "readout"):
    assert rel_err(new.params[group], expected[group]) < 1e-14, group
    assert rel_err(new.params[group], params[group]) > 0.0, group
  assert int(new.updates) == 1 and int(new.step) == T and int(new.count) == 0
  assert rel_err(metrics["learning_signal"], want["learning_signal"]) < 1e-14
  with pytest.raises(ValueError, match="synth_sgd"):
    train.stream(bl.rtrl(model), opt, synth_sgd=alpha)  # no synthesiser
  with pytest.raises(ValueError, match="synth_sgd must be a finite number >= 0"):
    train.stream(rule, opt, synth_sgd=-1.0)


def test_checkpoint_resume_gives_identical_numbers(tmp_path):
  _, rule, opt = _setup()
  key = jax.random.key(7)
  full_state, full_m = jax.jit(lambda k: train.run(rule, opt, _data, k, 6))(key)
  half_state, _ = jax.jit(lambda k: train.run(rule, opt, _data, k, 3))(key)
  path = str(tmp_path / "ckpt.msgpack")
  train.save_checkpoint(path, half_state)
  restored = train.load_checkpoint(path, half_state)
  resumed, m2 = jax.jit(lambda k, s: train.run(rule, opt, _data, k, 3, state=s))(key, restored)
  assert rel_err(resumed.params, full_state.params) == 0.0
  np.testing.assert_array_equal(m2["loss"], full_m["loss"][3:])


def test_bad_learning_rates_and_steps():
  with pytest.raises(ValueError, match="lr_cell"):
    train.optimiser(-1.0, 0.0)
  _, rule, opt = _setup()
  with pytest.raises(ValueError, match="num_steps"):
    train.run(rule, opt, _data, jax.random.key(0), 0)
