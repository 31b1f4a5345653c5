"""State: state_dict round trips, seeded determinism on CPU, checkpoints that load with
``weights_only=True`` and resume exactly."""

import io

import pytest
import torch
from torch import nn

from smakit import ThresholdRouter, aux_losses, sma
from smakit.integrations import sma_wrap
from smakit.modules import MLP

D = 16


class Net(nn.Module):
    """Two routed blocks (threshold with Gumbel noise, top-k) and dropout: every kind of state."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(D, D)
        self.a = sma({"mlp": MLP(D, 32, dropout=0.1), "lin": nn.Linear(D, D)}, dim=D, gumbel=True,
                     density_target=0.3)
        self.b = sma(MLP(D, 32), dim=D, router="topk", capacity=0.5, layout="flat")
        self.out = nn.Linear(D, D)

    def forward(self, x, mask=None):
        h = self.inp(x)
        h = h + self.a(h, mask)
        h = h + self.b(h, mask)
        return self.out(h)


def seqboat():
    from smakit.models import SeqBoat

    return SeqBoat(input_dim=D, dim=D, depth=2, n_classes=3, window=4, qk_dim=8, ema_ndim=2, dropout=0.1)


def encoder():
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(D, 2, 32, batch_first=True), 2,
                                enable_nested_tensor=False)
    sma_wrap(enc, "layers.*", density_target=0.5)
    return enc


MODELS = {"net": Net, "seqboat": seqboat, "encoder": encoder}


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 12, D, generator=g)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[2, 8:] = False
    return x, mask


def forward(model, x, mask):
    if isinstance(model, nn.TransformerEncoder):
        return model(x, src_key_padding_mask=~mask)
    return model(x, mask)


def train_steps(model, opt, steps, seed=1):
    losses = []
    model.train()
    for i in range(steps):
        x, mask = batch(seed + i)
        loss = forward(model, x, mask).pow(2).mean()
        aux = aux_losses(model)
        if aux is not None:
            loss = loss + aux
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_round_trip_with_weights_only(name):
    torch.manual_seed(0)
    model = MODELS[name]()
    train_steps(model, torch.optim.AdamW(model.parameters(), lr=1e-2), 1)
    state = roundtrip(model.state_dict())
    torch.manual_seed(123)  # a different initialisation, overwritten by the load
    fresh = MODELS[name]()
    fresh.load_state_dict(state)  # strict: same keys, same shapes
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    x, mask = batch()
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(forward(fresh, x, mask), forward(model, x, mask))


@pytest.mark.parametrize("name", MODELS)
def test_seeded_training_is_deterministic_on_cpu(name):
    """Same seed -> bit-identical losses and weights (Gumbel noise and dropout included)."""
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = MODELS[name]()
        losses = train_steps(model, torch.optim.AdamW(model.parameters(), lr=1e-2), 3)
        runs.append((losses, model.state_dict()))
    assert runs[0][0] == runs[1][0]
    for key, value in runs[0][1].items():
        assert torch.equal(runs[1][1][key], value), key


def test_checkpoint_resume_equals_uninterrupted_run():
    """{model, optimizer, rng, step} saved mid-run loads with weights_only=True and continues
    exactly as if never stopped."""
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train_steps(model, opt, 2)
    ckpt = roundtrip({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 2,
                      "rng": torch.get_rng_state(), "config": {"dim": D, "router": "threshold"}})
    straight = train_steps(model, opt, 2, seed=3)

    torch.manual_seed(99)
    resumed = Net()
    resumed_opt = torch.optim.AdamW(resumed.parameters(), lr=1e-2)
    resumed.load_state_dict(ckpt["model"])
    resumed_opt.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng"])
    assert ckpt["step"] == 2 and ckpt["config"]["router"] == "threshold"
    assert train_steps(resumed, resumed_opt, 2, seed=3) == straight
    for key, value in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_old_checkpoint_with_scalar_temperature_still_loads():
    """log_temperature became shape [1] (FSDP2 cannot shard 0-d parameters)."""
    router = ThresholdRouter(D)
    state = router.state_dict()
    state["log_temperature"] = torch.tensor(0.7)  # the earlier 0-d layout
    fresh = ThresholdRouter(D)
    fresh.load_state_dict(roundtrip(state))
    assert fresh.log_temperature.shape == (1,)
    assert fresh.log_temperature.item() == pytest.approx(0.7)


def test_routing_stats_are_not_state():
    """Statistics of the last forward never leak into the state dict."""
    model = Net()
    keys = set(model.state_dict())
    forward(model, *batch())
    assert set(model.state_dict()) == keys
    assert not any("stats" in k or "aux" in k for k in keys)


@pytest.mark.parametrize("variant", ["seqboat", "seqboat_full"])
@pytest.mark.parametrize("keep_attn", [True, False], ids=["gau-and-attn", "gau-only"])
def test_old_seqboat_checkpoint_with_the_attention_registered_twice_loads(variant, keep_attn):
    """Before one registration, SeqBoatLayer saved its attention under ``gau.*`` and again under
    ``attn.experts.0.*`` (sparse) or ``attn.*`` (always). Build that layout and load it."""
    import re

    from smakit.models import SeqBoat

    torch.manual_seed(0)
    opts = dict(vocab_size=20, dim=D, depth=2, lm=True, window=4, qk_dim=8, ema_ndim=2, variant=variant)
    model = SeqBoat(**opts).eval()
    old = {}
    for key, value in model.state_dict().items():
        m = re.fullmatch(r"(layers\.\d+\.)attn\.(?:routed_modules\.0\.)?((?!router\.).*)", key)
        if m:
            old[m.group(1) + "gau." + m.group(2)] = value.clone()
            if not keep_attn:
                continue
        old[key.replace(".routed_modules.", ".experts.")] = value.clone()  # the name then
    assert any(".gau." in k for k in old) and not any(".gau." in k for k in model.state_dict())
    torch.manual_seed(1)
    fresh = SeqBoat(**opts).eval()
    fresh.load_state_dict(roundtrip(old))  # strict
    ids = torch.randint(0, 20, (2, 9))
    with torch.no_grad():
        assert torch.equal(fresh(ids), model(ids))
