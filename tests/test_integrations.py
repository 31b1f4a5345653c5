"""sma_wrap on existing architectures: Hugging Face GPT-2 (built from a config) and
nn.TransformerEncoder(Layer)."""

import pytest
import torch
from torch import nn

from smakit import aux_losses
from smakit.integrations import SMAAdapter, infer_dim, sma_wrap


def force(adapter: SMAAdapter, active: bool):
    """Make an adapter's threshold router route every token, or none."""
    router = adapter.sma.router
    with torch.no_grad():
        router.proj.weight.zero_()
        router.proj.bias.zero_()
        router.proj.bias[1 if active else 0] = 50.0


def adapters(model):
    return [m for m in model.modules() if isinstance(m, SMAAdapter)]


# Hugging Face GPT-2

@pytest.fixture
def gpt2():
    transformers = pytest.importorskip("transformers", reason="the GPT-2 tests need `pip install transformers`")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=61, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def test_gpt2_wrap_every_mlp_by_pattern(gpt2):
    names = sma_wrap(gpt2, "transformer.h.*.mlp")
    assert names == ["transformer.h.0.mlp", "transformer.h.1.mlp"]
    assert all(isinstance(gpt2.transformer.h[i].mlp, SMAAdapter) for i in range(2))
    assert type(gpt2.transformer.h[0].mlp.wrapped).__name__ == "GPT2MLP"
    assert gpt2.transformer.h[0].mlp.sma.dim == 32  # inferred from Conv1D.nx


def test_gpt2_block_keeps_its_residual(gpt2):
    """Routing every token with a straight-through gate (forward value 1) is the original model;
    routing none leaves x + attention only (the MLP branch is exactly zero)."""
    ids = torch.randint(0, 61, (2, 9))
    with torch.no_grad():
        want = gpt2(ids).logits
        mlps = [block.mlp for block in gpt2.transformer.h]
        sma_wrap(gpt2, "transformer.h.*.mlp", straight_through=True)
        for a in adapters(gpt2):
            force(a, active=True)
        torch.testing.assert_close(gpt2(ids).logits, want, rtol=1e-5, atol=1e-5)
        for a in adapters(gpt2):
            force(a, active=False)
        skipped = gpt2(ids).logits
        for block in gpt2.transformer.h:  # reference: the MLP contributes nothing
            block.mlp = _Zero()
        torch.testing.assert_close(skipped, gpt2(ids).logits)
    assert mlps  # keep the originals alive for the comparison above


class _Zero(nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


def test_gpt2_training_step(gpt2):
    sma_wrap(gpt2, "transformer.h.*.mlp", density_target=0.5, density_mode="loss")
    gpt2.train()
    opt = torch.optim.AdamW(gpt2.parameters(), lr=1e-3)
    ids = torch.randint(0, 61, (2, 16))
    router = gpt2.transformer.h[0].mlp.sma.router
    before = router.proj.weight.detach().clone()
    out = gpt2(ids, labels=ids)
    aux = aux_losses(gpt2)
    assert aux is not None and aux.requires_grad
    (out.loss + aux).backward()
    assert torch.isfinite(out.loss)
    assert router.proj.weight.grad.abs().sum() > 0
    assert gpt2.transformer.h[0].mlp.wrapped.c_fc.weight.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(router.proj.weight, before)
    ratio = gpt2.transformer.h[0].mlp.sma.stats.ratio
    assert 0 < ratio.item() < 1  # really sparse: some tokens skipped, some routed


def greedy_cached_equals_uncached(model, prompt, new_tokens=8):
    """Greedy ``generate`` with and without the KV cache; asserts they agree, returns it."""
    cached = model.generate(prompt, max_new_tokens=new_tokens, do_sample=False, use_cache=True)
    uncached = model.generate(prompt, max_new_tokens=new_tokens, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    return cached


def test_gpt2_greedy_generation_with_kv_cache_equals_without(gpt2):
    """The threshold router is causal (each token decides alone), so cached decoding, one token
    at a time (L = 1), routes exactly as the full forward."""
    sma_wrap(gpt2, "transformer.h.*.mlp")
    ids = torch.randint(1, 61, (2, 5))
    with torch.no_grad():
        cached = greedy_cached_equals_uncached(gpt2, ids)
        # and the logits agree step by step
        full = gpt2(cached).logits
        ratios = [a.sma.stats.ratio.item() for a in adapters(gpt2)]
        assert any(0 < r < 1 for r in ratios), ratios  # routing really is sparse here
        past, steps = None, []
        for t in range(cached.shape[1]):
            out = gpt2(cached[:, t:t + 1], past_key_values=past, use_cache=True)
            past = out.past_key_values
            steps.append(out.logits)
        torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-5)


# nn.TransformerEncoder / nn.TransformerEncoderLayer

def encoder(batch_first=True):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=batch_first)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


def inputs(B=3, L=10):
    torch.manual_seed(1)
    x = torch.randn(B, L, 16)
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[1, 7:] = True
    causal = torch.ones(L, L, dtype=torch.bool).triu(1)  # True = may not attend
    return x, pad, causal


@pytest.mark.parametrize("batch_first", [True, False])
def test_encoder_all_routed_straight_through_equals_original(batch_first):
    enc = encoder(batch_first)
    x, pad, causal = inputs()
    src = x if batch_first else x.transpose(0, 1)
    with torch.no_grad():
        want = enc(src, mask=causal, src_key_padding_mask=pad, is_causal=True)
        assert sma_wrap(enc, "layers.*", straight_through=True) == ["layers.0", "layers.1"]
        for a in adapters(enc):
            force(a, active=True)
        got = enc(src, mask=causal, src_key_padding_mask=pad, is_causal=True)
    real = ~pad if batch_first else ~pad.T
    torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("how", ["src_mask", "is_causal", "none"])
def test_encoder_layer_runs_attention_among_routed_tokens_only(how):
    """Each routed token gets x + gate * (layer(routed subsequence) - x); the rest get x."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    holder = nn.Sequential(layer)
    sma_wrap(holder, "0")
    adapter = holder[0]
    x, pad, causal = inputs()
    kwargs = {"src_mask": causal} if how == "src_mask" else {"is_causal": how == "is_causal"}
    with torch.no_grad():
        y = adapter(x, src_key_padding_mask=pad, **kwargs)
        routing = adapter.sma.router(x, ~pad)
    assert routing.active[0].any(1).all() and not routing.active[0].all()
    for b in range(x.shape[0]):
        sel = routing.active[0, b]
        sub = x[b, sel].unsqueeze(0)
        sub_mask = None if how == "none" else nn.Transformer.generate_square_subsequent_mask(sub.shape[1])
        with torch.no_grad():
            ref = layer(sub, src_mask=sub_mask).squeeze(0)
        gate = routing.gate[0, b, sel].unsqueeze(-1)
        torch.testing.assert_close(y[b, sel], x[b, sel] + gate * (ref - x[b, sel]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(y[b, ~sel], x[b, ~sel])


def test_encoder_training_step_and_causality():
    enc = encoder()
    sma_wrap(enc, "layers.*", density_target=0.5, density_mode="loss")
    enc.train()
    x, pad, causal = inputs()
    x.requires_grad_(True)
    y = enc(x, mask=causal, src_key_padding_mask=pad, is_causal=True)
    t = 4
    y[:, t].sum().backward(retain_graph=True)
    assert (x.grad[:, t + 1:] == 0).all()  # nothing flows from the future
    (y.pow(2).mean() + aux_losses(enc)).backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None, name
    assert enc.layers[0].sma.router.proj.weight.grad.abs().sum() > 0


def test_eval_fast_path_matches_training_path():
    enc = encoder()
    sma_wrap(enc, "layers.*")
    x, pad, causal = inputs()
    y_train = enc.train()(x, mask=causal, src_key_padding_mask=pad, is_causal=True)
    with torch.no_grad():
        y_eval = enc.eval()(x, mask=causal, src_key_padding_mask=pad, is_causal=True)
    torch.testing.assert_close(y_eval[~pad], y_train.detach()[~pad], rtol=1e-4, atol=1e-5)


# the helper itself

def test_pattern_syntax_and_errors():
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), nn.Linear(4, 4))
    with pytest.raises(ValueError, match="matched no submodule"):
        sma_wrap(model, "2")
    assert sma_wrap(model, "**", layout="flat") == ["0", "1"]  # outermost matches only
    with pytest.raises(ValueError, match="already wrapped"):
        sma_wrap(model, "0")
    with pytest.raises(TypeError, match="pattern must be"):
        sma_wrap(model, [])
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), nn.Linear(4, 4))
    assert sma_wrap(model, "*.0") == ["0.0"]  # '*' is one name segment
    assert model(torch.randn(2, 3, 4)).shape == (2, 3, 4)


def test_adapter_rejects_what_it_cannot_route():
    model = nn.Sequential(nn.Linear(4, 4))
    sma_wrap(model, "0")
    with pytest.raises(TypeError, match="passes only the hidden states"):
        model[0](torch.randn(2, 3, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"x must have shape \[B, L, 4\]"):
        model[0](torch.randn(2, 3, 4, 4))
    assert model[0](torch.randn(5, 4)).shape == (5, 4)  # [L, D] is one row
    with pytest.raises(ValueError, match="cannot infer the feature size"):
        infer_dim(nn.ReLU())
    with pytest.raises(ValueError, match="residual must be"):
        sma_wrap(nn.Sequential(nn.Linear(4, 4)), "0", residual="around")
    with pytest.raises(ValueError, match="layout='padded'"):
        sma_wrap(encoder(), "layers.*", layout="flat")


def test_residual_inside_for_a_block_with_its_own_skip():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return x + self.lin(x)

    model = nn.Sequential(Block())
    x = torch.randn(2, 6, 4)
    want = model(x)
    sma_wrap(model, "0", residual="inside", straight_through=True)
    force(model[0], active=False)
    torch.testing.assert_close(model(x), x)  # skipped tokens pass through unchanged
    force(model[0], active=True)
    torch.testing.assert_close(model(x), want)


# causal top-k on Hugging Face decoders

def hf_decoder(family):
    transformers = pytest.importorskip("transformers", reason="the decoder tests need `pip install transformers`")
    torch.manual_seed(0)
    if family == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=61, n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                                      embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=0)
        return transformers.GPT2LMHeadModel(cfg).eval(), "transformer.h.*.mlp"
    small = dict(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    cls = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}[family]
    if not hasattr(transformers, cls[1]):
        pytest.skip(f"this transformers has no {cls[1]}")
    cfg = getattr(transformers, cls[0])(**small)
    return getattr(transformers, cls[1])(cfg).eval(), "model.layers.*.mlp"


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_hf_decoder_with_causal_topk_generates_cached_equals_uncached(family):
    model, pattern = hf_decoder(family)
    sma_wrap(model, pattern, router="topk", capacity=0.5, causal_predictor=True)
    model.train()
    ids = torch.randint(1, 61, (2, 12))
    out = model(ids, labels=ids)
    (out.loss + aux_losses(model)).backward()  # trains with top-k and the predictor's own loss
    assert adapters(model)[0].sma.router.predictor[0].weight.grad.abs().sum() > 0
    model.eval()
    prompt = ids[:, :5]
    with torch.no_grad():
        cached = greedy_cached_equals_uncached(model, prompt)
        logits = model(cached).logits
        ratios = [a.sma.stats.ratio.item() for a in adapters(model)]
        assert any(0 < r < 1 for r in ratios), ratios  # really sparse
        past, steps = None, []  # cached logits, token by token, equal the full forward's
        for t in range(cached.shape[1]):
            out = model(cached[:, t:t + 1], past_key_values=past, use_cache=True)
            past = out.past_key_values
            steps.append(out.logits)
        torch.testing.assert_close(torch.cat(steps, 1), logits, rtol=1e-4, atol=1e-5)
        # changing later tokens never changes an earlier output
        t = 7
        changed = cached.clone()
        changed[:, t:] = torch.randint(1, 61, changed[:, t:].shape)
        torch.testing.assert_close(model(changed).logits[:, :t], logits[:, :t], rtol=0, atol=1e-5)


def test_sma_wrap_keeps_the_models_eval_mode(gpt2):
    sma_wrap(gpt2, "transformer.h.*.mlp")
    assert not any(m.training for m in gpt2.modules())


def test_topk_on_a_decoder_without_the_predictor_warns(gpt2):
    with pytest.warns(UserWarning, match="causal_predictor=True"):
        sma_wrap(gpt2, "transformer.h.*.mlp", router="topk")
