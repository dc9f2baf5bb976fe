"""How many CPU threads a command uses: ``--threads`` or, by default, the cores that other
processes are not using when it starts.

torch (OpenMP) and ONNX Runtime start one worker per core and keep idle workers spinning for a
while; on a machine whose cores other processes hold, those spinning workers fight the busy
processes for cores and every parallel region waits for its slowest thread, so a run with all
threads can be several times slower than one with fewer (README, "Threads").
"""

from __future__ import annotations

import os
import statistics
import time

from .engines.errors import OptionError


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def others_running(samples: int = 5, interval: float = 0.01) -> int | None:
    """Processes other than this one running right now (Linux's /proc/loadavg "running"
    count, median of a few samples, this process excluded); None where it cannot be read."""
    counts = []
    for i in range(samples):
        try:
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        counts.append(max(running - 1, 0))
        if i + 1 < samples:
            time.sleep(interval)
    return int(statistics.median(counts))


def choose_threads(requested: int | None) -> tuple[int, str]:
    """(threads, why). ``requested``: ``--threads`` (None: OMP_NUM_THREADS if set, else the
    cores not busy now, at least 1)."""
    cores = usable_cores()
    if requested is not None:
        if requested < 1:
            raise OptionError(f"--threads {requested}: must be at least 1 (this machine: {cores})")
        return requested, "--threads"
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    busy = others_running()
    if busy is None:
        return cores, f"{cores} cores"
    free = max(1, cores - busy)
    return free, f"{cores} cores, {busy} other process(es) running"
