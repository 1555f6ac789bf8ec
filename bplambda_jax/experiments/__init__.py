"""Experiments: alignment metrics and the paper's experiments behind the ``bplambda`` command."""

from bplambda_jax.experiments._alignment import COLUMNS as ALIGNMENT_COLUMNS
from bplambda_jax.experiments._alignment import TASKS as ALIGNMENT_TASKS
from bplambda_jax.experiments._alignment import format_rows
from bplambda_jax.experiments._alignment import run_alignment
from bplambda_jax.experiments._alignment import task_setup
from bplambda_jax.experiments._metrics import alignment
from bplambda_jax.experiments._metrics import cosine
from bplambda_jax.experiments._metrics import default_step_mask
from bplambda_jax.experiments._task_metrics import accuracy
from bplambda_jax.experiments._task_metrics import bits_per_step
from bplambda_jax.experiments._task_metrics import evaluate
from bplambda_jax.experiments._task_metrics import loss_per_step
from bplambda_jax.experiments._task_metrics import predict
from bplambda_jax.experiments._task_metrics import task_metrics
from bplambda_jax.experiments._toy import run_toy

__all__ = [
    "ALIGNMENT_COLUMNS",
    "ALIGNMENT_TASKS",
    "accuracy",
    "alignment",
    "bits_per_step",
    "cosine",
    "default_step_mask",
    "evaluate",
    "format_rows",
    "loss_per_step",
    "predict",
    "run_alignment",
    "run_toy",
    "task_metrics",
    "task_setup",
]
