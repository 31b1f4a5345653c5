"""Shared helpers for benchmark scripts: timing, environment record, result writing."""

from __future__ import annotations

import json
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


def markdown_table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
