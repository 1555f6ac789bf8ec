"""Trace conditioning: one unbounded stream of trials whose signal comes a delay after its cue.

Each of the B streams is a sequence of trials, as in the animal-learning prediction testbeds of
Rafiee et al. (2020, "trace conditioning"). A trial starts with the cue (the conditioned stimulus,
CS, one step on input channel 0); ``isi`` steps later (the inter-stimulus interval, ISI, fixed or
drawn uniformly from ``[isi_min, isi_max]`` per trial) comes the unconditioned stimulus (US, one
step on input channel 1); ``iti`` steps after the US (the inter-trial interval, drawn uniformly from
``[iti_min, iti_max]`` per trial) the next trial's CS. The stream begins at a random point of an
inter-trial interval. Optional distractors (channels 2 … 1 + ``distractors``) are independent
Bernoulli(``distractor_rate``) blips carrying no information about the US.

The target is the next step's US, ``y_t = US_{t+1}`` ([T, B, 1], MSE): a prediction one step ahead.
Between the CS and the US nothing in the input says that a US is coming, so a predictor must keep
the cue in memory for the ISI; with a fixed ISI a model with memory can reach zero error, while the
best *memoryless* predictor (a function of the current input alone) cannot do better than
:func:`trace_memoryless_mse`.

The generator is a pure function of its state: :func:`trace_init` draws the state from a key,
:func:`trace_chunk` returns the next T steps and the state after them (a ``lax.scan``, jittable),
so consecutive chunks are one continuous stream: ``trace_chunk(s, T1)`` then ``T2`` equals
``trace_chunk(s, T1 + T2)``.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from bplambda_jax import _validation
from bplambda_jax.model import Batch

CS, US = 0, 1  # the input channels of the cue and the signal


class TraceConfig(NamedTuple):
  """The trials of a trace-conditioning stream (all in steps; see the module docstring).

  Attributes:
    isi_min, isi_max: the inter-stimulus interval, CS to US, uniform in [isi_min, isi_max]
      (equal: fixed); isi_min >= 2 (with 1 the current input would give the US away).
    iti_min, iti_max: the inter-trial interval, US to the next CS, uniform in [iti_min, iti_max];
      iti_min >= 1.
    distractors: the number of distractor channels (>= 0).
    distractor_rate: each distractor's probability of a blip per step, in [0, 1].
  """

  isi_min: int = 8
  isi_max: int = 8
  iti_min: int = 8
  iti_max: int = 24
  distractors: int = 0
  distractor_rate: float = 0.1

  @property
  def input_size(self) -> int:
    """D_in = 2 + distractors (CS, US, distractors)."""
    return 2 + self.distractors

  def checked(self) -> "TraceConfig":
    """This config with its values checked (ValueError naming the argument and its range)."""
    isi_min = _validation.integer("isi_min", self.isi_min, minimum=2)
    isi_max = _validation.integer("isi_max", self.isi_max, minimum=isi_min,
                                  what=f"an integer >= isi_min = {isi_min}")
    iti_min = _validation.integer("iti_min", self.iti_min, minimum=1)
    iti_max = _validation.integer("iti_max", self.iti_max, minimum=iti_min,
                                  what=f"an integer >= iti_min = {iti_min}")
    return TraceConfig(isi_min, isi_max, iti_min, iti_max,
                       _validation.integer("distractors", self.distractors, minimum=0),
                       _validation.number("distractor_rate", self.distractor_rate, minimum=0.0,
                                          maximum=1.0))


class TraceState(NamedTuple):
  """Where each of the B streams is (every field [B]).

  Attributes:
    key: each stream's key, [B] keys.
    pos: steps since the current trial's CS (negative before the stream's first CS), int32.
    isi: the current trial's ISI, int32.
    length: the current trial's length, ISI + ITI (its next CS is at pos = length), int32.
  """

  key: jax.Array
  pos: jax.Array
  isi: jax.Array
  length: jax.Array


def _draw_trial(key, cfg: TraceConfig):
  """(isi, length) of a new trial."""
  k_isi, k_iti = jax.random.split(key)
  isi = jax.random.randint(k_isi, (), cfg.isi_min, cfg.isi_max + 1)
  iti = jax.random.randint(k_iti, (), cfg.iti_min, cfg.iti_max + 1)
  return isi, isi + iti


def trace_init(key: jax.Array, batch_size: int, cfg: TraceConfig = TraceConfig()) -> TraceState:
  """B independent streams, each starting at a random step of an inter-trial interval."""
  cfg = cfg.checked()
  B = _validation.integer("batch_size", batch_size, minimum=1)

  def one(k):
    k_start, k_trial, k_next = jax.random.split(k, 3)
    isi, length = _draw_trial(k_trial, cfg)
    pos = -jax.random.randint(k_start, (), 1, cfg.iti_max + 1)
    return TraceState(k_next, pos, isi, length)

  return jax.vmap(one)(jax.random.split(key, B))


def _step(cfg: TraceConfig, dtype, s: TraceState):
  """One stream's step: (state after it, x_t [D_in], y_t [1])."""
  key, k_trial, k_dis = jax.random.split(s.key, 3)
  cs, us = s.pos == 0, s.pos == s.isi
  x = jnp.concatenate([jnp.stack([cs, us]).astype(dtype), jax.random.bernoulli(
      k_dis, cfg.distractor_rate, (cfg.distractors,)).astype(dtype)])
  y = (s.pos + 1 == s.isi).astype(dtype)[None]  # the next step's US
  pos = s.pos + 1
  isi, length = _draw_trial(k_trial, cfg)
  new = pos == s.length  # the next trial's CS
  return TraceState(key, jnp.where(new, 0, pos), jnp.where(new, isi, s.isi),
                    jnp.where(new, length, s.length)), x, y


def trace_chunk(state: TraceState, length: int, cfg: TraceConfig = TraceConfig(),
                dtype=jnp.float32) -> tuple[TraceState, Batch]:
  """The next ``length`` steps of the streams and the state after them.

  Args:
    state: the streams' state ([B] fields, :func:`trace_init` or a previous chunk's).
    length: T, the number of steps (a Python int >= 1).
    cfg: the trials (the same for every chunk of a stream).
    dtype: the data's float dtype.

  Returns:
    (state, Batch(x [T, B, 2 + distractors], y [T, B, 1] the next step's US, mask [T, B] ones)).
  """
  cfg = cfg.checked()
  T = _validation.integer("length", length, minimum=1)
  B = state.pos.shape[0]
  chex.assert_shape((state.pos, state.isi, state.length), (B,))

  def body(s, _):
    s, x, y = jax.vmap(lambda si: _step(cfg, dtype, si))(s)
    return s, (x, y)

  state, (x, y) = jax.lax.scan(body, state, None, length=T)
  chex.assert_shape(x, (T, B, cfg.input_size))
  return state, Batch(x, y, jnp.ones((T, B), dtype))


def trace_memoryless_mse(cfg: TraceConfig = TraceConfig()) -> float:
  """The long-run MSE of the best memoryless predictor of the next step's US, in closed form.

  A memoryless predictor sees x_t only. After a CS or a US step the next step is never a US
  (isi_min >= 2, iti_min >= 1), so the best prediction there is 0, with no error; distractors are
  independent of the trials, so they do not help. On the other steps (the "empty" ones, L − 2 per
  trial of length L) the best prediction is the long-run frequency of a US next,
  p = 1 / (E[L] − 2) (one US per trial: renewal–reward), and the error there is p (1 − p). Over
  the whole stream: ((E[L] − 2) / E[L]) · p (1 − p) = (1 − p) / E[L].
  """
  cfg = cfg.checked()
  mean_length = (cfg.isi_min + cfg.isi_max + cfg.iti_min + cfg.iti_max) / 2
  p = 1.0 / (mean_length - 2)
  return (1.0 - p) / mean_length


def trace_memoryless_prediction(x: jax.Array, cfg: TraceConfig = TraceConfig()) -> jax.Array:
  """The best memoryless predictor's output for inputs x [..., D_in]: [..., 1] (see
  :func:`trace_memoryless_mse`); its MSE on a stream is the baseline on that very stream."""
  cfg = cfg.checked()
  mean_length = (cfg.isi_min + cfg.isi_max + cfg.iti_min + cfg.iti_max) / 2
  empty = (x[..., CS] == 0) & (x[..., US] == 0)
  return jnp.where(empty, 1.0 / (mean_length - 2), 0.0).astype(x.dtype)[..., None]
