"""A seed sweep over two processes (jax.distributed on localhost) gives the one-process numbers.

Two worker processes, each with 2 forced CPU devices (4 global devices), start ``jax.distributed``
through ``training.initialize_distributed`` (process 0 from environment variables, process 1
from arguments) and communicate through gloo. Each runs the same 4-seed BP(λ) sweep with
``training.shard_seeds`` over ``training.seed_mesh()`` (one seed per device, two per process)
in float32 and float64, saves the sharded results with ``training.Checkpointer`` into a shared
directory, restores them into a sharded template, gathers them, and process 0 writes them to
``result.npz``. The test process meanwhile computes the same sweep with ``training.sweep`` on its
one device; the test compares the two, and restores the workers' checkpoint on that one device.

The workers are this file run as a script
(``python test_multiprocess.py <process_id> <shared directory>``).
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bplambda_jax import training

T, B, D_IN, D_OUT, H, STEPS, SEEDS = 6, 2, 3, 2, 8, 20, 4
DTYPES = ("float32", "float64")
TIMEOUT = 300  # seconds for both workers together (they take 20-30 s on 2 busy cores)
_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)


def problem(dtype):
  """(rule, optimiser, data_fn) of the sweep: a tanh RNN (H=8, 186 parameters) trained by BP(λ)."""
  import bplambda_jax as bl  # pylint: disable=import-outside-toplevel
  from bplambda_jax.model import Batch  # pylint: disable=import-outside-toplevel

  def data_fn(key, step):
    del step
    k1, k2 = jax.random.split(key)
    x = jax.random.normal(k1, (T, B, D_IN), dtype)
    y = jax.random.normal(k2, (T, B, D_OUT), dtype)
    return Batch(x, y, jnp.ones((T, B), dtype).at[0].set(0.0))

  model = bl.make_model("tanh", "mse", D_IN, D_OUT, hidden_size=H, param_dtype=dtype)
  rule = bl.bp_lambda(model, lambda_=0.7, gamma=0.9, sg_scale=0.5)
  return rule, training.optimiser(1e-2, 1e-2, 1e-2), data_fn


def seed_keys():
  return jax.random.split(jax.random.key(7), SEEDS)


def flat_named(tree):
  """{'a/b/c': numpy array} for every leaf of ``tree`` (PRNG keys as their key data)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  out = {}
  for path, leaf in leaves:
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    out[jax.tree_util.keystr(path, simple=True, separator="/")] = np.asarray(leaf)
  return out


# ------------------------------------------------------------------------------ worker


def _worker(process_id, out_dir):
  """One process of the 2-process run (see the module docstring); writes result*.{npz,json}."""
  times = {}
  t0 = time.perf_counter()
  jax.config.update("jax_enable_x64", True)
  jax.config.update("jax_disable_most_optimizations", True)  # as in conftest.py
  if process_id == 0:  # coordinator address, process count and id from the environment
    index, count = training.initialize_distributed(initialization_timeout=60)
  else:
    index, count = training.initialize_distributed(os.environ["TEST_COORDINATOR"], 2, process_id,
                                                   initialization_timeout=60)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=import-outside-toplevel

  times["initialize"] = time.perf_counter() - t0
  res = {"process": [index, count], "devices": [len(jax.devices()), len(jax.local_devices())]}
  mesh = training.seed_mesh()
  res["mesh"] = dict(mesh.shape)
  keys = seed_keys()

  outputs = {}
  for dtype in DTYPES:
    t = time.perf_counter()
    rule, opt, data_fn = problem(jnp.dtype(dtype))
    sweep = training.shard_seeds(lambda k: training.run(rule, opt, data_fn, k, STEPS), mesh)
    outputs[dtype] = jax.block_until_ready(sweep(keys))
    times[f"sweep_{dtype}"] = time.perf_counter() - t
  outputs["keys"] = training.shard_seeds(lambda k: k, mesh)(keys)  # the keys as placed
  leaf = outputs["float32"][1]["loss"]
  res["layout"] = {"fully_addressable": leaf.is_fully_addressable,
                   "spec": [str(p) for p in leaf.sharding.spec],
                   "local_rows": sorted(s.index[0].indices(SEEDS)[0]
                                        for s in leaf.addressable_shards)}

  # pad=True across processes: 3 seeds padded to 4, the extra one cut from the outputs.
  normal = lambda k: jax.random.normal(k, (3,))
  padded = training.shard_seeds(normal, mesh, pad=True)(keys[:3])
  res["pad_shape"] = list(padded.shape)
  outputs["pad"] = padded
  # Different keys on the two processes: refused before anything runs.
  try:
    training.shard_seeds(normal, mesh)(jax.random.split(jax.random.key(process_id), SEEDS))
    res["mismatch_error"] = None
  except ValueError as e:
    res["mismatch_error"] = str(e)

  # Every process saves its shards; the restore fills a sharded template (no values in it).
  t = time.perf_counter()
  ckpt = training.Checkpointer(os.path.join(out_dir, "checkpoints"))
  saved = {k: outputs[k] for k in (*DTYPES, "keys")}
  ckpt.save(STEPS, saved, meta={"seeds": SEEDS})
  template = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                          saved)
  restored, meta = ckpt.restore(ckpt.latest_step(), template)
  res["checkpoint_steps"] = ckpt.all_steps()
  ckpt.close()
  times["checkpoint"] = time.perf_counter() - t

  def same_shards(a, b):
    if a.sharding != b.sharding or a.dtype != b.dtype:
      return False
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
      a, b = jax.random.key_data(a), jax.random.key_data(b)
    return all(sa.index == sb.index and np.array_equal(sa.data, sb.data)
               for sa, sb in zip(a.addressable_shards, b.addressable_shards))

  res["restored_equal"] = all(jax.tree.leaves(jax.tree.map(same_shards, restored, saved)))
  res["restored_meta"] = meta

  # Gather: one program copies every leaf to every device, then each process reads its copy.
  t = time.perf_counter()
  replicated = NamedSharding(mesh, PartitionSpec())
  gathered = jax.jit(lambda tree: tree, out_shardings=replicated)(outputs)
  arrays = flat_named(jax.tree.map(lambda a: a.addressable_data(0), gathered))
  times["gather"] = time.perf_counter() - t
  multihost_utils.sync_global_devices("results gathered")
  times["total"] = time.perf_counter() - t0
  res["times"] = {k: round(v, 2) for k, v in times.items()}
  if index == 0:
    np.savez(os.path.join(out_dir, "result.npz"), **arrays)
  with open(os.path.join(out_dir, f"result{index}.json"), "w") as f:
    json.dump(res, f)


# ------------------------------------------------------------------------------ launcher


def _free_port():
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _worker_env(process_id, port):
  """A fresh environment: nothing of the caller's JAX, XLA, cluster or proxy settings."""
  env = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR", "LANG", "SYSTEMROOT")
         if k in os.environ}
  env.update(PYTHONPATH=_ROOT, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}",  # loopback only, no IPv6 needed
             TEST_COORDINATOR=f"127.0.0.1:{port}")
  if process_id == 0:
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID="0")
  return env


def _log(out_dir, pid):
  """Worker ``pid``'s output without gloo's connection messages."""
  with open(os.path.join(out_dir, f"worker{pid}.log"), errors="replace") as f:
    return "\n".join(l for l in f.read().splitlines() if "[Gloo]" not in l)


def _run_workers(out_dir, meanwhile, attempts=3):
  """Run the 2 workers to completion, calling ``meanwhile()`` once while the first pair runs.

  A worker that fails stops the other at once, and none outlives this call. A coordinator port
  taken between choosing and binding it leads to a new attempt on another port; any other
  failure, or a run longer than TIMEOUT, fails the test with both workers' output.
  """
  for attempt in range(attempts):
    port = _free_port()
    procs = []
    try:
      for pid in (0, 1):
        with open(os.path.join(out_dir, f"worker{pid}.log"), "w") as log:
          procs.append(subprocess.Popen(
              [sys.executable, os.path.abspath(__file__), str(pid), out_dir],
              env=_worker_env(pid, port), cwd=_HERE, stdout=log, stderr=subprocess.STDOUT,
              stdin=subprocess.DEVNULL))
      if attempt == 0:
        meanwhile()
      deadline = time.monotonic() + TIMEOUT
      failure = None
      while failure is None and None in [p.poll() for p in procs]:  # polls every worker
        if any(p.returncode not in (None, 0) for p in procs):
          failure = "a worker failed; the other was stopped"
        elif time.monotonic() > deadline:
          failure = f"the workers did not finish within {TIMEOUT} s"
        else:
          time.sleep(0.2)
    finally:
      for p in procs:  # no worker outlives the test
        if p.poll() is None:
          p.kill()
        p.wait()
    if failure is None and any(p.returncode for p in procs):
      failure = "a worker failed"
    if failure is None:
      return
    logs = [_log(out_dir, pid) for pid in (0, 1)]
    if "Failed to add port" in logs[0] and attempt + 1 < attempts:
      continue  # the port was taken in the meantime: try another
    report = "\n".join(f"--- worker {pid} (exit code {p.returncode}) ---\n" + "\n".join(
        logs[pid].splitlines()[-60:]) for pid, p in enumerate(procs))
    pytest.fail(f"{failure} (coordinator 127.0.0.1:{port}).\n{report}", pytrace=False)


def _two_process_run():
  """What the workers wrote ({'result': npz arrays, 'workers': [json of process 0, 1],
  'restored_here': their checkpoint restored on this process's one device}) and the one-process
  sweep, as flat arrays."""
  reference = {}

  def one_process():
    keys = seed_keys()
    reference.update({dtype: training.sweep(*problem(jnp.dtype(dtype)), keys, STEPS)
                      for dtype in DTYPES})
    reference["keys"] = keys
    reference["pad"] = jax.vmap(lambda k: jax.random.normal(k, (3,)))(keys[:3])

  with tempfile.TemporaryDirectory() as out_dir:  # shared by both workers (checkpoints too)
    _run_workers(out_dir, one_process)
    with np.load(os.path.join(out_dir, "result.npz")) as f:
      result = dict(f)
    workers = []
    for pid in (0, 1):
      with open(os.path.join(out_dir, f"result{pid}.json")) as f:
        workers.append(json.load(f))
    # The checkpoint of 2 processes restores onto another layout: here one device.
    ckpt = training.Checkpointer(os.path.join(out_dir, "checkpoints"))
    template = {k: reference[k] for k in (*DTYPES, "keys")}
    restored = flat_named(ckpt.restore(STEPS, template)[0])
    ckpt.close()
  return {"result": result, "workers": workers, "restored_here": restored}, flat_named(reference)


# One test for everything the 2-process run shows: a module fixture shared by several tests would
# run once per pytest-xdist worker that receives one of them (CI runs `pytest -n 2`).
@pytest.mark.slow
@pytest.mark.x64
def test_two_process_sweep_equals_one_process():
  run, want = _two_process_run()
  got = run["result"]

  for pid, w in enumerate(run["workers"]):
    assert w["process"] == [pid, 2]
    assert w["devices"] == [4, 2]
    assert w["mesh"] == {"seed": 4, "batch": 1}
    # Outputs are global arrays split over 'seed'; each process holds the rows of its devices.
    assert not w["layout"]["fully_addressable"]
    assert w["layout"]["spec"] == ["seed"]
    assert w["layout"]["local_rows"] == [2 * pid, 2 * pid + 1]

  # The same numbers. The partitioned program rounds a few operations differently from the
  # one-device sweep (measured after 20 updates: at most 1.2e-7 in float32 and 2.2e-16 in float64,
  # about 1 ulp; one process with 4 devices gives bitwise the 2-process numbers). Allowed: 64 ulp.
  assert sorted(got) == sorted(want)
  for dtype in DTYPES:
    names = [k for k in want if k.startswith(dtype + "/")]
    # parameters, Adam moments, step, the learning rates the optimiser carries (three groups,
    # injected hyper-parameters), losses, TD-error norms, guard codes
    assert len(names) == 34
    eps = float(np.finfo(dtype).eps)
    for name in names:
      a, b = got[name], want[name]
      assert a.shape == b.shape and a.dtype == b.dtype and a.shape[0] == SEEDS, name
      scale = max(float(np.max(np.abs(b))), 1.0)
      np.testing.assert_allclose(a, b, rtol=0, atol=64 * eps * scale, err_msg=name)
    loss = got[f"{dtype}/1/loss"]  # the runs did move, and the seeds differ
    assert loss.shape == (SEEDS, STEPS)
    assert np.all(np.std(loss, axis=1) > 0) and np.std(loss[:, -1]) > 0

  # Each seed's key reached its device; pad=True cut the padded seed.
  np.testing.assert_array_equal(got["keys"], want["keys"])
  np.testing.assert_array_equal(got["pad"], want["pad"])
  for w in run["workers"]:
    assert w["pad_shape"] == [3, 3]
    # Different keys on the two processes are refused.
    assert w["mismatch_error"] and "differ between processes" in w["mismatch_error"]
    # The sharded checkpoint restored shard by shard into the sharded template.
    assert w["restored_equal"]
    assert w["restored_meta"] == {"seeds": SEEDS}
    assert w["checkpoint_steps"] == [STEPS]
  for name, a in run["restored_here"].items():
    np.testing.assert_array_equal(a, got[name], err_msg=name)


# ------------------------------------------------------------------------------ this process


def test_initialize_distributed_bad_arguments(monkeypatch):
  # Refused before jax.distributed is touched (JAX itself would raise an IndexError).
  for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(k, raising=False)
  with pytest.raises(ValueError, match="coordinator_address must be 'host:port'"):
    training.initialize_distributed("10.0.0.1", 2, 0)
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "node0:port")
  with pytest.raises(ValueError, match="JAX_COORDINATOR_ADDRESS must be 'host:port'"):
    training.initialize_distributed(num_processes=2, process_id=0)
  monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES must be an integer"):
    training.initialize_distributed("10.0.0.1:1234", process_id=0)
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("JAX_PROCESS_ID", "1st")
  with pytest.raises(ValueError, match="JAX_PROCESS_ID must be an integer"):
    training.initialize_distributed("10.0.0.1:1234")


if __name__ == "__main__":
  _worker(int(sys.argv[1]), sys.argv[2])
