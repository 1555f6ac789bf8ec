"""The loop behind ``bplambda run``: jitted chunks of updates, seeds vmapped, one round trip each.

For every rule of the config (each with its own seeds, all starting from the same per-seed
initialisations), the runner compiles one *chunk* program — a ``lax.scan`` of ``chunk`` checked
updates, mapped over the seeds (and over the points of a hyper-parameter grid that share the
rule's structure: :mod:`~bplambda_jax.experiments._grid`) — and calls it until the budget is
spent. Between chunks, on the
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
from bplambda_jax.experiments import _grid
from bplambda_jax.experiments import _results as results
from bplambda_jax.experiments._config import RunConfig
from bplambda_jax.experiments._setup import Setup, make_run_rule
from bplambda_jax.rules import parse_rule_spec
from bplambda_jax.training import _guards as guards
from bplambda_jax.training import _parallel
from bplambda_jax.training import _train


class RunError(RuntimeError):
  """A run stopped: a guard fired (the message names the quantity, update and seed, and where the
  last good state is saved; ``reason``: the same without the checkpoint)."""

  def __init__(self, message: str, reason: Optional[str] = None):
    super().__init__(message)
    self.reason = message if reason is None else reason


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
    hparams: the rule's traced hyper-parameters at this seed's grid point ({} without a grid;
      the learning rates are in the optimiser state).
  """

  train: training.TrainState
  key: jax.Array
  level: Any
  best: Any
  guard: jax.Array
  hparams: dict


class Run(NamedTuple):
  """One line of a comparison: a label, a rule spec and config changes for it (e.g. λ)."""

  label: str
  spec: str
  changes: dict


@contextlib.contextmanager
def stop_signals():
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


def _init_seed(setup: Setup, rule, opt, key_data, point) -> SeedState:
  """A seed's state at a grid point ({key: traced value}; {} without a grid): the network from
  the seed alone (the same for every rule and point), ĝ from the rule."""
  k_model, k_rule, k_data = jax.random.split(jax.random.wrap_key_data(key_data), 3)
  params = {**rule.init(k_rule), **setup.model.init(k_model)}
  rates = {_grid.RATES[k]: v for k, v in point.items() if k in _grid.RATES}
  opt_state = _train.set_learning_rates(opt.init(params), rates)
  train = training.TrainState(params, opt_state, jnp.zeros((), jnp.int32))
  best = None
  if setup.select:
    best = BestState(train.params, jnp.asarray(jnp.inf, train.params["readout"]["w"].dtype),
                     jnp.asarray(-1, jnp.int32))
  hparams = {k: v for k, v in point.items() if k in _grid.RULE_KEYS}
  return SeedState(train, k_data, setup.level0, best, jnp.asarray([0, -1], jnp.int32), hparams)


def _with_hparams(rule, hparams):
  """``rule`` whose ``grads`` and ``step`` default to the traced ``hparams`` (for evaluations that
  call the rule without them)."""
  if not hparams:
    return rule
  merged = lambda h: {**hparams, **(h or {})}
  grads = lambda params, batch, h=None: rule.grads(params, batch, merged(h))
  step = None if rule.step is None else (
      lambda params, state, x, y, mask, h=None, **kw: rule.step(params, state, x, y, mask,
                                                              merged(h), **kw))
  return rule._replace(grads=grads, step=step)


def _programs(setup: Setup, rule, opt, cfg: RunConfig):
  """(init, chunk, evaluate, test), each mapped over the (grid point, seed) elements
  (``cfg.seed_axis``: a vmap or a loop of one jitted program)."""
  update = training.make_update(rule, opt,
                                divergence=training.Divergence(cfg.max_loss, cfg.max_param))
  K, total = cfg.chunk, cfg.steps

  def chunk_one(ss: SeedState, start, data):
    def body(ss, i):
      step = start + i
      batch = setup.batch(data, ss.key, ss.level, ss.train.step)
      train, m = update(ss.train, batch, ss.hparams)
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
    ev = setup.evaluate(_with_hparams(rule, ss.hparams), ss.train.params, data, ss.key)
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

  seeds = lambda fn, in_axes=0: _parallel.map_seeds(fn, cfg.seed_axis, in_axes)  # vmap or loop
  init = seeds(lambda k, point: _init_seed(setup, rule, opt, k, point))
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


def group_runs(runs) -> list[list[Run]]:
  """The runs grouped by what they compile: the same rule spec and structural config changes
  (those differing only in traced hyper-parameters share one program); first-seen order."""
  groups = {}
  for r in runs:
    groups.setdefault((r.spec, _grid.structural(r.changes)), []).append(r)
  return list(groups.values())


def group_config(cfg: RunConfig, runs) -> RunConfig:
  """The config a group of runs compiles with: ``cfg`` with their structural changes."""
  return cfg.replace(**dict(_grid.structural(runs[0].changes)))


def group_rule(cfg: RunConfig, setup: Setup, runs):
  """(rule, traced keys, optimiser, {parameter group: largest learning rate}) of a group of runs
  (:func:`group_runs`); ConfigError for a traced key the rule does not take, before anything is
  compiled. The optimiser freezes a parameter group whose learning rate is 0 at every point."""
  spec = runs[0].spec
  cfg = group_config(cfg, runs)
  rule = make_run_rule(cfg, spec, setup.model)
  keys = list(dict.fromkeys(k for r in runs for k in _grid.traced(r.changes)))
  top = {g: max(r.changes.get(k, getattr(cfg, k)) for r in runs) for k, g in _grid.RATES.items()}
  keys = [k for k in keys if top.get(_grid.RATES.get(k), 1) > 0]  # a rate 0 everywhere: frozen
  opt = training.optimiser(top["cell"], top["readout"], top["synth"])
  groups = ()
  if any(k in _grid.RATES for k in keys):  # the parameter groups the rule has
    groups = jax.eval_shape(lambda k: _init_seed(setup, rule, opt, k, {}),
                            seed_keys(cfg)[0]).train.params
  _grid.check_rule_keys(spec, keys, rule.hparams, groups, parse_rule_spec(spec).options)
  return rule, keys, opt, top


def train_one(cfg: RunConfig, setup: Setup, run: Run, out: str, log: results.MetricsLog,
              *, resume: bool, progress: bool, stop) -> dict:
  """Train one rule (all seeds) to the end of the budget; its summary."""
  return train_group(cfg, setup, [run], out, log, resume=resume, progress=progress,
                     stop=stop)[run.label]


def train_group(cfg: RunConfig, setup: Setup, runs, out: str, log: results.MetricsLog,
                *, resume: bool, progress: bool, stop) -> dict:
  """Train a group of runs (one rule spec and structural config; :func:`group_runs`), every run
  with every seed, as one program over P·S (run, seed) elements; {label: summary}."""
  rule, keys, opt, lrs = group_rule(cfg, setup, runs)
  cfg = group_config(cfg, runs)
  S, P = cfg.seeds, len(runs)
  dtype = jnp.dtype(cfg.dtype)
  points = {k: jnp.asarray(np.repeat([r.changes.get(k, getattr(cfg, k)) for r in runs], S),
                           dtype) for k in keys}  # [P·S], point-major
  init, chunk, evaluate, test = _programs(setup, rule, opt, cfg)
  elements = jnp.tile(seed_keys(cfg), (P, 1))  # [P·S]: seed s's key at every point
  params1 = jax.eval_shape(lambda k: _init_seed(setup, rule, opt, k, {}), elements[0]).train.params
  training.check_memory(rule, params1, cfg.batch_size, seeds=P * S)  # before compiling
  states = _call(init, elements, points)
  name = runs[0].label if P == 1 else " ".join([runs[0].spec, "grid"] + [
      f"{k}={v}" for k, v in _grid.structural(runs[0].changes)])
  ckpt = training.Checkpointer(os.path.join(out, "checkpoints", name.replace("/", "_")),
                               max_to_keep=cfg.max_to_keep)
  learns = any(lrs[g] > 0 for g in params1)
  done = 0 if learns else cfg.steps  # nothing learns: no update to run
  if not learns and progress:
    print(f"{name}: no parameter group learns (learning rates of {sorted(params1)} are 0); "
          f"evaluated without training.", flush=True)
  if resume and ckpt.latest_step() is not None:
    done = ckpt.latest_step()
    states, _ = ckpt.restore(done, states)
    for r in runs:
      log.truncate(r.label, done, cfg.eval_every)
  where = lambda e: {"rule": runs[e // S].label, "seed": cfg.seed + e % S}  # element e's row
  evals, last = [], None
  started = time.perf_counter()

  def evaluate_at(states, step):
    states, ev = _call(evaluate, states, setup.data, jnp.asarray(step, jnp.int32))
    ev = _host(ev)
    evals.append((step, ev))
    log.append({**where(e), "step": step, "kind": "eval", **{k: v[e] for k, v in ev.items()}}
               for e in range(P * S))
    return states

  if evaluate is not None and done == 0 and done < cfg.steps:  # the curve starts before training
    states = evaluate_at(states, 0)
  bar = tqdm.tqdm(total=cfg.steps, initial=done, desc=f"{name} [{cfg.task}]", unit="upd",
                  disable=not progress, dynamic_ncols=True, leave=True)
  try:
    while done < cfg.steps:
      t0 = time.perf_counter()
      states, m = _call(chunk, states, jnp.asarray(done, jnp.int32), setup.data)
      m, guard = _host((m, states.guard))
      done = min(done + cfg.chunk, cfg.steps)
      rate = P * S * cfg.batch_size * cfg.chunk / max(time.perf_counter() - t0, 1e-9)
      log.append({**where(e), "step": done, "kind": "train", **{k: v[e] for k, v in m.items()}}
                 for e in range(P * S))
      if evaluate is not None and done % cfg.eval_every == 0:
        states = evaluate_at(states, done)
      last = m
      bar.update(done - bar.n)
      bar.set_postfix(_postfix(cfg, m, evals[-1][1] if evals else None, rate))
      _stop_on_guard(guard, done, states, ckpt, name, cfg, runs)
      if stop["signal"] or done % cfg.checkpoint_every == 0 or done == cfg.steps:
        ckpt.save(done, states, {"rule": name, "config": cfg.to_dict()})
      if stop["signal"] and done < cfg.steps:
        raise Interrupted(f"{stop['signal']}: stopped after update {done} of {cfg.steps}; "
                          f"checkpoint saved in {ckpt.directory}. Continue with --resume.")
    if evaluate is not None and not (evals and evals[-1][0] == done) and not any(
        r.get("rule") == runs[0].label and r.get("kind") == "eval" and r.get("step") == done
        for r in log.lines()):
      # the final evaluation of a budget off the evaluation grid (or of a run that learns
      # nothing): after the last checkpoint, so that a longer resumed run does not see it
      states = evaluate_at(states, done)
  finally:
    bar.close()
    ckpt.close()
  seconds = time.perf_counter() - started
  tested = _host(_call(test, states, setup.data)) if test is not None else None
  return _summaries(cfg, runs, rule.mode, states, tested, evals, last, log,
                    steps=done if learns else 0, seconds=seconds,
                    evaluated=evaluate is not None)


def _summaries(cfg, runs, mode, states, tested, evals, last, log, *, steps, seconds, evaluated):
  """{label: summary} of a trained group: final training metrics, evaluation and, with a test
  split, the best-validation step and the test metrics at it (mean ± sd over seeds)."""
  S = cfg.seeds
  best = _host(states.best) if tested is not None else None
  summaries = {}
  for p, run in enumerate(runs):
    mine = lambda tree: jax.tree.map(lambda v: v[p * S:(p + 1) * S], tree)
    summary = {"rule": run.label, "spec": run.spec, "mode": mode,
               "steps": steps, "budget": cfg.steps,
               "seeds": [cfg.seed + i for i in range(S)], "seconds": seconds,
               "changes": run.changes}
    run_last = mine(last) if last is not None else None
    if run_last is None and log_has(log, run.label, "train"):  # resumed after the last chunk
      run_last = _last_from_log(log, run.label, "train", S)
    run_eval = mine(evals[-1][1]) if evals else None
    if run_eval is None and evaluated:
      run_eval = _last_from_log(log, run.label, "eval", S)
    if run_last is not None:
      summary["final"] = {k: results.mean_sd(v) for k, v in run_last.items() if k != "updates"}
    if run_eval is not None:
      summary["eval"] = {k: results.mean_sd(v) for k, v in run_eval.items()}
    if states.level is not None and run_last is not None:
      summary["solved"] = {"n": run_last["solved_n"].tolist(), "r": run_last["solved_r"].tolist()}
    if tested is not None:
      summary["best_step"] = mine(best.step).tolist()
      summary["best_score"] = results.mean_sd(mine(best.score))
      summary["test"] = {k: results.mean_sd(v) for k, v in mine(tested).items()}
    summaries[run.label] = summary
  return summaries


def _stop_on_guard(guard, done, states, ckpt, name, cfg, runs) -> None:
  """RunError (after a checkpoint) if an element's checked update failed in the last chunk."""
  bad = np.flatnonzero(guard[:, 0])
  if bad.size:
    ckpt.save(done, states, {"rule": name, "stopped": "guard"})
    e, S = int(bad[0]), cfg.seeds
    reason = guards.guard_message(int(guard[e, 0]), step=int(guard[e, 1]) + 1,
                                  seed=cfg.seed + e % S, rule=runs[e // S].label)
    raise RunError(reason + f" Every seed is saved at its last good state (the failed ones "
                   f"before their failing update) in checkpoint {done} of {ckpt.directory}.",
                   reason)


def log_has(log, label, kind) -> bool:
  return any(r.get("rule") == label and r.get("kind") == kind for r in log.lines())


def _last_from_log(log, label, kind, seeds):
  rows = [r for r in log.lines() if r.get("rule") == label and r.get("kind") == kind]
  rows = rows[-seeds:]
  keys = [k for k in rows[0] if k not in ("rule", "seed", "step", "kind")]
  return {k: np.asarray([r[k] for r in rows]) for k in keys}
