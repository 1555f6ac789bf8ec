"""Seeds as a vmap or a loop (``seed_axis``): the same numbers either way; 'auto' loops on CPU.

``internals.map_seeds`` is the one place that maps a per-seed function over the seeds; ``sweep``
and the experiments runner (config key ``seed_axis``) go through it. A loop compiles the
single-seed program once and calls it per seed; a vmap batches the seeds in one program, which
may sum products in another order, so the two agree to float32 rounding, not bit for bit.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bplambda_jax as bl
from bplambda_jax import cli
from bplambda_jax import training
from bplambda_jax import internals

RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(autouse=True)
def _float32():
  with jax.enable_x64(False):
    yield


def _close(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=RTOL, atol=ATOL)


def test_auto_loops_on_cpu():
  if jax.default_backend() != "cpu":
    pytest.skip("asserts the CPU choice")
  assert internals.resolve_seed_axis("auto") == "loop"
  assert internals.resolve_seed_axis() == "loop"
  assert internals.resolve_seed_axis("vmap") == "vmap"
  with pytest.raises(ValueError, match=r"seed_axis must be one of \['vmap', 'loop', 'auto'\]"):
    internals.resolve_seed_axis("pmap")


def test_map_seeds_loop_equals_vmap():
  fn = lambda k, w, c: (jnp.tanh(jax.random.normal(k, (3, 4)) @ w) * c, jax.random.split(k)[0])
  keys = jax.random.split(jax.random.key(1), 5)
  w = jax.random.normal(jax.random.key(2), (5, 4, 2))
  args = (keys, w, jnp.float32(0.5))
  out = {axis: internals.map_seeds(fn, axis, in_axes=(0, 0, None))(*args)
         for axis in ("vmap", "loop", "auto")}
  assert out["loop"][0].shape == (5, 3, 2)
  _close(out["loop"], out["vmap"])
  _close(out["auto"], out["vmap"])
  with pytest.raises(ValueError, match="in_axes must be 0 or a tuple"):
    internals.map_seeds(fn, "loop", in_axes=1)
  with pytest.raises(ValueError, match="disagree on the seed count"):
    internals.map_seeds(fn, "loop", in_axes=(0, 0, None))(keys, w[:3], 0.5)
  with pytest.raises(ValueError, match="seed axis is empty"):
    internals.map_seeds(fn, "loop", in_axes=(0, 0, None))(keys[:0], w[:0], 0.5)


def _toy():
  model = bl.make_model("lstm", "bce", 3, 2, hidden_size=4)
  rule = bl.make_rule("tbptt:2", model)
  opt = bl.optimiser(1e-2, 1e-2, 1e-2)
  rng = np.random.default_rng(0)
  batch = bl.Batch(rng.standard_normal((5, 4, 3)).astype(np.float32),
                   rng.integers(0, 2, (5, 4, 2)).astype(np.float32), np.ones((5, 4), np.float32))
  return rule, opt, lambda key, step: batch


def test_sweep_loop_equals_vmap():
  rule, opt, data_fn = _toy()
  keys = jax.random.split(jax.random.key(0), 3)
  lam = None
  runs = {axis: training.sweep(rule, opt, data_fn, keys, 3, hparams=lam, seed_axis=axis)
          for axis in ("vmap", "loop")}
  assert runs["loop"][1]["loss"].shape == (3, 3)
  _close(runs["loop"], runs["vmap"])
  # The seeds differ (a loop that ran one seed S times would pass the comparison above only if
  # the vmap did the same).
  assert np.ptp(np.asarray(runs["vmap"][1]["loss"][:, -1])) > 1e-4
  with pytest.raises(ValueError, match="seed_axis must be one of"):
    training.sweep(rule, opt, data_fn, keys, 3, seed_axis="threads")


def _metrics(path):
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  return [(r.get("kind"), r.get("seed"), r.get("step"), r.get("loss")) for r in rows]


def test_runner_seed_axis_same_numbers(tmp_path):
  argv = ["run", "toy", "--rule", "tbptt:2", "--seeds", "2", "--steps", "4", "--no-progress",
          "--set", "batch_size=4", "--set", "hidden_size=4", "--set", "chunk=2",
          "--set", "eval_every=4"]
  got = {}
  for axis in ("vmap", "loop"):
    out = tmp_path / axis
    assert cli.main(argv + ["--set", f"seed_axis={axis}", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["seed_axis"] == axis
    got[axis] = _metrics(out / "metrics.jsonl")
  assert [r[:3] for r in got["loop"]] == [r[:3] for r in got["vmap"]]
  losses = [(a[3], b[3]) for a, b in zip(got["loop"], got["vmap"]) if a[3] is not None]
  assert losses
  np.testing.assert_allclose(*np.asarray(losses).T, rtol=RTOL, atol=ATOL)
  with pytest.raises(ValueError, match="config key 'seed_axis'"):
    bl.experiments.RunConfig(seed_axis="pmap")
