"""Every test can fail: each test function checks something (an AST scan of the test modules).

A function *checks* when its body contains an ``assert`` statement, a ``pytest.raises`` /
``pytest.warns`` / ``pytest.fail`` call, an ``assert…`` call (``np.testing.assert_allclose``,
``chex.assert_trees_all_close``, ``self.assertEqual``, ...), a call of one of the library's
validators that raise on a violation (``check_…``, e.g. ``check_structure``), or a call of another
function of the same module or of tests/helpers.py that checks (followed to a fixed point). Every
``test_…`` function and method of every tests/test_*.py must check.
"""

import ast
import pathlib

HERE = pathlib.Path(__file__).parent
_CHECK_CALLS = {"raises", "warns", "fail", "deprecated_call"}


def _called_name(call):
  f = call.func
  if isinstance(f, ast.Name):
    return f.id
  if isinstance(f, ast.Attribute):
    return f.attr
  return None


def _functions(tree):
  return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _checking_functions(trees):
  """Names of the functions (in ``trees``) that check, directly or through a call."""
  direct, calls = set(), {}
  for tree in trees:
    for fn in _functions(tree):
      names = set()
      for node in ast.walk(fn):
        if isinstance(node, ast.Assert):
          direct.add(fn.name)
        elif isinstance(node, ast.Call):
          name = _called_name(node)
          if name is None:
            continue
          if name in _CHECK_CALLS or name.startswith(("assert", "check_")):
            direct.add(fn.name)
          names.add(name)
      calls.setdefault(fn.name, set()).update(names)
  checking = set(direct)
  changed = True
  while changed:
    changed = False
    for name, called in calls.items():
      if name not in checking and called & checking:
        checking.add(name)
        changed = True
  return checking


def test_every_test_function_checks_something():
  helpers = ast.parse((HERE / "helpers.py").read_text(encoding="utf-8"))
  unchecked = []
  modules = sorted(HERE.glob("test_*.py"))
  assert len(modules) > 20
  for path in modules:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    checking = _checking_functions([tree, helpers])
    for fn in _functions(tree):
      if fn.name.startswith("test") and fn.name not in checking:
        unchecked.append(f"{path.name}::{fn.name}")
  assert not unchecked, f"test functions that check nothing: {unchecked}"


def test_the_scan_finds_a_test_that_checks_nothing():
  tree = ast.parse("def helper(x):\n  assert x\n\ndef test_a():\n  helper(1)\n\n"
                   "def test_b():\n  y = 1 + 1\n\ndef test_c():\n  np.testing.assert_allclose(1, 1)\n"
                   "\ndef test_d():\n  with pytest.raises(ValueError):\n    f()\n")
  checking = _checking_functions([tree])
  assert {"test_a", "test_c", "test_d"} <= checking and "test_b" not in checking
