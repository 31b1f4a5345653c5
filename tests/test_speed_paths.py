"""Fast paths vs their plain references, forward and every gradient, on odd sizes.

* the relative bias read from its bucket table vs bucketing each distance directly,
* the Fourier bias as a product of per-token features vs its series per distance,
* ``local_attention`` (one dense block for short inputs, banded blocks for long ones, the
  mask folded into the bias) vs the dense masked ``O(K^2)`` reference,
* the one-FFT bidirectional EMA convolution vs two causal FFT convolutions,
* the option-major threshold router vs its option-last reference (``_forward_ref``).
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import smakit.modules._blockwise as blockwise_module
import smakit.modules.window_attention as window_module
from smakit.modules import MultiHeadEMA, fft_causal_conv, local_attention
from smakit.modules.ema import fft_two_sided_conv
from smakit.modules.position import FourierRelativeBias, RelativePositionBias, relative_bias_ref, relative_bucket
from smakit.modules.window_attention import _blocking, _local_attention_ref
from smakit.routing import ThresholdRouter


def grads_of(fn, inputs, weight):
    for t in inputs:
        t.grad = None
    out = fn()
    (out * weight).sum().backward()
    return out.detach(), [t.grad.clone() for t in inputs]


def assert_same(fast, ref, inputs, weight, rtol, atol):
    out_f, g_f = grads_of(fast, inputs, weight)
    out_r, g_r = grads_of(ref, inputs, weight)
    torch.testing.assert_close(out_f, out_r, rtol=rtol, atol=atol)
    for i, (a, b) in enumerate(zip(g_f, g_r)):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, i=i: f"grad {i}: {m}")


@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidir"])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 1024), (7, 13), (2, 1)], ids=lambda v: str(v))
def test_relative_bias_table_matches_direct_bucketing(bidirectional, num_buckets, max_distance):
    torch.manual_seed(num_buckets)
    bias = RelativePositionBias(num_buckets, max_distance, bidirectional)
    distance = torch.randint(-3 * max_distance - 5, 3 * max_distance + 6, (3, 37, 11))
    distance[0, 0, :5] = torch.tensor([0, max_distance, -max_distance, max_distance + 1, -max_distance - 1])
    assert torch.equal(bias.bucket(distance).long(),
                       relative_bucket(distance, num_buckets, max_distance, bidirectional))
    w = torch.randn(distance.shape)
    assert_same(lambda: bias(distance), lambda: relative_bias_ref(bias.weight, distance, max_distance, bidirectional),
                [bias.weight], w, rtol=1e-6, atol=1e-6)


@given(positions=st.lists(st.integers(0, 200_000), min_size=1, max_size=12),
       num_frequencies=st.integers(1, 9), max_distance=st.integers(1, 5000))
@settings(max_examples=40, deadline=None)
def test_fourier_bias_features_multiply_to_the_series(positions, num_frequencies, max_distance):
    torch.manual_seed(num_frequencies)
    bias = FourierRelativeBias(num_frequencies, max_distance)
    torch.nn.init.normal_(bias.weight)
    p = torch.tensor(positions)
    w = torch.randn(len(p), len(p))
    angle = (p[:, None] - p[None, :]).double().unsqueeze(-1) * bias.freq.double()  # [n, n, M]

    def series():  # sum_m a_m cos(w_m d) + b_m sin(w_m d), in float64
        a, b = bias.weight.double()
        return (angle.cos() * a + angle.sin() * b).sum(-1).float()

    # float32 features at positions up to 2e5 (their angles in float64) against the series
    assert_same(lambda: bias.query_features(p) @ bias.key_features(p).T, series, [bias.weight], w,
                rtol=1e-4, atol=1e-4)
    assert_same(lambda: bias(p[:, None] - p[None, :]), series, [bias.weight], w, rtol=1e-5, atol=1e-5)


def test_fourier_bias_starts_at_zero_and_spans_the_distances():
    bias = FourierRelativeBias(8, 1024)
    assert (bias(torch.arange(-50, 50)) == 0).all() and bias.dim == 16
    assert bias.freq[0] == pytest.approx(torch.pi / 2) and bias.freq[-1] == pytest.approx(torch.pi / 2048)
    with pytest.raises(ValueError, match="num_frequencies"):
        FourierRelativeBias(0)


def test_masked_lookup_reads_fill_and_gives_it_no_gradient():
    bias = RelativePositionBias(8, 20, bidirectional=True)
    pq, pk = torch.arange(5).view(5, 1), torch.arange(7).view(1, 7) * 3
    masked = torch.rand(5, 7) < 0.4
    out = bias.masked(pq, pk, masked, fill=-5.0)
    ref = torch.where(masked, -5.0, relative_bias_ref(bias.weight, pq - pk, 20, True))
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert bias.weight.grad.sum().item() == pytest.approx((~masked).sum().item())


def test_blocking_dense_for_short_inputs_half_window_blocks_for_long():
    assert _blocking(128, 128, causal=False, chunked=False) == (128, 0, 0)
    assert _blocking(320, 128, causal=False, chunked=False) == (320, 0, 0)
    assert _blocking(321, 128, causal=False, chunked=False) == (64, 2, 2)
    assert _blocking(193, 128, causal=True, chunked=False) == (64, 2, 0)
    assert _blocking(13, 4, causal=False, chunked=False) == (4, 1, 1)
    assert _blocking(100, 128, causal=True, chunked=True) == (128, 0, 0)


ATTN_CASES = [(c, a, ch) for c in (True, False) for a in ("softmax", "relu2") for ch in (False, True)]


@pytest.mark.parametrize("causal,attention,chunked", ATTN_CASES,
                         ids=[f"causal{c}-{a}-chunked{ch}" for c, a, ch in ATTN_CASES])
@pytest.mark.parametrize("K,window", [(5, 4), (13, 4), (29, 3), (1, 2), (71, 16)], ids=lambda v: str(v))
@pytest.mark.parametrize("sparse", [True, False], ids=["positions", "slots"])
@pytest.mark.parametrize("path", ["blockwise", "vectorised"])
def test_local_attention_matches_dense_reference_fp32(causal, attention, chunked, K, window, sparse, path, monkeypatch):
    """Both blockings (K <= band: one block; K > band: banded blocks), padding rows; sparse
    positions (a bias per row) or none (slots are positions: one bias shared by all rows);
    the CPU blockwise path and the vectorised one (GPU, compile, autocast, dropout)."""
    if path == "vectorised":
        monkeypatch.setattr(window_module, "_blockwise_applies", lambda *a: False)
    else:
        monkeypatch.setattr(blockwise_module, "CHUNK_ELEMS", 40)  # several chunks even at these sizes
    torch.manual_seed(K + window)
    B, S, E = 3, 6, 5
    q, k, v = (torch.randn(B, K, d, requires_grad=True) for d in (S, S, E))
    mask = torch.arange(K) < torch.tensor([[K], [max(K - 4, 0)], [1]])
    positions = torch.where(mask, torch.arange(K) * 3 + torch.arange(B)[:, None], -1) if sparse else None
    bias = RelativePositionBias(8, 16, bidirectional=not causal)
    with torch.no_grad():
        bias.weight.normal_(0.0, 1.0)
    kw = dict(causal=causal, mask=mask, positions=positions, bias=bias, attention=attention, chunked=chunked)
    w = torch.randn(B, K, E)
    assert_same(lambda: local_attention(q, k, v, window, **kw)[0], lambda: _local_attention_ref(q, k, v, window, **kw),
                [q, k, v, bias.weight], w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 2, 3])
@pytest.mark.parametrize("causal,attention", [(True, "softmax"), (False, "softmax"), (False, "relu2")])
@pytest.mark.parametrize("K,window", [(71, 16), (29, 3)], ids=lambda v: str(v))
def test_blockwise_bias_table_gradient_in_partial_tables(rows, causal, attention, K, window, monkeypatch):
    """The per-row bias table's gradient summed in ``rows`` partial tables (one per thread) vs
    the dense reference: chunks of 6 blocks, so with 2 rows the last chunk of K=71 (27 blocks)
    does not split evenly and takes one row; padding rows and masked keys included."""
    monkeypatch.setattr(blockwise_module, "_table_grad_rows", lambda chunk: min(rows, chunk))
    b, before, after = _blocking(K, window, causal, False)
    monkeypatch.setattr(blockwise_module, "CHUNK_ELEMS", 6 * b * (before + 1 + after) * b // torch.get_num_threads())
    torch.manual_seed(K + rows)
    B, S, E = 3, 6, 5
    q, k, v = (torch.randn(B, K, d, requires_grad=True) for d in (S, S, E))
    mask = torch.arange(K) < torch.tensor([[K], [K - 11], [2]])
    positions = torch.where(mask, (torch.rand(B, K) * 3).long().cumsum(1) + torch.arange(K), -1)
    bias = RelativePositionBias(8, 16, bidirectional=not causal)
    with torch.no_grad():
        bias.weight.normal_(0.0, 1.0)
    kw = dict(causal=causal, mask=mask, positions=positions, bias=bias, attention=attention)
    assert_same(lambda: local_attention(q, k, v, window, **kw)[0], lambda: _local_attention_ref(q, k, v, window, **kw),
                [q, k, v, bias.weight], torch.randn(B, K, E), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal,chunked", [(True, False), (False, False), (False, True)])
@pytest.mark.parametrize("K,window", [(37, 5), (9, 16)], ids=lambda v: str(v))
@pytest.mark.parametrize("path", ["blockwise", "vectorised"])
def test_shared_bias_equals_per_row_bias(causal, chunked, K, window, path, monkeypatch):
    """No positions (one bias for all rows) == shifted slots as positions (a bias per row)."""
    if path == "vectorised":
        monkeypatch.setattr(window_module, "_blockwise_applies", lambda *a: False)
    torch.manual_seed(K)
    q, k, v = (torch.randn(3, K, d, requires_grad=True) for d in (6, 6, 5))
    mask = torch.arange(K) < torch.tensor([[K], [K - 7], [3]])
    bias = RelativePositionBias(8, 20, bidirectional=not causal)
    with torch.no_grad():
        bias.weight.normal_(0.0, 1.0)
    kw = dict(causal=causal, chunked=chunked, mask=mask, bias=bias)
    shifted = torch.where(mask, torch.arange(K) + 7, -1)
    assert_same(lambda: local_attention(q, k, v, window, **kw)[0],
                lambda: local_attention(q, k, v, window, positions=shifted, **kw)[0],
                [q, k, v, bias.weight], torch.randn(3, K, 5), rtol=1e-5, atol=1e-5)


def test_far_positions_match_reference():
    """Positions beyond the distance table's limit take the vectorised path, still exact."""
    torch.manual_seed(5)
    q, k, v = (torch.randn(2, 23, 4, requires_grad=True) for _ in range(3))
    positions = torch.arange(23).expand(2, 23) * 3 + window_module.MAX_TABLE_POSITION
    bias = RelativePositionBias(8, 16, bidirectional=True)
    kw = dict(causal=False, positions=positions, bias=bias)
    assert_same(lambda: local_attention(q, k, v, 3, **kw)[0], lambda: _local_attention_ref(q, k, v, 3, **kw),
                [q, k, v, bias.weight], torch.randn(2, 23, 4), rtol=1e-5, atol=1e-5)


def test_slots_as_positions_take_the_shared_bias():
    """Positions equal to the slots on every real slot (sma with every token routed) are detected."""
    mask = torch.arange(6) < torch.tensor([[6], [4]])
    slots = torch.where(mask, torch.arange(6), -1)
    q = torch.zeros(2, 6, 4)
    assert window_module._slots_are_positions(slots, mask, q)
    assert not window_module._slots_are_positions(torch.where(mask, torch.arange(6) + 1, -1), mask, q)
    gaps = slots.clone()
    gaps[1, 3] = 4
    assert not window_module._slots_are_positions(gaps, mask, q)


@pytest.mark.parametrize("causal", [True, False])
def test_gau_without_relative_bias_matches_reference(causal):
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 11, d, requires_grad=True) for d in (4, 4, 6))
    mask = torch.arange(11) < torch.tensor([[11], [7]])
    kw = dict(causal=causal, mask=mask, attention="softmax")
    assert_same(lambda: local_attention(q, k, v, 3, **kw)[0], lambda: _local_attention_ref(q, k, v, 3, **kw),
                [q, k, v], torch.randn(2, 11, 6), rtol=1e-5, atol=1e-5)


def test_bf16_autocast_scores_stay_finite_with_all_padding_rows():
    q, k, v = (torch.randn(2, 9, 4, requires_grad=True) for _ in range(3))
    mask = torch.arange(9) < torch.tensor([[9], [0]])
    bias = RelativePositionBias(8, 16, bidirectional=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, span = local_attention(q, k, v, 2, causal=False, mask=mask, bias=bias)
    out.float().sum().backward()
    assert torch.isfinite(out).all() and (out[1] == 0).all() and (span[1] == 0).all()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v, bias.weight))


@pytest.mark.parametrize("L,Lk", [(1, 1), (7, 7), (33, 33), (40, 9)], ids=lambda v: str(v))
def test_two_sided_fft_conv_matches_two_causal_convs(L, Lk):
    torch.manual_seed(L)
    x = torch.randn(2, 5, L, requires_grad=True)
    kf, kb = torch.randn(5, Lk, requires_grad=True), torch.randn(5, Lk, requires_grad=True)
    assert_same(lambda: fft_two_sided_conv(x, kf, kb),
                lambda: fft_causal_conv(x, kf) + fft_causal_conv(x.flip(-1), kb).flip(-1),
                [x, kf, kb], torch.randn(2, 5, L), rtol=1e-5, atol=1e-5)


def test_bidirectional_ema_gradients_match_two_convolutions():
    torch.manual_seed(3)
    ema = MultiHeadEMA(6, ndim=3, bidirectional=True)
    x = torch.randn(2, 21, 6, requires_grad=True)

    def ref():
        k = ema.kernel(21)
        u = x.transpose(1, 2)
        y = fft_causal_conv(u, k[:6]) + fft_causal_conv(u.flip(-1), k[6:]).flip(-1)
        return y.transpose(1, 2) + x * ema.omega

    assert_same(lambda: ema(x), ref, [x, *ema.parameters()], torch.randn(2, 21, 6), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal,chunked", [(True, False), (False, False), (True, True), (False, True)])
@pytest.mark.parametrize("K,window", [(1, 3), (17, 3), (40, 16), (23, 64)], ids=lambda v: str(v))
def test_span_matches_brute_force_over_valid_keys(causal, chunked, K, window):
    """The O(K) span vs min/max over every valid key, with masks that are not prefixes."""
    torch.manual_seed(K)
    mask = torch.rand(3, K) < 0.7
    mask[0] = True
    positions = torch.where(mask, (torch.rand(3, K) * 4).long().cumsum(1) + torch.arange(K), -1)
    _, span = local_attention(*(torch.randn(3, K, 4) for _ in range(3)), window, causal=causal, mask=mask,
                              positions=positions, chunked=chunked)
    i = torch.arange(K)
    d = i[None, :] - i[:, None]  # key slot - query slot
    if chunked:
        allowed = (i[None, :] // window) == (i[:, None] // window)
        allowed = allowed & (d <= 0) if causal else allowed
    else:
        allowed = ((d <= 0) & (d > -window)) if causal else d.abs() <= window
    valid = allowed & mask[:, None, :]
    kp = positions[:, None, :].expand(3, K, K)
    want = kp.masked_fill(~valid, -1).amax(-1) - kp.masked_fill(~valid, 2**40).amin(-1) + 1
    torch.testing.assert_close(span, torch.where(mask, want, 0))


@pytest.mark.parametrize("window", [3, 16])
def test_empty_sequence(window):
    q, k, v = (torch.randn(2, 0, d, requires_grad=True) for d in (4, 4, 6))
    out, span = local_attention(q, k, v, window, causal=False, bias=RelativePositionBias(8, 16, True))
    assert out.shape == (2, 0, 6) and span.shape == (2, 0)
    out.sum().backward()


ROUTER_CASES = [(m, st, bt, g) for m in (1, 3) for st in (False, True) for bt in (False, True) for g in (False, True)]


@pytest.mark.parametrize("M,straight_through,budget,gumbel", ROUTER_CASES,
                         ids=[f"M{m}-st{st}-budget{bt}-gumbel{g}" for m, st, bt, g in ROUTER_CASES])
@pytest.mark.parametrize("B,L", [(3, 37), (1, 1), (2, 0)], ids=lambda v: str(v))
def test_threshold_router_matches_option_last_reference(M, straight_through, budget, gumbel, B, L):
    """Decision, gate, logits, probs, the controller's bias update and every gradient, with
    padding, a NaN token, ties in the scores and the same Gumbel draws (same seed)."""
    torch.manual_seed(M + B + L)
    router = ThresholdRouter(5, M, straight_through=straight_through, gumbel=gumbel,
                             density_target=0.3 if budget else None).train()
    with torch.no_grad():
        router.proj.weight[-1] = router.proj.weight[0]  # the last module ties with skip on every token
        router.proj.bias[-1] = router.proj.bias[0]
    x = torch.randn(B, L, 5, requires_grad=True)
    mask = torch.arange(L) < torch.tensor([L, max(L - 5, 0), 1][:B]).unsqueeze(1)
    params = [x, *router.parameters()]
    results = []
    for fn in (router, router._forward_ref):
        if budget:
            router.budget.bias.fill_(0.1)
        torch.manual_seed(7)
        rt = fn(x, mask)
        rt.logits.retain_grad()  # the option-last tensors users see are graph nodes
        rt.probs.retain_grad()
        w = torch.randn(rt.gate.shape)
        loss = (torch.where(rt.active, rt.gate, 0.0) * w).sum() + torch.nan_to_num(rt.probs).square().sum()
        for t in params:
            t.grad = None
        loss.backward()
        results.append((rt, [None if t.grad is None else t.grad.clone() for t in params + [rt.logits, rt.probs]],
                        router.budget.bias.clone() if budget else None))
    (fast, g_fast, b_fast), (ref, g_ref, b_ref) = results
    assert all(torch.isfinite(g).all() for g in g_ref if g is not None)
    if L > 2:  # a NaN token is skipped alike (forward only: its gradients are NaN everywhere)
        x_nan = x.detach().clone()
        x_nan[0, 2] = float("nan")
        torch.manual_seed(7)
        nan_fast = router.eval()(x_nan, mask)
        nan_ref = router._forward_ref(x_nan, mask)
        assert torch.equal(nan_fast.active, nan_ref.active) and not nan_fast.active[:, 0, 2].any()
        torch.testing.assert_close(nan_fast.gate, nan_ref.gate, rtol=1e-6, atol=1e-6)
    assert torch.equal(fast.active, ref.active)
    assert fast.logits.shape == ref.logits.shape == (B, L, M + 1)
    for a, b in ((fast.gate, ref.gate), (fast.logits, ref.logits), (fast.probs, ref.probs)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(b_fast, b_ref)
    for i, (a, b) in enumerate(zip(g_fast, g_ref)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, equal_nan=True, msg=lambda m, i=i: f"grad {i}: {m}")
