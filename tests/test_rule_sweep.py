"""Every rule in the registry, the way users run it (optax's float64_test, with chex variants).

For every rule spec, with and without ``jit`` (``chex.variants``), in float32 and float64:
``grads`` and ``step`` return gradients with the parameters' tree structure and dtypes, finite, and
equal to the rule's independent oracle (tests/rule_oracles.py, computed in float64 from the same
numbers); the step state keeps ``init_state``'s structure and dtypes. The float32 lane
(tests/test_float32_lane.py) runs the same specs and oracles with XLA's default optimisations and
without x64.
"""

import functools
import inspect

import chex
import jax
import jax.numpy as jnp
import pytest
from absl.testing import parameterized

import bplambda_jax as bl

import rule_oracles as ro
from helpers import jit as _jit, random_batch, rel_err

pytestmark = pytest.mark.x64  # float64 oracles

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


# the oracle of each spec (keyword arguments: the rule's options the oracle needs)
ORACLES = {
    "bptt": ro.exact,
    "tbptt:2": functools.partial(ro.tbptt, n=2),
    "dni:2": functools.partial(ro.dni, n=2),
    "bp_lambda": ro.bp_lambda_eprop,  # λ = γ = 1 (the defaults), e-prop flavour and sensitivity
    "bp_lambda_state": ro.bp_lambda_state,
    "bp_lambda_sequence": ro.bp_lambda_eprop,
    "rtrl": ro.exact,
    "eprop": functools.partial(ro.eprop_m, m=0),
    "snap:2": ro.exact,  # a dense RNN: SnAp-2's pattern is full
    "columnar_rtrl": ro.exact,  # independent columns
    "eprop_m:1": functools.partial(ro.eprop_m, m=1),
}


def oracle(case, model, params, batch):
  """The spec's oracle gradient (same structure as ``rule.grads``' first output)."""
  return ORACLES[case](model, params, batch, synthesiser=bl.linear_synthesiser())


def test_the_sweep_covers_every_registry_name():
  covered = {bl.rules.parse_rule_spec(spec)[0] for _, spec, _ in SPECS.values()}
  assert covered == {name.split(":")[0] for name in bl.RULE_NAMES}


@functools.lru_cache(maxsize=None)
def _oracle64(case, dtype):
  """The spec's oracle in float64 on the numbers of its ``dtype`` set-up (compiled once)."""
  _, _, params, batch = _setup(case, jnp.dtype(dtype))
  model64 = _setup(case, jnp.float64)[0]
  return jax.device_get(_jit(lambda p, b: oracle(case, model64, p, b))(_as64(params),
                                                                        _as64(batch)))


def _as64(tree):
  return jax.tree.map(lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating)
                      else a, tree)


def _factory_options(spec):
  """The public factory's parameters after the model, less the spec's argument ('n' of 'snap:n')."""
  name = bl.rules.parse_rule_spec(spec).name
  arg = {n.split(":")[0]: n.split(":")[1] for n in bl.RULE_NAMES if ":" in n}.get(name)
  params = list(inspect.signature(getattr(bl.rules, name)).parameters.values())[1:]
  return [p for p in params if p.name != arg]


@pytest.mark.parametrize("case", sorted(SPECS))
def test_every_factory_option_is_reachable_by_name(case):
  """make_rule takes exactly the keyword options of the public factory of the same name, each one
  passed through (here at its default: the same rule as without it)."""
  cell, spec, _ = SPECS[case]
  options = _factory_options(spec)
  assert list(bl.rules.rule_options(spec)) == [p.name for p in options]
  model = bl.make_model(cell, "mse", D_IN, D_OUT, hidden_size=H)
  plain = bl.make_rule(spec, model)
  for p in options:
    assert p.default is not inspect.Parameter.empty, f"{spec}: option {p.name} has no default"
    rule = bl.make_rule(spec, model, **{p.name: p.default})
    assert (rule.name, rule.mode, rule.chunk, dict(rule.hparams)) == (
        plain.name, plain.mode, plain.chunk, dict(plain.hparams)), (spec, p.name)


@pytest.mark.parametrize("case", sorted(SPECS))
def test_traced_hyper_parameters_are_declared_and_reach_the_rule(case):
  """Every float option of a factory is a declared (traced) hyper-parameter in ``rule.hparams``;
  every declared one is a factory option whose value, given through make_rule, becomes the
  rule's default, and which changes the gradient when given at call time in ``hparams``."""
  _, spec, options = SPECS[case]
  floats = {p.name for p in _factory_options(spec) if isinstance(p.default, float)}
  model, rule, params, batch = _setup(case, jnp.float32)
  undeclared = floats - set(rule.hparams)
  assert not undeclared, f"{spec}: float options not in rule.hparams: {undeclared}"
  assert set(rule.hparams) <= set(bl.rules.rule_options(spec))
  if not rule.hparams:
    return
  if "mode" in bl.rules.rule_options(spec):  # the same numbers as online, and a faster compile
    rule = bl.make_rule(spec, model, **{**options, "mode": "sequence"})
  grads = jax.jit(rule.grads)
  default = grads(params, batch, dict(rule.hparams))[0]
  for key in rule.hparams:
    value = 0.5 * rule.hparams[key] or 0.5  # inside every range: λ, γ in [0, 1], sg_scale >= 0
    assert bl.make_rule(spec, model, **options, **{key: value}).hparams[key] == value
    changed = grads(params, batch, {**rule.hparams, key: value})[0]
    assert rel_err(changed, default) > 1e-4, f"{spec}: hyper-parameter {key} changes nothing"


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
  def test_grads_equal_oracle_and_keep_structure_and_dtype(self, case, dtype):
    model, rule, params, batch = _setup(case, jnp.dtype(dtype))
    grads, aux = self.variant(rule.grads)(params, batch)
    chex.assert_trees_all_equal_structs(grads, params)
    chex.assert_trees_all_equal_dtypes(grads, params)
    chex.assert_tree_all_finite(grads)
    assert aux["learning_signal"].shape == (T, B, model.cell.state_size)
    reference = _oracle64(case, dtype)
    err = rel_err(_as64(grads), reference)
    assert err < (1e-10 if dtype == "float64" else 1e-5), err

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
