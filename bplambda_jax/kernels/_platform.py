"""Choosing a kernel's implementation by the platform a program is lowered for.

A jitted or exported program may be lowered for a platform other than the one it is traced on
(``jax.export.export(jax.jit(f), platforms=["cuda"])`` on a CPU machine), so the kernels choose
their implementation with ``jax.lax.platform_dependent``: every platform's branch is traced, and
lowering keeps the one branch of the platform it lowers for. A branch may be the fused Pallas
kernel with that platform's tiles and compiler parameters, the Pallas interpreter (CPU) or the XLA
path. :func:`dispatch` is that choice for one kernel call, :func:`select_impl` the choice that
layout decisions taken before tracing use.

GPU kernels use Pallas's Triton backend. Mosaic GPU (JAX's default for ``pallas_call`` on CUDA)
copies every block to shared memory with asynchronous copies whose global strides must be
multiples of 16 bytes, and bounds a program by the shared memory of one SM; the trace kernels
here are per-tile element-wise work and small matrix products whose widths (d, the number of
TD-error components) are rarely multiples of four floats. Triton reads the blocks straight from
global memory, needs only power-of-two block sizes (the kernels pad to them), and runs on
Ampere and later GPUs and on ROCm.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from bplambda_jax import _validation

IMPLS = ("pallas", "xla")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
GPU_PLATFORMS = ("cuda", "rocm")
# TPU (Mosaic): a block's last axis is laid out in 128 lanes; the blocks of a program,
# double-buffered, must fit the default scoped VMEM (16 MiB), with a margin.
TPU_LANES = 128
TPU_VMEM = 12 * 2 ** 20
_ALIASES = {"gpu": "cuda"}

_warned: set = set()


def normalize_platform(backend: Optional[str]) -> Optional[str]:
  """'cpu', 'cuda', 'rocm' or 'tpu' for a platform or backend name ('gpu' means 'cuda'); None
  stays None. ValueError for anything else."""
  if backend is None:
    return None
  if not isinstance(backend, str):
    raise ValueError(f"backend must be None or a platform name such as 'cpu', 'gpu', 'cuda', "
                     f"'rocm' or 'tpu', got {backend!r}.")
  name = _ALIASES.get(backend.lower(), backend.lower())
  if name not in PLATFORMS:
    raise ValueError(f"backend must be None or one of {['gpu', *PLATFORMS]}, got {backend!r}.")
  return name


def runtime_platform() -> str:
  """The platform of JAX's default backend ('cpu', 'cuda', 'rocm' or 'tpu')."""
  backend = jax.default_backend()
  if backend == "gpu":
    version = str(getattr(jax.devices()[0].client, "platform_version", "")).lower()
    return "rocm" if "rocm" in version else "cuda"
  return normalize_platform(backend) if backend in PLATFORMS else backend


def by_platform(branch_for: Callable[[str], Callable], args: tuple,
                platform: Optional[str] = None):
  """``branch_for(p)(*args)`` for the platform p the program is lowered for.

  Args:
    branch_for: maps a platform name to the function that platform runs (same outputs).
    args: the arrays the functions take.
    platform: a platform name to use that platform's function whatever the lowering platform,
      or None to choose at lowering (``jax.lax.platform_dependent``; a platform outside
      :data:`PLATFORMS` gets the CPU's function).
  """
  if platform is not None:
    return branch_for(platform)(*args)
  # The CPU's function is the default; equal functions (CUDA and ROCm) are traced once.
  accelerators = {p: branch_for(p) for p in PLATFORMS if p != "cpu"}
  return jax.lax.platform_dependent(*args, default=branch_for("cpu"), **accelerators)


def tile_platform(platform: str) -> str:
  """The compile target of a platform's kernels: 'gpu' for CUDA and ROCm (both Triton), else
  the platform itself."""
  return "gpu" if platform in GPU_PLATFORMS else platform


def compiler_params(platform: str, num_warps: int = 4, grid_rank: int = 2) -> Any:
  """Pallas compiler parameters of a compiled kernel on ``platform`` ('gpu': Triton, for CUDA
  and ROCm alike; 'tpu': Mosaic)."""
  if tile_platform(platform) == "gpu":
    return pltriton.CompilerParams(num_warps=num_warps, num_stages=1)
  if platform == "tpu":
    return pltpu.CompilerParams(dimension_semantics=("parallel",) * grid_rank)
  raise ValueError(f"no compiled Pallas kernel for platform {platform!r}; use interpret mode.")


def note_fallback(kernel: str, platform: str, shape: tuple, reason: str, *, forced: bool) -> None:
  """Warn (once per kernel, platform and shape) that ``platform`` runs the XLA path instead.

  The warning is given when the program will run there: the platform is the default backend's,
  or it was named by the caller (``forced``). Exports for another platform stay quiet.
  """
  key = (kernel, platform, shape)
  if key in _warned or not (forced or platform == runtime_platform()):
    return
  _warned.add(key)
  warnings.warn(f"{kernel}: the Pallas kernel cannot serve shape {shape} on {platform} "
                f"({reason}); the XLA implementation is used there instead.", stacklevel=4)


def check_interpret(interpret):
  """ValueError unless ``interpret`` is None, True or False."""
  _validation.flag("interpret", interpret, allow_none=True)


def select_impl(backend: Optional[str] = None, dtype: Any = None) -> str:
  """The implementation the automatic choice gives on a platform.

  'pallas' on GPU and TPU (except float64 on TPU, which has no 64-bit floats), 'xla' elsewhere
  (the Pallas interpreter on CPU is a correctness tool, slower than XLA). The kernels themselves
  choose by the platform a program is *lowered* for (``jax.lax.platform_dependent``), so one
  jitted or exported program holds the right path for each platform; this function serves
  decisions that must be taken before tracing, such as the padded layout of a stored trace
  (:func:`~bplambda_jax.internals.padded_columns`). A Pallas kernel that cannot serve a shape on
  its platform falls back to XLA there (with a warning).

  Args:
    backend: a platform name ('cpu', 'gpu', 'cuda', 'rocm', 'tpu'); None means the default
      backend's platform.
    dtype: the dtype of the trace, or None.

  Returns:
    'pallas' or 'xla'.
  """
  platform = normalize_platform(backend) or runtime_platform()
  if platform not in ("cuda", "rocm", "tpu"):
    return "xla"
  if platform == "tpu" and dtype is not None and jnp.dtype(dtype).itemsize > 4:
    return "xla"
  return "pallas"


def check_impl(impl):
  """ValueError unless ``impl`` is None or one of :data:`IMPLS`."""
  if impl is not None and impl not in IMPLS:
    raise ValueError(f"impl must be one of {list(IMPLS)} or None (automatic), got {impl!r}.")


def route(kernel, platform, impl, interpret, shape, plan, *, forced):
  """What ``platform`` runs: 'xla' or the _Tiles of a Pallas launch.

  impl None: XLA on CPU, the compiled kernel elsewhere; 'pallas': the interpreter on CPU (or
  everywhere with ``interpret=True``), the compiled kernel elsewhere; 'xla': XLA. A compiled kernel
  whose ``plan(platform)`` cannot serve the shape falls back to XLA (a warning, see
  :func:`note_fallback`).
  """
  if impl == "xla" or (impl is None and platform not in ("cuda", "rocm", "tpu")):
    return "xla"
  if interpret or (interpret is None and platform == "cpu"):
    return plan("interpret")[0]
  tiles, why = plan(platform)
  if tiles is None:
    note_fallback(kernel, platform, shape, why, forced=forced)
    return "xla"
  return tiles


def dispatch(kernel, xla_fn, pallas_fn, args, shape, plan, *, impl, interpret, backend):
  """``xla_fn(*args)`` or ``pallas_fn(*args, tiles=...)``, chosen per lowering platform."""
  platform = normalize_platform(backend)
  forced = platform is not None

  made = {}

  def branch_for(p):
    chosen = route(kernel, p, impl, interpret, shape, plan, forced=forced)
    if chosen == "xla":
      return xla_fn
    return made.setdefault(chosen, functools.partial(pallas_fn, tiles=chosen))  # one per tiling

  if impl == "xla":
    return xla_fn(*args)
  if interpret:
    return branch_for("cpu")(*args)
  return by_platform(branch_for, args, platform)
