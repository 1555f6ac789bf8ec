"""The float32 lane: every rule as users run it, against its oracle at float32 tolerance.

No x64 (JAX's default float32 everywhere, as for users) and XLA's default optimisations (the
``xla_default`` marker; the rest of the test session turns most of them off, see conftest.py).
Each spec of the rule sweep runs ``jax.jit(rule.grads)`` on float32 parameters and data, and is
compared with its independent oracle (tests/rule_oracles.py), also in float32 (compiled without
XLA's backend optimisation, which only costs time there), to a relative error of 1e-4 over all
gradient leaves.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import jit as _jit, rel_err
from test_rule_sweep import SPECS, T, B, _setup, oracle

pytestmark = pytest.mark.xla_default

TOL32 = 1e-4


@pytest.mark.parametrize("case", sorted(SPECS))
def test_float32_rule_matches_its_oracle(case):
  assert not jax.config.jax_enable_x64
  model, rule, params, batch = _setup(case, jnp.float32)
  chex.assert_trees_all_equal_dtypes(params, jax.tree.map(lambda a: a.astype(jnp.float32),
                                                          params))
  grads, aux = jax.jit(rule.grads)(params, batch)
  want = _jit(lambda p, b: oracle(case, model, p, b))(params, batch)  # XLA backend level 0
  chex.assert_trees_all_equal_dtypes(grads, params)
  chex.assert_tree_all_finite(grads)
  assert aux["learning_signal"].shape == (T, B, model.cell.state_size)
  assert np.isfinite(float(aux["loss"]))
  err = rel_err(grads, want)
  assert err < TOL32, err
