"""The sma() wrapper: the contract users rely on."""

import pytest
import torch
from torch import nn

from smakit import SparseModularActivation, aux_losses, sma


def force(router, active: bool):
    """Make a threshold router choose the (first) module everywhere, or skip everywhere."""
    with torch.no_grad():
        router.proj.weight.zero_()
        router.proj.bias.zero_()
        router.proj.bias[1 if active else 0] = 50.0


class CausalCumMean(nn.Module):
    """A causal sequence module that reads the compacted mask and positions."""

    def __init__(self, dim):
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        self.seen = {}

    def forward(self, x, mask, positions):
        self.seen = {"mask": mask, "positions": positions}
        x = self.lin(x) * mask.unsqueeze(-1)
        n = mask.cumsum(1).clamp(min=1).unsqueeze(-1)
        return x.cumsum(1) / n + positions.unsqueeze(-1).float() * 0.01


def mlp(dim, hidden=None):
    return nn.Sequential(nn.Linear(dim, hidden or 2 * dim), nn.GELU(), nn.Linear(hidden or 2 * dim, dim))


@pytest.mark.parametrize("layout", ["padded", "flat"])
def test_all_active_equals_gate_times_dense(layout):
    torch.manual_seed(0)
    f = mlp(6)
    layer = sma(f, dim=6, layout=layout)
    force(layer.router, active=True)
    with torch.no_grad():
        layer.router.proj.weight.normal_(std=0.1)  # gates differ per token but stay active
    x = torch.randn(3, 11, 6)
    y, routing = layer(x, return_routing=True)
    assert routing.active.all()
    torch.testing.assert_close(y, routing.probs[..., 1:2] * f(x))


def test_sequence_module_sees_compacted_mask_and_original_positions():
    torch.manual_seed(0)
    f = CausalCumMean(4)
    layer = sma(f, dim=4)
    x = torch.randn(2, 9, 4)
    y, routing = layer(x, return_routing=True)
    for b in range(2):
        pos = routing.active[0, b].nonzero().flatten()
        n = len(pos)
        assert f.seen["positions"][b, :n].tolist() == pos.tolist()
        assert f.seen["mask"][b].sum() == n


def test_causal_module_behind_threshold_router_leaks_nothing_from_future():
    torch.manual_seed(0)
    layer = sma(CausalCumMean(5), dim=5)
    x = torch.randn(2, 16, 5, requires_grad=True)
    t = 9
    y = layer(x)
    y[:, t].sum().backward()
    assert (x.grad[:, t + 1:] == 0).all()
    # and changing the future changes nothing in the past
    x2 = x.detach().clone()
    x2[:, t + 1:] = torch.randn(2, 16 - t - 1, 5) * 5
    torch.testing.assert_close(layer(x2)[:, : t + 1], y[:, : t + 1])


def test_padding_never_activates_and_outputs_zero():
    layer = sma(mlp(4), dim=4)
    force(layer.router, active=True)
    mask = torch.tensor([[True] * 6 + [False] * 3, [True] * 2 + [False] * 7])
    y = layer(torch.randn(2, 9, 4), mask=mask)
    assert (y[~mask] == 0).all()
    assert not layer.stats.active[:, ~mask].any()
    assert layer.stats.counts.tolist() == [[6, 2]]
    torch.testing.assert_close(layer.stats.ratio, torch.tensor([1.0]))


def test_route_on_drives_decisions_and_extras_are_compacted():
    class TwoInputs(nn.Module):
        def forward(self, x, mask, context):
            return x + context

    layer = sma(TwoInputs(), dim=3, route_dim=2)
    x, ctx, route = torch.randn(2, 7, 3), torch.randn(2, 7, 3), torch.randn(2, 7, 2)
    y, routing = layer(x, route_on=route, context=ctx, return_routing=True)
    direct = layer.router(route)
    assert torch.equal(routing.active, direct.active)
    want = (x + ctx) * routing.gate[0].unsqueeze(-1)
    torch.testing.assert_close(y, want)


def test_several_modules_behind_one_router():
    torch.manual_seed(0)
    experts = {"attn": CausalCumMean(4), "mlp": mlp(4), "conv_like": nn.Linear(4, 4)}
    layer = sma(experts, dim=4)
    x = torch.randn(3, 20, 4)
    y, routing = layer(x, return_routing=True)
    assert routing.active.shape == (3, 3, 20)
    assert (routing.active.sum(0) <= 1).all()  # each token goes to at most one module
    lin_only = routing.gate[2].unsqueeze(-1) * experts["conv_like"](x)
    mlp_only = routing.gate[1].unsqueeze(-1) * experts["mlp"](x)
    chosen = routing.active[1] | routing.active[2]
    torch.testing.assert_close(y[~routing.active[0] & chosen], (lin_only + mlp_only)[~routing.active[0] & chosen])
    assert set(layer.stats.as_dict()) == {"attn", "mlp", "conv_like"}


def test_no_active_token_still_gives_every_parameter_a_zero_gradient():
    f = mlp(4)
    layer = sma(f, dim=4)
    force(layer.router, active=False)
    x = torch.randn(2, 5, 4, requires_grad=True)
    y = layer(x)
    assert (y == 0).all()
    y.sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None, name
    assert all((p.grad == 0).all() for p in f.parameters())


def test_gradient_reaches_router_through_the_gate():
    layer = sma(mlp(4), dim=4)
    layer(torch.randn(2, 16, 4)).pow(2).sum().backward()
    assert layer.router.proj.weight.grad.abs().sum() > 0


def test_topk_sma_runs_on_exactly_its_capacity_and_is_identity_skip():
    torch.manual_seed(0)
    f = mlp(8)
    layer = sma(f, dim=8, router="topk", capacity=0.25)
    x = torch.randn(2, 16, 8)
    y, routing = layer(x, return_routing=True)
    assert routing.active.sum(-1).tolist() == [[4, 4]]
    assert (y[~routing.active[0]] == 0).all()
    torch.testing.assert_close(layer.stats.ratio, torch.tensor([0.25]))


def test_density_target_puts_aux_loss_on_the_module_not_a_global():
    model = nn.Sequential(sma(mlp(4), dim=4, density_target=0.2, density_mode="loss"), sma(mlp(4), dim=4))
    h = torch.randn(2, 9, 4)
    for layer in model:
        h = h + layer(h)
    loss = aux_losses(model)
    assert loss is not None and loss.requires_grad
    torch.testing.assert_close(loss, model[0].aux_loss)
    assert model[1].aux_loss is None


def test_module_without_protocol_arguments_gets_values_only():
    class Strict(nn.Module):
        def forward(self, x):
            return x * 2

    y = sma(Strict(), dim=3)(torch.randn(2, 4, 3))
    assert y.shape == (2, 4, 3)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"x": torch.randn(4, 8)}, r"x must have shape \[B, L, 8\], got \(4, 8\)"),
        ({"x": torch.randn(2, 4, 7)}, r"x must have shape \[B, L, 8\], got \(2, 4, 7\)"),
        ({"x": torch.randn(2, 4, 8), "mask": torch.ones(2, 5, dtype=torch.bool)}, r"mask must have shape \[B, L\] = \(2, 4\)"),
        ({"x": torch.randn(2, 4, 8), "mask": torch.ones(2, 4)}, r"mask must be a bool tensor"),
        ({"x": torch.randn(2, 4, 8), "route_on": torch.randn(2, 5, 8)}, r"route_on must have shape \[B, L, D_r\]"),
        ({"x": [1, 2]}, r"x must be a Tensor of shape \[B, L, 8\]"),
    ],
)
def test_bad_input_raises_clear_errors(kwargs, match):
    layer = sma(mlp(8), dim=8)
    with pytest.raises((ValueError, TypeError), match=match):
        layer(**kwargs)


def test_bad_options():
    with pytest.raises(ValueError, match="router must be"):
        sma(mlp(4), dim=4, router="random")
    with pytest.raises(ValueError, match=r"capacity must be a fraction in \(0, 1\]"):
        sma(mlp(4), dim=4, router="topk", capacity=2.0)
    with pytest.raises(TypeError, match="modules must be"):
        SparseModularActivation("mlp", dim=4)


def test_stats_count_only_tokens_that_got_a_slot_under_compaction_slots():
    layer = sma(mlp(4), dim=4, compaction_slots=2)
    force(layer.router, active=True)
    y = layer(torch.randn(2, 6, 4))
    assert layer.stats.counts.tolist() == [[2, 2]]
    torch.testing.assert_close(layer.stats.ratio, torch.tensor([2 / 6]))
    assert ((y != 0).any(-1) == layer.stats.active[0]).all()
