"""``benchmarks/speed.py``: ``--malloc heap`` really keeps freed memory in the process."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A process that allocates and frees a 64 MiB tensor (above glibc's largest mmap threshold,
# 32 MiB) many times and prints the minor page faults of each round. With the heap kept,
# the first rounds still grow it (each block is requested with an alignment, so a freed one
# is a little too small until neighbours merge); after that the blocks are reused.
FAULTS = """
import resource, sys, torch
sys.path.insert(0, {bench!r})
import speed
if {heap}:
    speed.keep_heap_memory()
for _ in range(16):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.empty(16, 1024, 1024)
    t.fill_(1.0)
    del t
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults_per_round(heap: bool) -> list[int]:
    code = FAULTS.format(bench=str(ROOT / "benchmarks"), heap=heap)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return [int(n) for n in done.stdout.split()]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_malloc_heap_reuses_large_blocks_instead_of_mapping_them_again():
    pages = 16 * 1024 * 1024 * 4 // 4096  # one 64 MiB tensor
    assert min(faults_per_round(heap=False)[-4:]) > pages // 2  # glibc maps it afresh every time
    kept = faults_per_round(heap=True)
    assert sum(kept[-4:]) < pages // 10, kept  # served from the kept heap
