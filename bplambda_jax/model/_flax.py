"""``from_flax``: any ``flax.linen`` recurrent cell as a :class:`~bplambda_jax.model.Cell`.

The flat state is the carry: ``h`` for cells whose carry is their output, and ``[h; c]`` for LSTM
cells, whose flax carry is the tuple ``(c, h)`` (the adapter reorders explicitly so that the hidden
output comes first). The step is the module's own ``apply``; the initial state is the module's
``initialize_carry`` (so ``carry_init`` and ``param_dtype`` are honoured).

For flax's own cells the adapter also declares the structure the online rules need, with no user
code: the implicit/explicit split (e-prop, m-order e-prop), the units (compressed traces, columnar
RTRL) and, for the two LSTM cells, the cell-state path (BP(λ)'s e-prop flavour):

=====================================  ======================================================
flax cell                              split (implicit part)
=====================================  ======================================================
``LSTMCell``, ``OptimizedLSTMCell``    the cell state c_{t−1} → c_t (as the library LSTM)
``GRUCell``                            self-weights of ``hr``, ``hz``, ``hn`` and the carry z⊙h
``MGUCell``                            self-weights of ``hf``, ``hn`` and the carry f⊙h
``SimpleCell``                         self-weights of ``h`` (and the residual carry)
=====================================  ======================================================

Each split is written from the cell's parameters and checked against the module's ``apply`` at
random points when the adapter is built; a subclass whose step differs gets no split (a warning
says so), and the user may pass ``split_step=`` explicitly.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bplambda_jax.model._cells import Cell, LSTMParts, check_size, float_dtype

_LSTM_CLASSES = (nn.LSTMCell, nn.OptimizedLSTMCell)


def _dense_split(kernel, h_imp, h_exp):
  """h @ K (K [H_in, H_out], flax layout) with the self-weights K[k, k] applied to h_imp."""
  diag = jnp.diagonal(kernel)  # [H]
  return h_exp @ kernel - diag * h_exp + diag * h_imp


def _lstm_parts(module) -> LSTMParts:
  gates = ("i", "f", "g", "o")

  def preactivations(p, s_tm1, x):
    H = s_tm1.shape[-1] // 2
    h = s_tm1[:H]
    return jnp.stack([x @ p[f"i{q}"]["kernel"] + h @ p[f"h{q}"]["kernel"] + p[f"h{q}"]["bias"]
                      for q in gates])  # [4, H]

  def c_vjp(p, v):  # Σ_q v_q·∂z^q/∂h = Σ_q K_hq·v_q for q = i, f, g
    return sum(p[f"h{q}"]["kernel"] @ v[k] for k, q in enumerate(gates[:3]))

  return LSTMParts(preactivations, c_vjp, module.gate_fn, module.activation_fn)


def _single_state_split(module) -> Optional[Callable]:
  """split_step for flax's GRUCell, MGUCell and SimpleCell (implicit: the diagonal of J)."""
  if isinstance(module, nn.GRUCell):
    def split(p, h_imp, h_exp, x):
      r = module.gate_fn(x @ p["ir"]["kernel"] + p["ir"]["bias"]
                         + _dense_split(p["hr"]["kernel"], h_imp, h_exp))
      z = module.gate_fn(x @ p["iz"]["kernel"] + p["iz"]["bias"]
                         + _dense_split(p["hz"]["kernel"], h_imp, h_exp))
      hn = _dense_split(p["hn"]["kernel"], h_imp, h_exp) + p["hn"]["bias"]
      n = module.activation_fn(x @ p["in"]["kernel"] + p["in"]["bias"] + r * hn)
      return (1.0 - z) * n + z * h_imp
    return split
  if isinstance(module, nn.MGUCell):
    def split(p, h_imp, h_exp, x):
      f = module.gate_fn(x @ p["if"]["kernel"] + p["if"]["bias"]
                         + _dense_split(p["hf"]["kernel"], h_imp, h_exp))
      hn = _dense_split(p["hn"]["kernel"], h_imp, h_exp)
      if module.reset_gate:
        hn = (hn + p["hn"]["bias"]) * f
      n = module.activation_fn(x @ p["in"]["kernel"] + p["in"]["bias"] + hn)
      return (1.0 - f) * n + f * h_imp
    return split
  if isinstance(module, nn.SimpleCell):
    def split(p, h_imp, h_exp, x):
      a = x @ p["i"]["kernel"] + p["i"]["bias"] + _dense_split(p["h"]["kernel"], h_imp, h_exp)
      if module.residual:
        a = a + h_imp
      return module.activation_fn(a)
    return split
  return None


def _unit_columns(H):
  """param_units of flax Dense leaves: column (output feature) k of every kernel feeds unit k."""

  def param_units(params):
    return jax.tree.map(lambda p: np.broadcast_to(np.arange(H), p.shape).copy(), params)

  return param_units


def from_flax(module, split_step: Optional[Callable] = None) -> Cell:
  """Wrap a ``flax.linen`` recurrent cell (see the module docstring).

  Args:
    module: a ``flax.linen.RNNCellBase`` instance with ``num_feature_axes == 1`` whose carry is
      its output h [H] or the tuple (c, h).
    split_step: an explicit ``(params, s_imp, s_exp, x) -> s`` split; default: the adapter's own
      for flax's LSTMCell, OptimizedLSTMCell, GRUCell, MGUCell and SimpleCell, none otherwise
      (then e-prop and m-order e-prop reject the cell).

  Returns:
    A :class:`Cell` whose params are the module's ``'params'`` collection.
  """
  cls = type(module).__name__
  if not isinstance(module, nn.RNNCellBase) or not hasattr(module, "features"):
    raise TypeError(f"from_flax expects a flax.linen recurrent cell (nn.RNNCellBase), got {cls}.")
  if getattr(module, "num_feature_axes", 1) != 1:
    raise ValueError(f"from_flax supports cells with num_feature_axes == 1; {cls} has "
                     f"{module.num_feature_axes}.")
  H = int(module.features)
  carry_probe = module.initialize_carry(jax.random.key(0), (1,))
  lstm_like = isinstance(carry_probe, tuple) and len(carry_probe) == 2
  n = 2 * H if lstm_like else H

  def to_carry(s):
    return (s[H:], s[:H]) if lstm_like else s

  def from_carry(carry):
    return jnp.concatenate([carry[1], carry[0]]) if lstm_like else carry

  def init(key, input_size, dtype=None):
    d = check_size("input_size", input_size)
    k1, k2 = jax.random.split(key)
    maker = _initialiser(module)
    carry = maker.initialize_carry(k1, (d,))
    params = maker.init(k2, carry, jnp.zeros((d,), maker.param_dtype))["params"]
    target = float_dtype(module.param_dtype if dtype is None else dtype)
    return jax.tree.map(lambda p: p.astype(target), params)

  def step_of(mod):
    def step(params, s, x):
      carry, _ = mod.apply({"params": params}, to_carry(s), x)
      return from_carry(carry).astype(s.dtype)
    return step

  step = step_of(module)

  s0 = from_carry(carry_probe)
  if not np.array_equal(np.asarray(s0), np.asarray(
      from_carry(module.initialize_carry(jax.random.key(1), (1,))))):
    warnings.warn(f"{cls}.carry_init is random; from_flax uses the carry drawn with a fixed key "
                  f"as the initial state of every sequence.", stacklevel=2)

  def initial_state(dtype=None):
    return s0.astype(float_dtype(dtype))

  # Check the carry contract once, on a tiny input, without compiling anything heavy.
  probe_params = jax.eval_shape(lambda: init(jax.random.key(0), 1))
  carry_struct, out_struct = jax.eval_shape(
      lambda p: module.apply({"params": p}, to_carry(jnp.zeros((n,))), jnp.zeros((1,))),
      probe_params)
  shapes = [tuple(l.shape) for l in jax.tree.leaves(carry_struct)]
  if shapes != ([(H,), (H,)] if lstm_like else [(H,)]) or tuple(out_struct.shape) != (H,):
    raise ValueError(
        f"from_flax supports cells whose carry is their output h [H] (SimpleCell, GRUCell, "
        f"MGUCell) or the tuple (c, h) (LSTMCell, OptimizedLSTMCell); {cls} has carry "
        f"{shapes} and output {tuple(out_struct.shape)}.")

  lstm = None
  declared = {}
  if split_step is None:
    if isinstance(module, _LSTM_CLASSES):
      lstm = _lstm_parts(module)
      split_step = lambda p, s_imp, s_exp, x: lstm.step(p, s_imp[H:], s_exp, x)
      declared = dict(unit_of_state=np.concatenate([np.arange(H), np.arange(H)]),
                      param_units=_unit_columns(H))
    else:
      split_step = _single_state_split(module)
      if split_step is not None:
        declared = dict(unit_of_state=np.arange(H), param_units=_unit_columns(H),
                        implicit_units=True)
    if split_step is not None and not _matches(module, step_of(_initialiser(module)), split_step,
                                               n):
      warnings.warn(f"{cls} computes a different step from flax's own {cls.__mro__[1].__name__}; "
                    f"from_flax declares no implicit/explicit split for it (pass split_step=).",
                    stacklevel=2)
      split_step, lstm, declared = None, None, {}

  return Cell(f"flax_{cls}", H, n, init, step, initial_state, split_step, lstm=lstm, **declared)


def _initialiser(module):
  """The module itself, or for parameters narrower than float32 (bfloat16, float16) a float32
  copy: flax initialises recurrent kernels orthogonally, by a QR decomposition that LAPACK has
  only in float32 and float64 (the parameters are cast to the module's dtype afterwards)."""
  if jnp.dtype(module.param_dtype).itemsize >= 4:
    return module
  return module.clone(param_dtype=jnp.float32)


def _matches(module, step, split_step, n) -> bool:
  """split_step(p, s, s, x) == step(p, s, x) at a random point (float32, relative 1e-5)."""
  rng = np.random.default_rng(0)
  maker = _initialiser(module)
  params = maker.init(jax.random.key(3), maker.initialize_carry(jax.random.key(0), (3,)),
                      jnp.zeros((3,), maker.param_dtype))["params"]
  params = jax.tree.map(lambda p: jnp.asarray(0.5 * rng.standard_normal(p.shape), p.dtype), params)
  s = jnp.asarray(0.5 * rng.standard_normal((n,)), maker.param_dtype)
  x = jnp.asarray(rng.standard_normal((3,)), maker.param_dtype)
  with jax.ensure_compile_time_eval():
    a = np.asarray(step(params, s, x), np.float64)
    b = np.asarray(split_step(params, s, s, x), np.float64)
  return bool(np.allclose(a, b, rtol=1e-5, atol=1e-6))
