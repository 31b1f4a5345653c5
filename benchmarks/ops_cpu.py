"""CPU benchmark of the core: compaction ops vs a naive scatter-into-zeros, sma(mlp) vs dense.

Run: ``python benchmarks/ops_cpu.py`` (add ``--quick`` for a smoke run).
Writes ``benchmarks/results/ops_cpu.{json,md,png}``. Ratios are measured side by side in one run.
``--dispatch`` instead times eager compress + extract through the ``torch.library`` dispatcher
against the direct call that ``custom_ops.call`` makes (the number quoted there).
"""

from __future__ import annotations

import argparse
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from smakit import compress, extract, sma  # noqa: E402
from smakit.ops.compaction import custom_ops  # noqa: E402

from common import RESULTS, machine, markdown_table, time_ms, write  # noqa: E402


def naive_compress_extract(x, active, gate):
    """The usual way: scatter chosen tokens into a zero buffer, then gather them back."""
    B, L, D = x.shape
    slot = active.cumsum(1) - 1
    b_idx, l_idx = active.nonzero(as_tuple=True)
    K = int(active.sum(1).max())
    buf = x.new_zeros(B, K, D).index_put((b_idx, slot[b_idx, l_idx]), x[b_idx, l_idx])
    h = buf  # the module would run here
    out = x.new_zeros(B, L, D).index_put((b_idx, l_idx), h[b_idx, slot[b_idx, l_idx]] * gate[b_idx, l_idx, None])
    return out


def smakit_compress_extract(x, active, gate):
    packed = compress(x, active)
    return extract(packed.values, packed, gate)


def bench_ops(B, L, D, ratio):
    torch.manual_seed(0)
    x = torch.randn(B, L, D, requires_grad=True)
    gate = torch.rand(B, L, requires_grad=True)
    active = torch.rand(B, L) < ratio
    grad = torch.randn(B, L, D)

    def run(fn):
        def step():
            x.grad = gate.grad = None
            fn(x, active, gate).backward(grad)
        return step

    torch.testing.assert_close(naive_compress_extract(x, active, gate), smakit_compress_extract(x, active, gate))
    naive = time_ms(run(naive_compress_extract))
    ours = time_ms(run(smakit_compress_extract))
    return {"B": B, "L": L, "D": D, "ratio": ratio, "naive_ms": naive, "smakit_ms": ours, "speedup": naive / ours}


def bench_dispatch(B, L, D):
    """compress + extract fwd+bwd (static capacity), eager, with and without the dispatcher."""
    torch.manual_seed(0)
    x = torch.randn(B, L, D, requires_grad=True)
    gate = torch.rand(B, L, requires_grad=True)
    active = torch.rand(B, L) < 0.5
    grad = torch.randn(B, L, D)

    def step():
        x.grad = gate.grad = None
        packed = compress(x, active, slots=max(L // 2, 1))
        extract(packed.values, packed, gate).backward(grad)

    # thread CPU time, best of 20 interleaved blocks: the overhead is pure CPU work, and this
    # stays meaningful on a shared, loaded machine where wall time does not
    step()
    best = {}
    for _ in range(20):
        for bypass in (True, False):
            custom_ops.BYPASS_DISPATCHER = bypass
            t0 = time.thread_time()
            for _ in range(20):
                step()
            ms = (time.thread_time() - t0) / 20 * 1e3
            key = "direct_ms" if bypass else "dispatcher_ms"
            best[key] = min(best.get(key, ms), ms)
    custom_ops.BYPASS_DISPATCHER = True
    return {"B": B, "L": L, "D": D, **best, "ratio": best["dispatcher_ms"] / best["direct_ms"]}


def dispatch_main():
    rows = [bench_dispatch(*shape) for shape in [(1, 16, 8), (2, 128, 64), (8, 1024, 256)]]
    env = machine()
    table = f"# Eager dispatch overhead on CPU\n\nDevice: {env['device']}, torch {env['torch']}, commit {env['commit']}\n\n"
    table += markdown_table(["B", "L", "D", "direct ms", "dispatcher ms", "dispatcher / direct"],
                            [[r["B"], r["L"], r["D"], r["direct_ms"], r["dispatcher_ms"], r["ratio"]] for r in rows])
    print(table)
    print(f"wrote {write('ops_cpu_dispatch', {'machine': env, 'rows': rows}, table)}")


def mlp(dim, hidden):
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


def bench_sma_mlp(B, L, D, hidden, ratios):
    torch.manual_seed(0)
    x = torch.randn(B, L, D, requires_grad=True)
    dense = mlp(D, hidden)

    def step(module):
        def run():
            module.zero_grad(set_to_none=True)
            x.grad = None
            module(x).sum().backward()
        return run

    dense_ms = time_ms(step(dense))
    rows = []
    for r in ratios:
        layer = sma(mlp(D, hidden), dim=D, router="topk", capacity=r)
        ms = time_ms(step(layer))
        rows.append({"ratio": r, "sma_ms": ms, "dense_ms": dense_ms, "relative": ms / dense_ms})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    parser.add_argument("--dispatch", action="store_true", help="only the eager dispatcher overhead")
    args = parser.parse_args()
    if args.dispatch:
        return dispatch_main()
    if args.quick:
        op_shape, mlp_shape, ratios = (2, 256, 32), (2, 128, 32, 64), [0.25, 1.0]
    else:
        op_shape, mlp_shape, ratios = (8, 8192, 512), (4, 2048, 512, 2048), [0.1, 0.25, 0.5, 0.75, 1.0]

    ops = [bench_ops(*op_shape, ratio) for ratio in (0.1, 0.5, 0.9)]
    mlps = bench_sma_mlp(*mlp_shape, ratios)
    env = machine()
    table = f"# Core on CPU\n\nDevice: {env['device']}, torch {env['torch']}, commit {env['commit']}\n\n"
    table += "## compress + extract, fwd+bwd (fp32)\n\n" + markdown_table(
        ["B", "L", "D", "active", "naive ms", "smakit ms", "speed-up"],
        [[o["B"], o["L"], o["D"], o["ratio"], o["naive_ms"], o["smakit_ms"], o["speedup"]] for o in ops])
    B, L, D, H = mlp_shape
    table += f"\n## sma(mlp, router='topk') vs dense MLP, fwd+bwd, B={B} L={L} D={D} hidden={H}\n\n"
    table += markdown_table(["capacity", "sma ms", "dense ms", "sma / dense"],
                            [[m["ratio"], m["sma_ms"], m["dense_ms"], m["relative"]] for m in mlps])
    name = "ops_cpu_quick" if args.quick else "ops_cpu"
    path = write(name, {"machine": env, "ops": ops, "sma_mlp": mlps}, table)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([m["ratio"] for m in mlps], [m["relative"] for m in mlps], "o-", label="sma(mlp)")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="ideal (proportional)")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set(xlabel="activation ratio (top-k capacity)", ylabel="time / dense MLP", title=f"fwd+bwd on {env['device']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=120)
    print(table)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
