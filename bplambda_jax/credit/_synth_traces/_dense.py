"""Dense synthesiser traces: the fused trace step applied leaf by leaf to synthesiser pytrees.

BP(λ)'s online mode with ``trace_chunk=0`` (and every non-linear synthesiser) carries, per example
and per leaf of θ, the trace E [d_out, *θ_leaf]; these wrappers apply
:func:`bplambda_jax.kernels.trace_step` (Pallas on GPU/TPU, XLA on CPU) to each leaf.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from bplambda_jax import kernels
from bplambda_jax.kernels import _trace_step

Array = jax.Array


def trace_step_tree(trace: Any, M: Array, G: Any, delta: Array, c: Any, *,
                    impl: Optional[str] = None, backend: Optional[str] = None,
                    block_p: int = _trace_step.DEFAULT_BLOCK_P) -> tuple[Any, Any]:
  """:func:`trace_step` on every leaf of a trace pytree (the layout ``td_step`` carries).

  Args:
    trace: pytree of traces, each leaf [B, d, *θ_leaf].
    M: transitions, [B, d, d].
    G: pytree of ∂ĝ/∂θ with the structure and shapes of ``trace``.
    delta: TD errors, [B, d].
    c: the decay γλ, a scalar (possibly traced).
    impl, backend, block_p: as in :func:`trace_step`.

  Returns:
    (new trace pytree, increment pytree with leaves of shape θ_leaf).
  """
  if jax.tree.structure(trace) != jax.tree.structure(G):
    raise ValueError(f"G must have the tree structure of trace: got {jax.tree.structure(G)} for "
                     f"trace {jax.tree.structure(trace)}.")

  def leaf(e, g):
    e, g = jnp.asarray(e), jnp.asarray(g)
    if e.ndim < 2 or g.shape != e.shape:
      raise ValueError(f"each trace leaf must be [B, d, ...] with a G leaf of the same shape; got "
                       f"trace leaf {e.shape} and G leaf {g.shape}.")
    B, d = e.shape[:2]
    e_new, inc = kernels.trace_step(e.reshape(B, d, -1), M, g.reshape(B, d, -1), delta, c,
                                    impl=impl, backend=backend, block_p=block_p)
    return e_new.reshape(e.shape), inc.reshape(e.shape[2:])

  pairs = jax.tree.map(leaf, trace, G)
  treedef = jax.tree.structure(trace)
  leaves = treedef.flatten_up_to(pairs)
  return (treedef.unflatten([p[0] for p in leaves]), treedef.unflatten([p[1] for p in leaves]))


def linear_trace_step(trace: dict, M: Array, z: Array, delta: Array, c: Any, *,
                      g_scale: Any = 1.0, impl: Optional[str] = None,
                      backend: Optional[str] = None,
                      block_p: int = _trace_step.DEFAULT_BLOCK_P) -> tuple[dict, dict]:
  """The trace step of :func:`bplambda_jax.linear_synthesiser`'s 'train' subtree, without G.

  ĝ(z) = W z + β gives ∂ĝ_o/∂W_ij = 1[o = i]·z_j and ∂ĝ_o/∂β_i = 1[o = i]; both are applied with
  :func:`trace_step_diag` (β as a one-column W with input 1). ``g_scale`` multiplies G, e.g.
  (1 − first) to zero the new Jacobian at the first step as ``td_step`` does.

  Args:
    trace: {'w': [B, d, d, n]} and optionally 'b': [B, d, d].
    M: transitions, [B, d, d].
    z: the synthesiser input z_{τ−1}, [B, n].
    delta: TD errors, [B, d].
    c: the decay γλ, a scalar (possibly traced).
    g_scale: a scalar factor on G (possibly traced).
    impl, backend, block_p: as in :func:`trace_step`.

  Returns:
    (new trace with the keys of ``trace``, increments {'w': [d, n], 'b': [d]}).
  """
  if not isinstance(trace, dict) or "w" not in trace or not set(trace) <= {"w", "b"}:
    got = sorted(trace) if isinstance(trace, dict) else type(trace).__name__
    raise ValueError(f"trace must be a dict with key 'w' and optionally 'b' (a linear "
                     f"synthesiser's 'train' subtree), got {got}.")
  if jnp.ndim(g_scale) != 0:
    raise ValueError(f"g_scale must be a scalar, got shape {jnp.shape(g_scale)}.")
  z = jnp.asarray(z)
  new, inc = {}, {}
  gz = jnp.asarray(g_scale, z.dtype) * z
  new["w"], inc["w"] = kernels.trace_step_diag(trace["w"], M, gz, delta, c, impl=impl,
                                               backend=backend, block_p=block_p)
  if "b" in trace:
    eb = jnp.asarray(trace["b"])
    if eb.ndim != 3:
      raise ValueError(f"trace['b'] must have shape [B, d, d], got shape {eb.shape}.")
    ones = jnp.full((eb.shape[0], 1), g_scale, dtype=jnp.result_type(eb, z))  # β's "input", [B, 1]
    e_new, inc_b = kernels.trace_step_diag(eb[..., None], M, ones, delta, c, impl=impl,
                                           backend=backend, block_p=block_p)
    new["b"], inc["b"] = e_new[..., 0], inc_b[:, 0]
  return new, inc
