"""Rules by name, for the CLI, the runner and the benchmarks: ``make_rule('snap:2', model)``.

A spec is ``name`` or ``name:k`` with an integer argument (the same grammar as sensitivity names):

=================  ========================================================================
spec               rule
=================  ========================================================================
``bptt``           full BPTT (exact gradient)
``tbptt:n``        truncated BPTT, chunks of n steps aligned to the sequence end
``dni:n``          n-step DNI synthetic gradients (Jaderberg et al. 2017), linear ĝ
``bp_lambda``      accumulate BP(λ); the e-prop flavour for LSTM-like cells, else the state flavour
``rtrl``           exact RTRL
``eprop``          e-prop eligibility traces, immediate learning signal
``snap:n``         SnAp-n
``columnar_rtrl``  columnar RTRL (cells that declare their units)
``eprop_m:m``      m-order e-prop
=================  ========================================================================

Options are the keyword arguments of the rule's factory; an option a rule does not take is an
error, never ignored.
"""

from __future__ import annotations

from typing import Callable

from bplambda_jax._spec import parse_spec
from bplambda_jax.model import Model
from bplambda_jax.rules import _base as base
from bplambda_jax.rules._bp_lambda import bp_lambda
from bplambda_jax.rules._bptt import bptt
from bplambda_jax.rules._dni import dni
from bplambda_jax.rules._from_sensitivity import columnar_rtrl, eprop, eprop_m, rtrl, snap
from bplambda_jax.rules._tbptt import tbptt

_BP_LAMBDA_OPTIONS = ("lambda_", "gamma", "sg_scale", "flavour", "sensitivity", "mode", "faithful",
                      "clip_increments", "readout_scale", "bias_grad_scale", "trace", "trace_chunk",
                      "trace_dtype", "synthesiser")

# name -> (factory(model, k, **options), accepted options)
_PLAIN: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "bptt": (lambda m, k, **o: bptt(m, **o), ()),
    "bp_lambda": (lambda m, k, **o: bp_lambda(m, **o), _BP_LAMBDA_OPTIONS),
    "rtrl": (lambda m, k, **o: rtrl(m, **o), ("mode",)),
    "eprop": (lambda m, k, **o: eprop(m, **o), ("mode", "compressed")),
    "columnar_rtrl": (lambda m, k, **o: columnar_rtrl(m, **o), ("mode", "compressed")),
}
_WITH_ARG: dict[str, tuple[str, int, Callable, tuple[str, ...]]] = {
    "tbptt": ("n", 1, lambda m, k, **o: tbptt(m, k, **o), ()),
    "dni": ("n", 1, lambda m, k, **o: dni(m, n=k, **o),
            ("sg_scale", "bootstrap", "gamma", "synthesiser")),
    "snap": ("n", 1, lambda m, k, **o: snap(m, k, **o), ("compressed",)),
    "eprop_m": ("m", 0, lambda m, k, **o: eprop_m(m, k, **o), ("mode",)),
}
RULE_NAMES = tuple(_PLAIN) + tuple(f"{n}:{a[0]}" for n, a in _WITH_ARG.items())


def parse_rule_spec(spec: str):
  """'snap:2' -> ('snap', 2); 'bptt' -> ('bptt', None). ValueError for unknown names."""
  return parse_spec(spec, tuple(_PLAIN), {n: (a[0], a[1]) for n, a in _WITH_ARG.items()}, "rule")


def rule_options(spec: str) -> tuple[str, ...]:
  """The options ``make_rule`` accepts for ``spec``."""
  name, _ = parse_rule_spec(spec)
  return _PLAIN[name][1] if name in _PLAIN else _WITH_ARG[name][3]


def make_rule(spec: str, model: Model, **options) -> base.Rule:
  """Build the rule named by ``spec`` for ``model``.

  Args:
    spec: a name from ``RULE_NAMES`` ('bptt', 'tbptt:3', 'bp_lambda', 'snap:2', ...).
    model: the model.
    **options: keyword arguments of the rule's factory (e.g. ``lambda_=0.5, mode='sequence'`` for
      bp_lambda); options the rule does not take raise ValueError.
  """
  name, k = parse_rule_spec(spec)
  factory, accepted = _PLAIN[name] if name in _PLAIN else _WITH_ARG[name][2:]
  unknown = sorted(set(options) - set(accepted))
  if unknown:
    raise ValueError(f"rule {name!r} does not take option(s) {unknown}; it accepts "
                     f"{list(accepted) or 'none'}.")
  return factory(model, k, **options)
