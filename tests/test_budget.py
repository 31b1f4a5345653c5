"""The compute budget: the controller holds the realised ratio; z-loss; inference capacity."""

from __future__ import annotations

import copy
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from test_train_distributed import free_port

from smakit import ThresholdRouter, aux_losses, sma
from smakit.models import SeqBoat, SeqBoatLayer
from smakit.modules import MLP

D = 8


def toy_batch(g: torch.Generator, B: int = 8, L: int = 32):
    """Regression where the routed MLP is useful on every token, so a free router saturates."""
    x = torch.randn(B, L, D, generator=g)
    return x, torch.tanh(x.flip(-1)) * 2


def train_toy(layer, steps: int, seed: int = 0, start: int = 0, opt=None):
    g = torch.Generator().manual_seed(seed)
    opt = opt or torch.optim.Adam(layer.parameters(), lr=3e-3)
    ratios = []
    for i in range(start + steps):
        x, y = toy_batch(g)
        if i < start:
            continue
        loss = (x + layer(x) - y).square().mean()
        aux = aux_losses(layer)
        (loss if aux is None else loss + aux).backward()
        opt.step()
        opt.zero_grad()
        ratios.append(layer.stats.ratio.clone())
    return torch.stack(ratios), opt


# the controller

@pytest.mark.parametrize("target", [0.1, 0.25, 0.5])
def test_controller_holds_the_realised_ratio_on_a_toy_task(target):
    torch.manual_seed(0)
    layer = sma(MLP(D, 16), dim=D, density_target=target)
    ratios, _ = train_toy(layer, 150)
    assert (ratios[-40:].mean() - target).abs() < 0.03, ratios[-40:].mean()
    layer.eval()
    with torch.no_grad():
        layer(torch.randn(16, 64, D))
    assert (layer.stats.ratio - target).abs().item() < 0.05  # held on fresh data, in eval


def test_free_router_saturates_on_the_toy_task():
    """The same task without a target: the router routes (almost) everything."""
    torch.manual_seed(0)
    layer = sma(MLP(D, 16), dim=D)
    ratios, _ = train_toy(layer, 150)
    assert ratios[-40:].mean() > 0.6


def test_per_module_targets_for_a_multi_module_router():
    torch.manual_seed(0)
    layer = sma({"a": MLP(D, 16), "b": MLP(D, 16)}, dim=D, density_target=[0.1, 0.3])
    ratios, _ = train_toy(layer, 150)
    torch.testing.assert_close(ratios[-40:].mean(0), torch.tensor([0.1, 0.3]), atol=0.03, rtol=0)
    torch.testing.assert_close(layer.stats.target, torch.tensor([0.1, 0.3]))
    assert layer.stats.bias.shape == (2,)


def test_per_layer_targets_in_seqboat():
    model = SeqBoat(vocab_size=20, dim=16, depth=2, lm=True, window=4, qk_dim=8, density_target=[0.2, 0.5])
    model(torch.randint(0, 20, (2, 9)))
    assert [layer.attn.stats.target.item() for layer in model.layers] == pytest.approx([0.2, 0.5])
    with pytest.raises(ValueError, match="density_target"):
        SeqBoat(vocab_size=20, dim=16, depth=2, lm=True, density_target=[0.2, 0.5, 0.1])


@pytest.mark.parametrize("target", [0.1, 0.25, 0.6])
def test_one_full_step_hits_the_target_on_that_batch(target):
    """rate=1: the bias after one update gives the target on the same batch (padding ignored)."""
    torch.manual_seed(0)
    router = ThresholdRouter(D, density_target=target, density_rate=1.0)
    x, mask = torch.randn(4, 50, D) * 3, torch.rand(4, 50) < 0.5
    router(x, mask)
    routing = router.eval()(x, mask)
    realised = (routing.active[0] & mask).sum().item()
    assert abs(realised - target * mask.sum().item()) <= 2, realised


def test_bias_is_honoured_in_eval_and_not_updated():
    layer = sma(MLP(D, 16), dim=D, density_target=0.5).eval()
    x = torch.randn(4, 16, D)
    for bias, expected in ((-50.0, 0.0), (50.0, 1.0)):
        layer.router.budget.bias.fill_(bias)
        layer(x)
        assert layer.stats.ratio.item() == expected
        assert layer.router.budget.bias.item() == bias  # no update outside training
        assert layer.stats.bias.item() == bias


def test_decode_honours_the_bias():
    torch.manual_seed(0)
    layer = SeqBoatLayer(12, causal=True, window=3, qk_dim=4, ema_ndim=2, density_target=0.3).eval()
    layer.router.budget.bias.fill_(-0.05)
    x = torch.randn(2, 15, 12)
    y = layer(x)
    ratio = layer.attn.stats.ratio.item()
    assert 0 < ratio < 1
    state, steps = layer.init_state(2), []
    for t in range(x.shape[1]):
        yt, state = layer.step(x[:, t], state)
        steps.append(yt)
    torch.testing.assert_close(torch.stack(steps, 1), y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_controller_state_stays_float32_in_a_half_model(dtype):
    layer = sma(MLP(D, 16), dim=D, density_target=0.3).to(dtype)
    assert layer.router.budget.bias.dtype == torch.float32 and layer.router.budget.target.dtype == torch.float32
    layer(torch.randn(4, 32, D, dtype=dtype))
    assert layer.router.budget.bias.dtype == torch.float32 and layer.router.budget.bias.item() != 0


def test_free_mode_is_unchanged():
    torch.manual_seed(0)
    layer = sma(MLP(D, 16), dim=D)
    x = torch.randn(3, 11, D)
    y, routing = layer(x, return_routing=True)
    router = layer.router
    probs = (router.proj(x) / router.log_temperature.exp()).softmax(-1)  # plain reference
    assert torch.equal(routing.active[0], probs.argmax(-1) == 1)
    torch.testing.assert_close(routing.gate[0], torch.where(routing.active[0], probs[..., 1], 0.0))
    assert router.budget is None and not any("budget" in k for k in layer.state_dict())
    assert layer.stats.target is None and layer.stats.bias is None and layer.aux_loss is None


def test_checkpoint_resume_is_exact(tmp_path):
    torch.manual_seed(0)
    layer = sma(MLP(D, 16), dim=D, density_target=0.25)
    _, opt = train_toy(layer, 10)
    torch.save({"model": layer.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    train_toy(layer, 10, start=10, opt=opt)

    torch.manual_seed(1)  # different init: everything must come from the checkpoint
    resumed = sma(MLP(D, 16), dim=D, density_target=0.25)
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed.load_state_dict(state["model"])
    opt2 = torch.optim.Adam(resumed.parameters(), lr=1e-2)
    opt2.load_state_dict(state["opt"])
    assert resumed.router.budget.bias.item() != 0
    train_toy(resumed, 10, start=10, opt=opt2)
    for (name, a), b in zip(layer.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


# the loss alternatives and the z-loss

def test_straight_through_density_loss_reads_the_realised_ratio():
    torch.manual_seed(0)
    router = ThresholdRouter(D)
    routing = router(torch.randn(2, 16, D))
    loss = routing.density_loss(0.25, straight_through=True)
    torch.testing.assert_close(loss, ((routing.ratio() - 0.25) ** 2).sum())
    loss.backward()
    assert router.proj.weight.grad.abs().sum() > 0


def test_z_loss_value_and_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 3, requires_grad=True)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    from smakit.routing import Routing

    routing = Routing(torch.zeros(2, 2, 5, dtype=torch.bool), torch.zeros(2, 2, 5), logits, logits.softmax(-1),
                      None, mask)
    routing.z_loss().backward()
    lse = logits.detach().logsumexp(-1)
    n = mask.sum()
    torch.testing.assert_close(routing.z_loss(), (lse.square() * mask).sum() / n)
    expected = 2 * lse.unsqueeze(-1) * logits.detach().softmax(-1) * mask.unsqueeze(-1) / n
    torch.testing.assert_close(logits.grad, expected)


def test_z_loss_goes_through_aux_losses():
    torch.manual_seed(0)
    layer = sma(MLP(D, 16), dim=D, z_loss=1e-2)
    x = torch.randn(2, 9, D)
    _, routing = layer(x, return_routing=True)
    torch.testing.assert_close(aux_losses(layer), 1e-2 * routing.z_loss())
    aux_losses(layer).backward()
    assert layer.router.proj.weight.grad.abs().sum() > 0


# a fixed slot budget at inference

@pytest.mark.parametrize("budget,slots", [({"eval_slots": 3}, 3), ({"eval_capacity": 0.25}, 4)])
def test_eval_budget_caps_slots_outside_training(budget, slots):
    layer = sma(MLP(D, 16), dim=D, **budget, density_target=0.5)
    layer.router.budget.bias.fill_(50.0)  # everything routed
    x = torch.randn(2, 16, D)
    layer(x)
    assert layer.stats.counts.tolist() == [[16, 16]]  # training: not capped
    layer.eval()
    layer.router.budget.bias.fill_(50.0)
    layer(x)
    assert layer.stats.counts.tolist() == [[slots, slots]]


def test_bad_budget_options_raise():
    with pytest.raises(ValueError, match="density_target"):
        sma(MLP(D, 16), dim=D, density_target=1.5)
    with pytest.raises(ValueError, match="density_target"):
        sma({"a": MLP(D, 16), "b": MLP(D, 16)}, dim=D, density_target=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="density_mode"):
        sma(MLP(D, 16), dim=D, density_target=0.2, density_mode="pid")
    with pytest.raises(ValueError, match="density_mode='controller' needs router='threshold'"):
        sma(MLP(D, 16), dim=D, router="topk", density_target=0.2)
    with pytest.raises(ValueError, match="density_rate"):
        sma(MLP(D, 16), dim=D, density_target=0.2, density_rate=0)
    with pytest.raises(ValueError, match="z_loss"):
        sma(MLP(D, 16), dim=D, z_loss=-1.0)
    with pytest.raises(ValueError, match="eval_capacity"):
        sma(MLP(D, 16), dim=D, eval_capacity=0)


# data parallel: every rank applies the same update

WORLD, B_RANK, L_DDP = 2, 3, 10
TIMEOUT_S = 120


def ddp_batch():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(WORLD * B_RANK, L_DDP, D, generator=g)
    mask = torch.ones(WORLD * B_RANK, L_DDP, dtype=torch.bool)
    mask[:B_RANK, L_DDP // 2:] = False  # ranks see different numbers of real tokens
    return x, mask


def ddp_router():
    torch.manual_seed(0)
    router = ThresholdRouter(D, density_target=0.2)
    with torch.no_grad():
        router.proj.bias[1] += 0.5
    return router


def _worker(rank: int, port: int, out_dir: str):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    tdist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=TIMEOUT_S // 2))
    try:
        router = ddp_router()
        x, mask = ddp_batch()
        rows = slice(rank * B_RANK, (rank + 1) * B_RANK)
        for _ in range(3):
            router(x[rows], mask[rows])
        torch.save(router.budget.bias, Path(out_dir) / f"rank{rank}.pt")
    finally:
        tdist.destroy_process_group()


@pytest.mark.skipif(not (tdist.is_available() and tdist.is_gloo_available()) or sys.platform == "win32",
                    reason="needs torch.distributed with gloo")
def test_ddp_ranks_apply_the_global_update(tmp_path):
    """Rank 0 has half its tokens padded: without the all_reduce the ranks' biases differ."""
    procs = mp.start_processes(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=False,
                               start_method="spawn")
    finished, deadline = False, time.monotonic() + TIMEOUT_S
    while not finished and time.monotonic() < deadline:
        finished = procs.join(timeout=1)
    if not finished:
        for p in procs.processes:
            p.kill()
        pytest.fail(f"the 2-process run did not finish in {TIMEOUT_S} s (hang)")
    biases = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    router = ddp_router()  # one process on the whole batch
    x, mask = ddp_batch()
    for _ in range(3):
        router(x, mask)
    assert router.budget.bias.item() != 0
    for bias in biases:
        torch.testing.assert_close(bias, router.budget.bias, rtol=1e-6, atol=1e-7)


def test_controller_compiles_fullgraph_and_matches_eager():
    """With a static capacity the update needs no host sync: no graph break, same bias."""
    torch.manual_seed(0)
    eager = sma(MLP(D, 16), dim=D, density_target=0.3, compaction_slots=6)
    layer = sma(MLP(D, 16), dim=D, density_target=0.3, compaction_slots=6)
    layer.load_state_dict(eager.state_dict())
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    for _ in range(3):
        x = torch.randn(2, 12, D)
        torch.testing.assert_close(compiled(x), eager(x))
    assert eager.router.budget.bias.item() != 0
    torch.testing.assert_close(layer.router.budget.bias, eager.router.budget.bias)


def test_accumulated_micro_batches_step_the_budget_like_one_batch():
    from smakit.routing import accumulate_budgets

    torch.manual_seed(0)
    x = torch.randn(4, 12, D)
    mask = torch.rand(4, 12) > 0.2
    one = sma(MLP(D, 16), dim=D, density_target=0.3).train()
    micro = copy.deepcopy(one)
    one(x, mask)
    with accumulate_budgets(micro):
        micro(x[:2], mask[:2])
        assert (micro.router.budget.bias == 0).all()  # held still inside the block
        micro(x[2:], mask[2:])
    torch.testing.assert_close(micro.router.budget.bias, one.router.budget.bias)
    with pytest.raises(RuntimeError, match="stop"), accumulate_budgets(micro):
        before = micro.router.budget.bias.clone()
        micro(x, mask)
        raise RuntimeError("stop")
    assert torch.equal(micro.router.budget.bias, before)  # no step from a failed block
    micro(x, mask)  # outside a block it steps at once again
    assert not torch.equal(micro.router.budget.bias, before)
