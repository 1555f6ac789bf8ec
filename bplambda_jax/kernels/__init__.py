"""Pallas kernels with their pure-jnp references, selected by the platform a program is lowered for.

* the dense trace step (``trace_step*``): E ← c·M·E + G for any synthesiser;
* the structured trace step (``structured_step*``): the same for a linear synthesiser when M is
  diagonal or unit-block-diagonal, on the blocks only (:class:`BlockPattern`).
"""

from bplambda_jax.kernels._platform import IMPLS
from bplambda_jax.kernels._platform import select_impl
from bplambda_jax.kernels._structured_step import DIAGONAL
from bplambda_jax.kernels._structured_step import BlockPattern
from bplambda_jax.kernels._structured_step import block_pattern
from bplambda_jax.kernels._structured_step import padded_columns
from bplambda_jax.kernels._structured_step import structured_step
from bplambda_jax.kernels._structured_step import structured_step_pallas
from bplambda_jax.kernels._structured_step import structured_step_reference
from bplambda_jax.kernels._structured_step import structured_step_xla
from bplambda_jax.kernels._trace_step import DEFAULT_BLOCK_P
from bplambda_jax.kernels._trace_step import trace_step
from bplambda_jax.kernels._trace_step import trace_step_diag
from bplambda_jax.kernels._trace_step import trace_step_diag_pallas
from bplambda_jax.kernels._trace_step import trace_step_diag_reference
from bplambda_jax.kernels._trace_step import trace_step_diag_xla
from bplambda_jax.kernels._trace_step import trace_step_pallas
from bplambda_jax.kernels._trace_step import trace_step_reference
from bplambda_jax.kernels._trace_step import trace_step_xla

__all__ = [
    "BlockPattern",
    "DEFAULT_BLOCK_P",
    "DIAGONAL",
    "IMPLS",
    "block_pattern",
    "padded_columns",
    "select_impl",
    "structured_step",
    "structured_step_pallas",
    "structured_step_reference",
    "structured_step_xla",
    "trace_step",
    "trace_step_diag",
    "trace_step_diag_pallas",
    "trace_step_diag_reference",
    "trace_step_diag_xla",
    "trace_step_pallas",
    "trace_step_reference",
    "trace_step_xla",
]
