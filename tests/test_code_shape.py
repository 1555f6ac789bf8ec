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


def _private_imports(source: str, package_dir: pathlib.Path, path: pathlib.Path):
  """Underscore names that a module imports from another module of the library (a private
  *module* such as ``_validation`` is fine: it is a shared private utility)."""
  bad = []
  for node in ast.walk(ast.parse(source)):
    if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("bplambda_jax"):
      continue
    base = package_dir.parent.joinpath(*node.module.split("."))
    for alias in node.names:
      if not alias.name.startswith("_") or alias.name.startswith("__"):
        continue
      is_module = (base / f"{alias.name}.py").exists() or (base / alias.name).is_dir()
      if not is_module:
        bad.append(f"{path.name}: from {node.module} import {alias.name}")
  return bad


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_name_is_imported_across_modules(path):
  assert _private_imports(path.read_text(encoding="utf-8"), ROOT, path) == []


def test_the_import_check_catches_a_private_name(tmp_path):
  src = "from bplambda_jax.credit._sensitivities._protocol import _private\nfrom bplambda_jax import _validation\n"
  assert _private_imports(src, ROOT, tmp_path / "m.py") == [
      "m.py: from bplambda_jax.credit._sensitivities._protocol import _private"]
