"""SeqBoatLayer(update_gate=True): ``x + u * (silu(mixed) - x)`` with ``u = sigmoid(h W_u)``.

The formula against a hand computation, ``False`` is the old layer, bad values are one-line
errors, gradients reach the gate, bf16 autocast. No future leak, step == forward, prefill ==
forward + the stepped state, padding and the recipes: ``test_short_conv.py``, with the conv."""

import pytest
import torch
import torch.nn.functional as F

from smakit.models import SeqBoat, SeqBoatLayer

D = 16
MODES = ["sparse", "always", "none"]


def layer(mode="sparse", causal=True, update_gate=True, **kw):
    torch.manual_seed(0)
    return SeqBoatLayer(D, causal=causal, window=4, qk_dim=8, ema_ndim=4, mode=mode, update_gate=update_gate,
                        **kw).eval()


@pytest.mark.parametrize("prenorm", [True, False])
def test_output_is_the_gated_residual(prenorm):
    """EMA-only keeps the formula small: mixed = h W_bypass, h = silu(EMA(norm(x)))."""
    lay = layer("none", prenorm=prenorm)
    x = torch.randn(2, 9, D)
    with torch.no_grad():
        h = F.silu(lay.ema(lay.norm(x) if prenorm else x))
        u = torch.sigmoid(h @ lay.update.weight.T + lay.update.bias)
        want = x + u * (F.silu(lay.bypass(h)) - x)
        torch.testing.assert_close(lay(x), want if prenorm else lay.norm(want), rtol=1e-5, atol=1e-5)
    assert "update_gate=True" in repr(lay)


def test_empty_batch_and_length():
    lay = layer()
    assert lay(torch.randn(0, 5, D)).shape == (0, 5, D)
    assert lay(torch.randn(2, 0, D)).shape == (2, 0, D)


def test_false_is_the_layer_of_before():
    old, new = layer(update_gate=False), layer(update_gate=True)
    assert old.update is None and "update_gate" not in repr(old)
    assert set(new.state_dict()) - set(old.state_dict()) == {"update.weight", "update.bias"}
    for k, v in old.state_dict().items():  # the gate is made last: the rest starts the same
        assert torch.equal(new.state_dict()[k], v), k
    with pytest.raises(RuntimeError, match="update.weight"):  # an old checkpoint is not silently short
        new.load_state_dict(old.state_dict())


@pytest.mark.parametrize("value", [1, 0, "true", None, 0.5])
def test_bad_update_gate_is_a_one_line_error(value):
    with pytest.raises(ValueError, match="update_gate") as err:
        SeqBoatLayer(D, causal=True, window=4, qk_dim=8, update_gate=value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("mode", MODES)
def test_gradients_reach_the_gate_and_the_input(mode):
    lay = layer(mode).train()
    x = torch.randn(2, 9, D, requires_grad=True)
    lay(x).square().mean().backward()
    assert lay.update.weight.grad.abs().sum() > 0 and lay.update.bias.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0


def test_model_passes_it_to_every_layer_and_decodes():
    torch.manual_seed(0)
    model = SeqBoat(vocab_size=30, dim=D, depth=2, lm=True, window=4, qk_dim=8, ema_ndim=4,
                    update_gate=True).eval()
    assert all(m.update is not None for m in model.layers)
    ids = torch.randint(0, 30, (2, 10))
    with torch.no_grad():
        logits, state = model.prefill(ids[:, :6])
        step, _ = model.step(ids[:, 6], state)
        full = model(ids)
    torch.testing.assert_close(logits, full[:, :6], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(step, full[:, 6], rtol=1e-5, atol=1e-5)



def test_bf16_autocast_on_cpu_is_close_to_float32():
    """The gate runs in bf16 under autocast while the residual stream stays float32: the mix
    must promote (``torch.lerp`` here raised a dtype error), and stay near the fp32 output."""
    torch.manual_seed(0)
    model = SeqBoat(vocab_size=30, dim=D, depth=2, lm=True, window=4, qk_dim=8, ema_ndim=4, short_conv=4,
                    update_gate=True)
    ids = torch.randint(0, 30, (2, 13))
    ref = model(ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids)
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.layers[0].update.weight.grad.abs().sum() > 0
