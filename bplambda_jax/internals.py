"""Engine internals: the parts the rules and drivers are built from. **No stability promise.**

Everything here may change, move or disappear in any release, without notice. The public surface
is ``bplambda_jax`` and the ``__all__`` of its layers; this module collects the engine helpers
behind it for the users who build a new rule, trace form or kernel on them, and for the tests.
The names are grouped by the layer that defines them; each keeps its docstring there.
"""

# model
from bplambda_jax.model._cells import JACOBIANS
from bplambda_jax.model._elementwise import LRU_ACTIVATIONS
from bplambda_jax.model._model import loss_and_states

# credit
from bplambda_jax.credit._cell_structure import UnitLayout
from bplambda_jax.credit._cell_structure import eprop_transition
from bplambda_jax.credit._cell_structure import snap_pattern
from bplambda_jax.credit._cell_structure import unit_layout
from bplambda_jax.credit._reverse import costates
from bplambda_jax.credit._reverse import previous_states
from bplambda_jax.credit._reverse import reverse_recurrence
from bplambda_jax.credit._reverse import sequence_credit
from bplambda_jax.credit._sensitivities._influence import compressed_trace
from bplambda_jax.credit._sensitivities._influence import dense_trace
from bplambda_jax.credit._sensitivities._jacobians import explicit_jacobian
from bplambda_jax.credit._sensitivities._jacobians import immediate_credit
from bplambda_jax.credit._sensitivities._jacobians import implicit_jacobian
from bplambda_jax.credit._sensitivities._jacobians import state_jacobian
from bplambda_jax.credit._sensitivities._protocol import batch_credit
from bplambda_jax.credit._sensitivities._protocol import sum_leading
from bplambda_jax.credit._synth_traces._chunked import ChunkedTrace
from bplambda_jax.credit._synth_traces._chunked import DEFAULT_CHUNK
from bplambda_jax.credit._synth_traces._chunked import (
    bytes_per_example as chunked_bytes_per_example)
from bplambda_jax.credit._synth_traces._chunked import chunked_init
from bplambda_jax.credit._synth_traces._chunked import chunked_step
from bplambda_jax.credit._synth_traces._dense import linear_trace_step
from bplambda_jax.credit._synth_traces._dense import trace_step_tree
from bplambda_jax.credit._synth_traces._structured import STRUCTURES
from bplambda_jax.credit._synth_traces._structured import TraceStructure
from bplambda_jax.credit._synth_traces._structured import apply_blocks
from bplambda_jax.credit._synth_traces._structured import by_component
from bplambda_jax.credit._synth_traces._structured import from_components
from bplambda_jax.credit._synth_traces._structured import structured_bytes_per_example
from bplambda_jax.credit._synth_traces._structured import structured_trace_init
from bplambda_jax.credit._synth_traces._structured import structured_trace_step
from bplambda_jax.credit._synth_traces._structured import trace_structure
from bplambda_jax.credit._synth_traces._structured import unit_blocks

# rules
from bplambda_jax.rules._registry import rules_with_option
from bplambda_jax.rules._tbptt import chunk_grads

# kernels
from bplambda_jax.kernels._platform import select_impl
from bplambda_jax.kernels._structured_step import padded_columns
from bplambda_jax.kernels._structured_step import structured_step_pallas
from bplambda_jax.kernels._structured_step import structured_step_reference
from bplambda_jax.kernels._structured_step import structured_step_xla
from bplambda_jax.kernels._trace_step import DEFAULT_BLOCK_P
from bplambda_jax.kernels._trace_step import trace_step_diag_pallas
from bplambda_jax.kernels._trace_step import trace_step_diag_reference
from bplambda_jax.kernels._trace_step import trace_step_diag_xla
from bplambda_jax.kernels._trace_step import trace_step_pallas
from bplambda_jax.kernels._trace_step import trace_step_reference
from bplambda_jax.kernels._trace_step import trace_step_xla

# training
from bplambda_jax.training._guards import guard_message
from bplambda_jax.training._memory import available_memory_bytes
from bplambda_jax.training._memory import state_bytes
from bplambda_jax.training._parallel import BATCH_AXIS
from bplambda_jax.training._parallel import SEED_AXIS
from bplambda_jax.training._parallel import map_seeds
from bplambda_jax.training._parallel import resolve_seed_axis
from bplambda_jax.training._parallel import seed_sharding
from bplambda_jax.training._train import GROUPS
from bplambda_jax.training._train import adam
from bplambda_jax.training._train import set_learning_rates

# tasks
from bplambda_jax.tasks._copy_repeat import BITS as COPY_BITS
from bplambda_jax.tasks._copy_repeat import next_level
from bplambda_jax.tasks._curriculum import THRESHOLD_BITS as COPY_THRESHOLD_BITS
from bplambda_jax.tasks._curriculum import curriculum_update
from bplambda_jax.tasks._line_draw import line_draw_codes
from bplambda_jax.tasks._line_draw import line_draw_points
from bplambda_jax.tasks._mnist_sources import MnistSource
from bplambda_jax.tasks._seq_mnist import LAYOUTS as MNIST_LAYOUTS
from bplambda_jax.tasks._seq_mnist import mnist_inputs
from bplambda_jax.tasks._seq_mnist import mnist_permutation
from bplambda_jax.tasks._toy import CODE as TOY_CODE
from bplambda_jax.tasks._toy import TARGET as TOY_TARGET

# experiments
from bplambda_jax.experiments._alignment import COLUMNS as ALIGNMENT_COLUMNS
from bplambda_jax.experiments._alignment import TASKS as ALIGNMENT_TASKS
from bplambda_jax.experiments._alignment import format_rows
from bplambda_jax.experiments._alignment import task_setup
from bplambda_jax.experiments._config import parse_grid
from bplambda_jax.experiments._config import parse_set
from bplambda_jax.experiments._metrics import default_step_mask
from bplambda_jax.experiments._stream_run import STREAM_TASKS
from bplambda_jax.experiments._stream_run import stream_settings

__all__ = [
    "ALIGNMENT_COLUMNS",
    "ALIGNMENT_TASKS",
    "BATCH_AXIS",
    "COPY_BITS",
    "COPY_THRESHOLD_BITS",
    "ChunkedTrace",
    "DEFAULT_BLOCK_P",
    "DEFAULT_CHUNK",
    "GROUPS",
    "JACOBIANS",
    "LRU_ACTIVATIONS",
    "MNIST_LAYOUTS",
    "MnistSource",
    "SEED_AXIS",
    "STREAM_TASKS",
    "STRUCTURES",
    "TOY_CODE",
    "TOY_TARGET",
    "TraceStructure",
    "UnitLayout",
    "adam",
    "apply_blocks",
    "available_memory_bytes",
    "batch_credit",
    "by_component",
    "chunk_grads",
    "chunked_bytes_per_example",
    "chunked_init",
    "chunked_step",
    "compressed_trace",
    "costates",
    "curriculum_update",
    "default_step_mask",
    "dense_trace",
    "eprop_transition",
    "explicit_jacobian",
    "format_rows",
    "from_components",
    "guard_message",
    "immediate_credit",
    "implicit_jacobian",
    "line_draw_codes",
    "line_draw_points",
    "linear_trace_step",
    "loss_and_states",
    "map_seeds",
    "mnist_inputs",
    "mnist_permutation",
    "next_level",
    "padded_columns",
    "parse_grid",
    "parse_set",
    "previous_states",
    "resolve_seed_axis",
    "reverse_recurrence",
    "rules_with_option",
    "seed_sharding",
    "select_impl",
    "sequence_credit",
    "set_learning_rates",
    "snap_pattern",
    "state_bytes",
    "state_jacobian",
    "stream_settings",
    "structured_bytes_per_example",
    "structured_step_pallas",
    "structured_step_reference",
    "structured_step_xla",
    "structured_trace_init",
    "structured_trace_step",
    "sum_leading",
    "task_setup",
    "trace_step_diag_pallas",
    "trace_step_diag_reference",
    "trace_step_diag_xla",
    "trace_step_pallas",
    "trace_step_reference",
    "trace_step_tree",
    "trace_step_xla",
    "trace_structure",
    "unit_blocks",
    "unit_layout",
]
