"""Train-step speed of SeqBoat and its variants at every length, and against a forced activation ratio.

Run: ``python benchmarks/speed.py`` (``--quick`` for a smoke run, ~1-2 minutes).
Writes ``benchmarks/results/speed.{json,md,png}`` (``speed_quick.*`` with ``--quick``) and
prints whether each goal of issue 10 holds.

Shapes: the ListOps CPU preset's model (d 64, 2 bidirectional layers, q/k 32, value 128,
rotary embedding and the recipe's Fourier relative bias at the original positions;
``--relative-bias buckets`` measures the bucket table, ``none`` rotary alone) with window 128, batch 32, token input, padding (row lengths uniform in
``[L/2, L]``), a classification loss; one step = zero_grad + forward + loss + backward
(no optimizer).

* Variants (``SeqBoat``: free router at init; ``SeqBoat-full``; ``Mega-chunk``; ``EMA-only``;
  ``Transformer``: full attention + MLP, 4 heads) are timed interleaved, round-robin, one
  step each per round (the order rotating each round), after a warm-up step; the median
  wall time over rounds is reported with its spread (min-max), so a change in machine load
  hits every variant alike.
* Forced activation ratio ``r``: each layer's router is wrapped by :class:`FixedRatioRouter`
  (benchmark only), which runs the real router (its cost is kept) and then activates a
  fixed random ``round(r * n_real)`` tokens of every row, gated by the router probability.
* Goals: SeqBoat-full <= 2x Transformer at L=128 and faster than it from L=1024 up; at
  ratio ``r``, SeqBoat <= EMA-only + r (SeqBoat-full - EMA-only) + 0.1 SeqBoat-full
  (L = 1K and 4K, r = 0.1/0.25/0.5/1.0). Every ratio compares numbers from the same rounds.
* The r sweep runs the same number of rounds at every length (``--rounds`` + 2; a 4K step
  varies most) after two warm-up steps per model, and also reports the *paired* ratio: the
  median over rounds of SeqBoat / budget computed within each round, which a load change
  between rounds does not move. The goal verdict stays on the medians.
* ``--malloc heap`` (opt-in, glibc): keep freed memory in the process; at L=4K the default
  allocator takes over 100k page faults a step, a large and machine-state dependent share of it.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import dataclasses
import os
import statistics
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from smakit.models import SeqBoat, Transformer  # noqa: E402

from common import RESULTS, machine, markdown_table, write  # noqa: E402

VARIANTS = ("seqboat", "seqboat_full", "mega_chunk", "ema_only", "transformer")
NAMES = {"seqboat": "SeqBoat", "seqboat_full": "SeqBoat-full", "mega_chunk": "Mega-chunk",
         "ema_only": "EMA-only", "transformer": "Transformer"}
# the seqboat-listops recipe's cpu preset: rotary and the Fourier relative bias (--relative-bias changes it)
SHAPES = dict(vocab_size=16, dim=64, depth=2, n_classes=10, causal=False, window=128, qk_dim=32, value_dim=128,
              relative_bias="fourier")
BIAS_SUFFIX = {"fourier": "", "buckets": "_buckets", "none": "_rotary"}  # results file of each --relative-bias
BIAS_WORDS = {"fourier": "rotary and Fourier relative bias", "buckets": "rotary and bucketed relative bias",
              "none": "rotary alone"}
RATIOS = (0.1, 0.25, 0.5, 1.0)


class FixedRatioRouter(nn.Module):
    """Benchmark-only wrapper: run ``router``, then activate a fixed random fraction of each row.

    Every row gets ``round(ratio * n_real)`` active tokens (at least 1 when ``ratio > 0``),
    chosen once per batch (mask tensor) with a fixed seed, so every step routes alike. The
    gate is the wrapped router's probability of the module (its gradient path is kept).

    Args:
        router (nn.Module): a single-module router returning :class:`smakit.Routing`.
        ratio (float): fraction of real tokens to activate, in ``[0, 1]``.
        seed (int): seed of the random choice. Default: 0.
    """

    def __init__(self, router: nn.Module, ratio: float, seed: int = 0):
        super().__init__()
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must be in [0, 1], got {ratio}")
        self.router, self.ratio, self.seed = router, ratio, seed
        self._cached = None

    def _choose(self, x: Tensor, mask: Tensor | None) -> Tensor:
        B, L = x.shape[:2]
        real = torch.ones(B, L, dtype=torch.bool, device=x.device) if mask is None else mask
        g = torch.Generator(device="cpu").manual_seed(self.seed)
        noise = torch.rand(B, L, generator=g).to(x.device).masked_fill(~real, 2.0)  # padding sorts last
        rank = noise.argsort(-1).argsort(-1)
        keep = (real.sum(-1, keepdim=True) * self.ratio).round().clamp(min=1 if self.ratio > 0 else 0)
        return ((rank < keep) & real).unsqueeze(0)  # [1, B, L]

    def forward(self, x: Tensor, mask: Tensor | None = None):
        routing = self.router(x, mask)
        if self._cached is None or self._cached[0] is not mask or self._cached[1].shape[1:] != x.shape[:2]:
            self._cached = (mask, self._choose(x, mask))  # chosen once per batch: no sorting in the timed steps
        active = self._cached[1]
        gate = torch.where(active, routing.module_probs(), 0.0)
        return dataclasses.replace(routing, active=active, gate=gate)


def make_model(variant: str, ratio: float | None = None) -> nn.Module:
    torch.manual_seed(0)
    if variant == "transformer":  # the dense baseline (what SeqBoat(variant="transformer") built)
        return Transformer(**{k: SHAPES[k] for k in ("vocab_size", "dim", "depth", "n_classes", "causal")})
    model = SeqBoat(variant=variant, **SHAPES)
    if ratio is not None:
        for layer in model.layers:
            layer.attn.router = FixedRatioRouter(layer.attn.router, ratio)
    return model


def make_batch(B: int, L: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, SHAPES["vocab_size"], (B, L), generator=g)
    lengths = torch.randint(L // 2, L + 1, (B,), generator=g)
    lengths[0] = L
    mask = torch.arange(L) < lengths[:, None]
    return tokens * mask, mask, torch.randint(0, SHAPES["n_classes"], (B,), generator=g)


def train_step(model: nn.Module, batch) -> None:
    tokens, mask, labels = batch
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(tokens, mask), labels).backward()


def interleaved(models: dict, batch, rounds: int, metric: str = "wall", warmup: int = 1) -> dict[str, dict]:
    """Median ms of one train step per model, timed round-robin after a warm-up.

    Every round times each model once; the order rotates by one model per round, so no
    model always runs after the same one (a neighbour that frees or touches a lot of memory
    changes the next step's page faults). ``ms`` is the median of ``metric`` (``"wall"`` or
    ``"cpu"``: process CPU time, which on a loaded machine with one thread does not count
    waiting); both are kept, with every round's value and the spread (min, max).
    """
    for _ in range(warmup):
        for m in models.values():
            train_step(m, batch)
    names = list(models)
    wall = {k: [] for k in models}
    cpu = {k: [] for k in models}
    for r in range(rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            t0, c0 = time.perf_counter(), time.process_time()
            train_step(models[k], batch)
            wall[k].append((time.perf_counter() - t0) * 1e3)
            cpu[k].append((time.process_time() - c0) * 1e3)
    out = {}
    for k, m in models.items():
        stats = m.routing_stats()
        ratio = statistics.fmean(stats["ratio"]) if stats["ratio"] else 1.0
        w, c = statistics.median(wall[k]), statistics.median(cpu[k])
        samples = cpu[k] if metric == "cpu" else wall[k]
        out[k] = {"ms": c if metric == "cpu" else w, "metric": metric, "wall_ms": w, "cpu_ms": c, "ratio": ratio,
                  "min_ms": min(samples), "max_ms": max(samples),
                  "wall_samples": [round(x, 1) for x in wall[k]], "cpu_samples": [round(x, 1) for x in cpu[k]]}
    return out


def rounds_at(rounds: int, L: int) -> int:
    """Fewer rounds at the longest lengths, where one Transformer step takes seconds."""
    return max(3, rounds - (4 if L >= 4096 else 2 if L >= 2048 else 0))


def keep_heap_memory() -> None:
    """glibc only: serve every allocation from the heap and never give it back (``mallopt``).

    By default glibc maps each allocation above its threshold (at most 32 MiB) freshly from the
    kernel and unmaps it on free, so every step at L=4K takes over 100k page faults (the kernel
    zeroing gigabytes), whose cost varies with the machine's memory state. Here mmap is off
    (``M_MMAP_MAX`` 0: an ``M_MMAP_THRESHOLD`` above 32 MiB is silently ignored) and the heap
    is never trimmed (``M_TRIM_THRESHOLD`` the largest ``int``; mallopt takes an ``int``), so
    after the warm-up steps a step takes almost none. Opt-in (``--malloc heap``): it changes
    absolute times.
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    if not (libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)):
        raise RuntimeError("mallopt failed: --malloc heap needs glibc")


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def paired_ratio(row: dict, key: str, r: float) -> float:
    """Median over rounds of ``row[key]`` / budget, both from the same round (the metric's samples)."""
    s, full, ema = (row[k][f"{row[key]['metric']}_samples"] for k in (key, "seqboat_full", "ema_only"))
    return statistics.median(x / (e + r * (f - e) + 0.1 * f) for x, f, e in zip(s, full, ema))


def check_goals(table: dict, sweep: dict) -> list[dict]:
    goals = []
    t128 = table.get(128)
    if t128:
        full, tr = t128["seqboat_full"]["ms"], t128["transformer"]["ms"]
        goals.append({"goal": "SeqBoat-full <= 2x Transformer at L=128", "value": full / tr, "limit": 2.0,
                      "holds": full <= 2 * tr})
    for L, row in sorted(table.items()):
        if L >= 1024:
            full, tr = row["seqboat_full"]["ms"], row["transformer"]["ms"]
            goals.append({"goal": f"SeqBoat-full < Transformer at L={L}", "value": full / tr, "limit": 1.0,
                          "holds": full < tr})
    for L, row in sorted(sweep.items()):
        full, ema = row["seqboat_full"]["ms"], row["ema_only"]["ms"]
        for r in RATIOS:
            got = row[f"r={r}"]["ms"]
            limit = ema + r * (full - ema) + 0.1 * full
            goals.append({"goal": f"SeqBoat at r={r} <= budget at L={L}", "value": got / limit, "limit": 1.0,
                          "holds": got <= limit, "ms": got, "budget_ms": limit, "L": L, "r": r,
                          "paired": paired_ratio(row, f"r={r}", r)})
    return goals


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer lengths and rounds (smoke run)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=None,
                        help="timed rounds per length up to 1K (default 9, quick 3); 2 fewer at 2K, 4 fewer at 4K; "
                             "the r sweep runs this + 2 at every length")
    parser.add_argument("--metric", choices=["wall", "cpu"], default="wall",
                        help="wall (default) or process CPU time (with --threads 1 on a loaded machine)")
    parser.add_argument("--malloc", choices=["system", "heap"], default="system",
                        help="heap: keep freed memory in the process (no page faults per step; glibc only)")
    parser.add_argument("--relative-bias", choices=list(BIAS_SUFFIX), default="fourier",
                        help="fourier: the recipe's (extra query/key features, per token); buckets: a table read "
                             "per query-key pair, written to speed_buckets.*; none: rotary alone, speed_rotary.*")
    args = parser.parse_args()
    SHAPES["relative_bias"] = {"none": False}.get(args.relative_bias, args.relative_bias)
    if args.malloc == "heap":
        keep_heap_memory()
    torch.set_num_threads(args.threads)
    B = args.batch
    lengths = [128, 256, 1024] if args.quick else [128, 256, 512, 1024, 2048, 4096]
    sweep_lengths = [1024] if args.quick else [1024, 4096]
    rounds = args.rounds or (3 if args.quick else 9)
    load_before, t_start = load(), time.perf_counter()
    print(f"speed: B={B}, {SHAPES}, threads={args.threads}, malloc {args.malloc}, load {load_before}")

    table = {}
    for L in lengths:
        models = {v: make_model(v) for v in VARIANTS}
        table[L] = interleaved(models, make_batch(B, L), rounds_at(rounds, L), args.metric)
        print(f"  L={L:5d} " + "  ".join(f"{NAMES[v]} {table[L][v]['ms']:8.1f}" for v in VARIANTS)
              + f"  (SeqBoat ratio {table[L]['seqboat']['ratio']:.2f}, load {load()})")

    sweep = {}
    for L in sweep_lengths:
        models = {"seqboat_full": make_model("seqboat_full"), "ema_only": make_model("ema_only")}
        models.update({f"r={r}": make_model("seqboat", r) for r in RATIOS})
        sweep[L] = interleaved(models, make_batch(B, L), rounds + 2, args.metric, warmup=2)
        print(f"  r sweep L={L}: "
              + "  ".join(f"{k} {v['ms']:.1f} (ratio {v['ratio']:.2f})" for k, v in sweep[L].items()))

    goals = check_goals(table, sweep)
    for g in goals:
        paired = f", paired {g['paired']:.2f}" if "paired" in g else ""
        print(f"  [{'holds' if g['holds'] else 'FAILS'}] {g['goal']}: {g['value']:.2f} (limit {g['limit']}{paired})")
    load_after = load()
    info = machine()
    payload = {"machine": info, "dtype": "float32", "batch": B, "shapes": SHAPES, "threads": args.threads,
               "metric": args.metric, "malloc": args.malloc,
               "rounds": rounds, "load_before": load_before, "load_after": load_after,
               "seconds": time.perf_counter() - t_start,
               "variants": {str(L): row for L, row in table.items()},
               "ratio_sweep": {str(L): row for L, row in sweep.items()}, "goals": goals}
    # a run with the heap allocator is kept beside the default one, not in its place
    name = (("speed_quick" if args.quick else "speed") + ("_heap" if args.malloc == "heap" else "")
            + BIAS_SUFFIX[args.relative_bias])
    md = ["# Train-step speed (CPU, float32)\n",
          f"{info['device']}, torch {info['torch']}, commit {info['commit']}; load average (1/5/15 min) "
          f"{load_before} before, {load_after} after; B={B}, d 64, 2 bidirectional layers, q/k 32, value 128, "
          f"window 128, padding, {BIAS_WORDS[args.relative_bias]}; "
          f"{args.threads} thread(s); malloc {args.malloc}; median {args.metric} ms of "
          "zero_grad + forward + loss + "
          f"backward over {rounds} interleaved rounds ({rounds_at(rounds, 2048)} at 2K, {rounds_at(rounds, 4096)} at 4K; "
          f"{rounds + 2} at every length in the r sweep, after 2 warm-up steps), order rotating each round; "
          f"cells: median (min-max) "
          f"(`python {' '.join(['benchmarks/speed.py', *sys.argv[1:]])}`).\n",
          "## Variants\n",
          markdown_table(["L", *(NAMES[v] for v in VARIANTS), "Full / Transformer", "SeqBoat ratio"],
                         [[L, *(f"{row[v]['ms']:.0f} ({row[v]['min_ms']:.0f}-{row[v]['max_ms']:.0f})" for v in VARIANTS),
                           row["seqboat_full"]["ms"] / row["transformer"]["ms"], row["seqboat"]["ratio"]]
                          for L, row in table.items()]),
          "\n## Forced activation ratio\n",
          markdown_table(["L", "r", "SeqBoat ms", "budget ms", "SeqBoat-full ms", "EMA-only ms",
                          "SeqBoat / budget", "paired", "holds"],
                         [[g["L"], g["r"], f"{g['ms']:.0f}", f"{g['budget_ms']:.0f}",
                           f"{sweep[g['L']]['seqboat_full']['ms']:.0f}", f"{sweep[g['L']]['ema_only']['ms']:.0f}",
                           f"{g['value']:.2f}", f"{g['paired']:.2f}",
                           "yes" if g["holds"] else "NO"] for g in goals if "r" in g]),
          "\nBudget = EMA-only + r (SeqBoat-full - EMA-only) + 0.1 SeqBoat-full, from the same rounds. "
          "Paired: median over rounds of SeqBoat / budget within each round (information; the verdict "
          "uses the medians).\n",
          "\n## Goals\n",
          markdown_table(["goal", "measured / limit", "holds"],
                         [[g["goal"], f"{g['value']:.2f} / {g['limit']}", "yes" if g["holds"] else "NO"] for g in goals])]
    path = write(name, payload, "\n".join(md))

    fig, axes = plt.subplots(1, 1 + len(sweep), figsize=(5 * (1 + len(sweep)), 4))
    ax = axes[0]
    Ls = list(table)
    for v in VARIANTS:
        ax.plot(Ls, [table[L][v]["ms"] for L in Ls], "o-", label=NAMES[v])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(Ls, [str(L) for L in Ls])
    ax.minorticks_off()
    ax.set(xlabel="L", ylabel=f"train step ms (median {args.metric})", title=f"variants, B={B}")
    ax.legend(fontsize=8)
    for ax, (L, row) in zip(axes[1:], sweep.items()):
        full, ema = row["seqboat_full"]["ms"], row["ema_only"]["ms"]
        rs = [0.0, *RATIOS]
        ax.plot(RATIOS, [row[f"r={r}"]["ms"] for r in RATIOS], "o-", label="SeqBoat, forced r")
        ax.plot(rs, [ema + r * (full - ema) + 0.1 * full for r in rs], "k--", label="goal (budget)")
        ax.axhline(full, color="C1", lw=0.8, label="SeqBoat-full")
        ax.axhline(ema, color="C3", lw=0.8, label="EMA-only")
        ax.set(xlabel="activation ratio r", ylabel="train step ms", title=f"L={L}", ylim=(0, None))
        ax.legend(fontsize=8)
    for a in axes:
        a.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"SeqBoat train step, CPU fp32, {args.threads} thread(s), {args.metric} time, "
                 f"load {load_before} -> {load_after}")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=110)
    held = sum(g["holds"] for g in goals)
    print(f"{held}/{len(goals)} goals hold; wrote {path} in {payload['seconds']:.0f} s")


if __name__ == "__main__":
    main()
