"""Pallas kernels with their pure-jnp references, selected by backend."""

from bplambda_jax.kernels._trace_step import DEFAULT_BLOCK_P
from bplambda_jax.kernels._trace_step import IMPLS
from bplambda_jax.kernels._trace_step import select_impl
from bplambda_jax.kernels._trace_step import trace_step
from bplambda_jax.kernels._trace_step import trace_step_diag
from bplambda_jax.kernels._trace_step import trace_step_diag_pallas
from bplambda_jax.kernels._trace_step import trace_step_diag_reference
from bplambda_jax.kernels._trace_step import trace_step_diag_xla
from bplambda_jax.kernels._trace_step import trace_step_pallas
from bplambda_jax.kernels._trace_step import trace_step_reference
from bplambda_jax.kernels._trace_step import trace_step_xla

__all__ = [
    "DEFAULT_BLOCK_P",
    "IMPLS",
    "select_impl",
    "trace_step",
    "trace_step_diag",
    "trace_step_diag_pallas",
    "trace_step_diag_reference",
    "trace_step_diag_xla",
    "trace_step_pallas",
    "trace_step_reference",
    "trace_step_xla",
]
