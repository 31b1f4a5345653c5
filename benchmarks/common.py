"""Shared helpers for benchmark scripts: timing, environment record, result writing."""

from __future__ import annotations

import json
import math
import platform
import subprocess
from pathlib import Path

import torch
from torch.utils import benchmark

RESULTS = Path(__file__).resolve().parent / "results"


def commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       cwd=Path(__file__).parent).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict:
    """Device, threads and versions, stated beside every result."""
    info = {"torch": torch.__version__, "python": platform.python_version(), "commit": commit(),
            "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
    else:
        info["device"] = f"CPU ({info['cpu']}, {torch.get_num_threads()} threads)"
    return info


def time_ms(fn, min_run_time: float = 1.0) -> float:
    """Median wall time of ``fn()`` in milliseconds (torch.utils.benchmark, with warm-up)."""
    fn()
    m = benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time)
    return m.median * 1e3


def write(name: str, payload: dict, table: str) -> Path:
    """Write ``results/<name>.json`` and ``results/<name>.md``; returns the JSON path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    (RESULTS / f"{name}.md").write_text(table)
    return path


def number(v) -> str:
    """A table cell: floats to 3 significant digits without an exponent (``1,020``, not
    ``1.02e+03``); integers of 10,000 and more with thousands separators."""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    if not isinstance(v, float) or not math.isfinite(v):
        return str(v)
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}" if v == 0 or abs(v) >= 1e-4 else f"{v:.1e}"


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(number(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# -- models matched by parameter count -------------------------------------------------


def parameter_count(info, model_cfg: dict) -> int:
    """Parameters of the model a recipe's ``[model]`` table builds for dataset ``info``."""
    from smakit.train.build import build_model

    return sum(p.numel() for p in build_model(info, model_cfg).parameters())


def matched_dim(info, model_cfg: dict, target: int) -> int:
    """The ``dim`` (multiple of 8) whose parameter count is closest to ``target``."""
    return min(range(16, 513, 8), key=lambda d: abs(parameter_count(info, {**model_cfg, "dim": d}) - target))
