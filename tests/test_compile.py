"""``torch.compile`` traces compaction and ``sma`` without graph breaks.

A fixed number of slots (``slots=K``) needs no host sync, so it compiles with ``fullgraph=True``
under the default config. The dynamic modes (``K`` = longest row, the flat layout) have a
data-dependent size: their op reports an unbacked size, so ``fullgraph=True`` (or
``torch._dynamo.config.capture_dynamic_output_shape_ops = True``) compiles them whole; under
the default config with ``fullgraph=False`` dynamo breaks the graph once at the op
(``explain`` then counts one break per enclosing frame).
"""

import pytest
import torch
from torch import nn

from smakit import sma
from smakit.ops import compress, extract

capture_dynamic = torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True)


def graph_breaks(fn, *args):
    """Graph breaks while compiling ``fn`` (dynamo's counters: ``explain`` misses a break that
    comes before the first traced op)."""
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    torch.compile(fn, backend="eager")(*args)
    return sum(counters["graph_break"].values())


def grads(out, params):
    return torch.autograd.grad(out.square().sum(), params)


def assert_compiled_matches_eager(fn, args, params, backend="aot_eager", atol=1e-5):
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    want, got = fn(*args), compiled(*args)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=atol)
    for g, w in zip(grads(got, params), grads(want, params)):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=atol)
    return compiled


def compress_extract(layout, slots, backend="torch"):
    def fn(x, active, gate):
        packed = compress(x, active, slots=slots, layout=layout, backend=backend)
        h = torch.tanh(packed.values) * 2.0
        return extract(h, packed, gate, backend=backend)
    return fn


def inputs(B=2, L=13, D=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, D, generator=g, requires_grad=True)
    gate = torch.rand(B, L, generator=g, requires_grad=True)
    return x, torch.rand(B, L, generator=g) < 0.5, gate


def test_fixed_slots_have_no_graph_break():
    fn = compress_extract("padded", 4)
    x, active, gate = inputs()
    assert graph_breaks(fn, x, active, gate) == 0
    assert_compiled_matches_eager(fn, (x, active, gate), [x, gate])


@pytest.mark.parametrize("layout", ["padded", "flat"])
def test_dynamic_modes_compile_whole_with_an_unbacked_size(layout):
    fn = compress_extract(layout, None)
    x, active, gate = inputs()
    assert graph_breaks(fn, x, active, gate) >= 1  # default config: the documented break at the op
    with capture_dynamic:
        assert graph_breaks(fn, x, active, gate) == 0
    compiled = assert_compiled_matches_eager(fn, (x, active, gate), [x, gate])
    # another routing pattern (another K or N) reuses the graph: the size is symbolic
    x2, active2, gate2 = inputs(seed=1)
    active2[0] = True
    with torch._dynamo.config.patch(error_on_recompile=True):
        torch.testing.assert_close(compiled(x2, active2, gate2), fn(x2, active2, gate2))


def make_mlp(dim, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))


def test_sma_topk_compiles_fullgraph_with_inductor():
    layer = sma(make_mlp(16), dim=16, router="topk", capacity=0.25)
    x = torch.randn(2, 12, 16, requires_grad=True)
    assert graph_breaks(layer, x) == 0
    assert_compiled_matches_eager(layer, (x,), [x, *layer.parameters()], backend="inductor")


@pytest.mark.parametrize("options", [{}, {"compaction_slots": 5}, {"layout": "flat"}],
                         ids=["dynamic", "static", "flat"])
def test_sma_threshold_compiles_fullgraph(options):
    layer = sma(make_mlp(16), dim=16, router="threshold", **options)
    x = torch.randn(2, 11, 16, requires_grad=True)
    if options.get("compaction_slots"):
        assert graph_breaks(layer, x) == 0
    else:
        with capture_dynamic:
            assert graph_breaks(layer, x) == 0
    assert_compiled_matches_eager(layer, (x,), [x, *layer.parameters()])


def test_triton_backend_compiles():
    """The Triton launchers are custom ops too (interpreted on CPU, see conftest.py)."""
    pytest.importorskip("triton")
    from smakit.ops.compaction.backend import triton_usable

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not triton_usable(device):
        pytest.skip("the Triton kernels cannot run here (no GPU and no TRITON_INTERPRET=1)")
    x, active, gate = (t.detach().to(device).requires_grad_(t.requires_grad) for t in inputs(B=2, L=9, D=5))
    for layout, slots in [("padded", 3), ("padded", None)]:
        fn = compress_extract(layout, slots, backend="triton")
        assert_compiled_matches_eager(fn, (x, active, gate), [x, gate])
