"""Experiments: alignment metrics and the paper's experiments behind the ``bplambda`` command."""

from bplambda_jax.experiments._alignment import COLUMNS as ALIGNMENT_COLUMNS
from bplambda_jax.experiments._alignment import TASKS as ALIGNMENT_TASKS
from bplambda_jax.experiments._alignment import format_rows
from bplambda_jax.experiments._alignment import run_alignment
from bplambda_jax.experiments._alignment import task_setup
from bplambda_jax.experiments._metrics import alignment
from bplambda_jax.experiments._metrics import cosine
from bplambda_jax.experiments._metrics import default_step_mask
from bplambda_jax.experiments._toy import run_toy

__all__ = [
    "ALIGNMENT_COLUMNS",
    "ALIGNMENT_TASKS",
    "alignment",
    "cosine",
    "default_step_mask",
    "format_rows",
    "run_alignment",
    "run_toy",
    "task_setup",
]
