"""Seed sweeps spread over devices: a ('seed', 'batch') mesh, sharded vmaps, multi-host start-up.

A seed sweep is ``jax.vmap`` of a per-seed function over a leading seed axis.
Here the same vmapped function is compiled with ``jax.jit`` so that its inputs and outputs are
split along that axis over the mesh's ``'seed'`` devices; each device then trains S / n_seed
seeds and nothing is communicated between seeds::

    mesh = seed_mesh()                                   # every device on the 'seed' axis
    sweep = shard_seeds(lambda k: training.run(rule, opt, data_fn, k, steps), mesh)
    states, metrics = sweep(jax.random.split(jax.random.key(0), 8))
    # every leaf has a leading [8] axis, laid out as NamedSharding(mesh, P('seed'))

Extra swept arguments (one value per seed, e.g. a λ per run) are further positional arguments
with the same leading axis; constants are closed over in ``fn``.

Seed counts. By default the number of seeds S must be a multiple of the number of devices on the
'seed' axis (a ValueError otherwise). With ``pad=True`` the inputs are padded up to the next
multiple by repeating the last seed, and the extra runs are cut from the outputs (so the padding
costs compute on the last devices, never correctness).

The batch axis. ``seed_mesh(batch_axis=k)`` reserves k devices per seed group. Data parallelism
within a seed happens only where the per-seed function asks for it: calling
:func:`constrain_batch` on a (time-major) batch inside ``fn`` splits its B axis over the 'batch'
devices and XLA partitions the per-example work and reduces the gradient sums across them.
Without such a constraint the seed's work is simply replicated over its 'batch' devices.

Several processes. After :func:`initialize_distributed` (once per process, before any other JAX
call) ``jax.devices()`` lists the devices of every process and :func:`seed_mesh` spans all of
them. Every process then runs the same program: it builds the same sweep and calls it with the
same full arrays (e.g. keys split from the same seed; a ValueError if they differ). Each process
computes only the seeds on its own devices, and the outputs are global arrays of which a process
holds the rows of its own devices (``leaf.addressable_shards``). To see every seed on every
process, gather them (``jax.experimental.multihost_utils.process_allgather``); to keep them,
save them sharded with :class:`~bplambda_jax.training.Checkpointer` (called by every process).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from bplambda_jax import _validation

SEED_AXIS = "seed"
BATCH_AXIS = "batch"


def seed_mesh(devices: Optional[Sequence[Any]] = None, batch_axis: int = 1) -> Mesh:
  """A 2-D mesh with axes ('seed', 'batch') of shape (n // batch_axis, batch_axis).

  Args:
    devices: the devices to use; default ``jax.devices()`` (all devices of all processes once
      ``jax.distributed`` is initialised, otherwise the local ones). Their order may be changed
      to follow the hardware topology (``jax.make_mesh``).
    batch_axis: number of devices per seed group along 'batch' (1 = pure seed parallelism).

  Returns:
    A ``jax.sharding.Mesh`` with 'Auto' axis types (shardings are given to ``jax.jit``; no
    ``jax.set_mesh`` context is needed).

  Raises:
    ValueError: if ``batch_axis`` is not a positive integer, ``devices`` is empty, or the
      device count is not a multiple of ``batch_axis``.
  """
  batch_axis = _validation.integer("batch_axis", batch_axis, minimum=1)
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if n == 0:
    raise ValueError("devices is empty; pass at least one device (or None for jax.devices()).")
  if n % batch_axis:
    raise ValueError(f"the device count {n} is not a multiple of batch_axis={batch_axis}; "
                     f"choose batch_axis among the divisors of {n}.")
  return jax.make_mesh((n // int(batch_axis), int(batch_axis)), (SEED_AXIS, BATCH_AXIS),
                       axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def seed_sharding(mesh: Mesh) -> NamedSharding:
  """The layout of a swept array: leading (seed) axis split over 'seed', the rest replicated."""
  _check_mesh(mesh)
  return NamedSharding(mesh, PartitionSpec(SEED_AXIS))


def shard_seeds(fn: Callable, mesh: Mesh, *, pad: bool = False) -> Callable:
  """``sweep(*args) = jax.vmap(fn)(*args)``, compiled once and split over the 'seed' devices.

  Args:
    fn: the per-seed function, ``fn(*per_seed_args) -> pytree`` (e.g.
      ``lambda key: train.run(rule, opt, data_fn, key, steps)``). Pure and traceable.
    mesh: a mesh with a 'seed' axis (see :func:`seed_mesh`).
    pad: if False, the seed count S must be a multiple of ``mesh.shape['seed']``; if True, the
      inputs are padded by repeating the last seed and the outputs are cut back to S.

  Returns:
    ``sweep(*args)``: every leaf of every argument has a leading seed axis [S, ...] (PRNG key
    arrays included); returns ``fn``'s outputs with a leading [S] axis, laid out as
    ``NamedSharding(mesh, P('seed'))`` (when padding was needed, the cut outputs are ordinary
    slices of that layout). ``sweep.lower(*args)`` gives the lowered program for inspection.
    Inputs are placed with ``jax.device_put``. When the mesh spans several processes, every
    process must pass the same values (checked: a ValueError otherwise) and the outputs are
    global arrays, each process holding the rows of its own devices.
  """
  if not callable(fn):
    raise ValueError(f"fn must be callable, got {fn!r}.")
  pad = _validation.flag("pad", pad)
  sharding = seed_sharding(mesh)
  n_seed = mesh.shape[SEED_AXIS]
  # spmd_axis_name: sharding constraints inside fn (constrain_batch) keep the seed axis split.
  jitted = jax.jit(jax.vmap(fn, spmd_axis_name=SEED_AXIS), in_shardings=sharding,
                   out_shardings=sharding)

  def prepare(args):
    if not args:
      raise ValueError("sweep needs at least one argument with a leading seed axis (the keys).")
    s = _seed_count(args)
    if s % n_seed and not pad:
      raise ValueError(f"the number of seeds {s} is not a multiple of the {n_seed} devices on the "
                       f"'seed' axis; use a multiple of {n_seed} or shard_seeds(..., pad=True).")
    extra = -s % n_seed
    if extra:
      args = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], extra, axis=0)]), args)
    return s, extra, _place(args, sharding)

  def sweep(*args):
    s, extra, args = prepare(args)
    out = jitted(*args)
    return jax.tree.map(lambda a: a[:s], out) if extra else out

  def lower(*args):
    return jitted.lower(*prepare(args)[2])

  sweep.lower = lower
  return sweep


SEED_AXIS_CHOICES = ("vmap", "loop", "auto")


def resolve_seed_axis(seed_axis: str = "auto") -> str:
  """'vmap' or 'loop': how a sweep maps its per-seed function over the seeds.

  'vmap': one compiled program over all seeds (``jax.vmap``); 'loop': one compiled single-seed
  program called once per seed from Python; 'auto': 'loop' when JAX's default backend is the CPU
  (there a vmap turns the per-seed products into batched ones that XLA:CPU runs more slowly than
  S separate calls: 32 vmapped seeds of a seqMNIST update took about twice the time of a loop on
  2 cores) and 'vmap' on GPU and TPU. Unlike the kernels, which choose per lowering platform,
  'auto' looks at the *runtime* backend: it decides the host-side structure of the sweep (one
  call or S calls), which exists before anything is lowered.

  Raises:
    ValueError: for a value outside ('vmap', 'loop', 'auto').
  """
  if seed_axis not in SEED_AXIS_CHOICES:
    raise ValueError(f"seed_axis must be one of {list(SEED_AXIS_CHOICES)}, got {seed_axis!r}.")
  if seed_axis == "auto":
    return "loop" if jax.default_backend() == "cpu" else "vmap"
  return seed_axis


def map_seeds(fn: Callable, seed_axis: str = "auto", in_axes: Any = 0) -> Callable:
  """``fn`` applied to every seed of a leading seed axis, by a vmap or a loop (same numbers).

  Args:
    fn: the per-seed function, pure and traceable.
    seed_axis: 'vmap', 'loop' or 'auto' (see :func:`resolve_seed_axis`).
    in_axes: 0 (every argument has a leading seed axis [S, ...]) or a tuple with one entry per
      positional argument: 0 (swept), None (shared by every seed), or a dict of those for a dict
      argument (per key), as in ``jax.vmap``.

  Returns:
    ``mapped(*args)``: 'vmap' is ``jax.jit(jax.vmap(fn, in_axes))``; 'loop' compiles ``fn`` once
    and calls it on seed i's slice of the swept arguments for i = 0 … S−1, stacking the outputs.
    Either way every output leaf has a leading [S] axis; the two agree to floating-point
    rounding (a vmap may batch the products and so sum in another order).
  """
  if not callable(fn):
    raise ValueError(f"fn must be callable, got {fn!r}.")
  spec_ok = lambda a: a in (0, None) or (isinstance(a, dict) and all(v in (0, None)
                                                                     for v in a.values()))
  if in_axes != 0 and not (isinstance(in_axes, tuple) and all(spec_ok(a) for a in in_axes)):
    raise ValueError(f"in_axes must be 0 or a tuple of 0, None or dicts of them (one per "
                     f"argument), got {in_axes!r}.")
  if resolve_seed_axis(seed_axis) == "vmap":
    return jax.jit(jax.vmap(fn, in_axes=in_axes))
  one = jax.jit(fn)

  def looped(*args):
    axes = (0,) * len(args) if in_axes == 0 else in_axes
    if len(axes) != len(args):
      raise ValueError(f"in_axes has {len(axes)} entries for {len(args)} arguments.")
    is_axis = lambda v: v is None or v == 0
    swept = [x for a, ax in zip(args, axes)
             for x, sub in _by_axis(ax, a, is_axis) if sub == 0]
    s = _seed_count(swept)
    if s == 0:
      raise ValueError("the seed axis is empty: pass at least one seed.")
    take = lambda i: [jax.tree.map(lambda sub, x: jax.tree.map(lambda l: l[i], x) if sub == 0
                                   else x, ax, a, is_leaf=is_axis)
                      for a, ax in zip(args, axes)]
    outs = [one(*take(i)) for i in range(s)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

  return looped


def constrain_batch(tree, mesh: Mesh, axis: int = 1):
  """Split the batch axis of every leaf over the mesh's 'batch' devices (inside ``fn``).

  Call it on a time-major :class:`~bplambda_jax.Batch` (x [T, B, D_in], y, mask [T, B];
  B is axis 1) inside the per-seed function given to :func:`shard_seeds`; under that function's
  vmap the seed axis stays split over 'seed'. A mesh whose 'batch' axis has size 1 leaves the
  layout unchanged.

  Args:
    tree: pytree of arrays, each with a batch axis at ``axis``.
    mesh: a mesh with 'seed' and 'batch' axes (see :func:`seed_mesh`).
    axis: position of B in each leaf (1 for time-major batches).

  Returns:
    ``tree`` with a sharding constraint P(None, …, 'batch', …) on each leaf.
  """
  _check_mesh(mesh)
  if BATCH_AXIS not in mesh.shape:
    raise ValueError(f"mesh has axes {tuple(mesh.shape)}; constrain_batch needs a "
                     f"'{BATCH_AXIS}' axis (use seed_mesh(batch_axis=...)).")
  n_batch = mesh.shape[BATCH_AXIS]

  def one(leaf):
    if not isinstance(axis, int) or not 0 <= axis < leaf.ndim:
      raise ValueError(f"axis must index a dimension of every leaf; got axis={axis!r} for a leaf "
                       f"of shape {leaf.shape}.")
    if leaf.shape[axis] % n_batch:
      raise ValueError(f"the batch size {leaf.shape[axis]} is not a multiple of the {n_batch} "
                       f"devices on the '{BATCH_AXIS}' axis.")
    spec = PartitionSpec(*([None] * axis + [BATCH_AXIS]))
    return jax.lax.with_sharding_constraint(leaf, NamedSharding(mesh, spec))

  return jax.tree.map(one, tree)


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None,
                           local_device_ids: Optional[Sequence[int]] = None,
                           **kwargs) -> tuple[int, int]:
  """Start multi-process JAX (``jax.distributed.initialize``): once per process, before JAX runs.

  Arguments left as None come from the environment: ``JAX_COORDINATOR_ADDRESS`` ("host:port" of
  process 0, read by JAX), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (read here; JAX itself
  has no such variables), and otherwise from JAX's cluster detection (SLURM, Open MPI, Cloud TPU,
  Kubernetes). Afterwards ``jax.devices()`` lists the devices of every process, so
  :func:`seed_mesh` spans all of them. CPU processes communicate through gloo (JAX's default).

  Args:
    coordinator_address: "host:port" of process 0, reachable from every process.
    num_processes: total number of processes.
    process_id: this process's index in [0, num_processes).
    local_device_ids: the local devices this process uses (default: all visible ones, or one
      GPU per process under SLURM / Open MPI).
    **kwargs: further arguments of ``jax.distributed.initialize`` (e.g.
      ``initialization_timeout`` in seconds).

  Returns:
    (jax.process_index(), jax.process_count()).

  Raises:
    ValueError: if the coordinator address is not "host:port", or ``JAX_NUM_PROCESSES`` or
      ``JAX_PROCESS_ID`` is set but not an integer; JAX's own errors for missing or inconsistent
      arguments.
    RuntimeError: (from JAX) if JAX has already started, e.g. a second call.
  """
  if num_processes is None:
    num_processes = _env_int("JAX_NUM_PROCESSES")
  if process_id is None:
    process_id = _env_int("JAX_PROCESS_ID")
  address, source = coordinator_address, "coordinator_address"
  if address is None and os.environ.get("JAX_COORDINATOR_ADDRESS"):
    address, source = os.environ["JAX_COORDINATOR_ADDRESS"], "JAX_COORDINATOR_ADDRESS"
  if address is not None:  # JAX fails on a missing port with an IndexError
    host, colon, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
    if not (host and colon and port.isdigit()):
      raise ValueError(f"{source} must be 'host:port' (e.g. '10.0.0.1:1234'), got {address!r}.")
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id, local_device_ids=local_device_ids, **kwargs)
  return jax.process_index(), jax.process_count()


# ------------------------------------------------------------------------------ helpers


def _check_mesh(mesh) -> None:
  if not isinstance(mesh, Mesh):
    raise ValueError(f"mesh must be a jax.sharding.Mesh (see seed_mesh), "
                     f"got {type(mesh).__name__}.")
  if SEED_AXIS not in mesh.shape:
    raise ValueError(f"mesh has axes {tuple(mesh.shape)}; a '{SEED_AXIS}' axis is required "
                     f"(use seed_mesh()).")


def _by_axis(ax, arg, is_axis):
  """[(subtree of ``arg``, its axis 0 or None)] for an axis spec ``ax`` that is a prefix of it."""
  pairs = []
  jax.tree.map(lambda sub, x: pairs.append((x, sub)), ax, arg, is_leaf=is_axis)
  return pairs


def _seed_count(args) -> int:
  """The common leading axis of every leaf of ``args``; ValueError if absent or inconsistent."""
  shapes = [jnp.shape(a) for a in jax.tree.leaves(args)]
  if not shapes:
    raise ValueError("the sweep arguments hold no arrays; pass the keys with a leading seed axis.")
  if any(len(sh) == 0 for sh in shapes):
    raise ValueError("every leaf of the sweep arguments needs a leading seed axis, found a scalar; "
                     "close over constants in fn instead.")
  sizes = sorted({sh[0] for sh in shapes})
  if len(sizes) > 1:
    raise ValueError(f"the sweep arguments disagree on the seed count (leading axes {sizes}); "
                     f"every leaf needs the same leading axis.")
  return sizes[0]


def _place(args, sharding: NamedSharding):
  """``args`` laid out with ``sharding``; on several processes, from identical host values.

  With one process this is ``jax.device_put``. When the mesh spans several processes, each leaf
  that is not already a global array is taken to the host (PRNG keys as their key data), and
  ``jax.device_put`` builds the global array from it after checking that every process holds the
  same value (a ValueError otherwise).
  """
  if sharding.is_fully_addressable:
    return jax.device_put(args, sharding)

  def one(leaf):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      return jax.device_put(leaf, sharding)  # already global: at most a reshard
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      data = _put_host(np.asarray(jax.random.key_data(leaf)), sharding)
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
    return _put_host(np.asarray(leaf), sharding)

  return jax.tree.map(one, args)


def _put_host(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
  try:
    return jax.device_put(value, sharding)  # checks that the value is the same on every process
  except AssertionError:
    raise ValueError(f"the sweep arguments differ between processes (a {value.dtype}"
                     f"{list(value.shape)} leaf); every process must call the sweep with the same "
                     f"full arrays (e.g. keys split from the same seed).") from None


def _env_int(name: str) -> Optional[int]:
  value = os.environ.get(name)
  if value is None or value == "":
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"environment variable {name} must be an integer, got {value!r}.") from None
