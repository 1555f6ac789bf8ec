"""The documentation: generated pages are current, the worked examples run, the pages the README
links to exist, every quirk label in use is defined, and nothing points outside the repository."""

import importlib.util
import json
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
OWN_PAGES = ("concepts.md", "cli.md", "api.md", "extending.md")
# Strings that point at files outside the repository (the project's own working notes).
FORBIDDEN = ("spec §", "../shared", "/work/shared", "reference-algorithms", "design.md",
             "papers.md")


def _load(name):
  spec = importlib.util.spec_from_file_location(name, DOCS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("name", ["gen_api", "gen_cli"])
def test_generated_page_is_current(name):
  generator = _load(name)
  assert generator.OUT.read_text(encoding="utf-8") == generator.render(), (
      f"{generator.OUT.relative_to(ROOT)} is out of date; regenerate it with "
      f"python docs/{name}.py")


def test_api_page_covers_every_public_name():
  import bplambda_jax

  text = (DOCS / "api.md").read_text(encoding="utf-8")
  generator = _load("gen_api")
  for sub in generator.SUBPACKAGES:
    module = getattr(bplambda_jax, sub)
    for name in generator._public(module):  # pylint: disable=protected-access
      assert f"### `bplambda_jax.{sub}.{name}`" in text, (sub, name)
  for name in bplambda_jax.__all__:
    assert f"| `{name}` |" in text, name


def test_cli_page_covers_every_flag_and_key():
  import argparse
  import dataclasses

  from bplambda_jax import cli
  from bplambda_jax.experiments import RunConfig

  text = (DOCS / "cli.md").read_text(encoding="utf-8")
  parser = cli.build_parser()
  subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)][0]
  for command, sub in subs.choices.items():
    assert f"## `bplambda {command}`" in text
    for action in sub._actions:
      if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
        continue  # --help, and the old spellings of renamed flags (refused, undocumented)
      for flag in action.option_strings:
        assert f"`{flag}" in text or f", {flag}" in text, (command, flag)
  for field in dataclasses.fields(RunConfig):
    assert f"| `{field.name}` |" in text, field.name


def _python_blocks(page):
  text = (DOCS / page).read_text(encoding="utf-8")
  return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


@pytest.mark.slow
def test_extending_examples_run():
  blocks = _python_blocks("extending.md")
  assert len(blocks) >= 5
  namespace = {"__name__": "extending_md"}
  for i, block in enumerate(blocks):
    exec(compile(block, f"docs/extending.md, python block {i + 1}", "exec"), namespace)
  import bplambda_jax as bl

  # the cell example declares its structure and passes the check (it ran above too)
  cell = namespace["leaky_rnn"](5)
  assert cell.split_step is not None and cell.unit_of_state is not None
  bl.check_structure(cell, cell.init(namespace["jax"].random.key(0), 2),
                     namespace["jnp"].zeros(2))
  # the rule example implements the whole protocol
  rule = namespace["one_step"](namespace["model"])
  assert all(f is not None for f in (rule.init, rule.grads, rule.init_state, rule.step))


def test_readme_links_to_the_pages():
  readme = (ROOT / "README.md").read_text(encoding="utf-8")
  for page in OWN_PAGES + ("bad-inputs.md",):
    assert f"(docs/{page})" in readme, page
    assert (DOCS / page).exists(), page


def test_links_between_pages_resolve():
  for page in OWN_PAGES:
    text = (DOCS / page).read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#:\s]+\.md)(?:#[^)]*)?\)", text):
      assert (DOCS / target).exists(), (page, target)


def _quirk_labels(text):
  return set(re.findall(r"\bQ(\d+)\b", text))


def test_every_quirk_label_in_use_is_defined():
  concepts = (DOCS / "concepts.md").read_text(encoding="utf-8")
  defined = set(re.findall(r"^\* \*\*Q(\d+)\*\* ", concepts, flags=re.M))
  assert {"1", "2", "4", "5", "6", "7", "12", "13", "14", "20", "29"} <= defined
  used = set()
  for path in sorted((ROOT / "bplambda_jax").rglob("*.py")):
    used |= _quirk_labels(path.read_text(encoding="utf-8"))
  used |= _quirk_labels((ROOT / "README.md").read_text(encoding="utf-8"))
  for path in sorted(DOCS.glob("*.md")):
    used |= _quirk_labels(path.read_text(encoding="utf-8"))
  missing = sorted(used - defined, key=int)
  assert not missing, f"quirk labels used but not defined in docs/concepts.md: Q{missing}"


def _scanned_files():
  files = sorted((ROOT / "bplambda_jax").rglob("*.py"))
  files += [ROOT / "README.md"]
  files += sorted(DOCS.rglob("*.md")) + sorted(DOCS.rglob("*.py"))
  files += sorted((ROOT / "notebooks").glob("*.ipynb"))
  files += sorted((ROOT / "notebooks").glob("*.py"))
  return files


def test_nothing_points_outside_the_repository():
  found = []
  for path in _scanned_files():
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".ipynb":  # the cells' text, not the JSON escaping
      text = "\n".join("".join(c["source"]) for c in json.loads(text)["cells"])
    for lineno, line in enumerate(text.splitlines(), 1):
      for bad in FORBIDDEN:
        if bad in line and not (path.name == "test_docs.py"):
          found.append(f"{path.relative_to(ROOT)}:{lineno}: {bad!r}: {line.strip()[:100]}")
  assert not found, "references to files outside the repository:\n" + "\n".join(found)


def test_cli_help_points_nowhere_outside(capsys):
  from bplambda_jax import cli

  parser = cli.build_parser()
  texts = [parser.format_help()]
  import argparse

  subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)][0]
  texts += [sub.format_help() for sub in subs.choices.values()]
  for text in texts:
    for bad in FORBIDDEN + ("§",):
      assert bad not in text, (bad, text[:200])
