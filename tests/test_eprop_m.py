"""m-order e-prop (issue 5): Z⁽⁰⁾_t = D_t Z⁽⁰⁾_{t−1} + Ī_t,
Z⁽ʲ⁾_t = D_t Z⁽ʲ⁾_{t−1} + X_t Z⁽ʲ⁻¹⁾_{t−1}, credit ls_t·Σ_j Z⁽ʲ⁾_t. Acceptance: m = 0 is e-prop;
m ≥ T − 1 is RTRL and BPTT; a network with X = 0 gives e-prop for every m; each Z⁽ʲ⁾ is the sum
of the words of the expanded RTRL product with exactly j factors X; the reverse (sequence) form
gives the online numbers.
"""

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import bplambda_jax as O
from bplambda_jax import bp_lambda, bptt, linear_synthesiser
from bplambda_jax import credit as S
from bplambda_jax import model as cells
from bplambda_jax import model as model_lib
from helpers import flat, grads_bundle, jit as _jit, random_batch, randomize, rel_err

pytestmark = pytest.mark.x64  # float64 oracles

T, B, D_IN, D_OUT, H = 5, 2, 2, 2, 3
TOL = 1e-9
CELLS = {"tanh": lambda: cells.tanh_rnn(H), "lstm": lambda: cells.lstm(H)}
# Rules compiled together per cell: 'bptt', or '<sensitivity>[/seq]' for the online rule.
BUNDLES = {
    "tanh": ("bptt", "rtrl", "eprop", "eprop_m1", f"eprop_m{T - 1}"),
    "lstm": ("bptt", "rtrl", "eprop", "eprop_m0", "eprop_m1", f"eprop_m{T - 2}",
             f"eprop_m{T - 1}", f"eprop_m{T + 2}", "eprop_m1/seq", f"eprop_m{T - 1}/seq"),
}


@functools.cache
def _model(cell_name):
  return model_lib.make_model(CELLS[cell_name](), "mse", D_IN, D_OUT)


def _rule(cell_name, key):
  model = _model(cell_name)
  if key == "bptt":
    return bptt(model)
  name, _, seq = key.partition("/")
  if name.startswith("eprop_m"):
    return O.eprop_m(model, int(name[len("eprop_m"):]), mode="sequence" if seq else "online")
  return O.from_sensitivity(model, name)


@functools.cache
def _bundle(cell_name):
  return grads_bundle({key: _rule(cell_name, key) for key in BUNDLES[cell_name]})


def _all_grads(cell_name, params, batch):
  return _bundle(cell_name)(params, batch)


def _params(cell_name, seed):
  return _model(cell_name).init(jax.random.key(seed))


def _batch(seed):
  return random_batch(jax.random.key(2000 + seed), T, B, D_IN, D_OUT, mask_prob=2.0)


def _no_explicit_part(cell_name, params):
  """LSTM: W_hh = 0. RNN: W_hh diagonal. Either way X_t = 0 and J_t = D_t."""
  w = params["cell"]["w_hh"]
  w = jnp.zeros_like(w) if cell_name == "lstm" else w * jnp.eye(H)
  return {**params, "cell": {**params["cell"], "w_hh": w}}


@pytest.mark.parametrize("cell_name", ["tanh", "lstm"])
def test_orders_between_eprop_and_rtrl(cell_name):
  """m = 0 is e-prop, m ≥ T − 1 is RTRL = BPTT, m = T − 2 is not, and m = 1 lies in between."""
  g = _all_grads(cell_name, _params(cell_name, 1), _batch(1))
  cell = lambda key: g[key][0]["cell"]
  exact = cell("bptt")
  assert rel_err(cell("rtrl"), exact) < TOL
  assert rel_err(cell(f"eprop_m{T - 1}"), exact) < TOL
  err_eprop = rel_err(cell("eprop"), exact)
  err_m1 = rel_err(cell("eprop_m1"), exact)
  assert err_eprop > 1e-3 and 1e-9 < err_m1 < err_eprop
  if cell_name == "lstm":
    assert rel_err(cell("eprop_m0"), cell("eprop")) < TOL
    assert rel_err(cell(f"eprop_m{T + 2}"), exact) < TOL
    assert rel_err(cell(f"eprop_m{T - 2}"), exact) > 1e-9
  loss = float(g["bptt"][1]["loss"])
  assert abs(float(g["eprop_m1"][1]["loss"]) - loss) < TOL * loss


@pytest.mark.parametrize("cell_name", ["tanh", "lstm"])
def test_without_explicit_part_every_order_is_eprop(cell_name):
  params = _no_explicit_part(cell_name, _params(cell_name, 2))
  g = _all_grads(cell_name, params, _batch(2))
  eprop = g["eprop"][0]["cell"]
  for key in BUNDLES[cell_name]:
    if key.startswith("eprop_m"):
      assert rel_err(g[key][0]["cell"], eprop) < TOL, key
  assert rel_err(g["bptt"][0]["cell"], eprop) < TOL


@pytest.mark.parametrize("m", [1, T - 1])
def test_sequence_mode_equals_online_mode(m):
  g = _all_grads("lstm", _params("lstm", 3), _batch(3))
  got, aux = g[f"eprop_m{m}/seq"]
  want, want_aux = g[f"eprop_m{m}"]
  assert rel_err(got, want) < TOL
  assert rel_err(aux, want_aux) < TOL


def test_order_terms_are_the_words_with_j_explicit_factors():
  """Z⁽ʲ⁾_t = Σ_{k≤t} Σ_{words w ∈ {D, X}^{t−k} with j X's} w_t⋯w_{k+1}·Ī_k (T = 4, n = 3)."""
  t_len, m = 4, 3
  cell = cells.tanh_rnn(H)
  params = cell.init(jax.random.key(4), D_IN)
  params = {**params, "w_hh": 1.5 * params["w_hh"]}  # strong explicit part
  xs = jax.random.normal(jax.random.key(5), (t_len, D_IN), jnp.float64)
  sens = S.eprop_m(cell, m)
  update = _jit(sens.update)
  flat0, unravel = ravel_pytree(params)
  step_flat = lambda fp, s, x: cell.step(unravel(fp), s, x)

  @_jit
  def pieces(s, x):  # D_t, X_t [n, n] and Ī_t [n, P] at (s_{t−1}, x_t)
    d = jax.jacfwd(cell.split_step, argnums=1)(params, s, s, x)
    xx = jax.jacfwd(cell.split_step, argnums=2)(params, s, s, x)
    return d, xx, jax.jacfwd(step_flat)(flat0, s, x)

  s = jnp.zeros(H)
  z = sens.init(params)
  ds, xs_, ibars = [], [], []
  for t in range(t_len):
    d, xx, ibar = (np.asarray(a) for a in pieces(s, xs[t]))
    ds.append(d)
    xs_.append(xx)
    ibars.append(ibar)
    z = update(params, z, s, xs[t])
    s = cell.step(params, s, xs[t])
    got = np.concatenate([np.asarray(l).reshape(m + 1, H, -1) for l in jax.tree.leaves(z)],
                         axis=2)  # [m+1, n, P], columns in ravel_pytree order
    want = np.zeros_like(got)
    for k in range(t + 1):
      for word in itertools.product((0, 1), repeat=t - k):  # word[i] is the factor at step t − i
        prod = ibars[k]
        for i in reversed(range(t - k)):  # apply M_{k+1} first, M_t last
          step = t - i
          prod = (xs_[step] if word[i] else ds[step]) @ prod
        want[sum(word)] += prod
    for j in range(m + 1):
      assert rel_err(got[j], want[j]) < TOL, (t, j)
      if j <= t:
        assert np.linalg.norm(want[j]) > 1e-6, (t, j)
    assert np.all(got[t + 1:] == 0)


@pytest.mark.parametrize("m", [0, 2])
def test_bp_lambda_with_m_order_eprop_online_equals_sequence(m):
  """bp_lambda's sequence mode runs the stacked co-state of m-order e-prop (m + 1 rows)."""
  model = _model("lstm")
  rules = {mode: bp_lambda(model, linear_synthesiser(), lambda_=0.6, gamma=0.9, flavour="state",
                           sensitivity=f"eprop_m:{m}", mode=mode) for mode in ("online", "sequence")}
  params = rules["online"].init(jax.random.key(6))
  params["synth"]["train"] = randomize(params["synth"]["train"], jax.random.key(7), 0.3)
  both = _jit(lambda p, b: {m: r.grads(p, b) for m, r in rules.items()})(params, _batch(6))
  assert rel_err(both["sequence"][0], both["online"][0]) < TOL
  assert float(jnp.linalg.norm(flat(both["online"][0]["cell"]))) > 1e-6


def test_errors():
  model = _model("lstm")
  for bad in (-1, 1.5, True, "2"):
    with pytest.raises(ValueError, match="m must be an integer >= 0"):
      S.eprop_m(model.cell, bad)
  with pytest.raises(ValueError, match="m must be an integer >= 0"):
    O.eprop_m(model, -2)
  # flax's own cells now come with a declared split; a cell without one is rejected.
  no_split = cells.from_flax(nn.GRUCell(features=H))._replace(split_step=None)
  with pytest.raises(ValueError, match="split_step"):
    S.eprop_m(no_split, 1)
  # The reverse form carries the stacked co-state: m + 1 rows (a single row for m = 0).
  sens = S.eprop_m(model.cell, 2)
  assert sens.name == "eprop_m:2" and sens.reverse.copies == 3
  assert O.eprop_m(model, 2).name == "eprop_m:2"
  assert S.get_sensitivity("eprop_m:0", model.cell).reverse.copies == 1
