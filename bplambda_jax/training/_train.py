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

from bplambda_jax import _validation
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

  Each learning rate is a finite number >= 0 (a Python, numpy or concrete 0-d jax scalar). A group
  with learning rate 0 is frozen (``optax.set_to_zero``: no Adam state). The learning rate of
  every other group is an injected hyper-parameter (``optax.inject_hyperparams``, in the
  parameters' dtype): it lives in the optimiser state, where :func:`set_learning_rates` replaces
  it, traced values included, so that one compiled program trains with many learning rates (the
  same numbers as a constant learning rate).
  """
  lr_cell, lr_readout, lr_synth = (_validation.number(name, v, minimum=0.0) for name, v in (
      ("lr_cell", lr_cell), ("lr_readout", lr_readout), ("lr_synth", lr_synth)))
  injected = optax.inject_hyperparams(optax.adam, static_args=("b1", "b2", "eps", "eps_root"))

  def group(lr):
    return injected(learning_rate=lr, b1=b1, b2=b2, eps=eps) if lr > 0 else optax.set_to_zero()

  transforms = {"cell": group(lr_cell), "readout": group(lr_readout), "synth": group(lr_synth)}

  def labels(params):
    unknown = set(params) - set(GROUPS)
    if unknown:
      raise ValueError(f"params has unknown groups {sorted(unknown)}; expected {GROUPS}.")
    return {k: jax.tree.map(lambda _: k, v) for k, v in params.items()}

  return optax.partition(transforms, labels)


def set_learning_rates(opt_state, rates: dict):
  """The state of an :func:`optimiser` with the learning rates of ``rates`` ({group: rate}).

  Traceable (a rate may be a traced scalar: one compiled program for many learning rates); the
  rate is cast to the dtype the state holds it in. A group frozen when the optimiser was built
  (learning rate 0) has no learning rate to set: ValueError naming it.
  """
  inner = dict(opt_state.inner_states)
  for name, rate in rates.items():
    if name not in inner:
      raise ValueError(f"rates has unknown group {name!r}; expected some of {GROUPS}.")
    masked = inner[name]
    state = masked.inner_state
    if not hasattr(state, "hyperparams"):
      raise ValueError(f"group {name!r} is frozen (the optimiser was built with learning rate 0 "
                       f"for it); build it with a positive learning rate to set one.")
    lr = state.hyperparams["learning_rate"]
    hp = {**state.hyperparams, "learning_rate": jnp.asarray(rate, lr.dtype)}
    inner[name] = masked._replace(inner_state=state._replace(hyperparams=hp))
  return opt_state._replace(inner_states=inner)


def init_state(rule: Rule, opt: optax.GradientTransformation, key) -> TrainState:
  """Fresh parameters from ``rule.init(key)`` and the optimiser state."""
  params = rule.init(key)
  return TrainState(params, opt.init(params), jnp.zeros((), jnp.int32))


def _make_step(rule: Rule, opt, metric_fn, checked, divergence):
  """``step(state, batch, hparams) -> (new state, metrics, failure code or None)``, unguarded."""
  _validation.flag("checked", checked)
  divergence = guards.check_divergence(divergence)
  model = rule.model
  if checked and model is None:
    raise ValueError(f"the checked update (the default) needs a rule built for a model to check "
                     f"its data; rule {rule.name!r} has rule.model = None. Build the rule with "
                     f"model=..., or pass checked=False to train without checks.")

  def step(state: TrainState, batch, hparams):
    grads, aux = rule.grads(state.params, batch, hparams)
    extra = metric_fn(state.params, batch, aux) if metric_fn is not None else {}
    updates, opt_state = opt.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": aux["loss"]}
    if "td_error_norm" in aux:
      metrics["td_error_norm"] = jnp.sum(aux["td_error_norm"])
    code = None
    if checked:
      code = guards.first_failure(
          *guards.input_checks(model.output_size, model.loss.name, batch, hparams),
          *guards.output_checks(aux["loss"], grads, None, state.params, divergence))
    return TrainState(params, opt_state, state.step + 1), {**metrics, **extra}, code

  return step


def make_update(rule: Rule, opt: optax.GradientTransformation,
                metric_fn: Optional[Callable] = None, *, checked: bool = True,
                divergence: Optional[guards.Divergence] = guards.Divergence()) -> Callable:
  """``update(state, batch, hparams=None) -> (state, metrics)``: one optimiser step per batch.

  Pure and un-jitted: wrap it in ``jax.jit`` (and ``jax.vmap`` for seeds). ``metrics`` holds the
  rule's scalar diagnostics ('loss', and 'td_error_norm' summed over steps when present),
  ``metric_fn(params, batch, aux)`` evaluated on the parameters before the update, and 'guard'.

  With ``checked=True`` (the default) every update also checks, on device, the batch (finite
  inputs and targets, a finite non-negative mask, 'ce' labels in [0, D_out), 'bce' targets in
  [0, 1]), traced hyper-parameters (λ, γ in [0, 1], sg_scale ≥ 0) and what it computes (finite
  loss, gradients, learning signals and parameters, and no divergence past ``divergence``); a
  failed update is skipped, so the state keeps its last good value. Called outside ``jit`` the
  driver then raises :class:`~bplambda_jax.training.GuardError` (one host read per call); under
  ``jit``/``vmap`` it cannot, and ``metrics['guard']`` holds the code of the first failure (0: all
  is well): call :func:`~bplambda_jax.training.raise_if_failed` on the result. ``checked=False``
  skips the checks (a little faster; nothing is then reported).

  ``divergence``: the limits past which a finite run counts as diverged
  (:class:`~bplambda_jax.training.Divergence`; None: no limits, only non-finite values stop it).
  """
  step = _make_step(rule, opt, metric_fn, checked, divergence)

  def update(state: TrainState, batch, hparams=None):
    new, metrics, code = step(state, batch, hparams)
    if code is None:
      return new, metrics
    new = guards.keep_if_ok(code, new, state)
    metrics = {**metrics, "guard": code}
    if not guards.is_traced(code):
      guards.raise_if_failed(metrics, rule=rule.name, state=new)
    return new, metrics

  return update


def _check_steps(num_steps) -> int:
  return _validation.integer("num_steps", num_steps, minimum=1)


def run(rule: Rule, opt: optax.GradientTransformation, data_fn: Callable, key, num_steps: int,
        state: Optional[TrainState] = None, hparams=None, metric_fn: Optional[Callable] = None,
        *, checked: bool = True, divergence: Optional[guards.Divergence] = guards.Divergence()):
  """``num_steps`` updates in one ``lax.scan`` (no host round trips), data made on device.

  Args:
    rule, opt: the rule and optimiser.
    data_fn: ``data_fn(key, step) -> Batch`` (pure, traceable).
    key: PRNG key; split into the init key (if ``state`` is None) and the data stream.
    num_steps: number of updates (a positive Python or numpy integer).
    state: a state to continue from (otherwise a fresh one from the key).
    hparams: rule hyper-parameter overrides (arrays allowed; vmap over them for sweeps).
    metric_fn: optional ``metric_fn(params, batch, aux) -> dict`` (see :func:`make_update`).
    checked: check every update on device (see below); metrics['guard'] [num_steps] holds the
      codes, and after the first failure every update is skipped (the state stays at the last
      good one).
    divergence: the divergence limits (see :func:`make_update`).

  Called outside ``jit`` it raises :class:`~bplambda_jax.training.GuardError` after the scan if
  an update failed (one host read per call; the error holds the returned state and metrics);
  under ``jit``/``vmap`` call :func:`~bplambda_jax.training.raise_if_failed` on the metrics.

  Returns:
    (final state, metrics with a leading [num_steps] axis).
  """
  num_steps = _check_steps(num_steps)
  k_init, k_data = jax.random.split(key)
  if state is None:
    state = init_state(rule, opt, k_init)
  step = _make_step(rule, opt, metric_fn, checked, divergence)

  def body(carry, _):
    st, failed = carry
    batch = data_fn(jax.random.fold_in(k_data, st.step), st.step)
    new, m, code = step(st, batch, hparams)
    if code is None:
      return (new, failed), m
    code = jnp.where(failed != 0, failed, code)  # after a failure, every update is skipped
    return (guards.keep_if_ok(code, new, st), code), {**m, "guard": code}

  (state, failed), metrics = jax.lax.scan(body, (state, jnp.zeros((), jnp.int32)), None,
                                          length=num_steps)
  if checked and not guards.is_traced(failed) and int(failed):
    guards.raise_if_failed(metrics, rule=rule.name, state=state, axes=("update",))
  return state, metrics


def sweep(rule: Rule, opt: optax.GradientTransformation, data_fn: Callable, keys, num_steps: int,
          hparams=None, metric_fn: Optional[Callable] = None, *, checked: bool = True,
          divergence: Optional[guards.Divergence] = guards.Divergence(),
          seed_axis: str = "auto"):
  """:func:`run` for every seed key: seeds a ``jax.vmap`` axis of one program, or a loop.

  Before compiling, :func:`check_memory` checks that the online traces of all S seeds fit (also
  for a loop, which holds one seed's at a time: the check stays on the safe side).

  Args:
    rule, opt, data_fn, num_steps, metric_fn, divergence: as in :func:`run`.
    keys: PRNG keys with a leading seed axis, [S] (e.g. ``jax.random.split(key, S)``).
    hparams: hyper-parameter overrides, each a scalar shared by every seed or a sequence with
      one value per seed ([S], e.g. a λ sweep; a Python list is taken as such an array); the two
      may be mixed.
    checked: check every update on device (see :func:`run`); after the sweep, one host read
      turns a failure of any seed into a :class:`~bplambda_jax.training.GuardError` naming the
      seed (its index in ``keys``) and the update.
    seed_axis: 'vmap', 'loop' or 'auto' (default: a loop on CPU, a vmap on GPU/TPU; see
      :func:`~bplambda_jax.internals.resolve_seed_axis`). The numbers agree to rounding.

  Returns:
    (final states, metrics [S, num_steps]), every leaf with a leading [S] axis.
  """
  num_steps = _check_steps(num_steps)
  axis = parallel.resolve_seed_axis(seed_axis)
  keys = _seed_keys(keys)
  S = keys.shape[0]
  hparams, axes = _seed_hparams(hparams, S)
  k0 = keys[0]
  params = jax.eval_shape(lambda k: rule.init(jax.random.split(k)[0]), k0)
  batch = jax.eval_shape(lambda k: data_fn(k, jnp.zeros((), jnp.int32)), k0)
  check_memory(rule, params, batch.x.shape[1], seeds=S)
  fn = lambda k, hp: run(rule, opt, data_fn, k, num_steps, hparams=hp, metric_fn=metric_fn,
                         checked=checked, divergence=divergence)
  states, metrics = parallel.map_seeds(fn, axis, in_axes=(0, axes))(keys, hparams)
  if checked:
    guards.raise_if_failed(metrics, rule=rule.name, state=states, axes=("seed", "update"))
  return states, metrics


def _seed_keys(keys):
  """``keys`` checked to hold one PRNG key per seed: typed keys [S] or raw uint32 keys [S, 2]."""
  expected = ("keys must hold one PRNG key per seed, [S] (e.g. "
              "jax.random.split(jax.random.key(0), S))")
  try:
    keys = keys if isinstance(keys, jax.Array) else jnp.asarray(keys)
  except TypeError:
    raise ValueError(f"{expected}; got {type(keys).__name__}.") from None
  typed = jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key)
  per_seed = keys.ndim == 1 if typed else (keys.dtype == jnp.uint32 and keys.ndim == 2)
  if per_seed and keys.shape[0] > 0:
    return keys
  single = typed and keys.ndim == 0 or keys.dtype == jnp.uint32 and keys.ndim == 1
  raise ValueError(f"{expected}; got " + ("a single key." if single else
                   f"an array of shape {keys.shape} and dtype {keys.dtype}."))


def _seed_hparams(hparams, S):
  """(hparams as arrays, vmap in_axes): 0 for the per-seed values [S], None for scalars."""
  if hparams is None:
    return None, None
  if not isinstance(hparams, dict):
    raise ValueError(f"hparams must be a dict of hyper-parameters, got {type(hparams).__name__}.")
  values = {k: jnp.asarray(v) for k, v in hparams.items()}
  for k, v in values.items():
    if v.ndim > 1 or (v.ndim == 1 and v.shape[0] != S):
      raise ValueError(f"hparams[{k!r}] has shape {v.shape}, but there are {S} keys; give a "
                       f"scalar shared by every seed or one value per seed, shape [S] = ({S},).")
  return values, {k: 0 if v.ndim == 1 else None for k, v in values.items()}
