"""Triton compaction kernels against the whole-op reference (``naive.compress_reference`` /
``extract_reference``: plain autograd, its own bookkeeping), forward, gradients and
second-order gradients.

On a CPU-only machine the kernels run under the Triton interpreter (``TRITON_INTERPRET=1``,
set by ``conftest.py`` and again here before smakit imports them), so shapes stay tiny and
odd: every tile, chunk and ``D`` tail boundary is crossed. With a GPU the same tests run the
compiled kernels on CUDA, plus long rows.
"""

import os
import subprocess
import sys

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from smakit.ops import Compacted, compact_like, compress, extract  # noqa: E402
from smakit.ops.compaction import naive  # noqa: E402
from smakit.ops.compaction import triton as kernels  # noqa: E402
from smakit.ops.compaction.backend import resolve  # noqa: E402

pytestmark = pytest.mark.skipif(
    not kernels.usable_on(torch.device(DEVICE)),
    reason="the Triton kernels were imported before TRITON_INTERPRET=1 was set",
)

# (B, L, D, kind): odd lengths, D tails, empty/full rows, B=1, L=1
CASES = [(1, 1, 1, "full"), (1, 1, 1, "empty"), (2, 37, 5, "mixed"), (3, 19, 33, "random"), (3, 8, 1, "empty_batch")]
IDS = [f"B{b}-L{n}-D{d}-{k}" for b, n, d, k in CASES]
DTYPES = [torch.float32, torch.bfloat16]


def make_active(B, L, kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    active = torch.rand(B, L, generator=g) < 0.5
    if kind == "full":
        active[:] = True
    elif kind in ("empty", "empty_batch"):
        active[:] = False
    elif kind == "mixed":
        active[0], active[-1] = False, True
    return active.to(DEVICE)


def randn(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(device=DEVICE, dtype=dtype)


@pytest.fixture
def poison(monkeypatch):
    """``torch.empty`` / ``Tensor.new_empty`` hand out poisoned memory (NaN, a huge int,
    True), so an output slot a kernel forgets to write fails the comparison."""
    empty, new_empty = torch.empty, torch.Tensor.new_empty
    junk = {torch.int64: 987654321, torch.int32: 98765, torch.uint8: 7, torch.int8: 7}

    def fill(t):
        if t.is_floating_point():
            return t.fill_(float("nan"))
        return t.fill_(True if t.dtype == torch.bool else junk.get(t.dtype, 7))

    monkeypatch.setattr(torch, "empty", lambda *a, **k: fill(empty(*a, **k)))
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *a, **k: fill(new_empty(self, *a, **k)))


def packed_fields(p):
    return {"values": p.values, "positions": p.positions, "mask": p.mask, "counts": p.counts,
            "scatter_index": p.scatter_index, "batch_index": p.batch_index, "kept": p.kept()}


def assert_within_dtype_error(name, got, same_dtype_ref, fp32_ref, dtype):
    """fp32: ~1e-5 relative. Lower precision (``dtype`` of the computation): the kernel's error
    against the fp32 answer is at most twice the error of the same-dtype PyTorch computation
    (plus fp32-level slack)."""
    got, same, exact = got.float(), same_dtype_ref.float(), fp32_ref.float()
    assert not got.isnan().any(), f"{name}: NaN (an unwritten output?)"
    scale = exact.abs().max().item() if exact.numel() else 0.0
    if dtype == torch.float32:
        torch.testing.assert_close(got, exact, rtol=1e-5, atol=1e-5 * max(scale, 1.0), msg=name)
        return
    err = (got - exact).abs().max().item() if got.numel() else 0.0
    ref_err = (same - exact).abs().max().item() if got.numel() else 0.0
    assert err <= 2 * ref_err + 1e-5 * scale, f"{name}: error {err:.3g} vs same-dtype PyTorch {ref_err:.3g}"


def reference_fields(x, active, slots, layout):
    """Every field of :class:`Compacted`, from the whole-op reference."""
    B, L = active.shape
    ref = naive.compress_reference(x, active, slots, layout == "flat")
    if layout == "flat":
        scatter = ref["batch_index"] * L + ref["positions"]
    else:
        row_start = torch.arange(B, device=active.device).unsqueeze(1) * L
        scatter = torch.where(ref["mask"], ref["positions"] + row_start, B * L).reshape(-1)
    return {**ref, "scatter_index": scatter}


@pytest.mark.parametrize("slots", [None, 3], ids=["dynamic", "cap3"])
@pytest.mark.parametrize("layout", ["padded", "flat"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("B,L,D,kind", CASES, ids=IDS)
def test_compress_matches_reference(B, L, D, kind, dtype, layout, slots, poison):
    x = randn(B, L, D, dtype=dtype)
    active = make_active(B, L, kind)
    got = packed_fields(compress(x, active, slots=slots, layout=layout, backend="triton"))
    want = reference_fields(x, active, slots, layout)
    for name, w in want.items():
        g = got[name]
        if w is None:
            assert g is None, name
            continue
        assert g.shape == w.shape and g.dtype == w.dtype, (name, g.shape, w.shape, g.dtype, w.dtype)
        assert torch.equal(g, w), f"{name}:\n{g}\nwant\n{w}"  # a copy: bit-exact


def toy_module(values, side):
    return values * 1.5 + side.sum(-1, keepdim=True)


def pipeline_loss(y, side):
    w = torch.linspace(-1, 1, y.shape[-1], device=y.device, dtype=y.dtype)
    return (y.float() * w.float()).sum() + side.float().square().sum()


def run_pipeline(x, active, gate, extra, layout, slots, backend):
    """compress -> a toy module -> extract, plus compact_like, on ``backend`` (``"reference"``:
    the whole-op reference); returns outputs and gradients."""
    x = x.detach().requires_grad_()
    extra = extra.detach().requires_grad_()
    gate = gate.detach().requires_grad_() if gate is not None else None
    flat = layout == "flat"
    if backend == "reference":
        values = naive.compress_reference(x, active, slots, flat)["values"]
        side = naive.compress_reference(extra, active, slots, flat)["values"]
        kept = naive.compress_reference(x, active, slots, flat)["kept"]
        y = naive.extract_reference(toy_module(values, side), kept, gate, flat)
    else:
        packed = compress(x, active, slots=slots, layout=layout, backend=backend)
        side = compact_like(extra, packed, backend=backend)  # [B, K, 3] or [N, 3]
        y = extract(toy_module(packed.values, side), packed, gate, backend=backend)
    inputs = [x, extra] + ([gate] if gate is not None else [])
    grads = torch.autograd.grad(pipeline_loss(y, side), inputs)
    out = {"y": y, "side": side, "grad_x": grads[0], "grad_extra": grads[1]}
    if gate is not None:
        out["grad_gate"] = grads[2]
    return out


@pytest.mark.parametrize("gated", [True, False], ids=["gate", "nogate"])
@pytest.mark.parametrize("layout,slots", [("padded", None), ("padded", 4), ("flat", None)],
                         ids=["padded", "padded-cap4", "flat"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("B,L,D,kind", CASES[2:], ids=IDS[2:])
def test_extract_and_gradients_match_reference(B, L, D, kind, dtype, layout, slots, gated, poison):
    active = make_active(B, L, kind)
    x, extra = randn(B, L, D, dtype=dtype), randn(B, L, 3, dtype=dtype, seed=1)
    gate = torch.rand(B, L, generator=torch.Generator().manual_seed(2)).to(DEVICE) if gated else None
    got = run_pipeline(x, active, gate, extra, layout, slots, "triton")
    same = run_pipeline(x, active, gate, extra, layout, slots, "reference")
    exact = run_pipeline(x.float(), active, gate, extra.float(), layout, slots, "reference")
    for name in same:
        assert got[name].shape == same[name].shape, name
        assert_within_dtype_error(name, got[name], same[name], exact[name], dtype)
    assert (got["y"][~compress(x, active, slots=slots, layout=layout).kept()] == 0).all()


@pytest.mark.parametrize("layout", ["padded", "flat"])
def test_fp16(layout, poison):
    B, L, D, kind = CASES[2]
    active = make_active(B, L, kind)
    x, extra = randn(B, L, D, dtype=torch.float16), randn(B, L, 3, dtype=torch.float16, seed=1)
    gate = torch.rand(B, L, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    got = run_pipeline(x, active, gate, extra, layout, None, "triton")
    same = run_pipeline(x, active, gate, extra, layout, None, "reference")
    exact = run_pipeline(x.float(), active, gate, extra.float(), layout, None, "reference")
    for name in same:
        assert_within_dtype_error(name, got[name], same[name], exact[name], torch.float16)


def second_order_fn(active, layout, backend):
    """A scalar loss whose Hessian mixes every op: compress, compact_like, extract with a gate."""
    flat = layout == "flat"

    def fn(x, gate):
        if backend == "reference":
            values = naive.compress_reference(x, active, None, flat)["values"]
            side = naive.compress_reference(x.square(), active, None, flat)["values"]
            y = naive.extract_reference(torch.tanh(values) * side, active, gate, flat)
        else:
            packed = compress(x, active, layout=layout, backend=backend)
            side = compact_like(x.square(), packed, backend=backend)
            y = extract(torch.tanh(packed.values) * side, packed, gate, backend=backend)
        return (y.square() * gate.unsqueeze(-1)).sum()
    return fn


@pytest.mark.parametrize("layout", ["padded", "flat"])
def test_hessian_vector_product_matches_reference(layout):
    """Second-order gradients through the kernels (each backward is differentiable)."""
    B, L, D = 2, 11, 3
    active = make_active(B, L, "mixed")
    x, gate = randn(B, L, D), torch.rand(B, L, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    v = (randn(B, L, D, seed=4), randn(B, L, seed=5))
    got = torch.autograd.functional.hvp(second_order_fn(active, layout, "triton"), (x, gate), v)[1]
    want = torch.autograd.functional.hvp(second_order_fn(active, layout, "reference"), (x, gate), v)[1]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["padded", "flat"])
def test_gradgradcheck_float64(layout):
    """The kernels compute gate products in float64 for float64 data, so finite differences
    check them (fast mode: random projections, the interpreter is slow)."""
    B, L, D = 2, 5, 3
    active = make_active(B, L, "random", seed=1)
    x = randn(B, L, D, dtype=torch.float64).requires_grad_()
    gate = torch.rand(B, L, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    fn = second_order_fn(active, layout, "triton")
    assert torch.autograd.gradgradcheck(fn, (x, gate.requires_grad_()), fast_mode=True)


def test_hand_built_compacted_without_active_flags():
    """A ``Compacted`` built without kept flags rebuilds them from the scatter index."""
    B, L, D = 2, 11, 5
    active = make_active(B, L, "mixed")
    x = randn(B, L, D)
    packed = compress(x, active, backend="torch")
    packed = Compacted(packed.values, packed.mask, packed.positions, packed.counts, packed.batch_index,
                       packed.scatter_index, packed.seq_len, packed.layout)
    gate = torch.rand(B, L).to(DEVICE)
    torch.testing.assert_close(extract(packed.values, packed, gate, backend="triton"),
                               extract(packed.values, packed, gate, backend="torch"))
    torch.testing.assert_close(compact_like(x, packed, backend="triton"), packed.values)


def test_auto_backend_picks_torch_on_cpu_and_triton_on_cuda():
    assert resolve("auto", torch.device("cpu")) == "torch"
    if torch.cuda.is_available():
        assert resolve("auto", torch.device("cuda")) == "triton"
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve("cuda", torch.device("cpu"))


@pytest.mark.skipif(DEVICE != "cpu", reason="CPU-only behaviour")
def test_triton_backend_on_cpu_without_interpreter_is_a_clear_error():
    code = ("import torch\nfrom smakit.ops import compress\n"
            "compress(torch.randn(1, 4, 2), torch.ones(1, 4, dtype=torch.bool), backend='triton')\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    assert "TRITON_INTERPRET=1" in proc.stderr and "CUDA tensors" in proc.stderr


@pytest.mark.skipif(DEVICE != "cuda", reason="needs a GPU (too slow for the interpreter)")
@pytest.mark.parametrize("B,L,D", [(2, 131072, 8), (8, 8192, 1024), (1, 70001, 257)], ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_long_rows_on_gpu(B, L, D, dtype):
    active = torch.rand(B, L, device=DEVICE) < 0.5
    x = torch.randn(B, L, D, device=DEVICE, dtype=dtype)
    gate = torch.rand(B, L, device=DEVICE)
    for layout, slots in [("padded", None), ("padded", L // 3), ("flat", None)]:
        got = compress(x, active, slots=slots, layout=layout, backend="triton")
        want = compress(x, active, slots=slots, layout=layout, backend="torch")
        for name, w in packed_fields(want).items():
            assert w is None or torch.equal(packed_fields(got)[name], w), name
        torch.testing.assert_close(extract(got.values, got, gate, backend="triton"),
                                   extract(want.values, want, gate, backend="torch"))
