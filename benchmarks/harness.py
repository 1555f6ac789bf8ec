"""Measuring one case: machine info, compile, memory analysis, timing, the program cache, rows.

A row times ``timed``: one call of ``jax.jit(bl.make_update(rule, opt))(state, batch)``
(``train_update``: rule.grads + Adam + the parameter update, compiled ahead of time), the same
update vmapped over S seeds (``train_update_vmap_seeds``) or a Python loop of S single-seed calls
(``train_update_loop_seeds``), ``x @ x`` (``matmul``) or one ``bl.internals.linear_trace_step``
(``trace_step``). Each program is traced, lowered and compiled (``compile_s``), called once
(``first_run_s``), then called ``repeats`` times, each synchronised with
``jax.block_until_ready``; a case slower than ``budget_s / repeats`` gets as many calls as fit in
``budget_s`` (at least the warm-up call), with a note. ``peak_bytes`` is argument + output + temp
bytes of ``compiled.memory_analysis()`` (a static bound); ``flops`` is counted from the jaxpr
(:mod:`benchmarks.flops`), ``xla_flops`` is XLA's cost analysis. Before compiling an online
rule's update the harness runs the library's driver-side ``bl.training.check_memory`` (``grads``
no longer checks memory), so a step state that cannot fit is an error row, not a swapping machine.
Every field is described in benchmarks/README.md ("What a row holds").
"""

from __future__ import annotations

import datetime
import math
import os
import statistics
import subprocess
import time
import traceback
from typing import Any, Callable, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np

import bplambda_jax as bl
from benchmarks import cases as cases_lib
from benchmarks import cases_elementwise
from benchmarks.flops import Uncountable, count_flops

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
    "device": str, "host": str, "date": str, "loadavg_1m": float, "git_sha": str,
    "code_dirty": bool,
}
STATUSES = ("ok", "skipped", "error")


# ------------------------------------------------------------------------------ machine info


def _proc(path: str, key: str) -> Optional[str]:
  """The value after ':' on the first line of ``path`` that starts with ``key``, or None."""
  try:
    with open(path) as f:
      return next((line.split(":", 1)[1].strip() for line in f if line.startswith(key)), None)
  except OSError:
    return None


def machine_info() -> dict:
  """CPU model, core count and memory of this machine (Linux; 'unknown' elsewhere)."""
  mem = _proc("/proc/meminfo", "MemTotal")  # e.g. '24634372 kB'
  return {"nproc": os.cpu_count(), "cpu_model": _proc("/proc/cpuinfo", "model name") or "unknown",
          "mem_total_gb": round(int(mem.split()[0]) / 2**20, 1) if mem else None}


def device() -> str:
  d = jax.devices()[0]
  return f"{d.platform}:{d.device_kind}"


def host() -> str:
  info = machine_info()
  return f"{info['nproc']} cores, {info['cpu_model']}, {info['mem_total_gb']} GB"


_COMMIT: dict = {}


def commit() -> tuple[Optional[str], Optional[bool]]:
  """(HEAD's sha, whether bplambda_jax/ or benchmarks/ has uncommitted changes) of the checkout
  the suite runs from; (None, None) outside a git checkout. Asked once per process."""
  if not _COMMIT:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
      sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                           text=True, timeout=10).stdout.strip() or None
      dirty = subprocess.run(["git", "status", "--porcelain", "--", "bplambda_jax", "benchmarks"],
                             cwd=root, capture_output=True, text=True, timeout=10).stdout
      # the suite's results and their rendering in its README are not code
      dirty = any(not line[3:].startswith(("benchmarks/results/", "benchmarks/README.md"))
                  for line in dirty.splitlines())
    except (OSError, subprocess.SubprocessError):
      sha, dirty = None, None
    _COMMIT.update(sha=sha, dirty=dirty if sha else None)
  return _COMMIT["sha"], _COMMIT["dirty"]


def loadavg() -> Optional[float]:
  try:
    return float(os.getloadavg()[0])
  except OSError:
    return None


# ------------------------------------------------------------------------------ measuring


def keeping_timer(kept: dict) -> Callable:
  """A ``timer`` for :class:`Runner` that makes the warm-up call, keeps the compiled call in
  ``kept['call']`` and leaves the timing to the caller (the interleaving tools)."""

  def keep(call, repeats, budget_s):
    del repeats, budget_s
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    kept["call"] = call
    first = time.perf_counter() - t0
    return first, [first], ""

  return keep


def timed_calls(call: Callable[[], Any], repeats: int, budget_s: float):
  """(first_run_s, [timed seconds], note): one warm-up call, then the budgeted repeats."""
  t0 = time.perf_counter()
  jax.block_until_ready(call())
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
    jax.block_until_ready(call())
    times.append(time.perf_counter() - t0)
  return first, times, note


def compile_program(fn: Callable, args: tuple, compiler_options: Optional[dict] = None):
  """(compiled, compile_s, memory fields, xla_flops, jaxpr flops); compile_s: trace+lower+compile."""
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


def make_args(shapes: bl.TrainState, case: cases_lib.Case, seed: int, lead: tuple = ()):
  """(state, batch) on the device for an update case, made on the host (nothing compiles).

  ``shapes`` is ``jax.eval_shape`` of ``bl.init_state(rule, opt, key)``; the floating parameters
  are drawn U(±1/√H) with numpy, the optimiser state and step are zeros. The cost of an update
  does not depend on these values, and making them with jax would compile a program per case.
  ``lead`` prepends a seed axis to every leaf.
  """
  rng = np.random.default_rng(seed)
  bound = 1.0 / math.sqrt(case.hidden)

  def param(s):
    if jnp.issubdtype(s.dtype, jnp.floating):
      return rng.uniform(-bound, bound, lead + s.shape).astype(s.dtype)
    return np.zeros(lead + s.shape, s.dtype)

  zeros = lambda s: np.zeros(lead + s.shape, s.dtype)
  state = bl.TrainState(jax.tree.map(param, shapes.params),
                        jax.tree.map(zeros, shapes.opt_state), zeros(shapes.step))
  return jax.block_until_ready(jax.device_put((state, cases_lib.make_batch(case, rng, lead))))


class Runner:
  """Runs cases, sharing compiled programs between cases with equal :meth:`Case.program_key`."""

  def __init__(self, repeats: int = MIN_REPEATS, budget_s: float = DEFAULT_BUDGET_S,
               tiny: bool = False, log: Callable[[str], None] = print,
               timer: Optional[Callable] = None):
    if not isinstance(repeats, int) or repeats < 1:
      raise ValueError(f"repeats must be a positive integer, got {repeats!r}.")
    if not budget_s > 0:
      raise ValueError(f"budget_s must be > 0, got {budget_s!r}.")
    self.repeats, self.budget_s, self.tiny, self.log = repeats, budget_s, tiny, log
    # At the tiny sizes many cases are the same program (the scaling and seed-count families
    # differ only in size): each distinct program is measured once and its row reused.
    self._tiny_rows: dict = {}
    # timer(call, repeats, budget_s) -> (first_run_s, [seconds], note): how a case's compiled
    # call is timed (default :func:`timed_calls`); the interleaving tools (benchmarks/compare.py,
    # benchmarks/peers/) pass one that keeps the call and times it themselves.
    self.timer = timer or timed_calls
    # The tiny smoke run compiles at XLA's lowest backend optimisation level (about half the
    # compile time); full-size runs use the default compiler options.
    self.compiler_options = TINY_COMPILER_OPTIONS if tiny else None
    self._programs: dict = {}

  def _update_program(self, case: cases_lib.Case):
    """(program, shared): the compiled update of an 'update' case with its arguments and costs,
    cached by :meth:`Case.program_key`; ``shared`` is True when an earlier row compiled it."""
    key = case.program_key()
    if key in self._programs:
      return self._programs[key], True
    rule = case.build_rule()
    if rule.name != case.rule:
      raise ValueError(f"make_rule({case.rule!r}) built a rule named {rule.name!r}.")
    opt = bl.optimiser(*case.lrs)
    update = bl.make_update(rule, opt, checked=case.checked)
    vmapped = case.seed_axis() == "vmap"
    shapes = jax.eval_shape(lambda k: bl.init_state(rule, opt, k), jax.random.key(0))
    bl.training.check_memory(rule, shapes.params, case.batch,
                             seeds=case.seeds if vmapped else 1)
    args = make_args(shapes, case, seed=0, lead=(case.seeds,) if vmapped else ())
    compiled, compile_s, mem, xla_flops, flops = compile_program(
        jax.vmap(update) if vmapped else update, args, self.compiler_options)
    self._programs[key] = {"compiled": compiled, "args": args, "compile_s": compile_s,
                           "mem": mem, "xla_flops": xla_flops, "flops": flops, "mode": rule.mode,
                           "make_args": lambda seed: make_args(shapes, case, seed=seed)}
    return self._programs[key], False

  def _measure_update(self, case: cases_lib.Case, row: dict) -> None:
    prog, shared = self._update_program(case)
    compiled, args = prog["compiled"], prog["args"]
    if case.seed_axis() == "loop":
      per_seed = [prog["make_args"](seed) for seed in range(case.seeds)]

      def call():
        return [compiled(*a) for a in per_seed]
      flops = None if prog["flops"] is None else prog["flops"] * case.seeds
      row["timed"] = "train_update_loop_seeds"
    else:
      def call():
        return compiled(*args)
      flops = prog["flops"]
      row["timed"] = "train_update_vmap_seeds" if case.seed_axis() == "vmap" else "train_update"
    first, times, note = self.timer(call, self.repeats, self.budget_s)
    if shared:
      note = "; ".join(n for n in (note, "compiled program shared with an earlier row") if n)
    row.update(prog["mem"])
    row.update(mode=prog["mode"], compile_s=prog["compile_s"], xla_flops=prog["xla_flops"],
               flops=flops)
    self._fill_times(row, first, times, note)
    row["sequences_per_s"] = case.batch * case.seeds / row["median_s"]

  def _measure_program(self, row: dict, fn: Callable, args: tuple, **fields):
    """Compile ``fn(*args)``, time it, fill the row's compile and memory fields and ``fields``;
    returns (first_run_s, times, note)."""
    compiled, compile_s, mem, xla_flops, flops = compile_program(fn, args, self.compiler_options)
    first, times, note = self.timer(lambda: compiled(*args), self.repeats, self.budget_s)
    row.update(mem)
    row.update(compile_s=compile_s, xla_flops=xla_flops, flops=flops, **fields)
    return first, times, note

  def _measure_matmul(self, case: cases_lib.Case, row: dict) -> None:
    n = case.hidden
    x = jax.block_until_ready(jax.device_put(
        np.random.default_rng(0).standard_normal((n, n), np.float32)))
    self._fill_times(row, *self._measure_program(row, lambda a: a @ a, (x,), timed="matmul"))

  def _measure_trace_step(self, case: cases_lib.Case, row: dict) -> None:
    B, d = case.batch, case.hidden
    n = 2 * d
    rng = np.random.default_rng(0)
    normal = lambda *shape: rng.standard_normal(shape, np.float32)
    trace = {"w": normal(B, d, d, n), "b": normal(B, d, d)}
    args = jax.block_until_ready(jax.device_put(
        (trace, normal(B, d, d) / d, normal(B, n), normal(B, d))))
    fn = lambda tr, mm, zz, dd: bl.internals.linear_trace_step(tr, mm, zz, dd, 0.9, impl=case.impl)
    first, times, note = self._measure_program(row, fn, args, timed="trace_step", mode="online",
                                               rule=f"internals.linear_trace_step[{case.impl}]")
    auto = bl.internals.select_impl()
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

  def run_case(self, case: cases_lib.Case) -> dict:
    """One row (never raises for a failing case: the row's status is 'error')."""
    if self.tiny:
      case = case.tiny()
      program = case._replace(name="", note="", bptt_ref=None)
      same = self._tiny_rows.get(program)
      if same is not None:
        note = "; ".join(x for x in (case.note, f"tiny: the program of {same['name']}") if x)
        return {**same, "name": case.name, "note": note, "bptt_ref": case.bptt_ref}
    row = self._run_case(case)
    if self.tiny:
      self._tiny_rows[program] = row
    return row

  def _run_case(self, case: cases_lib.Case) -> dict:
    row = base_row(case, self.tiny)
    try:
      # Both build the rule (a case whose rule cannot be built is an error row).
      row.update(mode=cases_lib.rule_mode(case), analytic_flops=cases_lib.analytic_flops(case))
      if case.skip is not None:
        row.update(status="skipped", note=case.skip)
        return row
      row["loadavg_1m"] = loadavg()
      with jax.enable_x64(False):  # float32 even under a test session that enables x64
        if case.kind == "update":
          self._measure_update(case, row)
        elif case.kind == "matmul":
          self._measure_matmul(case, row)
        elif case.kind == "trace_step":
          self._measure_trace_step(case, row)
        elif case.kind == "structured_step":
          fn, args = cases_elementwise.structured_step_program(case)
          self._fill_times(row, *self._measure_program(
              row, fn, args, timed="structured_step", mode="online",
              rule=f"internals.structured_trace_step[{case.impl}]"))
        else:
          raise ValueError(f"case kind must be one of {cases_lib.KINDS}, got {case.kind!r}.")
      row["status"] = "ok"
    except Exception as e:  # report and go on: one broken rule must not hide the others
      row.update(status="error", note=f"{type(e).__name__}: {e}")
      self.log(traceback.format_exc())
    return row


# ------------------------------------------------------------------------------ rows


def base_row(case: cases_lib.Case, tiny: bool) -> dict:
  """A row with every field of :data:`FIELDS`, filled from the case's configuration.

  ``rule`` is the case's spec (e.g. 'dni:3'); :meth:`Runner.run_case` adds ``mode`` (the built
  rule's ``rule.mode``) and ``analytic_flops``.
  """
  row = dict.fromkeys(FIELDS)
  row.update(
      name=case.name, family=case.family, kind=case.kind, status="ok", note=case.note,
      rule=case.rule, cell=case.cell, loss=case.loss,
      batch=case.batch or None, seq_len=case.seq_len or None, hidden=case.hidden or None,
      input_size=case.input_size or None, output_size=case.output_size or None,
      seeds=case.seeds, seed_impl=case.seed_impl, dtype="float32", tiny=tiny,
      bptt_ref=case.bptt_ref, jax_version=jax.__version__, device=device(), host=host(),
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
  row["git_sha"], row["code_dirty"] = commit()
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


# ------------------------------------------------------------------------------ running


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
  for case in cases_lib.select(names, with_refs):
    t0 = time.perf_counter()
    row = runner.run_case(case)
    rows.append(row)
    extra = f"median {row['median_s']:.4g} s" if row["status"] == "ok" else row["note"]
    log(f"[{time.perf_counter() - t0:6.1f} s] {row['name']}: {row['status']} ({extra})")
  log(f"suite: {time.perf_counter() - wall0:.0f} s wall, {time.process_time() - cpu0:.0f} s CPU "
      f"(this process), load average at the end {loadavg()}")
  return add_derived(rows)
