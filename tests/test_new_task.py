"""A new task is one RunTask: the recall task of docs/extending.md runs end to end through
``bplambda run`` at a tiny budget, and the experiments layer needs nothing else."""

import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bplambda_jax as bl
from bplambda_jax import cli
from bplambda_jax.experiments import _tasks

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def _recall_task():
  """The RunTask of the page's "A new task" section, from the page's own code."""
  section = DOC.read_text().split("## A new task", 1)[1]
  block = re.findall(r"^```python\n(.*?)^```", section, flags=re.S | re.M)[0]
  namespace = {"jax": jax, "jnp": jnp, "bl": bl}
  exec(compile(block, "docs/extending.md, A new task", "exec"), namespace)
  return namespace["recall"]


@pytest.fixture
def recall():
  """The page's recall task, registered for one test."""
  saved = dict(_tasks.RUN_TASKS)
  _tasks.RUN_TASKS.pop("recall", None)  # the page's own test may have registered it
  try:
    yield bl.experiments.register_task(_recall_task())
  finally:
    _tasks.RUN_TASKS.clear()
    _tasks.RUN_TASKS.update(saved)


def test_the_recall_task_resolves_from_its_run_task(recall, capsys):
  assert cli.main(["run", "recall", "--rule", "bp_lambda,tbptt:2", "--print-config"]) == 0
  config = json.loads(capsys.readouterr().out)
  assert (config["cell"], config["hidden_size"], config["batch_size"]) == ("lstm", 16, 8)
  assert (config["lr_cell"], config["steps"], config["eval_every"]) == (1e-2, 500, 100)
  assert cli.main(["run", "recall", "--set", "seq_len=5", "--print-config"]) == 2
  assert "config key 'seq_len' applies to toy, plastic-toy and line-draw, not 'recall'" in \
      capsys.readouterr().err


@pytest.mark.slow  # ~18 s on a busy two-core machine: a whole (tiny) run, compiled, plotted
def test_the_recall_task_runs_through_bplambda_run(recall, tmp_path, capsys):
  out = tmp_path / "recall"
  code = cli.main(["run", "recall", "--rule", "tbptt:2", "--steps", "4", "--seeds", "2",
                   "--set", "chunk=2", "--set", "eval_every=2", "--set", "hidden_size=4",
                   "--set", "cell=linear", "--out", str(out), "--no-progress"])
  assert code == 0, capsys.readouterr().err
  summary = json.loads((out / "summary.json").read_text())
  loss = summary["rules"]["tbptt:2"]["eval"]["loss"]
  assert loss["n"] == 2 and np.all(np.isfinite(loss["values"]))
  assert summary["rules"]["tbptt:2"]["steps"] == 4
  assert {"loss.png", "eval_loss.png"} <= set(summary["figures"])
