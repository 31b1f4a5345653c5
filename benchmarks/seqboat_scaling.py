"""CPU benchmark of one SeqBoat layer: fwd+bwd time and peak memory vs length, decode cost,
and the ablation variants side by side.

Run: ``python benchmarks/seqboat_scaling.py`` (``--quick`` for a smoke run).
Writes ``benchmarks/results/seqboat_scaling.{json,md,png}``.

* Time: median wall time of ``layer(x).sum().backward()`` (warm-up run first).
* Peak memory: the process's peak resident set size during one fwd+bwd, above the resident
  size just before it (Linux ``/proc/self/status`` ``VmHWM`` after resetting it through
  ``/proc/self/clear_refs``, with ``gc.collect()`` and glibc ``malloc_trim(0)`` before the
  baseline). It counts everything the run touches (activations, autograd buffers, the
  allocator's slack), not only torch's live tensors.
* Decode: mean time of ``layer.step`` per token after streaming a context of ``n`` tokens.

``--malloc-keep`` re-runs the script with glibc told to keep freed memory
(``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``/``MALLOC_TOP_PAD_``): by default glibc maps
every block over 32 MiB fresh from the kernel, so at long lengths system time for page
faults grows faster than the work; this is the allocator, not the algorithm.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import resource
import statistics
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from smakit.models import SeqBoatLayer, TransformerLayer  # noqa: E402

from common import RESULTS, machine, markdown_table, write  # noqa: E402

VARIANTS = {
    "seqboat": dict(mode="sparse"),
    "seqboat_full": dict(mode="always"),
    "mega_chunk": dict(mode="always", chunked=True),
    "ema_only": dict(mode="none"),
}

try:
    _libc = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc
    _libc = None


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_rss_mib(fn) -> float:
    """Peak resident memory above the current level while ``fn()`` runs, in MiB (Linux)."""
    gc.collect()
    if _libc is not None:
        _libc.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - base) / 1024


def median_ms(fn, repeats: int) -> tuple[float, float, float]:
    """Median ``(wall, cpu, sys)`` milliseconds of ``fn()`` after a warm-up run.

    CPU time (user + system of this process) is what one thread costs even when other jobs
    share the cores, where wall time also counts waiting. System time is mostly page faults
    on memory the allocator got fresh from the kernel (glibc maps blocks over its mmap
    threshold, at most 32 MiB, anew on each allocation).
    """
    fn()  # warm-up
    wall, cpu, sys_ = [], [], []
    for _ in range(repeats):
        t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        fn()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        wall.append(time.perf_counter() - t0)
        cpu.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
        sys_.append(r1.ru_stime - r0.ru_stime)
    return tuple(statistics.median(v) * 1e3 for v in (wall, cpu, sys_))


def make_layer(variant: str, dim: int, window: int, causal: bool = True):
    torch.manual_seed(0)
    if variant == "transformer":
        return TransformerLayer(dim, heads=4, causal=causal)
    return SeqBoatLayer(dim, causal=causal, window=window, **VARIANTS[variant])


def fwd_bwd(layer, B: int, L: int, dim: int, repeats: int) -> dict:
    x = torch.randn(B, L, dim, requires_grad=True)

    def run():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).sum().backward()

    ms, cpu_ms, sys_ms = median_ms(run, repeats)
    mem = peak_rss_mib(run)
    stats = layer.routing_stats  # a RoutingStats, also for the fixed-pattern variants
    return {"L": L, "ms": ms, "cpu_ms": cpu_ms, "sys_ms": sys_ms, "peak_mib": mem, "ratio": float(stats.ratio[0]),
            "span": float(stats.span[0])}


@torch.no_grad()
def decode_ms(layer, B: int, dim: int, contexts: list[int], steps: int, rounds: int = 7) -> dict:
    """Time of ``step`` per token right after streaming each context length.

    The states at every context are kept, and timed blocks of ``steps`` tokens alternate
    between them for ``rounds`` rounds (median per context), so a change in machine load
    hits all contexts alike.
    """
    layer.eval()
    torch.manual_seed(1)
    state, seen, states = layer.init_state(B), 0, {}
    for n in sorted(contexts):
        for _ in range(n - seen):
            _, state = layer.step(torch.randn(B, dim), state)
        seen, states[n] = n, state
    xs = torch.randn(steps, B, dim)
    wall = {n: [] for n in states}
    cpu = {n: [] for n in states}
    for _ in range(rounds):
        for n, s in states.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for t in range(steps):
                _, s = layer.step(xs[t], s)
            wall[n].append((time.perf_counter() - t0) / steps * 1e3)
            cpu[n].append((time.process_time() - c0) / steps * 1e3)
    layer.train()
    return {n: {"ms": statistics.median(wall[n]), "cpu_ms": statistics.median(cpu[n])} for n in states}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--malloc-keep", action="store_true", help="glibc keeps freed memory (see module doc)")
    args = parser.parse_args()
    if args.malloc_keep and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        os.environ.update(MALLOC_MMAP_THRESHOLD_=str(2**32), MALLOC_TRIM_THRESHOLD_=str(2**32),
                          MALLOC_TOP_PAD_=str(2**30))
        os.execv(sys.executable, [sys.executable, *sys.argv])
    torch.set_num_threads(args.threads)
    B, D, W = args.batch, args.dim, args.window
    lengths = [256, 512, 1024] if args.quick else [1024, 2048, 4096, 8192, 16384, 32768]
    variant_L = 512 if args.quick else 4096
    contexts = [64, 256] if args.quick else [256, 4096]
    decode_steps = 20 if args.quick else 100

    print(f"scaling: SeqBoatLayer D={D} B={B} window={W}, causal, fwd+bwd")
    layer = make_layer("seqboat", D, W)
    scaling = []
    for L in lengths:
        r = fwd_bwd(layer, B, L, D, repeats=3 if L <= 8192 else 2)
        scaling.append(r)
        print(f"  L={L:6d}  {r['ms']:9.1f} ms (cpu {r['cpu_ms']:9.1f}, sys {r['sys_ms']:8.1f})  peak {r['peak_mib']:8.1f} MiB  ratio {r['ratio']:.2f}  span {r['span']:.1f}")

    print(f"decode: per-token step time (B={B})")
    decode = decode_ms(make_layer("seqboat", D, W), B, D, contexts, decode_steps)
    for n, d in decode.items():
        print(f"  after {n:5d} tokens: {d['ms']:.3f} ms/token (cpu {d['cpu_ms']:.3f})")

    print(f"variants at L={variant_L}")
    variants = []
    for name in ["seqboat", "seqboat_full", "mega_chunk", "ema_only", "transformer"]:
        r = fwd_bwd(make_layer(name, D, W), B, variant_L, D, repeats=3)
        r["variant"] = name
        variants.append(r)
        print(f"  {name:13s} {r['ms']:9.1f} ms (cpu {r['cpu_ms']:9.1f})  peak {r['peak_mib']:8.1f} MiB  ratio {r['ratio']:.2f}  span {r['span']:.1f}")

    first = scaling[0]
    growth = {f"{first['L']}->{r['L']}": {"time_x": r["ms"] / first["ms"], "cpu_time_x": r["cpu_ms"] / first["cpu_ms"],
                                          "mem_x": r["peak_mib"] / first["peak_mib"]} for r in scaling[1:]}
    lo, hi = min(decode), max(decode)
    payload = {
        "machine": machine(), "dtype": "float32",
        "config": {"dim": D, "batch": B, "window": W, "causal": True, "threads": args.threads,
                   "malloc_keep": args.malloc_keep},
        "scaling": scaling, "growth": growth, "decode_ms_per_token": decode,
        "decode_ratio": decode[hi]["ms"] / decode[lo]["ms"],
        "decode_cpu_ratio": decode[hi]["cpu_ms"] / decode[lo]["cpu_ms"], "variants_L": variant_L, "variants": variants,
    }
    table = ["# SeqBoat layer scaling (CPU, float32)\n",
             f"{payload['machine']['device']}, torch {payload['machine']['torch']}, commit {payload['machine']['commit']}; "
             f"D={D}, B={B}, window={W}, causal, one layer, fwd+bwd"
             f"{', glibc keeps freed memory (--malloc-keep)' if args.malloc_keep else ''}.\n",
             markdown_table(["L", "wall ms", "CPU ms", "of which sys", "peak MiB", "attn ratio", "avg span"],
                            [[r["L"], r["ms"], r["cpu_ms"], r["sys_ms"], r["peak_mib"], r["ratio"], r["span"]]
                             for r in scaling]),
             f"\nDecode (step, B={B}): " + ", ".join(f"{d['ms']:.3f} ms/token wall ({d['cpu_ms']:.3f} CPU) after {n}"
                                                     for n, d in decode.items())
             + f"; ratio {payload['decode_ratio']:.2f}x wall, {payload['decode_cpu_ratio']:.2f}x CPU.\n",
             "\nFor reference, the official SeqBoat code (L x L position bias), as measured by the project on a 2-core CPU, "
             "same D/B, causal: 131 ms at 1K, 1.7 s at 4K, 7.1 s at 8K (54x from 1K to 8K), peak 0.34 -> 2.4 GB "
             "(not re-measured here).\n",
             f"\n## Variants at L={variant_L}\n",
             markdown_table(["variant", "wall ms", "CPU ms", "peak MiB", "attn ratio", "avg span"],
                            [[r["variant"], r["ms"], r["cpu_ms"], r["peak_mib"], r["ratio"], r["span"]] for r in variants]),
             "\nWall ms: median fwd+bwd wall time; CPU ms: median process CPU time of the same runs (robust to "
             "other jobs on a shared machine); peak MiB: peak RSS above the pre-run level (VmHWM reset via "
             "/proc/self/clear_refs). transformer = full multi-head attention + MLP (4 heads, rotary).\n"]
    name = "seqboat_scaling" + ("_malloc_keep" if args.malloc_keep else "") + ("_quick" if args.quick else "")
    path = write(name, payload, "\n".join(table))

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    Ls = [r["L"] for r in scaling]
    ax1.loglog(Ls, [r["ms"] for r in scaling], "o-", label="SeqBoat layer (wall)")
    ax1.loglog(Ls, [r["cpu_ms"] for r in scaling], "s-", label="SeqBoat layer (CPU)")
    ax1.loglog(Ls, [scaling[0]["ms"] * L / Ls[0] for L in Ls], "k--", lw=0.8, label="linear")
    ax1.set(xlabel="L", ylabel="fwd+bwd ms", title="time")
    ax2.loglog(Ls, [r["peak_mib"] for r in scaling], "o-", label="SeqBoat layer")
    ax2.loglog(Ls, [scaling[0]["peak_mib"] * L / Ls[0] for L in Ls], "k--", lw=0.8, label="linear")
    ax2.set(xlabel="L", ylabel="peak MiB", title="peak memory")
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"SeqBoat layer, CPU fp32, D={D}, B={B}, window={W}")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
