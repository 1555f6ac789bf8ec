"""Fused BP(λ) online trace step: E ← c·M·E + G and the TD increment δ·E in one pass.

In the online mode of BP(λ) (:func:`bplambda_jax.bp_lambda`) every synthesiser
parameter leaf, flattened to P columns, carries a per-example trace E_b [d, P]. One TD step is::

    E_b ← c·M_b·E_b + G_b             c = γλ, M_b [d, d] the transition, G_b = ∂ĝ(z_b)/∂θ [d, P]
    inc = (1/B)·Σ_b δ_b·E_b           δ_b [d] the TD error, inc [P]

Written as two einsums, XLA may read the new E back from memory for the contraction after
writing it. The Pallas kernel here reads each tile of E and G once, writes the tile of the new E,
and emits the tile's share of the increment from registers, so the step costs one pass over the
trace: about 3·B·d·P words moved for 2·B·d²·P flops.

Three implementations of the same maths:

* :func:`trace_step_reference`: pure ``jnp`` in the order written above (the oracle);
  :func:`trace_step_xla` reassociates it so the increment is read from the old trace (the XLA
  path).
* :func:`trace_step_pallas`: the fused Pallas kernel; ``interpret=True`` runs it on CPU.
* :func:`trace_step`: picks one per platform the program is lowered for (Pallas on GPU/TPU, XLA on
  CPU; ``jax.lax.platform_dependent``, so one jitted or exported program serves every platform) or
  as forced by ``impl``.

:func:`trace_step_diag` and friends cover the linear synthesiser ĝ(z) = W z + β, whose ∂ĝ/∂θ has
the "diagonal placement" ∂ĝ_o/∂W_ij = 1[o = i]·z_j: G is never materialised, only z is read.
The leaf-by-leaf wrappers over synthesiser pytrees live with the traces
(:mod:`bplambda_jax.credit`); the kernels here see arrays only.

Tiling of the kernel (every grid program is independent, so the grid is fully parallel on GPU and
TPU alike): the grid is (B, ⌈P/block_p⌉); program (b, j) holds M_b [d', d'] and the column tile
E_b[:, j·block_p : (j+1)·block_p] [d', block_p], where d' is d rounded up to a power of two ≥ 16
(Triton needs power-of-two blocks and at least 16 rows for a matrix product; zero rows change
nothing). Tiles are chosen per platform (:func:`_tiles`): on GPU (Triton) d' ≤ 128 and d'·block_p ≤
8192, so M and a tile fit one program's shared memory and registers (a larger d runs the XLA path
there, with a warning); on TPU (Mosaic) column tiles are whole 128-lane multiples and the
double-buffered blocks stay within the scoped VMEM. Each program writes its partial increment Σ_i
δ_bi·E_new_bi [block_p] to a [B, 1, P'] buffer; the sum over the batch and the 1/B are one cheap
XLA reduction afterwards, which avoids a cross-program accumulation that GPU grids cannot do
safely. The factor c is folded into M before the call (an O(B·d²) product), so c may be a traced
array and the kernel has no scalar operands.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from bplambda_jax import _validation
from bplambda_jax.kernels import _platform
from bplambda_jax.kernels._platform import check_impl, check_interpret, dispatch

DEFAULT_BLOCK_P = 256
_MIN_D = 16  # smallest padded d: Triton's matrix product needs ≥ 16 rows
_PRECISION = jax.lax.Precision.HIGHEST  # full float32 products on TPU/GPU (no bf16/tf32 passes)

Array = jax.Array


# --------------------------------------------------------------------------------- validation
def _check_common(E, M, delta, c, e_name="E"):
  if E.ndim != 3:
    raise ValueError(f"{e_name} must have shape [B, d, P], got shape {E.shape}.")
  B, d, _ = E.shape
  if M.shape != (B, d, d):
    raise ValueError(f"M must have shape [B, d, d] = {(B, d, d)} to match {e_name} {E.shape}, got "
                     f"shape {M.shape}.")
  if delta.shape != (B, d):
    raise ValueError(f"delta must have shape [B, d] = {(B, d)} to match {e_name} {E.shape}, got "
                     f"shape {delta.shape}.")
  if jnp.ndim(c) != 0:
    raise ValueError(f"c must be a scalar (python number or 0-d array), got shape {jnp.shape(c)}.")
  if not jnp.issubdtype(jnp.result_type(c), jnp.number):
    raise ValueError(f"c must be a real number, got dtype {jnp.result_type(c)}.")


def _check_dense(E, M, G, delta, c):
  E, M, G, delta = (jnp.asarray(a) for a in (E, M, G, delta))
  _check_common(E, M, delta, c)
  if G.shape != E.shape:
    raise ValueError(f"G must have the shape of E {E.shape}, got shape {G.shape}.")
  dtype = _float_dtype(E, M, G, delta)
  return E, M, G, delta, dtype


def _check_diag(E, M, z, delta, c):
  E, M, z, delta = (jnp.asarray(a) for a in (E, M, z, delta))
  if E.ndim != 4 or E.shape[1] != E.shape[2]:
    raise ValueError(
        f"E must have shape [B, d, d, n] (the trace of W [d, n]), got shape {E.shape}.")
  B, d, _, n = E.shape
  _check_common(E.reshape(B, d, d * n), M, delta, c)
  if z.shape != (B, n):
    raise ValueError(f"z must have shape [B, n] = {(B, n)} to match E {E.shape}, got shape "
                     f"{z.shape}.")
  dtype = _float_dtype(E, M, z, delta)
  return E, M, z, delta, dtype


def _float_dtype(*args):
  """Promoted dtype of the array operands; c is cast to it and does not take part."""
  dtype = jnp.result_type(*args)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"trace_step needs floating-point inputs, got result dtype {dtype}.")
  return dtype


def _check_block_p(block_p):
  what = "a positive power of two (a multiple of 128 on TPU)"
  if _validation.integer("block_p", block_p, minimum=1, what=what) & (block_p - 1):
    raise ValueError(f"block_p must be {what}, got {block_p!r}.")


# --------------------------------------------------------------------------------- references
def trace_step_reference(E: Array, M: Array, G: Array, delta: Array, c: Any) -> tuple[Array, Array]:
  """The trace step in pure ``jnp``, in the textbook order (the oracle for the other paths).

  E_new_b = c·M_b·E_b + G_b,   inc = (1/B)·Σ_b δ_b·E_new_b.

  Args:
    E: traces at τ−1, [B, d, P].
    M: transitions, [B, d, d]; row i of M_b is e_i·M_b.
    G: new parameter Jacobians ∂ĝ/∂θ, [B, d, P].
    delta: TD errors δ_τ, [B, d].
    c: the decay γλ, a scalar (python number or 0-d array, possibly traced).

  Returns:
    (E_new [B, d, P], inc [P]), in the promoted floating dtype of the inputs.
  """
  E, M, G, delta, dtype = _check_dense(E, M, G, delta, c)
  E, M, G, delta = (a.astype(dtype) for a in (E, M, G, delta))
  E_new = (jnp.asarray(c, dtype) * jnp.einsum("bij,bjp->bip", M, E, precision=_PRECISION)
           + G).astype(dtype)  # [B, d, d] · [B, d, P] -> [B, d, P]
  inc = jnp.einsum("bi,bip->p", delta, E_new, precision=_PRECISION) / E.shape[0]  # -> [P]
  return E_new, inc.astype(dtype)


def trace_step_diag_reference(E: Array, M: Array, z: Array, delta: Array,
                              c: Any) -> tuple[Array, Array]:
  """The trace step of a linear synthesiser's weight W [d, n], in pure ``jnp``.

  Here G_b[o, i, j] = ∂ĝ_o/∂W_ij = 1[o = i]·z_bj, so

  E_new_b[o, i, j] = c·Σ_k M_b[o, k]·E_b[k, i, j] + 1[o = i]·z_bj,   inc = (1/B)·Σ_b δ_b·E_new_b.

  For the bias β use n = 1 and z = 1.

  Args:
    E: traces of W at τ−1, [B, d, d, n].
    M: transitions, [B, d, d].
    z: the synthesiser input at which ∂ĝ/∂W is taken, [B, n].
    delta: TD errors, [B, d].
    c: the decay γλ, a scalar (possibly traced).

  Returns:
    (E_new [B, d, d, n], inc [d, n]).
  """
  E, M, z, delta, dtype = _check_diag(E, M, z, delta, c)
  E, M, z, delta = (a.astype(dtype) for a in (E, M, z, delta))
  d = E.shape[1]
  eye = jnp.eye(d, dtype=dtype)
  E_new = (jnp.asarray(c, dtype) * jnp.einsum("bok,bkij->boij", M, E, precision=_PRECISION)
           + eye[None, :, :, None] * z[:, None, None, :]).astype(dtype)  # [B, d, d, n]
  inc = jnp.einsum("bo,boij->ij", delta, E_new, precision=_PRECISION) / E.shape[0]  # -> [d, n]
  return E_new, inc.astype(dtype)


# --------------------------------------------------------------------------------- XLA paths
def trace_step_xla(E: Array, M: Array, G: Array, delta: Array, c: Any) -> tuple[Array, Array]:
  """:func:`trace_step_reference`'s maths, arranged for XLA: E is read by two products only.

  δ_b·E_new_b = (δ_b·c·M_b)·E_b + δ_b·G_b, so the increment is contracted from the *old* trace
  with the cheap row vector δ_b·c·M_b [d] and never reads E_new back; c is folded into M before
  the product (O(B·d²)), so the product's output is E_new up to the addition of G. On CPU this
  is about 1.6× faster than the reference's order (``benchmarks``, ``kernel_trace_step_*``).

  Args and returns as in :func:`trace_step_reference`.
  """
  E, M, G, delta, dtype = _check_dense(E, M, G, delta, c)
  E, M, G, delta = (a.astype(dtype) for a in (E, M, G, delta))
  Mc = jnp.asarray(c, dtype) * M  # [B, d, d]
  dMc = jnp.einsum("bi,bij->bj", delta, Mc, precision=_PRECISION)  # [B, d]
  inc = (jnp.einsum("bj,bjp->p", dMc, E, precision=_PRECISION)
         + jnp.einsum("bi,bip->p", delta, G, precision=_PRECISION)) / E.shape[0]  # [P]
  E_new = jnp.einsum("bij,bjp->bip", Mc, E, precision=_PRECISION) + G  # [B, d, P]
  return E_new.astype(dtype), inc.astype(dtype)


def trace_step_diag_xla(E: Array, M: Array, z: Array, delta: Array,
                        c: Any) -> tuple[Array, Array]:
  """:func:`trace_step_diag_reference`'s maths, arranged for XLA (see :func:`trace_step_xla`).

  The increment is (1/B)·Σ_b [(δ_b·c·M_b)·E_b + δ_b ⊗ z_b], read from the old trace; the new
  trace is the product c·M_b·E_b with z_b added in place on its d diagonal rows (o = i), a
  scatter that touches B·d·n of the B·d²·n entries.

  Args and returns as in :func:`trace_step_diag_reference`.
  """
  E, M, z, delta, dtype = _check_diag(E, M, z, delta, c)
  E, M, z, delta = (a.astype(dtype) for a in (E, M, z, delta))
  B, d, _, n = E.shape
  Mc = jnp.asarray(c, dtype) * M  # [B, d, d]
  dMc = jnp.einsum("bo,bok->bk", delta, Mc, precision=_PRECISION)  # [B, d]
  inc = (jnp.einsum("bk,bkij->ij", dMc, E, precision=_PRECISION)
         + jnp.einsum("bi,bj->ij", delta, z, precision=_PRECISION)) / B  # [d, n]
  E_new = jnp.einsum("bok,bkij->boij", Mc, E, precision=_PRECISION)  # [B, d, d, n]
  diag = jnp.arange(d)
  E_new = E_new.at[:, diag, diag, :].add(z[:, None, :], indices_are_sorted=True,
                                         unique_indices=True)
  return E_new.astype(dtype), inc.astype(dtype)


# --------------------------------------------------------------------------------- the kernels
def _emit(e_new, dl_ref, e_out_ref, part_ref):
  """Store the new trace tile and its partial increment Σ_i δ_i·E_new[i, :]."""
  e_out_ref[...] = e_new.astype(e_out_ref.dtype)
  part_ref[...] = jnp.sum(dl_ref[...] * e_new, axis=0, keepdims=True).astype(part_ref.dtype)


def _dense_kernel(m_ref, e_ref, g_ref, dl_ref, e_out_ref, part_ref):
  # m: [d', d'] (already scaled by c), e/g: [d', bp], dl: [d', 1]
  e_new = jnp.dot(m_ref[...], e_ref[...], precision=_PRECISION) + g_ref[...]
  _emit(e_new, dl_ref, e_out_ref, part_ref)


def _diag_kernel(m_ref, e_ref, zr_ref, dl_ref, e_out_ref, part_ref, *, n, block_p):
  # G[o, p] = 1[o = p // n]·zrep[p], with p the flattened (i, j) column of W [d, n]
  e_new = jnp.dot(m_ref[...], e_ref[...], precision=_PRECISION)
  shape = e_new.shape  # [d', bp]
  o = jax.lax.broadcasted_iota(jnp.int32, shape, 0)
  p = pl.program_id(1) * block_p + jax.lax.broadcasted_iota(jnp.int32, shape, 1)
  on_diag = (p >= o * n) & (p < o * n + n)  # o == p // n without integer division
  e_new = e_new + jnp.where(on_diag, zr_ref[...], jnp.zeros((), e_new.dtype))
  _emit(e_new, dl_ref, e_out_ref, part_ref)


class _Tiles(NamedTuple):
  """How one launch is tiled (hashable: it selects the compiled program).

  platform: 'interpret' (the Pallas interpreter), or what the kernel is compiled for ('gpu':
  Triton on CUDA and ROCm, 'tpu'; 'cpu' has no compiler and fails to lower, as Pallas does there).
  """

  platform: str
  d_pad: int
  bp: int
  P_pad: int
  num_warps: int = 4


# GPU (Triton): a program holds M [d', d'] and a column tile [d', bp] in shared memory for the
# product and the new tile [d', bp] in registers. d' ≤ 128 and d'·bp ≤ 8192 floats keep that at
# ≤ 96 KiB of shared memory and ≤ 64 registers a thread (8 warps), within every GPU since Ampere.
_GPU_MAX_D = 128
_GPU_TILE = 8192


def _tiles(platform: str, d: int, P: int, block_p: int, itemsize: int):
  """(_Tiles, '') for ``platform``, or (None, why) when the kernel cannot serve the shape there.

  Rows d are padded to d' = a power of two ≥ 16 (Triton's matrix product needs power-of-two
  blocks of at least 16; a full-axis block is also valid on TPU). Columns: a tile of ``block_p``
  (at most P rounded up to a power of two); at least 16 on GPU and a multiple of 128 lanes on TPU
  unless one tile covers the padded axis.
  """
  d_pad = max(_MIN_D, pl.next_power_of_2(d))
  p2 = pl.next_power_of_2(P)
  num_warps = 4
  if platform in _platform.GPU_PLATFORMS:
    if d_pad > _GPU_MAX_D:
      return None, (f"d = {d} rows pad to {d_pad} > {_GPU_MAX_D}: M [d', d'] alone exceeds a "
                    f"program's shared memory")
    bp = max(_MIN_D, min(block_p, p2, _GPU_TILE // d_pad))
    num_warps = 4 if d_pad * bp <= _GPU_TILE // 2 else 8
  elif platform == "tpu":
    if itemsize > 4:
      return None, "TPUs have no 64-bit floats"
    lanes = _platform.TPU_LANES
    bp = min(max(block_p, lanes), p2)
    vmem = 2 * itemsize * (d_pad * d_pad + 3 * d_pad * bp + d_pad * lanes + 8 * bp)
    if vmem > _platform.TPU_VMEM:
      return None, f"its blocks need {vmem} bytes of VMEM > {_platform.TPU_VMEM}"
  else:
    bp = min(block_p, p2)
  target = _platform.tile_platform(platform)
  return _Tiles(target, d_pad, bp, pl.cdiv(P, bp) * bp, num_warps), ""


def _pad_to(a, shape):
  widths = [(0, t - s) for s, t in zip(a.shape, shape)]
  return jnp.pad(a, widths) if any(w for _, w in widths) else a


def _run_xla(Mc, E, col, delta, n):
  """What :func:`_run` computes, in jnp: its derivative rule (the kernel has none of its own)."""
  B, d, _ = E.shape
  if n is None:
    G = col
  else:
    G = jnp.repeat(jnp.eye(d, dtype=E.dtype), n, axis=1)[None] * col  # [1, d, d·n] · [B, 1, d·n]
  E_new = jnp.einsum("bij,bjp->bip", Mc, E, precision=_PRECISION) + G  # [B, d, P]
  return E_new, jnp.einsum("bi,bip->p", delta, E_new, precision=_PRECISION) / B  # [P]


@functools.partial(jax.jit, static_argnames=("n", "tiles"))
def _run(Mc, E, col, delta, *, n, tiles):
  return _run_fused(Mc, E, col, delta, n, tiles)


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5))
def _run_fused(Mc, E, col, delta, n, tiles):
  """Shared launcher: col is G [B, d, P] (n=None, dense) or zrep [B, 1, P] (diagonal, W [d, n])."""
  B, d, P = E.shape
  d_pad, bp, P_pad = tiles.d_pad, tiles.bp, tiles.P_pad
  dtype = E.dtype
  Mc = _pad_to(Mc, (B, d_pad, d_pad))
  E = _pad_to(E, (B, d_pad, P_pad))
  if n is None:
    kernel, rows = _dense_kernel, d_pad
  else:
    kernel, rows = functools.partial(_diag_kernel, n=n, block_p=bp), 1
  col = _pad_to(col, (B, rows, P_pad))
  dl = _pad_to(delta[:, :, None], (B, d_pad, 1))  # δ as a column, [B, d', 1]
  interpret = tiles.platform == "interpret"
  params = None if interpret or tiles.platform == "cpu" else _platform.compiler_params(
      tiles.platform, tiles.num_warps)
  E_new, part = pl.pallas_call(
      kernel,
      out_shape=(jax.ShapeDtypeStruct((B, d_pad, P_pad), dtype),
                 jax.ShapeDtypeStruct((B, 1, P_pad), dtype)),
      grid=(B, P_pad // bp),
      in_specs=[
          pl.BlockSpec((None, d_pad, d_pad), lambda b, j: (b, 0, 0)),
          pl.BlockSpec((None, d_pad, bp), lambda b, j: (b, 0, j)),
          pl.BlockSpec((None, rows, bp), lambda b, j: (b, 0, j)),
          pl.BlockSpec((None, d_pad, 1), lambda b, j: (b, 0, 0)),
      ],
      out_specs=(
          pl.BlockSpec((None, d_pad, bp), lambda b, j: (b, 0, j)),
          pl.BlockSpec((None, 1, bp), lambda b, j: (b, 0, j)),
      ),
      interpret=interpret,
      compiler_params=params,
      name="bplambda_trace_step",
  )(Mc, E, col, dl)
  inc = jnp.sum(part[:, 0, :P], axis=0) / B  # [B, P] -> [P]
  return E_new[:, :d, :P], inc.astype(dtype)


@_run_fused.defjvp
def _run_fused_jvp(n, tiles, primals, tangents):
  # The step is bilinear, so the tangent is linear in the input tangents and JAX can transpose it:
  # forward and reverse mode both work, the primal still comes from the kernel.
  out = _run_fused(*primals, n, tiles)
  _, out_dot = jax.jvp(lambda *a: _run_xla(*a, n), primals, tangents)
  return out, out_dot


# --------------------------------------------------------------------------------- entry points
def _dense(E, M, G, delta, c, *, impl, interpret, backend, block_p):
  E, M, G, delta, dtype = _check_dense(E, M, G, delta, c)
  check_impl(impl)
  check_interpret(interpret)
  _check_block_p(block_p)
  Mc = (jnp.asarray(c, dtype) * M).astype(dtype)  # c folded into M: [B, d, d]
  B, d, P = E.shape
  plan = lambda p: _tiles(p, d, P, block_p, jnp.dtype(dtype).itemsize)
  xla = lambda Mc, E, G, dl: trace_step_xla(E, Mc, G, dl, 1.0)
  pallas = lambda Mc, E, G, dl, tiles: _run(Mc, E, G, dl, n=None, tiles=tiles)
  args = (Mc, E.astype(dtype), G.astype(dtype), delta.astype(dtype))
  return dispatch("trace_step", xla, pallas, args, (B, d, P), plan, impl=impl,
                  interpret=interpret, backend=backend)


def _diag(E, M, z, delta, c, *, impl, interpret, backend, block_p):
  E, M, z, delta, dtype = _check_diag(E, M, z, delta, c)
  check_impl(impl)
  check_interpret(interpret)
  _check_block_p(block_p)
  B, d, _, n = E.shape
  Mc = (jnp.asarray(c, dtype) * M).astype(dtype)
  plan = lambda p: _tiles(p, d, d * n, block_p, jnp.dtype(dtype).itemsize)
  xla = lambda Mc, E, z, dl: trace_step_diag_xla(E, Mc, z, dl, 1.0)

  def pallas(Mc, E, z, dl, tiles):
    zrep = jnp.tile(z, (1, d))[:, None, :]  # zrep[b, 0, i·n + j] = z[b, j], [B, 1, d·n]
    E_new, inc = _run(Mc, E.reshape(B, d, d * n), zrep, dl, n=n, tiles=tiles)
    return E_new.reshape(B, d, d, n), inc.reshape(d, n)

  args = (Mc, E.astype(dtype), z.astype(dtype), delta.astype(dtype))
  return dispatch("trace_step_diag", xla, pallas, args, (B, d, d * n), plan, impl=impl,
                  interpret=interpret, backend=backend)


def trace_step_pallas(E: Array, M: Array, G: Array, delta: Array, c: Any, *,
                      interpret: Optional[bool] = None,
                      block_p: int = DEFAULT_BLOCK_P) -> tuple[Array, Array]:
  """The trace step as one fused Pallas kernel (same maths as :func:`trace_step_reference`).

  Differentiable in forward and reverse mode: the derivative is that of the jnp formula (the
  kernel itself has no derivative rule). On GPU the kernel is compiled with Triton, on TPU with
  Mosaic, each with its own tiles; a shape the kernel cannot serve there (on GPU: d > 128) runs
  the XLA path instead, with a warning.

  Args:
    E: traces at τ−1, [B, d, P].
    M: transitions, [B, d, d].
    G: new parameter Jacobians ∂ĝ/∂θ, [B, d, P].
    delta: TD errors, [B, d].
    c: the decay γλ, a scalar (possibly traced).
    interpret: True: the Pallas interpreter (on any platform); False: the compiled kernel (which
      fails to lower for CPU); None: the interpreter when the program is lowered for CPU, the
      compiled kernel otherwise.
    block_p: columns per tile, a power of two (rounded up to 128 on TPU, and capped on GPU to
      keep a tile in registers); smaller P uses one tile of P rounded up to a power of two.

  Returns:
    (E_new [B, d, P], inc [P]).
  """
  return _dense(E, M, G, delta, c, impl="pallas", interpret=interpret, backend=None,
                block_p=block_p)


def trace_step_diag_pallas(E: Array, M: Array, z: Array, delta: Array, c: Any, *,
                           interpret: Optional[bool] = None,
                           block_p: int = DEFAULT_BLOCK_P) -> tuple[Array, Array]:
  """The linear-synthesiser trace step as a fused Pallas kernel that never builds G.

  Same maths as :func:`trace_step_diag_reference`. The kernel reads z tiled d times along the
  flattened (i, j) columns ([B, d·n], a d-th of G's size) and adds 1[o = i]·z_j in the tile.

  Args:
    E: traces of W at τ−1, [B, d, d, n].
    M: transitions, [B, d, d].
    z: the synthesiser input at which ∂ĝ/∂W is taken, [B, n].
    delta: TD errors, [B, d].
    c: the decay γλ, a scalar (possibly traced).
    interpret: as in :func:`trace_step_pallas`.
    block_p: as in :func:`trace_step_pallas` (columns of the flattened d·n axis).

  Returns:
    (E_new [B, d, d, n], inc [d, n]).
  """
  return _diag(E, M, z, delta, c, impl="pallas", interpret=interpret, backend=None,
               block_p=block_p)


def trace_step(E: Array, M: Array, G: Array, delta: Array, c: Any, *, impl: Optional[str] = None,
               backend: Optional[str] = None,
               block_p: int = DEFAULT_BLOCK_P) -> tuple[Array, Array]:
  """E_new = c·M·E + G and inc = (1/B)·Σ_b δ_b·E_new_b, on the best implementation.

  The choice is made per platform the program is lowered for (``jax.lax.platform_dependent``):
  XLA on CPU, the compiled Pallas kernel on GPU and TPU (XLA for float64 on TPU, and where the
  kernel cannot serve the shape, with a warning).

  Args:
    E: traces at τ−1, [B, d, P].
    M: transitions, [B, d, d].
    G: new parameter Jacobians ∂ĝ/∂θ, [B, d, P].
    delta: TD errors, [B, d].
    c: the decay γλ, a scalar (possibly traced).
    impl: 'xla' to force XLA everywhere; 'pallas' to force the kernel (interpreted on CPU);
      None: the automatic choice above.
    backend: a platform name ('cpu', 'gpu', 'cuda', 'rocm', 'tpu') whose choice is used whatever
      the program is lowered for; None: chosen at lowering.
    block_p: tile width for the Pallas path (see :func:`trace_step_pallas`).

  Returns:
    (E_new [B, d, P], inc [P]).
  """
  return _dense(E, M, G, delta, c, impl=impl, interpret=None, backend=backend, block_p=block_p)


def trace_step_diag(E: Array, M: Array, z: Array, delta: Array, c: Any, *,
                    impl: Optional[str] = None, backend: Optional[str] = None,
                    block_p: int = DEFAULT_BLOCK_P) -> tuple[Array, Array]:
  """The linear-synthesiser trace step (see :func:`trace_step_diag_reference`), auto-selected.

  Args:
    E: traces of W at τ−1, [B, d, d, n].
    M: transitions, [B, d, d].
    z: the synthesiser input at which ∂ĝ/∂W is taken, [B, n].
    delta: TD errors, [B, d].
    c: the decay γλ, a scalar (possibly traced).
    impl, backend, block_p: as in :func:`trace_step`.

  Returns:
    (E_new [B, d, d, n], inc [d, n]).
  """
  return _diag(E, M, z, delta, c, impl=impl, interpret=None, backend=backend, block_p=block_p)
