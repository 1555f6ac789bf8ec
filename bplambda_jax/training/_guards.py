"""Guards on values, on device: bad data, bad hyper-parameters and divergence never pass silently.

Under ``jit`` and ``vmap`` a NaN or an out-of-range value cannot raise an exception. Instead a
checked update computes a failure code (an int32 scalar per seed, 0 when all is well), skips the
update when it is not 0 (the state stays at its last good value), and reports the code; the
drivers turn it into an error naming the quantity, the step and the seed
(:func:`guard_message`). The checks, in order:

====  =====================================================================================
code  failure
====  =====================================================================================
1     non-finite input data (batch.x)
2     non-finite targets (batch.y), or a mask that is not finite and >= 0
3     class labels outside [0, D_out)
4     a hyper-parameter out of range (λ and γ in [0, 1]; sg_scale ≥ 0 and finite)
5     non-finite loss
6     non-finite gradients
7     non-finite learning signals (for BP(λ) and DNI: the synthetic gradients)
8     non-finite parameters after the update
====  =====================================================================================

Each check is one reduction over arrays the update computes anyway: cheap next to the update.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp

GUARD_CODES = {
    1: "non-finite input data (batch.x)",
    2: "non-finite targets (batch.y) or a mask that is not finite and >= 0 (batch.mask)",
    3: "class labels outside [0, output_size)",
    4: "a hyper-parameter out of range (lambda_ and gamma must lie in [0, 1], sg_scale must be "
       "finite and >= 0)",
    5: "non-finite loss",
    6: "non-finite gradients",
    7: "non-finite learning signals (synthetic gradients)",
    8: "non-finite parameters after the update",
}
_UNIT_INTERVAL = ("lambda_", "gamma")
_NONNEGATIVE = ("sg_scale",)


def _finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(l)) for l in jax.tree.leaves(tree)
            if jnp.issubdtype(l.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def first_failure(*checks) -> jax.Array:
  """The code of the first failed (code, ok) check, 0 if none failed; an int32 scalar."""
  code = jnp.zeros((), jnp.int32)
  for c, ok in reversed(checks):
    code = jnp.where(ok, code, jnp.int32(c))
  return code


def input_checks(output_size: int, loss: str, batch, hparams: Optional[Mapping[str, Any]]):
  """(code, ok) pairs for the data and the hyper-parameters of one update."""
  mask_ok = jnp.all(jnp.isfinite(batch.mask) & (batch.mask >= 0))
  checks = [(1, _finite(batch.x)), (2, _finite(batch.y) & mask_ok)]
  if loss == "ce":
    checks.append((3, jnp.all((batch.y >= 0) & (batch.y < output_size))))
  ok = jnp.asarray(True)
  for name, value in dict(hparams or {}).items():
    v = jnp.asarray(value)
    if name in _UNIT_INTERVAL:
      ok &= jnp.all((v >= 0) & (v <= 1))
    elif name in _NONNEGATIVE:
      ok &= jnp.all(jnp.isfinite(v) & (v >= 0))
  checks.append((4, ok))
  return checks


def output_checks(loss, grads, learning_signal, new_params):
  """(code, ok) pairs for what an update computed."""
  return [(5, jnp.all(jnp.isfinite(loss))), (6, _finite(grads)),
          (7, _finite(learning_signal)), (8, _finite(new_params))]


def keep_if_ok(code, new, old):
  """``new`` where code == 0, else ``old`` (leaf by leaf): a failed update is skipped."""
  return jax.tree.map(lambda n, o: jnp.where(code == 0, n, o), new, old)


def guard_message(code: int, *, step: Optional[int] = None, seed: Optional[int] = None,
                  rule: Optional[str] = None) -> str:
  """A sentence for a failure code: what was wrong, where (``step``: the update, counted from 1),
  and what to do."""
  what = GUARD_CODES.get(int(code), f"unknown failure code {int(code)}")
  where = ", ".join(x for x in (f"rule {rule!r}" if rule else "",
                                f"seed {seed}" if seed is not None else "",
                                f"update {step}" if step is not None else "") if x)
  hint = ("lower the learning rates or check the data" if code >= 5 else
          "fix the data or the hyper-parameters")
  return f"{what}{' at ' + where if where else ''}: training stopped ({hint})."
