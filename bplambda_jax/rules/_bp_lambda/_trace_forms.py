"""The forms of BP(λ)'s online synthesiser trace: how E and M_{τ−1} are stored between TD steps.

Every form carries out the same TD step (:mod:`bplambda_jax.rules._bp_lambda._online`)

    E_τ = c·M_{τ−1}·E_{τ−1} + keep·∂ĝ(z_{τ−1})/∂θ,     inc_τ = mean_b δ_τ·E_τ,     c = γλ·keep

and gives the same numbers (only the order of floating-point sums differs); they differ in what
:class:`TDState` holds and in the cost per step. One form is chosen per rule, by
:func:`trace_form`, from the rule's ``trace`` argument, the synthesiser and the cell's declared
structure:

============  ===============================  ========================================  =====
form          ``TDState.m`` (M_{τ−1})           ``TDState.trace`` (E_{τ−1})               for
============  ===============================  ========================================  =====
structured    M's blocks, [B, k, k, U]          the stored block pairs, [B, S, U, P]      (a)
chunked       the flavour's link context of     :class:`~bplambda_jax.internals.ChunkedTrace` (b)
              M (a tuple of [B, ...] arrays)
dense_linear  M, [B, d_out, d_out]              {'w': [B, d_out, d_out, d_in],            (c)
                                                'b': [B, d_out, d_out]}
dense         M, [B, d_out, d_out]              θ's tree, leaves [B, d_out, *θ_leaf]      (d)
============  ===============================  ========================================  =====

(a) a linear ĝ = W z + β when the flavour's M is diagonal (k = 1, S = 1, U = d_out:
e[o, j] = E[o, o, j]) or unit-block-diagonal over U units of k components; P = d_in + 1 with β,
padded to whole kernel tiles on GPU/TPU (:func:`bplambda_jax.internals.structured_trace_step`).
(b) a linear ĝ otherwise: chunks of L steps kept as link contexts, folded into a dense E⁰.
(c) a linear ĝ with ``trace='dense'``: M formed, ∂ĝ/∂θ never formed (the fused trace-step kernel).
(d) a non-linear ĝ: ∂ĝ/∂θ by ``jacrev``, M formed.

Tested by tests/test_bp_lambda.py, tests/test_structured_traces.py and tests/test_traces.py
(every form against the others and against the λ = γ = 1 oracle).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Generic, NamedTuple, Optional, TypeVar

import chex
import jax
import jax.numpy as jnp

from bplambda_jax.credit._synth_traces import _chunked
from bplambda_jax.credit._synth_traces import _dense
from bplambda_jax.credit._synth_traces import _structured
from bplambda_jax.model import Synthesiser
from bplambda_jax.rules._bp_lambda._flavours import Context, transition

M = TypeVar("M")
E = TypeVar("E")


class TDState(NamedTuple, Generic[M, E]):
  """The synthesiser's TD(λ) state between two TD steps.

  ``m`` and ``trace`` are stored in the rule's trace form (``bp_lambda``'s ``trace``), one form
  per rule, so their structure never changes between steps:

  * structured: m = M's blocks, [B, k, k, U]; trace = the stored block pairs, [B, S, U, P] (a
    diagonal M: [B, 1, d_out, P] with e[o, j] = E[o, o, j]; P = d_in + 1 with β, padded to
    whole kernel tiles on GPU/TPU).
  * chunked: m = the flavour's link context of M, a tuple of [B, ...] arrays; trace = a
    :class:`~bplambda_jax.internals.ChunkedTrace`.
  * dense: m = M, [B, d_out, d_out]; trace = θ's tree with leaves [B, d_out, *θ_leaf] (for the
    linear ĝ {'w': [B, d_out, d_out, d_in], 'b': [B, d_out, d_out]}).

  Attributes:
    z: ĝ's input at the previous TD step, z_{τ−1}, [B, d_in].
    g: ĝ emitted at the previous TD step, [B, d_out].
    m: M_{τ−1} in the trace form.
    trace: the eligibility trace E_{τ−1} in the trace form.
  """

  z: jax.Array
  g: jax.Array
  m: M
  trace: E


StructuredTD = TDState[jax.Array, jax.Array]  # m: blocks [B, k, k, U]; trace: [B, S, U, P]
ChunkedTD = TDState[Context, _chunked.ChunkedTrace]  # m: M's link context; trace: a ChunkedTrace
DenseTD = TDState[jax.Array, chex.ArrayTree]  # m: [B, d_out, d_out]; trace: θ's tree


class TraceForm(NamedTuple):
  """One storage of the synthesiser's trace: four pure functions (module docstring).

  Attributes:
    kind: 'structured', 'chunked', 'dense_linear' or 'dense'.
    init: ``init(cp, theta, B, dtype, trace_dtype, steps) -> (m0, trace0)``, the zero state for a
      batch of B; M in ``dtype`` (the parameters'), E in ``trace_dtype``; ``steps``: the TD steps
      of a sequence if known (the chunked form then skips E⁰ when one chunk holds them all).
    next_m: ``next_m(cp, ctx, dtype) -> m``: M_τ (link context ``ctx``, leaves [B, ...]) as the
      form stores it, the next step's ``TDState.m``.
    apply_m: ``apply_m(cp, ctx, m, v) -> v·M_τ`` for v [B, d_out], with ``m = next_m(cp, ctx)``.
    step: ``step(cp, theta, frozen, td, delta, c, keep) -> (trace, inc)``: E_τ from ``td`` (a
      :class:`TDState` at τ − 1), ĝ's parameters (θ and its frozen part), δ_τ [B, d_out], the
      decay c and the factor ``keep`` on ∂ĝ/∂θ (0 at a sequence's first TD step);
      inc = mean_b δ_τ·E_τ with θ's tree.
  """

  kind: str
  init: Callable[..., tuple[Any, Any]]
  next_m: Callable[..., Any]
  apply_m: Callable[..., jax.Array]
  step: Callable[..., tuple[Any, chex.ArrayTree]]


def synth_apply(synthesiser: Synthesiser, theta, frozen, z):
  """ĝ_θ(z) for one example: z [d_in] -> [d_out]."""
  return synthesiser.apply({"train": theta, "frozen": frozen}, z)


def trace_form(synthesiser: Synthesiser, link: Callable, d_in: int, d_out: int, *,
               input_size: int, structure: Optional[_structured.TraceStructure], chunk: int,
               context_zeros: Callable) -> TraceForm:
  """The form of the trace: structured when ``structure`` is given, chunked when ``chunk`` ≥ 1,
  otherwise dense (linear or tree, by the synthesiser).

  Args:
    synthesiser: ĝ.
    link: the flavour's ``link(cp, ctx, v) -> v·M`` per example.
    d_in, d_out: ĝ's input and output sizes.
    input_size: D_in, the network's input size (to probe the blocks' pattern).
    structure: M's structure (the structured form) or None.
    chunk: the chunked form's chunk length L, or 0.
    context_zeros: ``context_zeros(B, dtype)``, a zero link context for a batch.
  """
  if structure is not None:
    return _structured_form(structure, link, d_in, d_out, input_size)
  if chunk:
    return _chunked_form(link, d_in, d_out, chunk, context_zeros)
  return _dense_form(synthesiser, link, d_out)


def _linear_inputs(z, keep, bias: bool):
  """a_τ = keep·[z_{τ−1}; 1] (the 1 only with β), [B, d_in (+1)]: a linear ĝ's ∂ĝ_o/∂W_ij =
  1[o = i]·z_j and ∂ĝ_o/∂β_i = 1[o = i]."""
  a = z * keep
  if bias:
    a = jnp.concatenate([a, jnp.broadcast_to(keep, a.shape[:1] + (1,)).astype(a.dtype)], axis=1)
  return a


def _split_columns(inc_wb, d_in: int, bias: bool) -> dict:
  """[d_out, d_in (+1)] -> {'w': [d_out, d_in], 'b': [d_out]} (the linear synthesiser's tree)."""
  inc = {"w": inc_wb[:, :d_in]}
  if bias:
    inc["b"] = inc_wb[:, d_in]
  return inc


def _unit_blocks(link, cp, ctx, *, layout, d_out, dtype):
  return _structured.unit_blocks(functools.partial(link, cp, ctx), layout, d_out, dtype)


def _structured_form(structure: _structured.TraceStructure, link, d_in, d_out,
                     input_size) -> TraceForm:
  layout = structure.layout

  def pattern(cp, dtype):
    return structure.pattern(cp, jax.ShapeDtypeStruct((input_size,), dtype))

  def init(cp, theta, B, dtype, trace_dtype, steps):
    del steps
    pat = pattern(cp, dtype)
    m0 = jnp.zeros((B, pat.k, pat.k, layout.units), dtype)
    return m0, _structured.structured_trace_init(B, pat, layout.units, d_in + ("b" in theta),
                                                 trace_dtype)

  def next_m(cp, ctx, dtype):  # M_τ's blocks from k links per example, [B, k, k, U]
    blocks = functools.partial(_unit_blocks, link, cp, layout=layout, d_out=d_out, dtype=dtype)
    return jax.vmap(blocks)(ctx)

  def apply_m(cp, ctx, m, v):  # p·M_τ without a vjp
    del cp, ctx
    return _structured.apply_blocks(m, v, layout)

  def step(cp, theta, frozen, td: StructuredTD, delta, c, keep):
    del frozen
    a = _linear_inputs(td.z, keep, "b" in theta)
    trace, inc_wb = _structured.structured_trace_step(td.trace, td.m, a, delta, c,
                                                      pattern(cp, td.z.dtype), layout)
    return trace, _split_columns(inc_wb, d_in, "b" in theta)

  return TraceForm("structured", init, next_m, apply_m, step)


def _chunked_form(link, d_in, d_out, chunk, context_zeros) -> TraceForm:
  link_b = jax.vmap(link, in_axes=(None, 0, 0))

  def init(cp, theta, B, dtype, trace_dtype, steps):
    del cp
    m0 = context_zeros(B, dtype)
    return m0, _chunked.chunked_init(m0, d_out, d_in, bias="b" in theta, chunk=chunk, steps=steps,
                                   dtype=trace_dtype)

  def next_m(cp, ctx, dtype):  # the chunked trace keeps contexts, not matrices
    del cp, dtype
    return ctx

  def apply_m(cp, ctx, m, v):
    del m
    return link_b(cp, ctx, v)

  def step(cp, theta, frozen, td: ChunkedTD, delta, c, keep):
    del frozen
    a = _linear_inputs(td.z, keep, "b" in theta)
    trace, inc_wb = _chunked.chunked_step(td.trace, td.m, a, delta, c,
                                        functools.partial(link_b, cp))
    return trace, _split_columns(inc_wb, d_in, "b" in theta)

  return TraceForm("chunked", init, next_m, apply_m, step)


def _dense_form(synthesiser: Synthesiser, link, d_out) -> TraceForm:
  link_b = jax.vmap(link, in_axes=(None, 0, 0))
  jac_b = jax.vmap(jax.jacrev(functools.partial(synth_apply, synthesiser), argnums=0),
                   in_axes=(None, None, 0))

  def init(cp, theta, B, dtype, trace_dtype, steps):
    del cp, steps
    m0 = jnp.zeros((B, d_out, d_out), dtype)
    return m0, jax.tree.map(lambda t: jnp.zeros((B, d_out) + t.shape, trace_dtype), theta)

  def next_m(cp, ctx, dtype):  # M_τ formed from d_out links, [B, d_out, d_out]
    return jax.vmap(functools.partial(transition, link, cp, d_out=d_out, dtype=dtype))(ctx)

  def apply_m(cp, ctx, m, v):
    del m
    return link_b(cp, ctx, v)

  def linear_step(cp, theta, frozen, td: DenseTD, delta, c, keep):
    del cp, theta, frozen
    return _dense.linear_trace_step(td.trace, td.m, td.z, delta, c, g_scale=keep)

  def tree_step(cp, theta, frozen, td: DenseTD, delta, c, keep):
    del cp
    dgdth = jac_b(theta, frozen, td.z)
    return _dense.trace_step_tree(td.trace, td.m, jax.tree.map(lambda g: g * keep, dgdth), delta,
                                  c)

  if synthesiser.linear:
    return TraceForm("dense_linear", init, next_m, apply_m, linear_step)
  return TraceForm("dense", init, next_m, apply_m, tree_step)
