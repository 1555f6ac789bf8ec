"""Training: optax optimisers per parameter group, one jitted update, on-device runs, seed sweeps.

::

    rule = bp_lambda(model, lambda_=1.0, gamma=0.9)
    opt = optimiser(lr_cell=1e-3, lr_readout=1e-3, lr_synth=1e-5)   # Adam(0.9, 0.98, 1e-9)
    state = init_state(rule, opt, key)
    update = jax.jit(make_update(rule, opt))
    state, metrics = update(state, batch)

Seeds are a ``jax.vmap`` axis: :func:`sweep` runs S seeds of :func:`run` (many updates in one
``lax.scan``, data generated on device from a key) as one compiled program, after checking that
the online traces of all S seeds fit in memory (:func:`check_memory`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from bplambda_jax.rules import Rule
from bplambda_jax.training import _guards as guards
from bplambda_jax.training import _parallel as parallel
from bplambda_jax.training._memory import check_memory

Params = Any

GROUPS = ("cell", "readout", "synth")


class TrainState(NamedTuple):
  """Everything that changes during training by whole batches.

  Attributes:
    params: {'cell', 'readout'[, 'synth']}.
    opt_state: the optax state.
    step: number of updates applied, shape=(), int32.
  """

  params: Params
  opt_state: Any
  step: jax.Array


def adam(learning_rate: float, b1: float = 0.9, b2: float = 0.98, eps: float = 1e-9):
  """Adam as in the authors' code: betas (0.9, 0.98), eps 1e-9 added to √v̂."""
  return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)


def optimiser(lr_cell: float, lr_readout: float, lr_synth: float = 0.0, *,
              b1: float = 0.9, b2: float = 0.98, eps: float = 1e-9) -> optax.GradientTransformation:
  """Adam with a separate learning rate per group ('cell', 'readout', 'synth').

  A group with learning rate 0 is frozen (``optax.set_to_zero``).
  """
  for name, v in (("lr_cell", lr_cell), ("lr_readout", lr_readout), ("lr_synth", lr_synth)):
    if isinstance(v, bool) or not (isinstance(v, (int, float)) and 0 <= v < float("inf")):
      raise ValueError(f"{name} must be a finite number >= 0, got {v!r}.")

  def group(lr):
    return adam(lr, b1, b2, eps) if lr > 0 else optax.set_to_zero()

  transforms = {"cell": group(lr_cell), "readout": group(lr_readout), "synth": group(lr_synth)}

  def labels(params):
    unknown = set(params) - set(GROUPS)
    if unknown:
      raise ValueError(f"params has unknown groups {sorted(unknown)}; expected {GROUPS}.")
    return {k: jax.tree.map(lambda _: k, v) for k, v in params.items()}

  return optax.partition(transforms, labels)


def init_state(rule: Rule, opt: optax.GradientTransformation, key) -> TrainState:
  """Fresh parameters from ``rule.init(key)`` and the optimiser state."""
  params = rule.init(key)
  return TrainState(params, opt.init(params), jnp.zeros((), jnp.int32))


def make_update(rule: Rule, opt: optax.GradientTransformation,
                metric_fn: Optional[Callable] = None, *, checked: bool = False) -> Callable:
  """``update(state, batch, hparams=None) -> (state, metrics)``: one optimiser step per batch.

  Pure and un-jitted: wrap it in ``jax.jit`` (and ``jax.vmap`` for seeds). ``metrics`` holds the
  rule's scalar diagnostics ('loss', and 'td_error_norm' summed over steps when present) and
  ``metric_fn(params, batch, aux)`` evaluated on the parameters before the update.

  With ``checked=True`` the update also checks, on device, the batch (finite inputs and targets,
  a finite non-negative mask, labels in range), traced hyper-parameters (λ, γ in [0, 1],
  sg_scale ≥ 0) and what it computes (finite loss, gradients, learning signals and new
  parameters); ``metrics['guard']`` is the first failure's code (0: all is well, see
  :func:`guard_message`) and a failed update is skipped, so the state keeps its last good value.
  The checks cost a few reductions.
  """
  model = rule.model
  if checked and model is None:
    raise ValueError(f"make_update(checked=True) needs a rule built for a model; rule "
                     f"{rule.name!r} has rule.model = None.")

  def update(state: TrainState, batch, hparams=None):
    grads, aux = rule.grads(state.params, batch, hparams)
    extra = metric_fn(state.params, batch, aux) if metric_fn is not None else {}
    updates, opt_state = opt.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": aux["loss"]}
    if "td_error_norm" in aux:
      metrics["td_error_norm"] = jnp.sum(aux["td_error_norm"])
    new = TrainState(params, opt_state, state.step + 1)
    if checked:
      code = guards.first_failure(
          *guards.input_checks(model.output_size, model.loss.name, batch, hparams),
          *guards.output_checks(aux["loss"], grads, aux["learning_signal"], params))
      new = guards.keep_if_ok(code, new, state)
      metrics["guard"] = code
    return new, {**metrics, **extra}

  return update


def _check_steps(num_steps):
  if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
    raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}.")


def run(rule: Rule, opt: optax.GradientTransformation, data_fn: Callable, key, num_steps: int,
        state: Optional[TrainState] = None, hparams=None, metric_fn: Optional[Callable] = None,
        *, checked: bool = False):
  """``num_steps`` updates in one ``lax.scan`` (no host round trips), data made on device.

  Args:
    rule, opt: the rule and optimiser.
    data_fn: ``data_fn(key, step) -> Batch`` (pure, traceable).
    key: PRNG key; split into the init key (if ``state`` is None) and the data stream.
    num_steps: number of updates.
    state: a state to continue from (otherwise a fresh one from the key).
    hparams: rule hyper-parameter overrides (arrays allowed; vmap over them for sweeps).
    metric_fn: optional ``metric_fn(params, batch, aux) -> dict`` (see :func:`make_update`).
    checked: check every update on device (see :func:`make_update`); metrics['guard'] [num_steps]
      holds the codes, and after the first failure every update is skipped (the state stays at
      the last good one).

  Returns:
    (final state, metrics with a leading [num_steps] axis).
  """
  _check_steps(num_steps)
  k_init, k_data = jax.random.split(key)
  if state is None:
    state = init_state(rule, opt, k_init)
  update = make_update(rule, opt, metric_fn, checked=checked)
  if checked:
    return _run_checked(update, data_fn, k_data, state, hparams, num_steps)

  def body(st, _):
    batch = data_fn(jax.random.fold_in(k_data, st.step), st.step)
    return update(st, batch, hparams)

  return jax.lax.scan(body, state, jnp.arange(num_steps))


def _run_checked(update, data_fn, k_data, state, hparams, num_steps):
  """:func:`run`'s scan with the first failure carried: later updates are skipped."""

  def body(carry, _):
    st, failed = carry
    batch = data_fn(jax.random.fold_in(k_data, st.step), st.step)
    new, m = update(st, batch, hparams)
    m = {**m, "guard": jnp.where(failed != 0, failed, m["guard"])}
    return (guards.keep_if_ok(failed, new, st), m["guard"]), m

  (state, _), metrics = jax.lax.scan(body, (state, jnp.zeros((), jnp.int32)), None,
                                     length=num_steps)
  return state, metrics


def sweep(rule: Rule, opt: optax.GradientTransformation, data_fn: Callable, keys, num_steps: int,
          hparams=None, metric_fn: Optional[Callable] = None, *, checked: bool = False,
          seed_axis: str = "auto"):
  """:func:`run` for every seed key: seeds a ``jax.vmap`` axis of one program, or a loop.

  Before compiling, :func:`check_memory` checks that the online traces of all S seeds fit (also
  for a loop, which holds one seed's at a time: the check stays on the safe side).

  Args:
    rule, opt, data_fn, num_steps, metric_fn: as in :func:`run`.
    keys: PRNG keys, [S].
    hparams: hyper-parameter overrides shared by every seed, or arrays with a leading [S] axis
      (one value per seed, e.g. a λ sweep).
    checked: check every update on device (see :func:`run`).
    seed_axis: 'vmap', 'loop' or 'auto' (default: a loop on CPU, a vmap on GPU/TPU; see
      :func:`~bplambda_jax.training.resolve_seed_axis`). The numbers agree to rounding.

  Returns:
    (final states, metrics [S, num_steps]), every leaf with a leading [S] axis.
  """
  _check_steps(num_steps)
  axis = parallel.resolve_seed_axis(seed_axis)
  keys = jnp.asarray(keys) if not isinstance(keys, jax.Array) else keys
  S = keys.shape[0]
  k0 = keys[0]
  params = jax.eval_shape(lambda k: rule.init(jax.random.split(k)[0]), k0)
  batch = jax.eval_shape(lambda k: data_fn(k, jnp.zeros((), jnp.int32)), k0)
  check_memory(rule, params, batch.x.shape[1], seeds=S)
  per_seed = hparams is not None and all(jnp.ndim(v) == 1 for v in hparams.values())
  fn = lambda k, hp: run(rule, opt, data_fn, k, num_steps, hparams=hp, metric_fn=metric_fn,
                         checked=checked)
  return parallel.map_seeds(fn, axis, in_axes=(0, 0 if per_seed else None))(keys, hparams)
