"""torch.compile of whole models: SeqBoat (inductor, dynamic shapes) matches eager."""

import pytest
import torch

from smakit.models import SeqBoat


def tiny_seqboat(**kw):
    torch.manual_seed(0)
    return SeqBoat(vocab_size=20, dim=32, depth=1, lm=True, window=8, qk_dim=16, **kw)


def test_default_config_breaks_only_at_the_data_dependent_compaction():
    """Without capturing data-dependent output shapes, dynamo stops at the compaction op (its
    number of slots depends on the routing), and nowhere else."""
    model = tiny_seqboat()
    explained = torch._dynamo.explain(model)(torch.randint(0, 20, (2, 37)))
    assert explained.graph_break_count >= 1
    assert all("smakit.compress" in b.reason for b in explained.break_reasons), explained.break_reasons


def assert_compiled_matches_eager(model, compiled, shapes):
    for shape in shapes:
        x = torch.randint(0, 20, shape)
        model.zero_grad()
        want = model(x)
        want.square().mean().backward()
        want_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        got = compiled(x)
        got.square().mean().backward()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.grad, want_grads[n], rtol=1e-3, atol=1e-5, msg=n)


def test_seqboat_compiles_with_inductor_dynamic_shapes_and_matches_eager():
    """Default config: inductor compiles the graphs around the compaction op."""
    model = tiny_seqboat()
    compiled = torch.compile(model, dynamic=True)
    assert_compiled_matches_eager(model, compiled, [(2, 37), (3, 21)])


@pytest.mark.parametrize("relative_bias", [True, "fourier"])
def test_seqboat_traces_as_one_graph_when_data_dependent_shapes_are_captured(relative_bias):
    model = tiny_seqboat(relative_bias=relative_bias)
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        assert torch._dynamo.explain(model)(torch.randint(0, 20, (2, 37))).graph_break_count == 0
        compiled = torch.compile(model, backend="aot_eager", dynamic=True, fullgraph=True)
        assert_compiled_matches_eager(model, compiled, [(2, 37), (3, 21)])


@pytest.mark.parametrize("variant", ["seqboat_full", "ema_only"])
def test_router_free_variants_compile_without_breaks(variant):
    model = tiny_seqboat(variant=variant)
    assert torch._dynamo.explain(model)(torch.randint(0, 20, (2, 19))).graph_break_count == 0


def test_static_attention_capacity_compiles_without_capturing_dynamic_shapes():
    """With ``compaction_capacity`` the compacted size is fixed: no data-dependent shape at all."""
    model = tiny_seqboat(compaction_slots=16)
    x = torch.randint(0, 20, (2, 37))
    assert torch._dynamo.explain(model)(x).graph_break_count == 0
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    assert_compiled_matches_eager(model, compiled, [(2, 37)])
