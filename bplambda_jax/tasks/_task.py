"""What a runner needs to know about each task: shapes, loss, metrics, splits, paper sizes.

====================  =====  =====  =======  ====  ================================
task                  T      D_in   D_out    loss  data
====================  =====  =====  =======  ====  ================================
toy                   10     10     2        mse   ``toy_batch`` (fixed)
plastic-toy           10     10     2        mse   ``plastic_toy_batch``
line-draw             10     10     2        mse   ``line_draw_batch`` (whole line)
copy-repeat           max    10     9        bce   ``curriculum_batch`` (curriculum)
copy                  (R+1)N+3  10  9        bce   ``copy_repeat_batch`` at a fixed level (N, R)
seqmnist-row          28     28     10 (ce)  ce    ``mnist_data_fn(..., 'row')``
seqmnist-pixel        784    1      10 (ce)  ce    ``mnist_data_fn(..., 'pixel')``
seqmnist-permuted     784    1      10 (ce)  ce    ``mnist_data_fn(..., 'permuted')``
====================  =====  =====  =======  ====  ================================
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

from bplambda_jax import _validation
from bplambda_jax.model import Model, make_model
from bplambda_jax.tasks import _copy_repeat as copy_repeat
from bplambda_jax.tasks import _line_draw as line_draw
from bplambda_jax.tasks import _seq_mnist as seq_mnist
from bplambda_jax.tasks import _toy as toy

DEFAULT_MAX_N = 10
DEFAULT_PATTERN_LENGTH = 48  # the copy task's default: T = 2·48 + 3 = 99


class Task(NamedTuple):
  """A task's description.

  Attributes:
    name: the task's name (see :data:`TASK_NAMES`).
    seq_len: T (for copy-repeat the padded ``max_len``).
    input_size: D_in.
    output_size: D_out (the number of classes for 'ce').
    loss: 'mse', 'ce' or 'bce'.
    metrics: names of the metrics to record: 'loss' (nats per target step), 'bits' (bits per
      target step), 'accuracy' (``experiments.task_metrics``), 'alignment' (learning-signal
      cosine with BPTT, ``experiments.alignment``), 'n', 'r' (the curriculum level).
    score: the headline result: 'alignment', 'solved' (largest (N, R) solved) or
      'test_accuracy'.
    eval_split: the split to evaluate during training and select the model on ('validation'),
      or None for generated tasks (evaluate on fresh batches).
    test_split: the split reported once at the end ('test'), or None.
    trained: the parameter groups that learn in the paper's setting.
    cell, hidden_size, batch_size: the paper's model and batch size.
    generator: ``generator(key, batch_size) -> Batch`` for tasks whose batches need nothing else,
      None for copy-repeat (:func:`curriculum_batch`) and sequential MNIST (:func:`mnist_data_fn`,
      after :func:`load_mnist`).
  """

  name: str
  seq_len: int
  input_size: int
  output_size: int
  loss: str
  metrics: tuple
  score: str
  eval_split: Optional[str]
  test_split: Optional[str]
  trained: tuple
  cell: str
  hidden_size: int
  batch_size: int
  generator: Optional[Callable] = None

  def make_model(self, cell: Optional[str] = None, hidden_size: Optional[int] = None) -> Model:
    """The task's model: ``make_model(cell, loss, D_in, D_out, hidden_size)`` (paper defaults)."""
    return make_model(cell or self.cell, self.loss, self.input_size, self.output_size,
                      hidden_size or self.hidden_size)


_ALL = ("cell", "readout", "synth")


def _toy_tasks():
  common = dict(seq_len=10, input_size=toy.INPUT_SIZE, output_size=toy.OUTPUT_SIZE, loss="mse",
                eval_split=None, test_split=None, cell="linear", hidden_size=30, batch_size=10)
  return {
      "toy": Task("toy", metrics=("loss", "alignment"), score="alignment", trained=("synth",),
                  generator=lambda key, batch_size: toy.toy_batch(batch_size, 10), **common),
      "plastic-toy": Task("plastic-toy", metrics=("loss", "alignment"), score="alignment",
                          trained=_ALL, generator=lambda key, batch_size:
                          line_draw.plastic_toy_batch(key, batch_size, 10), **common),
      "line-draw": Task("line-draw", metrics=("loss",), score="loss", trained=_ALL,
                        generator=lambda key, batch_size: line_draw.line_draw_batch(
                            key, batch_size, 10, npoints=3, noise=0.1, end_only=False),
                        **{**common, "cell": "lstm"}),
  }


def _mnist_task(layout: str) -> Task:
  T, d_in = seq_mnist.LAYOUTS[layout]
  return Task(f"seqmnist-{layout}", seq_len=T, input_size=d_in, output_size=seq_mnist.NUM_CLASSES,
              loss="ce", metrics=("loss", "accuracy"), score="test_accuracy",
              eval_split="validation", test_split="test", trained=("cell", "readout", "synth"),
              cell="lstm", hidden_size=30, batch_size=50)


TASK_NAMES = ("copy", "copy-repeat", "line-draw", "plastic-toy", "seqmnist-permuted",
              "seqmnist-pixel", "seqmnist-row", "toy")


def get_task(name: str, *, max_n: Optional[int] = None, pattern_length: Optional[int] = None,
             repeats: int = 1) -> Task:
  """The description of a task by name.

  Args:
    name: one of :data:`TASK_NAMES`.
    max_n: copy-repeat only: the largest pattern length the padded batches hold; the sequence
      length is then ``(max_n + 1)·max_n + 3`` (default max_n = 10: T = 113).
    pattern_length, repeats: copy only: the fixed level (N, R), T = (R+1)·N + 3 (R = 1 is the
      plain copy task; long horizons: N = 48, 148, 498 give T ≈ 100, 300, 1000; default N = 48).

  Returns:
    The :class:`Task`. The toy is a fixed linear RNN whose synthesiser alone learns; the plastic
    toy trains everything on 3 noisy targets; line-draw draws the whole line to one of 3 noisy
    targets; copy-repeat: LSTM 100, batch 100, curriculum from (1, 1); sequential MNIST: LSTM 30,
    batch 50, model selection on validation, test reported at the end.
  """
  if name not in TASK_NAMES:
    raise ValueError(f"task must be one of {TASK_NAMES}, got {name!r}.")
  if max_n is not None and name != "copy-repeat":
    raise ValueError(f"max_n applies only to task 'copy-repeat', got task {name!r}.")
  if name == "copy":
    pattern_length = DEFAULT_PATTERN_LENGTH if pattern_length is None else pattern_length
    pattern_length = _validation.integer("pattern_length", pattern_length, minimum=1)
    repeats = _validation.integer("repeats", repeats, minimum=1)
    return Task("copy", seq_len=copy_repeat.seq_len(pattern_length, repeats),
                input_size=copy_repeat.INPUT_SIZE, output_size=copy_repeat.OUTPUT_SIZE,
                loss="bce", metrics=("loss", "bits", "accuracy"), score="bits", eval_split=None,
                test_split=None, trained=_ALL, cell="lstm", hidden_size=64, batch_size=16,
                generator=lambda key, batch_size: copy_repeat.copy_repeat_batch(
                    key, pattern_length, repeats, batch_size,
                    copy_repeat.seq_len(pattern_length, repeats)))
  if name.startswith("seqmnist-"):
    return _mnist_task(name[len("seqmnist-"):])
  if name == "copy-repeat":
    max_n = DEFAULT_MAX_N if max_n is None else max_n
    max_n = _validation.integer("max_n", max_n, minimum=1)
    return Task("copy-repeat", seq_len=copy_repeat.seq_len(max_n, max_n),
                input_size=copy_repeat.INPUT_SIZE, output_size=copy_repeat.OUTPUT_SIZE,
                loss="bce", metrics=("loss", "bits", "accuracy", "n", "r"), score="solved",
                eval_split=None, test_split=None, trained=_ALL, cell="lstm", hidden_size=100,
                batch_size=100)
  return _toy_tasks()[name]
