"""Timing helpers shared by the benchmark scripts (no dependency on tests/)."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import time

import jax


def block(x):
    return jax.block_until_ready(x)


def once(fn, *args):
    """Wall time of one call (results blocked on), and its result."""
    t0 = time.perf_counter()
    out = block(fn(*args))
    return time.perf_counter() - t0, out


def best_of(
    fn, *args, repeat: int = 7, number: int | None = None, budget: float = 1.0, warm: bool = True
) -> float:
    """Best-of-``repeat`` mean time per call of ``fn(*args)`` (each repeat runs ``number``
    calls; ``number`` is chosen so that one repeat takes about ``budget / repeat`` s).
    ``warm=False`` skips the warm-up call (when ``fn`` has just been called)."""
    if warm:
        block(fn(*args))
    if number is None:
        t0 = time.perf_counter()
        block(fn(*args))
        one = max(time.perf_counter() - t0, 1e-7)
        number = max(1, min(10_000, int(budget / repeat / one)))
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            out = fn(*args)
        block(out)
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def ratio(ours: float | None, theirs: float | None) -> str:
    """``theirs / ours``: > 1 means phasejax is faster."""
    if ours is None or theirs is None or ours <= 0:
        return "-"
    r = theirs / ours
    return f"{r:.2f}x" if r < 10 else f"{r:.0f}x"


def peak_rss_mb() -> float:
    """Peak resident set size of this process (``getrusage``; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return (
        f"CPU {cpu}, {os.cpu_count()} cores; jax {jax.__version__} on {jax.default_backend()}; "
        f"x64={jax.config.jax_enable_x64}; {load()}"
    )


def load() -> str:
    """1-minute load average (other processes on the box inflate every timing)."""
    try:
        return f"load average (1 min) {os.getloadavg()[0]:.2f}"
    except OSError:
        return "load average unknown"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
