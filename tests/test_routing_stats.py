"""One way to observe routing: RoutingStats, the collector, the summaries and the aux-loss block."""

import importlib

import pytest
import torch
from torch import nn

import smakit
from smakit import LocalGatedAttention, SeqBoat, SeqBoatLayer, aux_losses, sma, sma_wrap
from smakit.models import Transformer, TransformerLayer
from smakit.models.routed_transformers import HybridSMA, SMATransformer
from smakit.models.seqboat import VARIANTS
from smakit.routing import RoutingStats, collect_aux_losses, collect_routing_stats, summarize_routing
from smakit.train.loop import activation_ratios
from smakit.train.plots import routing_pattern


def tiny(variant="seqboat", **kw):
    torch.manual_seed(0)
    if variant == "transformer":
        return Transformer(vocab_size=20, dim=16, depth=2, n_classes=3, heads=2, **kw)
    return SeqBoat(vocab_size=20, dim=16, depth=2, n_classes=3, variant=variant, window=4, qk_dim=8, ema_ndim=2,
                   heads=2, **kw)


def tokens(B=2, L=15):
    return torch.randint(0, 20, (B, L), generator=torch.Generator().manual_seed(1))


def smas(model):
    return [m for m in model.modules() if isinstance(m, smakit.SparseModularActivation)]


def test_routing_stats_is_one_class_everywhere():
    core = importlib.import_module("smakit.sma")  # the attribute smakit.sma is the function
    assert smakit.RoutingStats is smakit.routing.RoutingStats is core.RoutingStats
    assert RoutingStats.__module__ == "smakit.routing.stats"


def test_sma_stats_carry_the_attention_span_and_none_without_one():
    torch.manual_seed(0)
    x = torch.randn(2, 12, 16)
    plain = sma(nn.Linear(16, 16), dim=16, router="topk", capacity=0.5)
    plain(x)
    assert plain.stats.span is None and plain.stats.routed
    gau = LocalGatedAttention(16, window=3, qk_dim=8)
    routed = sma(gau, dim=16, router="topk", capacity=0.5)
    routed(x)
    assert routed.stats.span.shape == (1,) and routed.stats.span[0] == gau.span
    # mixed: NaN for the module that reports none; the summary averages over those that do
    mixed = sma({"attn": LocalGatedAttention(16, window=3, qk_dim=8), "mlp": nn.Linear(16, 16)}, dim=16)
    mixed(x)
    assert mixed.stats.span[1].isnan() and not mixed.stats.span[0].isnan()
    assert summarize_routing({"m": mixed.stats})["span"] == [pytest.approx(float(mixed.stats.span[0]))]


@pytest.mark.parametrize("variant", VARIANTS)
def test_collector_reports_every_layer_once_with_ratio_and_span(variant):
    model = tiny(variant).eval()
    assert collect_routing_stats(model) == {}  # nothing ran yet
    mask = torch.arange(15) < torch.tensor([[15], [9]])
    model(tokens(), mask)
    stats = collect_routing_stats(model)
    assert list(stats) == ["layers.0", "layers.1"]  # the sma inside a SeqBoatLayer is not listed again
    for path, s in stats.items():
        assert s.routed == (variant == "seqboat")
        assert s.active.shape == (1, 2, 15) and s.counts.shape == (1, 2) and s.span.shape == (1,)
        assert not s.active[:, 1, 9:].any()  # padding never counts
        real = s.active & mask
        torch.testing.assert_close(s.ratio, real.sum((1, 2)).float() / mask.sum())
        torch.testing.assert_close(s.counts, real.sum(-1))
        if variant == "seqboat":
            assert s is model.get_submodule(path).attn.stats
        elif variant == "ema_only":
            assert s.ratio.item() == 0 and s.span.item() == 0
        else:
            assert s.ratio.item() == 1 and s.span.item() >= 1


def test_transformer_layer_span_through_routing_stats():
    layer = TransformerLayer(16, heads=2, causal=True)
    layer(torch.randn(2, 7, 16))
    s = layer.routing_stats
    assert not s.routed and s.ratio.item() == 1 and s.span.item() == pytest.approx(4.0)  # mean of 1..7


def test_custom_layer_and_nested_modules_follow_the_protocol():
    class Always(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 8)
            self.routing_stats = None

        def forward(self, x):
            self.routing_stats = RoutingStats.fixed(torch.ones(x.shape[:2], dtype=torch.bool))
            return self.lin(x)

    model = nn.Sequential(sma(nn.Linear(8, 8), dim=8, layout="flat"), Always(),
                          nn.Sequential(sma(nn.Linear(8, 8), dim=8, router="topk", capacity=0.25)))
    model(torch.randn(2, 8, 8))
    stats = collect_routing_stats(model)
    assert list(stats) == ["0", "1", "2.0"]
    assert list(collect_routing_stats(model, routed_only=True)) == ["0", "2.0"]
    assert stats["2.0"].ratio.item() == 0.25


def test_compiled_model_reports_the_same_paths():
    model = tiny()
    compiled = torch.compile(model, backend="eager")
    compiled(tokens())
    assert list(collect_routing_stats(compiled)) == ["layers.0", "layers.1"]


def test_summary_matches_the_tensors():
    model = HybridSMA(vocab_size=16, dim=16, depth=2, n_classes=3, heads=2)
    model(tokens().clamp(max=15))
    stats = collect_routing_stats(model)
    out = summarize_routing(stats)
    assert set(out) == {"ratio", "span", "per_module"}
    for i, s in enumerate(stats.values()):
        assert out["ratio"][i] == pytest.approx(s.ratio.sum().item())
        assert out["per_module"][i] == pytest.approx(dict(zip(s.names, s.ratio.tolist())))
        assert out["span"][i] is None  # none of attention/mlp/conv reports a span
    assert summarize_routing({}) == {"ratio": [], "span": [], "per_module": []}


def test_models_routing_stats_keep_their_keys_and_values():
    model = tiny().eval()
    model(tokens())
    got = model.routing_stats()
    assert set(got) == {"ratio", "span"}
    inner = [layer.attn for layer in model.layers]
    assert got["ratio"] == pytest.approx([m.stats.ratio.item() for m in inner])
    assert got["span"] == pytest.approx([m.module.span.item() for m in inner])

    torch.manual_seed(0)
    mod = SMATransformer(vocab_size=20, dim=16, depth=2, lm=True, heads=2, router="topk", capacity=0.5,
                         causal_predictor=True).eval()
    mod(tokens())
    got = mod.routing_stats()
    assert set(got) == {"ratio", "per_module", "agreement"}
    layers = smas(mod)
    assert got["ratio"] == pytest.approx([m.stats.ratio.sum().item() for m in layers])
    assert got["agreement"] == pytest.approx([m.router.agreement.mean().item() for m in layers])


def test_trainer_ratios_and_plot_pattern_read_routed_layers_only():
    model = tiny()
    model(tokens())
    assert activation_ratios(model) == pytest.approx([m.stats.ratio.item() for m in smas(model)])
    pattern = routing_pattern(model, tokens(1), None)
    assert pattern.shape == (2, 15) and pattern.dtype == torch.bool
    assert torch.equal(pattern, torch.stack([m.stats.active[0, 0] for m in smas(model)]))
    full = tiny("seqboat_full")
    full(tokens())
    assert activation_ratios(full) == [] and routing_pattern(full, tokens(1), None).shape == (0, 15)


def test_old_observers_still_work_and_warn():
    layer = SeqBoatLayer(16, causal=True, window=4, qk_dim=8, ema_ndim=2)
    layer(torch.randn(2, 10, 16))
    with pytest.warns(FutureWarning, match="routing_stats"):
        old = layer.stats()
    assert old["ratio"] == layer.routing_stats.ratio[0] and old["span"] == layer.gau.span
    with pytest.warns(FutureWarning, match=r"\.span"):
        assert layer.gau.last_span is layer.gau.span
    t = TransformerLayer(16, heads=2)
    t(torch.randn(1, 5, 16))
    with pytest.warns(FutureWarning, match="routing_stats"):
        assert t.stats()["span"] == t.routing_stats.span[0]


def test_fixed_stats_check_the_mask():
    with pytest.raises(ValueError, match="mask must be a \\[B, L\\] bool"):
        RoutingStats.fixed(torch.ones(2, 3))
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        collect_routing_stats(object())


# auxiliary losses


def two_routed():
    torch.manual_seed(0)
    opts = dict(density_target=0.3, density_mode="straight_through")
    return nn.ModuleDict({"a": sma(nn.Linear(8, 8), dim=8, **opts), "b": sma(nn.Linear(8, 8), dim=8, **opts)})


def test_collect_aux_losses_equals_aux_losses_and_backpropagates():
    model = two_routed()
    x = torch.randn(2, 6, 8)
    with collect_aux_losses(model) as aux:
        y = model["a"](x) + model["b"](x)
    assert sorted(aux.losses) == ["a", "b"]
    torch.testing.assert_close(aux.total, aux_losses(model))
    (y.square().mean() + aux.total).backward()
    assert model["a"].router.proj.weight.grad is not None


def test_collect_aux_losses_ignores_stale_losses_and_freezes_on_exit():
    model = two_routed()
    x = torch.randn(2, 6, 8)
    model["a"](x)  # an earlier forward: its loss must not count below
    with collect_aux_losses(model) as aux:
        model["b"](x)
    assert list(aux.losses) == ["b"]
    frozen = aux.total
    model["a"](x)
    model["b"](torch.randn(2, 6, 8))
    assert list(aux.losses) == ["b"] and aux.total is not None and torch.equal(aux.total, frozen)
    with collect_aux_losses(nn.Linear(2, 2)) as none:
        pass
    assert none.total.shape == () and none.total.item() == 0


def test_collect_aux_losses_with_a_wrapped_encoder_and_compile():
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    sma_wrap(enc, "layers.*", density_target=0.5, density_mode="loss")
    x = torch.randn(2, 9, 16)
    with collect_aux_losses(enc) as aux:
        enc(x)
    assert len(aux.losses) == 2
    eager = aux.total
    compiled = torch.compile(enc, backend="aot_eager")
    with collect_aux_losses(compiled) as caux:
        compiled(x)
    assert sorted(caux.losses) == sorted(aux.losses)  # same paths, no _orig_mod. prefix
    torch.testing.assert_close(caux.total, eager)
    caux.total.backward()
    assert enc.layers[0].sma.router.proj.weight.grad is not None
