"""Experiments: task metrics, alignment, and the runs behind the ``bplambda`` command."""

from bplambda_jax.experiments._alignment import run_alignment
from bplambda_jax.experiments._config import PRESETS
from bplambda_jax.experiments._config import RunConfig
from bplambda_jax.experiments._config import preset
from bplambda_jax.experiments._experiment import run_experiment
from bplambda_jax.experiments._metrics import alignment
from bplambda_jax.experiments._metrics import cosine
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
from bplambda_jax.experiments._stream_run import run_stream
from bplambda_jax.experiments._tasks import Parts as TaskParts
from bplambda_jax.experiments._tasks import RunTask
from bplambda_jax.experiments._tasks import generated
from bplambda_jax.experiments._tasks import register_task
from bplambda_jax.experiments._toy import run_toy

__all__ = [
    "Interrupted",
    "PRESETS",
    "ResultsError",
    "Run",
    "RunConfig",
    "RunError",
    "RunTask",
    "TaskParts",
    "accuracy",
    "alignment",
    "bits_per_step",
    "cosine",
    "evaluate",
    "format_mean_sd",
    "generated",
    "loss_per_step",
    "mean_sd",
    "predict",
    "preset",
    "register_task",
    "run_alignment",
    "run_experiment",
    "run_stream",
    "run_toy",
    "task_metrics",
]
