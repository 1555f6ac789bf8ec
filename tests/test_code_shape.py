"""The library's functions stay readable: no function over 80 lines of code (its docstring not
counted) and no def nested more than two levels inside another."""

import ast
import pathlib

import pytest

import bplambda_jax

MAX_LINES = 80
MAX_NESTING = 2  # a def inside a def inside a def, at most
ROOT = pathlib.Path(bplambda_jax.__file__).parent
FILES = sorted(ROOT.rglob("*.py"))


def _functions(tree):
  """(function node, nesting level) for every def in a module; top-level and methods are level 0."""
  out = []

  def visit(node, level):
    for child in ast.iter_child_nodes(node):
      if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
        out.append((child, level))
        visit(child, level + 1)
      else:
        visit(child, level)

  visit(tree, 0)
  return out


def _code_lines(fn) -> int:
  """Lines from the first statement after the docstring to the end of the function."""
  body = fn.body
  has_doc = (isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
             and isinstance(body[0].value.value, str))
  start = (body[1].lineno if len(body) > 1 else fn.end_lineno) if has_doc else body[0].lineno
  return fn.end_lineno - start + 1


def _violations(source: str):
  bad = []
  for fn, level in _functions(ast.parse(source)):
    if _code_lines(fn) > MAX_LINES:
      bad.append(f"{fn.name} (line {fn.lineno}): {_code_lines(fn)} lines of code")
    if level > MAX_NESTING:
      bad.append(f"{fn.name} (line {fn.lineno}): nested {level} levels deep")
  return bad


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_function_size_and_nesting(path):
  assert _violations(path.read_text(encoding="utf-8")) == []


def test_the_check_catches_long_and_deep_functions():
  long_fn = "def f():\n  '''doc'''\n" + "  x = 1\n" * (MAX_LINES + 1)
  deep = "def a():\n  def b():\n    def c():\n      def d():\n        pass\n"
  ok = "def f():\n  '''" + "doc\n" * 200 + "'''\n" + "  x = 1\n" * MAX_LINES
  assert _violations(long_fn) == [f"f (line 1): {MAX_LINES + 1} lines of code"]
  assert _violations(deep) == ["d (line 4): nested 3 levels deep"]
  assert _violations(ok) == []
