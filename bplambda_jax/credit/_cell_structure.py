"""Structure of a cell: units and their layout, SnAp patterns, and checks of declared structure.

Structural sparsity (SnAp patterns, the structure checks) is read off Jacobians evaluated at a few
random points and OR-ed together. An entry that vanishes at every probe is treated as structurally
zero; with piecewise-linear activations (relu) a unit that is inactive at every probe would be
misread, which three independent probes make unlikely but not impossible.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from bplambda_jax.credit._sensitivities._jacobians import immediate_credit
from bplambda_jax.model import Cell

_PROBES = 3

def _shape_key(*trees):
  leaves, treedef = jax.tree.flatten(trees)
  return treedef, tuple((tuple(l.shape), jnp.dtype(l.dtype).name) for l in leaves)


def cached_by_shape(fn):
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


def run_probes(fn, params, n, x_t):
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
def unit_jacobians_at(step, p, s, x, basis):
  """J [n, n] and the compressed Ī (pytree of [k, *P], k vjps) of ``step`` at one point."""
  _, vjp = jax.vjp(lambda q: step(q, s, x), p)
  return jax.jacfwd(step, argnums=1)(p, s, x), jax.vmap(lambda e: vjp(e)[0])(basis)


def nonzeros_over_probes(fn, params, n, x_t):
  """Non-zero patterns of ``fn(p, s, x)`` (a pytree), OR-ed over the random probe points."""
  p_all, s_all, x_all, _, _ = _probe_points(params, n, x_t)
  out = None
  with jax.ensure_compile_time_eval():
    for i in range(s_all.shape[0]):
      value = fn(jax.tree.map(lambda l: l[i], p_all), s_all[i], x_all[i])
      nz = jax.tree.map(lambda l: np.asarray(l) != 0, value)
      out = nz if out is None else jax.tree.map(np.logical_or, out, nz)
  return out


def _dense_structure(cell: Cell, params, x_t):
  """Structural non-zeros of J [n, n] and Ī (pytree of [n, *P]), OR-ed over random probes."""
  return nonzeros_over_probes(lambda p, s, x: _jacobians_at(cell.step, p, s, x), params,
                               cell.state_size, x_t)


def snap_pattern(cell: Cell, params, x_t, n_steps: int):
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


def unit_layout(cell: Cell, what: str) -> UnitLayout:
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


def param_unit_arrays(cell: Cell, params, layout: UnitLayout, what: str):
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


def unit_blocks_jvp(fn, s_tm1, layout: UnitLayout):
  """The k×k diagonal blocks [U, k, k] of ∂fn/∂s, exact when that Jacobian is unit-block-diagonal.

  Column c of every block comes from one jvp whose tangent is 1 at component c of every unit.
  """
  e = layout.basis(s_tm1.shape[0], s_tm1.dtype)  # [k, n]
  cols = jax.vmap(lambda t: jax.jvp(fn, (s_tm1,), (t,))[1])(e)  # [k, n]
  return jnp.transpose(layout.gather(cols), (1, 2, 0))  # [c, U, a] -> [U, a, c]


def unit_blocks_dense(jac, layout: UnitLayout):
  """The k×k diagonal blocks [U, k, k] of a dense Jacobian [n, n]."""
  idx = layout.index
  return jac[idx[:, :, None], idx[:, None, :]]


def compressed_ibar(cell, params, s_tm1, x_t, basis):
  """Compressed Ī_t: leaves [k, *P], row c = ∂s_(u(p), c)/∂p, by k vjps of the step."""
  _, vjp = jax.vjp(lambda p: cell.step(p, s_tm1, x_t), params)
  return jax.vmap(lambda e: vjp(e)[0])(basis)


class Spread(NamedTuple):
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


def spread_of(pu: np.ndarray, num_units: int) -> Spread:
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
      return Spread(pu, shape, axis)
  return Spread(pu, pu.shape, None)


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


def resolve_compressed(cell, compressed, what):
  """Whether a sensitivity uses its compressed trace: None = when the cell declares its units."""
  if compressed not in (None, True, False):
    raise ValueError(f"compressed must be None (automatic), True or False, got {compressed!r}.")
  if compressed is None:
    return cell.unit_of_state is not None and cell.param_units is not None
  if compressed:
    unit_layout(cell, what)
  return compressed


def eprop_transition(cell: Cell) -> str:
  """The structure of the e-prop flavour's transition K_t that a cell's declarations imply.

  K_t = ∂c_t/∂c_{t−1} through h_{t−1} = o_{t−1}⊙act(c_{t−1}), [H, H]: v·K_t =
  (v·∂c_t/∂h_{t−1})⊙D_{t−1} + v⊙f_t. It is diagonal when ∂c_t/∂h_{t−1} is, which follows when
  J_t is declared diagonal, or unit-block-diagonal with each unit holding exactly one pair
  (h_k, c_k) (recurrent weights per unit: element-wise and columnar LSTMs without connections).

  Args:
    cell: a cell with an LSTM cell-state path (``Cell.lstm``).

  Returns:
    'diagonal' or 'dense'.
  """
  if cell.lstm is None:
    raise ValueError(f"eprop_transition needs a cell with an LSTM cell-state path (Cell.lstm); "
                     f"cell {cell.name!r} has none.")
  if cell.jacobian == "diagonal":
    return "diagonal"
  if cell.jacobian != "block" or cell.unit_of_state is None:
    return "dense"
  u, H = np.asarray(cell.unit_of_state), cell.hidden_size
  paired = len(set(u[:H].tolist())) == H and np.array_equal(u[H:2 * H], u[:H])
  return "diagonal" if paired and cell.state_size == 2 * H else "dense"


def check_structure(cell: Cell, params, x_t) -> None:
  """Verify, at random points, every structure a cell declares; ValueError naming the first lie.

  Checks, where declared: ``split_step(p, s, s, x) == step(p, s, x)``; every parameter entry
  influences only the state of the unit ``param_units`` gives it; the implicit Jacobian D_t is
  unit-block-diagonal; J_t has the declared ``jacobian`` structure ('block': unit-block-diagonal,
  'diagonal'); ``implicit_units``: D_t equals the unit blocks of J_t; the :class:`LSTMParts`
  reproduce the step and ``c_vjp`` the recurrent weights of the gates i, f, g, and when the
  declarations imply a diagonal e-prop transition (:func:`eprop_transition`), ``c_vjp`` is
  diagonal. Run it once for a new cell. Only the shapes of ``params`` and ``x_t`` are used.

  Args:
    cell: the cell.
    params: the cell's parameters (or arrays of the same shapes).
    x_t: an input of the right shape, [D_in].

  Raises:
    ValueError naming the declaration that the cell's step does not satisfy.
  """
  n, H = cell.state_size, cell.hidden_size
  layout = None
  if cell.unit_of_state is not None or cell.param_units is not None:
    layout = unit_layout(cell, "unit-local")
  if cell.jacobian not in ("dense", "block", "diagonal"):
    raise ValueError(f"cell {cell.name!r}: jacobian must be 'dense', 'block' or 'diagonal', got "
                     f"{cell.jacobian!r}.")
  if cell.jacobian == "block" and layout is None:
    raise ValueError(f"cell {cell.name!r} declares jacobian='block' but no units.")
  if cell.implicit_units and (layout is None or cell.split_step is None):
    raise ValueError(f"cell {cell.name!r} declares implicit_units=True but no units or no "
                     f"split_step.")
  k_diagonal = cell.lstm is not None and eprop_transition(cell) == "diagonal"
  same_unit = None if layout is None else (np.asarray(cell.unit_of_state)[:, None]
                                           == np.asarray(cell.unit_of_state)[None, :])

  def fn(p, s, x, r, v):
    out = {"step": cell.step(p, s, x), "jac": jax.jacfwd(cell.step, argnums=1)(p, s, x)}
    if cell.split_step is not None:
      out["split"] = cell.split_step(p, s, s, x)
      out["imp"] = jax.jacfwd(cell.split_step, argnums=1)(p, s, s, x)
    if layout is not None:
      pu = param_unit_arrays(cell, p, layout, "unit-local")
      comp = compressed_ibar(cell, p, s, x, layout.basis(n, s.dtype))  # [k, *P]
      out["full"] = immediate_credit(cell, p, s, x, r)
      out["via_units"] = jax.tree.map(
          lambda zl, ul: jnp.sum(_gather_ls(r, layout, ul) * zl, axis=0), comp, pu)
    if cell.lstm is not None:
      out["lstm_step"] = cell.lstm.step(p, s[H:], s, x)
      pre = lambda h: cell.lstm.preactivations(p, jnp.concatenate([h, s[H:]]), x)[:3]
      w = v[:H] * jnp.ones((3, H), v.dtype)
      out["c_vjp"] = cell.lstm.c_vjp(p, w)
      out["c_vjp_ad"] = jax.vjp(pre, s[:H])[1](w)[0]
      if k_diagonal:  # rows e_i·∂c_t/∂h_{t−1} at random gate derivatives π [3, H]
        pi = jnp.stack([r[:H], v[:H], r[H:2 * H]])
        out["c_h"] = jax.vmap(lambda e: cell.lstm.c_vjp(p, pi * e))(jnp.eye(H, dtype=s.dtype))
    return out

  probes = run_probes(fn, params, n, x_t)
  if cell.split_step is not None and not _close(probes["step"], probes["split"]):
    raise ValueError(f"cell {cell.name!r}: split_step(p, s, s, x) differs from step(p, s, x).")
  if layout is not None and not _close(probes["full"], probes["via_units"]):
    raise ValueError(f"cell {cell.name!r} declares param_units, but some parameter entry "
                     f"influences the state of a unit other than its own.")
  jac = probes["jac"]
  if layout is not None and cell.split_step is not None and np.any(probes["imp"][:, ~same_unit]):
    raise ValueError(f"cell {cell.name!r}: the implicit Jacobian D_t of its split_step is not "
                     f"unit-block-diagonal.")
  if cell.jacobian == "block" and np.any(jac[:, ~same_unit]):
    raise ValueError(f"cell {cell.name!r} declares jacobian='block', but J_t couples units.")
  if cell.jacobian == "diagonal" and np.any(jac[:, ~np.eye(n, dtype=bool)]):
    raise ValueError(f"cell {cell.name!r} declares jacobian='diagonal', but J_t is not diagonal.")
  if cell.implicit_units and not _close(probes["imp"], np.where(same_unit, jac, 0.0)):
    raise ValueError(f"cell {cell.name!r} declares implicit_units=True, but its implicit "
                     f"Jacobian D_t is not the unit-block diagonal of J_t.")
  if cell.lstm is not None:
    if not _close(probes["step"], probes["lstm_step"]):
      raise ValueError(f"cell {cell.name!r}: its LSTMParts do not reproduce its step.")
    if k_diagonal and np.any(probes["c_h"][:, ~np.eye(H, dtype=bool)]):
      raise ValueError(f"cell {cell.name!r}: its declarations (jacobian={cell.jacobian!r}, one "
                       f"(h, c) pair per unit) imply a diagonal e-prop transition K_t, but "
                       f"LSTMParts.c_vjp couples units.")
    if not _close(probes["c_vjp"], probes["c_vjp_ad"]):
      raise ValueError(f"cell {cell.name!r}: LSTMParts.c_vjp differs from the vjp of the gate "
                       f"pre-activations i, f, g with respect to h_{{t−1}}.")
