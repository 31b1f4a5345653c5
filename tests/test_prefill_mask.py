"""Prompts of different lengths in one batch, padded on the left: ``prefill(prompt, mask)`` and
``generate(..., mask=mask)`` equal each row alone (logits at its real tokens, then stepping on),
whatever the padding holds; ``mask=None`` is unchanged; bad masks are one-line errors."""

import pytest
import torch
from streaming_helpers import assert_same_state, stream
from torch import nn

from smakit import LocalGatedAttention, sma
from smakit.models import (
    FeedForwardBlock,
    HybridSMA,
    SeqBoat,
    SeqBoatLayer,
    SequenceModel,
    SMATransformer,
    Transformer,
    generate,
)

V, D, T = 23, 16, 9
LENGTHS = (9, 5, 1, 0, 3)  # a full row, odd lengths, one token, an empty row
TOL = dict(rtol=1e-5, atol=1e-5)


def left_padded(lengths=LENGTHS, seed=1):
    """``(ids [B, T], mask [B, T])``: the padding holds random tokens too."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (len(lengths), T), generator=g)
    mask = torch.arange(T) >= T - torch.tensor(lengths).unsqueeze(1)
    return ids, mask


def seqboat(variant="seqboat", **kw):
    torch.manual_seed(0)
    model = SeqBoat(vocab_size=V, dim=D, depth=2, lm=True, window=4, qk_dim=8, ema_ndim=4, variant=variant, **kw)
    with torch.no_grad():  # route about half the tokens (the window spans gaps), and an all-zero
        for layer in model.layers:  # token (h at padding) would be routed if the mask were lost
            if getattr(layer, "mode", None) == "sparse":
                layer.router.proj.bias.copy_(torch.tensor([0.0, 0.1]))
    return model.eval()


def feedforward():
    torch.manual_seed(0)
    return SequenceModel([FeedForwardBlock(D, 32) for _ in range(2)], D, vocab_size=V, lm=True).eval()


CONV_UG = dict(short_conv=4, update_gate=True)
DECODERS = {  # every model that steps
    "seqboat": lambda: seqboat(),
    "seqboat-conv-ug": lambda: seqboat(**CONV_UG),
    "seqboat-slots3": lambda: seqboat(compaction_slots=3),  # the budget is counted per row
    "seqboat_full": lambda: seqboat("seqboat_full"),
    "seqboat_full-conv-ug": lambda: seqboat("seqboat_full", **CONV_UG),
    "mega_chunk": lambda: seqboat("mega_chunk", chunk=3),  # chunks start at each row's first token
    "ema_only": lambda: seqboat("ema_only"),
    "ema_only-conv-ug": lambda: seqboat("ema_only", **CONV_UG),
    "seqboat-ffn-postnorm": lambda: seqboat(ffn_hidden=32, prenorm=False, short_conv=3),
    "feedforward": feedforward,
}
RERUN = {  # no step: generate re-runs the forward with the mask
    "transformer": lambda: Transformer(vocab_size=V, dim=D, depth=2, lm=True).eval(),
    "sma_transformer": lambda: SMATransformer(vocab_size=V, dim=D, depth=2, lm=True, compaction_slots=4).eval(),
    "hybrid": lambda: HybridSMA(vocab_size=V, dim=D, depth=2, lm=True, kernel_size=3).eval(),
}


def prefill_and_step(model, ids, mask, nxt):
    """Logits of ``prefill`` and of stepping on with ``nxt [S, B]`` -> ``(logits, [S x [B, V]], state)``."""
    logits, state = model.prefill(ids, mask) if mask is not None else model.prefill(ids)
    steps = []
    for tok in nxt:
        out, state = model.step(tok, state)
        steps.append(out)
    return logits, steps, state


@pytest.mark.parametrize("name", DECODERS)
@torch.no_grad()
def test_ragged_batch_equals_each_row_alone(name):
    model = DECODERS[name]()
    ids, mask = left_padded()
    nxt = torch.randint(0, V, (3, len(LENGTHS)), generator=torch.Generator().manual_seed(2))
    logits, steps, _ = prefill_and_step(model, ids, mask, nxt)
    assert torch.isfinite(logits).all() and (logits[~mask] == 0).all()  # padding: zeros
    for b, n in enumerate(LENGTHS):
        ref, ref_steps, _ = prefill_and_step(model, ids[b:b + 1, T - n:], None, nxt[:, b:b + 1])
        torch.testing.assert_close(logits[b, T - n:], ref[0], **TOL, msg=f"row {b} (length {n}): prefill")
        for t, (got, want) in enumerate(zip(steps, ref_steps)):
            torch.testing.assert_close(got[b], want[0], **TOL, msg=f"row {b} (length {n}): step {t}")


@torch.no_grad()
def test_padding_is_never_routed_and_the_routing_is_mixed():
    """The sparse rows above test something: some real tokens skip the attention, padding always does."""
    model = seqboat()
    ids, mask = left_padded()
    model.prefill(ids, mask)
    ran = model.layers[0].attn.stats.active[0]  # [B, T]
    assert not ran[~mask].any()
    assert 0.2 < ran[mask].float().mean() < 0.8


@pytest.mark.parametrize("name", DECODERS)
@torch.no_grad()
def test_padding_content_does_not_matter(name):
    model = DECODERS[name]()
    ids, mask = left_padded()
    other = torch.where(mask, ids, torch.randint(0, V, ids.shape, generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(other, ids)
    nxt = torch.randint(0, V, (3, len(LENGTHS)))
    a_logits, a_steps, a_state = prefill_and_step(model, ids, mask, nxt)
    b_logits, b_steps, b_state = prefill_and_step(model, other, mask, nxt)
    assert torch.equal(a_logits, b_logits)
    assert all(torch.equal(x, y) for x, y in zip(a_steps, b_steps))
    assert_same_state(a_state, b_state)


@pytest.mark.parametrize("name", DECODERS)
@torch.no_grad()
def test_without_mask_unchanged(name):
    """``mask=None`` is the forward and the stepped state; an all-real mask is the same."""
    model = DECODERS[name]()
    ids, _ = left_padded()
    logits, state = model.prefill(ids)
    torch.testing.assert_close(logits, model(ids))
    stepped = model.init_state(ids.shape[0])
    for t in range(T):
        _, stepped = model.step(ids[:, t], stepped)
    assert_same_state(state, stepped)
    full_logits, full_state = model.prefill(ids, torch.ones(ids.shape, dtype=torch.bool))
    torch.testing.assert_close(full_logits, logits, **TOL)
    assert_same_state(full_state, state)


def bad_masks():
    _, mask = left_padded()
    right = mask.flip(1)  # right padding
    hole = torch.ones_like(mask)
    hole[1, 4] = False  # a padded token among real ones
    return {"right-padding": (right, ValueError, "left padding"), "hole": (hole, ValueError, "left padding"),
            "shape": (mask[:, 1:], ValueError, "shape"), "dtype": (mask.long(), TypeError, "bool"),
            "not-a-tensor": (mask.tolist(), TypeError, "bool")}


@pytest.mark.parametrize("case", bad_masks())
def test_bad_mask_is_a_one_line_error(case):
    mask, kind, what = bad_masks()[case]
    ids, _ = left_padded()
    model = seqboat(**CONV_UG)
    layer = model.layers[0]
    x = torch.randn(*ids.shape, D)
    calls = {"model.prefill": lambda: model.prefill(ids, mask), "generate": lambda: generate(model, ids, 2, mask=mask),
             "layer.prefill": lambda: layer.prefill(x, mask), "sma.prefill": lambda: layer.attn.prefill(x, mask=mask),
             "rerun generate": lambda: generate(RERUN["transformer"](), ids, 2, mask=mask)}
    for call, fn in calls.items():
        with pytest.raises(kind, match=rf"^mask .*{what}") as err:
            fn()
        assert "\n" not in str(err.value), call


@pytest.mark.parametrize("name", [*DECODERS, *RERUN])
def test_generate_with_mask_equals_generate_per_row(name):
    model = {**DECODERS, **RERUN}[name]()
    lengths = (9, 5, 1, 3)
    ids, mask = left_padded(lengths)
    out = generate(model, ids, 5, temperature=0, mask=mask)
    assert torch.equal(out[:, :T], ids)
    for b, n in enumerate(lengths):
        alone = generate(model, ids[b:b + 1, T - n:], 5, temperature=0)
        assert torch.equal(out[b, T - n:], alone[0]), f"row {b} (length {n})"


def test_generate_without_mask_keeps_its_signature():
    model = seqboat()
    ids, _ = left_padded()
    assert torch.equal(generate(model, ids, 3, 0), generate(model, ids, 3, temperature=0, mask=None))


def test_generate_mask_needs_a_real_token_per_row():
    ids, mask = left_padded()  # row 3 is empty
    with pytest.raises(ValueError, match="^mask must mark at least one real token"):
        generate(seqboat(), ids, 2, mask=mask)


def test_routing_by_a_share_of_the_padded_length_is_refused():
    ids, mask = left_padded((9, 5, 1, 3))
    with pytest.raises(ValueError, match="^mask cannot be used with a slot budget given as a capacity"):
        seqboat(eval_capacity=0.5).prefill(ids, mask)
    with pytest.warns(UserWarning, match="not causal"):
        topk = SMATransformer(vocab_size=V, dim=D, depth=1, lm=True, router="topk").eval()
    with pytest.raises(ValueError, match="^mask cannot be used: TopKRouter is not causal"):
        generate(topk, ids, 2, mask=mask)
    capped = SMATransformer(vocab_size=V, dim=D, depth=1, lm=True, compaction_capacity=0.5).eval()
    with pytest.raises(ValueError, match="^mask cannot be used with a slot budget given as a capacity"):
        generate(capped, ids, 2, mask=mask)


class StatefulNoPrefill(nn.Module):
    """A decoding layer with a state but no prefill."""

    def forward(self, x, mask=None):
        return x

    def init_state(self, batch_size, device=None, dtype=None):
        return torch.zeros(batch_size, D)

    def step(self, x, state):
        return x, state + x


class NoMaskPrefill(StatefulNoPrefill):
    """A decoding layer whose prefill takes no mask."""

    def prefill(self, x):
        return x, x.sum(1)


@pytest.mark.parametrize("layer, what", [(NoMaskPrefill, "without a mask argument"),
                                         (StatefulNoPrefill, "but no prefill")])
def test_layer_that_cannot_keep_padding_out_is_refused(layer, what):
    ids, mask = left_padded()
    model = SequenceModel([layer()], D, vocab_size=V, lm=True).eval()
    model.prefill(ids)  # without a mask: as before
    with pytest.raises(ValueError, match=f"^mask cannot be used: layer 0 .*{what}"):
        model.prefill(ids, mask)


class NoPrefillCache(LocalGatedAttention):
    prefill_cache = None  # sma's generic fallback steps through the routed tokens


@pytest.mark.parametrize("module", [LocalGatedAttention, NoPrefillCache])
@torch.no_grad()
def test_sma_prefill_with_mask_equals_each_row_alone(module):
    torch.manual_seed(0)
    layer = sma(module(D, window=3, qk_dim=8), D, compaction_slots=4).eval()
    layer.router.proj.bias.zero_()
    _, mask = left_padded()
    x, more = torch.randn(len(LENGTHS), T, D), torch.randn(len(LENGTHS), 3, D)
    y, state = layer.prefill(x, mask=mask)
    ys, _ = stream(layer, more, state)
    assert (y[~mask] == 0).all()
    for b, n in enumerate(LENGTHS):
        ref, s = layer.prefill(x[b:b + 1, T - n:])
        torch.testing.assert_close(y[b, T - n:], ref[0], **TOL)
        torch.testing.assert_close(ys[b], stream(layer, more[b:b + 1], s)[0][0], **TOL)


@pytest.mark.parametrize("mode", ["sparse", "always", "none"])
@torch.no_grad()
def test_seqboat_layer_prefill_with_mask_equals_each_row_alone(mode):
    """The layer alone, on float inputs with large values in the padding."""
    torch.manual_seed(0)
    layer = SeqBoatLayer(D, causal=True, window=4, qk_dim=8, ema_ndim=4, mode=mode, **CONV_UG).eval()
    _, mask = left_padded()
    x = torch.randn(len(LENGTHS), T, D).masked_fill(~mask.unsqueeze(-1), 1e4)
    more = torch.randn(len(LENGTHS), 3, D)
    y, state = layer.prefill(x, mask)
    ys, _ = stream(layer, more, state)
    assert torch.isfinite(y).all()
    for b, n in enumerate(LENGTHS):
        ref, s = layer.prefill(x[b:b + 1, T - n:])
        torch.testing.assert_close(y[b, T - n:], ref[0], **TOL)
        torch.testing.assert_close(ys[b], stream(layer, more[b:b + 1], s)[0][0], **TOL)
