"""Task metrics (predict, loss and bits per target step, accuracy, evaluate) and the Task
descriptions."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bplambda_jax import experiments
from bplambda_jax.experiments import RunConfig
from bplambda_jax.experiments._setup import make_setup
from bplambda_jax import tasks
from bplambda_jax.model import Batch, make_model
from bplambda_jax.model._model import loss_and_states

from helpers import jit, random_batch


def setup(cell, loss, T, B, d_in, d_out):
  """A small model, its parameters and a random batch, each made by one compiled program."""
  model = make_model(cell, loss, d_in, d_out, hidden_size=4)
  params = jit(model.init)(jax.random.key(0))
  batch = jit(lambda k: random_batch(k, T, B, d_in, d_out, loss))(jax.random.key(1))
  return model, params, batch


@pytest.mark.x64
@pytest.mark.parametrize("loss,d_out", [("mse", 3), ("ce", 4), ("bce", 5)])
def test_loss_per_step_is_the_objective(loss, d_out):
  model, params, batch = setup("tanh", loss, 6, 5, 2, d_out)

  @jit
  def run(params, batch):
    outputs = experiments.predict(model, params, batch.x)
    return (outputs, loss_and_states(model, params, batch)[0],
            experiments.loss_per_step(outputs, batch, loss),
            experiments.bits_per_step(outputs, batch, model.loss))

  outputs, objective, nats, bits = run(params, batch)
  chex.assert_shape(outputs, (6, 5, d_out))
  np.testing.assert_allclose(nats, objective, rtol=1e-12)
  np.testing.assert_allclose(bits, objective / math.log(2), rtol=1e-12)


def test_examples_without_targets_are_left_out_not_counted_as_zero():
  model, params, batch = setup("tanh", "ce", 5, 4, 2, 3)
  padded = Batch(*(jnp.concatenate([a, jnp.zeros_like(a[:, :2])], axis=1) for a in batch))
  metrics = jit(lambda p, b: experiments.task_metrics(model, p, b))
  got, want = (metrics(params, b) for b in (padded, batch))
  for name in ("loss", "accuracy"):
    np.testing.assert_allclose(got[name], want[name], rtol=1e-12)
  assert float(got["count"]) == 4.0


def test_accuracy_by_hand():
  logits = jnp.array([[[2.0, 0.0], [0.0, 1.0], [0.0, 1.0]],
                      [[0.0, 3.0], [5.0, 0.0], [0.0, 1.0]]])  # [T=2, B=3, 2]
  labels = jnp.array([[0, 0, 1], [1, 1, 1]])
  mask = jnp.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
  # example 0: steps 0, 1 both right (1); example 1: step 1 wrong (0); example 2: step 0 right.
  accuracy = jit(experiments.accuracy, static_argnums=2)
  np.testing.assert_allclose(accuracy(logits, Batch(jnp.zeros((2, 3, 1)), labels, mask), "ce"),
                             2 / 3)
  bits = jnp.array([[[1.0, 0.0, 1.0, 1.0]]])
  logits = jnp.array([[[3.0, -1.0, -2.0, 0.5]]])  # 3 of 4 signs right
  np.testing.assert_allclose(accuracy(logits, Batch(bits, bits, jnp.ones((1, 1))), "bce"), 0.75)
  with pytest.raises(ValueError, match="accuracy is defined for loss 'ce' or 'bce'"):
    experiments.accuracy(logits, Batch(bits, bits, jnp.ones((1, 1))), "mse")


def test_nan_is_never_masked_away():
  model, params, batch = setup("tanh", "ce", 5, 4, 2, 3)
  batch = batch._replace(mask=jnp.zeros((5, 4)).at[-1].set(1.0))
  metrics = jit(lambda p, b: experiments.task_metrics(model, p, b))
  assert all(np.isfinite(metrics(params, batch)[k]) for k in ("loss", "accuracy"))

  @jit
  def with_nan(params, batch):
    outputs = experiments.predict(model, params, batch.x).at[0, 0, 0].set(jnp.nan)  # masked step
    return [fn(outputs, batch, "ce") for fn in (experiments.loss_per_step,
                                                  experiments.bits_per_step, experiments.accuracy)]

  assert all(np.isnan(v) for v in with_nan(params, batch))
  params = jax.tree.map(lambda p: p * jnp.nan, params)
  assert all(np.isnan(metrics(params, batch)[k]) for k in ("loss", "accuracy"))


@pytest.mark.x64
def test_metrics_jit_and_errors():
  model, params, batch = setup("lstm", "bce", 4, 3, 3, 2)
  got, objective = jit(lambda p, b: (experiments.task_metrics(model, p, b),
                                     loss_and_states(model, p, b)[0]))(params, batch)
  assert set(got) == {"loss", "bits", "accuracy", "count"} and float(got["count"]) == 3.0
  np.testing.assert_allclose(got["loss"], objective, rtol=1e-12)
  np.testing.assert_allclose(got["bits"], objective / math.log(2), rtol=1e-12)
  assert 0.0 <= float(got["accuracy"]) <= 1.0
  with pytest.raises(ValueError, match="every metric name must be one of"):
    experiments.task_metrics(model, params, batch, ("loss", "f1"))
  mse = make_model("tanh", "mse", 3, 2, hidden_size=4)
  with pytest.raises(ValueError, match="'accuracy' is defined for loss 'ce' or 'bce'"):
    experiments.task_metrics(mse, mse.init(jax.random.key(0)), batch, ("accuracy",))
  with pytest.raises(ValueError, match=r"batch.mask must have shape \[T, B\] = \(4, 3\)"):
    experiments.loss_per_step(jnp.zeros((4, 3, 2)), batch._replace(mask=jnp.ones((4, 2))), "bce")


@pytest.mark.x64
def test_evaluate_over_padded_mnist_batches_equals_one_big_batch():
  rng = np.random.default_rng(0)
  data = tasks.SeqMnist(jnp.asarray(rng.integers(0, 256, (23, 28, 28)), jnp.uint8),
                        jnp.asarray(rng.integers(0, 10, 23), jnp.int32))
  model = make_model("tanh", "ce", 28, 10, hidden_size=5)
  params = jit(model.init)(jax.random.key(0))
  n = tasks.mnist_num_batches(data, 5, padded=True)
  got, whole = jit(lambda p: (
      experiments.evaluate(model, p, lambda i: tasks.mnist_eval_batch(data, i, 5), n),
      experiments.task_metrics(model, p, tasks.mnist_eval_batch(data, 0, 23))))(params)
  assert n == 5 and float(got["count"]) == 23.0
  for k in ("loss", "accuracy"):
    np.testing.assert_allclose(got[k], whole[k], rtol=1e-10)


def test_runner_batches_fit_each_task():
  """The batches the runner trains on (``make_setup``'s data function) fit the task's model and
  loss, for every task that generates its data: shapes [T, B, D_in] and targets of the task's
  size, targets in the loss's domain (class labels in range, binary BCE targets), a 0/1 mask
  with a target in every example, a finite loss of the runner's model on them, and a fresh
  batch at the next update for the randomly drawn tasks."""
  assert tasks.TASK_NAMES == tuple(sorted(tasks.TASK_NAMES))
  B = 4
  for name in tasks.TASK_NAMES:
    if name.startswith("seqmnist"):  # needs the data set (tests/test_seq_mnist.py)
      continue
    setup = make_setup(RunConfig(task=name, batch_size=B, seeds=1).resolve())
    task, model = setup.task, setup.model
    assert (model.input_size, model.output_size, model.loss.name) == (
        task.input_size, task.output_size, task.loss)
    batch = jit(lambda k, s: setup.batch(None, k, setup.level0, s))
    b0, b1 = batch(jax.random.key(0), 0), batch(jax.random.key(0), 1)
    T = b0.x.shape[0]
    assert T == (task.seq_len if name in ("copy", "copy-repeat") else setup.config.seq_len)
    y_shape = (T, B) if task.loss == "ce" else (T, B, task.output_size)
    chex.assert_shape([b0.x, b0.y, b0.mask], [(T, B, task.input_size), y_shape, (T, B)])
    x, y, mask = (np.asarray(a) for a in b0)
    assert np.all(np.isfinite(x)) and set(np.unique(mask)) <= {0.0, 1.0}, name
    assert np.all(mask.sum(0) >= 1), name
    if task.loss == "ce":
      assert y.min() >= 0 and y.max() < task.output_size, name
    elif task.loss == "bce":
      assert set(np.unique(y[mask > 0])) <= {0.0, 1.0}, name
    loss, _ = jit(lambda p, b: loss_and_states(model, p, b))(model.init(jax.random.key(1)), b0)
    assert np.isfinite(float(loss)) and float(loss) > 0.0, name
    if name != "toy":  # the toy task is one fixed batch; the others draw fresh data per update
      assert float(np.abs(np.asarray(b1.x) - x).max()) > 0.0, name
  with pytest.raises(ValueError, match="task must be one of"):
    tasks.get_task("mnist")
  with pytest.raises(ValueError, match="max_n applies only to task 'copy-repeat'"):
    tasks.get_task("toy", max_n=3)
