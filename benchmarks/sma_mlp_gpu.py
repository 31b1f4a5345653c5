"""GPU benchmark: ``sma(mlp)`` end to end (fwd+bwd) against the dense MLP, over activation ratios.

``sma(mlp, router="topk", capacity=r)`` routes ``ceil(r * L)`` tokens of every row to the
MLP (static capacity: no host sync), compacts them with the Triton kernels, and scatters the
gated outputs back; the dense MLP runs on every token. Both in bf16, timed with
``triton.testing.do_bench`` (median) in the same run. The goal: at ``r = 0.25`` the sparse
layer costs at most 0.35x the dense one.

Run: ``python benchmarks/sma_mlp_gpu.py`` (a GPU); ``--smoke`` for tiny CPU shapes.
Writes ``benchmarks/results/sma_mlp_gpu.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smakit import sma  # noqa: E402

from common import RESULTS, machine, markdown_table  # noqa: E402
from ops_gpu import bench_ms  # noqa: E402

GOAL = {"ratio": 0.25, "max_relative": 0.35}


def mlp(dim: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


def train_step(module: nn.Module, x: torch.Tensor, grad: torch.Tensor):
    def step():
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x).backward(grad)
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU")
    parser.add_argument("--shape", type=int, nargs=4, metavar=("B", "L", "D", "HIDDEN"), default=(8, 8192, 1024, 4096))
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: benchmarks/results)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if device == "cpu" and not args.smoke:
        sys.exit("sma_mlp_gpu.py needs a GPU (use --smoke for a CPU smoke run)")
    B, L, D, H = (2, 64, 16, 64) if args.smoke else args.shape
    dtype = torch.bfloat16
    ratios = [0.1, 0.25, 0.5, 0.75, 1.0]
    torch.manual_seed(0)
    x = torch.randn(B, L, D, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(B, L, D, device=device, dtype=dtype)
    dense = mlp(D, H).to(device, dtype)
    dense_ms = bench_ms(train_step(dense, x, grad))
    rows = []
    for backend in ["auto", "torch"]:
        for r in ratios:
            layer = sma(mlp(D, H), dim=D, router="topk", capacity=r, backend=backend).to(device, dtype)
            ms = bench_ms(train_step(layer, x, grad))
            rows.append({"backend": backend, "ratio": r, "sma_ms": ms, "dense_ms": dense_ms, "relative": ms / dense_ms})
            print(f"{backend} ratio={r}: {ms:.3f} ms ({ms / dense_ms:.3f}x dense)", flush=True)
    env = machine() | {"dtype": "bfloat16", "shape": {"B": B, "L": L, "D": D, "hidden": H}}
    at_goal = next(r for r in rows if r["backend"] == "auto" and r["ratio"] == GOAL["ratio"])
    goal = GOAL | {"relative": at_goal["relative"], "met": at_goal["relative"] <= GOAL["max_relative"]}
    label = {"auto": "triton" if device == "cuda" else "auto (torch on CPU)", "torch": "torch reference"}

    text = (f"# sma(mlp) vs dense MLP, fwd+bwd\n\nDevice: {env['device']}, bf16, torch {env['torch']}, "
            f"commit {env['commit']}. B={B} L={L} D={D} hidden={H}, router='topk' (static capacity).\n\n"
            f"Goal: at ratio {GOAL['ratio']}, <= {GOAL['max_relative']}x dense: "
            f"{goal['relative']:.3f}x ({'met' if goal['met'] else 'NOT met'}).\n\n")
    text += markdown_table(["compaction", "ratio", "sma ms", "dense ms", "sma / dense"],
                           [[label[r["backend"]], r["ratio"], r["sma_ms"], r["dense_ms"], r["relative"]] for r in rows])
    out = args.out or (Path(tempfile.gettempdir()) / "smakit_bench_smoke" if args.smoke else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sma_mlp_gpu.json").write_text(json.dumps({"machine": env, "goal": goal, "rows": rows}, indent=2))
    (out / "sma_mlp_gpu.md").write_text(text)

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for backend in ["auto", "torch"]:
        sel = [r for r in rows if r["backend"] == backend]
        ax.plot([r["ratio"] for r in sel], [r["relative"] for r in sel], "o-", label=f"sma(mlp), {label[backend]}")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="proportional")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.plot([GOAL["ratio"]], [GOAL["max_relative"]], "rv", label="goal")
    ax.set(xlabel="activation ratio (top-k capacity)", ylabel="time / dense MLP")
    ax.set_title(f"fwd+bwd, B={B} L={L} D={D} H={H}, bf16\n{env['device']}, commit {env['commit']}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "sma_mlp_gpu.png", dpi=120)
    print(text)
    print(f"wrote {out}/sma_mlp_gpu.{{json,md,png}}")


if __name__ == "__main__":
    main()
