"""The accelerator paths, proved on a CPU: programs exported for CUDA and TPU hold the kernels.

``jax.export.export(jax.jit(f), platforms=[p])`` lowers a program for platform p without its
device. The kernels choose their implementation by the platform a program is lowered for
(``jax.lax.platform_dependent``), so exporting for 'cuda' and 'tpu' here lowers exactly what a GPU
or a TPU would run: the Pallas kernels through Triton (custom call ``__gpu$xla.gpu.triton``) and
Mosaic TPU (``tpu_custom_call``), at the library's shapes. Lowering runs every check of the
Pallas backends that does not need the device (block shapes and alignment, Triton's power-of-two
sizes); what only the device can check (register and shared-memory use at compile time, timing)
is in ``python -m benchmarks.device_check``.

Everything here is float32 (the accelerator dtype; TPUs have no float64), whatever the x64 setting.
"""

import re
import warnings

import jax
import jax.numpy as jnp
import pytest

import bplambda_jax as bl
from benchmarks import device_check
from bplambda_jax import kernels
from bplambda_jax.kernels import _trace_step

# The custom-call target of a compiled Pallas kernel on each platform.
CUSTOM_CALL = {"cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}
PLATFORMS = tuple(CUSTOM_CALL)
# Triton kernels carry no serialisation-compatibility guarantee; only the lowering is checked.
_DISABLED = [jax.export.DisabledSafetyCheck.custom_call(CUSTOM_CALL["cuda"])]
F32 = jnp.float32


@pytest.fixture(autouse=True)
def _float32():
  with jax.enable_x64(False):
    yield


def _module(fn, args, platform):
  """The StableHLO text of ``fn`` (jitted unless it is) exported for ``platform`` (args:
  ShapeDtypeStructs). One jitted function exported for several platforms is traced once."""
  jitted = fn if hasattr(fn, "trace") else jax.jit(fn)
  return jax.export.export(jitted, platforms=[platform], disabled_checks=_DISABLED)(
      *args).mlir_module()


def _calls(text):
  return set(re.findall(r"custom_call @([\w$.]+)", text))


def _assert_kernel(text, platform, name):
  assert CUSTOM_CALL[platform] in _calls(text), (platform, _calls(text))
  assert name in text, f"kernel {name} missing from the {platform} module"


def _spec(*shape):
  return jax.ShapeDtypeStruct(shape, F32)


# ------------------------------------------------------------------------------- kernels alone

# The library's shapes (seqMNIST, copy-repeat, element-wise cells at n = 64, 256, 1024, odd
# sizes), shared with the device check that runs the compiled kernels on an accelerator.
DENSE = device_check.DENSE_SHAPES
STRUCTURED = device_check.STRUCTURED_SHAPES


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("case,B,d,P", DENSE, ids=[c[0] for c in DENSE])
def test_trace_step_lowers(case, B, d, P, platform):
  args = (_spec(B, d, P), _spec(B, d, d), _spec(B, d, P), _spec(B, d))
  text = _module(lambda *a: kernels.trace_step(*a, 0.9), args, platform)
  _assert_kernel(text, platform, "bplambda_trace_step")
  if P % d == 0:  # the same columns as a linear synthesiser's W [d, P / d]
    n = P // d
    args = (_spec(B, d, d, n), _spec(B, d, d), _spec(B, n), _spec(B, d))
    text = _module(lambda *a: kernels.trace_step_diag(*a, 0.9), args, platform)
    _assert_kernel(text, platform, "bplambda_trace_step")


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("case,B,pattern_name,U,P", STRUCTURED, ids=[c[0] for c in STRUCTURED])
def test_structured_step_lowers(case, B, pattern_name, U, P, platform):
  pattern = device_check.pattern(pattern_name)
  k = pattern.k
  args = (_spec(B, len(pattern.stored), U, P), _spec(B, k, k, U), _spec(B, P), _spec(B, k, U))
  text = _module(lambda *a: kernels.structured_step(*a, 0.9, pattern), args, platform)
  _assert_kernel(text, platform, "bplambda_structured_step")


def test_cpu_export_holds_no_kernel():
  args = (_spec(8, 30, 512), _spec(8, 30, 30), _spec(8, 30, 512), _spec(8, 30))
  text = _module(lambda *a: kernels.trace_step(*a, 0.9), args, "cpu")
  assert "bplambda_trace_step" not in text and not _calls(text) & set(CUSTOM_CALL.values())


def test_unservable_shape_falls_back_to_xla_with_one_warning():
  """d = 200 pads to 256 rows: M alone exceeds a GPU program's shared memory, so the GPU runs the
  XLA path (said once); the TPU still runs the kernel."""
  B, d, P = 4, 200, 256
  args = (_spec(B, d, P), _spec(B, d, d), _spec(B, d, P), _spec(B, d))
  with pytest.warns(UserWarning, match=r"trace_step: the Pallas kernel cannot serve .* on cuda"):
    text = _module(lambda *a: kernels.trace_step(*a, 0.9, backend="cuda"), args, "cuda")
  assert not _calls(text) and "bplambda_trace_step" not in text
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # the second time is quiet
    _module(lambda *a: kernels.trace_step(*a, 0.9, backend="cuda"), args, "cuda")
  _assert_kernel(_module(lambda *a: kernels.trace_step(*a, 0.9), args, "tpu"), "tpu",
                 "bplambda_trace_step")


def _misaligned(platform, bp):
  """The dense kernel launched directly with a column tile of ``bp`` (no plan checks it)."""
  B, d, P = 2, 16, 256
  tiles = _trace_step._Tiles(platform, d_pad=16, bp=bp, P_pad=P)
  fn = lambda Mc, E, G, dl: _trace_step._run(Mc, E, G, dl, n=None, tiles=tiles)
  return _module(fn, (_spec(B, d, d), _spec(B, d, P), _spec(B, d, P), _spec(B, d)), platform)


def test_lowering_fails_when_a_tile_violates_the_platform():
  """The export check has teeth: tiles that break a platform's rule do not lower."""
  _assert_kernel(_misaligned("tpu", 128), "tpu", "bplambda_trace_step")  # aligned: lowers
  with pytest.raises(Exception, match=r"divisible by 8 and 128"):
    _misaligned("tpu", 64)  # 64 of the 128 lanes: Mosaic refuses the block
  _assert_kernel(_misaligned("cuda", 64), "cuda", "bplambda_trace_step")
  with pytest.raises(Exception, match=r"power of 2"):
    _misaligned("cuda", 48)  # Triton needs power-of-two blocks


# ------------------------------------------------------------------------------- full updates

SEQMNIST = ("lstm", "ce", 28, 10, 30, 50, 28)
COPYREPEAT = ("lstm", "bce", 10, 9, 100, 100, 40)
BPL = dict(mode="online", lambda_=1.0, gamma=0.9, sg_scale=1.0)

# (id, (cell, loss, D_in, D_out, H, B, T), rule spec, options, kernel in the update or None).
UPDATES = [
    ("seqmnist_bplambda_dense", SEQMNIST, "bp_lambda", dict(trace="dense", **BPL),
     "bplambda_trace_step"),
    ("seqmnist_bplambda_chunked", SEQMNIST, "bp_lambda", dict(trace="chunked", trace_chunk=8,
                                                             **BPL), "bplambda_trace_step"),
    ("seqmnist_bplambda_state_dense", SEQMNIST, "bp_lambda",
     dict(flavour="state", trace="dense", **BPL), "bplambda_trace_step"),
    ("copyrepeat_bplambda_dense", COPYREPEAT, "bp_lambda", dict(trace="dense", **BPL),
     "bplambda_trace_step"),
    ("copyrepeat_bplambda_chunked", COPYREPEAT, "bp_lambda",
     dict(trace="chunked", trace_chunk=8, **BPL), "bplambda_trace_step"),
    # e-prop's own traces are per-parameter recursions with no trace-step kernel: it must lower.
    ("seqmnist_eprop", SEQMNIST, "eprop", dict(mode="online"), None),
]
for _n in (64, 256, 1024):
  for _cell in ("lru", "elementwise_lstm"):  # LRU: state flavour; element-wise LSTM: e-prop's
    UPDATES.append((f"{_cell}_n{_n}_bplambda_structured", (_cell, "bce", _n, 8, _n, 8, 4),
                    "bp_lambda", dict(BPL), "bplambda_structured_step"))
UPDATES.append(("elementwise_lstm_n64_bplambda_dense", ("elementwise_lstm", "bce", 64, 8, 64, 8, 4),
                "bp_lambda", dict(trace="dense", **BPL), "bplambda_trace_step"))


def _update_args(shapes, spec, options):
  cell, loss, D, O, H, B, T = shapes
  rule = bl.make_rule(spec, bl.make_model(cell, loss, D, O, hidden_size=H), **options)
  opt = bl.optimiser(1e-3, 1e-3, 1e-3)
  state = jax.eval_shape(lambda k: bl.init_state(rule, opt, k), jax.random.key(0))
  y = jax.ShapeDtypeStruct((T, B), jnp.int32) if loss == "ce" else _spec(T, B, O)
  return bl.make_update(rule, opt), (state, bl.Batch(_spec(T, B, D), y, _spec(T, B)))


@pytest.mark.parametrize("case,shapes,spec,options,kernel", UPDATES, ids=[u[0] for u in UPDATES])
def test_update_lowers_with_kernel(case, shapes, spec, options, kernel):
  update, args = _update_args(shapes, spec, options)
  update = jax.jit(update)  # traced once, lowered for each platform
  for platform in PLATFORMS:
    text = _module(update, args, platform)
    if kernel is None:
      assert not _calls(text) & set(CUSTOM_CALL.values()), platform
    else:
      _assert_kernel(text, platform, kernel)


@pytest.mark.parametrize("case", ["seqmnist_bplambda_dense", "lru_n64_bplambda_structured"])
def test_seed_vmapped_update_lowers_with_kernel(case):
  """On GPU/TPU seeds are a vmap (seed_axis='auto'): the batched kernel still lowers."""
  _, shapes, spec, options, kernel = next(u for u in UPDATES if u[0] == case)
  update, args = _update_args(shapes, spec, options)
  seeds = lambda tree: jax.tree.map(lambda s: jax.ShapeDtypeStruct((4,) + s.shape, s.dtype), tree)
  update = jax.jit(jax.vmap(update))
  for platform in PLATFORMS:
    _assert_kernel(_module(update, seeds(args), platform), platform, kernel)


def test_device_check_needs_an_accelerator_on_cpu(capsys, tmp_path):
  if jax.default_backend() != "cpu":
    pytest.skip("on an accelerator the device check runs for minutes")
  out = tmp_path / "device.json"
  assert device_check.main(["--json", str(out)]) == device_check.EXIT_NO_ACCELERATOR
  err = capsys.readouterr().err
  assert "needs an accelerator (a GPU or a TPU)" in err and "'cpu'" in err
  assert not out.exists()
