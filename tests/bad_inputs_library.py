"""Cases of docs/bad-inputs.md's sections "Divergence stops a run" (CLI) and "The default path
is checked" (Python API), registered with ``test_bad_inputs.case`` (that module imports this one).

Each of these inputs passed silently, ran into an internal error or was refused for its type
before the checks became the default: a case here fails on such a library.
"""

from __future__ import annotations

import contextlib
import io

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bplambda_jax import cli
from bplambda_jax import experiments
from bplambda_jax import rules
from bplambda_jax import tasks
from bplambda_jax import training
from bplambda_jax.experiments import cosine
from bplambda_jax.model import Batch, from_flax, make_model

from test_bad_inputs import _argv, _raises, _toy_setup, case, run_cli


def _accepted(fn, describe) -> str:
  """'accepted: …' with ``describe(result)``; the case fails if ``fn`` raises."""
  return f"accepted: {describe(fn())}"


# ------------------------------------------------------------------------ CLI: divergence


def _run_compiling_cli(ctx) -> str:
  """``exit N`` and stderr of the row's command, run in-process all the way (it must train)."""
  err = io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    code = cli.main(_argv(ctx.row.code[0]))
  return f"exit {code}\n{err.getvalue()}"


for _id in ("cli-diverge-toy-lr-synth", "cli-diverge-plastic-lr-cell", "cli-diverge-toy-flag",
            "cli-diverge-align", "cli-diverge-limit-raised"):
  case(_id)(_run_compiling_cli)
case("cli-set-max-loss")(run_cli)


# ------------------------------------------------------------- Python API: checked by default


def _nan_at(batch, step_index):
  return lambda key, step: batch._replace(x=jnp.where(step == step_index, jnp.nan, batch.x))


@case("lib-update-default-nan")
def _(ctx):
  _, r, opt, batch = _toy_setup()
  state = training.init_state(r, opt, jax.random.key(0))
  bad = batch._replace(x=batch.x.at[0].set(jnp.nan))
  _, m = jax.jit(training.make_update(r, opt))(state, bad)
  return _raises(lambda: training.raise_if_failed(m))


@case("lib-run-default-nan")
def _(ctx):
  _, r, opt, batch = _toy_setup()
  return _raises(lambda: training.run(r, opt, _nan_at(batch, 2), jax.random.key(0), 4))


@case("lib-vmap-lambda-default")
def _(ctx):
  _, r, opt, batch = _toy_setup()
  states = jax.vmap(lambda k: training.init_state(r, opt, k))(jax.random.split(jax.random.key(0)))
  update = jax.jit(jax.vmap(training.make_update(r, opt), in_axes=(0, None, 0)))
  _, m = update(states, batch, {"lambda_": jnp.array([0.5, 3.0])})
  return _raises(lambda: training.raise_if_failed(m))


@case("lib-sweep-ce-labels")
def _(ctx):
  _, r, opt, batch = _toy_setup(loss="ce", rule="bptt", output_size=4)
  keys = jax.random.split(jax.random.key(0), 2)
  data_fn = lambda k, step: batch._replace(y=jnp.where(step == 1, 4, batch.y))  # traced labels
  return _raises(lambda: training.sweep(r, opt, data_fn, keys, 2))


@case("lib-run-bce-raw-pixels")
def _(ctx):
  _, r, opt, batch = _toy_setup(loss="bce", rule="bptt")
  pixels = batch._replace(y=255.0 * (batch.y > 0))
  return _raises(lambda: training.run(r, opt, lambda k, s: pixels, jax.random.key(0), 3))


@case("lib-stream-default-nan")
def _(ctx):
  model = make_model("lstm", "mse", 3, 2, 4)
  r = rules.eprop(model)
  drv = training.stream(r, training.optimiser(1e-2, 1e-2))
  state = drv.init(r.init(jax.random.key(0)), 2)
  xs = jnp.ones((5, 2, 3)).at[2, 0, 0].set(jnp.nan)
  return _raises(lambda: drv.run(state, xs, jnp.ones((5, 2, 2)), jnp.ones((5, 2))))


@case("lib-raise-if-failed-unchecked")
def _(ctx):
  _, r, opt, batch = _toy_setup()
  state = training.init_state(r, opt, jax.random.key(0))
  _, m = jax.jit(training.make_update(r, opt, checked=False))(state, batch)
  return _raises(lambda: training.raise_if_failed(m))


# -------------------------------------------------------------------- Python API: divergence


@case("lib-run-divergence")
def _(ctx):
  model = tasks.toy_model(8)
  r = rules.bp_lambda(model, mode="sequence")
  opt = training.optimiser(0.0, 0.0, 1e30)
  batch = tasks.toy_batch(2, 5)
  return _raises(lambda: training.run(r, opt, lambda k, s: batch, jax.random.key(0), 5))


@case("lib-run-toy-divergence")
def _(ctx):
  return _raises(lambda: experiments.run_toy(lambdas=(1.0,), seeds=(0,), steps=4, hidden_size=8,
                                             seq_len=5, batch_size=2, record_every=2,
                                             lr_synth=1e30))


@case("lib-cosine-overflow")
def _(ctx):
  b = jnp.asarray([1.0, 2.0, -3.0], jnp.float32)
  c = jax.jit(cosine)(1e30 * b, b)
  return f"cosine = {float(c):.4f}"


# ------------------------------------------------------------------- Python API: silent ones


@case("lib-stream-every-none")
def _(ctx):
  model = make_model("lstm", "mse", 3, 2, 4)
  r = rules.eprop(model)
  drv = training.stream(r, training.optimiser(1e-2, 1e-2), every=None)
  state = drv.init(r.init(jax.random.key(0)), 2)
  return _raises(lambda: drv.run(state, jnp.ones((5, 2, 3)), jnp.ones((5, 2, 2)),
                                 jnp.ones((5, 2))))


@case("lib-copy-repeat-traced-long")
def _(ctx):
  batch = jax.jit(lambda n: tasks.copy_repeat_batch(jax.random.key(0), n, 2, 2, 12))(5)
  model = make_model("lstm", "bce", tasks.COPY_INPUT_SIZE, tasks.COPY_OUTPUT_SIZE, 4)
  r = rules.bptt(model)
  opt = training.optimiser(1e-2, 1e-2)
  state = training.init_state(r, opt, jax.random.key(1))
  _, m = jax.jit(training.make_update(r, opt))(state, batch)
  return (f"batch.x all NaN: {bool(jnp.all(jnp.isnan(batch.x)))}, "
          f"metrics['guard'] == {int(m['guard'])}")


@case("lib-stream-synth-sgd-bool")
def _(ctx):
  model = make_model("lstm", "mse", 3, 2, 4)
  return _raises(lambda: training.stream(rules.bp_lambda(model), training.optimiser(1e-2, 1e-2),
                                         synth_sgd=True))


@case("lib-make-model-float64")
def _(ctx):
  with jax.enable_x64(False):
    return _raises(lambda: make_model("lstm", "mse", 3, 2, 4, param_dtype="float64"))


# ------------------------------------------------------------------ Python API: unclear, late


@case("lib-optimiser-numpy-scalars")
def _(ctx):
  return _accepted(lambda: training.optimiser(np.float32(1e-3), jnp.array(1e-3)),
                   lambda opt: "an optax optimiser" if hasattr(opt, "update") else opt)


@case("lib-run-numpy-steps")
def _(ctx):
  _, r, opt, batch = _toy_setup()
  return _accepted(lambda: training.run(r, opt, lambda k, s: batch, jax.random.key(0),
                                        np.int64(5)),
                   lambda out: f"metrics['loss'] of shape {tuple(out[1]['loss'].shape)}")


@case("lib-toy-batch-bool")
def _(ctx):
  return _raises(lambda: tasks.toy_batch(True, 10))


@case("lib-sweep-one-key")
def _(ctx):
  _, r, opt, batch = _toy_setup()
  return _raises(lambda: training.sweep(r, opt, lambda k, s: batch, jax.random.key(0), 2))


@case("lib-sweep-lambda-length")
def _(ctx):
  _, r, opt, batch = _toy_setup()
  keys = jax.random.split(jax.random.key(0), 2)
  return _raises(lambda: training.sweep(r, opt, lambda k, s: batch, keys, 2,
                                        hparams={"lambda_": jnp.array([0.0, 0.5, 1.0])}))


@case("lib-sweep-lambda-list")
def _(ctx):
  _, r, opt, batch = _toy_setup()
  keys = jax.random.split(jax.random.key(0), 2)
  return _accepted(lambda: training.sweep(r, opt, lambda k, s: batch, keys, 2,
                                          hparams={"lambda_": [0.0, 1.0]}),
                   lambda out: f"metrics['loss'] of shape {tuple(out[1]['loss'].shape)}")


@case("lib-sweep-mixed-hparams")
def _(ctx):
  _, r, opt, batch = _toy_setup()
  keys = jax.random.split(jax.random.key(0), 2)
  return _accepted(lambda: training.sweep(r, opt, lambda k, s: batch, keys, 2,
                                          hparams={"lambda_": jnp.array([0.0, 1.0]),
                                                   "gamma": 0.9}),
                   lambda out: f"metrics['loss'] of shape {tuple(out[1]['loss'].shape)}")


@case("lib-flax-gru-bfloat16")
def _(ctx):
  cell = from_flax(nn.GRUCell(4, param_dtype=jnp.bfloat16))
  model = make_model(cell, "mse", 3, 2, param_dtype="bfloat16")
  r = rules.bptt(model)
  batch = Batch(jnp.ones((5, 2, 3), jnp.bfloat16), jnp.ones((5, 2, 2)), jnp.ones((5, 2)))

  def train():
    params = r.init(jax.random.key(0))
    return params, r.grads(params, batch)[1]["loss"]

  return _accepted(train, lambda out: f"{jax.tree.leaves(out[0])[0].dtype} parameters, loss "
                                      f"{'finite' if bool(jnp.isfinite(out[1])) else 'not finite'}")


@case("lib-bfloat16-model-float32-data")
def _(ctx):
  model = make_model("lstm", "mse", 3, 2, 4, param_dtype="bfloat16")
  r = rules.bptt(model)
  params = r.init(jax.random.key(0))
  return _raises(lambda: r.grads(params, Batch(jnp.ones((5, 2, 3), jnp.float32),
                                               jnp.ones((5, 2, 2)), jnp.ones((5, 2)))))
