"""``faithful=True`` against literal numbers from the authors' own PyTorch code.

tests/fixtures/reference/*.npz were written by tests/fixtures/make_reference_fixtures.py (run
where the authors' code and PyTorch are installed; see its docstring for the command): one
training sequence (T = 3, B = 2, float64) per flavour and task kind, with the parameters, data and
options it used and the ``.grad`` buffers and learning signals the authors' code accumulated.
Here the library's faithful rule, given the same parameters and data, must reproduce them to a
relative error of 1e-10.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bplambda_jax import bp_lambda
from bplambda_jax.model import Batch, make_model

from helpers import jit as _jit, rel_err

pytestmark = pytest.mark.x64

TOL = 1e-10
FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "reference"
CASES = sorted(p.stem for p in FIXTURES.glob("*.npz"))


def _load(name):
  with np.load(FIXTURES / f"{name}.npz") as f:
    return {k: f[k] for k in f.files}


def test_every_flavour_and_task_kind_has_a_fixture():
  kinds = {(o["cell"] == "lstm", o["flavour"], o["task"])
           for o in (json.loads(str(_load(c)["options"])) for c in CASES)}
  tasks = ("regression", "classification-last", "copy-repeat")
  assert {(True, f, t) for f in ("state", "eprop") for t in tasks} <= kinds
  assert {(False, "state", "regression-last"), (False, "state", "regression")} <= kinds


@pytest.mark.parametrize("name", CASES)
def test_faithful_matches_the_authors_code(name):
  f = _load(name)
  o = json.loads(str(f["options"]))
  d_in, H = f["x"].shape[2], f["param_w_hh"].shape[1]
  model = make_model(o["cell"], o["loss"], d_in, o["d_out"], hidden_size=H)
  rule = bp_lambda(model, flavour=o["flavour"], faithful=True, lambda_=o["lambda_"],
                   gamma=o["gamma"], sg_scale=o["sg_scale"], readout_scale=o["readout_scale"])
  params = rule.init(jax.random.key(0))
  params["cell"] = {k: jnp.asarray(f[f"param_{k}"]) for k in ("w_ih", "w_hh", "b")}
  params["readout"] = {"w": jnp.asarray(f["param_w_out"]), "b": jnp.asarray(f["param_b_out"])}
  params["synth"]["train"] = {"w": jnp.asarray(f["param_synth_w"]),
                              "b": jnp.asarray(f["param_synth_b"])}
  y = jnp.asarray(f["y"], jnp.int32 if o["loss"] == "ce" else jnp.float64)
  batch = Batch(jnp.asarray(f["x"]), y, jnp.asarray(f["mask"]))
  got, aux = _jit(rule.grads)(params, batch)

  assert rel_err(got["cell"], {k: jnp.asarray(f[f"grad_{k}"]) for k in ("w_ih", "w_hh", "b")}) < TOL
  assert rel_err(got["readout"], {"w": jnp.asarray(f["grad_w_out"]),
                                  "b": jnp.asarray(f["grad_b_out"])}) < TOL
  assert rel_err(got["synth"]["train"], {"w": jnp.asarray(f["grad_synth_w"]),
                                         "b": jnp.asarray(f["grad_synth_b"])}) < TOL
  ls = f["learning_signal"]
  n = model.cell.state_size
  want_ls = np.concatenate([ls, np.zeros(ls.shape[:2] + (n - ls.shape[-1],))], -1)
  assert rel_err(aux["learning_signal"], jnp.asarray(want_ls)) < TOL
  assert float(np.linalg.norm(f["grad_synth_w"])) > 1e-4  # the synthesiser learned something
