"""braintrace's e-prop on the benchmark's LSTM shapes: one training update, timed.

Runs in braintrace's own virtual environment (see benchmarks/peers/README.md), never in
bplambda_jax's: it imports only jax, numpy, brainstate, braintools and braintrace. The workload
matches the benchmark rows ``{seqmnist_lstm30,copyrepeat_lstm100}_eprop``: an LSTM cell
(``braintrace.nn.LSTMCell``, four gate layers on [x, h] with biases) and a linear readout, a
batch of B sequences of length T, ``braintrace.EProp`` (default options: symmetric feedback, no
κ filter) accumulating the online gradient over the sequence with ``etrace_grad``, then an Adam
step (``braintools.optim.Adam``); states and eligibility traces are reset at the start of each
update. Losses as in the benchmark: 'ce' (softmax cross-entropy with integer labels on the last
step only, the seqMNIST shape) or 'bce' (sigmoid cross-entropy on every step, copy-repeat).

Two modes:

* ``--serve``: compile, make two warm-up calls (the second compiles again), print one JSON line ``{"ready": ...}``, then read
  commands from stdin: ``run N`` makes N timed calls and prints ``{"times": [...]}``; ``quit``
  exits. ``benchmarks/peers/interleave.py`` drives it, alternating its timed batches with ours.
* otherwise: ``--repeats N`` timed calls after the warm-ups, printed as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def build(batch: int, seq_len: int, inputs: int, hidden: int, outputs: int, loss: str,
          lr: float, seed: int = 0):
  """(update, xs, ys, versions): the jitted training update and its random data."""
  import brainstate
  import braintools
  import braintrace
  import jax
  import jax.numpy as jnp

  brainstate.random.seed(seed)

  class Net(brainstate.nn.Module):
    def __init__(self):
      super().__init__()
      self.cell = braintrace.nn.LSTMCell(inputs, hidden)
      self.out = brainstate.nn.Linear(hidden, outputs)

    def update(self, x):
      return self.out(self.cell(x))

  model = Net()
  learner = braintrace.compile(model, braintrace.EProp, jnp.zeros((batch, inputs), jnp.float32),
                               batch_size=batch)
  opt = braintools.optim.Adam(lr=lr)
  opt.register_trainable_weights(model.states(brainstate.ParamState))
  rng = np.random.default_rng(seed)
  mask = None
  if loss == "ce":
    xs = rng.uniform(0.0, 1.0, (seq_len, batch, inputs)).astype(np.float32)
    ys = np.broadcast_to(rng.integers(0, outputs, (1, batch)), (seq_len, batch)).astype(np.int32)
    mask = np.zeros((seq_len,), np.float32)
    mask[-1] = 1.0  # the loss on the last step only

    def step_loss(x, y):
      return braintools.metric.softmax_cross_entropy_with_integer_labels(learner(x), y).mean()
  elif loss == "bce":
    xs = rng.integers(0, 2, (seq_len, batch, inputs)).astype(np.float32)
    ys = rng.integers(0, 2, (seq_len, batch, outputs)).astype(np.float32)

    def step_loss(x, y):
      return braintools.metric.sigmoid_binary_cross_entropy(learner(x), y).mean()
  else:
    raise SystemExit(f"--loss must be 'ce' or 'bce', got {loss!r}.")
  mask_arr = None if mask is None else jnp.asarray(mask)

  @brainstate.transform.jit
  def update(xs_, ys_):
    brainstate.nn.reset_all_states(learner, batch_size=batch)  # hidden states and traces
    grads, losses = learner.etrace_grad(xs_, ys_, step_fn=step_loss, mask=mask_arr,
                                        return_value=True)
    opt.update(grads)
    return losses

  xs, ys = jax.device_put(xs), jax.device_put(ys)
  versions = {"braintrace": braintrace.__version__, "brainstate": brainstate.__version__,
              "jax": jax.__version__}
  return update, xs, ys, versions


def timed(update, xs, ys, n: int) -> list:
  import jax
  out = []
  for _ in range(n):
    t0 = time.perf_counter()
    jax.block_until_ready(update(xs, ys))
    out.append(time.perf_counter() - t0)
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, required=True)
  p.add_argument("--seq-len", type=int, required=True)
  p.add_argument("--inputs", type=int, required=True)
  p.add_argument("--hidden", type=int, required=True)
  p.add_argument("--outputs", type=int, required=True)
  p.add_argument("--loss", choices=("ce", "bce"), required=True)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--serve", action="store_true", help="serve timed batches on stdin/stdout")
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args(argv)
  import jax
  jax.config.update("jax_enable_x64", False)
  t0 = time.perf_counter()
  update, xs, ys, versions = build(args.batch, args.seq_len, args.inputs, args.hidden,
                                   args.outputs, args.loss, args.lr)
  build_s = time.perf_counter() - t0
  # Two warm-up calls: the first compiles; the second compiles again (the optimiser's and the
  # learner's states change structure after the first update), ~8 s at tiny sizes.
  warm = timed(update, xs, ys, 2)
  info = {"ready": True, "versions": versions, "build_s": build_s, "first_run_s": warm[0],
          "second_run_s": warm[1]}
  if not args.serve:
    info["times"] = timed(update, xs, ys, args.repeats)
    print(json.dumps(info), flush=True)
    return 0
  print(json.dumps(info), flush=True)
  for line in sys.stdin:
    cmd = line.split()
    if not cmd:
      continue
    if cmd[0] == "quit":
      break
    if cmd[0] == "run":
      print(json.dumps({"times": timed(update, xs, ys, int(cmd[1]))}), flush=True)
    else:
      print(json.dumps({"error": f"unknown command {line.strip()!r}"}), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
