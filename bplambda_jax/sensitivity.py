"""Sensitivities: how each recurrent parameter influences the current state.

This is the first axis of credit assignment (``design.md``). A rule's gradient estimate at step t
is a learning signal ``ls_t`` (a row vector over the state s_t) contracted with the influence
Z_t = ds_t/dΨ or an approximation of it:

    Z_t = A_t·Z_{t−1} + Ī_t,      gradient += ls_t·Z_t

where Ī_t = ∂s_t/∂Ψ with s_{t−1} fixed, J_t = D_t + X_t is the state Jacobian split into its
implicit (within-unit) and explicit (cross-unit) parts (see :mod:`bplambda_jax.cells`), and A_t
is the rule's propagator:

====================  ==================================  =========================================
sensitivity           A_t                                 meaning
====================  ==================================  =========================================
``immediate``         0                                   one-step credit only
``eprop``             D_t                                 e-prop eligibility traces (Bellec et al.)
``eprop_m<m>``        D_t, plus X_t up to m times         m-order e-prop (Martín-Sánchez et al.)
``snap<n>``           J_t, Z masked to a fixed pattern    SnAp-n (Menick et al. 2021)
``columnar_rtrl``     unit-block diagonal of J_t          columnar RTRL (Javed et al. 2021)
``rtrl``              J_t                                 exact RTRL (Williams & Zipser 1989)
====================  ==================================  =========================================

Names: :func:`get_sensitivity` accepts the registry names (``SENSITIVITIES``: 'immediate',
'eprop', 'rtrl', 'columnar_rtrl', 'snap1', 'snap2') and the parametrised forms ``'snap<n>'``
(n ≥ 1, e.g. 'snap3') and ``'eprop_m<m>'`` (m ≥ 0, e.g. 'eprop_m2'); the factories
:func:`snap` and :func:`eprop_m` take n and m as arguments.

A :class:`Sensitivity` is per example (vmap over the batch)::

    state = sens.init(params)                              # Z_{-1}
    state = sens.update(params, state, s_tm1, x_t)         # Z_t
    g = sens.credit(params, state, s_tm1, x_t, ls_t)       # ls_t·Z_t, a pytree like params

**Reverse (sequence) form.** With the parameters fixed within a sequence, Σ_t ls_t·Z_t can be
computed backwards with vector–Jacobian products only. ``adjoint(params, s_tm1, x_t, a_t) =
a_t·A_t`` ([n] -> [n]) gives Σ_t ls_t·Z_t = Σ_t a_t·Ī_t with a_t = ls_t + adjoint_{t+1}(a_{t+1});
it is None when A_t = 0 or when no such form exists. ``reverse`` generalises it to a stacked
co-state a_t [copies, n] (needed by m-order e-prop, whose influence is a stack of m+1 traces):
a_t = 1⊗ls_t + reverse.propagate(params, s_t, x_{t+1}, a_{t+1}) and Σ_t ls_t·Z_t = Σ_t a_t[0]·Ī_t;
:func:`reverse_form` returns it for any sensitivity (derived from ``adjoint`` when only that is
given). SnAp has no reverse form: its mask acts entry-wise on Z, not on the rows a co-state sees.

**Dense and compressed traces.** Dense traces store Z as a pytree of leaves [n, *P] (O(n·P) memory
per example); they are the reference implementation of every recursion here. When A_t is
unit-block-diagonal (e-prop, columnar RTRL, SnAp-1) and every parameter entry feeds one unit
(``Cell.unit_of_state``, ``Cell.param_units``), Z is non-zero only on the k state entries of the
unit a parameter entry feeds, so a *compressed* trace stores leaves [k, *P] (O(k·P)): row c of a
leaf holds ∂s_{(u(p), c)}/∂p, the influence of entry p on component c of its own unit u(p). The
k×k blocks of A_t come from k jvps with tangents that put 1 at component c of every unit, and the
compressed Ī_t from k vjps with the same vectors as cotangents — no n×P Jacobian is formed. Credit
gathers ls by unit for every parameter entry. ``eprop``, ``snap(cell, 1)`` and ``columnar_rtrl``
use the compressed form whenever the cell declares its units (``compressed=None``); pass
``compressed=False`` for the dense form or ``compressed=True`` to insist on the compressed one.
The compressed traces trust the cell's declaration (D_t unit-block-diagonal, each parameter entry
feeding only its unit); :func:`check_unit_structure` verifies it at random points for a new cell
(the library cells satisfy it, and the tests compare every compressed trace with its dense form).
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from bplambda_jax import cells as cells_lib

Params = Any

# Structural sparsity (SnAp patterns, unit-structure checks) is read off Jacobians evaluated at a
# few random points and OR-ed together. An entry that vanishes at every probe is treated as
# structurally zero; with piecewise-linear activations (relu) a unit that is inactive at every
# probe would be misread, which three independent probes make unlikely but not impossible.
_PROBES = 3


class Reverse(NamedTuple):
  """The reverse (sequence) form of a sensitivity, with a stacked co-state a [copies, n].

  With a_t = 1⊗ls_t + propagate(params, s_t, x_{t+1}, a_{t+1}) (a_{T−1} = 1⊗ls_{T−1}), the
  credit of a sequence is Σ_t ls_t·Z_t = Σ_t a_t[0]·Ī_t, one vjp of the step per t.

  Attributes:
    copies: number of stacked co-state rows (1 for single traces, m+1 for m-order e-prop).
    propagate: ``propagate(params, s_tm1 [n], x_t, a [copies, n]) -> a·A_t [copies, n]``.
    prepare, apply: optionally the same map split in two, ``prepare(params, s_tm1, x_t) -> ctx``
      and ``apply(ctx, a) -> a·A_t``, so that :func:`costates` can evaluate every ctx in parallel
      over (t, b) before the (sequential) reverse scan, which then only applies them.
  """

  copies: int
  propagate: Callable[..., jax.Array]
  prepare: Optional[Callable[..., Any]] = None
  apply: Optional[Callable[..., jax.Array]] = None


def previous_states(states):
  """s_{t−1} for t = 0..T−1 (s_{−1} = 0): states [T, B, n] shifted by one step."""
  return jnp.concatenate([jnp.zeros_like(states[:1]), states[:-1]])


def sequence_credit(sens: "Sensitivity", cell: cells_lib.Cell, params, ls, states, xs):
  """Σ_{t,b} ls_{t,b}·Z_{t,b} of a whole sequence by the reverse form (batch-summed, like params).

  The co-states a_t (:func:`costates`; a_t = ls_t for the immediate sensitivity, whose A_t = 0),
  then Σ_t a_t·Ī_t as one vjp of the step over every (t, b).

  Args:
    sens: a sensitivity with a reverse form (see :func:`reverse_form`).
    cell: its cell.
    params: the cell parameters.
    ls: learning signals [T, B, n].
    states: s_t [T, B, n].
    xs: inputs x_t [T, B, D_in].
  """
  a = ls
  if sens.name != "immediate":
    rev = reverse_form(sens)
    if rev is None:
      raise ValueError(f"sensitivity {sens.name!r} has no reverse form; use the online mode.")
    a = costates(rev, params, ls, states, xs)
  step_tb = jax.vmap(jax.vmap(cell.step, in_axes=(None, 0, 0)), in_axes=(None, 0, 0))
  s_prev = previous_states(states)
  return jax.vjp(lambda q: step_tb(q, s_prev, xs), params)[1](a)[0]


def costates(rev: "Reverse", params, ls, states, xs):
  """The reverse-form co-states a_t[0] of a sequence, [T, B, n].

  a_{T−1} = 1⊗ls_{T−1} and a_t = 1⊗ls_t + a_{t+1}·A_{t+1}, with A_{t+1} evaluated at (s_t, x_{t+1});
  then Σ_t ls_t·Z_t = Σ_t a_t[0]·Ī_t.

  Args:
    rev: the sensitivity's :class:`Reverse` form.
    params: the cell parameters.
    ls: learning signals [T, B, n].
    states: s_t [T, B, n].
    xs: inputs x_t [T, B, D_in].
  """
  B, n = ls.shape[1:]
  lift = lambda v: jnp.broadcast_to(v[:, None, :], (B, rev.copies, n))  # [B, copies, n]
  if rev.prepare is not None:
    tb = lambda f: jax.vmap(jax.vmap(f, in_axes=(None, 0, 0)), in_axes=(None, 0, 0))
    # A_t at (s_{t−1}, x_t) for every (t, b) in parallel, the same operands as the rules' other
    # per-step passes (so XLA can share their work); A_{t+1} is then entry t + 1.
    ctx = jax.tree.map(lambda c: c[1:], tb(rev.prepare)(params, previous_states(states), xs))
    step = jax.vmap(rev.apply)
  else:
    ctx = (states[:-1], xs[1:])
    step = lambda c, a: jax.vmap(rev.propagate, in_axes=(None, 0, 0, 0))(params, *c, a)

  def back(a_next, inp):
    ls_t, c = inp
    a_t = lift(ls_t) + step(c, a_next)
    return a_t, a_t[:, 0]

  a_last = lift(ls[-1])
  _, a_rest = jax.lax.scan(back, a_last, (ls[:-1], ctx), reverse=True)
  return jnp.concatenate([a_rest, a_last[None, :, 0]])


class Sensitivity(NamedTuple):
  """Influence of the recurrent parameters on the state (per example).

  Attributes:
    name: 'immediate', 'eprop', 'rtrl', 'snap2', 'columnar_rtrl', 'eprop_m1', ...
    init: ``init(params) -> state``.
    update: ``update(params, state, s_tm1 [n], x_t [D_in]) -> state`` (now describing s_t).
    credit: ``credit(params, state, s_tm1, x_t, ls_t [n]) -> grads`` = ls_t·Z_t.
    adjoint: ``adjoint(params, s_tm1, x_t, a_t [n]) -> a_t·A_t [n]`` or None when A_t = 0 or
      when the sensitivity has no single-row reverse form.
    reverse: the general reverse form (:class:`Reverse`) or None; see :func:`reverse_form`.
  """

  name: str
  init: Callable[[Params], Any]
  update: Callable[..., Any]
  credit: Callable[..., Params]
  adjoint: Optional[Callable[..., jax.Array]]
  reverse: Optional[Reverse] = None
  credit_sum: Optional[Callable[..., Params]] = None


# Above this many elements sum_leading uses a product with ones instead of a reduction.
SUM_AS_PRODUCT_MIN_SIZE = 1 << 21


def sum_leading(tree, axes: int = 1):
  """Sum every leaf over its ``axes`` leading axes.

  XLA on CPU reduces the major axis of a large array an order of magnitude slower than it runs
  the same sum as a matrix–vector product with ones (90 ms vs 5 ms for a [200, 4e6] float32 sum
  on the benchmark machine), while for small arrays the reduction is faster (22 vs 46 ms for a
  seqMNIST-sized e-prop update). Leaves with at least ``SUM_AS_PRODUCT_MIN_SIZE`` elements use
  the product, smaller ones the reduction; the numbers agree to rounding.
  """
  def one(g):
    if g.size < SUM_AS_PRODUCT_MIN_SIZE:
      return jnp.sum(g, axis=tuple(range(axes)))
    lead = int(np.prod(g.shape[:axes]))
    ones = jnp.ones((lead,), g.dtype)
    return (ones @ g.reshape(lead, -1)).reshape(g.shape[axes:])

  return jax.tree.map(one, tree)


def batch_credit(sens: "Sensitivity", params, state, s_tm1, x_t, ls_t):
  """Σ_b ls_{t,b}·Z_{t,b} over a batch (leading axis of state, s_tm1 [B, n], x_t, ls_t [B, n]).

  Uses the sensitivity's own ``credit_sum`` when it has one, else vmaps ``credit`` and sums.
  """
  if sens.credit_sum is not None:
    return sens.credit_sum(params, state, s_tm1, x_t, ls_t)
  return sum_leading(jax.vmap(sens.credit, in_axes=(None, 0, 0, 0, 0))(params, state, s_tm1, x_t,
                                                                        ls_t))


def reverse_form(sens: Sensitivity) -> Optional[Reverse]:
  """The :class:`Reverse` form of a sensitivity, or None if it has none.

  Uses ``sens.reverse`` when set, else wraps a single-row ``sens.adjoint`` (copies = 1).
  """
  if sens.reverse is not None:
    return sens.reverse
  if sens.adjoint is not None:
    return _single_row(sens.adjoint)
  return None


def _single_row(adjoint):
  def propagate(params, s_tm1, x_t, a):
    return adjoint(params, s_tm1, x_t, a[0])[None]
  return Reverse(1, propagate)


# ------------------------------------------------------------------------- Jacobian helpers


def immediate_jacobian(cell: cells_lib.Cell, params, s_tm1, x_t):
  """Ī_t = ∂s_t/∂Ψ with s_{t−1} fixed: a pytree like params with leaves [n, *P]."""
  return jax.jacrev(cell.step, argnums=0)(params, s_tm1, x_t)


def immediate_credit(cell: cells_lib.Cell, params, s_tm1, x_t, ls_t):
  """ls_t·Ī_t by one vjp of the step (no Jacobian is formed)."""
  _, vjp = jax.vjp(lambda p: cell.step(p, s_tm1, x_t), params)
  return vjp(ls_t)[0]


def _require_split(cell: cells_lib.Cell, rule: str):
  if cell.split_step is None:
    raise ValueError(
        f"{rule} needs the cell to declare its implicit/explicit split (Cell.split_step); cell "
        f"{cell.name!r} does not. Library cells declare it; for a flax cell pass "
        f"split_step= to from_flax().")


def implicit_jacobian(cell: cells_lib.Cell, params, s_tm1, x_t):
  """D_t = ∂s_t/∂s_imp (the implicit part of J_t), [n, n]."""
  return jax.jacfwd(cell.split_step, argnums=1)(params, s_tm1, s_tm1, x_t)


def explicit_jacobian(cell: cells_lib.Cell, params, s_tm1, x_t):
  """X_t = ∂s_t/∂s_exp (the explicit part of J_t), [n, n]."""
  return jax.jacfwd(cell.split_step, argnums=2)(params, s_tm1, s_tm1, x_t)


def state_jacobian(cell: cells_lib.Cell, params, s_tm1, x_t):
  """J_t = ∂s_t/∂s_{t−1}, [n, n]."""
  return jax.jacfwd(cell.step, argnums=1)(params, s_tm1, x_t)


def contract(ls, z):
  """ls·Z for every leaf: [n] · [n, *P] -> [*P]."""
  return jax.tree.map(lambda zl: jnp.tensordot(ls, zl, axes=1), z)


def _implicit_vjp(cell, params, s_tm1, x_t, a):
  """a·D_t by one vjp of split_step with respect to s_imp, [n]."""
  _, vjp = jax.vjp(lambda si: cell.split_step(params, si, s_tm1, x_t), s_tm1)
  return vjp(a)[0]


def _state_vjp(cell, params, s_tm1, x_t, a):
  """a·J_t by one vjp of the step, [n]."""
  _, vjp = jax.vjp(lambda s: cell.step(params, s, x_t), s_tm1)
  return vjp(a)[0]


# ------------------------------------------------------------------- structure from probes


def _shape_key(*trees):
  leaves, treedef = jax.tree.flatten(trees)
  return treedef, tuple((tuple(l.shape), jnp.dtype(l.dtype).name) for l in leaves)


def _cached(fn):
  """Memoise ``fn(params, x_t)`` on the shapes and dtypes of its arguments (values unused)."""
  cache = {}

  def wrapped(params, x_t):
    key = _shape_key(params, x_t)
    if key not in cache:
      cache[key] = fn(params, x_t)
    return cache[key]

  return wrapped


def _probe_points(params, n, x_t, count=_PROBES):
  """``count`` random concrete points (params, s, x, r, v), stacked on a leading probe axis.

  params, x: the shapes and dtypes of the arguments; s, r, v: random state-shaped vectors [n]
  (r and v serve as cotangent and tangent in the structure checks).
  """
  dtype = jnp.result_type(x_t.dtype, float)
  rng = np.random.default_rng(20240)
  normal = lambda shape, dt: (0.5 * rng.standard_normal((count,) + tuple(shape))).astype(dt)
  p = jax.tree.map(lambda l: normal(l.shape, l.dtype), params)
  return p, normal((n,), dtype), normal(x_t.shape, x_t.dtype), normal((n,), dtype), normal(
      (n,), dtype)


def _run_probes(fn, params, n, x_t):
  """``fn(p, s, x, r, v)`` at every probe point, as numpy arrays with a leading probe axis.

  Evaluated eagerly (``ensure_compile_time_eval``) in one jitted, vmapped call, so it may run
  while an enclosing function is being traced; only shapes of ``params`` and ``x_t`` are used.
  """
  points = _probe_points(params, n, x_t)
  with jax.ensure_compile_time_eval():
    out = jax.jit(jax.vmap(fn))(*points)
  return jax.tree.map(np.asarray, out)


@functools.partial(jax.jit, static_argnums=0)
def _jacobians_at(step, p, s, x):
  """J [n, n] and Ī (pytree of [n, *P]) of ``step`` at one point (compiled once per step fn)."""
  return jax.jacfwd(step, argnums=1)(p, s, x), jax.jacrev(step, argnums=0)(p, s, x)


@functools.partial(jax.jit, static_argnums=0)
def _unit_jacobians_at(step, p, s, x, basis):
  """J [n, n] and the compressed Ī (pytree of [k, *P], k vjps) of ``step`` at one point."""
  _, vjp = jax.vjp(lambda q: step(q, s, x), p)
  return jax.jacfwd(step, argnums=1)(p, s, x), jax.vmap(lambda e: vjp(e)[0])(basis)


def _nonzeros_over_probes(fn, params, n, x_t):
  """Non-zero patterns of ``fn(p, s, x)`` (a pytree), OR-ed over the random probe points."""
  p_all, s_all, x_all, _, _ = _probe_points(params, n, x_t)
  out = None
  with jax.ensure_compile_time_eval():
    for i in range(s_all.shape[0]):
      value = fn(jax.tree.map(lambda l: l[i], p_all), s_all[i], x_all[i])
      nz = jax.tree.map(lambda l: np.asarray(l) != 0, value)
      out = nz if out is None else jax.tree.map(np.logical_or, out, nz)
  return out


def _dense_structure(cell: cells_lib.Cell, params, x_t):
  """Structural non-zeros of J [n, n] and Ī (pytree of [n, *P]), OR-ed over random probes."""
  return _nonzeros_over_probes(lambda p, s, x: _jacobians_at(cell.step, p, s, x), params,
                               cell.state_size, x_t)


def snap_pattern(cell: cells_lib.Cell, params, x_t, n_steps: int):
  """SnAp-n sparsity pattern: entry (i, p) is kept iff p can reach state i within n steps.

  S_1 = nz(Ī), S_{k+1} = S_k ∪ nz(J)·S_k (boolean product), with the non-zero patterns of J and Ī
  read off random probe points. Only shapes of ``params`` and ``x_t`` are used.

  Returns:
    A pytree like params of bool numpy arrays [n, *P].
  """
  nz_j, nz_i = _dense_structure(cell, params, x_t)
  leaves, treedef = jax.tree.flatten(nz_i)
  n = cell.state_size
  flat = np.concatenate([l.reshape(n, -1) for l in leaves], axis=1)  # [n, ΣP]
  reach = flat.copy()
  jf = nz_j.astype(np.float32)
  for _ in range(n_steps - 1):
    reach |= (jf @ reach.astype(np.float32)) > 0  # [n, n]·[n, ΣP]
  out, start = [], 0
  for l in leaves:
    size = int(np.prod(l.shape[1:], dtype=np.int64))
    out.append(reach[:, start:start + size].reshape(l.shape))
    start += size
  return jax.tree.unflatten(treedef, out)


# ----------------------------------------------------------------------------- dense traces


def dense_trace(cell: cells_lib.Cell, name: str,
                propagator: Callable[[Params, jax.Array, jax.Array], jax.Array],
                adjoint: Optional[Callable[..., jax.Array]] = None,
                *, mask: Optional[Callable[[Params, jax.Array], Params]] = None) -> Sensitivity:
  """A sensitivity carrying the dense influence Z [n, *P] with Z_t = M⊙(A_t Z_{t−1} + Ī_t).

  Args:
    cell: the cell.
    name: the sensitivity's name.
    propagator: ``propagator(params, s_tm1, x_t) -> A_t [n, n]``.
    adjoint: ``adjoint(params, s_tm1, x_t, a) -> a·A_t`` for the reverse form, or None. Must be
      None when ``mask`` is given (a mask has no row-wise reverse form).
    mask: optional ``mask(params, x_t) -> pytree of bool [n, *P]`` (a fixed pattern M, e.g. SnAp);
      it may only depend on shapes. None keeps every entry.
  """
  if mask is not None and adjoint is not None:
    raise ValueError("dense_trace: a masked trace has no row-wise adjoint; pass adjoint=None "
                     "with mask=.")

  def init(params):
    n = cell.state_size
    return jax.tree.map(lambda p: jnp.zeros((n,) + p.shape, p.dtype), params)

  def update(params, z, s_tm1, x_t):
    a = propagator(params, s_tm1, x_t)  # [n, n]
    ibar = immediate_jacobian(cell, params, s_tm1, x_t)  # [n, *P]
    new = jax.tree.map(lambda zl, il: (jnp.tensordot(a, zl, axes=1) + il).astype(zl.dtype), z,
                       ibar)  # the trace keeps its dtype (the parameters')
    if mask is not None:
      new = jax.tree.map(lambda zl, ml: jnp.where(ml, zl, 0), new, mask(params, x_t))
    return new

  def credit(params, z, s_tm1, x_t, ls_t):
    del params, s_tm1, x_t
    return contract(ls_t, z)

  reverse = None if adjoint is None else _single_row(adjoint)
  return Sensitivity(name, init, update, credit, adjoint, reverse)


# ------------------------------------------------------------------------ compressed traces


class UnitLayout(NamedTuple):
  """Where the state entries of each unit sit in the flat state s.

  Attributes:
    index: int array [U, k]; ``index[u, c]`` is the position in s of component c of unit u
      (components in the order they appear in s, e.g. (h, c) for an LSTM unit).
  """

  index: np.ndarray

  @property
  def units(self) -> int:
    return int(self.index.shape[0])

  @property
  def width(self) -> int:
    return int(self.index.shape[1])

  @property
  def component_major(self) -> bool:
    """True when s = [component 0 of every unit; component 1 of every unit; ...] (e.g. [h; c])."""
    U, k = self.index.shape
    return bool(np.array_equal(self.index, np.arange(k * U).reshape(k, U).T))

  def gather(self, v):
    """v [..., n] -> [..., U, k] with [u, c] = v[index[u, c]] (a reshape when component-major)."""
    if self.component_major:
      return jnp.swapaxes(v.reshape(v.shape[:-1] + (self.width, self.units)), -1, -2)
    return v[..., self.index]

  def scatter(self, w):
    """The inverse of :meth:`gather`: w [..., U, k] -> v [..., n]."""
    if self.component_major:
      return jnp.swapaxes(w, -1, -2).reshape(w.shape[:-2] + (self.width * self.units,))
    return jnp.zeros(w.shape[:-2] + (self.index.size,), w.dtype).at[..., self.index].set(w)

  def basis(self, n: int, dtype) -> np.ndarray:
    """E [k, n] with E[c] = 1 at component c of every unit (the jvp tangents / vjp cotangents)."""
    e = np.zeros((self.width, n), np.dtype(dtype))
    for c in range(self.width):
      e[c, self.index[:, c]] = 1
    return e


def unit_layout(cell: cells_lib.Cell, what: str) -> UnitLayout:
  """The :class:`UnitLayout` of a cell; ValueError if it declares no (or ragged) units."""
  if cell.unit_of_state is None or cell.param_units is None:
    raise ValueError(
        f"the compressed {what} trace needs the cell to declare its units (Cell.unit_of_state "
        f"and Cell.param_units); cell {cell.name!r} does not. Use compressed=False for the "
        f"dense trace.")
  u = np.asarray(cell.unit_of_state)
  n = cell.state_size
  if u.shape != (n,) or not np.issubdtype(u.dtype, np.integer) or np.any(u < 0):
    raise ValueError(f"cell {cell.name!r}: unit_of_state must be a non-negative int array of "
                     f"shape ({n},), got {u.dtype} {u.shape}.")
  num = int(u.max()) + 1
  counts = np.bincount(u, minlength=num)
  if np.any(counts != counts[0]) or counts[0] == 0:
    raise ValueError(f"the compressed {what} trace needs every unit to own the same number of "
                     f"state entries; cell {cell.name!r} has unit sizes {counts.tolist()}. Use "
                     f"compressed=False.")
  return UnitLayout(np.stack([np.flatnonzero(u == k) for k in range(num)]))


def param_unit_arrays(cell: cells_lib.Cell, params, layout: UnitLayout, what: str):
  """``cell.param_units`` evaluated on the shapes of ``params``: a pytree of int numpy arrays.

  Raises ValueError for a shared entry (unit −1), an out-of-range unit or a shape mismatch.
  """
  shapes = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
  units = cell.param_units(shapes)
  paths, treedef = jax.tree_util.tree_flatten_with_path(params)
  u_leaves, u_treedef = jax.tree.flatten(units)
  if u_treedef != treedef:
    raise ValueError(f"cell {cell.name!r}: param_units must return a pytree like params "
                     f"({treedef}), got {u_treedef}.")
  out = []
  for (path, p), pu in zip(paths, u_leaves):
    pu = np.asarray(pu)
    where = jax.tree_util.keystr(path)
    if pu.shape != tuple(p.shape):
      raise ValueError(f"cell {cell.name!r}: param_units{where} has shape {pu.shape}, expected "
                       f"{tuple(p.shape)}.")
    if np.any(pu < 0):
      raise ValueError(
          f"the compressed {what} trace needs every parameter entry to feed a single unit; "
          f"cell {cell.name!r} has shared entries (unit -1) in params{where}. Use "
          f"compressed=False for the dense trace.")
    if np.any(pu >= layout.units):
      raise ValueError(f"cell {cell.name!r}: param_units{where} names a unit >= "
                       f"{layout.units}, the number of units.")
    out.append(pu.astype(np.int32))
  return jax.tree.unflatten(treedef, out)


def _unit_blocks_jvp(fn, s_tm1, layout: UnitLayout):
  """The k×k diagonal blocks [U, k, k] of ∂fn/∂s, exact when that Jacobian is unit-block-diagonal.

  Column c of every block comes from one jvp whose tangent is 1 at component c of every unit.
  """
  e = layout.basis(s_tm1.shape[0], s_tm1.dtype)  # [k, n]
  cols = jax.vmap(lambda t: jax.jvp(fn, (s_tm1,), (t,))[1])(e)  # [k, n]
  return jnp.transpose(layout.gather(cols), (1, 2, 0))  # [c, U, a] -> [U, a, c]


def _unit_blocks_dense(jac, layout: UnitLayout):
  """The k×k diagonal blocks [U, k, k] of a dense Jacobian [n, n]."""
  idx = layout.index
  return jac[idx[:, :, None], idx[:, None, :]]


def _compressed_ibar(cell, params, s_tm1, x_t, basis):
  """Compressed Ī_t: leaves [k, *P], row c = ∂s_(u(p), c)/∂p, by k vjps of the step."""
  _, vjp = jax.vjp(lambda p: cell.step(p, s_tm1, x_t), params)
  return jax.vmap(lambda e: vjp(e)[0])(basis)


class _Spread(NamedTuple):
  """How a per-unit table reaches the entries of one parameter leaf (static, numpy).

  Attributes:
    units: int array [*P], the unit each entry feeds.
    shape: a view of P in which the unit is one axis, e.g. [4H, D] -> (4, H, D) for gate-major
      rows, or P itself when no such view exists.
    axis: the unit axis in ``shape``, or None (then tables are gathered by ``units``).
  """

  units: np.ndarray
  shape: tuple
  axis: Optional[int]

  def view(self, a, lead: int = 1):
    """[*lead, *P] -> [*lead, *shape] (a free reshape)."""
    return a.reshape(a.shape[:lead] + self.shape)

  def table(self, t):
    """A per-unit table t [*lead, U] as an array broadcastable against [*lead, *shape]."""
    if self.axis is None:
      return t[..., self.units]
    ones = len(self.shape) - self.axis - 1
    return t.reshape(t.shape[:-1] + (1,) * self.axis + (t.shape[-1],) + (1,) * ones)


def _spread_of(pu: np.ndarray, num_units: int) -> _Spread:
  """Find a view of pu's shape where pu is arange(U) broadcast along one axis (no gathers).

  Splits one axis of size m = q·U into (q, U) and checks pu against the broadcast arange; the
  library cells' gate-major weights (rows r feed unit r mod H) and per-unit vectors all qualify.
  Other layouts fall back to a gather by ``pu`` (same numbers, slower on CPU).
  """
  for ax, m in enumerate(pu.shape):
    if m % num_units:
      continue
    shape = pu.shape[:ax] + (m // num_units, num_units) + pu.shape[ax + 1:]
    axis = ax + 1
    ar = np.arange(num_units).reshape((1,) * axis + (num_units,) + (1,) * (len(shape) - axis - 1))
    if np.array_equal(pu.reshape(shape), np.broadcast_to(ar, shape)):
      return _Spread(pu, shape, axis)
  return _Spread(pu, pu.shape, None)


def _gather_ls(ls_t, layout, pu):
  """ls gathered by unit for every parameter entry: [k, *P] with row c = ls_(u(p), c)."""
  lsu = ls_t[layout.index].T  # [U, k] -> [k, U]
  return lsu[:, pu]


def _close(a, b):
  """‖a − b‖ small relative to ‖a‖ + ‖b‖ (numpy arrays or pytrees of them, any float dtype)."""
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  fa = np.concatenate([np.ravel(l).astype(np.float64) for l in la])
  fb = np.concatenate([np.ravel(l).astype(np.float64) for l in lb])
  tol = 1e3 * float(np.finfo(np.result_type(*la)).eps)
  return float(np.linalg.norm(fa - fb)) <= tol * (float(np.linalg.norm(fa) + np.linalg.norm(fb))
                                                  + 1e-30)


def _unit_probe(cell: cells_lib.Cell, params, x_t, layout: UnitLayout, what: str,
                block_fn_of=None, matrix: str = ""):
  """Check a cell's unit structure at random probes (ValueError on failure).

  Checks that every parameter entry influences only the state of the unit ``param_units`` gives
  it (one vjp with a random cotangent, compared with the unit-gathered compressed Ī); and, if
  ``block_fn_of(p, x) -> (s -> s')`` is given, that its Jacobian is unit-block-diagonal (one jvp
  with a random tangent, compared with the k-jvp blocks).
  """
  n = cell.state_size
  pu = param_unit_arrays(cell, params, layout, what)
  basis = layout.basis(n, jnp.result_type(x_t.dtype, float))

  def fn(p, s, x, r, v):
    comp = _compressed_ibar(cell, p, s, x, basis)  # [k, *P]
    out = {"full": immediate_credit(cell, p, s, x, r),
           "via_units": jax.tree.map(
               lambda zl, ul: jnp.sum(_gather_ls(r, layout, ul) * zl, axis=0), comp, pu)}
    if block_fn_of is not None:
      f = block_fn_of(p, x)
      blocks = _unit_blocks_jvp(f, s, layout)  # [U, k, k]
      out["jvp"] = jax.jvp(f, (s,), (v,))[1]
      out["via_blocks"] = jnp.zeros_like(s).at[layout.index].set(
          jnp.einsum("uac,uc->ua", blocks, v[layout.index]))
    return out

  out = _run_probes(fn, params, n, x_t)
  if not _close(out["full"], out["via_units"]):
    raise ValueError(
        f"the compressed {what} trace assumes each parameter entry influences only the state of "
        f"the unit given by Cell.param_units; cell {cell.name!r} violates this. Use "
        f"compressed=False.")
  if block_fn_of is not None and not _close(out["jvp"], out["via_blocks"]):
    raise ValueError(f"the compressed {what} trace needs {matrix} to be unit-block-diagonal; "
                     f"for cell {cell.name!r} it is not. Use compressed=False.")


def compressed_trace(cell: cells_lib.Cell, name: str,
                     blocks: Callable[[Params, jax.Array, jax.Array], jax.Array],
                     *, what: str,
                     adjoint: Optional[Callable[..., jax.Array]] = None,
                     mask: Optional[Callable[[Params, jax.Array], Params]] = None) -> Sensitivity:
  """A unit-local trace: leaves [k, *P] instead of [n, *P] (see the module docstring).

  Zc_t[c, p] = M[c, p]·(Σ_b A_t[(u(p), c), (u(p), b)]·Zc_{t−1}[b, p] + Ī_t[(u(p), c), p]),
  the dense recursion restricted to each parameter entry's own unit, exact when A_t is
  unit-block-diagonal and entries feed one unit each.

  Args:
    cell: a cell declaring ``unit_of_state`` and ``param_units`` (without shared entries).
    name: the sensitivity's name.
    blocks: ``blocks(params, s_tm1, x_t) -> [U, k, k]``, the diagonal blocks of A_t.
    what: the rule's name for error messages.
    adjoint: ``adjoint(params, s_tm1, x_t, a) -> a·A_t`` [n], or None.
    mask: optional ``mask(params, x_t) -> pytree of bool [k, *P]`` (shapes only).
  """
  layout = unit_layout(cell, what)
  k, num_units = layout.width, layout.units

  def spreads_of(params, x_t):  # one _Spread per leaf of params, in leaf order
    pu = param_unit_arrays(cell, params, layout, what)
    return [_spread_of(ul, num_units) for ul in jax.tree.leaves(pu)]

  spreads_of = _cached(spreads_of)

  def init(params):
    param_unit_arrays(cell, params, layout, what)
    return jax.tree.map(lambda p: jnp.zeros((k,) + p.shape, p.dtype), params)

  def update(params, z, s_tm1, x_t):
    bt = jnp.moveaxis(blocks(params, s_tm1, x_t), 0, -1)  # [U, k, k] -> [k, k, U]
    ibar = _compressed_ibar(cell, params, s_tm1, x_t, layout.basis(s_tm1.shape[0], s_tm1.dtype))

    def leaf(zl, il, sp):  # zl, il [k, *P]: new[a] = Σ_b A[(u, a), (u, b)]·zl[b] + il[a]
      zv = sp.view(zl)
      new = sp.view(il) + sum(sp.table(bt[:, b]) * zv[b] for b in range(k))  # [k, *view]
      return new.reshape(zl.shape).astype(zl.dtype)

    z_leaves, treedef = jax.tree.flatten(z)
    new = treedef.unflatten([leaf(zl, il, sp) for zl, il, sp in
                             zip(z_leaves, treedef.flatten_up_to(ibar), spreads_of(params, x_t))])
    if mask is not None:
      new = jax.tree.map(lambda zl, ml: jnp.where(ml, zl, 0), new, mask(params, x_t))
    return new

  def credit(params, z, s_tm1, x_t, ls_t):
    lsu = layout.gather(ls_t).T  # [U, k] -> [k, U]
    z_leaves, treedef = jax.tree.flatten(z)
    return treedef.unflatten([
        jnp.sum(sp.table(lsu) * sp.view(zl), axis=0).reshape(zl.shape[1:])
        for zl, sp in zip(z_leaves, spreads_of(params, x_t))])

  def credit_sum(params, z, s_tm1, x_t, ls_t):  # batched: z leaves [B, k, *P], ls_t [B, n]
    lsu = jnp.swapaxes(layout.gather(ls_t), 1, 2)  # [B, U, k] -> [B, k, U]
    z_leaves, treedef = jax.tree.flatten(z)
    return treedef.unflatten([
        sum_leading(sp.table(lsu) * sp.view(zl, 2), 2).reshape(zl.shape[2:])
        for zl, sp in zip(z_leaves, spreads_of(params, x_t[0]))])

  reverse = None
  if adjoint is not None:  # a·A_t from A_t's diagonal blocks, prepared for all steps at once
    def apply(bl, a):  # bl [U, k, k], a [1, n]: (a·A)[(u, c)] = Σ_b a[(u, b)]·A[(u, b), (u, c)]
      return layout.scatter(jnp.einsum("ub,ubc->uc", layout.gather(a[0]), bl))[None]
    reverse = _single_row(adjoint)._replace(prepare=blocks, apply=apply)
  return Sensitivity(name, init, update, credit, adjoint, reverse, credit_sum)


def _resolve_compressed(cell, compressed, what):
  if compressed not in (None, True, False):
    raise ValueError(f"compressed must be None (automatic), True or False, got {compressed!r}.")
  if compressed is None:
    return cell.unit_of_state is not None and cell.param_units is not None
  if compressed:
    unit_layout(cell, what)
  return compressed


def _implicit_fn_of(cell):
  """(params, x) -> (s -> split_step(params, s, s, x)) differentiable through s_imp only."""

  def fn_of(params, x):
    def fn(s):
      return cell.split_step(params, s, jax.lax.stop_gradient(s), x)
    return fn

  return fn_of


def check_unit_structure(cell: cells_lib.Cell, params, x_t, *, implicit: bool = True) -> None:
  """Verify, at random points, the unit structure the compressed traces rely on.

  Checks that every parameter entry influences only the state of the unit ``Cell.param_units``
  gives it, and (with ``implicit``) that the implicit Jacobian D_t of ``Cell.split_step`` is
  unit-block-diagonal. Run it once for a new cell before using the compressed traces of e-prop,
  SnAp-1 or columnar RTRL. Only the shapes of ``params`` and ``x_t`` are used.

  Args:
    cell: a cell declaring ``unit_of_state`` and ``param_units``.
    params: the cell's parameters (or arrays of the same shapes).
    x_t: an input of the right shape, [D_in].
    implicit: also check D_t (needs ``split_step``).

  Raises:
    ValueError naming the violated assumption.
  """
  layout = unit_layout(cell, "unit-local")
  if implicit:
    _require_split(cell, "check_unit_structure(implicit=True)")
  _unit_probe(cell, params, x_t, layout, "unit-local",
              _implicit_fn_of(cell) if implicit else None, "the implicit Jacobian D_t")


# ---------------------------------------------------------------------------- the family


def immediate(cell: cells_lib.Cell) -> Sensitivity:
  """One-step sensitivity Ī_t (A_t = 0): the reference's 'direct eligibility' (spec §5.1)."""

  def init(params):
    del params
    return ()

  def update(params, state, s_tm1, x_t):
    del params, s_tm1, x_t
    return state

  def credit(params, state, s_tm1, x_t, ls_t):
    del state
    return immediate_credit(cell, params, s_tm1, x_t, ls_t)

  def propagate(params, s_tm1, x_t, a):
    del params, s_tm1, x_t
    return jnp.zeros_like(a)

  return Sensitivity("immediate", init, update, credit, None, Reverse(1, propagate))


def eprop(cell: cells_lib.Cell, compressed: Optional[bool] = None) -> Sensitivity:
  """e-prop eligibility traces: Z⁽⁰⁾_t = D_t Z⁽⁰⁾_{t−1} + Ī_t (Bellec et al. 2020).

  For the LSTM this is exactly spec §5.2: the h-rows of Z are D_t⊙ε^q_t for gates i, f, g and the
  immediate e^o_t for gate o, and the c-rows are ε^q_t (0 for gate o), with
  ε^q_t = f_t⊙ε^q_{t−1} + π^q_t⊗pre_t.

  Args:
    cell: a cell with ``split_step``.
    compressed: None (default) uses the unit-local trace [k, *P] when the cell declares its units
      and the dense trace [n, *P] otherwise; True insists on the compressed trace; False forces
      the dense one. Both give the same numbers.
  """
  _require_split(cell, "eprop")

  def adjoint(params, s_tm1, x_t, a):
    return _implicit_vjp(cell, params, s_tm1, x_t, a)

  if not _resolve_compressed(cell, compressed, "eprop"):
    return dense_trace(cell, "eprop", lambda p, s, x: implicit_jacobian(cell, p, s, x), adjoint)
  layout = unit_layout(cell, "eprop")

  def blocks(params, s_tm1, x_t):
    return _unit_blocks_jvp(lambda si: cell.split_step(params, si, s_tm1, x_t), s_tm1, layout)

  return compressed_trace(cell, "eprop", blocks, what="eprop", adjoint=adjoint)


def rtrl(cell: cells_lib.Cell) -> Sensitivity:
  """Exact RTRL: Z_t = J_t Z_{t−1} + Ī_t (Williams & Zipser 1989). O(n·P) memory, O(n²·P) time."""

  def adjoint(params, s_tm1, x_t, a):
    return _state_vjp(cell, params, s_tm1, x_t, a)

  return dense_trace(cell, "rtrl", lambda p, s, x: state_jacobian(cell, p, s, x), adjoint)


def _check_positive_int(name, value, minimum):
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
  return int(value)


def snap(cell: cells_lib.Cell, n: int = 1, compressed: Optional[bool] = None) -> Sensitivity:
  """SnAp-n (Menick et al. 2021): RTRL with Z restricted to a fixed sparsity pattern.

  Z_t = M⊙(J_t Z_{t−1} + Ī_t), where M keeps entry (i, p) iff parameter p can influence state
  entry i within n steps: S_1 = nz(Ī), S_{k+1} = S_k ∪ nz(J)·S_k, the non-zero patterns read off
  random probe points (:func:`snap_pattern`). Once n reaches the pattern's fill depth (2 for a
  dense RNN) SnAp-n is RTRL; with sparse weights (e.g. a columnar LSTM with sparse connections)
  it stays an approximation. No reverse form (the mask acts entry-wise), so online mode only.

  Args:
    cell: any cell.
    n: the number of steps, ≥ 1. The sensitivity is named ``f'snap{n}'``.
    compressed: only for n = 1, where M lies inside each entry's unit: None (default) uses the
      unit-local trace [k, *P] when the cell declares its units, True insists on it, False
      forces the dense trace. The k×k blocks of J_t come from k jvps when J_t is
      unit-block-diagonal and from the dense J_t (n jvps, O(n²) memory) otherwise. For n ≥ 2
      the pattern leaves the unit and the trace is dense; compressed=True is then an error.
  """
  n = _check_positive_int("n", n, 1)
  name = f"snap{n}"
  if compressed and n != 1:
    raise ValueError(f"snap: the compressed (unit-local) trace exists for n = 1 only; got "
                     f"n={n}. Use compressed=None or False.")
  use_compressed = n == 1 and _resolve_compressed(cell, compressed, name)
  if not use_compressed:
    pattern = _cached(lambda params, x_t: snap_pattern(cell, params, x_t, n))
    return dense_trace(cell, name, lambda p, s, x: state_jacobian(cell, p, s, x), None,
                       mask=pattern)

  layout = unit_layout(cell, name)
  unit = np.asarray(cell.unit_of_state)

  def structure(params, x_t):
    basis = layout.basis(cell.state_size, jnp.result_type(x_t.dtype, float))
    nz_j, mask = _nonzeros_over_probes(
        lambda p, s, x: _unit_jacobians_at(cell.step, p, s, x, basis), params, cell.state_size,
        x_t)
    block_diagonal = not np.any(nz_j & (unit[:, None] != unit[None, :]))
    return block_diagonal, mask

  structure = _cached(structure)

  def blocks(params, s_tm1, x_t):
    block_diagonal, _ = structure(params, x_t)
    if block_diagonal:
      return _unit_blocks_jvp(lambda s: cell.step(params, s, x_t), s_tm1, layout)
    return _unit_blocks_dense(state_jacobian(cell, params, s_tm1, x_t), layout)

  return compressed_trace(cell, name, blocks, what=name,
                          mask=lambda params, x_t: structure(params, x_t)[1])


def _block_mask(cell):
  unit = np.asarray(cell.unit_of_state)
  return unit[:, None] == unit[None, :]  # [n, n]


def columnar_rtrl(cell: cells_lib.Cell, compressed: Optional[bool] = None) -> Sensitivity:
  """Columnar RTRL (Javed, White & Sutton 2021): each column's parameters track their influence
  on that column's state only, through the column's own k×k Jacobian block.

  Z_t = blockdiag(J_t)·Z_{t−1} + Ī_t. For :func:`bplambda_jax.cells.columnar_lstm` the unit
  blocks of J_t are exactly its implicit part D_t (everything inside a column is implicit, the
  inter-column weights are explicit), so the compressed trace takes the blocks from k jvps of
  ``split_step``. With ``connections=None`` J_t is block-diagonal and this is exact RTRL at
  O(k·P) memory; with inter-column connections it ignores influence through other columns.

  Args:
    cell: a ``columnar_lstm`` cell (others are rejected).
    compressed: None/True: the unit-local trace [k, *P]; False: the dense trace [n, *P] with the
      propagator blockdiag(J_t) taken from the dense J_t (the reference implementation).
  """
  if cell.name != "columnar_lstm":
    raise ValueError(f"columnar_rtrl is defined for columnar networks (cells.columnar_lstm) "
                     f"only; got cell {cell.name!r}. Use 'rtrl' or 'snap1' for other cells.")
  if compressed is None:
    compressed = True
  _resolve_compressed(cell, compressed, "columnar_rtrl")
  if not compressed:
    keep = _block_mask(cell)

    def propagator(params, s_tm1, x_t):
      return jnp.where(keep, state_jacobian(cell, params, s_tm1, x_t), 0)

    def dense_adjoint(params, s_tm1, x_t, a):
      return a @ propagator(params, s_tm1, x_t)

    return dense_trace(cell, "columnar_rtrl", propagator, dense_adjoint)

  layout = unit_layout(cell, "columnar_rtrl")

  def blocks(params, s_tm1, x_t):
    return _unit_blocks_jvp(lambda si: cell.split_step(params, si, s_tm1, x_t), s_tm1, layout)

  def adjoint(params, s_tm1, x_t, a):
    return _implicit_vjp(cell, params, s_tm1, x_t, a)

  return compressed_trace(cell, "columnar_rtrl", blocks, what="columnar_rtrl", adjoint=adjoint)


def eprop_m(cell: cells_lib.Cell, m: int) -> Sensitivity:
  """m-order e-prop (Martín-Sánchez, Bohté & Otte 2022; our formalisation, papers.md).

  Z_t = Σ_k J_t⋯J_{k+1}·Ī_k with J = D + X, keeping only the terms with at most m factors X:

      Z⁽⁰⁾_t = D_t Z⁽⁰⁾_{t−1} + Ī_t,     Z⁽ʲ⁾_t = D_t Z⁽ʲ⁾_{t−1} + X_t Z⁽ʲ⁻¹⁾_{t−1}  (1 ≤ j ≤ m),

  credit ls_t·Σ_j Z⁽ʲ⁾_t. m = 0 is e-prop; m ≥ T − 1 is exact RTRL over T steps. The state is a
  pytree like params with leaves [m+1, n, *P] (row j is Z⁽ʲ⁾). The reverse form carries a
  co-state a = (a⁽⁰⁾…a⁽ᵐ⁾), a⁽ʲ⁾_t = ls_t + a⁽ʲ⁾_{t+1}·D_{t+1} + a⁽ʲ⁺¹⁾_{t+1}·X_{t+1}
  (a⁽ᵐ⁺¹⁾ = 0), credit Σ_t a⁽⁰⁾_t·Ī_t; it is exposed as ``reverse`` (copies = m+1) and, for
  m = 0 only, also as the single-row ``adjoint``.

  Args:
    cell: a cell with ``split_step``.
    m: the order, an integer ≥ 0. The sensitivity is named ``f'eprop_m{m}'``.
  """
  m = _check_positive_int("m", m, 0)
  _require_split(cell, f"eprop_m{m}")
  name = f"eprop_m{m}"

  def init(params):
    n = cell.state_size
    return jax.tree.map(lambda p: jnp.zeros((m + 1, n) + p.shape, p.dtype), params)

  def update(params, z, s_tm1, x_t):
    d = implicit_jacobian(cell, params, s_tm1, x_t)  # [n, n]
    x = explicit_jacobian(cell, params, s_tm1, x_t)  # [n, n]
    ibar = immediate_jacobian(cell, params, s_tm1, x_t)  # [n, *P]

    def leaf(zl, il):  # zl [m+1, n, *P]
      dz = jnp.einsum("ik,jk...->ji...", d, zl)  # [n, n]·[m+1, n, *P]
      xz = jnp.einsum("ik,jk...->ji...", x, zl[:-1])  # [n, n]·[m, n, *P]
      return (dz + jnp.concatenate([il[None], xz], axis=0)).astype(zl.dtype)

    return jax.tree.map(leaf, z, ibar)

  def credit(params, z, s_tm1, x_t, ls_t):
    del params, s_tm1, x_t
    return jax.tree.map(lambda zl: jnp.tensordot(ls_t, jnp.sum(zl, axis=0), axes=1), z)

  def propagate(params, s_tm1, x_t, a):  # a [m+1, n]
    _, vjp = jax.vjp(lambda si, se: cell.split_step(params, si, se, x_t), s_tm1, s_tm1)
    a_d, a_x = jax.vmap(vjp)(a)  # a⁽ʲ⁾·D, a⁽ʲ⁾·X: [m+1, n] each
    return a_d + jnp.concatenate([a_x[1:], jnp.zeros_like(a_x[:1])], axis=0)

  adjoint = None
  if m == 0:
    def adjoint(params, s_tm1, x_t, a):
      return _implicit_vjp(cell, params, s_tm1, x_t, a)

  return Sensitivity(name, init, update, credit, adjoint, Reverse(m + 1, propagate))


# ------------------------------------------------------------------------------- registry

SENSITIVITIES: dict[str, Callable[[cells_lib.Cell], Sensitivity]] = {
    "immediate": immediate,
    "eprop": eprop,
    "rtrl": rtrl,
    "columnar_rtrl": columnar_rtrl,
    "snap1": lambda cell: snap(cell, 1),
    "snap2": lambda cell: snap(cell, 2),
}

_PARAMETRISED = (
    (re.compile(r"snap(\d+)"), snap),
    (re.compile(r"eprop_m(\d+)"), eprop_m),
)


def get_sensitivity(name_or_sens, cell: cells_lib.Cell) -> Sensitivity:
  """A sensitivity by name or a ready :class:`Sensitivity` (returned unchanged).

  Names: those in ``SENSITIVITIES``, plus ``'snap<n>'`` (n ≥ 1) and ``'eprop_m<m>'`` (m ≥ 0).
  """
  if isinstance(name_or_sens, Sensitivity):
    return name_or_sens
  if isinstance(name_or_sens, str):
    if name_or_sens in SENSITIVITIES:
      return SENSITIVITIES[name_or_sens](cell)
    for pattern, factory in _PARAMETRISED:
      match = pattern.fullmatch(name_or_sens)
      if match:
        return factory(cell, int(match.group(1)))
  raise ValueError(f"sensitivity must be a Sensitivity or one of {sorted(SENSITIVITIES)}, "
                   f"'snap<n>' (n >= 1) or 'eprop_m<m>' (m >= 0); got {name_or_sens!r}.")
