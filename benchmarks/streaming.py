"""Streaming benchmark: parallel prefill against one forward, and decode speed against context.

Run: ``python benchmarks/streaming.py`` (``--quick`` for a smoke run).
Writes ``benchmarks/results/streaming.{json,md,png}``.

Three byte-level decoders at the CPU-preset char-LM size (``dim=64``, two layers):

* ``seqboat``: :class:`~smakit.models.SeqBoat` (routed local attention). Prefill is
  :meth:`SeqBoat.prefill`; decode is :meth:`SeqBoat.step` (``O(window)`` per token).
* ``gpt2-sma-topk``: a Hugging Face GPT-2 built from a config, every MLP behind
  ``sma_wrap(..., router="topk", capacity=0.5, causal_predictor=True)``; prefill is its
  forward with ``use_cache=True``, decode one token with the KV cache.
* ``transformer``: :class:`~smakit.models.Transformer`, which has no cache: ``generate``
  re-runs the forward on the whole sequence for each new token.

All times are medians (``torch.utils.benchmark``, warm-up first) measured in one process,
so the ratios compare like with like; the absolute numbers depend on the machine's load.
The headline ratio is ``generate(prompt of 4,096 tokens, 32 new tokens)`` over one forward
on the prompt.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import torch  # noqa: E402

from smakit.models import SeqBoat, Transformer, generate  # noqa: E402

from common import RESULTS, machine, markdown_table, time_ms, write  # noqa: E402

VOCAB = 256
SIZE = dict(dim=64, depth=2, qk_dim=32, value_dim=128, window=32, ffn_hidden=128)
NEW_TOKENS = 32
GENERATE_UNCACHED_UP_TO = 1024  # the cacheless transformer's generate is 32 forwards: measured up to here


def seqboat(variant: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if variant == "transformer":
        return Transformer(vocab_size=VOCAB, lm=True, dim=64, depth=2, heads=4, mlp_hidden=128).eval()
    return SeqBoat(vocab_size=VOCAB, lm=True, variant=variant, **SIZE).eval()


def gpt2_topk(max_len: int):
    import transformers

    from smakit.integrations import sma_wrap

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=max_len, n_embd=64, n_layer=2, n_head=4,
                                  n_inner=128, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(cfg)
    sma_wrap(model, "transformer.h.*.mlp", router="topk", capacity=0.5, causal_predictor=True)
    return model.eval()


def decode_ms(step, state, token, n: int = 16, repeats: int = 5) -> float:
    """Median over ``repeats`` of the mean time per token of ``n`` steps, the state carried on
    (a Hugging Face cache grows in place; the context grows by ``n * repeats`` tokens)."""
    times = []
    token, state = step(token, state)  # warm-up
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            token, state = step(token, state)
        times.append((time.perf_counter() - start) * 1e3 / n)
    return statistics.median(times)


def bench_seqboat(name: str, model, lengths: list[int], run_time: float) -> list[dict]:
    rows = []
    for T in lengths:
        prompt = torch.randint(0, VOCAB, (1, T))
        with torch.no_grad():
            fwd = time_ms(lambda: model(prompt), run_time)
            row = {"model": name, "tokens": T, "forward_ms": fwd}
            if model.supports_step:
                row["prefill_ms"] = time_ms(lambda: model.prefill(prompt), run_time)
                _, state = model.prefill(prompt)
                tok = torch.zeros(1, dtype=torch.long)

                def step(t, s):
                    logits, s = model.step(t, s)
                    return logits.argmax(-1), s

                row["decode_ms_per_token"] = decode_ms(step, state, tok)
            else:  # no cache: each new token is one forward over the sequence
                row["prefill_ms"] = fwd
                row["decode_ms_per_token"] = fwd
            row["generate_ms"] = None
            if model.supports_step or T <= GENERATE_UNCACHED_UP_TO:
                row["generate_ms"] = time_ms(lambda: generate(model, prompt, NEW_TOKENS, temperature=0), run_time)
        row["prefill_over_forward"] = row["prefill_ms"] / fwd
        row["generate_over_forward"] = None if row["generate_ms"] is None else row["generate_ms"] / fwd
        rows.append(row)
        print(row, flush=True)
    return rows


def bench_gpt2(lengths: list[int], run_time: float) -> list[dict]:
    model = gpt2_topk(max(lengths) + 256)  # room for the decode steps past the prompt
    rows = []
    for T in lengths:
        prompt = torch.randint(0, VOCAB, (1, T))
        with torch.no_grad():
            fwd = time_ms(lambda: model(prompt, use_cache=False).logits, run_time)
            pre = time_ms(lambda: model(prompt, use_cache=True).logits, run_time)
            out = model(prompt, use_cache=True)

            def step(t, s):
                o = model(t, past_key_values=s, use_cache=True)
                return o.logits[:, -1:].argmax(-1), o.past_key_values

            dec = decode_ms(step, out.past_key_values, torch.zeros(1, 1, dtype=torch.long))
            gen = time_ms(lambda: model.generate(prompt, max_new_tokens=NEW_TOKENS, do_sample=False,
                                                 min_new_tokens=NEW_TOKENS, pad_token_id=0), run_time)
        row = {"model": "gpt2-sma-topk", "tokens": T, "forward_ms": fwd, "prefill_ms": pre,
               "decode_ms_per_token": dec, "generate_ms": gen, "prefill_over_forward": pre / fwd,
               "generate_over_forward": gen / fwd}
        rows.append(row)
        print(row, flush=True)
    return rows


def plot(rows: list[dict], path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    panels = [("prefill_over_forward", "prefill / one forward", "Prompt: prefill"),
              ("generate_over_forward", f"generate({NEW_TOKENS} new) / one forward", "Prompt + 32 tokens"),
              ("decode_tokens_per_s", "decode tokens / s", "Decode speed")]
    lengths = sorted({r["tokens"] for r in rows})
    for ax, (key, label, title) in zip(axes, panels):
        for name in dict.fromkeys(r["model"] for r in rows):
            rs = [r for r in rows if r["model"] == name]
            vals = [1e3 / r["decode_ms_per_token"] if key == "decode_tokens_per_s" else r[key] for r in rs]
            pts = [(r["tokens"], v) for r, v in zip(rs, vals) if v is not None]
            ax.plot(*zip(*pts), marker="o", label=name)
        if key != "decode_tokens_per_s":
            ax.axhline(3 if key == "generate_over_forward" else 1, color="grey", ls="--", lw=1)
        ax.set(xscale="log", yscale="linear" if key == "prefill_over_forward" else "log",
               xlabel="prompt / context tokens", ylabel=label, title=title)
        ax.set_xticks(lengths, [str(t) for t in lengths])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two short lengths, short timing runs")
    parser.add_argument("--replot", action="store_true", help="redraw the PNG from the saved JSON")
    args = parser.parse_args(argv)
    if args.replot:
        plot(json.loads((RESULTS / "streaming.json").read_text())["rows"], RESULTS / "streaming.png")
        return 0
    lengths = [512, 1024] if args.quick else [512, 1024, 2048, 4096, 8192]
    run_time = 0.05 if args.quick else 0.2
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    rows = bench_seqboat("seqboat", seqboat("seqboat"), lengths, run_time)
    rows += bench_gpt2(lengths, run_time)
    rows += bench_seqboat("transformer", seqboat("transformer"), lengths, run_time)
    env = machine() | {"load_average": os.getloadavg(), "size": SIZE, "new_tokens": NEW_TOKENS}
    header = ["model", "tokens", "forward ms", "prefill ms", "prefill / forward", f"generate({NEW_TOKENS}) ms",
              "generate / forward", "decode tokens/s"]
    table = markdown_table(header, [[r["model"], r["tokens"], r["forward_ms"], r["prefill_ms"],
                                     r["prefill_over_forward"], r["generate_ms"] or "-", r["generate_over_forward"] or "-",
                                     1e3 / r["decode_ms_per_token"]] for r in rows])
    at = max(t for t in lengths if t <= 4096)
    headline = {r["model"]: {"tokens": at, "generate_over_forward": r["generate_over_forward"],
                             "prefill_over_forward": r["prefill_over_forward"]}
                for r in rows if r["tokens"] == at}
    note = (f"Device: {env['device']}, torch {env['torch']}, commit {env['commit']}, load average "
            f"{env['load_average'][0]:.1f}. Batch 1, byte vocabulary, float32.\n\n")
    name = "streaming_quick" if args.quick else "streaming"
    write(name, {"machine": env, "headline": headline, "rows": rows}, note + table)
    plot(rows, RESULTS / f"{name}.png")
    print(note + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
