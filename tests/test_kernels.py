"""The fused BP(λ) trace-step kernel (Pallas, interpret mode on CPU) against its references.

The chain of oracles: explicit Python loops in float64 (numpy) pin the convention of
``trace_step_reference`` (E_new[b, i] = c·Σ_j M[b, i, j]·E[b, j] + G[b, i], as ``td_step``'s
einsum); the reference is then the oracle for the reassociated XLA path and the Pallas kernel over odd shapes that exercise the
padding of d and P and several column tiles; the diagonal (linear-synthesiser) variants are checked
against the dense step with G = 1[o = i]·z_j written out, and against the dense step fed the
``jax.jacrev`` Jacobian of ``linear_synthesiser`` (the G that ``td_step`` builds).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bplambda_jax import credit
from bplambda_jax import kernels
from bplambda_jax import linear_synthesiser
from bplambda_jax import internals

pytestmark = pytest.mark.x64  # float64 oracles

F32_TOL = 1e-5
# The kernel tests run the Pallas interpreter (the only Pallas on CPU). On a GPU or TPU,
# BPLAMBDA_KERNELS_COMPILED=1 (set by ``python -m benchmarks.device_check``) runs the same tests
# on the compiled kernels instead (interpret=None: compiled wherever the platform has a compiler).
INTERPRET = None if os.environ.get("BPLAMBDA_KERNELS_COMPILED") == "1" else True
F64_TOL = 1e-12
# The oracles, jitted: one compilation per shape instead of one per op (keeps the file fast).
_REF = jax.jit(internals.trace_step_reference)
_REF_DIAG = jax.jit(internals.trace_step_diag_reference)


@pytest.fixture(autouse=True)
def _no_rank_promotion():
  """Implicit rank broadcasting is an error inside these tests (scoped: other files unaffected)."""
  with jax.numpy_rank_promotion("raise"):
    yield


def _rng(seed):
  return np.random.default_rng(seed)


def _dense_inputs(seed, B, d, P, dtype):
  """Random E [B, d, P], M [B, d, d], G [B, d, P], δ [B, d] (numpy: no compilation per shape)."""
  r = _rng(seed)
  E, G = r.standard_normal((B, d, P)), r.standard_normal((B, d, P))
  M = r.standard_normal((B, d, d)) / np.sqrt(d)
  delta = r.standard_normal((B, d))
  return tuple(np.asarray(a, dtype) for a in (E, M, G, delta))


def _diag_inputs(seed, B, d, n, dtype):
  """Random E [B, d, d, n], M [B, d, d], z [B, n], δ [B, d]."""
  r = _rng(seed)
  E = r.standard_normal((B, d, d, n))
  M = r.standard_normal((B, d, d)) / np.sqrt(d)
  z = r.standard_normal((B, n))
  delta = r.standard_normal((B, d))
  return tuple(np.asarray(a, dtype) for a in (E, M, z, delta))


def _f64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _rel(a, b):
  """‖a − b‖ / ‖b‖ over all leaves, in numpy float64 (no compilation per shape)."""
  assert jax.tree.structure(a) == jax.tree.structure(b), (jax.tree.structure(a),
                                                          jax.tree.structure(b))
  fa = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(a)])
  fb = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(b)])
  return float(np.linalg.norm(fa - fb) / max(np.linalg.norm(fb), 1e-300))


def _has_pallas(fn, *args):
  """The traced program holds a Pallas call (on some platform's branch)."""
  return "pallas_call" in str(jax.make_jaxpr(fn)(*args))


def _lowers_kernel(fn, args, platform, name="bplambda_trace_step"):
  """``fn`` exported for ``platform`` holds the named kernel (compiled, or interpreted on CPU)."""
  exported = jax.export.export(jax.jit(fn), platforms=[platform], disabled_checks=[
      jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(*args)
  return name in exported.mlir_module()


def test_reference_matches_loop_oracle():
  B, d, P, c = 3, 4, 5, 0.63
  E, M, G, delta = (np.asarray(a) for a in _dense_inputs(0, B, d, P, jnp.float64))
  E_new = np.zeros_like(E)
  inc = np.zeros(P)
  for b in range(B):
    for i in range(d):
      for p in range(P):
        E_new[b, i, p] = c * sum(M[b, i, j] * E[b, j, p] for j in range(d)) + G[b, i, p]
        inc[p] += delta[b, i] * E_new[b, i, p] / B
  got = _REF(E, M, G, delta, c)
  assert _rel(got, (jnp.asarray(E_new), jnp.asarray(inc))) < F64_TOL


# Every B ∈ {1, 3}, d ∈ {1, 5, 7}, P ∈ {1, 13, 130, 257} appears; block_p = 64 gives up to five
# column tiles with a padded tail, block_p = 256 a single tile of P rounded up to a power of two.
DENSE_CASES = [
    # B, d, P, block_p, c_mode
    (1, 1, 1, 64, "concrete"),
    (3, 5, 13, 64, "traced"),
    (1, 7, 130, 64, "traced"),
    (3, 1, 257, 64, "concrete"),
    (3, 7, 257, 256, "traced"),
    (1, 5, 257, 64, "concrete"),
    (3, 5, 130, 256, "concrete"),
]


@pytest.mark.parametrize("B,d,P,block_p,c_mode", DENSE_CASES)
def test_pallas_matches_reference_float32(B, d, P, block_p, c_mode):
  E, M, G, delta = _dense_inputs(100 + 7 * B + 11 * d + P, B, d, P, jnp.float32)
  c = 0.81
  if c_mode == "traced":
    fn = jax.jit(lambda E, M, G, delta, c: internals.trace_step_pallas(
        E, M, G, delta, c, interpret=INTERPRET, block_p=block_p))
    E_new, inc = fn(E, M, G, delta, jnp.float32(c))
  else:
    E_new, inc = internals.trace_step_pallas(E, M, G, delta, c, interpret=INTERPRET,
                                           block_p=block_p)
  assert E_new.shape == (B, d, P) and inc.shape == (P,)
  assert E_new.dtype == jnp.float32 and inc.dtype == jnp.float32
  want = _REF(*_f64((E, M, G, delta)), c)
  assert _rel(_f64((E_new, inc)), want) < F32_TOL
  # The tolerance separates the terms: dropping c·M·E or G, or flipping a sign, is an O(1) error.
  assert _rel(_f64(G), want[0]) > 0.1
  assert _rel(want[0] - _f64(G), want[0]) > 0.1


def test_pallas_float64_exact():
  E, M, G, delta = _dense_inputs(1, 3, 7, 130, jnp.float64)
  got = internals.trace_step_pallas(E, M, G, delta, -0.37, interpret=INTERPRET, block_p=32)
  want = _REF(E, M, G, delta, -0.37)
  assert got[0].dtype == jnp.float64
  assert _rel(got, want) < F64_TOL


def test_gradients_match_reference():
  """Reverse mode through the kernel (its jvp rule) equals reverse mode through the jnp step."""
  E, M, G, delta = _dense_inputs(10, 2, 3, 5, jnp.float64)
  E4, _, z, _ = _diag_inputs(11, 2, 3, 4, jnp.float64)
  loss = lambda f: lambda args: (lambda o: jnp.sum(jnp.sin(o[0])) + jnp.sum(o[1] ** 2))(f(*args))
  for fused, ref, args in ((internals.trace_step_pallas, internals.trace_step_reference,
                            (E, M, G, delta, jnp.asarray(0.7))),
                           (internals.trace_step_diag_pallas, internals.trace_step_diag_reference,
                            (E4, M, z, delta, jnp.asarray(0.7)))):
    got = jax.jit(jax.grad(loss(fused)))(args)
    want = jax.jit(jax.grad(loss(ref)))(args)
    assert _rel(got, want) < F64_TOL, fused.__name__
    assert all(np.linalg.norm(g) > 0 for g in jax.tree.leaves(want))


@pytest.mark.parametrize("B,d,P", [(1, 1, 1), (3, 5, 13), (2, 7, 130)])
def test_xla_path_matches_reference(B, d, P):
  """The reassociated XLA steps (increment read from the old trace) equal the textbook order."""
  c = -0.83
  args = _dense_inputs(300 + B + d + P, B, d, P, jnp.float64)
  want = _REF(*args, c)
  assert _rel(jax.jit(internals.trace_step_xla)(*args, c), want) < F64_TOL
  # The increment's δ·G term is separate from the product: dropping it is an O(1) error.
  assert _rel(want[1] - _REF(*args[:2], 0 * args[2], args[3], c)[1], want[1]) > 0.1
  E, M, z, delta = _diag_inputs(400 + B + d + P, B, d, P, jnp.float64)
  want = _REF_DIAG(E, M, z, delta, c)
  assert _rel(jax.jit(internals.trace_step_diag_xla)(E, M, z, delta, c), want) < F64_TOL


ON_CPU = jax.default_backend() == "cpu"
cpu_only = pytest.mark.skipif(not ON_CPU, reason="asserts the CPU defaults (interpret mode, XLA "
                              "chosen automatically); on GPU/TPU the kernel runs natively")


@cpu_only
def test_interpret_default_on_cpu():
  E, M, G, delta = _dense_inputs(2, 1, 5, 13, jnp.float32)
  got = internals.trace_step_pallas(E, M, G, delta, 0.5)  # interpret=None must run on CPU
  want = _REF(*_f64((E, M, G, delta)), 0.5)
  assert _rel(_f64(got), want) < F32_TOL


def test_auto_selection_by_backend():
  assert internals.select_impl("cpu") == "xla"
  assert internals.select_impl("gpu") == "pallas"
  assert internals.select_impl("cuda") == "pallas"
  assert internals.select_impl("tpu", jnp.float32) == "pallas"
  assert internals.select_impl("tpu", jnp.float64) == "xla"


def test_choice_by_lowering_platform():
  """One traced program: XLA when lowered for CPU, the kernel when lowered for GPU or TPU."""
  args = tuple(jnp.asarray(a) for a in _dense_inputs(3, 3, 5, 13, jnp.float32))
  auto = lambda *a: kernels.trace_step(*a, 0.9)
  assert not _lowers_kernel(auto, args, "cpu")
  assert _lowers_kernel(auto, args, "cuda") and _lowers_kernel(auto, args, "tpu")
  forced = lambda *a: kernels.trace_step(*a, 0.9, impl="pallas")
  assert all(_lowers_kernel(forced, args, p) for p in ("cpu", "cuda", "tpu"))
  xla = lambda *a: kernels.trace_step(*a, 0.9, impl="xla")
  assert not any(_lowers_kernel(xla, args, p) for p in ("cpu", "cuda", "tpu"))
  # backend= names the platform whose choice is traced, whatever the lowering platform.
  assert _has_pallas(lambda *a: kernels.trace_step(*a, 0.9, backend="gpu"), *args)
  assert not _has_pallas(lambda *a: kernels.trace_step(*a, 0.9, backend="cpu"), *args)


@cpu_only
def test_automatic_choice_on_this_cpu():
  assert internals.select_impl() == "xla"
  args = _dense_inputs(3, 3, 5, 13, jnp.float32) + (0.9,)
  want = _REF(*_f64(args[:4]), 0.9)
  for impl in (None, "xla", "pallas"):
    assert _rel(_f64(kernels.trace_step(*args, impl=impl)), want) < F32_TOL, impl


def test_bad_arguments():
  E, M, G, delta = _dense_inputs(4, 2, 3, 5, jnp.float32)
  with pytest.raises(ValueError, match="impl must be one of .*'triton'"):
    kernels.trace_step(E, M, G, delta, 0.5, impl="triton")
  with pytest.raises(ValueError, match="block_p must be a positive power of two"):
    internals.trace_step_pallas(E, M, G, delta, 0.5, block_p=100)
  with pytest.raises(ValueError, match="M must have shape"):
    kernels.trace_step(E, M[:, :2], G, delta, 0.5)
  with pytest.raises(ValueError, match="G must have the shape of E"):
    kernels.trace_step(E, M, G[..., :4], delta, 0.5)
  with pytest.raises(ValueError, match="delta must have shape"):
    kernels.trace_step(E, M, G, delta[0], 0.5)
  with pytest.raises(ValueError, match="c must be a scalar"):
    kernels.trace_step(E, M, G, delta, jnp.ones(2))
  with pytest.raises(ValueError, match="E must have shape"):
    kernels.trace_step(E[0], M, G, delta, 0.5)
  with pytest.raises(ValueError, match="interpret must be"):
    internals.trace_step_pallas(E, M, G, delta, 0.5, interpret="yes")
  with pytest.raises(ValueError, match="backend must be"):
    internals.select_impl(3)
  with pytest.raises(ValueError, match="backend must be"):
    kernels.trace_step(E, M, G, delta, 0.5, backend="metal")


def test_jit_vmap_over_seeds():
  S, B, d, P = 2, 3, 5, 130
  E, M, G, delta = (np.stack(a) for a in zip(*[_dense_inputs(50 + s, B, d, P, jnp.float32)
                                                 for s in range(S)]))
  c = jnp.asarray([0.9, -0.4], jnp.float32)  # a per-seed decay, batched along with the inputs
  fn = jax.jit(jax.vmap(lambda *a: kernels.trace_step(*a, impl="pallas", block_p=64)))
  E_new, inc = fn(E, M, G, delta, c)
  assert E_new.shape == (S, B, d, P) and inc.shape == (S, P)
  for s in range(S):
    want = _REF(*_f64((E[s], M[s], G[s], delta[s])), float(c[s]))
    assert _rel(_f64((E_new[s], inc[s])), want) < F32_TOL


def test_scan_over_time_matches_reference():
  """The use in td_step: E carried through lax.scan, increments summed over steps."""
  T, B, d, P = 4, 3, 5, 13
  _, M, G, delta = (np.stack(a) for a in zip(*[_dense_inputs(60 + t, B, d, P, jnp.float64)
                                                 for t in range(T)]))
  c = jnp.asarray(0.7)

  def run(step):
    def body(carry, inp):
      E, acc = carry
      E, inc = step(E, *inp, c)
      return (E, acc + inc), None
    (E, acc), _ = jax.lax.scan(body, (jnp.zeros((B, d, P)), jnp.zeros(P)), (M, G, delta))
    return E, acc

  got = jax.jit(lambda: run(lambda *a: kernels.trace_step(*a, impl="pallas")))()
  want = run(internals.trace_step_reference)
  assert _rel(got, want) < F64_TOL


@pytest.mark.parametrize("B,d,n,block_p", [(1, 1, 1, 64), (3, 5, 7, 16), (3, 7, 13, 64)])
def test_diag_matches_dense(B, d, n, block_p):
  E, M, z, delta = _diag_inputs((7 + d + n), B, d, n, jnp.float32)
  c = 0.77
  G = np.eye(d, dtype=np.float32)[None, :, :, None] * z[:, None, None, :]  # [B, d, d, n]
  dense = _REF(*_f64((E.reshape(B, d, -1), M, G.reshape(B, d, -1), delta)), c)
  want = (dense[0].reshape(B, d, d, n), dense[1].reshape(d, n))
  ref = _REF_DIAG(*_f64((E, M, z, delta)), c)
  assert _rel(ref, want) < F64_TOL
  got = jax.jit(lambda *a: internals.trace_step_diag_pallas(*a, interpret=INTERPRET,
                                                          block_p=block_p))(
      E, M, z, delta, jnp.float32(c))
  assert got[0].shape == (B, d, d, n) and got[1].shape == (d, n)
  assert _rel(_f64(got), want) < F32_TOL


def test_linear_trace_step_matches_jacrev_tree():
  """linear_trace_step without G equals trace_step_tree fed td_step's jacrev ∂ĝ/∂θ."""
  B, d, n = 3, 5, 4
  synth = linear_synthesiser()
  theta = synth.init(jax.random.key(0), n, d)["train"]
  Ew, M, z, delta = _diag_inputs(8, B, d, n, jnp.float64)
  trace = {"w": Ew, "b": _rng(80).standard_normal((B, d, d))}
  c, g_scale = jnp.asarray(0.6), jnp.asarray(0.5)
  apply = lambda th, zz: synth.apply({"train": th, "frozen": {}}, zz)
  dgdth = jax.vmap(jax.jacrev(apply), in_axes=(None, 0))(theta, z)  # leaves [B, d, *θ]
  G = jax.tree.map(lambda g: g_scale * g, dgdth)
  want = jax.jit(lambda *a: internals.trace_step_tree(*a, impl="xla"))(trace, M, G, delta, c)
  assert jax.tree.map(jnp.shape, want[1]) == jax.tree.map(jnp.shape, theta)
  for impl in ("xla", "pallas"):
    got = jax.jit(lambda *a: internals.linear_trace_step(*a, g_scale=g_scale, impl=impl,
                                                       block_p=16))(trace, M, z, delta, c)
    assert _rel(got, want) < F64_TOL, impl


def test_trace_step_tree_per_leaf():
  B, d = 2, 3
  r = _rng(9)
  shapes = {"a": (d, 4), "b": (d,), "c": (2, 3, 5)}
  trace = {name: r.standard_normal((B, d) + s) for name, s in shapes.items()}
  G = {name: r.standard_normal((B, d) + s) for name, s in shapes.items()}
  M = r.standard_normal((B, d, d))
  delta = r.standard_normal((B, d))
  new, inc = jax.jit(lambda *a: internals.trace_step_tree(*a, impl="pallas", block_p=8))(
      trace, M, G, delta, 0.4)
  for name, s in shapes.items():
    e, i = _REF(trace[name].reshape(B, d, -1), M, G[name].reshape(B, d, -1), delta, 0.4)
    assert new[name].shape == (B, d) + s and inc[name].shape == s
    assert _rel((new[name], inc[name]), (e.reshape((B, d) + s), i.reshape(s))) < F64_TOL
  with pytest.raises(ValueError, match="tree structure of trace"):
    internals.trace_step_tree(trace, M, {"a": G["a"]}, delta, 0.4)
  with pytest.raises(ValueError, match="trace must be a dict with key 'w'"):
    internals.linear_trace_step({"v": trace["a"]}, M, delta, delta, 0.4)


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_each_platforms_tiles_compute_the_reference(platform):
  """The tiles a GPU or TPU gets (column tiles capped for Triton's registers, whole 128-lane tiles
  and an unpadded batch on TPU, several tiles per axis), run through the interpreter."""
  from bplambda_jax.kernels import _structured_step, _trace_step
  B, d, P = 2, 100, 300  # GPU: d' = 128 caps the column tile at 64 (5 tiles); TPU: 128 (3 tiles)
  E, M, G, delta = _dense_inputs(70, B, d, P, jnp.float32)
  tiles = _trace_step._tiles(platform, d, P, internals.DEFAULT_BLOCK_P, 4)[0]
  assert tiles.P_pad // tiles.bp > 1
  got = _trace_step._run(jnp.asarray(0.8 * M), E, G, delta, n=None,
                         tiles=tiles._replace(platform="interpret"))
  assert _rel(_f64(got), _REF(*_f64((E, M, G, delta)), 0.8)) < F32_TOL
  pattern = kernels.block_pattern([[True, True], [True, True]])
  B, U, P = 100, 9, 40  # GPU: B' = 128 leaves 1 unit and 32 columns a tile; TPU: 8 units
  r = _rng(71)
  E = r.standard_normal((B, len(pattern.stored), U, P)).astype(np.float32)
  M = (r.standard_normal((B, 2, 2, U)) / 2).astype(np.float32)
  a, dl = r.standard_normal((B, P)).astype(np.float32), r.standard_normal((B, 2, U)).astype(
      np.float32)
  tiles = _structured_step._tiles(platform, B, len(pattern.stored), 2, U, P, 8, 128, 4)[0]
  assert (tiles.Up // tiles.bu) * (tiles.Pp // tiles.bp) > 1
  got = _structured_step._run(jnp.asarray(0.8 * M), E, a, dl, pattern=pattern,
                              tiles=tiles._replace(platform="interpret"))
  want = jax.jit(internals.structured_step_reference, static_argnums=5)(
      *_f64((E, M, a, dl)), 0.8, pattern)
  assert _rel(_f64(got), want) < F32_TOL
