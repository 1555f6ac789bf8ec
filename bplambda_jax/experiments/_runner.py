"""The loop behind ``bplambda run``: jitted chunks of updates, seeds vmapped, one round trip each.

For every rule of the config (each with its own seeds, all starting from the same per-seed
initialisations), the runner compiles one *chunk* program — a ``lax.scan`` of ``chunk`` checked
updates, vmapped over the seeds — and calls it until the budget is spent. Between chunks, on the
host: the progress bar, a line per seed in ``metrics.jsonl``, evaluations every ``eval_every``
updates (model selection on the validation split for sequential MNIST), orbax checkpoints every
``checkpoint_every`` updates, and the guards: a seed whose update failed a check (non-finite data,
loss, gradients, synthetic gradients or parameters; out-of-range labels) is frozen at its last
good state on device, and the run stops after that chunk with the quantity, the update and the
seed, saving the last good state. SIGINT and SIGTERM stop the run after the current chunk with a
checkpoint (a second one aborts at once, without saving); ``--resume`` continues it to the same
numbers. Compiled calls run in a worker thread while the main thread waits in short sleeps, so a
signal is acknowledged at once, even while a chunk is being compiled or computed.

A budget that ends off the evaluation grid gets a final evaluation after its last checkpoint; a
run resumed with a larger budget drops it and continues as an uninterrupted run of that budget.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import signal
import sys
import threading
import time
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from bplambda_jax import training
from bplambda_jax.experiments import _results as results
from bplambda_jax.experiments._config import RunConfig
from bplambda_jax.experiments._setup import Setup, make_run_rule
from bplambda_jax.training import _guards as guards


class RunError(RuntimeError):
  """A run stopped: a guard fired (the message names the quantity, update and seed)."""


class Interrupted(RuntimeError):
  """SIGINT or SIGTERM: the run saved a checkpoint and stopped; resume it with --resume."""


class BestState(NamedTuple):
  """The parameters of the best evaluation so far (model selection).

  Attributes:
    params: the parameters.
    score: the selection metric there (lower is better), shape=().
    step: the update it was taken at, shape=(), int32 (−1: none yet).
  """

  params: Any
  score: jax.Array
  step: jax.Array


class SeedState(NamedTuple):
  """Everything of one seed that changes during a run (vmapped: leading [S] axis).

  Attributes:
    train: parameters, optimiser state and the number of updates applied.
    key: the seed's data key.
    level: the curriculum state (copy-repeat), or None.
    best: the model-selection state (sequential MNIST), or None.
    guard: (code, update) of the first failed check; (0, −1) when all is well. [2] int32.
  """

  train: training.TrainState
  key: jax.Array
  level: Any
  best: Any
  guard: jax.Array


class Run(NamedTuple):
  """One line of a comparison: a label, a rule spec and config changes for it (e.g. λ)."""

  label: str
  spec: str
  changes: dict


@contextlib.contextmanager
def _stop_signals():
  """Turn SIGINT and SIGTERM into a flag the loop reads between chunks; a second one aborts."""
  flag = {"signal": None}
  previous = {}

  def handler(signum, frame):
    del frame
    name = signal.Signals(signum).name
    if flag["signal"]:
      raise KeyboardInterrupt(f"a second {name}: aborted at once, nothing saved since the last "
                              f"checkpoint")
    flag["signal"] = name
    try:  # a raw write: the handler may run in the middle of another write to stderr
      os.write(sys.stderr.fileno(), f"\n{name}: stopping after the current chunk, with a "
               f"checkpoint; send it again to abort at once.\n".encode())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
      pass

  for sig in (signal.SIGINT, signal.SIGTERM):
    try:
      previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave the handlers alone
      pass
  try:
    yield flag
  finally:
    for sig, h in previous.items():
      signal.signal(sig, h)


def computing() -> bool:
  """Whether a compiled call of a run is still computing (after an abort: the process can only
  end at once with ``os._exit``, since the runtime cannot shut down under a running call)."""
  return any(not done.is_set() for done in _CALLS)


_CALLS = set()  # one event per call of :func:`_call`, set when it returns


def _call(fn, *args):
  """``fn(*args)``, computed to the end, in a worker thread; the main thread waits in short sleeps
  so that signal handlers run at once (a compiled call holds them off until it returns)."""
  box, done = {}, threading.Event()

  def work():
    try:
      box["out"] = jax.block_until_ready(fn(*args))
    except BaseException as e:  # pylint: disable=broad-except  (re-raised in the caller)
      box["error"] = e
    finally:
      done.set()

  _CALLS.add(done)
  threading.Thread(target=work, daemon=True).start()
  while not done.wait(0.05):
    pass
  _CALLS.discard(done)
  if "error" in box:
    raise box["error"]
  return box["out"]


def _host(tree):
  """Device values to numpy, gathered from every process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
  return jax.tree.map(np.asarray, jax.device_get(tree))


def seed_keys(cfg: RunConfig):
  """One key per seed: seed i is ``cfg.seed + i`` (the same for every rule: matched runs)."""
  return jnp.stack([jax.random.key_data(jax.random.key(cfg.seed + i)) for i in range(cfg.seeds)])


def _init_seed(setup: Setup, rule, opt, key_data) -> SeedState:
  """A seed's state: the network from the seed alone (the same for every rule), ĝ from the rule."""
  k_model, k_rule, k_data = jax.random.split(jax.random.wrap_key_data(key_data), 3)
  params = {**rule.init(k_rule), **setup.model.init(k_model)}
  train = training.TrainState(params, opt.init(params), jnp.zeros((), jnp.int32))
  best = None
  if setup.select:
    best = BestState(train.params, jnp.asarray(jnp.inf, train.params["readout"]["w"].dtype),
                     jnp.asarray(-1, jnp.int32))
  return SeedState(train, k_data, setup.level0, best, jnp.asarray([0, -1], jnp.int32))


def _programs(setup: Setup, rule, opt, cfg: RunConfig):
  """(init, chunk, evaluate, test), each mapped over the seeds (``cfg.seed_axis``: a vmap or a
  loop of one jitted program)."""
  update = training.make_update(rule, opt,
                                divergence=training.Divergence(cfg.max_loss, cfg.max_param))
  K, total = cfg.chunk, cfg.steps

  def chunk_one(ss: SeedState, start, data):
    def body(ss, i):
      step = start + i
      batch = setup.batch(data, ss.key, ss.level, ss.train.step)
      train, m = update(ss.train, batch)
      active = (step < total) & (ss.guard[0] == 0)
      ok = active & (m["guard"] == 0)
      level = ss.level if setup.advance is None else setup.advance(ss.level, m["loss"])
      new = guards.keep_if_ok(jnp.where(ok, 0, 1), ss._replace(train=train, level=level), ss)
      failed = active & (m["guard"] != 0)
      guard = jnp.where(failed, jnp.stack([m["guard"], step.astype(jnp.int32)]), ss.guard)
      return new._replace(guard=guard), {"loss": m["loss"], "ok": ok}

    ss, m = jax.lax.scan(body, ss, jnp.arange(K))
    n_ok = jnp.sum(m["ok"])
    mean = jnp.sum(jnp.where(m["ok"], m["loss"], 0.0)) / jnp.maximum(n_ok, 1)
    out = {"loss": jnp.where(n_ok > 0, mean, jnp.nan), "updates": n_ok}
    if ss.level is not None:
      out.update(n=ss.level.n, r=ss.level.r, solved_n=ss.level.solved_n,
                 solved_r=ss.level.solved_r)
    return ss, out

  def eval_one(ss: SeedState, data, step):
    ev = setup.evaluate(rule, ss.train.params, data, ss.key)
    if ss.best is None:
      return ss, ev
    score = ev[setup.select]
    better = score < ss.best.score  # a NaN is never better
    best = jax.tree.map(lambda n, o: jnp.where(better, n, o),
                        BestState(ss.train.params, score.astype(ss.best.score.dtype),
                                  jnp.asarray(step, jnp.int32)), ss.best)
    return ss._replace(best=best), ev

  def test_one(ss: SeedState, data):
    params = ss.train.params if ss.best is None else ss.best.params
    return setup.test(params, data)

  seeds = lambda fn, in_axes=0: training.map_seeds(fn, cfg.seed_axis, in_axes)  # vmap or loop
  init = seeds(lambda k: _init_seed(setup, rule, opt, k))
  chunk = seeds(chunk_one, in_axes=(0, None, None))
  evaluate = seeds(eval_one, in_axes=(0, None, None)) if setup.evaluate else None
  test = seeds(test_one, in_axes=(0, None)) if setup.test else None
  return init, chunk, evaluate, test


def _postfix(cfg, m, ev, rate):
  parts = {"loss": f"{np.mean(m['loss']):.4f}"}
  if "n" in m:
    parts["bits"] = f"{np.mean(m['loss']) / math.log(2):.3f}"
    parts["level"] = f"({int(np.max(m['n']))},{int(np.max(m['r']))})"
  for k in ("accuracy", "alignment"):
    if ev and k in ev:
      parts[k] = f"{np.mean(ev[k]):.3f}"
  parts["seq/s"] = f"{rate:.0f}"
  return parts


def train_one(cfg: RunConfig, setup: Setup, run: Run, out: str, log: results.MetricsLog,
              *, resume: bool, progress: bool, stop) -> dict:
  """Train one rule (all seeds) to the end of the budget; its summary."""
  cfg = cfg.replace(**run.changes)
  rule = make_run_rule(cfg, run.spec, setup.model)
  opt = training.optimiser(cfg.lr_cell, cfg.lr_readout, cfg.lr_synth)
  init, chunk, evaluate, test = _programs(setup, rule, opt, cfg)
  keys = seed_keys(cfg)
  params1 = jax.eval_shape(lambda k: _init_seed(setup, rule, opt, k), keys[0]).train.params
  training.check_memory(rule, params1, cfg.batch_size, seeds=cfg.seeds)  # before compiling
  states = _call(init, keys)
  ckpt = training.Checkpointer(os.path.join(out, "checkpoints", run.label.replace("/", "_")),
                               max_to_keep=cfg.max_to_keep)
  lrs = {"cell": cfg.lr_cell, "readout": cfg.lr_readout, "synth": cfg.lr_synth}
  learns = any(lrs[g] > 0 for g in params1)
  done = 0 if learns else cfg.steps  # nothing learns: no update to run
  if not learns and progress:
    print(f"{run.label}: no parameter group learns (learning rates of {sorted(params1)} are 0); "
          f"evaluated without training.", flush=True)
  if resume and ckpt.latest_step() is not None:
    done = ckpt.latest_step()
    states, _ = ckpt.restore(done, states)
    log.truncate(run.label, done, cfg.eval_every)
  base = {"rule": run.label}
  evals, last = [], None
  started = time.perf_counter()

  def evaluate_at(states, step):
    states, ev = _call(evaluate, states, setup.data, jnp.asarray(step, jnp.int32))
    ev = _host(ev)
    evals.append((step, ev))
    log.append({**base, "seed": cfg.seed + i, "step": step, "kind": "eval",
                **{k: v[i] for k, v in ev.items()}} for i in range(cfg.seeds))
    return states

  if evaluate is not None and done == 0 and done < cfg.steps:  # the curve starts before training
    states = evaluate_at(states, 0)
  bar = tqdm.tqdm(total=cfg.steps, initial=done, desc=f"{run.label} [{cfg.task}]", unit="upd",
                  disable=not progress, dynamic_ncols=True, leave=True)
  try:
    while done < cfg.steps:
      t0 = time.perf_counter()
      states, m = _call(chunk, states, jnp.asarray(done, jnp.int32), setup.data)
      m, guard = _host((m, states.guard))
      done = min(done + cfg.chunk, cfg.steps)
      rate = cfg.seeds * cfg.batch_size * cfg.chunk / max(time.perf_counter() - t0, 1e-9)
      log.append({**base, "seed": cfg.seed + i, "step": done, "kind": "train",
                  **{k: v[i] for k, v in m.items()}} for i in range(cfg.seeds))
      if evaluate is not None and done % cfg.eval_every == 0:
        states = evaluate_at(states, done)
      last = m
      bar.update(done - bar.n)
      bar.set_postfix(_postfix(cfg, m, evals[-1][1] if evals else None, rate))
      bad = np.flatnonzero(guard[:, 0])
      if bad.size:
        ckpt.save(done, states, {"rule": run.label, "stopped": "guard"})
        i = int(bad[0])
        raise RunError(guards.guard_message(int(guard[i, 0]), step=int(guard[i, 1]) + 1,
                                            seed=cfg.seed + i, rule=run.label)
                       + f" Every seed is saved at its last good state (the failed ones before "
                       f"their failing update) in checkpoint {done} of {ckpt.directory}.")
      if stop["signal"] or done % cfg.checkpoint_every == 0 or done == cfg.steps:
        ckpt.save(done, states, {"rule": run.label, "config": cfg.to_dict()})
      if stop["signal"] and done < cfg.steps:
        raise Interrupted(f"{stop['signal']}: stopped after update {done} of {cfg.steps}; "
                          f"checkpoint saved in {ckpt.directory}. Continue with --resume.")
    if evaluate is not None and not (evals and evals[-1][0] == done) and not any(
        r.get("rule") == run.label and r.get("kind") == "eval" and r.get("step") == done
        for r in log.lines()):
      # the final evaluation of a budget off the evaluation grid (or of a run that learns
      # nothing): after the last checkpoint, so that a longer resumed run does not see it
      states = evaluate_at(states, done)
  finally:
    bar.close()
    ckpt.close()
  summary = {"rule": run.label, "spec": run.spec, "mode": rule.mode,
             "steps": done if learns else 0, "budget": cfg.steps,
             "seeds": [cfg.seed + i for i in range(cfg.seeds)],
             "seconds": time.perf_counter() - started, "changes": run.changes}
  if last is None and log_has(log, run.label, "train"):  # resumed after the last chunk
    last = _last_from_log(log, run.label, "train", cfg.seeds)
  if not evals and evaluate is not None:
    evals = [(done, _last_from_log(log, run.label, "eval", cfg.seeds))]
  if last is not None:
    summary["final"] = {k: results.mean_sd(v) for k, v in last.items() if k != "updates"}
  if evals:
    summary["eval"] = {k: results.mean_sd(v) for k, v in evals[-1][1].items()}
  if states.level is not None and last is not None:
    summary["solved"] = {"n": last["solved_n"].tolist(), "r": last["solved_r"].tolist()}
  if test is not None:
    best = _host(states.best)
    summary["best_step"] = best.step.tolist()
    summary["test"] = {k: results.mean_sd(v)
                       for k, v in _host(_call(test, states, setup.data)).items()}
  return summary


def log_has(log, label, kind) -> bool:
  return any(r.get("rule") == label and r.get("kind") == kind for r in log.lines())


def _last_from_log(log, label, kind, seeds):
  rows = [r for r in log.lines() if r.get("rule") == label and r.get("kind") == kind]
  rows = rows[-seeds:]
  keys = [k for k in rows[0] if k not in ("rule", "seed", "step", "kind")]
  return {k: np.asarray([r[k] for r in rows]) for k in keys}
