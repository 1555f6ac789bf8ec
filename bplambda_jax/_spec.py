"""The one grammar of rule and sensitivity names: ``name`` or ``name:k`` with an integer k."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence


def parse_spec(spec: str, plain: Sequence[str], with_arg: Mapping[str, tuple[str, int]],
               what: str) -> tuple[str, Optional[int]]:
  """'snap:2' -> ('snap', 2); 'rtrl' -> ('rtrl', None).

  Args:
    spec: the name, e.g. 'tbptt:3'.
    plain: names that take no argument.
    with_arg: {name: (argument name, minimum)} for names that take ':k'.
    what: 'rule' or 'sensitivity', for messages.

  Raises:
    ValueError naming the accepted names, for an unknown name, a missing or extra argument, or
    an argument that is not an integer at least its minimum.
  """
  if not isinstance(spec, str):
    raise ValueError(f"a {what} spec must be a string such as 'rtrl' or 'snap:2', got {spec!r}.")
  name, colon, arg = spec.strip().partition(":")
  accepted = ", ".join(list(plain) + [f"{n}:{a}" for n, (a, _) in with_arg.items()])
  if name not in plain and name not in with_arg:
    raise ValueError(f"unknown {what} {spec!r}; accepted: {accepted}.")
  if name in plain:
    if colon:
      raise ValueError(f"{what} {name!r} takes no argument, got {spec!r}.")
    return name, None
  arg_name, minimum = with_arg[name]
  if not arg:
    raise ValueError(f"{what} {name!r} needs an integer argument {arg_name}: "
                     f"'{name}:{arg_name}', e.g. '{name}:{max(minimum, 2)}'.")
  try:
    k = int(arg)
  except ValueError:
    raise ValueError(f"{what} {name!r}: {arg_name} must be an integer, got {arg!r}.") from None
  if k < minimum:
    raise ValueError(f"{what} {name!r}: {arg_name} must be >= {minimum}, got {k}.")
  return name, k
