"""The trace-conditioning stream: shapes, determinism, continuity across chunks, the memoryless
baseline's closed form, and a short streaming run where long-range credit beats a short window."""

import jax
import numpy as np
import pytest

from bplambda_jax import experiments, tasks
from bplambda_jax._errors import ConfigError
from bplambda_jax import internals

CFG = tasks.TraceConfig(isi_min=3, isi_max=5, iti_min=2, iti_max=6, distractors=1)
INIT = jax.jit(tasks.trace_init, static_argnums=(1, 2))  # one compile per shape
CHUNK = jax.jit(tasks.trace_chunk, static_argnums=(1, 2))


def _stream(key, T, chunks=1, B=3):
  s, parts = INIT(key, B, CFG), []
  for _ in range(chunks):
    s, b = CHUNK(s, T // chunks, CFG)
    parts.append(b)
  return s, jax.tree.map(lambda *a: np.concatenate(a), *parts)


def test_the_stream_is_deterministic_continuous_and_shaped():
  s, b = _stream(jax.random.key(0), 60)
  assert b.x.shape == (60, 3, 3) and b.y.shape == (60, 3, 1) and b.mask.shape == (60, 3)
  _, again = _stream(jax.random.key(0), 60)
  _, other = _stream(jax.random.key(1), 60)
  s3, chunked = _stream(jax.random.key(0), 60, chunks=3)
  np.testing.assert_array_equal(b.x, again.x)
  np.testing.assert_array_equal(b.x, chunked.x)  # chunk after chunk: one continuous stream
  np.testing.assert_array_equal(b.y, chunked.y)
  np.testing.assert_array_equal(s.pos, s3.pos)
  assert not np.array_equal(b.x, other.x)
  for i in range(3):  # every US comes isi in [3, 5] steps after its CS; y is the next step's US
    cs, us = np.flatnonzero(b.x[:, i, 0]), np.flatnonzero(b.x[:, i, 1])
    gaps = us[:, None] - cs[None, :]
    assert all(((g >= 3) & (g <= 5)).sum() == 1 for g in gaps)
    np.testing.assert_array_equal(b.y[:-1, i, 0], b.x[1:, i, 1])


def test_the_memoryless_baseline_matches_its_closed_form_on_a_long_stream():
  _, b = CHUNK(INIT(jax.random.key(2), 64, CFG), 1000, CFG)
  err = float(np.mean((tasks.trace_memoryless_prediction(b.x, CFG) - b.y) ** 2))
  assert err == pytest.approx(tasks.trace_memoryless_mse(CFG), rel=0.05)
  with pytest.raises(ValueError, match="isi_min"):
    tasks.trace_init(jax.random.key(0), 2, tasks.TraceConfig(isi_min=1))
  with pytest.raises(ConfigError, match="needs whole sequences"):  # refused before compiling
    internals.stream_settings(["bptt"])
  with pytest.raises(ConfigError, match="multiple of chunk"):
    internals.stream_settings(steps=1000, chunk=300)
  with pytest.raises(ConfigError, match="rule 'tbptt:3'"):
    internals.stream_settings(["tbptt:3"], chunk=500)


@pytest.mark.slow  # ~10 s on a busy two-core machine: two rules streamed for 2,000 steps
def test_long_range_credit_beats_a_window_shorter_than_the_delay():
  trace = tasks.TraceConfig(isi_min=6, isi_max=6, iti_min=4, iti_max=12)
  res = experiments.run_stream(["bp_lambda", "tbptt:2"], trace=trace, cell="elementwise_lstm",
                               hidden_size=8, batch_size=4, steps=2000, chunk=500, lr=1e-2)
  bpl, tbptt = (res["results"][r] for r in ("bp_lambda", "tbptt:2"))
  base = bpl["memoryless_tail_mse"][0]
  assert tbptt["memoryless_tail_mse"][0] == base  # the same stream for both rules
  # seeds 0-3 measured: BP(λ) at 0.24-0.53 of the memoryless error, tbptt:2 at 0.94-0.98
  assert bpl["tail_mse"][0] < 0.75 * base  # BP(λ) learns to time the US
  assert tbptt["tail_mse"][0] > 0.9 * base   # a window of 2 < ISI = 6 cannot


@pytest.mark.slow  # ~10 s on a busy two-core machine: two stream programs compiled
def test_frozen_weights_give_every_rule_the_same_stream_error():
  # lr = 0: the same network on the same streams, never reset, whatever the rule: the per-step
  # rule and the chunk rule (whose chunk loss is a sum over its n steps) report the same error
  res = experiments.run_stream(["eprop", "tbptt:2"], trace=CFG, cell="elementwise_lstm",
                               hidden_size=3, batch_size=2, steps=40, chunk=20, lr=0.0, tail=0.5)
  eprop, tbptt = (res["results"][r] for r in ("eprop", "tbptt:2"))
  np.testing.assert_allclose(eprop["curve"], tbptt["curve"], rtol=1e-5)
  np.testing.assert_allclose(eprop["tail_mse"], tbptt["tail_mse"], rtol=1e-5)
  assert np.asarray(eprop["curve"]).shape == (2, 1) and eprop["tail_mse"][0] > 0
