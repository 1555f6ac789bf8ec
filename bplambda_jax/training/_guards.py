"""Guards on values, on device: bad data, bad hyper-parameters and divergence never pass silently.

Under ``jit`` and ``vmap`` a NaN or an out-of-range value cannot raise an exception. Instead a
checked update (the default of every training driver) computes a failure code (an int32 scalar
per seed, 0 when all is well), skips the update when it is not 0 (the state stays at its last good
value), and reports the code. A driver called outside ``jit`` reads the code once, at the end of
the call, and raises :class:`GuardError` naming the quantity, the update and the seed
(:func:`guard_message`); under ``jit``/``vmap`` it cannot, so the code comes back in
``metrics['guard']`` and :func:`raise_if_failed` turns it into the same error on the host. The
checks, in order:

====  =====================================================================================
code  failure
====  =====================================================================================
1     non-finite input data (batch.x)
2     non-finite targets (batch.y), or a mask that is not finite and >= 0
3     class labels outside [0, D_out) (loss 'ce')
9     targets outside [0, 1] (loss 'bce': probabilities, e.g. pixels scaled to [0, 1])
4     a hyper-parameter out of range (λ and γ in [0, 1]; sg_scale ≥ 0 and finite)
5     non-finite loss
6     non-finite gradients (which a non-finite learning signal also produces)
7     non-finite learning signals (for BP(λ) and DNI: the synthetic gradients; streaming only,
      where the step returns them anyway)
8     non-finite parameters (those an update starts from)
10    divergence: a finite loss above ``Divergence.max_loss``, or parameters (those an update
      starts from) with a magnitude above ``Divergence.max_param``: the run is blowing up
      before it overflows
====  =====================================================================================

Each check is one reduction over arrays the update reads or computes anyway (the finiteness and
the size of the parameters come from the same max |θ|), and none waits for the new parameters,
so skipping a failed update fuses with the optimiser: the cost is a few percent of an update
(``benchmarks/``: the ``guard_*`` rows).
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from bplambda_jax import _validation

GUARD_CODES = {
    1: "non-finite input data (batch.x)",
    2: "non-finite targets (batch.y) or a mask that is not finite and >= 0 (batch.mask)",
    3: "class labels outside [0, output_size)",
    4: "a hyper-parameter out of range (lambda_ and gamma must lie in [0, 1], sg_scale must be "
       "finite and >= 0)",
    5: "non-finite loss",
    6: "non-finite gradients",
    7: "non-finite learning signals (synthetic gradients)",
    8: "non-finite parameters",
    9: "targets outside [0, 1] for loss 'bce' (it takes probabilities: scale raw pixels, e.g. "
       "y / 255)",
    10: "divergence: a finite loss above Divergence.max_loss (default 1e8) or a parameter "
        "with |θ| above Divergence.max_param (default 1e6)",
}
_UNIT_INTERVAL = ("lambda_", "gamma")
_NONNEGATIVE = ("sg_scale",)


class Divergence(NamedTuple):
  """When a finite run counts as diverged (guard code 10): a loss above ``max_loss`` or a
  parameter with |θ| above ``max_param``.

  The loss is the batch objective (a mean per example and per target step: O(1) for every task
  of the library), so the defaults lie far above any run that learns, and far below where float32
  overflows (3.4e38), so a run that blows up stops before its numbers turn into infinities or
  meaningless ratios.

  Attributes:
    max_loss: the largest acceptable loss, > 0.
    max_param: the largest acceptable |θ| of any parameter, > 0.
  """

  max_loss: float = 1e8
  max_param: float = 1e6


def check_divergence(divergence) -> Optional[Divergence]:
  """``divergence`` checked: a :class:`Divergence` with finite limits > 0, or None (no limits)."""
  if divergence is None:
    return None
  if not isinstance(divergence, Divergence):
    raise ValueError(f"divergence must be a training.Divergence(max_loss, max_param) or None, "
                     f"got {divergence!r}.")
  limits = {}
  for name, value in divergence._asdict().items():
    v = _validation.number(f"Divergence.{name}", value, minimum=0.0, what="a finite number > 0")
    if v == 0:
      raise ValueError(f"Divergence.{name} must be a finite number > 0, got {value!r}.")
    limits[name] = v
  return Divergence(**limits)


class GuardError(RuntimeError):
  """A checked update failed (see :data:`GUARD_CODES`).

  Attributes:
    code: the failure code.
    index: where in the guard array it was found (a tuple: (seed,), (step,), (seed, step) or ()).
    state: the state the driver returned (every seed at its last good state), or None.
    metrics: the metrics the driver returned, or None.
  """

  def __init__(self, message, code, index=(), state=None, metrics=None):
    super().__init__(message)
    self.code, self.index, self.state, self.metrics = code, index, state, metrics


def _max_abs(tree):
  """max |leaf| over the float leaves (NaN if any is NaN): one reduction per leaf."""
  tops = [jnp.max(jnp.abs(l)) for l in jax.tree.leaves(tree)
          if jnp.issubdtype(l.dtype, jnp.inexact) and l.size]
  if not tops:
    return jnp.zeros(())
  dtype = jnp.result_type(*tops)
  return jnp.max(jnp.stack([t.astype(dtype) for t in tops]))


def _finite(tree) -> jax.Array:
  return jnp.isfinite(_max_abs(tree))


def first_failure(*checks) -> jax.Array:
  """The code of the first failed (code, ok) check, 0 if none failed; an int32 scalar."""
  code = jnp.zeros((), jnp.int32)
  for c, ok in reversed(checks):
    code = jnp.where(ok, code, jnp.int32(c))
  return code


def _worst(bad_first, bad_second) -> jax.Array:
  """One reduction for two element-wise checks: 2 if any element fails the first, else 1 if any
  fails the second, else 0."""
  return jnp.max(2 * bad_first.astype(jnp.int32) + bad_second.astype(jnp.int32))


def input_checks(output_size: int, loss: str, batch, hparams: Optional[Mapping[str, Any]]):
  """(code, ok) pairs for the data and the hyper-parameters of one update (three reductions:
  the inputs, the targets, the mask)."""
  mask = batch.mask
  mask_ok = jnp.all(jnp.isfinite(mask) & (mask >= 0))
  checks = [(1, _finite(batch.x))]
  if loss == "ce":  # labels [T, B]: integer, so always finite
    checks += [(2, mask_ok), (3, jnp.all((batch.y >= 0) & (batch.y < output_size)))]
  else:
    y = batch.y
    worst = _worst(~jnp.isfinite(y), (y < 0) | (y > 1) if loss == "bce" else jnp.zeros((), bool))
    checks += [(2, (worst < 2) & mask_ok), (9, worst < 1)]
  ok = jnp.asarray(True)
  for name, value in dict(hparams or {}).items():
    v = jnp.asarray(value)
    if name in _UNIT_INTERVAL:
      ok &= jnp.all((v >= 0) & (v <= 1))
    elif name in _NONNEGATIVE:
      ok &= jnp.all(jnp.isfinite(v) & (v >= 0))
  checks.append((4, ok))
  return checks


def output_checks(loss, grads, learning_signal, params,
                  divergence: Optional[Divergence] = None):
  """(code, ok) pairs for what an update computed.

  ``params`` are the parameters the update starts from: the check then does not wait for the new
  parameters, and skipping a failed update costs no extra pass over them (it fuses with the
  optimiser's own). Adam turns finite gradients into finite steps, so non-finite new parameters
  cannot arise from finite gradients except by overflow, past ``divergence.max_param``; a step
  that crosses ``max_param`` is applied and the next update stops. ``learning_signal`` may be
  None: a non-finite learning signal also makes the gradients it produces non-finite (code 6).
  ``divergence``: the limits of code 10, or None.
  """
  top = _max_abs(params)
  checks = [(5, jnp.all(jnp.isfinite(loss))), (6, _finite(grads))]
  if learning_signal is not None:
    checks.append((7, _finite(learning_signal)))
  checks.append((8, jnp.isfinite(top)))
  if divergence is not None:
    checks.append((10, (jnp.max(loss) <= divergence.max_loss) & (top <= divergence.max_param)))
  return checks


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
  hint = ("fix the data or the hyper-parameters" if code in (1, 2, 3, 4, 9) else
          "lower the learning rates or check the data")
  return f"{what}{' at ' + where if where else ''}: training stopped ({hint})."


def is_traced(x) -> bool:
  """True inside ``jit``/``vmap``/``scan`` tracing, where a value cannot be read."""
  return any(isinstance(l, jax.core.Tracer) for l in jax.tree.leaves(x))


def raise_if_failed(metrics, *, rule: Optional[str] = None, state=None,
                    axes: Optional[tuple] = None) -> None:
  """Raise :class:`GuardError` if a checked update failed; return None otherwise.

  Use it on what a jitted (or vmapped) checked update or driver returned, once per call (one
  host read)::

      update = jax.jit(make_update(rule, opt))
      state, metrics = update(state, batch)
      raise_if_failed(metrics)          # GuardError: non-finite loss at metrics['guard'][...]

  Args:
    metrics: a metrics dict with 'guard' (any shape: [] per update, [S] per seed, [N] per step,
      [S, N]), or a :class:`~bplambda_jax.training.StreamState`.
    rule: a rule name for the message.
    state: the state to attach to the error (``GuardError.state``).
    axes: names of the guard's axes, each 'seed' or 'update' (e.g. ('seed', 'update') for a
      sweep), to say "seed i, update j" (counted from 0 and 1) instead of the array index.

  Raises:
    ValueError: ``metrics`` holds no guard (made with ``checked=False``) or is still traced.
    GuardError: the first non-zero code, in row-major order, with its index.
  """
  guard = getattr(metrics, "guard", None) if not isinstance(metrics, Mapping) else (
      metrics.get("guard"))
  if guard is None:
    raise ValueError("metrics holds no 'guard': it comes from a driver made with checked=False "
                     "(nothing was checked).")
  if is_traced(guard):
    raise ValueError("raise_if_failed reads the guard on the host: call it on the result of the "
                     "jitted function, not inside it.")
  codes = np.asarray(jax.device_get(guard))
  bad = np.argwhere(np.atleast_1d(codes) != 0)
  if not len(bad):
    return
  index = tuple(int(i) for i in bad[0])[:codes.ndim]
  code = int(codes[index])
  if axes is not None and len(axes) == len(index):
    where = dict(zip(axes, index))
    message = guard_message(code, rule=rule, seed=where.get("seed"),
                            step=where["update"] + 1 if "update" in where else None)
  else:
    message = guard_message(code, rule=rule)
    if index:
      message += f" Found at metrics['guard'][{', '.join(map(str, index))}]."
  raise GuardError(message, code, index, state, metrics if isinstance(metrics, Mapping) else None)
