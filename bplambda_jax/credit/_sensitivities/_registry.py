"""Sensitivities by name, in the grammar of the rule registry ('eprop', 'snap:2', 'eprop_m:1')."""

from __future__ import annotations

from bplambda_jax._spec import parse_spec
from bplambda_jax.credit._sensitivities._family import (columnar_rtrl, eprop, eprop_m, immediate,
                                                        rtrl, snap)
from bplambda_jax.credit._sensitivities._protocol import Sensitivity
from bplambda_jax.model import Cell

PLAIN = {"immediate": immediate, "eprop": eprop, "rtrl": rtrl, "columnar_rtrl": columnar_rtrl}
WITH_ARG = {"snap": ("n", 1), "eprop_m": ("m", 0)}
SENSITIVITY_NAMES = tuple(PLAIN) + tuple(f"{n}:{a}" for n, (a, _) in WITH_ARG.items())


def get_sensitivity(name_or_sens, cell: Cell) -> Sensitivity:
  """A sensitivity by name, or a ready :class:`Sensitivity` (returned unchanged).

  Names: 'immediate', 'eprop', 'rtrl', 'columnar_rtrl', 'snap:n' (n ≥ 1), 'eprop_m:m' (m ≥ 0).
  """
  if isinstance(name_or_sens, Sensitivity):
    return name_or_sens
  name, k = parse_spec(name_or_sens, tuple(PLAIN), WITH_ARG, "sensitivity")
  if name == "snap":
    return snap(cell, k)
  if name == "eprop_m":
    return eprop_m(cell, k)
  return PLAIN[name](cell)
