"""``tools/benchmark.py latency``: inference latency of the encoders and segmentors whose
params and GFLOPs ``tools/analyze_model.py --published`` compares with the published numbers
(``published.MODELS``), with the latency ratio of each HILA model over its base model; one
Markdown table per group and part, then the notes."""

from typing import Dict

import torch
from torch import nn

from .profiling import markdown_table, median_step_ms
from .published import (
    GROUPS,
    PARTS,
    each_part,
    environment,
    input_size,
    model_cell,
    overhead_note,
    part_title,
    select,
)

__all__ = ["run"]

HEADER = ["model", "latency (ms)", "latency ratio"]


@torch.no_grad()
def median_latency_ms(module: nn.Module, images: torch.Tensor, warmup: int, repeats: int) -> float:
    """Median wall time of ``repeats`` forward passes after ``warmup`` untimed ones."""
    for _ in range(warmup):
        module(images)
    return median_step_ms(lambda: module(images), images.device, repeats)


def run(args) -> None:
    """Time the models of ``args.models``/``args.dataset``/``args.only`` and print the tables."""
    device = torch.device(args.device)
    models = select(args)
    print("## HILA models: inference latency\n")
    for line in environment(args, device):
        print(f"- {line}")
    if not models:
        print("\nNo model matches the selection (Swin and HAT-Net have ADE20K configs only).")
        return
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, *input_size(args), generator=generator).to(device)
    latency: Dict[str, Dict[str, float]] = {part: {} for part in PARTS}
    for model, part, module, _ in each_part(models, args.dataset, args.device):
        latency[part][model.key] = median_latency_ms(module, images, args.warmup, args.repeats)
    notes = [
        "Encoder = backbone alone; segmentor = backbone + decode head, one whole image through "
        "both (logits upsampled to the input size, as in eval; auxiliary heads are not run).",
        f"Latency: median of {args.repeats} runs after {args.warmup} warm-up runs, batch "
        f"{args.batch}, fp32, eval mode, torch.no_grad"
        + ("; noisy on a shared host." if device.type == "cpu" else ", CUDA-synchronized."),
        overhead_note("Latency ratio", "dataset, size, device, threads"),
    ]
    for group in GROUPS:
        members = [m for m in models if m.group == group]
        for part in PARTS if members else ():
            rows = []
            for model in members:
                ms, base = latency[part][model.key], latency[part].get(model.base)
                ratio = "–" if base is None else f"×{ms / base:.2f}"
                rows.append([model_cell(model), f"{ms:.1f}", ratio])
            print(f"\n### {part_title(group, part, args)}\n")
            print(markdown_table(HEADER, rows))
    print()
    for index, note in enumerate(notes, 1):
        print(f"{index}. {note}")
