"""Rules by name, for the CLI and the benchmarks: ``make_rule('snap:2', model)``.

A spec is ``name`` or ``name:k`` with an integer argument:

=================  ========================================================================
spec               rule
=================  ========================================================================
``bptt``           full BPTT (exact gradient)
``tbptt:n``        truncated BPTT, chunks of n steps aligned to the sequence end
``dni:n``          n-step DNI synthetic gradients (Jaderberg et al. 2017), linear ĝ
``bp_lambda``      accumulate BP(λ); LSTM models use the e-prop flavour, others the state flavour
``rtrl``           exact RTRL
``eprop``          e-prop eligibility traces, immediate learning signal
``snap:n``         SnAp-n
``columnar_rtrl``  columnar RTRL (columnar_lstm models)
``eprop_m:m``      m-order e-prop
=================  ========================================================================
"""

from __future__ import annotations

from bplambda_jax import model as model_lib
from bplambda_jax.rules import base
from bplambda_jax.rules import online as online_lib
from bplambda_jax.rules.bp_lambda import bp_lambda
from bplambda_jax.rules.bptt import bptt
from bplambda_jax.rules.dni import dni
from bplambda_jax.rules.tbptt import tbptt

_WITH_ARG = {"tbptt": "n", "dni": "n", "snap": "n", "eprop_m": "m"}
_NO_ARG = ("bptt", "bp_lambda", "rtrl", "eprop", "columnar_rtrl")
RULE_NAMES = _NO_ARG + tuple(_WITH_ARG)


def parse_spec(spec: str) -> tuple[str, int | None]:
  """'snap:2' -> ('snap', 2); 'bptt' -> ('bptt', None). Raises ValueError for unknown names."""
  name, _, arg = spec.strip().partition(":")
  if name not in RULE_NAMES:
    raise ValueError(f"unknown rule {name!r}; accepted: {', '.join(RULE_NAMES)} "
                     f"(with ':k' for {', '.join(_WITH_ARG)}).")
  if name in _WITH_ARG:
    if not arg:
      raise ValueError(f"rule {name!r} needs an integer argument {_WITH_ARG[name]}: "
                       f"'{name}:{_WITH_ARG[name]}', e.g. '{name}:2'.")
    try:
      k = int(arg)
    except ValueError:
      raise ValueError(f"rule {name!r}: {_WITH_ARG[name]} must be an integer, got {arg!r}.")
    return name, k
  if arg:
    raise ValueError(f"rule {name!r} takes no argument, got {spec!r}.")
  return name, None


def make_rule(spec: str, model: model_lib.Model, *, mode: str = "online", lambda_: float = 1.0,
              gamma: float = 1.0, sg_scale: float = 1.0) -> base.Rule:
  """Build the rule named by ``spec`` for ``model``.

  ``mode`` applies to the rules that have one (bp_lambda, rtrl, eprop, columnar_rtrl, eprop_m);
  λ and γ to BP(λ); ``sg_scale`` to BP(λ) and DNI.
  """
  name, k = parse_spec(spec)
  if name == "bptt":
    return bptt(model)
  if name == "tbptt":
    return tbptt(model, k)
  if name == "dni":
    return dni(model, None, k, sg_scale=sg_scale)
  if name == "bp_lambda":
    flavour = "eprop" if model.cell.name == "lstm" else "state"
    return bp_lambda(model, lambda_=lambda_, gamma=gamma, sg_scale=sg_scale, flavour=flavour,
                     mode=mode)
  if name == "rtrl":
    return online_lib.rtrl(model, mode=mode)
  if name == "eprop":
    return online_lib.eprop(model, mode=mode)
  if name == "snap":
    return online_lib.snap(model, k)
  if name == "columnar_rtrl":
    return online_lib.columnar_rtrl(model, mode=mode)
  return online_lib.eprop_m(model, k, mode=mode)
