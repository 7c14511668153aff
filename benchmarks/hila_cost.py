"""``tools/benchmark.py hila-cost``: what HILA costs on top of its plain encoder: fvcore FLOPs,
inference latency, training-step time and peak memory, as ratios HILA / plain beside the FLOP
ratio and the targets, for the current formulation of the inter-level attention, the reference
(first) formulation (``benchmarks.hila_reference``), opt-in activation checkpointing
(``MODEL.HILA.CHECKPOINT``) and, with ``--compile``, ``torch.compile``; one Markdown table,
then notes.

The models compared in one case are timed interleaved (one step of each in turn, ``--repeats``
rounds, median), so that machine noise hits them alike. The encoders are built from the shipped
configs (``CASES``) through detectron2's backbone registry with the same seed. FLOPs are counted
on the reference formulation, whose attention products are matmuls that fvcore counts; the
current one computes the same products elementwise, which fvcore skips (the totals differ by
< 0.3%). Targets (inference latency ratio <= bound x FLOP ratio; training peak-memory ratio <=
FLOP ratio, and <= 1.5 for the S3 cases; MiT-B1 + S3 at most 0.8 x plain MiT-B2's latency) are
checked on CPU, fp32, batch 1. On CUDA the same table uses synchronized timings and
``max_memory_allocated``.
"""

import contextlib
import platform
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.modeling import build_backbone
from torch import nn
from torch.profiler import ProfilerActivity, profile

from .hila_reference import reference_formulation
from .profiling import (
    MIB,
    BackboneOutputs,
    device_name,
    fvcore_gflops,
    interleaved_median_ms,
    markdown_table,
    peak_step_memory,
)
from .configs import benchmark_config

__all__ = ["CASES", "DEFAULT_CASES", "run"]

ADE = "ade20k/semantic-segmentation"
BUILTIN = "builtin/semantic-segmentation"


@dataclass(frozen=True)
class Case:
    """A HILA encoder and its plain encoder (configs under configs/, then the ``KEY VALUE``
    pairs ``opts`` for both), with the targets: inference latency ratio <= ``latency_bound`` x
    FLOP ratio, training-step ratio <= ``train_bound`` x FLOP ratio; ``s3``: memory ratio <= 1.5
    too."""

    name: str
    plain: str
    hila: str
    latency_bound: float
    s3: bool
    train_bound: float
    opts: Tuple[str, ...] = ()


def timm_s3_case(name: str, timm_name: str) -> Case:
    """timm's ``timm_name`` plain and + HILA S3, in the built-in ConvNeXt-Atto configs with
    ``MODEL.TIMM.NAME`` set (with Swin's targets)."""
    return Case(
        f"timm {name} + S3", f"{BUILTIN}/segformer_timm_convnext_atto.yaml",
        f"{BUILTIN}/hila_segformer_timm_convnext_atto_s3.yaml", 1.25, True, 1.3,
        ("MODEL.TIMM.NAME", timm_name),
    )  # fmt: skip


CASES: Dict[str, Case] = {
    "mit-b0-s3": Case(
        "MiT-B0 + S3", f"{ADE}/segformer_mit_b0_bs16_160k.yaml",
        f"{ADE}/hila/hila_mit_b0_s3_160k.yaml", 1.1, True, 1.15,
    ),
    "mit-b1-s3": Case(
        "MiT-B1 + S3", f"{ADE}/segformer_mit_b1_bs16_160k.yaml",
        f"{ADE}/hila/hila_mit_b1_s3_160k.yaml", 1.1, True, 1.15,
    ),
    "mit-b1-s234": Case(
        "MiT-B1 + S234", f"{ADE}/segformer_mit_b1_bs16_160k.yaml",
        f"{ADE}/hila/hila_mit_b1_s234_160k.yaml", 1.1, False, 1.15,
    ),
    "swin-t-s234": Case(
        "Swin-T + S234", f"{ADE}/swin/upernet_swin_t_160k.yaml",
        f"{ADE}/swin/hila_upernet_swin_t_s234_160k.yaml", 1.25, False, 1.3,
    ),
    "hatnet-t-s3": Case(
        "HAT-Net-T + S3", f"{BUILTIN}/semantic_fpn_hatnet_t.yaml",
        f"{BUILTIN}/hila_semantic_fpn_hatnet_t_s3.yaml", 1.25, True, 1.3,
    ),
    "timm-convnext-atto-s3": timm_s3_case("ConvNeXt-Atto", "convnext_atto"),
    "timm-pvt-v2-b0-s3": Case(
        "timm PVTv2-B0 + S3", f"{BUILTIN}/segformer_timm_pvt_v2_b0.yaml",
        f"{BUILTIN}/hila_segformer_timm_pvt_v2_b0_s3.yaml", 1.25, True, 1.3,
    ),
}  # fmt: skip
# the headline cases, which `hila-cost` runs unless --cases names others
DEFAULT_CASES = tuple(CASES)
# one small model of each other timm family that takes HILA (docs/TIMM.md)
CASES.update({
    "timm-mambaout-femto-s3": timm_s3_case("MambaOut-Femto", "mambaout_femto"),
    "timm-edgenext-xx-small-s3": timm_s3_case("EdgeNeXt-XXS", "edgenext_xx_small"),
    "timm-inception-next-atto-s3": timm_s3_case("InceptionNeXt-Atto", "inception_next_atto"),
    "timm-fastvit-t8-s3": timm_s3_case("FastViT-T8", "fastvit_t8"),
    "timm-repvit-m0-9-s3": timm_s3_case("RepViT-M0.9", "repvit_m0_9"),
    "timm-tiny-vit-5m-s3": timm_s3_case("TinyViT-5M", "tiny_vit_5m_224"),
    "timm-poolformerv2-s12-s3": timm_s3_case("PoolFormerV2-S12", "poolformerv2_s12"),
    "timm-focalnet-tiny-srf-s3": timm_s3_case("FocalNet-T (SRF)", "focalnet_tiny_srf"),
    "timm-davit-tiny-s3": timm_s3_case("DaViT-T", "davit_tiny"),
    "timm-caformer-s18-s3": timm_s3_case("CAFormer-S18", "caformer_s18"),
})  # fmt: skip
# the paper's trade: MiT-B1 + S3 against plain MiT-B2, timed in the MiT-B1 + S3 case
B2_CONFIG = f"{ADE}/segformer_mit_b2_bs16_160k.yaml"
B2_CASE, B2_BOUND = "mit-b1-s3", 0.8
HEADER = [
    "encoder", "implementation", "GFLOPs", "FLOP ratio", "inference (ms)", "latency ratio",
    "latency target", "training step (ms)", "training peak (MiB)", "memory ratio",
    "memory target", "training ratio", "training target",
]  # fmt: skip


@dataclass
class Variant:
    """One implementation of a case's encoder: how to run a step of it and what was measured."""

    label: str
    module: nn.Module
    wrap: Callable[[nn.Module], object]  # context manager around every step
    eager: bool = True  # its FLOPs are counted (compiled modules are not traced)
    inference: bool = True  # timed in inference (the checkpointed model's forward is HILA's)
    training: bool = True  # timed and measured in training
    gflops: Optional[float] = None
    inference_ms: Optional[float] = None
    train_ms: Optional[float] = None
    train_mib: Optional[float] = None


def _plain_run(module: nn.Module) -> contextlib.nullcontext:
    """The ``wrap`` of a variant that runs the module as built."""
    return contextlib.nullcontext()


def build_encoder(config: str, device: str, opts: Sequence[str] = ()) -> nn.Module:
    """The backbone of ``configs/<config>`` (then ``opts``), seeded, on ``device``."""
    cfg = benchmark_config(f"configs/{config}", ["MODEL.DEVICE", device, *opts])
    torch.manual_seed(0)
    return build_backbone(cfg).to(device)


def inference_step(variant: Variant, images: torch.Tensor) -> Callable[[], None]:
    variant.module.eval()

    def step() -> None:
        with torch.no_grad(), variant.wrap(variant.module):
            variant.module(images)

    return step


def training_step(variant: Variant, images: torch.Tensor) -> Callable[[], None]:
    """Forward, backward of the mean of every output, SGD step."""
    variant.module.train()
    optimizer = torch.optim.SGD(variant.module.parameters(), lr=1e-6)

    def step() -> None:
        with variant.wrap(variant.module):
            outputs = variant.module(images).values()
            sum(out.mean() for out in outputs).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def case_variants(key: str, args) -> List[Variant]:
    """plain, HILA, HILA with the reference formulation, HILA with activation checkpointing,
    and with ``--compile`` both compiled; plain MiT-B2 in its case."""
    case = CASES[key]
    plain = build_encoder(case.plain, args.device, case.opts)
    hila = build_encoder(case.hila, args.device, case.opts)
    variants = [
        Variant("plain", plain, _plain_run),
        Variant("HILA", hila, _plain_run),
        Variant("HILA, reference formulation", hila, reference_formulation),
        Variant(
            "HILA, MODEL.HILA.CHECKPOINT",
            build_encoder(case.hila, args.device, [*case.opts, "MODEL.HILA.CHECKPOINT", "True"]),
            _plain_run,
            eager=False,
            inference=False,
        ),
    ]
    if args.compile:
        variants += [
            Variant(f"{v.label}, torch.compile", torch.compile(v.module, dynamic=False),
                    _plain_run, eager=False)
            for v in variants[:2]
        ]  # fmt: skip
    if key == B2_CASE:
        b2 = build_encoder(B2_CONFIG, args.device)
        variants.append(Variant("plain MiT-B2", b2, _plain_run, training=False))
    return variants


def measure_case(key: str, images: torch.Tensor, args) -> List[Variant]:
    """Every variant's FLOPs, interleaved inference latencies, training steps and peak memory."""
    variants = case_variants(key, args)
    gflops = {}  # by module: "HILA" and its reference formulation are one model, counted once
    for variant in (v for v in variants if v.eager):
        if id(variant.module) not in gflops:
            with torch.no_grad(), reference_formulation(variant.module):
                module = BackboneOutputs(variant.module.eval())
                gflops[id(variant.module)], _ = fvcore_gflops(module, images)
        variant.gflops = gflops[id(variant.module)]
    inference = [v for v in variants if v.inference]
    medians = interleaved_median_ms(
        [inference_step(v, images) for v in inference], images.device, args.warmup, args.repeats
    )
    for variant, ms in zip(inference, medians):
        variant.inference_ms = ms
    training = [v for v in variants if v.training]
    steps = [training_step(v, images) for v in training]
    for variant, ms in zip(
        training, interleaved_median_ms(steps, images.device, args.warmup, args.repeats)
    ):
        variant.train_ms = ms
    for variant, step in zip(training, steps):
        variant.train_mib = peak_step_memory(step, images.device) / MIB
    return variants


def _fmt(value: Optional[float], digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _check(ratio: Optional[float], bound: float) -> str:
    """``≤ bound ✓`` or ``≤ bound ✗`` (``–`` without a ratio)."""
    if ratio is None:
        return "–"
    return f"≤ {bound:.2f} {'✓' if ratio <= bound else '✗'}"


def case_rows(case: Case, variants: List[Variant]) -> List[List[str]]:
    """One table row per variant, ratios over the plain encoder of the case."""
    plain = variants[0]
    flop_ratio = variants[1].gflops / plain.gflops
    compiled_plain = next((v for v in variants if v.label == "plain, torch.compile"), None)
    rows = []
    for variant in variants:
        is_hila = variant.label.startswith("HILA")
        base = compiled_plain if variant.label == "HILA, torch.compile" else plain
        latency = variant.inference_ms / base.inference_ms if variant.inference_ms else None
        train = variant.train_ms / base.train_ms if variant.train_ms else None
        memory = variant.train_mib / base.train_mib if variant.train_mib else None
        memory_bound = min(flop_ratio, 1.5) if case.s3 else flop_ratio
        ratio_of = variant.gflops / plain.gflops if variant.gflops else None
        rows.append(
            [
                case.name if variant is plain else "",
                variant.label,
                _fmt(variant.gflops),
                _fmt(ratio_of if variant is not plain else None),
                _fmt(variant.inference_ms, 1),
                _fmt(latency if variant is not plain else None),
                _check(latency, case.latency_bound * flop_ratio) if is_hila else "–",
                _fmt(variant.train_ms, 1),
                _fmt(variant.train_mib, 1),
                _fmt(memory if variant is not plain else None),
                _check(memory, memory_bound) if is_hila and variant.train_mib else "–",
                _fmt(train if variant is not plain else None),
                _check(train, case.train_bound * flop_ratio) if is_hila else "–",
            ]
        )
    return rows


def profile_tables(case: Case, variants: List[Variant], images: torch.Tensor, top: int) -> str:
    """Per op, the extra self time and allocations of HILA (current and reference formulation)
    over the plain encoder, in one inference and one training step: where HILA's cost goes."""
    sections = []
    for kind, make_step in (("inference", inference_step), ("training step", training_step)):
        totals = {}
        for variant in variants[:3]:
            step = make_step(variant, images)
            step()
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                step()
            totals[variant.label] = {
                e.key: (e.self_cpu_time_total / 1e3, e.self_cpu_memory_usage / MIB, e.count)
                for e in prof.key_averages()
            }
        plain = totals["plain"]
        for label in ("HILA", "HILA, reference formulation"):
            extra = {
                op: (ms - plain.get(op, (0, 0, 0))[0], mib - plain.get(op, (0, 0, 0))[1], n)
                for op, (ms, mib, n) in totals[label].items()
            }
            total_ms = sum(max(ms, 0.0) for ms, _, _ in extra.values())
            ranked = sorted(extra.items(), key=lambda item: -item[1][0])[:top]
            rows = [
                [op, f"{ms:.1f}", f"{100 * ms / total_ms:.0f}%", f"{mib:.1f}", str(n)]
                for op, (ms, mib, n) in ranked
            ]
            header = ["op", "extra self time (ms)", "share", "extra allocated (MiB)", "calls"]
            sections.append(
                f"#### {case.name}, {label}, {kind}: extra over plain, {total_ms:.0f} ms in all\n\n"
                + markdown_table(header, rows)
            )
    return "\n\n".join(sections)


def notes(args, device: torch.device, b2_ratio: Optional[float]) -> List[str]:
    lines = [
        f"torch {torch.__version__}, {device_name(device)}, {torch.get_num_threads()} threads, "
        f"Python {platform.python_version()}; batch {args.batch}, fp32, "
        f"{args.size[0]}×{args.size[1]}; {args.repeats} interleaved rounds after {args.warmup} "
        "warm-up steps, medians.",
        "FLOP ratio: HILA / plain fvcore GFLOPs of the encoder. Latency target: the case's bound "
        "(1.1 for MiT, 1.25 for Swin, HAT-Net and timm encoders) x FLOP ratio. Memory target: "
        "the FLOP ratio (and 1.5 for S3). Training target: 1.15 (MiT) or 1.3 (the others) x "
        "FLOP ratio. "
        "Compiled HILA's ratios are over the compiled plain encoder.",
        "Training step: forward, backward of the sum of the outputs' means, SGD step, with the "
        "configs' drop path; peak: "
        + ("max_memory_allocated." if device.type == "cuda" else "torch.profiler's CPU allocator "
           "events, above what was allocated before the step."),
    ]  # fmt: skip
    if b2_ratio is not None:
        mark = "✓" if b2_ratio <= B2_BOUND else "✗"
        lines.append(
            f"MiT-B1 + S3 latency / plain MiT-B2 latency: {b2_ratio:.2f} (target ≤ {B2_BOUND} "
            f"{mark}), timed interleaved in the MiT-B1 + S3 case."
        )
    return lines


def run(args) -> None:
    """Measure the cases of ``args.cases`` and print the table, its notes and, with
    ``args.profile``, the per-op tables."""
    device = torch.device(args.device)
    images = torch.randn(args.batch, 3, *args.size, generator=torch.Generator().manual_seed(0))
    images = images.to(device)
    rows, profiles, b2_ratio = [], [], None
    for key in args.cases:
        case = CASES[key]
        variants = measure_case(key, images, args)
        rows += case_rows(case, variants)
        if key == B2_CASE:
            by_label = {v.label: v for v in variants}
            b2_ratio = by_label["HILA"].inference_ms / by_label["plain MiT-B2"].inference_ms
        if args.profile:
            profiles.append(profile_tables(case, variants, images, args.profile))
    print(f"### HILA's cost over the plain encoder, {args.size[0]}×{args.size[1]}\n")
    print(markdown_table(HEADER, rows))
    print()
    for line in notes(args, device, b2_ratio):
        print(f"- {line}")
    for section in profiles:
        print(f"\n{section}")
