"""GPU benchmark of compaction: achieved GB/s of compress / extract, forward and backward.

Compared in one run, on the same inputs:

* ``copy``           a device-to-device copy of ``B*L*D`` elements: the physical limit,
* ``triton``         smakit ``backend="triton"`` with a fixed ``slots=K`` (no host sync),
* ``triton-graph``   the same replayed as a CUDA graph (``do_bench_cudagraph``): no Python or
  launch overhead, so this is the kernels' own bandwidth when the eager call is CPU bound,
* ``triton-dyn``     the same with ``K`` = longest row (one host sync, compress forward only),
* ``torch``          smakit ``backend="torch"`` (the reference, eager),
* ``compiled``       ``torch.compile`` of the plain-torch reference (``build_index`` + row movers),
* ``scatter-zeros``  the usual way: ``nonzero`` + index into a zero buffer (autograd for bwd),
* ``torch-scatter``  ``torch_scatter.scatter`` into zeros (extract fwd / compress bwd only),
  where installed, for comparison only.

GB/s counts the bytes an op must move: the feature rows it reads and writes (padding slots
included where it writes them) plus its index tensors. Rows have exactly ``round(ratio*L)``
active tokens (top-k routing), so the static and dynamic ``K`` agree.

Run: ``python benchmarks/ops_gpu.py`` (a GPU; ``--quick`` for the headline shape only).
``--smoke`` runs tiny shapes on the CPU with the torch backend (and the Triton one when
``TRITON_INTERPRET=1``), to keep the script working.
Writes ``benchmarks/results/ops_gpu.{json,md,png}`` (``--smoke``: under ``--out``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smakit.ops import compress, extract  # noqa: E402
from smakit.ops.compaction import build_index, naive  # noqa: E402

from common import RESULTS, machine, markdown_table, time_ms  # noqa: E402

OPS = ("compress_fwd", "compress_bwd", "extract_fwd", "extract_bwd")
HEADLINE = dict(B=8, L=8192, D=1024, ratio=0.5)  # the acceptance point
GOALS = {"copy_fraction": 0.8, "speedup_vs_torch": 2.0}


def bench_ms(fn, cuda_graph: bool = False) -> float:
    """Median milliseconds: ``triton.testing.do_bench`` on GPU (``do_bench_cudagraph`` when
    asked), torch.utils.benchmark on CPU."""
    if torch.cuda.is_available():
        import triton

        if cuda_graph:
            fn()  # autotune before capture
            return triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    return time_ms(fn, min_run_time=0.05)


# inputs


class Case:
    """One shape: ``x``, exactly ``k`` active tokens per row, a gate, upstream gradients."""

    def __init__(self, B, L, D, ratio, dtype, device):
        g = torch.Generator(device=device).manual_seed(0)
        self.B, self.L, self.D, self.ratio = B, L, D, ratio
        self.k = min(max(round(ratio * L), 1), L)
        self.x = torch.randn(B, L, D, device=device, dtype=dtype, generator=g)
        scores = torch.rand(B, L, device=device, generator=g)
        self.active = torch.zeros(B, L, dtype=torch.bool, device=device)
        self.active.scatter_(1, scores.topk(self.k, dim=1).indices, True)
        self.gate = torch.rand(B, L, device=device, generator=g)
        self.grad_values = torch.randn(B, self.k, D, device=device, dtype=dtype, generator=g)
        self.grad_out = torch.randn(B, L, D, device=device, dtype=dtype, generator=g)
        self.elsize = self.x.element_size()

    def op_bytes(self, op: str) -> int:
        B, L, K, D, e = self.B, self.L, self.k, self.D, self.elsize
        N = B * K  # real slots (every row has exactly K)
        rows = {"compress_fwd": N * D * e + B * K * D * e,       # read active rows, write slots
                "compress_bwd": N * D * e + B * L * D * e,       # read slot grads, write grad_x
                "extract_fwd": N * D * e + B * L * D * e,        # read h, write out (zeros too)
                "extract_bwd": 2 * N * D * e + B * K * D * e}[op]  # read grad_out and h, write grad_h
        index = {"compress_fwd": 2 * B * L + 17 * B * K,  # active in, kept + positions/mask/scatter out
                 "compress_bwd": B * L + 8 * B,
                 "extract_fwd": B * L + 4 * B * L,        # kept, gate
                 "extract_bwd": 8 * B * K + 8 * B * L}[op]  # scatter index, gate in, grad_gate out
        return rows + index


# providers: each returns {op: callable} for a case (missing ops are skipped)


def smakit_ops(case: Case, backend: str, static: bool) -> dict:
    cap = case.k if static else None
    x = case.x.detach().requires_grad_()
    packed = compress(x, case.active, slots=cap, backend=backend)
    h = packed.values.detach().requires_grad_()
    gate = case.gate.detach().requires_grad_()
    y = extract(h, packed, gate, backend=backend)
    frozen = packed.values.detach()
    return {
        "compress_fwd": lambda: compress(case.x, case.active, slots=cap, backend=backend),
        "compress_bwd": lambda: torch.autograd.grad(packed.values, x, case.grad_values, retain_graph=True),
        "extract_fwd": lambda: extract(frozen, packed, case.gate, backend=backend),
        "extract_bwd": lambda: torch.autograd.grad(y, (h, gate), case.grad_out, retain_graph=True),
    }


def ref_compress(x, active, k: int):
    """The plain-torch reference (what ``compiled`` compiles): bookkeeping + row gather."""
    B, L, D = x.shape
    idx = build_index(active, k)
    values = naive.gather_rows(x.reshape(B * L, D), None, None, idx.scatter_index)[0]
    return values.view(B, k, D), idx.scatter_index, idx.mask


def ref_extract(h, scatter_index, mask, gate):
    B, L = gate.shape
    # the torch backend reads only the size of ``kept`` (it finds slots by ``scatter_index``)
    out = naive.scatter_rows(h.reshape(-1, h.shape[-1]), gate, gate, None, scatter_index, mask.shape[1], False)
    return out.view(B, L, -1)


_COMPILED = {}
# backward is timed by replaying it (retain_graph=True), which donated buffers forbid
torch._functorch.config.donated_buffer = False
torch._dynamo.config.recompile_limit = 64  # one function over the whole sweep: never fall back to eager


def compiled_ops(case: Case, compiler: str = "inductor") -> dict:
    if not _COMPILED:
        _COMPILED["compress"] = torch.compile(ref_compress, dynamic=True, backend=compiler)
        _COMPILED["extract"] = torch.compile(ref_extract, dynamic=True, backend=compiler)
    comp, extr = _COMPILED["compress"], _COMPILED["extract"]
    x = case.x.detach().requires_grad_()
    values, index, mask = comp(x, case.active, case.k)
    h = values.detach().requires_grad_()
    gate = case.gate.detach().requires_grad_()
    y = extr(h, index, mask, gate)
    frozen = values.detach()
    return {
        "compress_fwd": lambda: comp(case.x, case.active, case.k),
        "compress_bwd": lambda: torch.autograd.grad(values, x, case.grad_values, retain_graph=True),
        "extract_fwd": lambda: extr(frozen, index, mask, case.gate),
        "extract_bwd": lambda: torch.autograd.grad(y, (h, gate), case.grad_out, retain_graph=True),
    }


def scatter_zeros_ops(case: Case) -> dict:
    """``nonzero`` + advanced indexing into zero buffers; backward by autograd."""
    B, L, D, k = case.B, case.L, case.D, case.k

    def fwd_compress(x):
        slot = case.active.cumsum(1) - 1
        b, t = case.active.nonzero(as_tuple=True)
        return x.new_zeros(B, k, D).index_put((b, slot[b, t]), x[b, t]), (b, t, slot[b, t])

    def fwd_extract(h, where, gate):
        b, t, s = where
        return h.new_zeros(B, L, D).index_put((b, t), h[b, s] * gate[b, t, None].to(h.dtype))

    x = case.x.detach().requires_grad_()
    values, where = fwd_compress(x)
    h = values.detach().requires_grad_()
    gate = case.gate.detach().requires_grad_()
    y = fwd_extract(h, where, gate)
    frozen = values.detach()
    return {
        "compress_fwd": lambda: fwd_compress(case.x),
        "compress_bwd": lambda: torch.autograd.grad(values, x, case.grad_values, retain_graph=True),
        "extract_fwd": lambda: fwd_extract(frozen, where, case.gate),
        "extract_bwd": lambda: torch.autograd.grad(y, (h, gate), case.grad_out, retain_graph=True),
    }


def torch_scatter_ops(case: Case) -> dict:
    try:
        import torch_scatter
    except ImportError:
        return {}
    packed = compress(case.x, case.active, slots=case.k, backend="torch")
    B, L, D = case.B, case.L, case.D
    index = packed.scatter_index.unsqueeze(1).expand(-1, D)  # padding slots go to the dump row B*L
    h = packed.values.reshape(-1, D)
    scale = packed.compact(case.gate).reshape(-1, 1).to(h.dtype)
    grads = case.grad_values.reshape(-1, D)

    def scatter(src):
        return torch_scatter.scatter(src, index, dim=0, out=src.new_zeros(B * L + 1, D), reduce="sum")

    return {"extract_fwd": lambda: scatter(h * scale), "compress_bwd": lambda: scatter(grads)}


def copy_ms(case: Case) -> float:
    src = case.x
    dst = torch.empty_like(src)
    return bench_ms(lambda: dst.copy_(src))


# sweep


def providers(device: str, backends: list[str]) -> dict:
    table = {}
    if "triton" in backends:
        table["triton"] = lambda c: smakit_ops(c, "triton", static=True)
        if device == "cuda":
            table["triton-graph"] = lambda c: smakit_ops(c, "triton", static=True)
        table["triton-dyn"] = lambda c: {"compress_fwd": smakit_ops(c, "triton", static=False)["compress_fwd"]}
    table["torch"] = lambda c: smakit_ops(c, "torch", static=True)
    # a CPU smoke run only exercises the code path: aot_eager compiles in seconds
    table["compiled"] = lambda c: compiled_ops(c, "inductor" if device == "cuda" else "aot_eager")
    table["scatter-zeros"] = scatter_zeros_ops
    table["torch-scatter"] = torch_scatter_ops
    return table


def run_case(case: Case, table: dict) -> list[dict]:
    copy = copy_ms(case)
    copy_gbs = 2 * case.x.numel() * case.elsize / copy / 1e6
    rows = []
    for name, make in table.items():
        fns = make(case)
        for op in OPS:
            if op not in fns:
                continue
            try:
                ms = bench_ms(fns[op], cuda_graph=name.endswith("-graph"))
            except Exception as err:  # e.g. an op that cannot be captured in a CUDA graph
                print(f"skipped {name} {op}: {type(err).__name__}: {err}", flush=True)
                continue
            gbs = case.op_bytes(op) / ms / 1e6
            rows.append({"B": case.B, "L": case.L, "D": case.D, "ratio": case.ratio, "op": op, "provider": name,
                         "ms": ms, "GBps": gbs, "copy_GBps": copy_gbs, "copy_fraction": gbs / copy_gbs})
        del fns
    return rows


def headline(rows: list[dict]) -> dict:
    """The acceptance numbers at the headline shape (triton vs copy and vs the reference)."""
    at = [r for r in rows if all(r[k] == v for k, v in HEADLINE.items())]
    out = {}
    for op in OPS:
        got = {r["provider"]: r for r in at if r["op"] == op}
        if "triton" not in got or "torch" not in got:
            continue
        t = got["triton"]
        speedup = got["torch"]["ms"] / t["ms"]
        graph = got.get("triton-graph", {})
        out[op] = {"triton_GBps": t["GBps"], "copy_GBps": t["copy_GBps"], "copy_fraction": t["copy_fraction"],
                   "speedup_vs_torch": speedup, "cuda_graph_copy_fraction": graph.get("copy_fraction"),
                   "meets_goal": t["copy_fraction"] >= GOALS["copy_fraction"] and speedup >= GOALS["speedup_vs_torch"]}
    return out


def plot(rows: list[dict], path: Path, env: dict, L: int) -> None:
    Ds = sorted({r["D"] for r in rows if r["L"] == L})
    fig, axes = plt.subplots(len(OPS), len(Ds), figsize=(4.2 * len(Ds), 3.0 * len(OPS)), squeeze=False)
    for i, op in enumerate(OPS):
        for j, D in enumerate(Ds):
            ax = axes[i][j]
            sel = [r for r in rows if r["op"] == op and r["D"] == D and r["L"] == L]
            for name in dict.fromkeys(r["provider"] for r in sel):
                pts = sorted((r["ratio"], r["GBps"]) for r in sel if r["provider"] == name)
                ax.plot(*zip(*pts), "o-", ms=3, label=name)
            copy = [r["copy_GBps"] for r in sel]
            if copy:
                ax.axhline(max(copy), color="black", ls="--", lw=0.8, label="d2d copy")
            ax.set(title=f"{op}, D={D}", xlabel="activation ratio", ylabel="GB/s")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"compaction GB/s, L={L}, {env['dtype']}\n{env['device']}, commit {env['commit']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(rows: list[dict], head: dict, env: dict) -> str:
    text = (f"# Compaction on {env['device']}\n\nDevice: {env['device']}, dtype {env['dtype']}, torch {env['torch']}, "
            f"triton {env.get('triton', '-')}, commit {env['commit']}.\n\n")
    if head:
        h = HEADLINE
        text += (f"## Acceptance point: B={h['B']} L={h['L']} D={h['D']}, {h['ratio']:.0%} active\n\n"
                 f"Goal: >= {GOALS['copy_fraction']:.0%} of copy bandwidth and >= {GOALS['speedup_vs_torch']}x "
                 "the torch reference.\n\n")
        text += markdown_table(["op", "triton GB/s", "copy GB/s", "of copy", "of copy (CUDA graph)", "vs torch",
                                "goal met"],
                               [[op, v["triton_GBps"], v["copy_GBps"], v["copy_fraction"],
                                 v["cuda_graph_copy_fraction"] or "-", v["speedup_vs_torch"],
                                 "yes" if v["meets_goal"] else "NO"] for op, v in head.items()])
    text += "\n## All shapes (ms, GB/s, fraction of the d2d copy)\n\n"
    text += markdown_table(["B", "L", "D", "ratio", "op", "provider", "ms", "GB/s", "of copy"],
                           [[r["B"], r["L"], r["D"], r["ratio"], r["op"], r["provider"], r["ms"], r["GBps"],
                             r["copy_fraction"]] for r in rows])
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the headline shape only")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, torch backend")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: benchmarks/results)")
    args = parser.parse_args()
    import json

    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    dtype = torch.bfloat16
    ratios = [0.05, 0.1, 0.25, 0.5, 0.75, 1.0]
    if args.smoke:
        shapes, ratios = [(2, 64, 16), (1, 128, 8)], [0.25, 1.0]
        HEADLINE.update(B=2, L=64, D=16, ratio=0.25)
    elif args.quick:
        shapes, ratios = [(HEADLINE["B"], HEADLINE["L"], HEADLINE["D"])], [HEADLINE["ratio"]]
    else:
        shapes = [(8, 8192, 256), (8, 8192, 1024), (8, 8192, 4096), (1, 65536, 1024)]
    if device == "cpu" and not args.smoke:
        sys.exit("ops_gpu.py needs a GPU (use --smoke for a CPU smoke run)")
    from smakit.ops.compaction.backend import triton_usable

    # on the CPU the kernels run only under TRITON_INTERPRET=1 (slow; the smoke shapes are tiny)
    backends = ["triton", "torch"] if triton_usable(torch.device(device)) else ["torch"]
    table = providers(device, backends)

    rows = []
    for B, L, D in shapes:
        for ratio in ratios:
            rows += run_case(Case(B, L, D, ratio, dtype, device), table)
            print(f"done B={B} L={L} D={D} ratio={ratio}", flush=True)
            torch.cuda.empty_cache() if device == "cuda" else None
    env = machine() | {"dtype": str(dtype).replace("torch.", "")}
    if device == "cuda":
        import triton

        env["triton"] = triton.__version__
    head = headline(rows)
    out = args.out or (Path(tempfile.gettempdir()) / "smakit_bench_smoke" if args.smoke else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    name = "ops_gpu_quick" if args.quick else "ops_gpu"
    (out / f"{name}.json").write_text(json.dumps({"machine": env, "headline": head, "goals": GOALS,
                                                  "headline_shape": HEADLINE, "rows": rows}, indent=2))
    text = report(rows, head, env)
    (out / f"{name}.md").write_text(text)
    plot(rows, out / f"{name}.png", env, L=shapes[0][1])
    print(text)
    print(f"wrote {out / name}.{{json,md,png}}")


if __name__ == "__main__":
    main()
