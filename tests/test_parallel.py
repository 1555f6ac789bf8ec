"""Seed sweeps sharded over devices equal the plain vmap, and really are spread over the devices.

Several CPU devices only exist if XLA_FLAGS is set before JAX starts, so the multi-device checks
run once in a subprocess (4 forced host devices, float64) that prints its measurements as JSON;
the tests below assert on them. Argument checks run in this process (one device).
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

from bplambda_jax import training
from helpers import rel_err

pytestmark = pytest.mark.x64  # float64 oracles

# Runs in a fresh interpreter with 4 host devices. Four compiles of a bp_lambda training run
# (training.run, 2 Adam steps): unsharded at S=8; sharded at S=8 (the padded S=6 sweep and the
# control's lowering reuse it); shard_seeds called directly at S=4; a 2×2 (seed × batch) mesh at
# S=4.
_CODE = textwrap.dedent(r"""
  import json
  import jax
  jax.config.update("jax_enable_x64", True)
  import jax.numpy as jnp
  import bplambda_jax as bl
  from bplambda_jax import training
  from bplambda_jax.model import Batch

  T, B, D_IN, D_OUT, H, STEPS = 5, 2, 3, 2, 3, 2

  def data_fn(key, step):
    del step
    k1, k2 = jax.random.split(key)
    x = jax.random.normal(k1, (T, B, D_IN))
    y = jax.random.normal(k2, (T, B, D_OUT))
    mask = jnp.ones((T, B)).at[0].set(0.0)
    return Batch(x, y, mask)

  def flat(tree):
    return jnp.concatenate([jnp.ravel(l).astype(jnp.float64) for l in jax.tree.leaves(tree)])

  def rel(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    fa, fb = flat(a), flat(b)
    return float(jnp.linalg.norm(fa - fb) / jnp.linalg.norm(fb))

  def layout(tree, mesh):
    # Per leaf: devices spanned, whether the spec splits axis 0 over 'seed' (and nothing else),
    # the seed counts held by each device, and the devices holding distinct seed slices.
    out = {"device_set": set(), "spec_ok": True, "shard_rows": set(), "distinct_slices": set()}
    for leaf in jax.tree.leaves(tree):
      s = leaf.sharding
      out["device_set"].add(len(s.device_set))
      out["spec_ok"] &= (s.mesh.shape == mesh.shape and tuple(s.spec)[:1] == ("seed",)
                         and all(p is None for p in tuple(s.spec)[1:]))
      out["shard_rows"].update(sh.data.shape[0] for sh in leaf.addressable_shards)
      out["distinct_slices"].add(len({sh.index[0].indices(leaf.shape[0])
                                       for sh in leaf.addressable_shards}))
    return {k: sorted(v) if isinstance(v, set) else v for k, v in out.items()}

  res = {"devices": len(jax.devices())}
  model = bl.make_model("tanh", "mse", D_IN, D_OUT, hidden_size=H)
  rule = bl.bp_lambda(model, lambda_=0.7, gamma=0.9, sg_scale=0.5)
  opt = training.optimiser(1e-2, 1e-2, 1e-2)
  run = lambda k: training.run(rule, opt, data_fn, k, STEPS)
  keys8 = jax.random.split(jax.random.key(7), 8)
  keys4 = keys8[:4]
  mesh = training.seed_mesh()
  res["mesh"] = dict(mesh.shape)

  # Unsharded reference; seeds are independent, so its first S rows are the S-seed sweep.
  ref8 = jax.jit(jax.vmap(run))(keys8)
  first = lambda tree, s: jax.tree.map(lambda a: a[:s], tree)
  res["seed0_vs_seed1"] = rel(jax.tree.map(lambda a: a[0], ref8[0].params),
                              jax.tree.map(lambda a: a[1], ref8[0].params))

  # 8 seeds over 4 devices; 6 seeds padded to 8 (reuses the 8-seed program); 4 seeds through a
  # sweep built and called in one expression (what sharded_sweep did).
  sweep = training.shard_seeds(run, mesh, pad=True)
  out = sweep(keys8)
  res["seeds_8"] = {"rel_err": rel(out, ref8), "layout": layout(out, mesh)}
  out = sweep(keys8[:6])
  res["pad_6"] = {"shape": int(out[1]["loss"].shape[0]), "rel_err": rel(out, first(ref8, 6))}
  out = training.shard_seeds(run, mesh)(keys4)
  res["seeds_4"] = {"rel_err": rel(out, first(ref8, 4)), "layout": layout(out, mesh)}

  # 2 seeds × 2 batch shards: each seed's batch is split by constrain_batch inside its run.
  mesh2 = training.seed_mesh(batch_axis=2)
  data2 = lambda k, st: training.constrain_batch(data_fn(k, st), mesh2)
  sweep2 = training.shard_seeds(lambda k: training.run(rule, opt, data2, k, STEPS), mesh2)
  hlo = sweep2.lower(keys4).compile().as_text()
  out = sweep2(keys4)  # the compiled program above is reused
  res["batch_2x2"] = {"mesh": dict(mesh2.shape), "rel_err": rel(out, first(ref8, 4)),
                      "layout": layout(out, mesh2), "all_reduce": hlo.count("all-reduce")}
  # Control: the seed-only program (already compiled above) has no cross-device reduction.
  res["seed_only_all_reduce"] = sweep.lower(keys8).compile().as_text().count("all-reduce")

  # Bad input: errors raised before anything is compiled.
  def error(f):
    try:
      f()
    except ValueError as e:
      return str(e)
    return None

  res["err_not_divisible"] = error(lambda: training.shard_seeds(run, mesh)(keys8[:6]))
  res["err_batch_axis"] = error(lambda: training.seed_mesh(batch_axis=3))
  res["err_batch_size"] = error(lambda: jax.eval_shape(
      lambda: training.constrain_batch(jnp.zeros((T, 3, D_IN)), mesh2)))
  print("RESULT" + json.dumps(res))
""")


@pytest.fixture(scope="module")
def four_devices():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", _CODE], env=env, capture_output=True, text=True,
                        timeout=900, cwd=os.path.dirname(os.path.abspath(__file__)))
  assert proc.returncode == 0, proc.stderr[-4000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
  return json.loads(line[len("RESULT"):])


def _check_layout(layout, rows):
  assert layout["device_set"] == [4]  # every output leaf spans all 4 devices
  assert layout["spec_ok"]  # split along the leading (seed) axis over 'seed' only
  assert layout["shard_rows"] == [rows]  # each device holds S / n_seed seeds


@pytest.mark.slow
def test_mesh_spans_all_devices(four_devices):
  assert four_devices["devices"] == 4
  assert four_devices["mesh"] == {"seed": 4, "batch": 1}


@pytest.mark.slow
@pytest.mark.parametrize("s", [4, 8])
def test_bp_lambda_sharded_equals_vmap(four_devices, s):
  r = four_devices[f"seeds_{s}"]
  assert r["rel_err"] < 1e-12
  _check_layout(r["layout"], s // 4)
  assert r["layout"]["distinct_slices"] == [4]  # four different seed slices, one per device
  assert four_devices["seed0_vs_seed1"] > 1e-3  # seeds differ, so a permutation would show


@pytest.mark.slow
def test_padding_strips_extra_seeds(four_devices):
  r = four_devices["pad_6"]
  assert r["shape"] == 6
  assert r["rel_err"] < 1e-12


@pytest.mark.slow
def test_batch_axis_splits_the_batch(four_devices):
  r = four_devices["batch_2x2"]
  assert r["mesh"] == {"seed": 2, "batch": 2}
  assert r["rel_err"] < 1e-12
  _check_layout(r["layout"], 2)
  assert r["layout"]["distinct_slices"] == [2]  # 2 seed halves, each replicated over 2 devices
  # Per-example work split over 'batch' needs cross-device sums; without the constraint none.
  assert r["all_reduce"] > 0
  assert four_devices["seed_only_all_reduce"] == 0


@pytest.mark.slow
def test_bad_inputs_on_four_devices(four_devices):
  assert "number of seeds 6 is not a multiple of the 4 devices" in four_devices["err_not_divisible"]
  assert "device count 4 is not a multiple of batch_axis=3" in four_devices["err_batch_axis"]
  assert "batch size 3 is not a multiple of the 2 devices" in four_devices["err_batch_size"]


# ------------------------------------------------------------------------------ one device


def _fn(key, scale):
  """A small per-seed function with a scan, returning a pytree."""
  x = jax.random.normal(key, (4, 3))
  h, hs = jax.lax.scan(lambda h, xt: (jnp.tanh(scale * h + xt),) * 2, jnp.zeros(3), x)
  return {"h": h, "hs": hs, "key": jax.random.split(key)[0]}


def test_one_device_sweep_equals_vmap():
  mesh = training.seed_mesh()
  assert dict(mesh.shape) == {"seed": len(jax.devices()), "batch": 1}
  keys = jax.random.split(jax.random.key(0), 3 * len(jax.devices()))
  scales = jnp.linspace(0.1, 0.9, keys.shape[0])
  out = training.shard_seeds(_fn, mesh)(keys, scales)
  ref = jax.vmap(_fn)(keys, scales)
  assert rel_err({"h": out["h"], "hs": out["hs"]}, {"h": ref["h"], "hs": ref["hs"]}) < 1e-14
  assert bool(jnp.all(jax.random.key_data(out["key"]) == jax.random.key_data(ref["key"])))
  assert out["hs"].sharding.spec[0] == "seed"


def test_bad_arguments():
  mesh = training.seed_mesh()
  keys = jax.random.split(jax.random.key(0), 2)
  n = len(jax.devices())
  for bad in (0, -1, 1.5, True, n + 1):
    with pytest.raises(ValueError, match="batch_axis"):
      training.seed_mesh(batch_axis=bad)
  with pytest.raises(ValueError, match="devices is empty"):
    training.seed_mesh(devices=[])
  other = jax.sharding.Mesh(jax.devices(), ("x",))
  with pytest.raises(ValueError, match="'seed' axis is required"):
    training.shard_seeds(_fn, other)
  with pytest.raises(ValueError, match="jax.sharding.Mesh"):
    training.shard_seeds(_fn, "mesh")
  with pytest.raises(ValueError, match="fn must be callable"):
    training.shard_seeds(None, mesh)
  with pytest.raises(ValueError, match="pad must be True or False"):
    training.shard_seeds(_fn, mesh, pad=1)
  sweep = training.shard_seeds(_fn, mesh)
  with pytest.raises(ValueError, match="disagree on the seed count"):
    sweep(keys, jnp.ones(3))
  with pytest.raises(ValueError, match="found a scalar"):
    sweep(keys, jnp.float64(0.5))
  with pytest.raises(ValueError, match="at least one argument"):
    sweep()
  with pytest.raises(ValueError, match="'batch' axis"):
    training.constrain_batch(jnp.zeros((2, 2)), jax.sharding.Mesh(jax.devices(), ("seed",)))
  with pytest.raises(ValueError, match="axis must index"):
    training.constrain_batch(jnp.zeros((2,)), mesh)
