"""The streaming section's tuning script (docs/results/stream_tuning.py): its closed-form best
predictor with memory against that predictor run on a generated stream, and its grids."""

import importlib.util
import os

import jax
import numpy as np
import pytest

from bplambda_jax import tasks

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                     "results", "stream_tuning.py")
_spec = importlib.util.spec_from_file_location("stream_tuning", _PATH)
st = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(st)


@pytest.mark.parametrize("cfg", [st.TRACE, tasks.TraceConfig(isi_min=3, isi_max=5, iti_min=2,
                                                             iti_max=6),
                                 tasks.TraceConfig(isi_min=6, isi_max=6)],
                         ids=["report", "short", "fixed_isi"])
def test_optimal_mse_is_the_error_of_the_optimal_predictor(cfg):
  s = tasks.trace_init(jax.random.key(0), 8, cfg)
  _, b = jax.jit(tasks.trace_chunk, static_argnums=(1, 2))(s, 20_000, cfg)
  x, y = np.asarray(b.x), np.asarray(b.y)[..., 0]
  err = np.mean([np.mean((st.optimal_prediction(x[:, i], cfg) - y[:, i])[100:] ** 2)
                 for i in range(x.shape[1])])
  assert err == pytest.approx(st.optimal_mse(cfg), rel=0.05, abs=1e-9)
  assert st.optimal_mse(cfg) < tasks.trace_memoryless_mse(cfg)  # memory helps
  if cfg.isi_min == cfg.isi_max:
    assert st.optimal_mse(cfg) == 0.0  # a fixed delay can be timed exactly


def test_every_rule_is_tuned_over_its_learning_rates():
  for cell in st.CELLS:
    for rule in st.RULES[cell]:
      points = st.grid(rule)
      assert len({p[1] for p in points}) >= 3, rule  # at least three learning rates
      if rule == "bp_lambda":  # and the synthesiser's rate, λ and γ
        assert len({p[2] for p in points}) >= 3 and len({p[0] for p in points}) >= 3
  assert all(n in st.RULES["lstm"] for n in ("tbptt:4", "tbptt:40"))
  assert 4 < st.TRACE.isi_min and 40 > st.TRACE.isi_max  # windows either side of every delay
