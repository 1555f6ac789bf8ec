"""Choosing a kernel's implementation by the platform a program is lowered for.

A jitted or exported program may be lowered for a platform other than the one it is traced on
(``jax.export.export(jax.jit(f), platforms=["cuda"])`` on a CPU machine), so the kernels choose
their implementation with ``jax.lax.platform_dependent``: every platform's branch is traced, and
lowering keeps the one branch of the platform it lowers for. A branch may be the fused Pallas
kernel with that platform's tiles and compiler parameters, the Pallas interpreter (CPU) or the XLA
path.

GPU kernels use Pallas's Triton backend. Mosaic GPU (JAX's default for ``pallas_call`` on CUDA)
copies every block to shared memory with asynchronous copies whose global strides must be
multiples of 16 bytes, and bounds a program by the shared memory of one SM; the trace kernels
here are per-tile element-wise work and small matrix products whose widths (d, the number of
TD-error components) are rarely multiples of four floats. Triton reads the blocks straight from
global memory, needs only power-of-two block sizes (the kernels pad to them), and runs on
Ampere and later GPUs and on ROCm.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

import jax
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
GPU_PLATFORMS = ("cuda", "rocm")
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
  branches = {p: branch_for(p) for p in PLATFORMS}
  return jax.lax.platform_dependent(*args, default=branches["cpu"], **branches)


def compiler_params(platform: str, num_warps: int = 4, grid_rank: int = 2) -> Any:
  """Pallas compiler parameters of a compiled kernel on ``platform`` ('cuda'/'rocm': Triton)."""
  if platform in GPU_PLATFORMS:
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
