"""Fused structured trace step: BP(λ)'s online trace when the transition M is unit-block-diagonal.

With a linear synthesiser ĝ(z) = W z + β (W [d, n]) the increment ∂ĝ_o/∂W_ij = 1[o = i]·a_j is
diagonal in (o, i) (a = [z; 1] carries β as a last column), and the online trace follows

    E_τ = c·M·E_{τ−1} + D(a_τ),        inc_τ = (1/B)·Σ_b δ_b·E_τ            (c = γλ).

When M is block-diagonal over U units of k components each (M[(u, c), (u', x)] = 0 for u ≠ u';
k = 1 is a diagonal M), E stays block-diagonal in (o, i) for ever, so only the blocks
E[(u, c), (u, c'), j] are kept: k²·U·n instead of d²·n entries per example (d = k·U). Indexing a
unit's components by c, the step is, for every unit u and column j,

    E_new[c, c'] = c·Σ_x M[c, x]·E[x, c'] + 1[c = c']·a_j,  inc[c'] = (1/B)·Σ_b Σ_c δ_c·E_new[c, c']

(the unit index u and the column j are implicit; M[c, x] = M[(u, c), (u, x)]). Inside a block
further entries vanish when M has structural zeros (a :class:`BlockPattern`): E[c, c'] is non-zero
only if c is reachable from c' through M's pattern, and a row c that M never reads (column c of
every block is zero, e.g. the hidden output h = φ(x) of a recurrent unit whose state is x) is not
needed for the next step, so it is not stored: its entries are recomputed from the stored rows
for the increment. A diagonal M has one stored pair; an LSTM column's full 2×2 block has four; a
unit whose output is an element-wise function of its own linear state (h = φ(x)) has one.

Layouts (batch first, then the stored pairs, then units, then columns):

    E [B, S, U, P]    S = len(pattern.stored) pairs (c, c'), P = n (+1 with β)
    M [B, k, k, U]    M[b, c, x, u] = M_b[(u, c), (u, x)]
    δ [B, k, U]       δ by component;   a [B, P];   inc [k, U, P] (row c' of every unit)

Three implementations of the same maths, as for :mod:`bplambda_jax.kernels._trace_step`:

* :func:`structured_step_reference`: the full k×k blocks in pure ``jnp`` (the oracle): the stored
  pairs are scattered into [B, k, k, U, P], updated by one einsum, read back.
* :func:`structured_step_xla`: only the pattern's pairs, as static element-wise products, the
  batch sum unrolled into additions for small B (XLA on CPU reduces a leading axis slowly).
* :func:`structured_step_pallas`: the fused Pallas kernel; ``interpret=True`` runs it on CPU.
* :func:`structured_step`: picks one per platform the program is lowered for (Pallas on GPU/TPU,
  XLA on CPU) or as forced.

Tiling of the kernel (every program is independent: a parallel grid on GPU and TPU alike): the
grid is (⌈U/block_u⌉, ⌈P/block_p⌉); program (i, j) holds the whole batch and every stored pair
of a [block_u, block_p] tile, E [B, S, block_u, block_p], reads it once, writes the new tile and
the tile's increment (the batch sum is done in the program, so no cross-program accumulation is
needed). The factor c is folded into M before the call (O(B·k²·U)). Tiles are chosen per platform
(:func:`_tiles`). GPU (Triton): block sizes are powers of two, so B, S and k are padded to powers
of two, and the unit and column tiles shrink until a [B', bu, bp] value fits a program's
registers (a batch over 128 runs the XLA path there, with a warning). TPU (Mosaic): B, S and k
stay as they are, unit tiles are multiples of 8 sublanes and column tiles of 128 lanes. U and P
are padded to whole tiles only when they are not already, and the caller can store P padded
(:func:`padded_columns`) so that the large trace is never copied to be padded.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from bplambda_jax import _validation
from bplambda_jax.kernels import _platform
from bplambda_jax.kernels._platform import IMPLS, check_impl, check_interpret, dispatch

DEFAULT_BLOCK_P = 128
DEFAULT_BLOCK_U = 8
_PRECISION = jax.lax.Precision.HIGHEST

Array = jax.Array


class BlockPattern(NamedTuple):
  """The static structure of a block trace (hashable: it selects the compiled program).

  Attributes:
    m: M's pattern inside a block, k rows of k bools (``m[c][x]``: M[(u, c), (u, x)] may be
      non-zero).
    live: the pairs (c, c') where E may be non-zero, sorted.
    stored: the live pairs whose row c is read by M (the trace keeps these), sorted.
  """

  m: tuple
  live: tuple
  stored: tuple

  @property
  def k(self) -> int:
    return len(self.m)


def block_pattern(m: Sequence[Sequence[bool]]) -> BlockPattern:
  """The :class:`BlockPattern` of a trace whose transition blocks have the pattern ``m`` [k, k].

  live = the closure of the diagonal {(c, c)} under E ↦ M·E (pair (c, c') is live when some
  x with M[c, x] ≠ 0 has (x, c') live); stored = the live pairs whose row c is a column M reads.
  ``block_pattern([[True]])`` is the diagonal trace.
  """
  rows = tuple(tuple(bool(v) for v in row) for row in m)
  k = len(rows)
  if k < 1 or any(len(row) != k for row in rows):
    raise ValueError(f"m must be a non-empty square pattern [k, k] of bools, got {m!r}.")
  live = {(c, c) for c in range(k)}
  while True:
    more = {(c, y) for (x, y) in live for c in range(k) if rows[c][x]} - live
    if not more:
      break
    live |= more
  read = {x for x in range(k) if any(rows[c][x] for c in range(k))}
  return BlockPattern(rows, tuple(sorted(live)), tuple(sorted(p for p in live if p[0] in read)))


DIAGONAL = block_pattern([[True]])


def padded_columns(P: int, impl: str, block_p: int = DEFAULT_BLOCK_P) -> int:
  """The column count to store a trace with P columns in, so that ``impl`` never pads it.

  'xla': P. 'pallas': P rounded up to a whole number of tiles (zero columns stay zero: a is
  padded with zeros).
  """
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {list(IMPLS)}, got {impl!r}.")
  if impl == "xla":
    return P
  bp = min(block_p, pl.next_power_of_2(P))
  return pl.cdiv(P, bp) * bp


# --------------------------------------------------------------------------------- validation
def _check(E, M, a, delta, c, pattern):
  if not isinstance(pattern, BlockPattern):
    raise ValueError(f"pattern must be a BlockPattern (see block_pattern), got "
                     f"{type(pattern).__name__}.")
  E, M, a, delta = (jnp.asarray(v) for v in (E, M, a, delta))
  S, k = len(pattern.stored), pattern.k
  if E.ndim != 4 or E.shape[1] != S:
    raise ValueError(f"E must have shape [B, S, U, P] with S = {S} stored pairs, got shape "
                     f"{E.shape}.")
  B, _, U, P = E.shape
  for name, v, shape in (("M", M, (B, k, k, U)), ("a", a, (B, P)), ("delta", delta, (B, k, U))):
    if v.shape != shape:
      raise ValueError(f"{name} must have shape {shape} to match E {E.shape} and k = {k}, got "
                       f"shape {v.shape}.")
  if jnp.ndim(c) != 0:
    raise ValueError(f"c must be a scalar (python number or 0-d array), got shape {jnp.shape(c)}.")
  dtype = jnp.result_type(E, M, a, delta)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"structured_step needs floating-point inputs, got result dtype {dtype}.")
  return tuple(v.astype(dtype) for v in (E, M, a, delta)) + (dtype,)


# --------------------------------------------------------------------------------- reference
def structured_step_reference(E: Array, M: Array, a: Array, delta: Array, c: Any,
                              pattern: BlockPattern) -> tuple[Array, Array]:
  """The structured trace step on full k×k blocks in pure ``jnp`` (the oracle).

  E_full[b, c, c', u, j] holds the stored pairs (zero elsewhere);
  E_new = c·M·E_full + 1[c = c']·a, inc = (1/B)·Σ_b Σ_c δ_c·E_new[c, c'].

  Args:
    E: the stored pairs at τ−1, [B, S, U, P].
    M: transition blocks M_{τ−1}, [B, k, k, U].
    a: the new inputs (the synthesiser's [z_{τ−1}; 1]), [B, P].
    delta: TD errors δ_τ by component, [B, k, U].
    c: the decay γλ, a scalar (possibly traced).
    pattern: the :class:`BlockPattern` (S = len(pattern.stored)).

  Returns:
    (E_new [B, S, U, P], inc [k, U, P]).
  """
  E, M, a, delta, dtype = _check(E, M, a, delta, c, pattern)
  B, _, U, P = E.shape
  k = pattern.k
  full = jnp.zeros((B, k, k, U, P), dtype)
  for s, (r, y) in enumerate(pattern.stored):
    full = full.at[:, r, y].set(E[:, s])
  eye = jnp.eye(k, dtype=dtype)[None, :, :, None, None]
  new = (jnp.asarray(c, dtype) * jnp.einsum("bcxu,bxyuj->bcyuj", M, full, precision=_PRECISION)
         + eye * a[:, None, None, None, :])  # [B, k, k, U, P]
  inc = jnp.einsum("bcu,bcyuj->yuj", delta, new, precision=_PRECISION) / B  # [k, U, P]
  stored = jnp.stack([new[:, r, y] for r, y in pattern.stored], axis=1) if pattern.stored else (
      jnp.zeros((B, 0, U, P), dtype))
  return stored.astype(dtype), inc.astype(dtype)


# --------------------------------------------------------------------------------- the plan
def _plan_new(pattern: BlockPattern, load_m, load_e, a, shape):
  """The new live pairs {(c, c'): value or None (zero)} from static loads (shared by both paths).

  ``load_m(c, x)`` gives c·M[c, x] and ``load_e(s)`` stored pair s, broadcastable to ``shape``.
  """
  where = {p: s for s, p in enumerate(pattern.stored)}
  new = {}
  for r, y in pattern.live:
    acc = None
    for x in range(pattern.k):
      if pattern.m[r][x] and (x, y) in where:
        term = load_m(r, x) * load_e(where[(x, y)])
        acc = term if acc is None else acc + term
    if r == y:
      acc = jnp.broadcast_to(a, shape) if acc is None else acc + a
    new[(r, y)] = acc
  return new


def _plan_inc(pattern: BlockPattern, new, load_delta, y):
  """Σ_c δ_c·E_new[c, y] per example (summed over the batch by the caller), or None."""
  acc = None
  for r in range(pattern.k):
    v = new.get((r, y))
    if v is not None:
      term = load_delta(r) * v
      acc = term if acc is None else acc + term
  return acc


_UNROLL_BATCH = 16


def _batch_sum(v):
  """Σ_b v[b]: B − 1 fused additions for small B (XLA:CPU reduces a leading axis about 2.5×
  slower at B = 8), a reduction otherwise."""
  if v.shape[0] > _UNROLL_BATCH:
    return jnp.sum(v, axis=0)
  out = v[0]
  for b in range(1, v.shape[0]):
    out = out + v[b]
  return out


def structured_step_xla(E: Array, M: Array, a: Array, delta: Array, c: Any,
                        pattern: BlockPattern) -> tuple[Array, Array]:
  """:func:`structured_step_reference`'s maths on the pattern's pairs only, for XLA.

  Args and returns as in :func:`structured_step_reference`.
  """
  E, M, a, delta, dtype = _check(E, M, a, delta, c, pattern)
  B, S, U, P = E.shape
  Mc = jnp.asarray(c, dtype) * M
  shape = (B, U, P)
  new = _plan_new(pattern, lambda r, x: Mc[:, r, x, :, None], lambda s: E[:, s],
                  a[:, None, :], shape)
  zero = jnp.zeros(shape, dtype)
  stored = [zero if new[p] is None else new[p] for p in pattern.stored]
  E_new = jnp.stack(stored, axis=1) if stored else jnp.zeros((B, 0, U, P), dtype)
  incs = []
  for y in range(pattern.k):
    v = _plan_inc(pattern, new, lambda r: delta[:, r, :, None], y)
    incs.append(jnp.zeros((U, P), dtype) if v is None else _batch_sum(v) / B)
  return E_new.astype(dtype), jnp.stack(incs).astype(dtype)


# --------------------------------------------------------------------------------- the kernel
def _kernel(m_ref, dl_ref, a_ref, e_ref, e_out_ref, inc_ref, *, pattern):
  # m: [B', k', k', bu, 1] (scaled by c); dl: [B', k', bu, 1]; a: [B', 1, bp];
  # e, e_out: [B', S', bu, bp]; inc: [k', bu, bp]. Primes are the padded sizes.
  Bp, Sp, bu, bp = e_ref.shape
  shape = (Bp, bu, bp)
  dtype = e_out_ref.dtype
  new = _plan_new(pattern, lambda r, x: m_ref[:, r, x, :, :], lambda s: e_ref[:, s, :, :],
                  a_ref[...], shape)
  zero = jnp.zeros(shape, dtype)
  for s in range(Sp):
    v = new[pattern.stored[s]] if s < len(pattern.stored) else None
    e_out_ref[:, s, :, :] = (zero if v is None else v).astype(dtype)
  for y in range(inc_ref.shape[0]):
    v = _plan_inc(pattern, new, lambda r: dl_ref[:, r, :, :], y) if y < pattern.k else None
    inc_ref[y, :, :] = (jnp.zeros((bu, bp), dtype) if v is None else
                        jnp.sum(v, axis=0)).astype(inc_ref.dtype)


def _pad_to(v, shape):
  widths = [(0, t - s) for s, t in zip(v.shape, shape)]
  return jnp.pad(v, widths) if any(w for _, w in widths) else v


class _Tiles(NamedTuple):
  """How one launch is tiled (hashable). platform: 'interpret' or the compiled platform; the
  padded batch, pair and component counts; the unit and column tiles and the padded U and P."""

  platform: str
  Bp: int
  Sp: int
  kp: int
  bu: int
  bp: int
  Up: int
  Pp: int


# GPU (Triton): a program keeps a few [B', bu, bp] values in registers; ≤ 4096 floats each is
# ≤ 32 registers a thread per value with 4 warps.
_GPU_TILE = 4096
_GPU_MIN_BP = 32  # 128-byte rows: coalesced reads


def _tiles(platform, B, S, k, U, P, block_u, block_p, itemsize):
  """(_Tiles, '') for ``platform``, or (None, why) when the kernel cannot serve the shape there.

  Interpreter and GPU: B, S and k padded to powers of two (Triton's blocks must be), tiles of
  block_u units and block_p columns (at most U and P rounded up to powers of two); on GPU the
  tile shrinks until a [B', bu, bp] value fits :data:`_GPU_TILE`. TPU: B, S and k as they are (the
  leading axes of a block are free), unit tiles a multiple of 8 sublanes and column tiles of 128
  lanes unless one tile covers the axis, the double-buffered blocks within the scoped VMEM.
  """
  p2 = pl.next_power_of_2
  if platform == "tpu":
    if itemsize > 4:
      return None, "TPUs have no 64-bit floats"
    Bp, Sp, kp = B, S, k
    bu = U if U <= max(block_u, 8) else max(block_u, 8)
    lanes = _platform.TPU_LANES
    bp = P if P <= max(block_p, lanes) else max(block_p, lanes)
    vmem = 2 * itemsize * (B * k * (k + 1) * bu * lanes + 8 * B * bp
                           + 2 * B * S * bu * bp + k * bu * bp)
    if vmem > _platform.TPU_VMEM:
      return None, f"its blocks need {vmem} bytes of VMEM > {_platform.TPU_VMEM}"
  else:
    Bp, Sp, kp = p2(B), p2(max(S, 1)), p2(k)
    bu, bp = min(block_u, p2(U)), min(block_p, p2(P))
    if platform in _platform.GPU_PLATFORMS:
      while Bp * bu * bp > _GPU_TILE and bu > 1:
        bu //= 2
      while Bp * bu * bp > _GPU_TILE and bp > _GPU_MIN_BP:
        bp //= 2
      if Bp * bu * bp > _GPU_TILE:
        return None, (f"the batch B = {B} pads to {Bp}: a [B', 1, {bp}] tile exceeds "
                      f"{_GPU_TILE} floats of registers")
  return _Tiles(_platform.tile_platform(platform), Bp, Sp, kp, bu, bp, pl.cdiv(U, bu) * bu,
                pl.cdiv(P, bp) * bp), ""


@functools.partial(jax.jit, static_argnames=("pattern", "tiles"))
def _run(Mc, E, a, delta, *, pattern, tiles):
  return _run_fused(Mc, E, a, delta, pattern, tiles)


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5))
def _run_fused(Mc, E, a, delta, pattern, tiles):
  B, S, U, P = E.shape
  k = pattern.k
  Bp, Sp, kp, bu, bp, Up, Pp = tiles[1:]
  dtype = E.dtype
  E_p = _pad_to(E, (Bp, Sp, Up, Pp))
  M_p = _pad_to(Mc, (Bp, kp, kp, Up))[..., None]  # [B', k', k', U', 1]
  dl_p = _pad_to(delta, (Bp, kp, Up))[..., None]  # [B', k', U', 1]
  a_p = _pad_to(a, (Bp, Pp))[:, None, :]  # [B', 1, P']
  interpret = tiles.platform == "interpret"
  params = None if interpret or tiles.platform == "cpu" else _platform.compiler_params(
      tiles.platform)
  E_new, inc = pl.pallas_call(
      functools.partial(_kernel, pattern=pattern),
      out_shape=(jax.ShapeDtypeStruct((Bp, Sp, Up, Pp), dtype),
                 jax.ShapeDtypeStruct((kp, Up, Pp), dtype)),
      grid=(Up // bu, Pp // bp),
      in_specs=[
          pl.BlockSpec((Bp, kp, kp, bu, 1), lambda i, j: (0, 0, 0, i, 0)),
          pl.BlockSpec((Bp, kp, bu, 1), lambda i, j: (0, 0, i, 0)),
          pl.BlockSpec((Bp, 1, bp), lambda i, j: (0, 0, j)),
          pl.BlockSpec((Bp, Sp, bu, bp), lambda i, j: (0, 0, i, j)),
      ],
      out_specs=(
          pl.BlockSpec((Bp, Sp, bu, bp), lambda i, j: (0, 0, i, j)),
          pl.BlockSpec((kp, bu, bp), lambda i, j: (0, i, j)),
      ),
      interpret=interpret,
      compiler_params=params,
      name="bplambda_structured_step",
  )(M_p, dl_p, a_p, E_p)
  if (Bp, Sp, Up, Pp) != (B, S, U, P):
    E_new = E_new[:B, :S, :U, :P]
  return E_new, (inc[:k, :U, :P] / B).astype(dtype)


@_run_fused.defjvp
def _run_fused_jvp(pattern, tiles, primals, tangents):
  # The step is bilinear: the tangent of the jnp formula is linear in the input tangents, so JAX
  # can transpose it (reverse mode); the primal still comes from the kernel.
  out = _run_fused(*primals, pattern, tiles)
  _, out_dot = jax.jvp(lambda m, e, a, d: structured_step_xla(e, m, a, d, 1.0, pattern), primals,
                       tangents)
  return out, out_dot


def _check_block(name, value):
  if _validation.integer(name, value, minimum=1, what="a positive power of two") & (value - 1):
    raise ValueError(f"{name} must be a positive power of two, got {value!r}.")


def _step(E, M, a, delta, c, pattern, *, impl, interpret, backend, block_u, block_p):
  E, M, a, delta, dtype = _check(E, M, a, delta, c, pattern)
  check_impl(impl)
  check_interpret(interpret)
  _check_block("block_u", block_u)
  _check_block("block_p", block_p)
  if not pattern.stored:  # nothing is traced: the increment is δ ⊗ a alone
    impl = "xla"
  Mc = (jnp.asarray(c, dtype) * M).astype(dtype)
  B, S, U, P = E.shape
  plan = lambda p: _tiles(p, B, S, pattern.k, U, P, block_u, block_p, jnp.dtype(dtype).itemsize)
  xla = lambda Mc, E, a, dl: structured_step_xla(E, Mc, a, dl, 1.0, pattern)
  pallas = lambda Mc, E, a, dl, tiles: _run(Mc, E, a, dl, pattern=pattern, tiles=tiles)
  return dispatch("structured_step", xla, pallas, (Mc, E, a, delta), (B, S, pattern.k, U, P),
                  plan, impl=impl, interpret=interpret, backend=backend)


def structured_step_pallas(E: Array, M: Array, a: Array, delta: Array, c: Any,
                           pattern: BlockPattern, *, interpret: Optional[bool] = None,
                           block_u: int = DEFAULT_BLOCK_U,
                           block_p: int = DEFAULT_BLOCK_P) -> tuple[Array, Array]:
  """The structured trace step as one fused Pallas kernel (maths of the reference).

  Differentiable in forward and reverse mode through the jnp formula. On GPU the kernel is
  compiled with Triton, on TPU with Mosaic, each with its own tiles; a shape it cannot serve there
  (on GPU: a batch over 128 examples) runs the XLA path instead, with a warning.

  Args:
    E, M, a, delta, c, pattern: as in :func:`structured_step_reference`.
    interpret: as in :func:`~bplambda_jax.internals.trace_step_pallas` (None: the interpreter when
      lowered for CPU, the compiled kernel otherwise).
    block_u: units per tile, a power of two (at least 8 on TPU, smaller on GPU for large batches).
    block_p: columns per tile, a power of two (at least 128 on TPU); smaller U or P use one
      tile of their size rounded up to a power of two.

  Returns:
    (E_new [B, S, U, P], inc [k, U, P]).
  """
  return _step(E, M, a, delta, c, pattern, impl="pallas", interpret=interpret, backend=None,
               block_u=block_u, block_p=block_p)


def structured_step(E: Array, M: Array, a: Array, delta: Array, c: Any, pattern: BlockPattern,
                    *, impl: Optional[str] = None, backend: Optional[str] = None,
                    block_u: int = DEFAULT_BLOCK_U,
                    block_p: int = DEFAULT_BLOCK_P) -> tuple[Array, Array]:
  """The structured trace step on the best implementation (see the module docstring).

  Args:
    E, M, a, delta, c, pattern: as in :func:`structured_step_reference`.
    impl: 'xla' or 'pallas' to force one; None: chosen per platform the program is lowered for
      (as :func:`~bplambda_jax.kernels.trace_step`: XLA on CPU, the kernel on GPU/TPU).
    backend: a platform name whose choice is used whatever the lowering platform; None: chosen
      at lowering.
    block_u, block_p: tile sizes of the Pallas path (see :func:`structured_step_pallas`).

  Returns:
    (E_new [B, S, U, P], inc [k, U, P]).
  """
  return _step(E, M, a, delta, c, pattern, impl=impl, interpret=None, backend=backend,
               block_u=block_u, block_p=block_p)
