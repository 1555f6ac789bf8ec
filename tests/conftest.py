"""Test configuration: the users' float32 by default, float64 and XLA's defaults by marker.

* ``@pytest.mark.x64`` (or ``pytestmark = pytest.mark.x64`` for a module): the test runs with
  ``jax_enable_x64`` on (the float64 oracle tests); the previous setting is restored after the
  test. Every other test runs in JAX's default float32, as users do. The switch is per test, so it holds under
  pytest-xdist too (each worker process applies it to the tests it runs).
* The tests compile many small programs; XLA's heavy optimisation passes dominate their run time
  and change no result beyond rounding, so they are turned off for the session (never in the
  library), except for tests marked ``@pytest.mark.xla_default``: before and after each of those,
  JAX's compilation caches are cleared (the flag is read when a program is compiled, and is not
  part of the cache key), so they compile and run with XLA's default optimisations, as users do
  (tests/test_float32_lane.py: every rule against its oracle in float32). The processes the
  tests start (the CLI as users run it, notebooks, multi-process sweeps) inherit the same setting
  through ``JAX_DISABLE_MOST_OPTIMIZATIONS``.
"""

import os

import jax
import pytest

os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"  # for the processes the tests start
jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture(autouse=True)
def _precision_and_xla(request):
  """x64 on for tests marked ``x64``; XLA's default optimisations (with fresh compilation caches)
  for tests marked ``xla_default``; both restored afterwards."""
  x64 = request.node.get_closest_marker("x64") is not None
  default_xla = request.node.get_closest_marker("xla_default") is not None
  was_x64 = jax.config.read("jax_enable_x64")
  was_disabled = jax.config.read("jax_disable_most_optimizations")
  if default_xla:
    jax.clear_caches()
    jax.config.update("jax_disable_most_optimizations", False)
  if x64:
    jax.config.update("jax_enable_x64", True)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", was_x64)
    if default_xla:
      jax.clear_caches()
      jax.config.update("jax_disable_most_optimizations", was_disabled)
