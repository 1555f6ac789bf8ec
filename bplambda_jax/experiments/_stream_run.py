"""Streaming experiments: rules learning on one unbounded stream, weights updated every k steps.

``bplambda run`` trains on batches of whole sequences (each update starts the network afresh), so
it cannot stream; :func:`run_stream` is the streaming counterpart, behind ``bplambda stream``. Every
rule (each seed vmapped) sees the same streams and starts from the same network per seed, and
learns through :func:`bplambda_jax.training.stream`: the network's state is never reset, and the
optimiser is applied every ``every`` steps. The error reported is the prequential one, each step's
prediction made before the step's update, averaged over the last ``tail`` fraction of the stream,
next to the best memoryless predictor's error on the very same steps.

The one streaming task is trace conditioning (:mod:`bplambda_jax.tasks`: ``TraceConfig``).
"""

from __future__ import annotations

import inspect
import time
from typing import Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bplambda_jax import _validation
from bplambda_jax import tasks
from bplambda_jax import training
from bplambda_jax._errors import ConfigError
from bplambda_jax.model import make_model
from bplambda_jax.rules import make_rule

STREAM_TASKS = ("trace-conditioning",)


def _segments(rule, batch):
  """The chunk of the stream as the driver's steps: [T, ...] per step, [T/n, n, ...] for a chunk
  rule (truncated BPTT: n steps per call)."""
  if rule.chunk is None:
    return batch
  n = rule.chunk
  return jax.tree.map(lambda a: a.reshape(a.shape[0] // n, n, *a.shape[1:]), batch)


def _rule_program(rule, opt, every, trace, batch_size, chunk, dtype):
  """(init, chunk) programs of one rule, mapped over seeds: init(key) -> state; chunk(state) ->
  (state, (loss [chunk], the memoryless predictor's loss [chunk], guard codes)), per seed."""
  drv = training.stream(rule, opt, every=every)

  def init(key):
    k_model, k_rule, k_data = jax.random.split(key, 3)
    params = {**rule.init(k_rule), **rule.model.init(k_model)}
    return drv.init(params, batch_size), tasks.trace_init(k_data, batch_size, trace)

  def run_chunk(state):
    st, data = state
    data, batch = tasks.trace_chunk(data, chunk, trace, dtype)
    st, m = drv.run(st, *_segments(rule, batch))
    # a chunk rule's loss is its n steps' losses summed: the mean loss per step, repeated
    loss = m["loss"] if rule.chunk is None else jnp.repeat(m["loss"] / rule.chunk, rule.chunk)
    base = jnp.mean((tasks.trace_memoryless_prediction(batch.x, trace) - batch.y) ** 2,
                    axis=(1, 2))
    return (st, data), (loss, base, m["guard"])

  return jax.jit(jax.vmap(init)), jax.jit(jax.vmap(run_chunk))


def _checked(rules, trace, cell, hidden_size, batch_size, steps, chunk, every, lr, lr_synth,
             seeds, seed, tail, rule_options, dtype):
  """The settings checked before anything is compiled: (settings dict, {spec: rule});
  ConfigError naming the argument and its accepted range."""
  try:
    trace = trace.checked()
    steps = _validation.integer("steps", steps, minimum=1)
    chunk = _validation.integer("chunk", chunk, minimum=1)
    if steps % chunk:
      raise ValueError(f"steps must be a multiple of chunk = {chunk}, got {steps}.")
    settings = dict(
        task="trace-conditioning", rules=list(rules), trace=trace._asdict(), cell=cell,
        hidden_size=_validation.integer("hidden_size", hidden_size, minimum=1),
        batch_size=_validation.integer("batch_size", batch_size, minimum=1), steps=steps,
        chunk=chunk, every=_validation.integer("every", every, minimum=1),
        lr=_validation.number("lr", lr, minimum=0.0),
        lr_synth=_validation.number("lr_synth", lr_synth, minimum=0.0),
        seeds=_validation.integer("seeds", seeds, minimum=1),
        seed=_validation.integer("seed", seed, minimum=0),
        tail=_validation.number("tail", tail, above=0.0, maximum=1.0), dtype=str(jnp.dtype(dtype)),
        rule_options={k: dict(v) for k, v in (rule_options or {}).items()})
    if not rules:
      raise ValueError("rules must name at least one rule.")
    model = make_model(cell, "mse", trace.input_size, 1, hidden_size,
                       param_dtype=jnp.dtype(dtype))
    built = {}
    for spec in rules:
      rule = make_rule(spec, model, **settings["rule_options"].get(spec, {}))
      if rule.step is None:
        raise ValueError(f"rule {spec!r} needs whole sequences; a stream has none (use an online "
                         f"rule or tbptt:n).")
      if rule.chunk is not None and chunk % rule.chunk:
        raise ValueError(f"chunk = {chunk} must be a multiple of rule {spec!r}'s n = "
                         f"{rule.chunk}.")
      built[spec] = rule
  except ConfigError:
    raise
  except ValueError as e:
    raise ConfigError(str(e)) from None
  return settings, built


def stream_settings(rules: Sequence[str] = ("bp_lambda",), **kwargs) -> dict:
  """The settings :func:`run_stream` would run with these arguments, checked, as a dict (nothing
  compiled): ``bplambda stream --print-config``."""
  defaults = {k: p.default for k, p in inspect.signature(run_stream).parameters.items()
              if k not in ("rules", "verbose")}
  unknown = set(kwargs) - set(defaults)
  if unknown:
    raise ConfigError(f"stream_settings got unknown arguments {sorted(unknown)}; accepted: "
                      f"{', '.join(defaults)}.")
  return _checked(rules, **{**defaults, **kwargs})[0]


def run_stream(rules: Sequence[str] = ("bp_lambda",), *,
               trace: tasks.TraceConfig = tasks.TraceConfig(), cell: str = "elementwise_lstm",
               hidden_size: int = 16, batch_size: int = 4, steps: int = 10_000,
               chunk: int = 500, every: int = 1, lr: float = 1e-2, lr_synth: float = 1e-3,
               seeds: int = 1, seed: int = 0, tail: float = 0.25,
               rule_options: Optional[Mapping[str, Mapping]] = None,
               dtype: str = "float32", verbose: bool = False) -> dict:
  """Train each rule on the trace-conditioning stream and score it against the memoryless one.

  Args:
    rules: rule specs (``make_rule``): 'bp_lambda', 'eprop', 'rtrl', 'columnar_rtrl', 'snap:1',
      'tbptt:n', ... (a chunk rule's n must divide ``chunk``).
    trace: the trials.
    cell, hidden_size: the network (a library cell name, ``make_model``); readout linear, MSE.
    batch_size: B independent streams learned together (one update uses all B).
    steps: the stream's length, a multiple of ``chunk``.
    chunk: steps per compiled call (the loss curve has one point per chunk).
    every: an optimiser update every this many steps (chunks of n steps for a chunk rule).
    lr: Adam's learning rate on the cell and the readout (``training.optimiser``).
    lr_synth: Adam's learning rate on a synthesiser (BP(λ)'s ĝ; other rules have none).
    seeds: seeds ``seed … seed + seeds − 1``, vmapped; seed i fixes the network and the streams,
      the same for every rule.
    tail: the fraction of the stream (its end) that the error is averaged over, in (0, 1].
    rule_options: per-spec keyword arguments of ``make_rule``, e.g. {'bp_lambda': {'lambda_': 1}}.
    dtype: 'float32' or 'float64' (the latter needs ``jax_enable_x64``).
    verbose: print a line per rule.

  Returns:
    the settings (:func:`stream_settings`) with 'memoryless_mse' (the closed form) and
    'results': {spec: {'tail_mse': [S], 'memoryless_tail_mse': [S] (on the same steps),
    'curve': [steps / chunk, S] mean loss per chunk, 'seconds'}}.
    A bad argument raises ConfigError before anything is compiled; a failed on-device check
    (non-finite loss, divergence, ...) raises GuardError.
  """
  settings, built = _checked(rules, trace, cell, hidden_size, batch_size, steps, chunk, every,
                             lr, lr_synth, seeds, seed, tail, rule_options, dtype)
  trace = tasks.TraceConfig(**settings["trace"])
  opt = training.optimiser(lr, lr, lr_synth)
  keys = jnp.stack([jax.random.key(seed + i) for i in range(seeds)])
  first = steps - max(1, int(round(tail * steps)))
  out = {}
  for spec, rule in built.items():
    init, run_chunk = _rule_program(rule, opt, every, trace, batch_size, chunk, jnp.dtype(dtype))
    start, state, losses, bases = time.perf_counter(), init(keys), [], []
    for _ in range(steps // chunk):
      state, (loss, base, guard) = run_chunk(state)
      training.raise_if_failed({"guard": guard}, rule=spec)
      losses.append(np.asarray(loss))
      bases.append(np.asarray(base))
    loss, base = np.concatenate(losses, axis=1), np.concatenate(bases, axis=1)  # [S, steps]
    out[spec] = {"tail_mse": loss[:, first:].mean(axis=1).tolist(),
                 "memoryless_tail_mse": base[:, first:].mean(axis=1).tolist(),
                 "curve": loss.reshape(seeds, -1, chunk).mean(axis=2).T.tolist(),
                 "seconds": time.perf_counter() - start}
    if verbose:
      print(f"{spec}: {steps} steps × {seeds} seed(s) in {out[spec]['seconds']:.1f} s")
  return {**settings, "memoryless_mse": tasks.trace_memoryless_mse(trace), "results": out}
