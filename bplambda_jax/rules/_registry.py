"""Rules by name, for the CLI, the runner and the benchmarks: ``make_rule('snap:2', model)``.

A spec is a name with optional options, in one grammar for the command line (``--rule``), the
JSON config (``rules``) and Python (``make_rule``)::

    bptt                                   a name
    tbptt:3                                the shorthand of tbptt(n=3)
    bp_lambda(flavour=state, trace=dense, lambda_=0.9)
    dni:3(bootstrap=gamma, gamma=0.9)
    bp_lambda(synthesiser=mlp(hidden_layers=1, hidden_size=20))
    fast=bp_lambda(lambda_=0.5)            a label for the results ('fast') before '='

``RULE_NAMES`` lists the names (``name:k`` for rules whose factory takes an integer argument, given
as ``name:k`` or ``name(k=...)``), and the factory of the same name (``bplambda_jax.rules.snap``
for 'snap:n') documents each rule and its options. An option's value is ``true``/``false``,
``none``, a number or a word; ``synthesiser`` takes a synthesiser spec, ``linear`` or
``mlp(hidden_layers=K, hidden_size=W, train_last_only=false, bias=true)``.

Options are the keyword arguments of the rule's factory, read from its signature: every
parameter but the model (:func:`rule_options`). An option a rule does not take is an error naming
the rule and the options it accepts, never ignored; so is a value its factory refuses
(:class:`~bplambda_jax.ConfigError`). Adding a rule to the library is one module with its factory,
one line in ``_RULES`` and its test (docs/extending.md, "Adding to the library").
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, NamedTuple, Optional

from bplambda_jax import _spec
from bplambda_jax._errors import ConfigError
from bplambda_jax.model import Model, Synthesiser, linear_synthesiser, mlp_synthesiser
from bplambda_jax.rules import _base as base
from bplambda_jax.rules._bp_lambda import bp_lambda
from bplambda_jax.rules._bptt import bptt
from bplambda_jax.rules._dni import dni
from bplambda_jax.rules._from_sensitivity import columnar_rtrl, eprop, eprop_m, rtrl, snap
from bplambda_jax.rules._tbptt import tbptt


class _Entry(NamedTuple):
  """A registered rule: its factory ``factory(model, ..., **options)`` and, for a spec
  ``name:k``, the factory's parameter that receives k and k's minimum."""

  factory: Callable[..., base.Rule]
  arg: Optional[str] = None
  minimum: int = 1


_RULES: dict[str, _Entry] = {
    "bptt": _Entry(bptt),
    "bp_lambda": _Entry(bp_lambda),
    "rtrl": _Entry(rtrl),
    "eprop": _Entry(eprop),
    "columnar_rtrl": _Entry(columnar_rtrl),
    "tbptt": _Entry(tbptt, "n"),
    "dni": _Entry(dni, "n"),
    "snap": _Entry(snap, "n"),
    "eprop_m": _Entry(eprop_m, "m", minimum=0),
}


def _options(entry: _Entry) -> tuple[str, ...]:
  """The factory's parameters after the model, except the spec's argument, in signature order."""
  params = list(inspect.signature(entry.factory).parameters.values())[1:]
  named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
  if any(p.kind not in named for p in params):
    raise TypeError(f"rule factory {entry.factory.__name__} must take named parameters only "
                    f"(no *args or **kwargs, which would hide options).")
  names = tuple(p.name for p in params)
  if entry.arg is not None and entry.arg not in names:
    raise TypeError(f"rule factory {entry.factory.__name__} has no parameter {entry.arg!r}.")
  return tuple(n for n in names if n != entry.arg)


_OPTIONS = {name: _options(entry) for name, entry in _RULES.items()}
RULE_NAMES = tuple(n if e.arg is None else f"{n}:{e.arg}" for n, e in _RULES.items())


class RuleSpec(NamedTuple):
  """A parsed rule spec (:func:`parse_rule_spec`).

  Attributes:
    name: the registered name ('bp_lambda', 'tbptt', ...).
    options: the factory's options the spec gives, its integer argument included
      ({'n': 3} for 'tbptt:3').
    label: the label written before '=', or None.
  """

  name: str
  options: Mapping[str, Any]
  label: Optional[str] = None

  @property
  def text(self) -> str:
    """The spec as text, without its label: ``name[:k][(key=value, ...)]``."""
    entry, options = _RULES[self.name], dict(self.options)
    head = self.name if entry.arg is None else f"{self.name}:{options.pop(entry.arg)}"
    if not options:
      return head
    return head + "(" + ", ".join(f"{k}={_spec.format_value(k, v, f'rule {self.name!r}')}"
                                  for k, v in options.items()) + ")"


def parse_rule_spec(spec: str, **options) -> RuleSpec:
  """The :class:`RuleSpec` of ``spec`` ('tbptt:3', 'bp_lambda(lambda_=0.9)', 'fast=bptt', ...),
  with ``options`` added to those it writes.

  Raises:
    ConfigError for an unknown name, a missing or extra integer argument, an option the rule does
    not take (naming the rule and the options it accepts) or an option given twice.
  """
  if not isinstance(spec, str):
    raise ConfigError(f"a rule spec must be a string such as 'bptt', 'tbptt:3' or "
                      f"'bp_lambda(lambda_=0.9)', got {spec!r}.")
  label, text = _spec.split_label(spec)
  if label == "":
    raise ConfigError(f"rule {spec!r}: the label before '=' is empty.")
  head, written = _spec.parse_options(text, "rule")
  name, colon, _ = head.partition(":")
  entry = _RULES.get(name)
  if entry is not None and entry.arg is not None and entry.arg in written:
    if colon:
      raise ConfigError(f"rule {spec!r} gives {entry.arg} twice ('{head}' is "
                        f"'{name}({entry.arg}={head.partition(':')[2]})').")
    head = f"{name}:{written.pop(entry.arg)}"  # name(n=3) is name:3
  name, k = _spec.parse_spec(head, tuple(n for n, e in _RULES.items() if e.arg is None),
                             {n: (e.arg, e.minimum) for n, e in _RULES.items()
                              if e.arg is not None}, "rule")
  twice = sorted(set(written) & set(options))
  if twice:
    raise ConfigError(f"rule {spec!r}: option(s) {twice} given both in the spec and as "
                      f"arguments; give each once.")
  given = {**written, **options}
  accepted = _OPTIONS[name]
  unknown = sorted(set(given) - set(accepted))
  if unknown:
    taken_by = {key: [n for n in RULE_NAMES if key in _OPTIONS[n.partition(":")[0]]]
                for key in unknown}
    where = "; ".join(f"{key} is an option of {', '.join(rules)}" for key, rules in
                      taken_by.items() if rules)
    raise ConfigError(f"rule {name!r} does not take option(s) {unknown}; it accepts "
                      f"{list(accepted) or 'none'}." + (f" ({where}.)" if where else ""))
  if entry.arg is not None:
    given = {entry.arg: k, **given}
  return RuleSpec(name, given, label)


def rule_options(spec: str) -> tuple[str, ...]:
  """The options ``make_rule`` accepts for ``spec``: its factory's keyword arguments (without
  the integer argument of a ``name:k`` spec)."""
  return _OPTIONS[parse_rule_spec(spec).name]


def rules_with_option(option: str) -> tuple[str, ...]:
  """The names in ``RULE_NAMES`` whose factory takes ``option``."""
  return tuple(n for n in RULE_NAMES if option in _OPTIONS[n.partition(":")[0]])


def _synthesiser(value) -> Synthesiser:
  """A ``synthesiser`` option: a :class:`~bplambda_jax.Synthesiser`, or its spec ('linear',
  'mlp(hidden_layers=1, hidden_size=20)')."""
  if not isinstance(value, str):
    return value
  name, options = _spec.parse_options(value, "synthesiser")
  if name not in _SYNTHESISERS:
    raise ConfigError(f"unknown synthesiser {value!r}; accepted: "
                      f"{', '.join(_SYNTHESISERS)} (e.g. 'mlp(hidden_layers=1, hidden_size=20)').")
  factory = _SYNTHESISERS[name]
  accepted = list(inspect.signature(factory).parameters)
  unknown = sorted(set(options) - set(accepted))
  if unknown:
    raise ConfigError(f"synthesiser {name!r} does not take option(s) {unknown}; it accepts "
                      f"{accepted}.")
  try:
    return factory(**options)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"synthesiser {value!r}: {e}") from None


_SYNTHESISERS = {"linear": linear_synthesiser, "mlp": mlp_synthesiser}
# options whose factory argument is an object, given in a spec by the object's own spec
_FROM_TEXT = {"synthesiser": _synthesiser}


def make_rule(spec: str, model: Model, **options) -> base.Rule:
  """Build the rule named by ``spec`` for ``model``.

  Args:
    spec: a rule spec: a name from ``RULE_NAMES`` with optional options ('bptt', 'tbptt:3',
      'bp_lambda(flavour=state, lambda_=0.9)', 'snap:2', ...; see the module docstring).
    model: the model.
    **options: more keyword arguments of the rule's factory (e.g. ``lambda_=0.5,
      mode='sequence'`` for bp_lambda); an option also written in ``spec`` is an error.

  Raises:
    ConfigError: an option the rule does not take, or a value its factory refuses (the message
      names the rule).
  """
  parsed = parse_rule_spec(spec, **options)
  given = {k: _FROM_TEXT[k](v) if k in _FROM_TEXT else v for k, v in parsed.options.items()}
  try:
    return _RULES[parsed.name].factory(model, **given)
  except ConfigError:
    raise
  except ValueError as e:  # the factory's checks of its options
    raise ConfigError(f"rule {spec!r}: {e}") from e
