"""The public surface: every name imports, ``__all__`` is complete, no module is shadowed."""

import importlib
import pathlib
import pkgutil
import types

import jax
import pytest

import bplambda_jax as bl

PACKAGES = ["bplambda_jax", "bplambda_jax.model", "bplambda_jax.credit", "bplambda_jax.rules",
            "bplambda_jax.training", "bplambda_jax.tasks", "bplambda_jax.experiments",
            "bplambda_jax.kernels", "bplambda_jax.internals"]
ROOT = pathlib.Path(bl.__file__).parent
MAX_LINES = 500
# modules that are public but not imported by the package itself (``import bplambda_jax.cli``)
PUBLIC_MODULES = {"bplambda_jax.cli"}


def _all_modules():
  names = ["bplambda_jax"]
  for info in pkgutil.walk_packages([str(ROOT)], prefix="bplambda_jax."):
    names.append(info.name)
  return names


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_imports_and_all_is_complete(package):
  mod = importlib.import_module(package)
  assert sorted(mod.__all__) == list(mod.__all__), f"{package}.__all__ is not sorted"
  assert len(set(mod.__all__)) == len(mod.__all__)
  for name in mod.__all__:
    assert hasattr(mod, name), f"{package}.{name} is in __all__ but does not import"
  public = {n for n, v in vars(mod).items() if not n.startswith("_")
            and not (isinstance(v, types.ModuleType) and v.__name__ in PUBLIC_MODULES)}
  public -= {"annotations"}
  missing = public - set(mod.__all__)
  assert not missing, f"{package} defines public names missing from __all__: {sorted(missing)}"


def test_every_layer_is_reachable_from_the_top():
  for package in PACKAGES[1:] + ["bplambda_jax.oracles"]:  # the layers and internals
    leaf = package.rsplit(".", 1)[1]
    assert getattr(bl, leaf) is importlib.import_module(package)
    assert leaf in bl.__all__


def test_no_module_is_shadowed_by_a_function():
  """``import a.b.c as m`` must give the module c: no attribute of a.b named c is anything else."""
  for name in _all_modules():
    module = importlib.import_module(name)
    assert isinstance(module, types.ModuleType)
    parent_name, _, leaf = name.rpartition(".")
    if parent_name:
      parent = importlib.import_module(parent_name)
      if hasattr(parent, leaf):
        assert getattr(parent, leaf) is module, f"{name} is shadowed by {getattr(parent, leaf)!r}"


def test_implementation_modules_are_private():
  """Every module is either a package (the layers) or private (leading underscore), except the
  documented public modules."""
  public_modules = {"bplambda_jax.oracles", "bplambda_jax.internals"} | PUBLIC_MODULES
  for name in _all_modules():
    leaf = name.rsplit(".", 1)[-1]
    is_package = hasattr(importlib.import_module(name), "__path__")
    assert is_package or leaf.startswith("_") or name in public_modules, name


def test_no_library_module_is_over_the_size_limit():
  for path in ROOT.rglob("*.py"):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT.parent)} has {lines} lines (> {MAX_LINES})"


def test_rule_hyper_parameters_are_immutable():
  model = bl.make_model("lstm", "mse", 2, 2, hidden_size=3)
  rule = bl.bp_lambda(model, lambda_=0.5)
  with pytest.raises(TypeError):
    rule.hparams["lambda_"] = 0.9
  assert rule.hparams["lambda_"] == 0.5


def test_one_spec_grammar_for_rules_and_sensitivities():
  model = bl.make_model("lstm", "mse", 2, 2, hidden_size=3)
  assert bl.make_rule("snap:2", model).name == "snap:2"
  assert bl.make_rule("eprop_m:1", model).name == "eprop_m:1"
  assert bl.get_sensitivity("snap:2", model.cell).name == "snap:2"
  assert bl.bp_lambda(model, sensitivity="eprop_m:1").step is not None
  for old in ("snap2", "eprop_m1", "dni3"):
    with pytest.raises(ValueError, match="unknown"):
      bl.make_rule(old, model)
  with pytest.raises(ValueError, match="unknown sensitivity 'snap2'"):
    bl.get_sensitivity("snap2", model.cell)


def test_registry_rejects_options_a_rule_does_not_take():
  model = bl.make_model("lstm", "mse", 2, 2, hidden_size=3)
  with pytest.raises(ValueError, match=r"rule 'dni' does not take option\(s\) \['lambda_'\]"):
    bl.make_rule("dni:3", model, lambda_=0.5)
  with pytest.raises(ValueError, match=r"rule 'bptt' does not take option\(s\) \['mode'\]"):
    bl.make_rule("bptt", model, mode="online")
  with pytest.raises(ValueError, match="needs an integer argument n"):
    bl.make_rule("tbptt", model)
  with pytest.raises(ValueError, match="takes no argument"):
    bl.make_rule("rtrl:2", model)


def test_one_default_for_bp_lambda_on_an_lstm():
  """The factory and the registry agree: the e-prop flavour on LSTM-like cells."""
  model = bl.make_model("lstm", "mse", 2, 2, hidden_size=3)
  a = bl.bp_lambda(model)
  b = bl.make_rule("bp_lambda", model)
  pa, pb = a.init(jax.random.key(0)), b.init(jax.random.key(0))
  assert pa["synth"]["train"]["w"].shape == pb["synth"]["train"]["w"].shape == (3, 6)
  tanh = bl.make_model("tanh", "mse", 2, 2, hidden_size=3)
  assert bl.bp_lambda(tanh).init(jax.random.key(0))["synth"]["train"]["w"].shape == (3, 3)


def test_arguments_that_used_to_do_nothing_now_raise():
  lstm = bl.lstm(3)
  with pytest.raises(ValueError, match="hidden_size applies only to a cell given by name"):
    bl.make_model(lstm, "mse", 2, 2, hidden_size=4)
  with pytest.raises(ValueError, match="the linear synthesiser has no hidden layers"):
    bl.get_synthesiser("linear", hidden_layers=2)
  with pytest.raises(TypeError):
    bl.from_sensitivity(bl.make_model(lstm, "mse", 2, 2), "eprop", signal="immediate")
  with pytest.raises(TypeError):
    bl.bp_lambda(bl.make_model(lstm, "mse", 2, 2), alpha_learning=True)
  with pytest.raises(TypeError):
    bl.optimiser(1e-3, 1e-3, 0.0, alpha_learning=True)


def test_no_public_name_is_an_engine_helper():
  """The engine helpers live in ``bplambda_jax.internals`` only: none of them is re-exported by
  the package or a layer (a name moved back to a layer's ``__all__`` must leave internals)."""
  helpers = {id(getattr(bl.internals, n)) for n in bl.internals.__all__
             if not isinstance(getattr(bl.internals, n), (str, int, float, tuple, dict))}
  for package in PACKAGES[:-1]:
    mod = importlib.import_module(package)
    public = [n for n in mod.__all__ if id(getattr(mod, n)) in helpers]
    assert public == [], f"{package} exports engine helpers: {public}"
  assert set(bl.internals.__all__).isdisjoint(
      set().union(*(importlib.import_module(p).__all__ for p in PACKAGES[:-1])))
