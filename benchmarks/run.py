"""Run the benchmark suite: ``python -m benchmarks.run [--list | --only A,B | --tiny] [--json F]``.

What a row measures (``timed``):

* ``train_update``: one call of ``jax.jit(train.make_update(rule, opt))(state, batch)`` — the full
  training step users run (rule.grads + Adam + parameter update), compiled ahead of time.
* ``train_update_vmap_seeds``: ``jax.jit(jax.vmap(update))(states, batches)`` over S seeds.
* ``train_update_loop_seeds``: a Python loop of S calls of the single-seed jitted update (one
  compiled program reused), synchronised once at the end.
* ``matmul``: ``x @ x`` for x [N, N] float32 (``floor_matmul``).
* ``trace_step``: one call of :func:`bplambda_jax.kernels.linear_trace_step` (one TD step).

Timing: ``lower().compile()`` (``compile_s``), one warm-up call (``first_run_s``), then ``repeats``
timed calls, each synchronised with ``jax.block_until_ready``; ``median_s``/``min_s``/``max_s`` are
seconds per call. A case whose warm-up call alone exceeds ``budget_s`` is not repeated: its warm-up
call is its only timing (``repeats`` = 1 and a note say so); a case whose warm-up call exceeds
``budget_s / repeats`` gets as many repeats as fit in ``budget_s`` (at least 1), also noted.

Memory (``peak_bytes``): from the compiled executable's ``memory_analysis()``, argument + output +
temp bytes: the buffers XLA's buffer assignment reserves for one call (no donation, so nothing is
aliased). It is a static bound, not a measured resident set.

FLOPs: ``xla_flops`` is ``compiled.cost_analysis()['flops']`` as XLA reports it; XLA counts the body
of a ``while`` loop once, whatever its trip count, so for scanned code it undercounts by about T.
``flops`` is therefore counted from the jaxpr (:func:`count_flops`: dot_general 2 FLOP per
multiply-add, elementwise arithmetic 1 per output element, reductions 1 per input element, ``scan``
bodies times their length) and ``gflops`` = flops / median_s. ``analytic_flops`` (BP(λ) online and
trace-step rows) is :func:`benchmarks.cases.trace_flops` (the issue's floor count) or
:func:`benchmarks.cases.dense_step_flops` (one dense trace step);
``flop_floor_s`` = analytic_flops / (floor_matmul GFLOP/s) and ``ratio_to_flop_floor`` =
median_s / flop_floor_s. ``ratio_to_bptt`` = median_s / median_s of the row's BPTT reference (for
seed rows: per-seed time median_s / S over one single-seed BPTT update).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time
import traceback
from typing import Any, Callable, Iterable, Optional

import jax
from jax.extend import core as jex_core
import jax.numpy as jnp
import numpy as np

from benchmarks import cases as cases_lib
from bplambda_jax import model as model_lib
from bplambda_jax import train

DEFAULT_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "latest.json")
MIN_REPEATS = 5
DEFAULT_BUDGET_S = 60.0
TINY_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}

# Every row has exactly these keys (None where a value does not apply or was not measured).
FIELDS = {
    "name": str, "family": str, "kind": str, "status": str, "note": str, "rule": str, "mode": str,
    "cell": str, "loss": str, "batch": int, "seq_len": int, "hidden": int, "input_size": int,
    "output_size": int, "seeds": int, "seed_impl": str, "timed": str, "dtype": str, "tiny": bool,
    "repeats": int, "median_s": float, "min_s": float, "max_s": float, "first_run_s": float,
    "compile_s": float, "peak_bytes": int, "argument_bytes": int, "output_bytes": int,
    "temp_bytes": int, "flops": float, "xla_flops": float, "gflops": float,
    "analytic_flops": float, "flop_floor_s": float, "ratio_to_flop_floor": float,
    "bptt_ref": str, "ratio_to_bptt": float, "sequences_per_s": float, "jax_version": str,
    "device": str, "host": str, "date": str, "loadavg_1m": float,
}
STATUSES = ("ok", "skipped", "unavailable", "error")


# ------------------------------------------------------------------------------ FLOP counting

_ELEMENTWISE = frozenset({
    "add", "add_any", "sub", "mul", "div", "rem", "neg", "max", "min", "abs", "sign", "exp", "exp2",
    "log", "log1p", "expm1", "tanh", "logistic", "sqrt", "rsqrt", "cbrt", "pow", "integer_pow",
    "sin", "cos", "tan", "atan2", "erf", "erfc", "erf_inv", "square", "reciprocal", "floor", "ceil",
    "round",
})
_REDUCTIONS = frozenset({"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin",
                         "cumsum", "cumprod", "cummax", "cumlogsumexp"})


class Uncountable(ValueError):
  """The jaxpr holds a loop whose trip count is not static (a while loop)."""


def _size(aval) -> int:
  return int(np.prod(aval.shape)) if hasattr(aval, "shape") else 1


def _sub_jaxprs(value) -> list:
  """The (closed) jaxprs held in one equation parameter."""
  if isinstance(value, jex_core.ClosedJaxpr):
    return [value.jaxpr]
  if isinstance(value, jex_core.Jaxpr):
    return [value]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _sub_jaxprs(v)]
  return []


def count_flops(jaxpr) -> float:
  """FLOPs of a (closed) jaxpr, with ``scan`` bodies counted ``length`` times.

  dot_general: 2·(output size)·(contracted size); elementwise arithmetic and transcendentals: 1 per
  output element; reductions: 1 per input element; data movement: 0; ``cond``: the most expensive
  branch; ``pallas_call``: the kernel body times the number of grid programs. Raises :class:`Uncountable` for ``while`` loops (no static trip count).
  """
  if isinstance(jaxpr, jex_core.ClosedJaxpr):
    jaxpr = jaxpr.jaxpr
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval
      contracted = int(np.prod([lhs.shape[d] for d in lhs_contract])) if lhs_contract else 1
      total += 2.0 * _size(eqn.outvars[0].aval) * contracted
    elif name == "scan":
      total += eqn.params["length"] * count_flops(eqn.params["jaxpr"])
    elif name == "while":
      raise Uncountable("the program contains a while loop (no static trip count)")
    elif name == "cond":
      total += max(count_flops(b) for b in eqn.params["branches"])
    elif name == "pallas_call":  # the kernel body runs once per grid program
      grid = getattr(eqn.params.get("grid_mapping"), "grid", ())
      total += float(np.prod(grid)) * count_flops(eqn.params["jaxpr"])
    elif name in _ELEMENTWISE:
      total += sum(_size(v.aval) for v in eqn.outvars)
    elif name in _REDUCTIONS:
      total += sum(_size(v.aval) for v in eqn.invars)
    else:
      for value in eqn.params.values():
        for sub in _sub_jaxprs(value):
          total += count_flops(sub)
  return total


# ------------------------------------------------------------------------------ machine info


def machine_info() -> dict:
  """CPU model, core count and memory of this machine (Linux; 'unknown' elsewhere)."""
  info = {"nproc": os.cpu_count(), "cpu_model": "unknown", "mem_total_gb": None}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          info["cpu_model"] = line.split(":", 1)[1].strip()
          break
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemTotal"):
          info["mem_total_gb"] = round(int(line.split()[1]) / 2**20, 1)
          break
  except OSError:
    pass
  return info


def _device() -> str:
  d = jax.devices()[0]
  return f"{d.platform}:{d.device_kind}"


def _host() -> str:
  info = machine_info()
  return f"{info['nproc']} cores, {info['cpu_model']}, {info['mem_total_gb']} GB"


def _loadavg() -> Optional[float]:
  try:
    return float(os.getloadavg()[0])
  except OSError:
    return None


# ------------------------------------------------------------------------------ measuring


def _sync(tree):
  return jax.block_until_ready(tree)


def _timed_calls(call: Callable[[], Any], repeats: int, budget_s: float):
  """(first_run_s, [timed seconds], note): one warm-up call, then the budgeted repeats."""
  t0 = time.perf_counter()
  _sync(call())
  first = time.perf_counter() - t0
  note = ""
  if first > budget_s:
    return first, [first], (f"one call took {first:.3g} s > budget {budget_s:g} s: the warm-up "
                            f"call is the only timing")
  n = repeats
  if first * repeats > budget_s:
    n = max(1, int(budget_s // first))
    note = (f"{n} timed call{'s' if n > 1 else ''} instead of {repeats} (one call ≈ {first:.3g} s, "
            f"budget {budget_s:g} s)")
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    _sync(call())
    times.append(time.perf_counter() - t0)
  return first, times, note


def _compile(fn: Callable, args: tuple, compiler_options: Optional[dict] = None):
  """(compiled, compile_s, memory fields, xla_flops, jaxpr flops); compile_s = trace+lower+compile."""
  t0 = time.perf_counter()
  traced = jax.jit(fn).trace(*args)
  compiled = traced.lower().compile(compiler_options)
  compile_s = time.perf_counter() - t0
  mem = {}
  try:
    ma = compiled.memory_analysis()
    mem = {"argument_bytes": int(ma.argument_size_in_bytes),
           "output_bytes": int(ma.output_size_in_bytes),
           "temp_bytes": int(ma.temp_size_in_bytes)}
    mem["peak_bytes"] = mem["argument_bytes"] + mem["output_bytes"] + mem["temp_bytes"]
  except Exception:  # some backends do not implement memory analysis
    pass
  xla_flops = None
  try:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0] if cost else None
    if cost and "flops" in cost:
      xla_flops = float(cost["flops"])
  except Exception:  # cost analysis is optional per backend
    pass
  try:
    flops = count_flops(traced.jaxpr)
  except Uncountable:
    flops = None
  return compiled, compile_s, mem, xla_flops, flops


def make_args(rule, opt, case: cases_lib.Case, seed: int, lead: tuple = ()):
  """(state, batch) on the device for an update case, made on the host (nothing compiles).

  The state has the structure ``train.init_state`` gives (read with ``jax.eval_shape``); its
  floating parameters are drawn U(±1/√H) with numpy, the optimiser state and step are zeros. The
  cost of an update does not depend on these values, and making them with jax would compile a
  program per case. ``lead`` prepends a seed axis to every leaf.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda k: train.init_state(rule, opt, k), jax.random.key(0))
  bound = 1.0 / math.sqrt(case.hidden)

  def param(s):
    if jnp.issubdtype(s.dtype, jnp.floating):
      return rng.uniform(-bound, bound, lead + s.shape).astype(s.dtype)
    return np.zeros(lead + s.shape, s.dtype)

  zeros = lambda s: np.zeros(lead + s.shape, s.dtype)
  state = train.TrainState(jax.tree.map(param, shapes.params),
                           jax.tree.map(zeros, shapes.opt_state), zeros(shapes.step))
  return _sync(jax.device_put((state, cases_lib.make_batch(case, rng, lead))))


class Runner:
  """Runs cases, sharing compiled programs between cases with equal :meth:`Case.program_key`."""

  def __init__(self, repeats: int = MIN_REPEATS, budget_s: float = DEFAULT_BUDGET_S,
               tiny: bool = False, log: Callable[[str], None] = print):
    if not isinstance(repeats, int) or repeats < 1:
      raise ValueError(f"repeats must be a positive integer, got {repeats!r}.")
    if not budget_s > 0:
      raise ValueError(f"budget_s must be > 0, got {budget_s!r}.")
    self.repeats, self.budget_s, self.tiny, self.log = repeats, budget_s, tiny, log
    # The tiny smoke run compiles at XLA's lowest backend optimisation level (about half the
    # compile time); full-size runs use the default compiler options.
    self.compiler_options = TINY_COMPILER_OPTIONS if tiny else None
    self._programs: dict = {}

  # -------------------------------------------------------------------------- one program
  def _update_program(self, case: cases_lib.Case):
    """(program, shared): the compiled update of an 'update' case with its arguments and costs,
    cached by :meth:`Case.program_key`; ``shared`` is True when an earlier row compiled it."""
    key = case.program_key()
    if key in self._programs:
      return self._programs[key], True
    model = model_lib.make_model(case.cell, case.loss, case.input_size, case.output_size,
                                 hidden_size=case.hidden)
    rule = case.rule.build(model)
    opt = train.optimiser(*case.lrs)
    update = train.make_update(rule, opt)
    lead = (case.seeds,) if case.seed_impl == "vmap" else ()
    fn = jax.vmap(update) if case.seed_impl == "vmap" else update
    args = make_args(rule, opt, case, seed=0, lead=lead)
    compiled, compile_s, mem, xla_flops, flops = _compile(fn, args, self.compiler_options)
    prog = {"compiled": compiled, "args": args, "compile_s": compile_s, "mem": mem,
            "xla_flops": xla_flops, "flops": flops, "mode": rule_mode(rule),
            "make_args": lambda seed: make_args(rule, opt, case, seed=seed)}
    self._programs[key] = prog
    return prog, False

  def _measure_update(self, case: cases_lib.Case, row: dict) -> None:
    prog, shared = self._update_program(case)
    compiled, args = prog["compiled"], prog["args"]
    if case.seed_impl == "loop":
      per_seed = [prog["make_args"](seed) for seed in range(case.seeds)]

      def call():
        return [compiled(*a) for a in per_seed]
      flops = None if prog["flops"] is None else prog["flops"] * case.seeds
      row["timed"] = "train_update_loop_seeds"
    else:
      def call():
        return compiled(*args)
      flops = prog["flops"]
      row["timed"] = "train_update_vmap_seeds" if case.seed_impl == "vmap" else "train_update"
    first, times, note = _timed_calls(call, self.repeats, self.budget_s)
    if shared:
      note = "; ".join(n for n in (note, "compiled program shared with an earlier row") if n)
    row.update(prog["mem"])
    row.update(mode=prog["mode"], compile_s=prog["compile_s"], xla_flops=prog["xla_flops"],
               flops=flops)
    self._fill_times(row, first, times, note)
    row["sequences_per_s"] = case.batch * case.seeds / row["median_s"]

  def _measure_matmul(self, case: cases_lib.Case, row: dict) -> None:
    n = case.hidden
    x = _sync(jax.device_put(np.random.default_rng(0).standard_normal((n, n), np.float32)))
    compiled, compile_s, mem, xla_flops, flops = _compile(lambda a: a @ a, (x,),
                                                          self.compiler_options)
    first, times, note = _timed_calls(lambda: compiled(x), self.repeats, self.budget_s)
    row.update(mem)
    row.update(timed="matmul", compile_s=compile_s, xla_flops=xla_flops, flops=flops)
    self._fill_times(row, first, times, note)

  def _measure_trace_step(self, case: cases_lib.Case, row: dict) -> None:
    from bplambda_jax import kernels  # checked by cases.availability
    B, d = case.batch, case.hidden
    n = 2 * d
    rng = np.random.default_rng(0)
    normal = lambda *shape: rng.standard_normal(shape, np.float32)
    trace = {"w": normal(B, d, d, n), "b": normal(B, d, d)}
    args = _sync(jax.device_put((trace, normal(B, d, d) / d, normal(B, n), normal(B, d))))
    fn = lambda tr, mm, zz, dd: kernels.linear_trace_step(tr, mm, zz, dd, 0.9, impl=case.impl)
    compiled, compile_s, mem, xla_flops, flops = _compile(fn, args, self.compiler_options)
    first, times, note = _timed_calls(lambda: compiled(*args), self.repeats, self.budget_s)
    row.update(mem)
    row.update(timed="trace_step", mode="online", compile_s=compile_s, xla_flops=xla_flops,
               flops=flops, rule=f"kernels.linear_trace_step[{case.impl}]")
    auto = kernels.select_impl()
    row["note"] = "; ".join(x for x in (row["note"], f"auto choice on this backend: {auto}", note)
                            if x)
    self._fill_times(row, first, times, "")

  def _fill_times(self, row: dict, first: float, times: list, note: str) -> None:
    row.update(repeats=len(times), median_s=float(statistics.median(times)),
               min_s=float(min(times)), max_s=float(max(times)), first_run_s=float(first))
    if row.get("flops") is not None:
      row["gflops"] = row["flops"] / row["median_s"] / 1e9
    elif row.get("kind") == "update":
      note = "; ".join(x for x in (note, "FLOPs not counted: a while loop with a data-dependent "
                                         "trip count") if x)
    if note:
      row["note"] = "; ".join(x for x in (row["note"], note) if x)

  # -------------------------------------------------------------------------- one case
  def run_case(self, case: cases_lib.Case) -> dict:
    """One row (never raises for a failing case: the row's status is 'error')."""
    if self.tiny:
      case = case.tiny()
    row = base_row(case, self.tiny)
    reason = cases_lib.availability(case)
    if reason is not None:
      row.update(status="unavailable", note=reason)
      return row
    if case.skip is not None:
      row.update(status="skipped", note=case.skip)
      return row
    row["loadavg_1m"] = _loadavg()
    try:
      with jax.enable_x64(False):  # float32 even under a test session that enables x64
        if case.kind == "update":
          self._measure_update(case, row)
        elif case.kind == "matmul":
          self._measure_matmul(case, row)
        elif case.kind == "trace_step":
          self._measure_trace_step(case, row)
        else:
          raise ValueError(f"case kind must be one of {cases_lib.KINDS}, got {case.kind!r}.")
      row["status"] = "ok"
    except Exception as e:  # report and go on: one broken rule must not hide the others
      row.update(status="error", note=f"{type(e).__name__}: {e}")
      self.log(traceback.format_exc())
    return row


def rule_mode(rule) -> str:
  return "online" if rule.online else "sequence"


def base_row(case: cases_lib.Case, tiny: bool) -> dict:
  """A row with every field of :data:`FIELDS`, filled from the case's configuration."""
  row = dict.fromkeys(FIELDS)
  row.update(
      name=case.name, family=case.family, kind=case.kind, status="ok", note=case.note,
      rule=case.rule.label if case.rule else None, mode=case.rule.mode if case.rule else None,
      cell=case.cell, loss=case.loss, batch=case.batch or None, seq_len=case.seq_len or None,
      hidden=case.hidden or None, input_size=case.input_size or None,
      output_size=case.output_size or None, seeds=case.seeds, seed_impl=case.seed_impl,
      dtype="float32", tiny=tiny, bptt_ref=case.bptt_ref, jax_version=jax.__version__,
      device=_device(), host=_host(), date=datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      analytic_flops=cases_lib.analytic_flops(case))
  return row


def add_derived(rows: list[dict]) -> list[dict]:
  """Fill flop_floor_s, ratio_to_flop_floor and ratio_to_bptt from rows of the same run."""
  by_name = {r["name"]: r for r in rows}
  floor = by_name.get("floor_matmul")
  floor_gflops = floor["gflops"] if floor and floor["status"] == "ok" else None
  for r in rows:
    if r["status"] != "ok":
      continue
    if r["analytic_flops"] is not None and floor_gflops:
      r["flop_floor_s"] = r["analytic_flops"] / (floor_gflops * 1e9)
      r["ratio_to_flop_floor"] = r["median_s"] / r["flop_floor_s"]
    ref = by_name.get(r["bptt_ref"]) if r["bptt_ref"] else None
    if ref is not None and ref["status"] == "ok":
      per = r["median_s"] / (r["seeds"] if r["seed_impl"] else 1)
      r["ratio_to_bptt"] = per / ref["median_s"]
  return rows


# ------------------------------------------------------------------------------ selection


def select(names: Optional[Iterable[str]], with_refs: bool = True) -> list[cases_lib.Case]:
  """The cases to run: all, or the named ones plus (``with_refs``) their floors and BPTT refs."""
  every = cases_lib.all_cases()
  if names is None:
    return every
  by_name = {c.name: c for c in every}
  names = list(names)
  unknown = [n for n in names if n not in by_name]
  if unknown:
    raise ValueError(f"unknown case(s) {unknown}; see `python -m benchmarks.run --list`.")
  wanted = set(names)
  if with_refs:
    for n in names:
      c = by_name[n]
      if c.bptt_ref:
        wanted.add(c.bptt_ref)
      if cases_lib.analytic_flops(c) is not None:
        wanted.add("floor_matmul")
  return [c for c in every if c.name in wanted]


def run_cases(names: Optional[Iterable[str]] = None, *, tiny: bool = False,
              repeats: int = MIN_REPEATS, budget_s: float = DEFAULT_BUDGET_S,
              with_refs: bool = True, log: Callable[[str], None] = print) -> list[dict]:
  """Run cases and return their rows (the Python API behind the command line).

  Args:
    names: case names (None: every case).
    tiny: run every case at the tiny sizes of ``cases.TINY`` (size-based skips do not apply).
    repeats: timed calls per case after the warm-up call.
    budget_s: per-case time budget for the timed calls (see the module docstring).
    with_refs: with ``names``, also run the floor and the BPTT rows the named rows refer to.
    log: progress printer.

  Returns:
    A list of rows (dicts with the keys of :data:`FIELDS`).
  """
  runner = Runner(repeats=repeats, budget_s=budget_s, tiny=tiny, log=log)
  rows = []
  wall0, cpu0 = time.perf_counter(), time.process_time()
  for case in select(names, with_refs):
    t0 = time.perf_counter()
    row = runner.run_case(case)
    rows.append(row)
    extra = f"median {row['median_s']:.4g} s" if row["status"] == "ok" else row["note"]
    log(f"[{time.perf_counter() - t0:6.1f} s] {row['name']}: {row['status']} ({extra})")
  log(f"suite: {time.perf_counter() - wall0:.0f} s wall, {time.process_time() - cpu0:.0f} s CPU "
      f"(this process), load average at the end {_loadavg()}")
  return add_derived(rows)


def check_row(row: dict) -> None:
  """Raise ValueError unless a row has exactly the fields of :data:`FIELDS` with their types."""
  if set(row) != set(FIELDS):
    raise ValueError(f"row {row.get('name')!r} has fields {sorted(set(row) ^ set(FIELDS))} "
                     f"missing or extra.")
  for k, t in FIELDS.items():
    v = row[k]
    if v is None:
      continue
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) if t is float else (
        isinstance(v, t) and (t is bool or not isinstance(v, bool)))
    if not ok or (t is float and not math.isfinite(v)):
      raise ValueError(f"row {row['name']!r}: field {k!r} must be {t.__name__} or None, got "
                       f"{v!r}.")
  if row["status"] not in STATUSES:
    raise ValueError(f"row {row['name']!r}: status must be one of {STATUSES}, got "
                     f"{row['status']!r}.")


# ------------------------------------------------------------------------------ the table


def _fmt(v, spec="{:.3g}"):
  return "–" if v is None else spec.format(v)


def _mb(v):
  return "–" if v is None else f"{v / 2**20:.1f}"


FAMILY_TITLES = {
    "floor": "Floors", "seqmnist": "Sequential MNIST shapes (LSTM 30, B = 50, T = 28)",
    "copyrepeat": "Copy-repeat shapes (LSTM 100, B = 100, T = 40)",
    "scale": "Scaling (seqMNIST shapes, B = 16)",
    "seeds": "Seeds: vmap vs loop (BP(λ) sequence mode, seqMNIST shapes, H = 30, B = 50 per seed; `_b10` rows: B = 10)",
    "kernel": "Trace-step kernel (one TD step, B = 100, d_out = 100, d_in = 200)",
}


def table(rows: list[dict]) -> str:
  """A markdown table of the rows, one section per family."""
  head = ("| case | rule | mode | B | T | H | median s | min–max s | compile s | peak MB | "
          "GFLOP/s | × BPTT | × FLOP floor | seq/s | note |")
  rule = "|" + "---|" * 15
  out = []
  for family, title in FAMILY_TITLES.items():
    fam = [r for r in rows if r["family"] == family]
    if not fam:
      continue
    out += [f"### {title}", "", head, rule]
    for r in fam:
      status = "" if r["status"] == "ok" else f"**{r['status']}**: "
      out.append("| " + " | ".join([
          r["name"], r["rule"] or "–", r["mode"] or "–", _fmt(r["batch"], "{}"),
          _fmt(r["seq_len"], "{}"), _fmt(r["hidden"], "{}"), _fmt(r["median_s"], "{:.4g}"),
          "–" if r["min_s"] is None else f"{r['min_s']:.3g}–{r['max_s']:.3g}",
          _fmt(r["compile_s"], "{:.1f}"), _mb(r["peak_bytes"]), _fmt(r["gflops"], "{:.2f}"),
          _fmt(r["ratio_to_bptt"], "{:.2f}"), _fmt(r["ratio_to_flop_floor"], "{:.2f}"),
          _fmt(r["sequences_per_s"], "{:.0f}"),
          (status + (r["note"] or "")).replace("|", "/")]) + " |")
    out.append("")
  return "\n".join(out)


def targets(rows: list[dict]) -> str:
  """The issue's targets, each with the measured numbers and met / not met."""
  by = {r["name"]: r for r in rows if r["status"] == "ok"}
  lines = []

  def verdict(ok):
    return "**met**" if ok else "**not met**"

  r = by.get("copyrepeat_lstm100_bplambda_online")
  if r and r["ratio_to_flop_floor"] is not None:
    line = (f"- (a) BP(λ) online at copy-repeat within 1.3× of its FLOP floor: "
            f"{verdict(r['ratio_to_flop_floor'] <= 1.3)} — {r['median_s']:.3g} s per batch vs floor "
            f"{r['flop_floor_s']:.3g} s ({r['analytic_flops']:.3g} FLOP at "
            f"{by['floor_matmul']['gflops']:.1f} GFLOP/s): {r['ratio_to_flop_floor']:.2f}×")
    end = by.get("floor_matmul_end")
    if end:
      alt = r["median_s"] / (r["analytic_flops"] / (end["gflops"] * 1e9))
      line += f" ({alt:.2f}× with the end-of-run floor, {end['gflops']:.1f} GFLOP/s)"
    lines.append(line + ".")
  else:
    lines.append("- (a) BP(λ) online at copy-repeat: not measured in this run.")
  seq = [x for x in by.values() if x["rule"] == "bp_lambda" and x["mode"] == "sequence"
         and not x["seed_impl"] and x["ratio_to_bptt"] is not None]
  if seq:
    worst = max(seq, key=lambda x: x["ratio_to_bptt"])
    detail = ", ".join(f"{x['name']} {x['ratio_to_bptt']:.2f}×" for x in seq)
    lines.append(f"- (b) BP(λ) sequence mode ≤ 2× the BPTT step at every case: "
                 f"{verdict(worst['ratio_to_bptt'] <= 2.0)} — worst {worst['name']} "
                 f"{worst['ratio_to_bptt']:.2f}× ({detail}).")
  else:
    lines.append("- (b) BP(λ) sequence mode vs BPTT: not measured in this run.")
  for name, ref in (("seqmnist_lstm30_eprop", 0.24), ("copyrepeat_lstm100_eprop", 3.5)):
    x = by.get(name)
    if x:
      speedup = ref / x["median_s"]
      lines.append(f"- (c) e-prop ≥ 5× faster than {ref} s/batch ({name}): "
                   f"{verdict(speedup >= 5)} — {x['median_s']:.3g} s/batch, {speedup:.1f}× faster.")
    else:
      lines.append(f"- (c) {name}: not measured in this run.")
  for prefix, what in (("seeds32", "B = 50 per seed"),
                       (f"seeds32_b{cases_lib.SMALL_SEED_BATCH}",
                        f"B = {cases_lib.SMALL_SEED_BATCH} per seed")):
    v, lp = by.get(f"{prefix}_vmap"), by.get(f"{prefix}_loop")
    if v and lp:
      gain = v["sequences_per_s"] / lp["sequences_per_s"]
      lines.append(f"- (d) 32 vmapped seeds ≥ 4× the throughput of a loop (H = 30, {what}): "
                   f"{verdict(gain >= 4)} — {v['sequences_per_s']:.0f} vs "
                   f"{lp['sequences_per_s']:.0f} sequences/s: {gain:.2f}×.")
    else:
      lines.append(f"- (d) seed vmap vs loop ({what}): not measured in this run.")
  mem = [x for x in by.values() if x["family"] == "scale" and x["rule"] == "bp_lambda"
         and x["mode"] == "sequence"]
  fit = memory_fit(rows)
  if mem and fit:
    pts = ", ".join(f"H={x['hidden']} T={x['seq_len']}: {_mb(x['peak_bytes'])} MB"
                    for x in sorted(mem, key=lambda x: (x["seq_len"], x["hidden"])))
    ok = fit.get("hidden", 9) < 1.5 and fit.get("seq_len", 9) < 1.5
    lines.append(f"- (e) BP(λ) sequence-mode memory grows as B·T·H, not B·T·H²: {verdict(ok)} — "
                 f"log-log slope of peak bytes in H (T = 28) "
                 f"{fit.get('hidden', float('nan')):.2f}, in T (H = 32) "
                 f"{fit.get('seq_len', float('nan')):.2f}; peak MB at B = {mem[0]['batch']}: {pts}.")
  else:
    lines.append("- (e) sequence-mode memory: not measured in this run.")
  return "\n".join(lines)


def memory_fit(rows: list[dict], rule_label: str = "bp_lambda", mode: str = "sequence"):
  """Least-squares exponents of peak bytes in H (at T = 28) and in T (at H = 32) for one rule."""
  ok = [r for r in rows if r["status"] == "ok" and r["family"] == "scale"
        and r["rule"] == rule_label and r["mode"] == mode and r["cell"] == "lstm"]
  out = {}
  for axis, fixed_key, fixed in (("hidden", "seq_len", 28), ("seq_len", "hidden", 32)):
    pts = [(r[axis], r["peak_bytes"]) for r in ok if r[fixed_key] == fixed and r["peak_bytes"]]
    if len(pts) >= 2:
      xs, ys = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
      out[axis] = float(np.polyfit(xs, ys, 1)[0])
  return out


# ------------------------------------------------------------------------------ command line


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
  p.add_argument("--list", action="store_true", help="list the case names and exit")
  p.add_argument("--only", metavar="NAME[,NAME...]",
                 help="run only these cases (plus the floor and BPTT rows they refer to)")
  p.add_argument("--no-refs", action="store_true",
                 help="with --only, do not add the floor and BPTT reference rows")
  p.add_argument("--json", default=DEFAULT_JSON, metavar="FILE",
                 help=f"where to write the rows (a JSON list); default {DEFAULT_JSON}")
  p.add_argument("--repeats", type=int, default=MIN_REPEATS,
                 help=f"timed calls per case after one warm-up call (>= {MIN_REPEATS}; "
                      f"any >= 1 with --tiny)")
  p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, metavar="SECONDS",
                 help="per-case budget for the timed calls; slower cases get fewer repeats "
                      "(noted in the row)")
  p.add_argument("--tiny", action="store_true", help="run every case at a tiny size (smoke test)")
  p.add_argument("--table", metavar="FILE.json",
                 help="print the markdown table and targets for a results file and exit")
  return p


def main(argv: Optional[list[str]] = None) -> int:
  args = _parser().parse_args(argv)
  if args.table:
    with open(args.table) as f:
      rows = json.load(f)
    print(table(rows))
    print("#### Targets\n")
    print(targets(rows))
    print("\n#### Peak-memory exponents (log-log slope of peak bytes; H at T = 28, T at H = 32)\n")
    for label, mode in (("bptt", "sequence"), ("bp_lambda", "sequence"), ("bp_lambda", "online"),
                        ("eprop", "online"), ("rtrl", "online")):
      fit = memory_fit(rows, label, mode)
      if fit:
        print(f"- {label} ({mode}): " + ", ".join(f"{k} {v:.2f}" for k, v in fit.items()))
    return 0
  if args.list:
    for c in cases_lib.all_cases():
      reason = cases_lib.availability(c)
      status = (f"unavailable: {reason}" if reason else f"skipped at full size: {c.skip}"
                if c.skip else "")
      print(f"{c.name}" + (f"  [{status}]" if status else ""))
    return 0
  if args.repeats < 1 or (args.repeats < MIN_REPEATS and not args.tiny):
    raise SystemExit(f"--repeats must be >= {MIN_REPEATS} (or >= 1 with --tiny), got "
                     f"{args.repeats}.")
  names = None
  if args.only:
    names = [n.strip() for n in args.only.split(",") if n.strip()]
  try:
    rows = run_cases(names, tiny=args.tiny, repeats=args.repeats, budget_s=args.budget,
                     with_refs=not args.no_refs, log=lambda s: print(s, flush=True))
  except ValueError as e:
    raise SystemExit(str(e)) from e
  for r in rows:
    check_row(r)
  directory = os.path.dirname(os.path.abspath(args.json))
  os.makedirs(directory, exist_ok=True)
  with open(args.json, "w") as f:
    json.dump(rows, f, indent=1)
  info = machine_info()
  print(f"wrote {len(rows)} rows to {args.json} ({info['nproc']} cores, {info['cpu_model']}, "
        f"{info['mem_total_gb']} GB)")
  return 0 if all(r["status"] != "error" for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
