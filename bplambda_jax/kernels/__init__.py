"""Pallas kernels with their pure-jnp references, selected by the platform a program is lowered for.

* the dense trace step (``trace_step*``): E ← c·M·E + G for any synthesiser;
* the structured trace step (``structured_step*``): the same for a linear synthesiser when M is
  diagonal or unit-block-diagonal, on the blocks only (:class:`BlockPattern`).
"""

from bplambda_jax.kernels._platform import IMPLS
from bplambda_jax.kernels._structured_step import DIAGONAL
from bplambda_jax.kernels._structured_step import BlockPattern
from bplambda_jax.kernels._structured_step import block_pattern
from bplambda_jax.kernels._structured_step import structured_step
from bplambda_jax.kernels._trace_step import trace_step
from bplambda_jax.kernels._trace_step import trace_step_diag

__all__ = [
    "BlockPattern",
    "DIAGONAL",
    "IMPLS",
    "block_pattern",
    "structured_step",
    "trace_step",
    "trace_step_diag",
]
