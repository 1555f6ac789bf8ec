"""Experiments: task metrics, alignment, and the runs behind the ``bplambda`` command."""

from bplambda_jax.experiments._alignment import COLUMNS as ALIGNMENT_COLUMNS
from bplambda_jax.experiments._alignment import TASKS as ALIGNMENT_TASKS
from bplambda_jax.experiments._alignment import format_rows
from bplambda_jax.experiments._alignment import run_alignment
from bplambda_jax.experiments._alignment import task_setup
from bplambda_jax.experiments._config import PRESETS
from bplambda_jax.experiments._config import RunConfig
from bplambda_jax.experiments._config import parse_grid
from bplambda_jax.experiments._config import parse_set
from bplambda_jax.experiments._config import preset
from bplambda_jax.experiments._experiment import run
from bplambda_jax.experiments._metrics import alignment
from bplambda_jax.experiments._metrics import cosine
from bplambda_jax.experiments._metrics import default_step_mask
from bplambda_jax.experiments._results import ResultsError
from bplambda_jax.experiments._results import format_mean_sd
from bplambda_jax.experiments._results import mean_sd
from bplambda_jax.experiments._runner import Interrupted
from bplambda_jax.experiments._runner import Run
from bplambda_jax.experiments._runner import RunError
from bplambda_jax.experiments._task_metrics import accuracy
from bplambda_jax.experiments._task_metrics import bits_per_step
from bplambda_jax.experiments._task_metrics import evaluate
from bplambda_jax.experiments._task_metrics import loss_per_step
from bplambda_jax.experiments._task_metrics import predict
from bplambda_jax.experiments._task_metrics import task_metrics
from bplambda_jax.experiments._stream_run import STREAM_TASKS
from bplambda_jax.experiments._stream_run import run_stream
from bplambda_jax.experiments._stream_run import stream_settings
from bplambda_jax.experiments._tasks import Parts as TaskParts
from bplambda_jax.experiments._tasks import RunTask
from bplambda_jax.experiments._tasks import generated
from bplambda_jax.experiments._tasks import register_task
from bplambda_jax.experiments._toy import run_toy

__all__ = [
    "ALIGNMENT_COLUMNS",
    "ALIGNMENT_TASKS",
    "Interrupted",
    "PRESETS",
    "ResultsError",
    "Run",
    "RunConfig",
    "RunError",
    "RunTask",
    "STREAM_TASKS",
    "TaskParts",
    "accuracy",
    "alignment",
    "bits_per_step",
    "cosine",
    "default_step_mask",
    "evaluate",
    "format_mean_sd",
    "format_rows",
    "generated",
    "loss_per_step",
    "mean_sd",
    "parse_grid",
    "parse_set",
    "predict",
    "preset",
    "register_task",
    "run",
    "run_alignment",
    "run_stream",
    "run_toy",
    "stream_settings",
    "task_metrics",
    "task_setup",
]
