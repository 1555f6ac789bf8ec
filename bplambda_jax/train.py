"""Training: optax optimisers per parameter group, one jitted update, seed vmaps, checkpoints.

::

    rule = bp_lambda(model, lambda_=1.0, gamma=0.9)
    opt = optimiser(lr_cell=1e-3, lr_readout=1e-3, lr_synth=1e-5)   # Adam(0.9, 0.98, 1e-9)
    state = init_state(rule, opt, key)
    update = jax.jit(make_update(rule, opt))
    state, metrics = update(state, batch)

Seeds are a ``jax.vmap`` axis: ``jax.vmap(lambda k: init_state(rule, opt, k))(keys)`` and
``jax.vmap(update)(states, batches)``; :func:`run` scans many updates inside one compiled program
with data generated on device from a key.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Callable, NamedTuple, Optional

import flax.serialization
import jax
import jax.numpy as jnp
import optax

from bplambda_jax.rules import base

Params = Any

GROUPS = ("cell", "readout", "synth")


class TrainState(NamedTuple):
  """Everything that changes during training.

  Attributes:
    params: {'cell', 'readout'[, 'synth']}.
    opt_state: the optax state.
    step: number of updates applied, shape=(), int32.
  """

  params: Params
  opt_state: Any
  step: jax.Array


def adam(learning_rate: float, b1: float = 0.9, b2: float = 0.98, eps: float = 1e-9):
  """Adam as in the reference (spec §8.3): betas (0.9, 0.98), eps 1e-9 added to √v̂."""
  return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)


def optimiser(lr_cell: float, lr_readout: float, lr_synth: float = 0.0, *,
              b1: float = 0.9, b2: float = 0.98, eps: float = 1e-9,
              alpha_learning: bool = False) -> optax.GradientTransformation:
  """Adam with a separate learning rate per group ('cell', 'readout', 'synth').

  A group with learning rate 0 is frozen (``optax.set_to_zero``). With ``alpha_learning`` the
  synthesiser is updated inside the rule by plain SGD at every step, so its optimiser is frozen
  and ``lr_synth`` must be 0.
  """
  for name, v in (("lr_cell", lr_cell), ("lr_readout", lr_readout), ("lr_synth", lr_synth)):
    if not v >= 0:
      raise ValueError(f"{name} must be >= 0, got {v!r}.")
  if alpha_learning and lr_synth:
    raise ValueError("alpha_learning updates the synthesiser inside the rule; lr_synth must be 0.")

  def group(lr):
    return adam(lr, b1, b2, eps) if lr > 0 else optax.set_to_zero()

  transforms = {"cell": group(lr_cell), "readout": group(lr_readout), "synth": group(lr_synth)}

  def labels(params):
    unknown = set(params) - set(GROUPS)
    if unknown:
      raise ValueError(f"params has unknown groups {sorted(unknown)}; expected {GROUPS}.")
    return {k: jax.tree.map(lambda _: k, v) for k, v in params.items()}

  return optax.multi_transform(transforms, labels)


def init_state(rule: base.Rule, opt: optax.GradientTransformation, key) -> TrainState:
  """Fresh parameters from ``rule.init(key)`` and the optimiser state."""
  params = rule.init(key)
  return TrainState(params, opt.init(params), jnp.zeros((), jnp.int32))


def make_update(rule: base.Rule, opt: optax.GradientTransformation,
                metric_fn: Optional[Callable] = None) -> Callable:
  """``update(state, batch, hparams=None) -> (state, metrics)``: one optimiser step per batch.

  Pure and un-jitted: wrap it in ``jax.jit`` (and ``jax.vmap`` for seeds). ``metrics`` holds the
  rule's scalar diagnostics ('loss', and 'td_error_norm' summed over steps when present) and
  ``metric_fn(params, batch, aux)`` evaluated on the parameters before the update.
  """

  def update(state: TrainState, batch, hparams=None):
    grads, aux = rule.grads(state.params, batch, hparams)
    extra = metric_fn(state.params, batch, aux) if metric_fn is not None else {}
    updates, opt_state = opt.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if "synth_params" in aux:  # alpha_learning: the rule already applied per-step SGD
      params = {**params, "synth": aux["synth_params"]}
    metrics = {"loss": aux["loss"]}
    if "td_error_norm" in aux:
      metrics["td_error_norm"] = jnp.sum(aux["td_error_norm"])
    return TrainState(params, opt_state, state.step + 1), {**metrics, **extra}

  return update


def run(rule: base.Rule, opt: optax.GradientTransformation, data_fn: Callable, key, num_steps: int,
        state: Optional[TrainState] = None, hparams=None, metric_fn: Optional[Callable] = None):
  """``num_steps`` updates in one ``lax.scan`` (no host round trips), data made on device.

  Args:
    rule, opt: the rule and optimiser.
    data_fn: ``data_fn(key, step) -> Batch`` (pure, traceable).
    key: PRNG key; split into the init key (if ``state`` is None) and the data stream.
    num_steps: number of updates.
    state: a state to continue from (otherwise a fresh one from the key).
    hparams: rule hyper-parameter overrides (arrays allowed; vmap over them for sweeps).
    metric_fn: optional ``metric_fn(params, batch, aux) -> dict`` (see :func:`make_update`).

  Returns:
    (final state, metrics with a leading [num_steps] axis).
  """
  if not isinstance(num_steps, int) or num_steps < 1:
    raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}.")
  k_init, k_data = jax.random.split(key)
  if state is None:
    state = init_state(rule, opt, k_init)
  update = make_update(rule, opt, metric_fn)

  def body(st, _):
    batch = data_fn(jax.random.fold_in(k_data, st.step), st.step)
    return update(st, batch, hparams)

  return jax.lax.scan(body, state, jnp.arange(num_steps))


# ------------------------------------------------------------------------------ checkpoints


def save_checkpoint(path: str, tree) -> None:
  """Write a pytree atomically (temporary file + rename), so a crash never leaves half a file."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  data = flax.serialization.to_bytes(jax.device_get(tree))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ckpt-")
  with os.fdopen(fd, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def load_checkpoint(path: str, template):
  """Read a pytree written by :func:`save_checkpoint`, with ``template``'s structure."""
  with open(path, "rb") as f:
    return flax.serialization.from_bytes(template, f.read())
