"""The benchmark cases: what is timed, at which sizes, with which rule and hyper-parameters.

Every case is a :class:`Case` (a NamedTuple of plain values). Its rule is a spec of the library's
one rule registry ('bptt', 'tbptt:3', 'dni:3', 'snap:1', 'eprop_m:1', 'bp_lambda', 'rtrl',
'eprop', 'columnar_rtrl') plus options, and is built with ``bl.make_rule(spec, model, **options)``
(:meth:`Case.build_rule`); its mode ('online' or 'sequence') is the built rule's ``rule.mode``.

Families (all float32):

* ``seqmnist_lstm30_*``: LSTM 30 units, batch 50, T = 28 rows of 28 pixels in [0, 1], 10 classes
  (softmax cross-entropy on the last step only), Adam(0.9, 0.98, 1e-9) with learning rate 3e-4 for
  every group (the authors' seqMNIST configuration). BP(λ): e-prop flavour, λ = γ = 1,
  sg_scale = 0.1, no clipping. The data are random with these shapes (not the MNIST digits: the
  cost does not depend on them).
* ``copyrepeat_lstm100_*``: LSTM 100 units, batch 100, T = 40, 10 input bits, 9 outputs (BCE on
  every step), learning rates (1e-3, 1e-3, 1e-5). BP(λ): e-prop flavour, γ = 0.9, λ = 1,
  sg_scale = 1.
* ``scale_h{H}_t{T}_*``: seqMNIST shapes at batch 16 (to keep the whole run short), H ∈ {32, 64,
  128, 256} at T = 28 and T ∈ {100, 300, 1000} at H = 32, for BPTT, e-prop, BP(λ) online and
  sequence, RTRL, and columnar RTRL (with its own BPTT row on the columnar LSTM). Sizes whose
  analytic cost exceeds :data:`SCALE_FLOP_LIMIT` are listed as skipped, with the estimate.
* ``seeds{S}_{vmap,loop}``: S ∈ {1, …, 64} seeds of BP(λ) sequence mode at seqMNIST shapes
  (H = 30, batch 50 per seed): one ``jax.vmap``-ed update over the seeds against a Python loop of
  single-seed jitted updates; ``seeds32_auto`` times what ``seed_axis='auto'`` picks on this
  machine (:func:`bplambda_jax.internals.resolve_seed_axis`: a loop on CPU, a vmap on GPU/TPU).
* ``guard_*_unchecked``: seqMNIST rows timed with ``make_update(..., checked=False)``: their
  checked rows over them are the cost of the default on-device checks (target: < 5 %).
* ``floor_matmul``: a 2048×2048 float32 matmul, the machine's achievable GFLOP/s.
* ``kernel_trace_step_*``: one online BP(λ) trace step of the linear synthesiser at copy-repeat
  size through :func:`bplambda_jax.internals.linear_trace_step` (the fused Pallas kernel on
  GPU/TPU; on CPU the XLA path, and the Pallas interpreter row is skipped).
"""

from __future__ import annotations

import functools
from typing import Iterable, NamedTuple, Optional

import jax
import numpy as np

import bplambda_jax as bl

from benchmarks import cases_elementwise

KINDS = ("update", "matmul", "trace_step", "structured_step")
SEED_IMPLS = ("vmap", "loop")
AUTO_SEED_COUNTS = (32,)  # seeds{S}_auto rows: what seed_axis='auto' picks here

# Scaling rows whose analytic cost (see :func:`estimated_flops`) exceeds this are skipped: on the
# 2-core CPU this suite was tuned on, batched contractions run at ~10 GFLOP/s, so 1.5e11 FLOP is
# ≈ 15 s per update and six runs of it would take most of the suite's time budget.
SCALE_FLOP_LIMIT = 1.5e11

# Sizes used by ``--tiny`` (the test): every case runs, at these sizes.
TINY = {"batch": 2, "seq_len": 5, "hidden": 4, "max_seeds": 2, "matmul": 64}


class Case(NamedTuple):
  """One benchmark row.

  Attributes:
    name: unique row name.
    family: 'seqmnist', 'copyrepeat', 'scale', 'seeds', 'elementwise', 'floor' or 'kernel'.
    kind: 'update' (one jitted ``bl.make_update`` step), 'matmul', 'trace_step' or
      'structured_step' (one structured BP(λ) trace step, ``benchmarks/cases_elementwise.py``).
    rule: the rule's spec for ``bl.make_rule`` (e.g. 'dni:3'); None for floors and kernels.
    options: the rule's options for ``bl.make_rule``, as sorted (name, value) pairs (hashable).
    cell: cell name ('lstm', 'columnar_lstm') or None.
    loss: 'ce' or 'bce' (None for floors and kernels).
    input_size, output_size: D_in, D_out.
    hidden: H.
    batch: B (per seed).
    seq_len: T.
    seeds: number of seeds timed together (1 unless ``seed_impl`` is set).
    seed_impl: None, 'vmap' (one vmapped update), 'loop' (a Python loop of jitted updates) or
      'auto' (whichever ``internals.resolve_seed_axis('auto')`` picks on this machine).
    lrs: (lr_cell, lr_readout, lr_synth) for ``bl.optimiser``.
    bptt_ref: name of the BPTT row of the same model, for ``ratio_to_bptt``.
    skip: reason the case is not run at its full size (None: it is run).
    note: free text carried into the row.
    impl: the trace-step implementation for 'trace_step' and 'structured_step' cases ('xla' or
      'pallas').
    checked: the update's on-device checks (``make_update(..., checked=...)``, on by default).
  """

  name: str
  family: str
  kind: str = "update"
  rule: Optional[str] = None
  options: tuple = ()
  cell: Optional[str] = None
  loss: Optional[str] = None
  input_size: int = 0
  output_size: int = 0
  hidden: int = 0
  batch: int = 0
  seq_len: int = 0
  seeds: int = 1
  seed_impl: Optional[str] = None
  lrs: tuple = (0.0, 0.0, 0.0)
  bptt_ref: Optional[str] = None
  skip: Optional[str] = None
  note: str = ""
  impl: Optional[str] = None
  checked: bool = True

  def tiny(self) -> "Case":
    """The same case at the ``--tiny`` sizes (never skipped)."""
    if self.kind == "matmul":
      return self._replace(hidden=TINY["matmul"], skip=None)
    return self._replace(batch=TINY["batch"], seq_len=TINY["seq_len"] if self.seq_len > 1 else 1,
                         hidden=TINY["hidden"], seeds=min(self.seeds, TINY["max_seeds"]),
                         skip=None)

  def program_key(self) -> tuple:
    """Everything that determines the compiled program (cases with equal keys share it)."""
    return (self.kind, self.rule, self.options, self.cell, self.loss, self.input_size,
            self.output_size, self.hidden, self.batch, self.seq_len, self.lrs, self.impl,
            ("vmap", self.seeds) if self.seed_axis() == "vmap" else ("single",), self.checked)

  def seed_axis(self) -> Optional[str]:
    """'vmap' or 'loop' for a seeds row ('auto' resolved on this machine), else None."""
    return bl.internals.resolve_seed_axis(self.seed_impl) if self.seed_impl else None

  def build_rule(self) -> bl.Rule:
    """The case's rule: ``bl.make_rule(rule, make_model(cell, loss, ...), **options)``."""
    return _build(self.rule, self.options, self.cell, self.loss, self.input_size,
                  self.output_size, self.hidden)


def _build(spec, options, cell, loss, input_size, output_size, hidden) -> bl.Rule:
  if spec is None:
    raise ValueError("this case has no rule.")
  model = bl.make_model(cell, loss, input_size, output_size, hidden_size=hidden)
  return bl.make_rule(spec, model, **dict(options))


@functools.lru_cache(maxsize=None)
def _mode(spec, options, cell, loss, input_size, output_size, hidden) -> str:
  return _build(spec, options, cell, loss, input_size, output_size, hidden).mode


def rule_mode(case: Case) -> Optional[str]:
  """The built rule's ``mode`` ('online' or 'sequence'); None for cases without a rule."""
  if case.rule is None:
    return None
  return _mode(case.rule, case.options, case.cell, case.loss, case.input_size, case.output_size,
               case.hidden)


def _rule(spec: str, **options) -> dict:
  """The ``rule`` and ``options`` fields of a case."""
  return {"rule": spec, "options": tuple(sorted(options.items()))}


def _bp_lambda(mode: str, lambda_: float, gamma: float, sg_scale: float, **extra) -> dict:
  """BP(λ), e-prop flavour (the reference's LSTM configuration), default clipping (off).

  ``extra`` passes further bp_lambda options (e.g. sensitivity, trace_chunk).
  """
  return _rule("bp_lambda", flavour="eprop", mode=mode, lambda_=lambda_, gamma=gamma,
               sg_scale=sg_scale, **extra)


# ------------------------------------------------------------------------------ analytic costs


def trace_flops(batch: int, steps: int, hidden: int) -> float:
  """The floor of BP(λ) online's trace work, e-prop flavour with the linear synthesiser.

  The issue's count: B·d_out²·d_in multiply-adds per TD step (one per entry of the trace of
  W [d_out, d_in], d_out = H, d_in = 2H), 2 FLOPs each; the e-prop flavour has T + 1 TD steps.
  The default chunked trace (``bl.internals.ChunkedTrace``) does L·B·(d_out² + d_out·d_in) per step
  in its chain and outer products (L = min(64, T + 1)), plus this count per step once E⁰ is
  stored (sequences longer than a chunk) and a fold every L steps.
  """
  d_out, d_in = hidden, 2 * hidden
  return 2.0 * batch * steps * d_out * d_out * d_in


def dense_step_flops(batch: int, hidden: int) -> float:
  """FLOPs of one dense trace step (``bl.internals.linear_trace_step``): M·E and δ·E.

  E [B, d_out, *θ] for w [d_out, d_in] and b [d_out], |θ| = d_out·d_in + d_out; M·E costs
  B·d_out²·|θ| multiply-adds and δ·E B·d_out·|θ|. Elementwise work is not counted.
  """
  d_out, d_in = hidden, 2 * hidden
  theta = d_out * d_in + d_out
  return 2.0 * batch * (d_out * d_out + d_out) * theta


def analytic_flops(case: Case) -> Optional[float]:
  """The analytic FLOP count reported for a case (BP(λ) online and trace-step rows), or None."""
  if case.kind == "trace_step":
    return dense_step_flops(case.batch, case.hidden)
  if case.family == "elementwise":  # structured traces: the dense-trace floor does not apply
    return None
  if case.rule == "bp_lambda" and rule_mode(case) == "online":
    return trace_flops(case.batch, case.seq_len + 1, case.hidden) * case.seeds
  return None


def _lstm_params(hidden: int, input_size: int) -> int:
  return 4 * hidden * (input_size + hidden + 1)


def estimated_flops(case: Case) -> Optional[float]:
  """Dominant cost of the rules that scale badly: dense RTRL (J·Z, 2·B·T·n²·P) and BP(λ) online."""
  if case.rule == "rtrl":
    n = 2 * case.hidden
    return 2.0 * case.batch * case.seq_len * n * n * _lstm_params(case.hidden, case.input_size)
  return analytic_flops(case)


# ------------------------------------------------------------------------------ data


def make_batch(case: Case, rng: np.random.Generator, lead: tuple = ()) -> bl.Batch:
  """A random float32 batch with the case's shapes (time-major), made with numpy.

  seqMNIST: x ~ U[0, 1] [T, B, 28], integer labels [T, B], loss on the last step only.
  copy-repeat: random bits x [T, B, 10] and targets [T, B, 9], loss on every step.
  ``lead`` is prepended to every shape (e.g. (S,) for S seeds). The data are made on the host so
  that preparing a case compiles nothing (XLA compiles cost seconds each on a small CPU).
  """
  T, B = case.seq_len, case.batch
  if case.loss == "ce":
    x = rng.uniform(0.0, 1.0, lead + (T, B, case.input_size))
    y = np.broadcast_to(rng.integers(0, case.output_size, lead + (1, B)), lead + (T, B))
    mask = np.zeros(lead + (T, B))
    mask[..., -1, :] = 1.0
  elif case.loss == "bce":
    x = rng.integers(0, 2, lead + (T, B, case.input_size))
    y = rng.integers(0, 2, lead + (T, B, case.output_size))
    mask = np.ones(lead + (T, B))
  else:
    raise ValueError(f"case {case.name!r}: loss must be 'ce' or 'bce', got {case.loss!r}.")
  f32 = lambda a: np.ascontiguousarray(a, np.float32)
  y = np.ascontiguousarray(y, np.int32) if case.loss == "ce" else f32(y)
  return bl.Batch(f32(x), y, f32(mask))


# ------------------------------------------------------------------------------ the registry

SEQMNIST = dict(cell="lstm", loss="ce", input_size=28, output_size=10, seq_len=28,
                lrs=(3e-4, 3e-4, 3e-4))
COPYREPEAT = dict(cell="lstm", loss="bce", input_size=10, output_size=9, hidden=100, batch=100,
                  seq_len=40, lrs=(1e-3, 1e-3, 1e-5))
SEQMNIST_BPL = dict(lambda_=1.0, gamma=1.0, sg_scale=0.1)
COPYREPEAT_BPL = dict(lambda_=1.0, gamma=0.9, sg_scale=1.0)

SCALE_HIDDEN = (32, 64, 128, 256)
SCALE_TIME = (28, 100, 300, 1000)
SCALE_BATCH = 16
SEED_COUNTS = (1, 2, 4, 8, 16, 32, 64)
SMALL_SEED_BATCH = 10
SMALL_BATCH_SEED_COUNTS = (1, 8, 32)


def _seqmnist_cases():
  rules = {
      "bptt": _rule("bptt"),
      "eprop": _rule("eprop", mode="online"),
      "bplambda_online": _bp_lambda("online", **SEQMNIST_BPL),
      "bplambda_sequence": _bp_lambda("sequence", **SEQMNIST_BPL),
      "rtrl": _rule("rtrl", mode="online"),
      "snap1": _rule("snap:1"),
      "eprop_m1": _rule("eprop_m:1", mode="online"),
      "eprop_m2": _rule("eprop_m:2", mode="online"),
      "dni3": _rule("dni:3", bootstrap="faithful", sg_scale=SEQMNIST_BPL["sg_scale"]),
      "tbptt3": _rule("tbptt:3"),
  }
  notes = {"dni3": "n = 3, bootstrap 'faithful', sg_scale 0.1, linear synthesiser"}
  return [Case(f"seqmnist_lstm30_{k}", "seqmnist", **r, hidden=30, batch=50,
               bptt_ref="seqmnist_lstm30_bptt", note=notes.get(k, ""), **SEQMNIST)
          for k, r in rules.items()]


def _copyrepeat_cases():
  rules = {
      "bptt": _rule("bptt"),
      "eprop": _rule("eprop", mode="online"),
      "bplambda_online": _bp_lambda("online", **COPYREPEAT_BPL),
      "bplambda_online_immediate": _bp_lambda("online", sensitivity="immediate", **COPYREPEAT_BPL),
      "bplambda_online_dense": _bp_lambda("online", trace_chunk=0, **COPYREPEAT_BPL),
      "bplambda_sequence": _bp_lambda("sequence", **COPYREPEAT_BPL),
  }
  notes = {
      "bplambda_online_immediate": "sensitivity='immediate': the TD(λ) part without e-prop's "
                                   "traces for the network",
      "bplambda_online_dense": "trace_chunk=0: the dense per-step trace (M·E, B·d_out³·d_in "
                               "multiply-adds per step)",
  }
  return [Case(f"copyrepeat_lstm100_{k}", "copyrepeat", **r, note=notes.get(k, ""),
               bptt_ref="copyrepeat_lstm100_bptt", **COPYREPEAT)
          for k, r in rules.items()]


def _scale_cases():
  sizes = [(h, 28) for h in SCALE_HIDDEN] + [(32, t) for t in SCALE_TIME if t != 28]
  rules = [("bptt", "lstm", _rule("bptt")), ("eprop", "lstm", _rule("eprop", mode="online")),
           ("bplambda_online", "lstm", _bp_lambda("online", **SEQMNIST_BPL)),
           ("bplambda_sequence", "lstm", _bp_lambda("sequence", **SEQMNIST_BPL)),
           ("rtrl", "lstm", _rule("rtrl", mode="online")),
           ("columnar_bptt", "columnar_lstm", _rule("bptt")),
           ("columnar_rtrl", "columnar_lstm", _rule("columnar_rtrl", mode="online"))]
  shapes = {k: v for k, v in SEQMNIST.items() if k not in ("seq_len", "cell")}
  out = []
  for h, t in sizes:
    for label, cell, r in rules:
      ref = f"scale_h{h}_t{t}_{'columnar_bptt' if cell == 'columnar_lstm' else 'bptt'}"
      case = Case(f"scale_h{h}_t{t}_{label}", "scale", **r, cell=cell, hidden=h,
                  batch=SCALE_BATCH, seq_len=t, bptt_ref=ref, **shapes)
      est = estimated_flops(case)
      if est is not None and est > SCALE_FLOP_LIMIT:
        case = case._replace(skip=f"estimated {est:.2g} FLOP per update > {SCALE_FLOP_LIMIT:.2g} "
                                  f"(too slow for this machine's time budget)")
      out.append(case)
  return out


def _seed_cases():
  r = _bp_lambda("sequence", **SEQMNIST_BPL)
  out = []
  for s in SEED_COUNTS:
    for impl in SEED_IMPLS:
      out.append(Case(f"seeds{s}_{impl}", "seeds", **r, hidden=30, batch=50, seeds=s,
                      seed_impl=impl, bptt_ref="seqmnist_lstm30_bptt", **SEQMNIST))
  for s in AUTO_SEED_COUNTS:
    out.append(Case(f"seeds{s}_auto", "seeds", **r, hidden=30, batch=50, seeds=s,
                    seed_impl="auto", bptt_ref="seqmnist_lstm30_bptt",
                    note="seed_axis='auto': a loop on CPU, a vmap on GPU/TPU", **SEQMNIST))
  for s in SMALL_BATCH_SEED_COUNTS:  # the toy task's batch size: per-call overheads dominate
    for impl in SEED_IMPLS:
      out.append(Case(f"seeds{s}_b{SMALL_SEED_BATCH}_{impl}", "seeds", **r, hidden=30,
                      batch=SMALL_SEED_BATCH, seeds=s, seed_impl=impl,
                      bptt_ref="seqmnist_lstm30_bptt", **SEQMNIST))
  return out


def _guard_cases():
  """BPTT and BP(λ) sequence at the seqMNIST shape without the checks (the cheapest updates,
  where the checks weigh most)."""
  rules = {"bptt": _rule("bptt"), "bplambda_sequence": _bp_lambda("sequence", **SEQMNIST_BPL)}
  return [Case(f"guard_seqmnist_lstm30_{k}_unchecked", "guard", **r, hidden=30, batch=50,
               checked=False, bptt_ref="seqmnist_lstm30_bptt",
               note=f"checked=False; compare with seqmnist_lstm30_{k}", **SEQMNIST)
          for k, r in rules.items()]


def _floor_and_kernel_cases():
  cases = [Case("floor_matmul", "floor", kind="matmul", hidden=2048,
                note="2048x2048 float32 matmul, 2·N³ FLOP")]
  for impl in ("xla", "pallas"):
    skip = None
    if impl == "pallas" and jax.default_backend() == "cpu":
      skip = "Pallas runs only in interpret mode on CPU (a correctness tool, not timed)"
    cases.append(Case(f"kernel_trace_step_{impl}", "kernel", kind="trace_step", hidden=100,
                      batch=100, seq_len=1, impl=impl, skip=skip,
                      note="one TD step of internals.linear_trace_step at copy-repeat size"))
  return cases


def check_options(case: Case) -> None:
  """The case's options are ones its rule takes (``bl.rules.rule_options``), before any build."""
  accepted = bl.rules.rule_options(case.rule)  # also checks the spec
  unknown = sorted({k for k, _ in case.options} - set(accepted))
  if unknown:
    raise ValueError(f"case {case.name!r}: rule {case.rule!r} does not take option(s) {unknown}; "
                     f"it accepts {list(accepted) or 'none'}.")


def all_cases() -> list[Case]:
  """Every case, in run order (the floor first, so later rows can use it)."""
  extra = _floor_and_kernel_cases()
  cases = (extra[:1] + _seqmnist_cases() + _guard_cases() + _copyrepeat_cases() + _scale_cases()
           + _seed_cases())
  cases += cases_elementwise.elementwise_cases()
  cases += extra[1:] + cases_elementwise.kernel_cases()
  # The floor again at the end: its drift shows how much the machine's load changed during the run.
  cases.append(extra[0]._replace(name="floor_matmul_end",
                                 note="floor_matmul again at the end of the run (drift check)"))
  names = [c.name for c in cases]
  if len(set(names)) != len(names):
    raise AssertionError("benchmark case names must be unique")
  for c in cases:
    if c.rule is not None:
      check_options(c)
  return cases


def select(names: Optional[Iterable[str]], with_refs: bool = True) -> list[Case]:
  """The cases to run: all, or the named ones plus (``with_refs``) their floors and BPTT refs."""
  every = all_cases()
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
      if analytic_flops(c) is not None:
        wanted.add("floor_matmul")
  return [c for c in every if c.name in wanted]
