"""Streaming through sma: step == forward for any module (both routers, with and without a slot
budget), parallel prefill == stepping through the prompt, the causal top-k predictor, and
the input errors of decoding."""

import pytest
import torch
from streaming_helpers import assert_same_state, stream
from torch import nn

from smakit import MLP, LocalGatedAttention, TopKRouter, aux_losses, sma
from smakit.models import SeqBoat, SeqBoatLayer, SMATransformer, generate
from smakit.modules import MultiHeadEMA
from smakit.streaming import ema_final_state

D = 16


def routed_layer(router, slots, module=None, **kw):
    torch.manual_seed(0)
    module = module or LocalGatedAttention(D, window=3, qk_dim=8)
    opts = {"causal_predictor": True, "capacity": 0.5} if router == "topk" else {}
    layer = sma(module, D, router=router, compaction_slots=slots, **opts, **kw)
    with torch.no_grad():  # route about half the tokens, so the budget and the window both bite
        r = layer.router
        if router == "topk":
            r.predictor[2].bias.fill_(0.0)
        else:
            r.proj.bias.copy_(torch.tensor([0.0, 0.0]))
    return layer.eval()


@pytest.mark.parametrize("slots", [None, 3], ids=["no-budget", "budget3"])
@pytest.mark.parametrize("router", ["threshold", "topk"])
def test_sma_step_equals_forward_sequence_module(router, slots):
    layer = routed_layer(router, slots)
    x = torch.randn(3, 23, D)
    with torch.no_grad():
        y = layer(x)
        ran = layer.stats.active[0].sum(-1)
        steps, _ = stream(layer, x)
    assert (ran > 0).all() and (ran < 23).all()
    if slots is not None:
        assert (ran == slots).all()  # the budget really dropped routed tokens
    torch.testing.assert_close(steps, y, rtol=1e-5, atol=1e-6)


def test_sma_step_honours_eval_slots_and_refuses_a_fraction():
    layer = routed_layer("threshold", None, eval_slots=2)
    x = torch.randn(3, 23, D)
    with torch.no_grad():
        y = layer(x)
        assert (layer.stats.active[0].sum(-1) == 2).all()  # the inference budget bites
        torch.testing.assert_close(stream(layer, x)[0], y, rtol=1e-5, atol=1e-6)
    layer.eval_slots, layer.eval_capacity = None, 0.25  # a fraction of a length step() cannot know
    with pytest.raises(ValueError, match="slot count"):
        stream(layer, x)


@pytest.mark.parametrize("layout", ["flat", "padded"])
def test_sma_step_pointwise_module_needs_nothing(layout):
    layer = routed_layer("threshold", 4, module=MLP(D, 32), layout=layout)
    x = torch.randn(2, 15, D)
    with torch.no_grad():
        torch.testing.assert_close(stream(layer, x)[0], layer(x), rtol=1e-5, atol=1e-6)


def test_sma_several_modules_stream():
    torch.manual_seed(0)
    layer = sma({"attn": LocalGatedAttention(D, window=4, qk_dim=8), "mlp": MLP(D, 32)}, D,
                compaction_slots=5).eval()
    x = torch.randn(2, 17, D)
    with torch.no_grad():
        y = layer(x)
        torch.testing.assert_close(stream(layer, x)[0], y, rtol=1e-5, atol=1e-6)
        _, state = layer.prefill(x)
        assert_same_state(state, stream(layer, x)[1])


@pytest.mark.parametrize("slots", [None, 3])
@pytest.mark.parametrize("router", ["threshold", "topk"])
def test_sma_prefill_state_equals_stepping(router, slots):
    layer = routed_layer(router, slots)
    x = torch.randn(3, 19, D)
    with torch.no_grad():
        y, state = layer.prefill(x)
        steps, stepped = stream(layer, x)
    torch.testing.assert_close(y, steps, rtol=1e-5, atol=1e-6)
    assert_same_state(state, stepped)


class NoPrefill(LocalGatedAttention):
    prefill_cache = None  # the generic fallback steps through the routed tokens


def test_sma_prefill_without_prefill_cache_steps_through_routed_tokens():
    layer = routed_layer("threshold", None, module=NoPrefill(D, window=3, qk_dim=8))
    x = torch.randn(2, 12, D)
    with torch.no_grad():
        assert_same_state(layer.prefill(x)[1], stream(layer, x)[1])


def test_ema_final_state_equals_recurrence():
    torch.manual_seed(0)
    ema = MultiHeadEMA(D, ndim=4)
    x = torch.randn(2, 37, D)
    state = ema.init_state(2)
    for t in range(37):
        _, state = ema.step(x[:, t], state)
    torch.testing.assert_close(ema_final_state(ema, x), state, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode, chunked, bias", [("sparse", False, True), ("always", False, True),
                                                ("always", True, True), ("none", False, True),
                                                ("sparse", False, "fourier")])
def test_seqboat_layer_prefill_state_equals_stepping(mode, chunked, bias):
    torch.manual_seed(0)
    layer = SeqBoatLayer(D, causal=True, window=4, qk_dim=8, ema_ndim=4, mode=mode, chunked=chunked,
                         relative_bias=bias).eval()
    if bias == "fourier":  # amplitudes start at zero
        torch.nn.init.normal_(layer.gau.bias.weight)
    x = torch.randn(2, 21, D)
    with torch.no_grad():
        y, state = layer.prefill(x)
        steps, stepped = stream(layer, x)
        torch.testing.assert_close(y, layer(x))
    torch.testing.assert_close(steps, y, rtol=1e-5, atol=1e-5)
    assert_same_state(state, stepped)


def test_seqboat_layer_step_honours_compaction_capacity():
    """The budget is counted token by token as in the forward (was 0.0999 off before)."""
    torch.manual_seed(0)
    layer = SeqBoatLayer(D, causal=True, window=4, qk_dim=8, ema_ndim=4, compaction_slots=3).eval()
    with torch.no_grad():
        layer.router.proj.bias.copy_(torch.tensor([-1.0, 1.0]))  # route most tokens: the budget bites
        x = torch.randn(3, 30, D)
        y = layer(x)
        assert (layer.attn.stats.active.sum(-1) == 3).all()
        torch.testing.assert_close(stream(layer, x)[0], y, rtol=1e-5, atol=1e-5)


def lm(**kw):
    torch.manual_seed(0)
    opts = dict(vocab_size=30, dim=D, depth=2, lm=True, window=4, qk_dim=8, ema_ndim=4) | kw
    return SeqBoat(**opts).eval()


def test_model_prefill_equals_forward_and_stepping():
    model = lm(ffn_hidden=32)
    ids = torch.randint(0, 30, (2, 14))
    with torch.no_grad():
        logits, state = model.prefill(ids)
        torch.testing.assert_close(logits, model(ids))
        stepped = model.init_state(2)
        for t in range(14):
            _, stepped = model.step(ids[:, t], stepped)
    assert_same_state(state, stepped)


def test_generate_greedy_equals_rerunning_the_forward():
    model = lm()
    ids = torch.randint(0, 30, (2, 9))
    out = generate(model, ids, 6, temperature=0)
    ref = ids
    with torch.no_grad():
        for _ in range(6):
            ref = torch.cat((ref, model(ref)[:, -1].argmax(-1, keepdim=True)), 1)
    assert torch.equal(out, ref)


# causal top-k

def test_topk_predictor_learns_the_decision_without_touching_the_model():
    torch.manual_seed(0)
    router = TopKRouter(D, capacity=0.25, causal_predictor=True)
    opt = torch.optim.Adam(router.predictor.parameters(), lr=1e-2)
    x = torch.randn(8, 32, D)
    router(x)
    start = router.agreement.item()
    for _ in range(150):
        router(x)
        opt.zero_grad()
        router.aux_loss.backward()
        opt.step()
    router.eval()
    routing = router(x)
    assert router.agreement.item() > max(start, 0.9)
    assert routing.slots is None  # eval: the predictor routes, each token alone
    # stop-gradient: the predictor's loss reaches neither the input nor the scoring projection
    router.train()
    xr = x.clone().requires_grad_(True)
    router(xr)
    router.aux_loss.backward()
    assert xr.grad is None and router.proj.weight.grad is None


def test_topk_predictor_loss_goes_through_aux_losses():
    layer = sma(MLP(D, 32), D, router="topk", causal_predictor=True, layout="flat")
    layer(torch.randn(2, 8, D))
    assert torch.equal(aux_losses(layer), layer.router.aux_loss)


def test_topk_without_predictor_refuses_to_stream():
    layer = sma(MLP(D, 32), D, router="topk", layout="flat").eval()
    with pytest.raises(RuntimeError, match="not causal"):
        layer.step(torch.randn(2, D), layer.init_state(2))
    trained = sma(MLP(D, 32), D, router="topk", causal_predictor=True, layout="flat").train()
    with pytest.raises(RuntimeError, match="eval mode"):
        trained.step(torch.randn(2, D), trained.init_state(2))


def test_topk_decoder_generates_and_never_reads_the_future():
    torch.manual_seed(0)
    model = SMATransformer(vocab_size=30, dim=D, depth=2, lm=True, heads=2, router="topk", capacity=0.5,
                           causal_predictor=True).eval()
    ids = torch.randint(0, 30, (2, 12))
    with torch.no_grad():
        a = model(ids)
        changed = ids.clone()
        changed[:, 7:] = torch.randint(0, 30, (2, 5))
        b = model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=1e-6)
    assert all(0 <= a <= 1 for a in model.routing_stats()["agreement"])
    assert generate(model, ids, 4, temperature=0).shape == (2, 16)


def test_lm_without_causal_routing_is_refused_or_warned():
    with pytest.raises(ValueError, match="causal"):
        SeqBoat(vocab_size=30, dim=D, depth=1, lm=True, causal=False, window=4, qk_dim=8)
    with pytest.warns(UserWarning, match="causal_predictor"):
        SMATransformer(vocab_size=30, dim=D, depth=1, lm=True, router="topk")


# input errors of decoding (issue 12)

def test_step_rejects_a_state_of_another_batch_size():
    model = lm()
    state = model.init_state(3)
    with pytest.raises(ValueError, match="batch size 3"):
        model.step(torch.zeros(2, dtype=torch.long), state)
    layer = routed_layer("threshold", None)
    with pytest.raises(ValueError, match="batch size 3"):
        layer.step(torch.randn(2, D), layer.init_state(3))


def test_step_rejects_a_state_of_the_wrong_length():
    model = lm()
    with pytest.raises(ValueError, match="list of 2 layer states"):
        model.step(torch.zeros(2, dtype=torch.long), [])


def test_module_returning_integers_is_an_error():
    class Ints(nn.Module):
        def forward(self, x):
            return x.long()

    with pytest.raises(TypeError, match="must return a floating tensor"):
        sma(Ints(), 4, layout="flat")(torch.randn(1, 5, 4))


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=-1.0), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=0), "top_k"), (dict(max_new_tokens=-2), "max_new_tokens"),
])
def test_generate_argument_errors(kwargs, match):
    opts = dict(max_new_tokens=3) | kwargs
    with pytest.raises(ValueError, match=match):
        generate(lm(), torch.zeros(1, 2, dtype=torch.long), **opts)


def test_generate_empty_prompt_is_an_error():
    with pytest.raises(ValueError, match="at least one token"):
        generate(lm(), torch.zeros(1, 0, dtype=torch.long), 3)


@pytest.mark.parametrize("variant", ["seqboat", "mega_chunk", "ema_only"])
def test_seqboat_empty_batch_or_sequence(variant):
    model = lm(variant=variant)
    assert model(torch.zeros(0, 5, dtype=torch.long)).shape == (0, 5, 30)
    assert model(torch.zeros(2, 0, dtype=torch.long)).shape == (2, 0, 30)
    clf = SeqBoat(vocab_size=30, dim=D, depth=1, n_classes=3, window=4, qk_dim=8, variant=variant)
    assert clf(torch.zeros(2, 0, dtype=torch.long)).shape == (2, 3)
    assert SeqBoatLayer(D, causal=True, window=4, qk_dim=8)(torch.randn(2, 0, D)).shape == (2, 0, D)


def test_seqboat_on_meta_device_is_a_clear_error():
    with torch.device("meta"):
        model = SeqBoat(vocab_size=30, dim=D, depth=1, lm=True, window=4, qk_dim=8)
    with pytest.raises(RuntimeError, match="meta device"):
        model(torch.zeros(1, 4, dtype=torch.long, device="meta"))


@pytest.mark.parametrize("args, match", [
    (["--prompt", ""], "--prompt"), (["--temperature", "-1"], "--temperature"), (["--top-k", "0"], "--top-k"),
])
def test_generate_command_refuses_bad_options_before_reading_the_checkpoint(tmp_path, capsys, args, match):
    from smakit.cli import main

    assert main(["generate", str(tmp_path / "missing"), *args]) == 2
    assert match in capsys.readouterr().err
