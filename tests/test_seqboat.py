"""SeqBoatLayer and SeqBoat models: causality, streaming == full forward, masks, gradients."""

import pytest
import torch

from smakit import aux_losses
from smakit.models import VARIANTS, SeqBoat, SeqBoatLayer, Transformer, generate
from smakit.modules import MLP


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp(min=1e-12)).item()


def stream(layer, x):
    state = layer.init_state(x.shape[0], dtype=x.dtype)
    out = []
    for t in range(x.shape[1]):
        y, state = layer.step(x[:, t], state)
        out.append(y)
    return torch.stack(out, 1)


LAYER_CASES = [
    dict(mode="sparse"),
    dict(mode="sparse", attention="relu2", prenorm=False),
    dict(mode="sparse", window=1),
    dict(mode="always"),
    dict(mode="always", chunked=True),
    dict(mode="none"),
]


@pytest.mark.parametrize("kwargs", LAYER_CASES, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()))
@pytest.mark.parametrize("L", [1, 45])
def test_step_equals_forward_fp32(kwargs, L):
    torch.manual_seed(L)
    opts = dict(window=5, qk_dim=8, ema_ndim=4) | kwargs
    layer = SeqBoatLayer(16, causal=True, **opts).eval()
    x = torch.randn(3, L, 16)
    with torch.no_grad():
        y = layer(x)
        assert rel_err(stream(layer, x), y) <= 1e-4


def test_streaming_spans_beyond_window():
    """The cache keeps the last routed tokens, whatever their distance: span > window."""
    torch.manual_seed(0)
    layer = SeqBoatLayer(16, causal=True, window=4, qk_dim=8, ema_ndim=4).eval()
    with torch.no_grad():
        layer.router.proj.bias.copy_(torch.tensor([0.1, -0.1]))  # mostly skip
        x = torch.randn(2, 80, 16)
        y = layer(x)
        ratio, span = layer.routing_stats.ratio.item(), layer.routing_stats.span.item()
        assert 0 < ratio < 0.5 and span > 4
        assert rel_err(stream(layer, x), y) <= 1e-4


@pytest.mark.parametrize("mode", ["sparse", "always"])
def test_causal_layer_leaks_nothing_from_the_future(mode):
    torch.manual_seed(1)
    layer = SeqBoatLayer(12, causal=True, window=3, qk_dim=4, ema_ndim=2, mode=mode).double().eval()
    x = torch.randn(2, 25, 12, dtype=torch.float64)
    y = layer(x)
    active = layer.attn.stats.active.clone() if mode == "sparse" else None
    for t in (0, 11, 24):
        x2 = x.clone()
        x2[:, t + 1:] = 10 * torch.randn_like(x2[:, t + 1:])
        y2 = layer(x2)
        torch.testing.assert_close(y2[:, :t + 1], y[:, :t + 1], rtol=1e-9, atol=1e-9)
        if mode == "sparse":
            assert torch.equal(layer.attn.stats.active[..., :t + 1], active[..., :t + 1])
    # gradient view: output at t depends on no input after t (up to FFT round-off)
    xg = x.clone().requires_grad_(True)
    layer(xg)[:, 10].sum().backward()
    assert xg.grad[:, 11:].abs().max() < 1e-10 * xg.grad[:, :11].abs().max()


@pytest.mark.parametrize("mode", ["sparse", "always", "none"])
@pytest.mark.parametrize("attention", ["softmax", "relu2"])
def test_bidirectional_with_padding_mask(mode, attention):
    torch.manual_seed(2)
    layer = SeqBoatLayer(12, causal=False, window=3, qk_dim=4, ema_ndim=2, mode=mode, attention=attention).eval()
    lengths = torch.tensor([17, 9, 1])
    mask = torch.arange(17) < lengths[:, None]
    x = torch.randn(3, 17, 12)
    x = torch.where(mask[..., None], x, 50.0)  # garbage in the padding
    y = layer(x, mask)
    assert torch.isfinite(y).all()
    if mode == "sparse":
        assert not layer.attn.stats.active[0][~mask].any()
    for b, n in enumerate(lengths.tolist()):
        alone = layer(x[b:b + 1, :n])
        torch.testing.assert_close(y[b, :n], alone[0], rtol=1e-4, atol=1e-5)
    # the future matters when bidirectional
    x2 = x.clone()
    x2[0, 10:] += torch.randn_like(x2[0, 10:])
    assert not torch.allclose(layer(x2, mask)[0, :10], y[0, :10])


@pytest.mark.parametrize("straight_through", [False, True])
def test_gradients_flow_to_router(straight_through):
    torch.manual_seed(3)
    layer = SeqBoatLayer(12, causal=True, window=3, qk_dim=4, ema_ndim=2, straight_through=straight_through,
                         density_target=0.3, density_mode="straight_through")
    x = torch.randn(2, 21, 12)
    loss = layer(x).square().mean() + aux_losses(layer)
    loss.backward()
    router = layer.router
    assert router.proj.weight.grad.abs().sum() > 0
    assert router.log_temperature.grad.abs() > 0
    for name, p in layer.named_parameters():
        assert p.grad is not None, name


def test_step_rejects_bidirectional():
    with pytest.raises(RuntimeError):
        SeqBoatLayer(8, causal=False, window=2, qk_dim=4).init_state(1)


# models


def seqboat(**kw):
    """``SeqBoat(**kw)``; the deprecated transformer variant must warn."""
    if kw.get("variant") != "transformer":
        return SeqBoat(**kw)
    with pytest.warns(FutureWarning, match="smakit.models.Transformer"):
        return SeqBoat(**kw)


@pytest.mark.parametrize("ffn_activation", ["gelu", "swiglu"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_lm_variants_forward_and_decode(variant, ffn_activation):
    torch.manual_seed(4)
    model = seqboat(vocab_size=40, dim=16, depth=2, lm=True, variant=variant, window=4, qk_dim=8, ema_ndim=2,
                    heads=2, ffn_hidden=24, ffn_activation=ffn_activation).eval()
    mlps = [m for m in model.modules() if isinstance(m, MLP)]
    assert len(mlps) == 2 and all(m.activation == ffn_activation and m.hidden == 24 for m in mlps)
    tokens = torch.randint(0, 40, (2, 19))
    with torch.no_grad():
        logits = model(tokens)
        assert logits.shape == (2, 19, 40)
        stats = model.routing_stats()
        assert len(stats["ratio"]) == 2 and len(stats["span"]) == 2
        if model.supports_step:
            state = model.init_state(2)
            steps = []
            for t in range(19):
                out, state = model.step(tokens[:, t], state)
                steps.append(out)
            assert rel_err(torch.stack(steps, 1), logits) <= 1e-4
        out = generate(model, tokens[:, :5], 6, temperature=0)
        assert out.shape == (2, 11) and torch.equal(out[:, :5], tokens[:, :5])
        # greedy generation agrees with the full forward
        assert torch.equal(out[:, 5], model(tokens[:, :5])[:, -1].argmax(-1))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("pooling", ["mean", "last", "max"])
def test_classifier_padding_aware(variant, pooling):
    torch.manual_seed(5)
    model = seqboat(input_dim=3, dim=16, depth=2, n_classes=4, variant=variant, window=3, qk_dim=8, ema_ndim=2,
                    heads=2, pooling=pooling).eval()
    lengths = torch.tensor([13, 6])
    mask = torch.arange(13) < lengths[:, None]
    x = torch.where(mask[..., None], torch.randn(2, 13, 3), 7.0)
    logits = model(x, mask)
    assert logits.shape == (2, 4)
    alone = model(x[1:, :6])
    torch.testing.assert_close(logits[1:], alone, rtol=1e-4, atol=1e-5)


def test_model_routing_stats_and_density_loss():
    model = SeqBoat(vocab_size=20, dim=16, depth=3, n_classes=2, window=4, qk_dim=8, density_target=0.2,
                    density_mode="loss")
    tokens = torch.randint(0, 20, (2, 30))
    model(tokens).sum().backward()
    stats = model.routing_stats()
    assert all(0 <= r <= 1 for r in stats["ratio"]) and all(s >= 0 for s in stats["span"])
    assert model.aux_loss() is not None and model.aux_loss().ndim == 0


def test_model_argument_errors():
    with pytest.raises(ValueError):
        SeqBoat(dim=8, n_classes=2)
    with pytest.raises(ValueError):
        SeqBoat(vocab_size=10, dim=8)
    with pytest.raises(ValueError):
        SeqBoat(vocab_size=10, dim=8, lm=True, variant="mamba")
    with pytest.raises(ValueError, match="ffn_activation must be one of"):
        SeqBoat(vocab_size=10, dim=8, lm=True, ffn_hidden=16, ffn_activation="relu")
    with pytest.raises(ValueError, match="mlp_activation must be one of"):
        Transformer(vocab_size=10, dim=8, lm=True, mlp_activation="relu")
