"""Every rule in the registry, the way users run it (optax's float64_test, with chex variants).

For every rule spec, with and without ``jit`` (``chex.variants``), in float32 and float64:
``grads`` and ``step`` return gradients with the parameters' tree structure and dtypes, finite, and
equal to the jitted reference; the step state keeps ``init_state``'s structure and dtypes. Then
every rule once more in float32 with XLA's default optimisations (the test session otherwise turns
them off), against its own float64 gradient.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import bplambda_jax as bl

from helpers import random_batch, rel_err

T, B, D_IN, D_OUT, H = 5, 2, 3, 2, 3

# one spec per registry name (with a small argument), on the cell each is meant for
SPECS = {
    "bptt": ("lstm", "bptt", {}),
    "tbptt:2": ("lstm", "tbptt:2", {}),
    "dni:2": ("gru", "dni:2", {}),
    "bp_lambda": ("lstm", "bp_lambda", {}),
    "bp_lambda_state": ("tanh", "bp_lambda", {}),
    "bp_lambda_sequence": ("lstm", "bp_lambda", {"mode": "sequence"}),
    "rtrl": ("gru", "rtrl", {}),
    "eprop": ("lstm", "eprop", {}),
    "snap:2": ("tanh", "snap:2", {}),
    "columnar_rtrl": ("columnar_lstm", "columnar_rtrl", {}),
    "eprop_m:1": ("lstm", "eprop_m:1", {}),
}


def test_the_sweep_covers_every_registry_name():
  covered = {bl.rules.parse_rule_spec(spec)[0] for _, spec, _ in SPECS.values()}
  assert covered == {name.split(":")[0] for name in bl.RULE_NAMES}


def _setup(case, dtype):
  cell, spec, options = SPECS[case]
  model = bl.make_model(cell, "mse", D_IN, D_OUT, hidden_size=H, param_dtype=dtype)
  rule = bl.make_rule(spec, model, **options)
  params = rule.init(jax.random.key(0))
  if "synth" in params:
    params["synth"]["train"] = jax.tree.map(
        lambda a: (0.1 * jax.random.normal(jax.random.key(1), a.shape)).astype(a.dtype),
        params["synth"]["train"])
  batch = random_batch(jax.random.key(2), T, B, D_IN, D_OUT, dtype=dtype)
  return model, rule, params, batch._replace(mask=batch.mask.astype(dtype))


class RuleSweepTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(case=sorted(SPECS), dtype=("float32", "float64"))
  def test_grads_keep_structure_and_dtype(self, case, dtype):
    model, rule, params, batch = _setup(case, jnp.dtype(dtype))
    grads, aux = self.variant(rule.grads)(params, batch)
    chex.assert_trees_all_equal_structs(grads, params)
    chex.assert_trees_all_equal_dtypes(grads, params)
    chex.assert_tree_all_finite(grads)
    assert aux["learning_signal"].shape == (T, B, model.cell.state_size)
    reference = jax.jit(rule.grads)(params, batch)[0]
    tol = 1e-12 if dtype == "float64" else 1e-5
    chex.assert_trees_all_close(grads, reference, rtol=tol, atol=tol)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(case=sorted(set(SPECS) - {"bptt"}), dtype=("float32", "float64"))
  def test_step_keeps_state_structure_and_dtype(self, case, dtype):
    _, rule, params, batch = _setup(case, jnp.dtype(dtype))
    state = rule.init_state(params, B)
    n = rule.chunk or 1
    step = self.variant(lambda p, s, x, y, m: rule.step(p, s, x, y, m))
    xs = (batch.x[:n], batch.y[:n], batch.mask[:n]) if rule.chunk else (batch.x[0], batch.y[0],
                                                                         batch.mask[0])
    grads, new, metrics = step(params, state, *xs)
    chex.assert_trees_all_equal_structs(new, state)
    chex.assert_trees_all_equal_dtypes(new, state)
    chex.assert_trees_all_equal_structs(grads, params)
    chex.assert_trees_all_equal_dtypes(grads, params)
    chex.assert_tree_all_finite((grads, metrics))
    assert int(new.t) == 1


@pytest.fixture
def optimised_xla():
  """XLA's default optimisations for one test (the session turns most of them off)."""
  jax.config.update("jax_disable_most_optimizations", False)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", True)


@pytest.mark.parametrize("case", sorted(SPECS))
def test_float32_with_default_optimisations_matches_float64(case, optimised_xla):
  _, rule32, params32, batch32 = _setup(case, jnp.float32)
  _, rule64, _, _ = _setup(case, jnp.float64)
  params64 = jax.tree.map(lambda a: a.astype(jnp.float64), params32)  # the same numbers
  batch64 = jax.tree.map(lambda a: a.astype(jnp.float64), batch32)
  g32, aux32 = jax.jit(rule32.grads)(params32, batch32)
  g64, _ = jax.jit(rule64.grads)(params64, batch64)
  chex.assert_trees_all_equal_dtypes(g32, params32)
  assert rel_err(jax.tree.map(lambda a: a.astype(jnp.float64), g32), g64) < 1e-4
  assert np.isfinite(float(aux32["loss"]))
