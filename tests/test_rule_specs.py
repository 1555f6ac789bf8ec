"""Rule specs with options: one grammar for the CLI, the JSON config and Python.

* the grammar: options in parentheses, the ``name:k`` shorthand, labels, canonical text;
* every option of every registered rule, set from the command line, reaches the rule's factory
  (the registry is walked; the factories are replaced by spies, so nothing is built or compiled);
* the run's λ, γ, sg_scale and faithful reach the rules that take them, by the registry and the
  rules' own hyper-parameters, never by name lists;
* a user's error is one line with exit status 2; a bug keeps its traceback (exit status 3).
"""

import json

import pytest

import bplambda_jax as bl
from bplambda_jax import cli
from bplambda_jax import experiments
from bplambda_jax import tasks
from bplambda_jax.experiments import _alignment
from bplambda_jax.rules import _registry


def test_grammar_shorthands_labels_and_text():
  p = bl.rules.parse_rule_spec
  assert p("tbptt:3") == p("tbptt(n=3)") == ("tbptt", {"n": 3}, None)
  spec = p(" fast = bp_lambda( flavour=state, trace=dense, lambda_=0.9, faithful=true ) ")
  assert spec == ("bp_lambda", {"flavour": "state", "trace": "dense", "lambda_": 0.9,
                                "faithful": True}, "fast")
  assert spec.text == "bp_lambda(flavour=state, trace=dense, lambda_=0.9, faithful=true)"
  assert p(spec.text)[:2] == spec[:2]  # the text reads back to the same spec
  nested = p("dni:3(synthesiser=mlp(hidden_layers=1, hidden_size=4), gamma=none)")
  assert nested.options == {"n": 3, "synthesiser": "mlp(hidden_layers=1, hidden_size=4)",
                            "gamma": None}
  assert p(nested.text) == nested


@pytest.mark.parametrize("spec,message", [
    ("dni:3(lambda_=0.5)", r"rule 'dni' does not take option\(s\) \['lambda_'\]; it accepts "
     r"\['synthesiser', 'bootstrap', 'gamma', 'sg_scale'\]. \(lambda_ is an option of bp_lambda"),
    ("tbptt:2(faithful=true)", r"rule 'tbptt' does not take option\(s\) \['faithful'\]; it "
     r"accepts none. \(faithful is an option of bp_lambda"),
    ("bp_lambda(trace)", r"option 'trace' must be key=value"),
    ("bp_lambda(gamma=1, gamma=0.5)", r"gives option 'gamma' twice"),
    ("tbptt:3(n=4)", r"gives n twice"),
    ("bp_lambda(lambda_=(0.5)", r"a '\(' without its '\)'"),
    ("bp_lambda(lambda_=0.5)x", r"options go in one pair of parentheses at the end"),
])
def test_bad_specs_name_the_rule_and_its_options(spec, message):
  with pytest.raises(bl.ConfigError, match=message):
    bl.rules.parse_rule_spec(spec)


# one value per option: its text on the command line and the value the factory must receive
def _value(option):
  if option == "synthesiser":
    return "mlp(hidden_layers=1, hidden_size=3)", lambda v: v.name == "mlp1"
  return f"v_{option}", lambda v: v == f"v_{option}"


def _walk():
  for name, entry in _registry._RULES.items():
    head = name if entry.arg is None else f"{name}:{entry.minimum + 2}"
    for option in bl.rules.rule_options(head):
      yield name, head, option
    if entry.arg is not None:  # the shorthand's argument as a named option
      yield name, name, entry.arg


@pytest.mark.parametrize("name,head,option", list(_walk()))
def test_every_option_of_every_rule_reaches_its_factory_from_the_cli(name, head, option,
                                                                     monkeypatch):
  calls = []

  def spy(model, **options):
    calls.append(options)
    return bl.Rule(name, None, None, {}, "online")

  entry = _registry._RULES[name]
  monkeypatch.setitem(_registry._RULES, name, entry._replace(factory=spy))
  if option == entry.arg:
    text, want = str(entry.minimum + 3), lambda v: v == entry.minimum + 3
  else:
    text, want = _value(option)
  args = cli.build_parser().parse_args(["run", "toy", "--rule", f"{head}({option}={text})"])
  cli._checked_config(cli.build_config(args))  # what --print-config does: resolve and build
  assert calls and all(want(c[option]) for c in calls), calls


def test_run_keys_reach_the_rules_that_take_them(tmp_path):
  """--set gamma/lambda_ go where the factory has the option and the rule the hyper-parameter;
  a rule's own option wins; a JSON config lists rules as objects with labels."""
  path = tmp_path / "config.json"
  path.write_text(json.dumps({"rules": [
      {"rule": "bp_lambda", "label": "own", "options": {"lambda_": 0.2}}, "bp_lambda",
      "dni:2(bootstrap=gamma)", "dni:3", "eprop"]}))
  args = cli.build_parser().parse_args(["run", "toy", "--config", str(path), "--set",
                                        "gamma=0.5", "--set", "lambda_=0.7"])
  cfg = cli._checked_config(cli.build_config(args))
  assert cfg.rules[0] == "own=bp_lambda(lambda_=0.2)"
  assert experiments.RunConfig.from_json(cfg.to_json()) == cfg
  from bplambda_jax.experiments._experiment import runs_of
  from bplambda_jax.experiments._setup import make_run_rule
  runs = runs_of(cfg)
  assert [r.label for r in runs] == ["own", "bp_lambda", "dni:2(bootstrap=gamma)", "dni:3",
                                     "eprop"]
  model = tasks.toy_model(4)
  hp = [dict(make_run_rule(cfg, r.spec, model).hparams) for r in runs]
  assert hp[0] == {"lambda_": 0.2, "gamma": 0.5, "sg_scale": 1.0}
  assert hp[1] == {"lambda_": 0.7, "gamma": 0.5, "sg_scale": 1.0}
  assert hp[2] == {"gamma": 0.5, "sg_scale": 1.0} and hp[3] == {"sg_scale": 1.0}
  assert hp[4] == {}


@pytest.mark.parametrize("argv,fragment", [
    (["run", "toy", "--rule", "tbptt:3", "--faithful"],
     "config key 'faithful' is an option of bp_lambda, and rule 'tbptt:3' does not take it "
     "(its options: none)"),
    (["run", "toy", "--rule", "bp_lambda(lambda_=1.5)"],
     "rule 'bp_lambda(lambda_=1.5)': lambda_ must lie in [0, 1], got 1.5."),
])
def test_a_users_error_is_one_line_with_status_2(argv, fragment, capsys):
  assert cli.main(argv + ["--print-config"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and fragment in err and err.count("\n") == 1, err


def test_a_bug_keeps_its_traceback(monkeypatch, capsys):
  def broken(*args, **kwargs):
    raise ValueError("a bug, not a bad input")

  monkeypatch.setattr(_alignment, "train_one", broken)
  assert cli.main(["align", "--task", "toy", "--rule", "bptt", "--seeds", "1",
                   "--synth-steps", "1", "--no-progress"]) == cli.EXIT_INTERNAL
  err = capsys.readouterr().err
  assert "Traceback" in err and "a bug, not a bad input" in err
  with pytest.raises(ValueError, match="a bug"):  # align reports no "n/a" row for it
    _alignment.run_alignment("toy", ["bptt"], [0], synth_steps=1, progress=False)
