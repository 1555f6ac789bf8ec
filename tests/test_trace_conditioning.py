"""The trace-conditioning stream: shapes, determinism, continuity across chunks, the memoryless
baseline's closed form, and a short streaming run where long-range credit beats a short window."""

import jax
import numpy as np
import pytest

from bplambda_jax import experiments, tasks

CFG = tasks.TraceConfig(isi_min=3, isi_max=5, iti_min=2, iti_max=6, distractors=1)


def _stream(key, T, chunks=1, B=3):
  s = tasks.trace_init(key, B, CFG)
  parts, step = [], jax.jit(lambda s: tasks.trace_chunk(s, T // chunks, CFG))
  for _ in range(chunks):
    s, b = step(s)
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
  s = tasks.trace_init(jax.random.key(2), 32, CFG)
  _, b = jax.jit(lambda s: tasks.trace_chunk(s, 2000, CFG))(s)
  err = float(np.mean((tasks.trace_memoryless_prediction(b.x, CFG) - b.y) ** 2))
  assert err == pytest.approx(tasks.trace_memoryless_mse(CFG), rel=0.05)
  with pytest.raises(ValueError, match="isi_min"):
    tasks.trace_init(jax.random.key(0), 2, tasks.TraceConfig(isi_min=1))


@pytest.mark.slow  # ~20 s on a busy two-core machine: two rules streamed for 2,000 steps
def test_long_range_credit_beats_a_window_shorter_than_the_delay():
  trace = tasks.TraceConfig(isi_min=6, isi_max=6, iti_min=4, iti_max=12)
  res = experiments.run_stream(["eprop", "tbptt:2"], trace=trace, cell="elementwise_lstm",
                               hidden_size=8, batch_size=4, steps=2000, chunk=500, lr=1e-2)
  eprop, tbptt = (res["results"][r] for r in ("eprop", "tbptt:2"))
  base = eprop["memoryless_tail_mse"][0]
  assert tbptt["memoryless_tail_mse"][0] == base  # the same stream for both rules
  assert eprop["tail_mse"][0] < 0.75 * base  # e-prop learns to time the US
  assert tbptt["tail_mse"][0] > 0.9 * base   # a window of 2 < ISI = 6 cannot
