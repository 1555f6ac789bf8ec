"""How credit flows: the network's sensitivities, and the synthesiser's eligibility traces.

Two families live here, in two private folders:

* ``_sensitivities``: the first axis of credit assignment, how each recurrent parameter
  influences the current state (Z_t = A_t·Z_{t−1} + Ī_t with a rule-specific propagator A_t: the
  immediate, e-prop, SnAp-n, m-order, columnar and RTRL sensitivities). The factories take a
  *cell* and return a :class:`Sensitivity`; rules take them by name
  (``bp_lambda(model, sensitivity='eprop')``); docs/concepts.md has the maths.
* ``_synth_traces``: BP(λ)'s eligibility traces of its synthesiser, one form each (dense, chunked,
  structured); the rule picks one when it is built, so they are engine parts
  (:mod:`bplambda_jax.internals`).

Beside them: ``_cell_structure`` (the units of a cell, SnAp patterns and
:func:`check_structure`, which verifies what a cell declares) and ``_reverse`` (the one reverse
linear recurrence of both sequence modes).
"""

from bplambda_jax.credit._cell_structure import check_structure
from bplambda_jax.credit._sensitivities._family import columnar_rtrl
from bplambda_jax.credit._sensitivities._family import eprop
from bplambda_jax.credit._sensitivities._family import eprop_m
from bplambda_jax.credit._sensitivities._family import immediate
from bplambda_jax.credit._sensitivities._family import rtrl
from bplambda_jax.credit._sensitivities._family import snap
from bplambda_jax.credit._sensitivities._jacobians import immediate_jacobian
from bplambda_jax.credit._sensitivities._protocol import Reverse
from bplambda_jax.credit._sensitivities._protocol import Sensitivity
from bplambda_jax.credit._sensitivities._protocol import step_context
from bplambda_jax.credit._sensitivities._registry import SENSITIVITY_NAMES
from bplambda_jax.credit._sensitivities._registry import get_sensitivity

__all__ = [
    "Reverse",
    "SENSITIVITY_NAMES",
    "Sensitivity",
    "check_structure",
    "columnar_rtrl",
    "eprop",
    "eprop_m",
    "get_sensitivity",
    "immediate",
    "immediate_jacobian",
    "rtrl",
    "snap",
    "step_context",
]
