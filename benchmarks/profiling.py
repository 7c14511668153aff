"""Time, memory and fvcore FLOPs of one step (a forward, or a training step) on CPU or CUDA, and
the one Markdown table printer of the tools (``tools/benchmark.py``, ``tools/analyze_model.py``)."""

import math
import os
import platform
import statistics
import time
from collections import Counter
from typing import Callable, List, Sequence, Tuple

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn
from torch.profiler import ProfilerActivity, profile

__all__ = [
    "MIB",
    "BackboneOutputs",
    "device_name",
    "fvcore_gflops",
    "interleaved_median_ms",
    "markdown_table",
    "median_step_ms",
    "peak_step_memory",
    "sdpa_flop_jit",
    "step_ms",
]

MIB = 2**20  # bytes


class BackboneOutputs(nn.Module):
    """A detectron2 backbone returning its features as a tuple sorted by name (for tracing)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        features = self.backbone(images)
        return tuple(features[name] for name in sorted(features))


def sdpa_flop_jit(inputs, outputs) -> int:
    """``aten::scaled_dot_product_attention``: the multiply-adds of Q·Kᵀ and of A·V (fvcore has
    no handle for it; softmax and scaling are not counted, as fvcore skips softmax elsewhere)."""
    query, key, value = (get_shape(v) for v in inputs[:3])
    *batch, length, dim = query
    return math.prod(batch) * length * key[-2] * (dim + value[-1])


def fvcore_gflops(module: nn.Module, *inputs: torch.Tensor) -> Tuple[float, Counter]:
    """fvcore's total in GFLOPs (1 multiply-add = 1 FLOP) of ``module(*inputs)`` and the ops it
    skipped, silently."""
    analysis = (
        FlopCountAnalysis(module, inputs)
        .set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
        .unsupported_ops_warnings(False)
        .uncalled_modules_warnings(False)
        .tracer_warnings("none")
    )
    return analysis.total() / 1e9, analysis.unsupported_ops()


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


def step_ms(step: Callable[[], None], device: torch.device) -> float:
    """Wall time in ms of one call of ``step()`` (on CUDA, synchronized before and after)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1e3


def median_step_ms(step: Callable[[], None], device: torch.device, iterations: int) -> float:
    """Median wall time in ms of ``iterations`` calls of ``step()``."""
    return statistics.median(step_ms(step, device) for _ in range(iterations))


def interleaved_median_ms(
    steps: Sequence[Callable[[], None]], device: torch.device, warmup: int, repeats: int
) -> List[float]:
    """Median ms of each of ``steps`` over ``repeats`` rounds that run every step once in turn
    (so that machine noise hits them alike), after ``warmup`` untimed calls of each."""
    for step in steps:
        for _ in range(warmup):
            step()
    times: List[List[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for step, record in zip(steps, times):
            record.append(step_ms(step, device))
    return [statistics.median(record) for record in times]


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
