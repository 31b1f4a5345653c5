"""SeqBoatLayer(short_conv=k): a depthwise convolution of the normed input before the EMA.

Causal = no future leak, step == forward, prefill == forward + the stepped state and padding does
not leak (each with and without the update gate), ``None`` is the old layer, bad values are
one-line errors, and the recipes use it (and the update gate)."""

import warnings

import pytest
import torch
from streaming_helpers import assert_same_state, stream

from smakit.data import DatasetInfo
from smakit.models import SeqBoat, SeqBoatLayer
from smakit.modules import MLP, CausalConv

D = 16
MODES = ["sparse", "always", "none"]


def layer(mode="sparse", short_conv=4, causal=True, **kw):
    torch.manual_seed(0)
    return SeqBoatLayer(D, causal=causal, window=4, qk_dim=8, ema_ndim=4, mode=mode, short_conv=short_conv,
                        **kw).eval()


@pytest.mark.parametrize("causal, k", [(True, 4), (True, 1), (False, 3)])
def test_forward_shape_and_the_conv_module(causal, k):
    lay = layer(short_conv=k, causal=causal)
    assert isinstance(lay.conv, CausalConv) and lay.conv.kernel_size == k and lay.conv.causal == causal
    assert lay(torch.randn(2, 11, D)).shape == (2, 11, D)
    assert f"short_conv={k}" in repr(lay)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("update_gate", [False, True])
def test_causal_layer_does_not_read_the_future(mode, update_gate):
    lay = layer(mode, update_gate=update_gate)
    x = torch.randn(2, 13, D)
    t = 6
    x2 = x.clone()
    x2[:, t] += 3.0 * torch.randn(2, D)  # not a constant: the norm would remove that
    with torch.no_grad():
        y, y2 = lay(x), lay(x2)
    torch.testing.assert_close(y2[:, :t], y[:, :t], rtol=1e-5, atol=1e-5)  # the EMA's FFT rounds
    assert ((y2 - y)[:, t:t + 4].abs().amax(-1) > 1e-3).all()


def test_the_conv_reads_the_last_few_tokens():
    """Only the conv reaches back exactly: zero the EMA's memory and token t still sees t - 3."""
    x = torch.randn(1, 10, D)
    x2 = x.clone()
    x2[:, 2] += 3.0 * torch.randn(D)
    for k, reach in [(4, 6), (None, 3)]:
        lay = layer("none", k)
        with torch.no_grad():
            lay.ema.alpha.fill_(8.0)  # q = 1 - sigmoid(alpha) * sigmoid(delta) = 7e-4: no memory
            lay.ema.delta.fill_(8.0)
            d = (lay(x2) - lay(x)).abs().amax(-1)[0]  # [L]
        assert (d[2:reach] > 1e-2).all() and (d[reach:] < 1e-2).all(), (k, d)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("k, update_gate", [(1, False), (4, False), (None, True), (4, True)])
def test_step_equals_forward(mode, k, update_gate):
    lay = layer(mode, k, update_gate=update_gate)
    x = torch.randn(2, 17, D)
    with torch.no_grad():
        torch.testing.assert_close(stream(lay, x)[0], lay(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("L", [2, 9])  # shorter and longer than the conv's state
@pytest.mark.parametrize("update_gate", [False, True])
def test_prefill_equals_forward_and_stepping_continues(mode, L, update_gate):
    lay = layer(mode, 4, update_gate=update_gate)
    x = torch.randn(2, L + 6, D)
    with torch.no_grad():
        y, state = lay.prefill(x[:, :L])
        full = lay(x)
        torch.testing.assert_close(y, full[:, :L], rtol=1e-5, atol=1e-5)
        stepped = stream(lay, x[:, :L])[1]
        assert_same_state(state, stepped)
        rest = stream(lay, x[:, L:], state)[0]
    torch.testing.assert_close(rest, full[:, L:], rtol=1e-5, atol=1e-5)


def test_conv_final_state_equals_stepping():
    torch.manual_seed(0)
    conv = CausalConv(D, kernel_size=5)
    for L in (0, 2, 4, 9):
        x = torch.randn(3, L, D)
        state = conv.init_state(3)
        for t in range(L):
            _, state = conv.step(x[:, t], state)
        torch.testing.assert_close(conv.final_state(x), state, rtol=0, atol=0)


def test_step_without_the_conv_state_is_an_error():
    lay = layer()
    state = layer(short_conv=None).init_state(2)
    with pytest.raises(TypeError, match="init_state"):
        lay.step(torch.randn(2, D), state)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("update_gate", [False, True])
def test_padding_does_not_leak_in_a_bidirectional_layer(mode, update_gate):
    lay = layer(mode, 3, causal=False, update_gate=update_gate)
    x = torch.randn(2, 12, D)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[0, 7:] = False
    x2 = x.clone()
    x2[0, 7:] = 100.0 * torch.randn(5, D)
    with torch.no_grad():
        y, y2 = lay(x, mask), lay(x2, mask)
        alone = lay(x[:1, :7])
    torch.testing.assert_close(y2[mask], y[mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y[0, :7], alone[0], rtol=1e-5, atol=1e-5)


def test_none_is_the_layer_of_before():
    old, new = layer(short_conv=None), layer(short_conv=4)
    assert old.conv is None and "short_conv" not in repr(old)
    assert not any("conv" in k for k in old.state_dict())
    assert set(new.state_dict()) - set(old.state_dict()) == {"conv.weight", "conv.bias"}
    for k, v in old.state_dict().items():  # the conv is made last: the rest starts the same
        assert torch.equal(new.state_dict()[k], v), k
    new.load_state_dict(old.state_dict() | {"conv.weight": new.conv.weight, "conv.bias": new.conv.bias})
    with pytest.raises(RuntimeError, match="conv.weight"):  # an old checkpoint is not silently short
        new.load_state_dict(old.state_dict())


@pytest.mark.parametrize("value, causal", [(0, True), (-2, True), (2.5, True), ("4", True), (True, True),
                                           (4, False), (2, False)])
def test_bad_short_conv_is_a_one_line_error(value, causal):
    with pytest.raises(ValueError, match="short_conv") as err:
        SeqBoatLayer(D, causal=causal, window=4, qk_dim=8, short_conv=value)
    assert "\n" not in str(err.value)


def test_gradients_reach_the_conv():
    lay = layer(short_conv=4).train()
    lay(torch.randn(2, 9, D)).square().mean().backward()
    assert lay.conv.weight.grad is not None and lay.conv.weight.grad.abs().sum() > 0
    assert lay.conv.bias.grad.abs().sum() > 0


def test_model_passes_it_to_every_layer_and_decodes():
    torch.manual_seed(0)
    model = SeqBoat(vocab_size=30, dim=D, depth=2, lm=True, window=4, qk_dim=8, ema_ndim=4, short_conv=3).eval()
    assert [m.conv.kernel_size for m in model.layers] == [3, 3]
    ids = torch.randint(0, 30, (2, 10))
    with torch.no_grad():
        logits, state = model.prefill(ids[:, :6])
        steps = [model.step(ids[:, t], state)[0] for t in [6]]  # one step past the prompt
        full = model(ids)
    torch.testing.assert_close(logits, full[:, :6], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(steps[0], full[:, 6], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("recipe", ["seqboat-charlm", "seqboat-full-charlm", "mega-chunk-charlm", "ema-only-charlm"])
def test_charlm_recipes_use_a_short_conv_of_4_and_the_update_gate(recipe):
    from smakit.train import load_recipe
    from smakit.train.build import build_model

    info = DatasetInfo("x", "lm", 30, 64, vocab_size=30)
    layers = lambda over: [m for m in build_model(info, load_recipe(recipe, "cpu", over).model).layers  # noqa: E731
                           if isinstance(m, SeqBoatLayer)]
    assert [(m.conv.kernel_size, m.update is not None) for m in layers({})] == [(4, True)] * 2
    assert all(m.conv is None and m.update is not None for m in layers({"model.short_conv": "none"}))
    assert all(m.conv.kernel_size == 4 and m.update is None for m in layers({"model.update_gate": False}))


@pytest.mark.parametrize("recipe", ["seqboat-charlm", "seqboat-full-charlm", "mega-chunk-charlm", "ema-only-charlm",
                                    "transformer-charlm"])
def test_charlm_recipes_use_swiglu_feed_forward_blocks(recipe):
    from smakit.train import load_recipe
    from smakit.train.build import build_model

    info = DatasetInfo("x", "lm", 30, 64, vocab_size=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformer-charlm builds the deprecated variant
        model = build_model(info, load_recipe(recipe, "cpu", {}).model)
        gelu = build_model(info, load_recipe(recipe, "cpu", {"model.ffn_activation": "gelu"}).model)
    assert [(m.activation, m.hidden) for m in model.modules() if isinstance(m, MLP)] == [("swiglu", 256)] * 2
    assert [m.activation for m in gelu.modules() if isinstance(m, MLP)] == ["gelu"] * 2
