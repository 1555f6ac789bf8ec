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


def random_batch(key, T, B, d_in, d_out, loss="mse", mask_prob=0.6, dtype=None):
  """A random time-major batch; at least the last step of every example carries a loss.

  dtype: default float64 under the ``x64`` marker, else float32.
  """
  dtype = jax.dtypes.canonicalize_dtype(jnp.float64 if dtype is None else dtype)
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


def step_loop(rule, params, batch, *, faithful=False, synth_sgd=None):
  """One sequence by a hand-written Python loop over ``rule.step`` (each step jitted once).

  The step's loss weight is the raw mask with ``faithful=True`` (the authors' hand derivative
  carries the scale) and ``step_weights(mask)[t]`` otherwise, with ``last=True`` at t = T−1.
  With ``synth_sgd=α`` the synthesiser follows plain SGD after every step,
  θ ← θ − α·grads_t['synth']['train'] (the authors' per-step synthesiser learning).

  Returns a dict with the cell and readout gradients summed over the steps ('cell', 'readout'),
  the synthesiser gradients summed over the steps ('synth'), the synthesiser's parameters after
  the loop ('synth_params'), the learning signals [T, B, n] in the convention of ``rule.grads``
  (the e-prop flavour's per-step signal is for s_{t−1}, one step late, and the last one is
  ℓ_{T−1} alone) and the TD error norms ([T], or [T+1] in the e-prop flavour).
  """
  from bplambda_jax.model import step_weights  # pylint: disable=import-outside-toplevel

  T, B = batch.x.shape[:2]
  weights = batch.mask.astype(batch.x.dtype) if faithful else step_weights(batch.mask)
  step = jit(lambda p, st, x, y, m, last: rule.step(p, st, x, y, m, last=last,
                                                    synth_sgd=synth_sgd), static_argnums=5)
  params = jax.tree.map(lambda a: a, params)  # a fresh copy of the nested dicts
  state = rule.init_state(params, B)
  acc = None
  ls, td = [], []
  for t in range(T):
    g, state, m = step(params, state, batch.x[t], batch.y[t], weights[t], t == T - 1)
    if synth_sgd is not None:
      params["synth"]["train"] = jax.tree.map(lambda p, d: p - synth_sgd * d,
                                              params["synth"]["train"], g["synth"]["train"])
    acc = g if acc is None else jax.tree.map(jnp.add, acc, g)
    ls.append(m["learning_signal"])
    td.append(m["td_error_norm"])
  if state.lag is not None:  # the e-prop flavour: signals one step late; the last is ℓ_{T−1}
    n = ls[0].shape[-1]
    last = jnp.concatenate([state.lag.ell, jnp.zeros(state.lag.ell.shape[:-1]
                                                     + (n - state.lag.ell.shape[-1],),
                                                     state.lag.ell.dtype)], -1)
    ls = ls[1:] + [last]
    td.append(m["final_td_error_norm"])
  return {"cell": acc["cell"], "readout": acc["readout"], "synth": acc["synth"],
          "synth_params": params["synth"], "learning_signal": jnp.stack(ls),
          "td_error_norm": jnp.stack(td)}


def counting_traces(monkeypatch):
  """{function name: times traced} of every per-seed program the runner builds (by wrapping
  ``map_seeds``; a traced function runs once per compilation, never per call)."""
  import collections

  from bplambda_jax.training import _parallel

  traces = collections.Counter()
  real = _parallel.map_seeds

  def counting(fn, *args, **kwargs):
    def traced(*a):
      traces[fn.__name__] += 1  # runs once per trace (compilation), never per call
      return fn(*a)
    return real(traced, *args, **kwargs)

  monkeypatch.setattr(_parallel, "map_seeds", counting)
  return traces
