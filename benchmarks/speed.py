"""``tools/benchmark.py speed``: speed and memory of hila_d2's encoders against the reference
implementations of the same architectures on identical weights and inputs, with and without
HILA, in inference and in a training step; one Markdown table (images/s, median latency, peak
memory, their ratios, and the max |Δ| between our and the reference outputs), then notes.

Rows per selected variant: the reference (MiT: HF transformers' ``SegformerModel``; Swin: timm's
``SwinTransformer``; HAT-Net: none, no library implements it), ours built through detectron2's
backbone registry (``build_{mit,swin,hatnet}_backbone``) with ratios ours / reference, and ours
with HILA (``MODEL.HILA`` of the config in ``HILA_CONFIGS``) with ratios HILA / plain; for each
variant, first these inference rows, then the same training-step rows. Needs transformers (the
``test`` extra).
"""

import platform
import sys
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import detectron2
import timm
import torch
import transformers
from detectron2.config import CfgNode
from detectron2.modeling import build_backbone
from torch import nn
from transformers import SegformerModel

from hila_d2.checkpoint.convert import convert_segformer
from hila_d2.checkpoint.segformer import hf_segformer_to_official
from hila_d2.modeling.backbone.hatnet import HATNET_VARIANTS
from hila_d2.modeling.backbone.mit import MIT_VARIANTS
from hila_d2.modeling.backbone.pyramid import STAGE_STRIDES
from hila_d2.modeling.backbone.swin import SWIN_VARIANTS

from .references import TimmSwinStages, hf_segformer_config, timm_swin, use_mit_eps
from .profiling import MIB, device_name, markdown_table, median_step_ms, peak_step_memory
from .configs import benchmark_config

__all__ = ["DEFAULT_VARIANTS", "FAMILIES", "HILA_CONFIGS", "notes", "run"]

# family -> (title, config node, variants, reference implementation or None)
FAMILIES = {
    "mit": ("MiT", "MIT", MIT_VARIANTS, "transformers SegformerModel"),
    "swin": ("Swin", "HILA_D2_SWIN", SWIN_VARIANTS, "timm SwinTransformer"),
    "hatnet": ("HAT-Net", "HATNET", HATNET_VARIANTS, None),
}
# family -> the variants measured when none are named
DEFAULT_VARIANTS = {"mit": ["B0", "B2"], "swin": ["T"], "hatnet": ["T"]}
# family -> the config whose MODEL.* (its HILA settings above all) our encoders are built from
HILA_CONFIGS = {
    "mit": "configs/builtin/semantic-segmentation/hila_mit_b0_s3.yaml",
    "swin": "configs/ade20k/semantic-segmentation/swin/hila_upernet_swin_t_s234_160k.yaml",
    "hatnet": "configs/builtin/semantic-segmentation/hila_semantic_fpn_hatnet_t_s3.yaml",
}
STEPS = ("inference", "training step")
HEADER = [
    "encoder", "implementation", "step", "images/s", "latency (ms)", "peak memory (MiB)",
    "ratio over", "images/s ratio", "latency ratio", "memory ratio", "max abs Δ",
]  # fmt: skip


@dataclass
class Encoder:
    """One implementation; ``stages`` maps images (B, 3, H, W) to its four NCHW stage outputs."""

    name: str  # e.g. "MiT-B0 + HILA S3"
    implementation: str
    module: nn.Module
    stages: Callable[[torch.Tensor], Sequence[torch.Tensor]]


def encoder_cfg(family: str, variant: str, hila: bool, opts: Sequence[str]) -> CfgNode:
    """``HILA_CONFIGS[family]`` for the bare encoder of ``variant`` with drop path 0, then the
    ``KEY VALUE`` pairs of ``opts``; ``MODEL.HILA.STAGES`` emptied unless ``hila``."""
    node = FAMILIES[family][1]
    overrides = ["MODEL.BACKBONE.NAME", f"build_{family}_backbone", f"MODEL.{node}.VARIANT",
                 variant, f"MODEL.{node}.DROP_PATH_RATE", "0.0", *opts]  # fmt: skip
    if not hila:
        overrides += ["MODEL.HILA.STAGES", "[]"]
    return benchmark_config(HILA_CONFIGS[family], overrides)


def build_ours(family: str, variant: str, hila: bool, opts: Sequence[str]) -> Encoder:
    """Our encoder of ``encoder_cfg(...)`` from detectron2's backbone registry."""
    cfg = encoder_cfg(family, variant, hila, opts)
    name = f"{FAMILIES[family][0]}-{variant}"
    if hila:
        name += " + HILA S" + "".join(str(s) for s in cfg.MODEL.HILA.STAGES)
    torch.manual_seed(0)
    module = build_backbone(cfg)
    return Encoder(name, "hila_d2", module, lambda images: list(module(images).values()))


def build_reference(family: str, variant: str, ours: Encoder) -> Optional[Encoder]:
    """The reference implementation of ``ours`` (plain) with a seeded random init, which is copied
    into ``ours``; None for HAT-Net."""
    torch.manual_seed(0)
    implementation = FAMILIES[family][3]
    if family == "mit":
        hf = SegformerModel(hf_segformer_config(variant))
        use_mit_eps(hf)
        converted = convert_segformer(hf_segformer_to_official(hf.state_dict())).model
        ours.module.load_state_dict({k[len("backbone.") :]: v for k, v in converted.items()})
        return Encoder(
            ours.name, implementation, hf, lambda x: hf(x, output_hidden_states=True).hidden_states
        )
    if family == "swin":
        window = ours.module.layers[0].blocks[0].window_size[0]
        swin = timm_swin(variant, num_classes=0, drop_path_rate=0.0, window_size=window)
        incompatible = ours.module.load_state_dict(swin.state_dict(), strict=False)
        # timm's final norm is not ours; our stage norms norm0..3 are not timm's
        if set(incompatible.unexpected_keys) != {"norm.weight", "norm.bias"} or any(
            not key.startswith("norm") for key in incompatible.missing_keys
        ):
            raise RuntimeError(f"timm's Swin-{variant} does not load into ours: {incompatible}")
        reference = TimmSwinStages(swin, [getattr(ours.module, f"norm{i}") for i in range(4)])
        return Encoder(ours.name, implementation, reference, reference)
    return None


@torch.no_grad()
def max_abs_diff(ours: Encoder, reference: Encoder, images: torch.Tensor) -> float:
    """Largest |ours - reference| over the four stage outputs, both in eval mode."""
    ours.module.eval()
    reference.module.eval()
    pairs = zip(ours.stages(images), reference.stages(images), strict=True)
    return max((a - b).abs().max().item() for a, b in pairs)


def measure(encoder: Encoder, images: torch.Tensor, step_kind: str, args) -> Tuple[float, float]:
    """(median latency in ms, peak MiB) of one inference or training step on ``images``."""
    module = encoder.module
    if step_kind == "inference":
        module.eval()

        @torch.no_grad()
        def step() -> None:
            encoder.stages(images)

    else:
        module.train()
        optimizer = torch.optim.SGD(module.parameters(), lr=1e-4)

        def step() -> None:
            sum(stage.mean() for stage in encoder.stages(images)).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    peak = peak_step_memory(step, images.device) / MIB
    return median_step_ms(step, images.device, args.repeats), peak


def _number(value: float) -> str:
    """4 significant digits (whole numbers from 1000 on), no exponent between 1e-4 and 1e4."""
    return f"{value:#.4g}".rstrip(".") if value < 1e4 else f"{value:.0f}"


def family_rows(family: str, variant: str, images: torch.Tensor, args) -> List[List[str]]:
    """The table rows of one variant: inference rows, then training-step rows."""
    plain = build_ours(family, variant, False, args.opts)
    reference = build_reference(family, variant, plain)
    hila = build_ours(family, variant, True, args.opts)
    for encoder in (plain, reference, hila):
        if encoder is not None:
            encoder.module.to(images.device)
    # (encoder, the encoder its ratios divide by, "ratio over" cell, max |Δ| cell)
    entries: List[Tuple[Encoder, Optional[Encoder], str, str]] = [(plain, None, "—", "—")]
    if reference is not None:
        diff = f"{max_abs_diff(plain, reference, images):.1e}"
        entries = [(reference, None, "", ""), (plain, reference, "reference", diff)]
    entries.append((hila, plain, "plain", ""))
    rows = []
    for step_kind in STEPS:
        results = {}
        for encoder, baseline, over, diff in entries:
            latency, peak = results[id(encoder)] = measure(encoder, images, step_kind, args)
            row = [encoder.name, encoder.implementation, step_kind]
            row += [_number(args.batch * 1e3 / latency), _number(latency), _number(peak), over]
            if baseline is None:
                row += [over] * 3 + [diff]
            else:
                base_latency, base_peak = results[id(baseline)]
                ratios = (base_latency / latency, latency / base_latency, peak / base_peak)
                row += [f"{ratio:.2f}" for ratio in ratios]
                row.append(diff if step_kind == "inference" else "")
            rows.append(row)
    return rows


def notes(args, device: torch.device) -> List[str]:
    """The numbered notes under the table."""
    memory = (
        "CUDA max_memory_allocated"
        if device.type == "cuda"
        else "the CPU allocator's events recorded by torch.profiler"
    )
    lines = [
        "Inference: eval mode, torch.no_grad, the four stage outputs res2..res5. Training step: "
        "train mode, loss = the sum of the four outputs' means, backward, SGD step (lr 1e-4, no "
        "momentum), gradients freed; the same on both sides. Dropout and drop path are 0.",
        f"images/s = batch × 1000 / latency; latency: median wall time of {args.repeats} step(s) "
        f"after {args.warmup} warm-up step(s); peak memory: growth of allocated tensor memory "
        f"during one more step over what was allocated before it ({memory}).",
        "Ratios: this row over the `ratio over` row of the same encoder and step: ours / the "
        "reference implementation, or HILA / plain (images/s ratio > 1, latency and memory ratio "
        "< 1: faster, smaller). HILA: `MODEL.HILA` of "
        + ", ".join(f"`{HILA_CONFIGS[f]}`" for f in FAMILIES)
        + " (S3: one pair, stages 2-3; S234: pairs 1-2, 2-3, 3-4).",
        "Identical weights and inputs: the reference gets a seeded random init that is copied "
        "into ours (MiT: HF names through `hf_segformer_to_official` and `convert_segformer`, "
        "HF's LayerNorm eps set to MiT's; Swin: timm's state dict, whose final norm we lack; our "
        "stage norms norm0..3, which timm lacks, are copied after timm's stage outputs). max abs "
        "Δ: largest |ours − reference| over the four inference outputs (NCHW).",
    ]
    if args.hatnet:
        lines.append(
            "HAT-Net: no library implements it and the official repository has no licence, so "
            "there is no reference to compare with (—)."
        )
    if args.swin:
        window = encoder_cfg("swin", args.swin[0], False, args.opts).MODEL.HILA_D2_SWIN.WINDOW_SIZE
        if any(size // stride % window for stride in STAGE_STRIDES for size in args.size):
            lines.append(
                f"Swin at {args.size[0]}×{args.size[1]}: some stage grid is no multiple of the "
                f"window ({window}); there timm shifts the tokens, then pads them to the window, "
                "while the official Swin segmentation backbone (ours) pads, then shifts, so "
                "border windows differ and max abs Δ is large; both do the same work. Multiples "
                f"of {32 * window} make every grid a multiple of the window."
            )
    return lines


def run(args) -> None:
    """Measure the variants of ``args.mit``, ``args.swin``, ``args.hatnet`` and print the table
    and its notes."""
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, *args.size, generator=generator).to(device)
    rows = []
    for family in FAMILIES:
        for variant in getattr(args, family):
            print(f"measuring {FAMILIES[family][0]}-{variant} ...", file=sys.stderr, flush=True)
            rows += family_rows(family, variant, images, args)
    height, width = args.size
    print(f"### Encoder benchmark: hila_d2 vs reference implementations, {height}×{width}\n")
    print(
        f"- torch {torch.__version__}, timm {timm.__version__}, transformers "
        f"{transformers.__version__}, detectron2 {detectron2.__version__}, Python "
        f"{platform.python_version()}; device: {device} ({device_name(device)}), torch threads: "
        f"{torch.get_num_threads()}; input: {args.batch}×3×{height}×{width} random fp32\n"
    )
    print(markdown_table(HEADER, rows) + "\n")
    for index, note in enumerate(notes(args, device), 1):
        print(f"{index}. {note}")
