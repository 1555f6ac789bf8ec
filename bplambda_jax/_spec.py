"""The one grammar of rule and sensitivity names, with options.

A spec is ``name``, ``name:k`` (an integer argument) or either followed by options in
parentheses, and may start with a label::

    bptt      tbptt:3      bp_lambda(flavour=state, trace=dense, lambda_=0.9)
    dni:3(bootstrap=gamma, gamma=0.9)      fast=bp_lambda(lambda_=0.5)

An option's value is ``true``/``false``, ``none``, an integer, a number, or a word (``state``,
``snap:2``, ``float32``); a value with parentheses (``mlp(hidden_layers=1, hidden_size=20)``) is
kept as text, itself a spec, for the option that reads it. The same text is accepted by the
command line (``--rule``), the JSON config (``rules``) and the Python API (``make_rule``).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from bplambda_jax._errors import ConfigError

_RESERVED = "(),="


def split_top(text: str, what: str, sep: str = ",") -> list[str]:
  """``text`` split at the ``sep`` characters outside parentheses; empty parts dropped.

  Raises:
    ConfigError for unbalanced parentheses.
  """
  parts, depth, start = [], 0, 0
  for i, ch in enumerate(text):
    if ch == "(":
      depth += 1
    elif ch == ")":
      depth -= 1
      if depth < 0:
        raise ConfigError(f"{what} {text!r} has a ')' without its '('.")
    elif ch == sep and depth == 0:
      parts.append(text[start:i])
      start = i + 1
  if depth:
    raise ConfigError(f"{what} {text!r} has a '(' without its ')'.")
  parts.append(text[start:])
  return [p.strip() for p in parts if p.strip()]


def literal(text: str) -> Any:
  """An option's value from its text: bool, None, int, float, or the text itself."""
  low = text.lower()
  if low in ("true", "false"):
    return low == "true"
  if low in ("none", "null"):
    return None
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text


def format_value(key: str, value: Any, what: str) -> str:
  """The text of an option's value, read back by :func:`literal` to the same value."""
  if value is None or isinstance(value, bool):
    text = {None: "none", True: "true", False: "false"}[value]
  elif isinstance(value, (int, float)):
    text = repr(value)
  elif isinstance(value, str) and value.strip() == value and value and (
      "(" in value or not any(c in value for c in _RESERVED)):
    text = value
  else:
    raise ConfigError(f"{what} option {key}={value!r} cannot be written in a spec: a value is "
                      f"true, false, none, a number or a word without any of {_RESERVED!r}.")
  if not isinstance(value, str) or "(" in value:
    return text
  if literal(text) != value:
    raise ConfigError(f"{what} option {key}={value!r}: a word that reads as another value "
                      f"({literal(text)!r}) cannot be a word option.")
  return text


def split_label(text: str) -> tuple[Optional[str], str]:
  """'fast=bp_lambda(lambda_=0.5)' -> ('fast', 'bp_lambda(lambda_=0.5)'); no label: (None, text).

  The label is what comes before an '=' that stands before any parenthesis."""
  head = text.partition("(")[0]
  if "=" not in head:
    return None, text.strip()
  label, _, rest = text.partition("=")
  return label.strip(), rest.strip()


def parse_options(spec: str, what: str) -> tuple[str, dict]:
  """'bp_lambda(trace=dense, lambda_=0.9)' -> ('bp_lambda', {'trace': 'dense', 'lambda_': 0.9}).

  Raises:
    ConfigError for text after the closing parenthesis, an option without '=', an empty key or
    an option given twice.
  """
  if not isinstance(spec, str):
    raise ConfigError(f"a {what} spec must be a string such as 'rtrl', 'snap:2' or "
                      f"'bp_lambda(lambda_=0.5)', got {spec!r}.")
  text = spec.strip()
  head, paren, rest = text.partition("(")
  if not paren:
    split_top(text, what)  # a lone ')' is refused
    return head.strip(), {}
  if not rest.endswith(")"):
    raise ConfigError(f"{what} {spec!r}: options go in one pair of parentheses at the end, "
                      f"e.g. 'bp_lambda(lambda_=0.5, trace=dense)'.")
  options = {}
  for item in split_top(rest[:-1], f"{what} {spec!r}"):
    key, eq, value = item.partition("=")
    key = key.strip()
    if not eq or not key or not value.strip():
      raise ConfigError(f"{what} {spec!r}: option {item!r} must be key=value, e.g. "
                        f"'lambda_=0.5'.")
    if key in options:
      raise ConfigError(f"{what} {spec!r} gives option {key!r} twice.")
    options[key] = literal(value.strip())
  return head.strip(), options


def parse_spec(spec: str, plain: Sequence[str], with_arg: Mapping[str, tuple[str, int]],
               what: str) -> tuple[str, Optional[int]]:
  """'snap:2' -> ('snap', 2); 'rtrl' -> ('rtrl', None) (a name without options).

  Args:
    spec: the name, e.g. 'tbptt:3'.
    plain: names that take no argument.
    with_arg: {name: (argument name, minimum)} for names that take ':k'.
    what: 'rule' or 'sensitivity', for messages.

  Raises:
    ConfigError naming the accepted names, for an unknown name, a missing or extra argument, or
    an argument that is not an integer at least its minimum.
  """
  if not isinstance(spec, str):
    raise ConfigError(f"a {what} spec must be a string such as 'rtrl' or 'snap:2', got {spec!r}.")
  name, colon, arg = spec.strip().partition(":")
  accepted = ", ".join(list(plain) + [f"{n}:{a}" for n, (a, _) in with_arg.items()])
  if name not in plain and name not in with_arg:
    raise ConfigError(f"unknown {what} {spec!r}; accepted: {accepted}.")
  if name in plain:
    if colon:
      raise ConfigError(f"{what} {name!r} takes no argument, got {spec!r}.")
    return name, None
  arg_name, minimum = with_arg[name]
  if not arg:
    raise ConfigError(f"{what} {name!r} needs an integer argument {arg_name}: "
                      f"'{name}:{arg_name}', e.g. '{name}:{max(minimum, 2)}'.")
  return name, check_arg(name, arg_name, arg, minimum, what)


def check_arg(name: str, arg_name: str, value: Any, minimum: int, what: str) -> int:
  """The argument k of ``name:k`` (text or int) as an int >= ``minimum``; ConfigError if not."""
  try:
    if isinstance(value, bool) or isinstance(value, float):
      raise ValueError
    k = int(value)
  except ValueError:
    raise ConfigError(f"{what} {name!r}: {arg_name} must be an integer, got {value!r}.") from None
  if k < minimum:
    raise ConfigError(f"{what} {name!r}: {arg_name} must be >= {minimum}, got {k}.")
  return k
