"""One meaning per name: ``capacity`` is a fraction of the row, ``slots`` a count per row.

Renamed names keep working for one release with a ``FutureWarning`` that names the new one;
inputs are checked once, at the public entry.
"""

import importlib

import pytest
import torch
from torch import nn

import smakit.ops.compaction as compaction
import smakit.ops.compaction.layout as layout_mod
import smakit.routing.threshold as threshold_mod
import smakit.routing.topk as topk_mod
from smakit import Compacted, Routing, ThresholdRouter, TopKRouter, sma
from smakit.ops import build_index, compress

sma_mod = importlib.import_module("smakit.sma")  # the attribute smakit.sma is the function
D = 4
RENAMED = r"renamed .*removed in smakit 0\.3"


def all_routed(layer):
    """Make the layer's threshold router choose the module for every token."""
    with torch.no_grad():
        layer.router.proj.weight.zero_()
        layer.router.proj.bias.copy_(torch.tensor([0.0, 50.0]))
    return layer


def pattern(B=2, L=7):
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, L, D, generator=g), torch.rand(B, L, generator=g) < 0.6


# compaction: slots=


def test_compress_capacity_keyword_is_the_old_spelling_of_slots():
    x, active = pattern()
    with pytest.warns(FutureWarning, match=r"compress\(slots=K\)") as record:
        old = compress(x, active, capacity=2)
    assert record[0].filename == __file__  # the warning points at the caller
    new = compress(x, active, slots=2)
    assert torch.equal(old.values, new.values) and old.slots == new.slots == 2
    with pytest.warns(FutureWarning, match=r"build_index\(slots=K\)"):
        assert build_index(active, capacity=2).slots == 2


def test_compress_refuses_a_fraction_or_both_spellings():
    x, active = pattern()
    with pytest.raises(ValueError, match=r"compress\(\) takes slots=K .*capacity_slots"):
        compress(x, active, capacity=0.5)
    with pytest.raises(TypeError, match="pass slots= alone"):
        compress(x, active, slots=2, capacity=2)


def test_compacted_old_attribute_names_warn_and_work():
    x, active = pattern()
    packed = compress(x, active, slots=3)
    with pytest.warns(FutureWarning, match=r"Compacted\.slots"):
        assert packed.capacity == packed.slots == 3
    with pytest.warns(FutureWarning, match=r"Compacted\.kept\(\)"):
        assert torch.equal(packed.active, packed.kept())
    with pytest.warns(FutureWarning, match=r"Compacted\.kept\(\)"):
        packed.active = None  # the old way to drop the flags: kept() rebuilds them
    assert torch.equal(packed.kept(), active & (active.cumsum(1) <= 3))
    with pytest.warns(FutureWarning, match=r"Compacted\(kept=\)"):
        by_hand = Compacted(packed.values, packed.mask, packed.positions, packed.counts, None,
                            packed.scatter_index, packed.seq_len, packed.layout, active=packed.kept())
    assert torch.equal(by_hand.kept(), packed.kept())


# routing: Routing.slots


def test_routing_slots_and_its_old_name():
    routing = TopKRouter(D, capacity=0.5)(torch.randn(2, 6, D))
    assert routing.slots == 3
    with pytest.warns(FutureWarning, match=r"Routing\.slots"):
        assert routing.capacity == 3
    with pytest.warns(FutureWarning, match=r"Routing\(slots=K\)"):
        old = Routing(routing.active, routing.gate, routing.logits, routing.probs, capacity=3)
    assert old.slots == 3


# sma: compaction_slots / compaction_capacity, eval_slots / eval_capacity


@pytest.mark.parametrize("kind", ["compaction", "eval"])
def test_an_int_capacity_is_the_old_spelling_of_slots(kind):
    with pytest.warns(FutureWarning, match=rf"an int {kind}_capacity .*renamed {kind}_slots"):
        old = sma(nn.Linear(D, D), dim=D, **{f"{kind}_capacity": 2})
    assert getattr(old, f"{kind}_slots") == 2 and getattr(old, f"{kind}_capacity") is None
    with pytest.raises(ValueError, match="not both"):
        sma(nn.Linear(D, D), dim=D, **{f"{kind}_slots": 2, f"{kind}_capacity": 0.5})


@pytest.mark.parametrize("budget,slots", [({"compaction_slots": 3}, 3), ({"compaction_capacity": 0.3}, 3),
                                          ({"compaction_capacity": 1.0}, 10)])
def test_slots_and_capacity_cap_the_forward(budget, slots):
    layer = all_routed(sma(nn.Linear(D, D), dim=D, **budget))
    layer(torch.randn(2, 10, D))
    assert layer.stats.counts.tolist() == [[slots, slots]]


def test_forward_and_step_read_the_budget_from_one_accessor(monkeypatch):
    layer = all_routed(sma(nn.Linear(D, D), dim=D)).eval()
    monkeypatch.setattr(type(layer), "_slot_budget", lambda self, seq_len: 2)
    x = torch.randn(2, 5, D)
    with torch.no_grad():
        y = layer(x)
        assert layer.stats.counts.tolist() == [[2, 2]]
        state, ys = layer.init_state(2), []
        for t in range(5):
            out, state = layer.step(x[:, t], state)
            ys.append(out)
    assert state["used"].tolist() == [[2, 2]]  # step honours the same budget
    torch.testing.assert_close(torch.stack(ys, 1), y)


def test_step_refuses_a_capacity_naming_the_slots_option():
    layer = sma(nn.Linear(D, D), dim=D, eval_capacity=0.5).eval()
    with pytest.raises(ValueError, match="give the budget as eval_slots"):
        layer.step(torch.randn(2, D), layer.init_state(2))


# sma.routed_modules (was .experts)


def test_experts_is_the_old_name_of_routed_modules():
    layer = sma({"a": nn.Linear(D, D), "b": nn.Linear(D, D)}, dim=D)
    with pytest.warns(FutureWarning, match=r"SparseModularActivation\.routed_modules"):
        assert layer.experts is layer.routed_modules
    assert not any(".experts." in k or k.startswith("experts.") for k in layer.state_dict())


def test_a_checkpoint_with_experts_keys_loads():
    torch.manual_seed(0)
    model = nn.Sequential(sma({"a": nn.Linear(D, D), "b": nn.Linear(D, D)}, dim=D))
    old = {k.replace("routed_modules.", "experts."): v.clone() for k, v in model.state_dict().items()}
    assert any(".experts.a." in k for k in old)
    torch.manual_seed(1)
    fresh = nn.Sequential(sma({"a": nn.Linear(D, D), "b": nn.Linear(D, D)}, dim=D))
    fresh.load_state_dict(old)  # strict: every old key lands on its new name
    x = torch.randn(2, 6, D)
    assert torch.equal(fresh(x), model(x))


# data: evaluate_listops (was evaluate)


def test_evaluate_is_the_old_name_of_evaluate_listops():
    import smakit.data as data
    from smakit.data import listops

    with pytest.warns(FutureWarning, match="evaluate_listops"):
        assert data.evaluate("[MAX 2 9 ]") == data.evaluate_listops("[MAX 2 9 ]") == 9
    with pytest.warns(FutureWarning, match="evaluate_listops"):
        from smakit.data import evaluate  # noqa: F401
    with pytest.warns(FutureWarning, match="evaluate_listops"):
        assert listops.evaluate is listops.evaluate_listops
    assert "evaluate" not in data.__all__


# inputs are checked once, at the public entry


def count_checks(monkeypatch):
    """Count every input check the forward can reach (sma, routers, compaction)."""
    calls = []

    def counting(module, name):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls.append((module.__name__, name))
            return real(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapper)

    for module in (sma_mod, threshold_mod, topk_mod):
        counting(module, "check_route_input")
    for module in (compaction, layout_mod):
        counting(module, "check_active")
    counting(compaction, "check_slots_layout")
    return calls


@pytest.mark.parametrize("router", ["threshold", "topk"])
def test_a_forward_checks_its_inputs_once(monkeypatch, router):
    layer = sma(nn.Linear(D, D), dim=D, router=router, compaction_slots=2 if router == "threshold" else None)
    calls = count_checks(monkeypatch)
    layer(torch.randn(2, 5, D), mask=torch.ones(2, 5, dtype=torch.bool))
    assert calls == [("smakit.sma", "check_route_input")]  # x and mask, nothing again inside
    if router == "threshold":  # top-k without its causal predictor cannot step
        calls.clear()
        layer.eval().step(torch.randn(2, D), layer.init_state(2))
        assert calls == []  # step checks at its own entry; the router does not repeat it


def test_a_bad_input_fails_once_at_the_entry_and_the_parts_still_check_alone():
    layer = sma(nn.Linear(D, D), dim=D, route_dim=3)
    with pytest.raises(ValueError, match=r"^x must have shape \[B, L, 4\], got \(2, 5, 3\)$") as err:
        layer(torch.randn(2, 5, 3), route_on=torch.randn(2, 5, 3))
    assert err.value.__context__ is None and err.value.__cause__ is None
    with pytest.raises(ValueError, match=r"^route_on must have shape \[B, L, 3\], got \(2, 5, 4\)$"):
        layer(torch.randn(2, 5, D), route_on=torch.randn(2, 5, D))
    with pytest.raises(TypeError, match="^mask must be a bool tensor"):
        layer(torch.randn(2, 5, D), route_on=torch.randn(2, 5, 3), mask=torch.ones(2, 5))
    # called directly, the router and the compaction are public entries and check themselves
    with pytest.raises(ValueError, match=r"^route_on must have shape \[B, L, 4\]"):
        ThresholdRouter(D)(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match=r"^active must have shape \[B, L\] = \(2, 5\)"):
        compress(torch.randn(2, 5, D), torch.ones(2, 4, dtype=torch.bool))


def test_budget_attributes_set_after_construction_keep_one_meaning():
    layer = sma(nn.Linear(8, 8), dim=8, layout="flat")
    layer.eval_capacity = 0.5
    assert (layer.eval_slots, layer.eval_capacity) == (None, 0.5)
    with pytest.warns(FutureWarning, match="eval_slots"):
        layer.eval_capacity = 2  # the old spelling of a slot count, not ceil(2 * L)
    assert (layer.eval_slots, layer.eval_capacity) == (2, None)
    layer.compaction_slots = 3
    assert layer._slot_budget(100) == 3
    layer.compaction_capacity = 0.25  # replaces the slot count
    assert (layer.compaction_slots, layer._slot_budget(100)) == (None, 25)
    with pytest.raises(ValueError, match="eval_slots must be a positive int"):
        layer.eval_slots = 0.5
    with pytest.raises(ValueError, match="compaction_capacity must be a fraction"):
        layer.compaction_capacity = 1.5


def test_seqboat_layer_takes_slots_and_warns_on_an_int_capacity():
    from smakit import SeqBoatLayer

    layer = SeqBoatLayer(8, causal=True, window=4, qk_dim=4, compaction_slots=3, eval_capacity=0.5)
    assert (layer.attn.compaction_slots, layer.attn.eval_capacity) == (3, 0.5)
    with pytest.warns(FutureWarning, match="compaction_slots"):
        old = SeqBoatLayer(8, causal=True, window=4, qk_dim=4, compaction_capacity=3)
    assert (old.attn.compaction_slots, old.attn.compaction_capacity) == (3, None)


def test_a_router_swapped_after_construction_is_called_as_it_declares():
    class Wrapped(nn.Module):  # a user's router: no ``dim``, no ``validate`` argument
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, mask=None):
            return self.inner(x, mask)

    layer = sma(nn.Linear(8, 8), dim=8)
    layer.router = Wrapped(layer.router)
    x = torch.randn(2, 5, 8)
    assert layer(x, route_on=x).shape == (2, 5, 8)
    layer.router = layer.router.inner  # and back: smakit's router again skips its own check
    assert layer._router_validates and layer(x).shape == (2, 5, 8)
