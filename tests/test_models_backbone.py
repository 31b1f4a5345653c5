"""One backbone: every model is a SequenceModel (same inputs, checks, pooling, stats, decoding);
checkpoints from before it load with identical outputs; the old names still work and warn."""

import importlib
import warnings
from pathlib import Path

import pytest
import torch

import smakit.models as models
from smakit.data import DatasetInfo
from smakit.models import (
    FeedForwardBlock,
    HybridSMA,
    SeqBoat,
    SequenceModel,
    SMATransformer,
    Transformer,
    TransformerLayer,
    generate,
)
from smakit.modules import SelfAttention

FIXTURE = Path(__file__).parent / "fixtures" / "pre_backbone_models.pt"
D = 16


def make(cls, **kw):
    """A small model of each class (the deprecated transformer variant without its warning)."""
    torch.manual_seed(0)
    small = {SeqBoat: dict(window=4, qk_dim=8, ema_ndim=2), Transformer: dict(heads=2),
             SMATransformer: dict(heads=2, mlp_hidden=24), HybridSMA: dict(heads=2, mlp_hidden=24)}[cls]
    return cls(dim=D, depth=2, **small, **kw)


CLASSES = [SeqBoat, Transformer, SMATransformer, HybridSMA]
ids = [c.__name__ for c in CLASSES]


# checkpoints from before the backbone (fixture written by tests/fixtures/make_pre_backbone_models.py)

def pre_backbone_cases():
    return torch.load(FIXTURE, weights_only=True) if FIXTURE.exists() else {}


@pytest.mark.parametrize("name", ["seqboat_lm", "seqboat_full_clf", "transformer_lm", "transformer_clf",
                                  "sma_transformer_lm", "hybrid_clf"])
def test_pre_backbone_checkpoint_loads_with_identical_outputs(name):
    case = pre_backbone_cases()[name]
    kwargs = case["kwargs"]
    builds = []
    if kwargs.get("variant") == "transformer":  # loads into the deprecated variant and into Transformer
        with pytest.warns(FutureWarning, match="Transformer"):
            builds.append(SeqBoat(**kwargs))
        opts = {k: v for k, v in kwargs.items() if k not in ("variant", "ffn_hidden")}
        builds.append(Transformer(**opts, mlp_hidden=kwargs.get("ffn_hidden")))
    else:
        builds.append(getattr(models, case["cls"])(**kwargs))
    for model in builds:
        model.load_state_dict(case["state"])  # strict
        with torch.no_grad():
            out = model.eval()(case["inputs"], case["mask"])
        torch.testing.assert_close(out, case["output"], rtol=1e-5, atol=1e-6)


def test_fixture_holds_the_old_key_layouts():
    """The fixture really is the old layout (else the test above would prove nothing)."""
    cases = pre_backbone_cases()
    assert any(k.startswith("embed.proj.") for k in cases["sma_transformer_lm"]["state"])
    assert any(k.startswith("norm.") for k in cases["hybrid_clf"]["state"])
    assert any(k.endswith(".qkv.weight") and ".attn." not in k for k in cases["transformer_lm"]["state"])
    assert "layers.0.proj.weight" in cases["transformer_clf"]["state"]


def test_old_transformer_layer_keys_load():
    torch.manual_seed(0)
    layer = TransformerLayer(D, heads=2).eval()
    old = {k.replace("attn.out.", "proj.").replace("attn.qkv.", "qkv."): v for k, v in layer.state_dict().items()}
    assert "proj.weight" in old and "qkv.bias" in old
    torch.manual_seed(1)
    fresh = TransformerLayer(D, heads=2).eval()
    fresh.load_state_dict(old)
    x = torch.randn(2, 7, D)
    assert torch.equal(fresh(x), layer(x))


# the transformer baseline

def test_transformer_is_the_deprecated_variant():
    with pytest.warns(FutureWarning, match=r"removed in 0\.3.*smakit\.models\.Transformer"):
        old = make(SeqBoat, vocab_size=20, lm=True, variant="transformer", heads=2, ffn_hidden=24)
    new = make(Transformer, vocab_size=20, lm=True, mlp_hidden=24)
    assert not any(isinstance(m, models.SeqBoatLayer) for m in old.modules())
    assert old.state_dict().keys() == new.state_dict().keys()
    for k, v in old.state_dict().items():  # same seed, same initialisation order
        assert torch.equal(new.state_dict()[k], v), k
    ids_ = torch.randint(0, 20, (2, 9))
    assert torch.equal(old(ids_), new(ids_))
    assert old.routing_stats() == new.routing_stats()


@pytest.mark.parametrize("recipe", ["transformer-charlm", "transformer-listops", "transformer-textclf"])
def test_transformer_recipes_build_the_transformer_class_with_unchanged_parameters(recipe):
    from smakit.train import load_recipe
    from smakit.train.build import build_model

    cfg = load_recipe(recipe, "cpu").model
    info = DatasetInfo("x", "lm", 30, 64, vocab_size=30) if "charlm" in recipe else \
        DatasetInfo("x", "classification", 5, 64, vocab_size=30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the recipes no longer go through the deprecated variant
        torch.manual_seed(0)
        model = build_model(info, cfg)
    assert type(model) is Transformer
    io = {"lm": True} if info.task == "lm" else {"n_classes": 5}
    torch.manual_seed(0)
    with pytest.warns(FutureWarning):
        old = SeqBoat(vocab_size=30, **io, **{k: v for k, v in cfg.items() if k != "arch"})
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in old.parameters())
    assert model.causal == old.causal and model.pooling == old.pooling


# old names

@pytest.mark.parametrize("path, name, new", [
    ("smakit.models.model", "SeqBoat", SeqBoat), ("smakit.models.baselines", "TransformerLayer", TransformerLayer),
    ("smakit.models.baselines", "FeedForwardBlock", FeedForwardBlock),
    ("smakit.models.sma_transformer", "SMATransformer", SMATransformer),
    ("smakit.models.sma_transformer", "HybridSMA", HybridSMA),
    ("smakit.models.sma_transformer", "SelfAttention", SelfAttention)])
def test_old_module_paths_still_import_and_warn(path, name, new):
    module = importlib.import_module(path)
    with pytest.warns(FutureWarning, match=r"moved to .*removed in 0\.3"):
        assert getattr(module, name) is new
    assert not hasattr(module, "NoSuchName")


def test_self_attention_lives_in_modules():
    assert models.SelfAttention is SelfAttention
    assert SelfAttention.__module__ == "smakit.modules.self_attention"


# every model is a SequenceModel

@pytest.mark.parametrize("cls", CLASSES, ids=ids)
def test_every_model_is_one_backbone(cls):
    model = make(cls, vocab_size=20, lm=True)
    assert isinstance(model, SequenceModel)
    assert {n.split(".")[0] for n, _ in model.named_parameters()} == {"embed", "layers", "final_norm", "head"}
    assert model.supports_step == (cls is SeqBoat)  # attention without a KV cache re-runs the forward
    tokens = torch.randint(0, 20, (2, 11))
    assert model(tokens).shape == (2, 11, 20)
    assert isinstance(model.aux_loss(), torch.Tensor)
    with torch.no_grad():
        assert torch.equal(generate(model.eval(), tokens[:, :4], 3, temperature=0)[:, 4],
                           model(tokens[:, :4])[:, -1].argmax(-1))


@pytest.mark.parametrize("cls", CLASSES, ids=ids)
@pytest.mark.parametrize("pooling", ["mean", "last", "max"])
def test_pooled_classifier_reads_only_real_tokens(cls, pooling):
    model = make(cls, input_dim=3, n_classes=4, pooling=pooling).eval()
    mask = torch.arange(10) < torch.tensor([[10], [6]])
    x = torch.where(mask[..., None], torch.randn(2, 10, 3), 9.0)  # garbage in the padding
    with torch.no_grad():
        torch.testing.assert_close(model(x, mask)[1:], model(x[1:, :6]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls", CLASSES, ids=ids)
def test_empty_batch_or_sequence(cls):
    lm = make(cls, vocab_size=20, lm=True)
    assert lm(torch.zeros(0, 5, dtype=torch.long)).shape == (0, 5, 20)
    assert lm(torch.zeros(2, 0, dtype=torch.long)).shape == (2, 0, 20)
    for pooling in ("mean", "last", "max"):
        clf = make(cls, vocab_size=20, n_classes=3, pooling=pooling)
        assert clf(torch.zeros(2, 0, dtype=torch.long)).shape == (2, 3)


@pytest.mark.parametrize("cls", CLASSES, ids=ids)
def test_meta_device_is_a_clear_error(cls):
    with torch.device("meta"):
        model = make(cls, vocab_size=20, lm=True)
    with pytest.raises(RuntimeError, match="meta device"):
        model(torch.zeros(1, 4, dtype=torch.long, device="meta"))


@pytest.mark.parametrize("cls", CLASSES, ids=ids)
def test_routing_stats_keys(cls):
    model = make(cls, vocab_size=20, n_classes=2)
    model(torch.randint(0, 20, (2, 12)))
    stats = model.routing_stats()
    if cls in (SeqBoat, Transformer):  # one entry per attention layer
        assert set(stats) == {"ratio", "span"} and len(stats["ratio"]) == 2
    else:  # one entry per routed sma block
        assert set(stats) == {"ratio", "per_module"} and len(stats["per_module"]) == 2
    assert all(isinstance(r, float) for r in stats["ratio"])


@pytest.mark.parametrize("cls", CLASSES, ids=ids)
@pytest.mark.parametrize("inputs, mask, error, match", [
    (torch.randn(2, 5), None, ValueError, r"inputs must be \[B, L\] integer token ids, got shape \(2, 5\)"),
    (torch.zeros(2, 5, 1, dtype=torch.long), None, ValueError, r"inputs must be \[B, L\] integer"),
    ("abc", None, TypeError, r"inputs must be a Tensor of \[B, L\] integer token ids, got str"),
    (torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 5), TypeError, r"mask must be a bool Tensor"),
    (torch.zeros(2, 5, dtype=torch.long), torch.ones(5, 2, dtype=torch.bool), ValueError,
     r"mask must have shape \[B, L\] = \(2, 5\), got \(5, 2\)"),
], ids=["float-ids", "rank3-ids", "str", "float-mask", "mask-shape"])
def test_bad_input_is_one_clear_error(cls, inputs, mask, error, match):
    with pytest.raises(error, match=match):
        make(cls, vocab_size=20, n_classes=2)(inputs, mask)


def test_bad_feature_input():
    with pytest.raises(ValueError, match=r"inputs must be \[B, L, 3\] float features, got shape \(2, 5, 4\)"):
        make(Transformer, input_dim=3, n_classes=2)(torch.randn(2, 5, 4))


@pytest.mark.parametrize("cls", CLASSES, ids=ids)
def test_constructor_errors(cls):
    with pytest.raises(ValueError, match="vocab_size"):
        make(cls, n_classes=2)
    with pytest.raises(ValueError, match="exactly one head"):
        make(cls, vocab_size=10)
    with pytest.raises(ValueError, match="causal"):
        make(cls, vocab_size=10, lm=True, causal=False)
    with pytest.raises(ValueError, match="pooling"):
        make(cls, vocab_size=10, n_classes=2, pooling="first")


def test_sequence_model_of_any_layers_decodes():
    torch.manual_seed(0)
    model = SequenceModel([FeedForwardBlock(D, 24), FeedForwardBlock(D, 24)], D, vocab_size=12, lm=True,
                          tie_embeddings=True).eval()
    assert model.head.weight is model.embed.weight
    ids_ = torch.randint(0, 12, (2, 6))
    with torch.no_grad():
        logits, state = model.prefill(ids_)
        torch.testing.assert_close(logits, model(ids_))
        stepped = model.init_state(2)
        for t in range(6):
            out, stepped = model.step(ids_[:, t], stepped)
        torch.testing.assert_close(out, logits[:, -1])
    not_causal = SequenceModel([FeedForwardBlock(D)], D, vocab_size=12, n_classes=2)
    with pytest.raises(RuntimeError, match="causal"):
        not_causal.init_state(1)
