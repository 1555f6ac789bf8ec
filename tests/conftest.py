"""Test configuration: float64 everywhere (float32 tests cast explicitly).

The tests compile many small programs; XLA's heavy optimisation passes dominate their run time
and change no result beyond rounding, so they are turned off here (never in the library).
"""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_disable_most_optimizations", True)
