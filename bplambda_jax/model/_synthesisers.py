"""Synthesisers ĝ(z; θ): predictors of future loss gradients with respect to a recurrent state.

A :class:`Synthesiser` is a NamedTuple of pure functions::

    params = synth.init(key, d_in, d_out)       # {'train': ..., 'frozen': ...}; dtype= optional
    g = synth.apply(params, z)                  # z: [d_in] -> g: [d_out]

Parameters are split into a ``'train'`` subtree (what learning rules update and trace) and a
``'frozen'`` subtree (random features kept at their initial values), so "train only the last
layer" is a property of the parameters, not a flag the rules must remember.
The last layer is zero-initialised (Jaderberg et al. 2017, as in the authors' code), so ĝ ≡ 0 at the
start.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bplambda_jax import _validation
from bplambda_jax.model._cells import check_size, float_dtype

Params = Any


class Synthesiser(NamedTuple):
  """A synthetic-gradient model.

  Attributes:
    name: short name.
    init: ``init(key, d_in, d_out, dtype=None) -> {'train': pytree, 'frozen': pytree}``.
    apply: ``apply(params, z [d_in]) -> g [d_out]``.
    linear: True when ĝ(z) = W z + β with W, β the whole 'train' subtree (enables structured
      traces).
  """

  name: str
  init: Callable[..., Params]
  apply: Callable[[Params, jax.Array], jax.Array]
  linear: bool = False


def linear_synthesiser(bias: bool = True) -> Synthesiser:
  """ĝ(z) = W z + β with W [d_out, d_in] and β [d_out], both zero-initialised.

  Args:
    bias: whether ĝ has the bias β.
  """
  bias = _validation.flag("bias", bias)

  def init(key, d_in, d_out, dtype=None):
    del key
    check_size("d_in", d_in)
    check_size("d_out", d_out)
    dtype = float_dtype(dtype)
    train = {"w": jnp.zeros((d_out, d_in), dtype)}
    if bias:
      train["b"] = jnp.zeros((d_out,), dtype)
    return {"train": train, "frozen": {}}

  def apply(params, z):
    p = params["train"]
    g = p["w"] @ z  # [d_out, d_in] · [d_in] -> [d_out]
    return g + p["b"] if bias else g

  return Synthesiser("linear", init, apply, linear=True)


def mlp_synthesiser(hidden_layers: int, hidden_size: int, train_last_only: bool = False,
                    bias: bool = True) -> Synthesiser:
  """ĝ = W_{K+1} relu(… relu(W_1 z + β_1) …) + β_{K+1} with K hidden ReLU layers.

  Hidden layers use U(±1/√fan_in) for weights and biases; the output layer is zero-initialised.

  Args:
    hidden_layers: K ≥ 1 (use :func:`linear_synthesiser` for K = 0).
    hidden_size: width of every hidden layer.
    train_last_only: keep the hidden layers frozen at init ("random features").
    bias: use biases in every layer.
  """
  hidden_layers = _validation.integer(
      "hidden_layers", hidden_layers, minimum=1,
      what="an integer >= 1 (use linear_synthesiser() for 0)")
  check_size("hidden_size", hidden_size)
  train_last_only = _validation.flag("train_last_only", train_last_only)
  bias = _validation.flag("bias", bias)

  def init(key, d_in, d_out, dtype=None):
    check_size("d_in", d_in)
    check_size("d_out", d_out)
    dtype = float_dtype(dtype)
    keys = jax.random.split(key, 2 * hidden_layers)
    layers = []
    fan_in = d_in
    for k in range(hidden_layers):
      bound = 1.0 / np.sqrt(fan_in)
      layer = {"w": jax.random.uniform(keys[2 * k], (hidden_size, fan_in), dtype, -bound, bound)}
      if bias:
        layer["b"] = jax.random.uniform(keys[2 * k + 1], (hidden_size,), dtype, -bound, bound)
      layers.append(layer)
      fan_in = hidden_size
    out = {"w": jnp.zeros((d_out, hidden_size), dtype)}
    if bias:
      out["b"] = jnp.zeros((d_out,), dtype)
    if train_last_only:
      return {"train": {"out": out}, "frozen": {"hidden": layers}}
    return {"train": {"hidden": layers, "out": out}, "frozen": {}}

  def apply(params, z):
    hidden = params["frozen"]["hidden"] if train_last_only else params["train"]["hidden"]
    out = params["train"]["out"]
    a = z
    for layer in hidden:
      a = layer["w"] @ a
      if bias:
        a = a + layer["b"]
      a = jax.nn.relu(a)
    g = out["w"] @ a
    return g + out["b"] if bias else g

  return Synthesiser(f"mlp{hidden_layers}", init, apply)


def get_synthesiser(name: str, hidden_layers: int = 0, hidden_size: int = 50,
                    train_last_only: bool = False) -> Synthesiser:
  """A synthesiser by name: 'linear' (no other argument) or 'mlp' (K = hidden_layers ≥ 1)."""
  if name == "linear":
    if hidden_layers or train_last_only:
      raise ValueError(f"the linear synthesiser has no hidden layers; got "
                       f"hidden_layers={hidden_layers!r}, train_last_only={train_last_only!r}. "
                       f"Use name='mlp' for hidden layers.")
    return linear_synthesiser()
  if name == "mlp":
    return mlp_synthesiser(hidden_layers, hidden_size, train_last_only)
  raise ValueError(f"synthesiser must be one of ['linear', 'mlp'], got {name!r}.")
