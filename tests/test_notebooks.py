"""Every notebook runs top to bottom at a small size (its code cells executed in order)."""

import glob
import json
import os

import matplotlib
import pytest

matplotlib.use("Agg")

NOTEBOOKS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "notebooks", "*.ipynb")))


def test_there_are_notebooks():
  assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, monkeypatch, capsys):
  monkeypatch.setenv("BPLAMBDA_NOTEBOOK_STEPS", "30")
  nb = json.load(open(path))
  namespace = {"__name__": "__notebook__"}
  for cell in nb["cells"]:
    if cell["cell_type"] == "code":
      src = "".join(cell["source"])
      src = "\n".join(l for l in src.splitlines() if not l.lstrip().startswith(("!", "%")))
      exec(compile(src, path, "exec"), namespace)
  out = capsys.readouterr().out
  assert "relative difference" in out
