"""Small shared test utilities: random batches, tree relative errors."""

import functools

import jax
import jax.numpy as jnp

from bplambda_jax.model import Batch

# Tests compile many small programs once each: XLA's backend optimisation costs more than it saves.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def grads_bundle(rules):
  """One compiled program ``(params, batch) -> {key: rule.grads(params, batch)}`` for ``rules``."""
  return jit(lambda params, batch: {k: r.grads(params, batch) for k, r in rules.items()})


def random_batch(key, T, B, d_in, d_out, loss="mse", mask_prob=0.6, dtype=jnp.float64):
  """A random time-major batch; at least the last step of every example carries a loss."""
  k1, k2, k3 = jax.random.split(key, 3)
  x = jax.random.normal(k1, (T, B, d_in), dtype)
  if loss == "ce":
    y = jax.random.randint(k2, (T, B), 0, d_out)
  else:
    y = jax.random.normal(k2, (T, B, d_out), dtype)
    if loss == "bce":
      y = (y > 0).astype(dtype)
  mask = (jax.random.uniform(k3, (T, B)) < mask_prob).astype(dtype)
  mask = mask.at[-1].set(1.0)
  return Batch(x, y, mask)


def flat(tree):
  return jnp.concatenate([jnp.ravel(l) for l in jax.tree.leaves(tree)])


def rel_err(a, b):
  """‖a − b‖ / ‖b‖ over all leaves of two pytrees with the same structure."""
  assert jax.tree.structure(a) == jax.tree.structure(b), (jax.tree.structure(a), jax.tree.structure(b))
  fa, fb = flat(a), flat(b)
  return float(jnp.linalg.norm(fa - fb) / jnp.maximum(jnp.linalg.norm(fb), 1e-300))


def randomize(tree, key, scale=0.3):
  """Replace every leaf by scale·N(0, 1) noise of the same shape and dtype."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  return treedef.unflatten([scale * jax.random.normal(k, l.shape, l.dtype) for k, l in zip(keys, leaves)])


def to_f32(tree):
  return jax.tree.map(lambda l: l.astype(jnp.float32) if jnp.issubdtype(l.dtype, jnp.floating) else l, tree)
