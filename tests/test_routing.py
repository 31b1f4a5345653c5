"""Routers: decisions, gates, temperature, capacity, padding, losses."""

import math

import pytest
import torch

from smakit.routing import ThresholdRouter, TopKRouter, capacity_slots


def test_threshold_router_picks_argmax_and_gates_with_winner_probability():
    torch.manual_seed(0)
    router = ThresholdRouter(8, num_modules=2)
    r = router(torch.randn(3, 10, 8))
    choice = r.probs.argmax(-1)
    for m in range(2):
        assert torch.equal(r.active[m], choice == m + 1)
        torch.testing.assert_close(r.gate[m], torch.where(choice == m + 1, r.probs[..., m + 1], 0.0))
    assert not (r.active[0] & r.active[1]).any()  # one option per token


def test_threshold_temperature_is_learned_in_log_space():
    router = ThresholdRouter(64, temperature_scale=0.5)
    assert math.isclose(router.temperature.item(), 0.5 * 8, rel_tol=1e-6)
    x = torch.randn(2, 5, 64)
    r = router(x)
    torch.testing.assert_close(r.probs, (r.logits / 4.0).softmax(-1))
    r.gate.sum().backward()
    assert router.log_temperature.grad is not None


def test_threshold_router_is_causal():
    router = ThresholdRouter(6)
    x = torch.randn(1, 12, 6)
    a = router(x)
    x2 = x.clone()
    x2[:, 7:] = torch.randn(1, 5, 6) * 10
    b = router(x2)
    assert torch.equal(a.active[:, :, :7], b.active[:, :, :7])
    torch.testing.assert_close(a.gate[:, :, :7], b.gate[:, :, :7])


def test_padding_never_activates():
    mask = torch.tensor([[True] * 5 + [False] * 4, [True] * 9])
    for router in (ThresholdRouter(4), TopKRouter(4, capacity=0.75)):
        with torch.no_grad():
            router.proj.bias.fill_(100.0)  # every real token would activate
            if isinstance(router, ThresholdRouter):
                router.proj.bias[0] = -100.0
        r = router(torch.randn(2, 9, 4), mask)
        assert not r.active[:, ~mask].any()
        assert (r.gate[:, ~mask] == 0).all()


def test_straight_through_gate_is_one_with_probability_gradient():
    router = ThresholdRouter(4, straight_through=True)
    r = router(torch.randn(2, 6, 4))
    torch.testing.assert_close(r.gate[r.active], torch.ones(int(r.active.sum())))
    r.gate.sum().backward()
    assert router.proj.weight.grad.abs().sum() > 0


def test_gumbel_noise_only_in_training():
    torch.manual_seed(1)
    router = ThresholdRouter(4, gumbel=True)
    x = torch.randn(4, 50, 4)
    router.eval()
    assert torch.equal(router(x).active, router(x).active)
    router.train()
    assert not torch.equal(router(x).active, router(x).active)


@pytest.mark.parametrize("L,capacity", [(8, 0.25), (2048, 0.25), (7, 0.5), (5, 1.0), (3, 0.01)])
def test_topk_takes_exactly_its_capacity(L, capacity):
    router = TopKRouter(5, num_modules=2, capacity=capacity)
    r = router(torch.randn(3, L, 5))
    k = capacity_slots(capacity, L)
    assert k == max(1, math.ceil(capacity * L - 1e-9))
    assert r.slots == k
    assert (r.active.sum(-1) == k).all()
    assert torch.allclose(r.ratio(), torch.full((2,), k / L))


@pytest.mark.parametrize("capacity", [0, -0.1, 1.5, True, "0.3"])
def test_topk_rejects_capacity_outside_unit_interval(capacity):
    with pytest.raises(ValueError, match=r"capacity must be a fraction in \(0, 1\]"):
        TopKRouter(4, capacity=capacity)


def test_router_math_is_float32_under_autocast():
    router = ThresholdRouter(8)
    x = torch.randn(2, 5, 8, dtype=torch.bfloat16) * 1e4
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r = router(x)
    assert r.logits.dtype == torch.float32 and r.gate.dtype == torch.float32
    assert torch.isfinite(r.probs).all()


def test_density_loss_pulls_ratio_toward_target():
    torch.manual_seed(0)
    router = ThresholdRouter(8)
    opt = torch.optim.SGD(router.parameters(), lr=0.5)
    x = torch.randn(4, 64, 8)
    losses = []
    for _ in range(60):
        loss = router(x).density_loss(0.1)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0] * 0.2
    assert router(x).ratio().item() < 0.3


@pytest.mark.parametrize(
    "x,mask,match",
    [
        (torch.randn(2, 5), None, r"route_on must have shape \[B, L, 8\]"),
        (torch.randn(2, 5, 7), None, r"route_on must have shape \[B, L, 8\]"),
        (torch.randn(2, 5, 8), torch.ones(2, 5), r"mask must be a bool tensor"),
        (torch.randn(2, 5, 8), torch.ones(2, 4, dtype=torch.bool), r"mask must have shape \[B, L\] = \(2, 5\)"),
    ],
)
def test_router_rejects_bad_input(x, mask, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ThresholdRouter(8)(x, mask)
