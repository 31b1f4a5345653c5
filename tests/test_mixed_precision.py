"""Mixed precision: routers compute in float32, so half-precision models and autocast never
give NaN or inf in routing, even for inputs near the top of the half-precision range."""

import copy

import pytest
import torch
from torch import nn

from smakit import ThresholdRouter, TopKRouter, sma
from smakit.modules import MLP

HALF = [torch.float16, torch.bfloat16]
ROUTERS = {"threshold": ThresholdRouter, "topk": TopKRouter}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# near the top of each range: an fp16 projection of these overflows (D * |x| * |w| > 65504)
BIG = {torch.float16: 6.0e4, torch.bfloat16: 1.0e30}


def big_input(dtype, B=2, L=24, D=64, device="cpu"):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, L, D, generator=g).sign() * BIG[dtype]
    return x.to(dtype).to(device)


def assert_finite_routing(routing):
    for name in ("logits", "probs", "gate"):
        t = getattr(routing, name)
        assert t.dtype == torch.float32, name
        assert torch.isfinite(t).all(), name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("kind", ROUTERS)
def test_half_router_on_large_inputs_is_finite_and_matches_fp32(kind, dtype, device):
    torch.manual_seed(0)
    router = ROUTERS[kind](64).to(device, dtype)
    x = big_input(dtype, device=device)
    if dtype == torch.float16:  # the test can fail for the right reason: fp16 math overflows
        naive = torch.nn.functional.linear(x, router.proj.weight, router.proj.bias)
        assert not torch.isfinite(naive).all()
    routing = router(x)
    assert_finite_routing(routing)
    ref = copy.deepcopy(router).float()(x.float())  # same (rounded) weights, fp32 everywhere
    assert torch.equal(routing.active, ref.active)
    torch.testing.assert_close(routing.gate, ref.gate)


@pytest.mark.parametrize("kind", ROUTERS)
def test_bf16_autocast_on_cpu(kind):
    """sma(MLP) under CPU bf16 autocast: fp32 routing (same decisions as fp32), bf16 module
    output within the error of the same MLP under autocast, finite fp32 gradients."""
    torch.manual_seed(0)
    layer = sma(MLP(64, 128), dim=64, router=kind)
    x = torch.randn(2, 24, 64) * 1e4
    y32, r32 = layer(x, return_routing=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16, r16 = layer(x, return_routing=True)
        dense16 = layer.module(x)
    assert y16.dtype == torch.bfloat16
    assert_finite_routing(r16)
    assert torch.equal(r16.active, r32.active)
    torch.testing.assert_close(r16.gate, r32.gate)
    assert torch.isfinite(y16).all()
    # error judged against the same-dtype PyTorch error of the dense MLP
    active = r32.active[0]
    dense32 = layer.module(x)
    gate = r32.gate[0].unsqueeze(-1)
    err = (y16.float() - y32)[active].abs().max()
    ref_err = (gate * (dense16.float() - dense32))[active].abs().max()
    assert err <= 2 * ref_err + 1e-6
    assert (y16[~active] == 0).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = layer(x).float().pow(2).mean()
    loss.backward()
    for name, p in layer.named_parameters():
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_precision_model_trains_without_nan(dtype, device):
    """A model cast to half precision: routing stays fp32 and finite, output keeps the dtype,
    and gradients (including the router's, through the fp32 gate) are finite."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.LayerNorm(64)).to(device, dtype)
    layer = sma(MLP(64, 128), dim=64, density_target=0.5, density_mode="loss").to(device, dtype)
    x = torch.randn(2, 24, 64, device=device, dtype=dtype) * 100
    h = model(x)
    y, routing = layer(h, return_routing=True)
    assert y.dtype == dtype
    assert_finite_routing(routing)
    assert routing.active.any() and torch.isfinite(y).all()
    (y.float().pow(2).mean() + layer.aux_loss).backward()
    for name, p in layer.named_parameters():
        assert torch.isfinite(p.grad).all(), name
    assert layer.router.proj.weight.grad.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_cuda_autocast(dtype):
    torch.manual_seed(0)
    layer = sma(MLP(64, 128), dim=64).cuda()
    x = torch.randn(2, 24, 64, device="cuda") * 1e4
    with torch.autocast("cuda", dtype=dtype):
        y, routing = layer(x, return_routing=True)
    assert y.dtype == dtype
    assert_finite_routing(routing)
    assert torch.isfinite(y).all()


def test_seqboat_bf16_autocast_routing_is_finite():
    from smakit.models import SeqBoat

    torch.manual_seed(0)
    model = SeqBoat(input_dim=8, dim=32, depth=2, n_classes=3, window=8, qk_dim=16, ema_ndim=4)
    x = torch.randn(2, 32, 8) * 1e3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert torch.isfinite(out).all()
    for layer in model.layers:
        stats = layer.attn.stats
        assert stats.gate.dtype == torch.float32 and torch.isfinite(stats.gate).all()
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
