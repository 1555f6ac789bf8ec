"""n-step synthetic gradients (DNI; Jaderberg et al. 2017), as in the reference (spec §6.3).

Truncated BPTT over the end-aligned chunks of :mod:`bplambda_jax.rules.tbptt`, with a synthesiser
ĝ(s; θ) standing in for the gradient from beyond each chunk. For a chunk c with incoming state
s_start (gradient stopped) and last state s_end:

* **network**: the chunk's backward pass starts from the chunk's losses plus the injected cotangent
  sg_scale·ĝ(s_end) at s_end (ĝ detached; none at the sequence's final chunk, where the future is
  empty), giving the cell and readout gradients, summed over chunks;
* **synthesiser target** at s_start (every chunk but the first, whose s_start is the fixed zero
  state), per example:

      faithful: G = ∂(chunk losses)/∂s_start + sg_scale·ĝ(s_end)·∂s_end/∂s_start
      gamma:    G = Σ_{j=1..n} γ^{j−1}·∂L_{start+j}/∂s_start + γ^n·ĝ(s_end)·∂s_end/∂s_start

  'faithful' is the reference's target (its bootstrap is discounted by sg_weight; it has no γ): the
  same backward pass serves the network and the target. 'gamma' is the n-step return of the
  γ-discounted gradient that BP(λ) learns (ĝ(s_t) ≈ Σ_{t'>t} γ^{t'−t−1}·∂L_{t'}/∂s_t); it needs a
  second vector–Jacobian product per chunk (the network still gets undiscounted losses plus
  sg_scale·ĝ). With n = 1 it is exactly BP(λ) with λ = 0 (spec §11.2): same synthesiser, cell and
  readout gradients as ``bp_lambda(model, lambda_=0, gamma=γ, sg_scale=sg_scale)``.
* **synthesiser loss**: the gradient of mean_b ½‖ĝ(s_start) − stop_grad(G)‖² summed over chunks,
  i.e. (1/B)·Σ_b (ĝ − G)·∂ĝ/∂θ. This is *half* the reference's (2/B)·(ĝ − G) (the gradient of
  mean_b ‖ĝ − G‖²); we use ½ so that DNI's synthesiser gradient is on the same scale as BP(λ)'s
  (whose λ = 1 oracle is the gradient of ½‖ĝ − G‖²), which makes the n = 1 identity above exact.
  Under Adam a constant factor is inert; with SGD, double the synthesiser learning rate to match
  the reference.

G is the gradient of the *per-example* loss L_b (the fixed convention of quirk Q13; the reference's
targets carry an extra 1/B), and ĝ's input and output are the full flat state s (for the LSTM,
[h; c]: the reference's ``synth_cell_grad=True``; the injected c-part is credited through the exact
backward pass, so quirk Q3 does not arise). Unlike the reference's vanilla RNN (Q11), nothing is
injected at the final chunk.

The rule sums the gradients over chunks (one optimiser step per batch); per-chunk updates
(``opt_each_trunc``) are not offered by this rule: a trainer needing them scans the chunks
itself with :func:`bplambda_jax.rules.tbptt.chunk_grads` (its ``inject`` argument is the
sg_scale·ĝ(s_end) term).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from bplambda_jax import model as model_lib
from bplambda_jax import synthesisers as synth_lib
from bplambda_jax.rules import base
from bplambda_jax.rules.tbptt import check_chunk_length, chunk_vjp, split_chunks, unfold

BOOTSTRAPS = ("faithful", "gamma")


def dni(model: model_lib.Model,
        synthesiser: Optional[synth_lib.Synthesiser] = None,
        n: int = 1,
        *,
        bootstrap: str = "faithful",
        gamma: Optional[float] = None,
        sg_scale: float = 1.0) -> base.Rule:
  """n-step DNI as a :class:`~bplambda_jax.rules.base.Rule`.

  Args:
    model: the recurrent model.
    synthesiser: ĝ over the flat state (d_in = d_out = state size); default the zero-initialised
      linear synthesiser.
    n: chunk (truncation) length, a positive integer; chunks are end-aligned (spec §6.2).
    bootstrap: 'faithful' (target bootstrapped by sg_scale·ĝ, undiscounted losses; the reference)
      or 'gamma' (n-step γ-discounted return, see the module docstring).
    gamma: γ ∈ [0, 1] for bootstrap='gamma' (default 1; hyper-parameter ``'gamma'``). Not accepted
      with bootstrap='faithful', which has no γ.
    sg_scale: ≥ 0, scale of the injected ĝ(s_end) in the network's gradient (the reference's
      sg_weight; hyper-parameter ``'sg_scale'``).

  Returns:
    A rule whose ``grads`` returns {'cell', 'readout', 'synth'} descent directions and aux with
    'loss' (the batch objective L), 'learning_signal' [T, B, S] (per-example cotangent reaching s_t
    in its chunk's backward pass, injected term included) and 'synth_error_norm' [C] (mean over
    the batch of ‖ĝ(s_start) − G‖ per chunk; 0 for the first chunk, which trains nothing).
  """
  n = check_chunk_length(n)
  synthesiser = synthesiser or synth_lib.linear()
  if bootstrap not in BOOTSTRAPS:
    raise ValueError(f"bootstrap must be one of {BOOTSTRAPS}, got {bootstrap!r}.")
  base.check_nonnegative("sg_scale", sg_scale)
  defaults = {"sg_scale": float(sg_scale)}
  checks = {"sg_scale": base.check_nonnegative}
  if bootstrap == "faithful":
    if gamma is not None:
      raise ValueError("gamma is used only with bootstrap='gamma'; the faithful DNI target is "
                       "bootstrapped by sg_scale and has no γ (spec §6.3).")
  else:
    gamma = 1.0 if gamma is None else gamma
    base.check_unit_interval("gamma", gamma)
    defaults["gamma"] = float(gamma)
    checks["gamma"] = base.check_unit_interval
  S = model.cell.state_size

  def init(key):
    k1, k2 = jax.random.split(key)
    params = model.init(k1)
    params["synth"] = synthesiser.init(k2, S, S)
    return params

  def grads(params, batch, hparams=None):
    model_lib.validate_batch(model, batch)
    if "synth" not in params:
      raise ValueError("params has no 'synth' entry; build params with rule.init(key).")
    hp = base.merge_hparams(defaults, hparams, checks)
    dtype = batch.x.dtype
    hp = {k: jnp.asarray(v, dtype) for k, v in hp.items()}
    T, B = batch.x.shape[:2]
    chunks = split_chunks(batch, n)
    C = chunks.x.shape[0]
    net = {"cell": params["cell"], "readout": params["readout"]}
    theta, frozen = params["synth"]["train"], params["synth"]["frozen"]

    def synth_b(th, s):  # ĝ over the batch, [B, S] -> [B, S]
      return jax.vmap(lambda z: synthesiser.apply({"train": th, "frozen": frozen}, z))(s)

    if bootstrap == "gamma":
      discount = hp["gamma"] ** jnp.arange(n, dtype=dtype)  # γ^{j−1}, j = 1..n
      boot = hp["gamma"] ** n

    def body(carry, inp):
      s_start, acc_net, acc_synth = carry
      c, chunk = inp
      losses, s_end, _, vjp = chunk_vjp(model, net, s_start, *chunk)
      has_next = (c < C - 1).astype(dtype)  # nothing beyond the sequence's final chunk
      trains = (c > 0).astype(dtype)  # the first chunk starts from the fixed zero state
      g_end = jax.lax.stop_gradient(synth_b(theta, jax.lax.stop_gradient(s_end))) * has_next
      ones = jnp.ones_like(losses)
      g_net, ct_start, ct_states = vjp((ones, hp["sg_scale"] * g_end / B))
      if bootstrap == "faithful":
        target = ct_start * B
      else:
        target = vjp((discount, boot * g_end / B))[1] * B
      target = jax.lax.stop_gradient(target)
      g_start, synth_vjp = jax.vjp(lambda th: synth_b(th, s_start), theta)
      err = g_start - target  # [B, S]
      g_synth = synth_vjp(err * (trains / B))[0]  # ∂/∂θ of mean_b ½‖ĝ(s_start) − G‖²
      acc_net = jax.tree.map(jnp.add, acc_net, g_net)
      acc_synth = jax.tree.map(jnp.add, acc_synth, g_synth)
      err_norm = jnp.mean(jnp.linalg.norm(err, axis=-1)) * trains
      return (s_end, acc_net, acc_synth), (jnp.sum(losses), ct_states * B, err_norm)

    s0 = jnp.zeros((B, S), dtype)
    carry0 = (s0, jax.tree.map(jnp.zeros_like, net), jax.tree.map(jnp.zeros_like, theta))
    (_, g_net, g_synth), (losses, ls, err_norm) = jax.lax.scan(
        body, carry0, (jnp.arange(C), chunks))
    out = dict(g_net)
    out["synth"] = {"train": g_synth, "frozen": jax.tree.map(jnp.zeros_like, frozen)}
    aux = {"loss": jnp.sum(losses), "learning_signal": unfold(ls, T),
           "synth_error_norm": err_norm}
    return out, aux

  return base.Rule("dni", init, grads, defaults, online=True)
