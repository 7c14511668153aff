"""Time and memory of one step (a forward, or a training step) on CPU or CUDA, and the Markdown
tables the benchmark tools print (``tools/benchmark.py``, ``tools/benchmark_hmsa.py``)."""
import os
import platform
import statistics
import time
from typing import Callable, List, Sequence

import torch
from torch.profiler import ProfilerActivity, profile

__all__ = ["device_name", "markdown_table", "median_step_ms", "peak_step_memory"]


def peak_step_memory(step: Callable[[], None], device: torch.device) -> int:
    """Bytes allocated at the peak of ``step()`` above those allocated before it: CUDA's
    ``max_memory_allocated`` on a GPU, the CPU allocator's events recorded by torch.profiler on
    CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def median_step_ms(step: Callable[[], None], device: torch.device, iterations: int) -> float:
    """Median wall time in ms of ``iterations`` calls of ``step()`` (on CUDA, synchronized
    before and after each call)."""
    times = []
    for _ in range(iterations):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def device_name(device: torch.device) -> str:
    """The GPU's name on CUDA, else the CPU model from /proc/cpuinfo (or ``platform``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table: the header, the ``---`` line, one line per row (cells as given)."""
    lines: List[Sequence[str]] = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)
