"""How credit flows: sensitivities (the first axis of credit assignment) and synthesiser traces.

See :mod:`bplambda_jax.credit._protocol` for the maths. The sensitivity factories take a *cell* and
return a :class:`Sensitivity`; rules take them by name (``bp_lambda(model, sensitivity='eprop')``).
"""

from bplambda_jax.credit._chunked import DEFAULT_CHUNK
from bplambda_jax.credit._chunked import ChunkedTrace
from bplambda_jax.credit._chunked import bytes_per_example as chunked_bytes_per_example
from bplambda_jax.credit._chunked import chunked_init
from bplambda_jax.credit._chunked import chunked_step
from bplambda_jax.credit._family import columnar_rtrl
from bplambda_jax.credit._family import eprop
from bplambda_jax.credit._family import eprop_m
from bplambda_jax.credit._family import immediate
from bplambda_jax.credit._family import rtrl
from bplambda_jax.credit._family import snap
from bplambda_jax.credit._jacobians import explicit_jacobian
from bplambda_jax.credit._jacobians import immediate_credit
from bplambda_jax.credit._jacobians import immediate_jacobian
from bplambda_jax.credit._jacobians import implicit_jacobian
from bplambda_jax.credit._jacobians import state_jacobian
from bplambda_jax.credit._protocol import Reverse
from bplambda_jax.credit._protocol import Sensitivity
from bplambda_jax.credit._protocol import batch_credit
from bplambda_jax.credit._protocol import step_context
from bplambda_jax.credit._protocol import sum_leading
from bplambda_jax.credit._registry import SENSITIVITY_NAMES
from bplambda_jax.credit._registry import get_sensitivity
from bplambda_jax.credit._reverse import costates
from bplambda_jax.credit._reverse import previous_states
from bplambda_jax.credit._reverse import reverse_recurrence
from bplambda_jax.credit._reverse import sequence_credit
from bplambda_jax.credit._structure import UnitLayout
from bplambda_jax.credit._structure import check_structure
from bplambda_jax.credit._structure import eprop_transition
from bplambda_jax.credit._structure import snap_pattern
from bplambda_jax.credit._structure import unit_layout
from bplambda_jax.credit._structured import STRUCTURES
from bplambda_jax.credit._structured import TraceStructure
from bplambda_jax.credit._structured import apply_blocks
from bplambda_jax.credit._structured import by_component
from bplambda_jax.credit._structured import from_components
from bplambda_jax.credit._structured import structured_bytes_per_example
from bplambda_jax.credit._structured import structured_init
from bplambda_jax.credit._structured import structured_step
from bplambda_jax.credit._structured import trace_structure
from bplambda_jax.credit._structured import unit_blocks
from bplambda_jax.credit._synth_traces import linear_trace_step
from bplambda_jax.credit._synth_traces import trace_step_tree
from bplambda_jax.credit._traces import compressed_trace
from bplambda_jax.credit._traces import dense_trace

__all__ = [
    "ChunkedTrace",
    "DEFAULT_CHUNK",
    "Reverse",
    "SENSITIVITY_NAMES",
    "STRUCTURES",
    "Sensitivity",
    "TraceStructure",
    "UnitLayout",
    "apply_blocks",
    "batch_credit",
    "by_component",
    "check_structure",
    "chunked_bytes_per_example",
    "chunked_init",
    "chunked_step",
    "columnar_rtrl",
    "compressed_trace",
    "costates",
    "dense_trace",
    "eprop",
    "eprop_m",
    "eprop_transition",
    "explicit_jacobian",
    "from_components",
    "get_sensitivity",
    "immediate",
    "immediate_credit",
    "immediate_jacobian",
    "implicit_jacobian",
    "linear_trace_step",
    "previous_states",
    "reverse_recurrence",
    "rtrl",
    "sequence_credit",
    "snap",
    "snap_pattern",
    "state_jacobian",
    "step_context",
    "structured_bytes_per_example",
    "structured_init",
    "structured_step",
    "sum_leading",
    "trace_step_tree",
    "trace_structure",
    "unit_blocks",
    "unit_layout",
]
