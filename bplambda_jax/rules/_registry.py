"""Rules by name, for the CLI, the runner and the benchmarks: ``make_rule('snap:2', model)``.

A spec is ``name`` or ``name:k`` with an integer argument (the same grammar as sensitivity names):
``RULE_NAMES`` lists them, and the factory of the same name (``bplambda_jax.rules.snap`` for
'snap:n') documents each rule and its options.

Options are the keyword arguments of the rule's factory, read from its signature: every
parameter but the model and the spec's argument. An option a rule does not take is an error,
never ignored. Adding a rule to the library is one module with its factory, one line in
``_RULES`` and its test (docs/extending.md, "Adding to the library").
"""

from __future__ import annotations

import inspect
from typing import Callable, NamedTuple, Optional

from bplambda_jax._spec import parse_spec
from bplambda_jax.model import Model
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


def parse_rule_spec(spec: str):
  """'snap:2' -> ('snap', 2); 'bptt' -> ('bptt', None). ValueError for unknown names."""
  return parse_spec(spec, tuple(n for n, e in _RULES.items() if e.arg is None),
                    {n: (e.arg, e.minimum) for n, e in _RULES.items() if e.arg is not None},
                    "rule")


def rule_options(spec: str) -> tuple[str, ...]:
  """The options ``make_rule`` accepts for ``spec``: its factory's keyword arguments."""
  name, _ = parse_rule_spec(spec)
  return _OPTIONS[name]


def make_rule(spec: str, model: Model, **options) -> base.Rule:
  """Build the rule named by ``spec`` for ``model``.

  Args:
    spec: a name from ``RULE_NAMES`` ('bptt', 'tbptt:3', 'bp_lambda', 'snap:2', ...).
    model: the model.
    **options: keyword arguments of the rule's factory (e.g. ``lambda_=0.5, mode='sequence'`` for
      bp_lambda); options the rule does not take raise ValueError.
  """
  name, k = parse_rule_spec(spec)
  entry, accepted = _RULES[name], _OPTIONS[name]
  unknown = sorted(set(options) - set(accepted))
  if unknown:
    raise ValueError(f"rule {name!r} does not take option(s) {unknown}; it accepts "
                     f"{list(accepted) or 'none'}.")
  if entry.arg is not None:
    options[entry.arg] = k
  return entry.factory(model, **options)
