"""FLOPs of a jaxpr, with ``scan`` bodies counted as often as they run.

XLA's ``compiled.cost_analysis()['flops']`` counts the body of a ``while`` loop once, whatever its
trip count, so for scanned code it undercounts by about T. :func:`count_flops` walks the jaxpr
instead: ``dot_general`` 2 FLOP per multiply-add, elementwise arithmetic 1 per output element,
reductions 1 per input element, data movement 0, ``scan`` bodies times their length. A ``while``
loop (no static trip count) raises :class:`Uncountable`.
"""

from __future__ import annotations

from jax.extend import core as jex_core
import numpy as np

_ELEMENTWISE = frozenset({
    "add", "add_any", "sub", "mul", "div", "rem", "neg", "max", "min", "abs", "sign", "exp", "exp2",
    "log", "log1p", "expm1", "tanh", "logistic", "sqrt", "rsqrt", "cbrt", "pow", "integer_pow",
    "sin", "cos", "tan", "atan2", "erf", "erfc", "erf_inv", "square", "reciprocal", "floor", "ceil",
    "round",
})
_REDUCTIONS = frozenset({"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin",
                         "cumsum", "cumprod", "cummax", "cumlogsumexp"})


class Uncountable(ValueError):
  """The jaxpr holds a loop whose trip count is not static (a while loop)."""


def _size(aval) -> int:
  return int(np.prod(aval.shape)) if hasattr(aval, "shape") else 1


def _sub_jaxprs(value) -> list:
  """The (closed) jaxprs held in one equation parameter."""
  if isinstance(value, jex_core.ClosedJaxpr):
    return [value.jaxpr]
  if isinstance(value, jex_core.Jaxpr):
    return [value]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _sub_jaxprs(v)]
  return []


def count_flops(jaxpr) -> float:
  """FLOPs of a (closed) jaxpr, with ``scan`` bodies counted ``length`` times.

  dot_general: 2·(output size)·(contracted size); elementwise arithmetic and transcendentals: 1 per
  output element; reductions: 1 per input element; data movement: 0; ``cond``: the most expensive
  branch; ``pallas_call``: the kernel body times the number of grid programs. Raises
  :class:`Uncountable` for ``while`` loops (no static trip count).
  """
  if isinstance(jaxpr, jex_core.ClosedJaxpr):
    jaxpr = jaxpr.jaxpr
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval
      contracted = int(np.prod([lhs.shape[d] for d in lhs_contract])) if lhs_contract else 1
      total += 2.0 * _size(eqn.outvars[0].aval) * contracted
    elif name == "scan":
      total += eqn.params["length"] * count_flops(eqn.params["jaxpr"])
    elif name == "while":
      raise Uncountable("the program contains a while loop (no static trip count)")
    elif name == "cond":
      total += max(count_flops(b) for b in eqn.params["branches"])
    elif name == "pallas_call":  # the kernel body runs once per grid program
      grid = getattr(eqn.params.get("grid_mapping"), "grid", ())
      total += float(np.prod(grid)) * count_flops(eqn.params["jaxpr"])
    elif name in _ELEMENTWISE:
      total += sum(_size(v.aval) for v in eqn.outvars)
    elif name in _REDUCTIONS:
      total += sum(_size(v.aval) for v in eqn.invars)
    else:
      for value in eqn.params.values():
        for sub in _sub_jaxprs(value):
          total += count_flops(sub)
  return total
