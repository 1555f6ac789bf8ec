"""n-step synthetic gradients (DNI; Jaderberg et al. 2017), as in the authors' code.

Truncated BPTT over the end-aligned chunks of :func:`bplambda_jax.tbptt`, with a synthesiser
ĝ(s; θ) standing in for the gradient from beyond each chunk. For a chunk c with incoming state
s_start (gradient stopped) and last state s_end:

* **network**: the chunk's backward pass starts from the chunk's losses plus the injected cotangent
  sg_scale·ĝ(s_end) at s_end (ĝ detached; none at the sequence's final chunk, where the future is
  empty), giving the cell and readout gradients, summed over chunks;
* **synthesiser target** at s_start (every chunk but the first, whose s_start is the fixed zero
  state), per example:

      faithful: G = ∂(chunk losses)/∂s_start + sg_scale·ĝ(s_end)·∂s_end/∂s_start
      gamma:    G = Σ_{j=1..n} γ^{j−1}·∂L_{start+j}/∂s_start + γ^n·ĝ(s_end)·∂s_end/∂s_start

  'faithful' is the authors' target (its bootstrap is discounted by sg_weight; it has no γ): the
  same backward pass serves the network and the target. 'gamma' is the n-step return of the
  γ-discounted gradient that BP(λ) learns (ĝ(s_t) ≈ Σ_{t'>t} γ^{t'−t−1}·∂L_{t'}/∂s_t); it needs a
  second vector–Jacobian product per chunk (the network still gets undiscounted losses plus
  sg_scale·ĝ). With n = 1 it is exactly BP(λ) with λ = 0: same synthesiser, cell and
  readout gradients as ``bp_lambda(model, flavour='state', lambda_=0, gamma=γ, sg_scale=...)``.
* **synthesiser loss**: the gradient of mean_b ½‖ĝ(s_start) − stop_grad(G)‖² summed over chunks,
  i.e. (1/B)·Σ_b (ĝ − G)·∂ĝ/∂θ. This is *half* the authors' (2/B)·(ĝ − G) (the gradient of
  mean_b ‖ĝ − G‖²); we use ½ so that DNI's synthesiser gradient is on the same scale as BP(λ)'s
  (whose λ = 1 oracle is the gradient of ½‖ĝ − G‖²), which makes the n = 1 identity above exact.
  Under Adam a constant factor is inert; with SGD, double the synthesiser learning rate to match
  the authors' code.

G is the gradient of the *per-example* loss L_b (the fixed convention of quirk Q13; the authors'
targets carry an extra 1/B), and ĝ's input and output are the full flat state s (for the LSTM,
[h; c]: the authors' ``synth_cell_grad=True``; the injected c-part is credited through the exact
backward pass, so quirk Q3 does not arise). Unlike the authors' vanilla RNN (Q11), nothing is
injected at the final chunk.

Step level: one chunk is one step (:class:`DNIState`), as for :func:`bplambda_jax.tbptt`;
``grads`` sums the chunks (one optimiser step per batch), and the streaming driver applies an
optimiser after every chunk (the authors' ``opt_each_trunc``).
"""


from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from bplambda_jax.model import Model, Synthesiser, linear_synthesiser, validate_batch
from bplambda_jax.rules import _base as base
from bplambda_jax.rules._from_sensitivity import check_batch_size
from bplambda_jax.rules._tbptt import (check_chunk_inputs, check_chunk_length, chunk_vjp,
                                       chunked_grads)

BOOTSTRAPS = ("faithful", "gamma")


class DNIState(NamedTuple):
  """The state carried between chunks.

  Attributes:
    s: the state entering the next chunk, [B, n].
    t: chunks taken, shape=(), int32 (the first chunk starts from the fixed initial state and
      trains no synthesiser).
  """

  s: jax.Array
  t: jax.Array


def dni(model: Model,
        synthesiser: Optional[Synthesiser] = None,
        n: int = 1,
        *,
        bootstrap: str = "faithful",
        gamma: Optional[float] = None,
        sg_scale: float = 1.0) -> base.Rule:
  """n-step DNI as a :class:`~bplambda_jax.Rule`.

  Args:
    model: the recurrent model.
    synthesiser: ĝ over the flat state (d_in = d_out = state size); default the zero-initialised
      linear synthesiser.
    n: chunk (truncation) length, a positive integer; chunks are end-aligned.
    bootstrap: 'faithful' (target bootstrapped by sg_scale·ĝ, undiscounted losses; the authors')
      or 'gamma' (n-step γ-discounted return, see the module docstring).
    gamma: γ ∈ [0, 1] for bootstrap='gamma' (default 1; hyper-parameter ``'gamma'``). Not accepted
      with bootstrap='faithful', which has no γ.
    sg_scale: ≥ 0, scale of the injected ĝ(s_end) in the network's gradient (the authors'
      sg_weight; hyper-parameter ``'sg_scale'``).

  Returns:
    A rule with ``chunk`` = n and a chunk-level ``init_state``/``step`` (:class:`DNIState`) whose
    ``grads`` returns {'cell', 'readout', 'synth'} descent directions and aux with 'loss' (the
    batch objective), 'learning_signal' [T, B, S] (per-example cotangent reaching s_t in its
    chunk's backward pass, injected term included) and 'synth_error_norm' [C] (mean over the batch
    of ‖ĝ(s_start) − G‖ per chunk; 0 for the first chunk, which trains nothing).
  """
  n = check_chunk_length(n)
  synthesiser = synthesiser or linear_synthesiser()
  if bootstrap not in BOOTSTRAPS:
    raise ValueError(f"bootstrap must be one of {BOOTSTRAPS}, got {bootstrap!r}.")
  base.check_nonnegative("sg_scale", sg_scale)
  defaults = {"sg_scale": float(sg_scale)}
  checks = {"sg_scale": base.check_nonnegative}
  if bootstrap == "faithful":
    if gamma is not None:
      raise ValueError("gamma is used only with bootstrap='gamma'; the faithful DNI target is "
                       "bootstrapped by sg_scale and has no γ.")
  else:
    gamma = 1.0 if gamma is None else gamma
    base.check_unit_interval("gamma", gamma)
    defaults["gamma"] = float(gamma)
    checks["gamma"] = base.check_unit_interval
  defaults = base.frozen(defaults)
  S = model.cell.state_size

  init = base.init_with_synthesiser(model, synthesiser, S, S)

  def init_state(params, batch_size):
    B = check_batch_size(batch_size)
    return DNIState(model.initial_states(params, B), jnp.zeros((), jnp.int32))

  def step(params, state, x, y, mask, hparams=None, *, last=False):
    if "synth" not in params:
      raise ValueError("params has no 'synth' entry; build params with rule.init(key).")
    dtype = x.dtype
    hp = base.merge_hparams(defaults, hparams, checks, dtype)
    check_chunk_inputs(model, x, y, mask, state.s.shape[0])
    base.check_last(last)
    B = x.shape[1]
    net = {"cell": params["cell"], "readout": params["readout"]}
    theta, frozen = params["synth"]["train"], params["synth"]["frozen"]
    s_start = state.s

    def synth_b(th, s):  # ĝ over the batch, [B, S] -> [B, S]
      return jax.vmap(lambda z: synthesiser.apply({"train": th, "frozen": frozen}, z))(s)

    losses, s_end, _, vjp = chunk_vjp(model, net, s_start, x, y, mask)
    has_next = 1.0 - jnp.asarray(last, dtype)  # nothing beyond the sequence's final chunk
    trains = (state.t > 0).astype(dtype)  # the first chunk starts from the fixed initial state
    g_end = jax.lax.stop_gradient(synth_b(theta, jax.lax.stop_gradient(s_end))) * has_next
    g_net, ct_start, ct_states = vjp((jnp.ones_like(losses), hp["sg_scale"] * g_end / B))
    if bootstrap == "faithful":
      target = ct_start * B
    else:
      k = x.shape[0]
      discount = hp["gamma"] ** jnp.arange(k, dtype=dtype)  # γ^{j−1}, j = 1..k
      target = vjp((discount, hp["gamma"] ** k * g_end / B))[1] * B
    target = jax.lax.stop_gradient(target)
    g_start, synth_vjp = jax.vjp(lambda th: synth_b(th, s_start), theta)
    err = g_start - target  # [B, S]
    g_synth = synth_vjp(err * (trains / B))[0]  # ∂/∂θ of mean_b ½‖ĝ(s_start) − G‖²
    grads = dict(g_net)
    grads["synth"] = {"train": g_synth, "frozen": base.zeros_like_tree(frozen)}
    metrics = {"loss": jnp.sum(losses), "learning_signal": ct_states * B,
               "synth_error_norm": jnp.mean(jnp.linalg.norm(err, axis=-1)) * trains}
    return grads, DNIState(s_end.astype(s_start.dtype), state.t + 1), metrics

  def grads(params, batch, hparams=None):
    validate_batch(model, batch)
    base.merge_hparams(defaults, hparams, checks, batch.x.dtype)
    acc, loss, ls, metrics = chunked_grads(step, init_state, params, batch, hparams, n)
    err = jnp.concatenate([jnp.atleast_1d(m["synth_error_norm"]) for m in metrics])
    return acc, {"loss": loss, "learning_signal": ls, "synth_error_norm": err}

  return base.Rule(f"dni:{n}", init, grads, defaults, "online", init_state, step, n, model)
