"""Bad input raises ValueError with a message naming the argument (and the accepted values)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bplambda_jax as bl
from bplambda_jax import bp_lambda, bptt, make_rule
from bplambda_jax import credit as sensitivity
from bplambda_jax import tasks
from bplambda_jax import model as cells
from bplambda_jax import model as synthesisers
from bplambda_jax.model import get_loss, make_model
from bplambda_jax import internals

from helpers import random_batch

T, B, D_IN, D_OUT, H = 3, 2, 2, 3, 3


@pytest.fixture(scope="module")
def lstm_model():
  return make_model("lstm", "mse", D_IN, D_OUT, hidden_size=H)


@pytest.fixture(scope="module")
def batch():
  return random_batch(jax.random.key(0), T, B, D_IN, D_OUT)


# ------------------------------------------------------------------------- hyper-parameters


@pytest.mark.parametrize("name", ["lambda_", "gamma"])
@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), float("inf")])
def test_unit_interval_in_factory(lstm_model, name, value):
  with pytest.raises(ValueError, match=rf"{name} must lie in \[0, 1\]"):
    bp_lambda(lstm_model, **{name: value})


@pytest.mark.parametrize("name", ["lambda_", "gamma"])
@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_unit_interval_via_hparams(lstm_model, batch, name, value):
  rule = bp_lambda(lstm_model)
  params = rule.init(jax.random.key(1))
  with pytest.raises(ValueError, match=rf"{name} must lie in \[0, 1\]"):
    rule.grads(params, batch, {name: value})
  with pytest.raises(ValueError, match=rf"{name} must lie in \[0, 1\]"):
    rule.grads(params, batch, {name: jnp.asarray(value)})
  # One value per call: arrays are rejected (sweep with jax.vmap instead).
  with pytest.raises(ValueError, match=rf"{name} must be a scalar \(one value per call; use "
                                       rf"jax.vmap to sweep\)"):
    rule.grads(params, batch, {name: jnp.asarray([0.5, 0.7])})
  with pytest.raises(ValueError, match=rf"{name} must be a scalar"):
    rule.grads(params, batch, {name: jnp.asarray([0.5, value])})


def test_negative_sg_scale(lstm_model, batch):
  with pytest.raises(ValueError, match=r"sg_scale must be a finite number >= 0"):
    bp_lambda(lstm_model, sg_scale=-1.0)
  rule = bp_lambda(lstm_model)
  params = rule.init(jax.random.key(1))
  with pytest.raises(ValueError, match=r"sg_scale must be a finite number >= 0"):
    rule.grads(params, batch, {"sg_scale": -0.5})


def test_negative_synth_sgd(lstm_model, batch):
  """Per-step synthesiser SGD (the authors' synth_alpha) is the step's synth_sgd and the stream's."""
  rule = bp_lambda(lstm_model)
  params = rule.init(jax.random.key(1))
  state = rule.init_state(params, B)
  w = bl.step_weights(batch.mask)
  with pytest.raises(ValueError, match=r"synth_sgd must be a finite number >= 0"):
    rule.step(params, state, batch.x[0], batch.y[0], w[0], synth_sgd=-0.1)
  opt = bl.training.optimiser(1e-3, 1e-3, 1e-3)
  with pytest.raises(ValueError, match=r"synth_sgd must be a finite number >= 0"):
    bl.stream(rule, opt, synth_sgd=-0.1)
  with pytest.raises(ValueError, match=r"synth_sgd must be a finite number >= 0"):
    bl.stream(rule, opt, synth_sgd=float("inf"))
  # no longer an option of the rule
  with pytest.raises(ValueError, match=r"does not take option\(s\) \['synth_alpha'\]"):
    make_rule("bp_lambda", lstm_model, synth_alpha=0.1)


def test_unknown_hparams_key(lstm_model, batch):
  rule = bp_lambda(lstm_model)
  params = rule.init(jax.random.key(1))
  with pytest.raises(ValueError, match=r"unknown hyper-parameters \['lamda'\].*accepted.*lambda_"):
    rule.grads(params, batch, {"lamda": 0.5})
  # synth_alpha is no hyper-parameter (per-step synthesiser SGD is step(..., synth_sgd=α)).
  with pytest.raises(ValueError, match=r"unknown hyper-parameters \['synth_alpha'\]"):
    rule.grads(params, batch, {"synth_alpha": 0.5})
  exact = bptt(lstm_model)
  with pytest.raises(ValueError, match=r"unknown hyper-parameters \['lambda_'\]"):
    exact.grads(exact.init(jax.random.key(1)), batch, {"lambda_": 0.5})


# ---------------------------------------------------------------------------- unknown names


def test_unknown_flavour_and_mode(lstm_model):
  with pytest.raises(ValueError, match=r"flavour must be one of .*'state'.*'eprop'.*'hc'"):
    bp_lambda(lstm_model, flavour="hc")
  with pytest.raises(ValueError, match=r"mode must be one of .*'online'.*'sequence'.*'batch'"):
    bp_lambda(lstm_model, mode="batch")


def test_unknown_cell():
  with pytest.raises(ValueError, match=r"cell must be one of \[.*'lstm'.*\], got 'lstn'"):
    make_model("lstn", "mse", D_IN, D_OUT, hidden_size=H)
  with pytest.raises(ValueError, match=r"cell must be one of"):
    cells.get_cell("elman", H)
  with pytest.raises(ValueError, match=r"hidden_size is required"):
    make_model("lstm", "mse", D_IN, D_OUT)


def test_unknown_loss():
  with pytest.raises(ValueError, match=r"loss must be one of \['bce', 'ce', 'mse'\], got 'mae'"):
    make_model("lstm", "mae", D_IN, D_OUT, hidden_size=H)
  with pytest.raises(ValueError, match=r"loss must be one of"):
    get_loss("l1")


def test_unknown_synthesiser():
  with pytest.raises(ValueError, match=r"synthesiser must be one of \['linear', 'mlp'\]"):
    synthesisers.get_synthesiser("conv")


def test_unknown_sensitivity(lstm_model):
  with pytest.raises(ValueError, match=r"unknown sensitivity 'bogus'; accepted: .*eprop.*rtrl"):
    bp_lambda(lstm_model, sensitivity="bogus")
  with pytest.raises(ValueError, match=r"unknown sensitivity 'rtlr'; accepted: immediate"):
    sensitivity.get_sensitivity("rtlr", lstm_model.cell)
  with pytest.raises(ValueError, match=r"sensitivity 'snap' needs an integer argument n"):
    sensitivity.get_sensitivity("snap", lstm_model.cell)


@pytest.mark.parametrize("kwargs,match", [
    ({"hidden_size": 0}, r"hidden_size must be a positive integer"),
    ({"hidden_size": 2.5}, r"hidden_size must be a positive integer"),
])
def test_bad_cell_sizes(kwargs, match):
  with pytest.raises(ValueError, match=match):
    cells.lstm(**kwargs)


def test_bad_model_sizes():
  with pytest.raises(ValueError, match=r"input_size must be a positive integer"):
    make_model("tanh", "mse", 0, D_OUT, hidden_size=H)
  with pytest.raises(ValueError, match=r"output_size must be a positive integer"):
    make_model("tanh", "mse", D_IN, -1, hidden_size=H)


def test_bad_synthesiser_arguments():
  with pytest.raises(ValueError, match=r"hidden_layers must be an integer >= 1"):
    synthesisers.mlp_synthesiser(0, 4)
  with pytest.raises(ValueError, match=r"hidden_size must be a positive integer"):
    synthesisers.mlp_synthesiser(1, 0)
  with pytest.raises(ValueError, match=r"d_in must be a positive integer"):
    synthesisers.linear_synthesiser().init(jax.random.key(0), 0, 3)


def test_bad_activation_and_connections():
  with pytest.raises(ValueError, match=r"activation must be one of .*'tanh'.*got 'gelu'"):
    cells.rnn(H, "gelu")
  with pytest.raises(ValueError, match=r"connections must have shape \(3, 3\)"):
    cells.columnar_lstm(H, connections=jnp.zeros((2, 2)))
  with pytest.raises(ValueError, match=r"connections must have a zero diagonal"):
    cells.columnar_lstm(H, connections=jnp.eye(H))
  with pytest.raises(ValueError, match=r"connections must be a \{0, 1\} mask"):
    cells.columnar_lstm(H, connections=0.5 * jnp.ones((H, H)) - 0.5 * jnp.eye(H))


# ------------------------------------------------------------------------------ batch checks


def _rules(model):
  # the state flavour online, the model's default flavour in sequence mode, and BPTT
  return [bp_lambda(model, flavour="state"), bp_lambda(model, mode="sequence"), bptt(model)]


@pytest.mark.parametrize("field,bad,match", [
    ("x", jnp.zeros((T, B, D_IN + 1)), r"batch\.x must have shape \[T, B, 2\]"),
    ("x", jnp.zeros((B, D_IN)), r"batch\.x must have shape"),
    ("y", jnp.zeros((T, B, D_OUT + 1)), r"batch\.y for loss 'mse' must have shape"),
    ("y", jnp.zeros((T, B + 1, D_OUT)), r"batch\.y for loss 'mse' must have shape"),
    ("mask", jnp.ones((T, B + 1)), r"batch\.mask must have shape \[T, B\]"),
    ("mask", jnp.ones((T,)), r"batch\.mask must have shape \[T, B\]"),
])
def test_wrong_batch_shapes(lstm_model, batch, field, bad, match):
  bad_batch = batch._replace(**{field: bad})
  for rule in _rules(lstm_model):
    params = rule.init(jax.random.key(2))
    with pytest.raises(ValueError, match=match):
      rule.grads(params, bad_batch)


@pytest.mark.parametrize("field", ["x", "y", "mask"])
@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_data(lstm_model, batch, field, bad_value):
  arr = getattr(batch, field)
  bad_batch = batch._replace(**{field: arr.at[(0,) * arr.ndim].set(bad_value)})
  for rule in _rules(lstm_model):
    params = rule.init(jax.random.key(2))
    with pytest.raises(ValueError, match=rf"batch\.{field} contains NaN or infinite values"):
      rule.grads(params, bad_batch)


@pytest.mark.parametrize("label", [-1, D_OUT, D_OUT + 5])
def test_labels_out_of_range_for_ce(label):
  model = make_model("tanh", "ce", D_IN, D_OUT, hidden_size=H)
  batch = random_batch(jax.random.key(3), T, B, D_IN, D_OUT, loss="ce")
  bad_batch = batch._replace(y=batch.y.at[1, 0].set(label))
  for rule in _rules(model):
    params = rule.init(jax.random.key(2))
    with pytest.raises(ValueError, match=r"batch\.y labels must lie in \[0, 3\)"):
      rule.grads(params, bad_batch)


def test_ce_needs_integer_labels():
  model = make_model("tanh", "ce", D_IN, D_OUT, hidden_size=H)
  batch = random_batch(jax.random.key(3), T, B, D_IN, D_OUT, loss="mse")
  rule = bp_lambda(model)
  with pytest.raises(ValueError, match=r"batch\.y for loss 'ce' must be integer labels"):
    rule.grads(rule.init(jax.random.key(2)), batch)


def test_batch_type_and_missing_synth(lstm_model, batch):
  rule = bp_lambda(lstm_model)
  params = rule.init(jax.random.key(2))
  with pytest.raises(TypeError, match=r"batch must be a bplambda_jax\.Batch"):
    rule.grads(params, tuple(batch))
  with pytest.raises(ValueError, match=r"params has no 'synth' entry"):
    rule.grads({k: v for k, v in params.items() if k != "synth"}, batch)


# --------------------------------------------------------------------- incompatible options


def test_sequence_mode_rejects_clipping_and_removed_options(lstm_model):
  with pytest.raises(ValueError, match=r"mode='sequence'.*clip_increments=True"):
    bp_lambda(lstm_model, mode="sequence", clip_increments=True)
  with pytest.raises(ValueError, match=r"mode='sequence'.*clip_increments=True"):
    bp_lambda(lstm_model, mode="sequence", faithful=True)  # clipping is the faithful default
  # alpha_learning is no longer an option (per-step synthesiser SGD is the step's synth_sgd)
  with pytest.raises(ValueError, match=r"does not take option\(s\) \['alpha_learning'\]"):
    make_rule("bp_lambda", lstm_model, mode="sequence", alpha_learning=True)


@pytest.mark.parametrize("cell_name", ["linear", "tanh", "gru", "columnar_lstm"])
def test_eprop_flavour_needs_the_lstm(cell_name):
  model = make_model(cell_name, "mse", D_IN, D_OUT, hidden_size=H)
  if model.cell.lstm is not None:  # the columnar LSTM has an LSTM cell-state path: accepted
    bp_lambda(model, flavour="eprop")
    return
  with pytest.raises(ValueError, match=r"flavour='eprop' needs a cell with an LSTM cell-state "
                                       r"path .*Use flavour='state'"):
    bp_lambda(model, flavour="eprop")


def test_readout_scale_needs_faithful(lstm_model):
  with pytest.raises(ValueError, match=r"readout_scale .* applies only with faithful=True"):
    bp_lambda(lstm_model, readout_scale=0.5)
  bp_lambda(lstm_model, readout_scale=0.5, faithful=True)  # accepted


def test_faithful_hc_flavour_needs_immediate_sensitivity(lstm_model):
  with pytest.raises(ValueError, match=r"faithful LSTM \[h, c\] flavour.*sensitivity='immediate'"):
    bp_lambda(lstm_model, flavour="state", faithful=True, sensitivity="eprop")


def test_eprop_sensitivity_needs_a_split():
  import flax.linen as nn
  cell = cells.from_flax(nn.GRUCell(features=H))._replace(split_step=None)  # no declared split
  model = make_model(cell, "mse", D_IN, D_OUT)
  with pytest.raises(ValueError, match=r"eprop needs the cell to declare its implicit/explicit"):
    bp_lambda(model, sensitivity="eprop")


def test_from_flax_rejects_non_cells():
  with pytest.raises(TypeError, match=r"from_flax expects a flax\.linen recurrent cell"):
    cells.from_flax(object())


# ----------------------------------------------------------------------------- integers and flags
# One rule everywhere (bplambda_jax._validation): a bool is not an integer, a numpy integer is.


def _integer_arguments():
  """(label, call taking the value) for integer arguments across the layers."""
  lstm = lambda: bl.make_model("lstm", "mse", 3, 2, hidden_size=4)
  key = jax.random.key(0)
  return [
      ("tasks.toy_batch batch_size", lambda v: tasks.toy_batch(batch_size=v)),
      ("tasks.toy_model hidden_size", lambda v: tasks.toy_model(hidden_size=v)),
      ("tasks.line_draw_batch batch_size", lambda v: tasks.line_draw_batch(key, v, npoints=3)),
      ("internals.mnist_permutation perm_seed", lambda v: internals.mnist_permutation(v)),
      ("tasks.curriculum_step batch_size",
       lambda v: tasks.curriculum_step(lambda s, b: (s, {}), batch_size=v, max_len=20)),
      ("make_model hidden_size", lambda v: bl.make_model("lstm", "mse", 3, 2, hidden_size=v)),
      ("mlp_synthesiser hidden_layers",
       lambda v: bl.model.mlp_synthesiser(hidden_layers=v, hidden_size=4)),
      ("tbptt n", lambda v: bl.tbptt(lstm(), v)),
      ("credit.snap n", lambda v: bl.credit.snap(lstm().cell, v)),
      ("credit.eprop_m m", lambda v: bl.credit.eprop_m(lstm().cell, v)),
      ("training.seed_mesh batch_axis", lambda v: bl.training.seed_mesh(batch_axis=v)),
  ]


def _ids(x):
  return x if isinstance(x, str) else ""


@pytest.mark.parametrize("label,call", _integer_arguments(), ids=_ids)
def test_integers_refuse_bool_and_accept_numpy(label, call):
  name = label.split()[-1]
  with pytest.raises(ValueError, match=rf"{name}.* must be .*got True"):
    call(True)
  call(np.int64(1))  # a numpy integer is an integer


@pytest.mark.parametrize("label,call", [
    ("linear_synthesiser bias", lambda v: bl.model.linear_synthesiser(bias=v)),
    ("mlp_synthesiser train_last_only",
     lambda v: bl.model.mlp_synthesiser(1, 4, train_last_only=v)),
    ("seed_mesh pad", lambda v: bl.training.shard_seeds(lambda k: k, bl.training.seed_mesh(),
                                                       pad=v)),
], ids=_ids)
def test_flags_refuse_integers(label, call):
  name = label.split()[-1]
  with pytest.raises(ValueError, match=rf"{name} must be True or False, got 1"):
    call(1)
  call(np.bool_(True))
