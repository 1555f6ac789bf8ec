"""Checks of Python-level arguments: integers, numbers and flags, with messages naming the argument.

Accepted values:

* an **integer** is a Python ``int`` or a numpy integer (``np.int64(5)``), or a concrete 0-d integer
  array; ``True``/``False`` are not integers here;
* a **number** is a Python ``int`` or ``float``, a numpy integer or float (``np.float32(1e-3)``),
  or a concrete 0-d integer or float array (``jnp.array(1e-3)``); never a bool;
* a **flag** is ``True`` or ``False`` (or a numpy bool).

Traced values (inside ``jit``/``vmap``) are refused: these arguments shape the program. A refused
value raises :class:`~bplambda_jax.ConfigError` (a ``ValueError``) naming the argument and the
accepted range.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import jax
import numpy as np

from bplambda_jax._errors import ConfigError


def _describe(value: Any) -> str:
  if isinstance(value, (bool, int, float, str, type(None))):
    return repr(value)
  return f"{value!r} ({type(value).__name__})"


def _scalar(value: Any, kinds) -> Optional[Any]:
  """``value`` as a Python scalar if it is one of ``kinds`` (numpy dtype kinds), else None."""
  if isinstance(value, (bool, np.bool_)):
    return None
  if isinstance(value, jax.core.Tracer):
    return None
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    kind = "i" if isinstance(value, int) else "f"
    return value if kind in kinds else None
  if isinstance(value, (np.generic, np.ndarray, jax.Array)) and np.ndim(value) == 0:
    kind = {"u": "i"}.get(value.dtype.kind, value.dtype.kind)
    if kind in kinds:
      return np.asarray(value).item()
  return None


def _traced_hint(value: Any) -> str:
  return (" (a traced value: it fixes the shape of the program, so pass a Python or numpy "
          "scalar, not an array computed inside jit/vmap)" if isinstance(value, jax.core.Tracer)
          else "")


def integer(name: str, value: Any, *, minimum: Optional[int] = None,
            maximum: Optional[int] = None, what: Optional[str] = None) -> int:
  """``value`` as an int; ConfigError naming ``name`` unless it is an integer in range (see the
  module docstring). ``what`` replaces the default description ('an integer >= minimum')."""
  v = _scalar(value, "i")
  if what is None:
    what = ("a positive integer" if minimum == 1 and maximum is None else
            "an integer" + (f" >= {minimum}" if minimum is not None else "")
            + (f" <= {maximum}" if maximum is not None else ""))
  if v is None or (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
    raise ConfigError(f"{name} must be {what}, got {_describe(value)}{_traced_hint(value)}.")
  return int(v)


def number(name: str, value: Any, *, minimum: float = -math.inf, maximum: float = math.inf,
           above: Optional[float] = None, below: Optional[float] = None,
           what: Optional[str] = None) -> float:
  """``value`` as a float; ConfigError naming ``name`` unless it is a finite number in
  [minimum, maximum] (see the module docstring), and, where given, strictly greater than
  ``above`` and strictly less than ``below``."""
  v = _scalar(value, "if")
  if what is None:
    bounds = ([f">= {minimum:g}"] if minimum > -math.inf else []) + (
        [f"> {above:g}"] if above is not None else []) + (
        [f"<= {maximum:g}"] if maximum < math.inf else []) + (
        [f"< {below:g}"] if below is not None else [])
    what = "a finite number" + (" " + " and ".join(bounds) if bounds else "")
  if (v is None or not math.isfinite(v) or not minimum <= v <= maximum
      or (above is not None and not v > above) or (below is not None and not v < below)):
    raise ConfigError(f"{name} must be {what}, got {_describe(value)}{_traced_hint(value)}.")
  return float(v)


def flag(name: str, value: Any, *, allow_none: bool = False) -> Optional[bool]:
  """``value`` as a bool; ConfigError naming ``name`` unless it is True or False (or None, with
  ``allow_none``)."""
  if allow_none and value is None:
    return None
  if not isinstance(value, (bool, np.bool_)):
    accepted = "None, True or False" if allow_none else "True or False"
    raise ConfigError(f"{name} must be {accepted}, got {_describe(value)}.")
  return bool(value)
