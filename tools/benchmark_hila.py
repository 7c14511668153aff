#!/usr/bin/env python
"""Params, fvcore GFLOPs and CPU latency of the MiT and Swin encoders and segmentors with and
without HILA, and of HAT-Net T/S with Semantic FPN, printed as Markdown tables beside the
numbers of docs/design/hila.md §7 and §9.2 and docs/design/hatnet.md §4.

fvcore's FlopCountAnalysis counts one multiply-add as one FLOP, but it is not the official
counting method (mmcv hooks plus analytic attention terms, docs/design/hila.md §9.2 and §11 P14), so
its numbers and the spec's stay in separate, labelled columns.
"""

import argparse
import os
import platform
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import detectron2  # noqa: E402
import torch  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from torch import nn  # noqa: E402

import hila_d2  # noqa: E402
from hila_d2.utils.profiling import (  # noqa: E402
    BackboneOutputs as Encoder,
    device_name,
    fvcore_gflops,
    median_step_ms,
)

CONFIG_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
DATASETS = {  # name -> (title, classes, default input size)
    "ade": ("ADE20K", 150, (512, 512)),
    "city": ("Cityscapes", 19, (1024, 2048)),
}
SEGFORMER_CONV_SEG_WIDTH = 128  # mmseg's unused decode_head.conv_seg is Conv2d(128, K)
OFFICIAL = "docs/design/hila.md §9.2 (official method)"
SWIN_HILA_NORMS_NOTE = (
    "Our Swin + HILA encoders have no norm0-2, whose outputs HILA replaces (docs/design/hila.md §8); the "
    "official counts keep them: ours = spec − 1,344 params (2·(96 + 192 + 384))."
)


@dataclass(frozen=True)
class Model:
    """One benchmarked configuration and its spec numbers (docs/design/hila.md §7 and §9.2)."""

    key: str
    label: str
    group: str
    base: Optional[str]
    configs: Dict[str, str]  # dataset -> config file under configs/
    encoder_params: float  # §7 backbone total, M
    params: Dict[str, float]  # dataset -> §9.2 segmentor params, M
    gflops: Dict[Tuple[str, int, int], float]  # (dataset, H, W) -> §9.2 segmentor GFLOPs
    encoder_gflops: Dict[Tuple[str, int, int], float]  # (dataset, H, W) -> encoder GFLOPs


def _mit(key, label, base, ade, city, encoder_params, params, gflops) -> Model:
    """A MiT model: (ADE, City) params and GFLOPs at 512x512 and 1024x2048."""
    return Model(
        key, label, "mit", base,
        {"ade": f"ade20k/semantic-segmentation/{ade}.yaml",
         "city": f"cityscapes/semantic-segmentation/{city}.yaml"},
        encoder_params, dict(zip(("ade", "city"), params)),
        {("ade", 512, 512): gflops[0], ("city", 1024, 2048): gflops[1]}, {},
    )  # fmt: skip


def _swin(key, label, config, encoder_params, params, gflops) -> Model:
    """A Swin UperNet model on ADE20K (no Cityscapes configs)."""
    base = None if key == "upernet_swin_t" else "upernet_swin_t"
    return Model(
        key, label, "swin", base, {"ade": f"ade20k/semantic-segmentation/swin/{config}.yaml"},
        encoder_params, {"ade": params}, gflops, {},
    )  # fmt: skip


def _hatnet(variant, encoder_params, encoder_gflops) -> Model:
    """A HAT-Net Semantic FPN model on ADE20K: docs/design/hatnet.md §4's backbone params and fvcore
    total at 224x224 (no official segmentor numbers exist)."""
    key = f"semantic_fpn_hatnet_{variant}"
    return Model(
        key, f"HAT-Net-{variant.upper()} + Semantic FPN", "hatnet", None,
        {"ade": f"ade20k/semantic-segmentation/hatnet/{key}_40k.yaml"}, encoder_params, {}, {},
        {("ade", 224, 224): encoder_gflops},
    )  # fmt: skip


MODELS = [
    _mit("segformer_mit_b0", "SegFormer-B0", None, "segformer_mit_b0_bs16_160k",
         "segformer_mit_b0_bs8_160k", 3.319, (3.772, 3.721), (8.42, 121.2)),
    _mit("hila_mit_b0_s3", "B0 + S3", "segformer_mit_b0", "hila/hila_mit_b0_s3_160k",
         "hila/hila_mit_b0_s3_160k", 3.745, (4.197, 4.147), (9.75, 139.4)),
    _mit("segformer_mit_b1", "SegFormer-B1", None, "segformer_mit_b1_bs16_160k",
         "segformer_mit_b1_bs8_160k", 13.151, (13.735, 13.685), (15.93, 239.5)),
    _mit("hila_mit_b1_s3", "B1 + S3", "segformer_mit_b1", "hila/hila_mit_b1_s3_160k",
         "hila/hila_mit_b1_s3_160k", 14.821, (15.405, 15.355), (20.91, 294.4)),
    _mit("hila_mit_b1_s234", "B1 + S234", "segformer_mit_b1", "hila/hila_mit_b1_s234_160k",
         "hila/hila_mit_b1_s234_160k", 21.043, (21.627, 21.576), (31.37, 417.5)),
    _mit("segformer_mit_b2", "SegFormer-B2", None, "segformer_mit_b2_bs16_160k",
         "segformer_mit_b2_bs8_160k", 24.196, (27.481, 27.364), (62.43, 704.2)),
    _mit("hila_mit_b2_s234", "B2(2,2,6,2) + S234", "segformer_mit_b2",
         "hila/hila_mit_b2_s234_320k_nohilapretraining",
         "hila/hila_mit_b2_s234_320k_nohilapretraining", 27.669, (30.954, 30.836),
         (76.45, 867.1)),
    _swin("upernet_swin_t", "UperNet Swin-T", "upernet_swin_t_160k", 27.521, 59.94,
          {("ade", 512, 512): 236.8, ("ade", 512, 2048): 944.4}),
    _swin("hila_upernet_swin_t_s234", "UperNet Swin-T + HILA", "hila_upernet_swin_t_s234_160k",
          35.339, 67.76, {("ade", 512, 512): 263.6, ("ade", 512, 2048): 1063.7}),
    _swin("hila_upernet_swin_t_s234_nohilapretraining", "UperNet Swin-T + HILA, mlp-4 lower",
          "hila_upernet_swin_t_s234_160k_nohilapretraining", 36.115, 68.54, {}),
    _hatnet("t", 12.270912, 2.146),
    _hatnet("s", 25.234784, 4.576),
]  # fmt: skip
GROUPS = ("mit", "swin", "hatnet")
GROUP_TITLES = {
    "mit": "MiT + SegFormer head", "swin": "Swin + UperNet", "hatnet": "HAT-Net + Semantic FPN",
}  # fmt: skip
# group -> (source of the spec's encoder params, of its encoder GFLOPs, of its segmentor numbers)
GROUP_SOURCES = {
    "mit": ("docs/design/hila.md §7", OFFICIAL, OFFICIAL),
    "swin": ("docs/design/hila.md §7", OFFICIAL, OFFICIAL),
    "hatnet": ("docs/design/hatnet.md §4", "docs/design/hatnet.md §4 fvcore", "none published"),
}


class Segmentor(nn.Module):
    """Backbone + semantic head in eval mode: images -> logits at the input resolution."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))[0]


@dataclass
class Measurement:
    """One encoder or segmentor: params, fvcore GFLOPs with its skipped ops, latency."""

    params: int
    gflops: Optional[float]
    skipped: Counter
    latency_ms: Optional[float]


def build(config_file: str) -> nn.Module:
    """The eval-mode CPU model of a project config (BatchNorm in place of SyncBN)."""
    cfg = get_cfg()
    hila_d2.add_hila_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIG_ROOT, config_file))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.SEM_SEG_HEAD.NORM", "BN"])
    return build_model(cfg).eval()


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def median_latency_ms(module: nn.Module, images: torch.Tensor, warmup: int, repeats: int) -> float:
    """Median wall time of ``repeats`` forward passes after ``warmup`` untimed ones."""
    for _ in range(warmup):
        module(images)
    return median_step_ms(lambda: module(images), images.device, repeats)


@torch.no_grad()
def measure(module: nn.Module, params: int, images: torch.Tensor, args) -> Measurement:
    """fvcore GFLOPs and latency of ``module`` on ``images``, each unless switched off."""
    gflops, skipped = (None, Counter()) if args.no_flops else fvcore_gflops(module, images)
    latency = (
        None if args.no_latency else median_latency_ms(module, images, args.warmup, args.repeats)
    )
    return Measurement(params, gflops, skipped, latency)


def _fmt(value: Optional[float], digits: Optional[int] = None, signed: bool = False) -> str:
    """``–`` for None, else ``digits`` decimals (None: as written, for the spec's numbers)."""
    if value is None:
        return "–"
    if digits is None:
        return f"{value:g}"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def table_rows(
    models: List[Model], results: Dict[str, Measurement], spec_params, spec_gflops
) -> List[List[str]]:
    """One Markdown row per model: ours, the spec's, and the overhead over its base model."""
    rows = []
    for model in models:
        row, base = results[model.key], results.get(model.base)
        d_params = d_gflops = ratio = None
        if base is not None:
            d_params = (row.params - base.params) / 1e6
            d_gflops = None if row.gflops is None else row.gflops - base.gflops
            ratio = None if row.latency_ms is None else row.latency_ms / base.latency_ms
        rows.append([
            f"{model.label} `{model.key}`",
            _fmt(row.params / 1e6, 3),
            _fmt(spec_params(model)),
            _fmt(row.gflops, 3),
            _fmt(spec_gflops(model)),
            _fmt(row.latency_ms, 1),
            _fmt(d_params, 3, signed=True),
            _fmt(d_gflops, 3, signed=True),
            "–" if ratio is None else f"×{ratio:.2f}",
        ])  # fmt: skip
    return rows


def print_table(
    title: str, params_source: str, gflops_source: str, rows: List[List[str]], notes: List[str]
) -> None:
    """A Markdown table (spec params from ``params_source``, spec GFLOPs from
    ``gflops_source``) + notes."""
    header = [
        "model", "params (M) ours", f"params (M) {params_source}", "GFLOPs fvcore",
        f"GFLOPs {gflops_source}", "CPU latency (ms)", "Δ params (M) ours", "Δ GFLOPs fvcore",
        "latency ratio",
    ]  # fmt: skip
    print(f"\n### {title}\n")
    for line in (header, ["---"] * len(header), *rows):
        print("| " + " | ".join(line) + " |")
    print()
    for index, note in enumerate(notes, 1):
        print(f"{index}. {note}")


def skipped_note(models: List[Model], results: Dict[str, Measurement], args) -> List[str]:
    """The ops fvcore skipped, one line per model."""
    if args.no_flops:
        return []
    lines = ["Ops fvcore skipped (not counted), per model:"]
    for model in models:
        skipped = results[model.key].skipped
        ops = ", ".join(f"`{op}` ×{n}" for op, n in sorted(skipped.items())) or "none"
        lines.append(f"   - `{model.key}`: {ops}")
    return ["\n".join(lines)]


def common_notes(args) -> List[str]:
    notes = [
        "GFLOPs fvcore: fvcore's FlopCountAnalysis on the traced forward, 1 multiply-add = 1 "
        "FLOP, plus one handle added here for `aten::scaled_dot_product_attention` (Q·Kᵀ and "
        "A·V multiply-adds), which fvcore would skip. It counts the attention matmuls itself "
        "(every HILA iteration as run) and counts BatchNorm, bilinear interpolation (4 per "
        "output element) and adaptive pooling, which the official method skips. These are not "
        "the official numbers.",
        "Δ columns and latency ratio: the HILA row over its base model (same dataset, size, "
        "threads); `–` for base rows or when the base model was not run.",
    ]
    if not args.no_latency:
        notes.append(
            f"CPU latency: median of {args.repeats} runs after {args.warmup} warm-up runs, batch "
            "1, fp32, eval mode, torch.no_grad; noisy on a shared host."
        )
    return notes


def encoder_notes(group: str) -> List[str]:
    if group == "hatnet":
        return [
            "Encoder = backbone alone. Params spec: docs/design/hatnet.md §4 backbone without classifier. "
            "GFLOPs spec: docs/design/hatnet.md §4's fvcore total (conv + attention matmuls + GroupNorm) of "
            "the classification model at 224×224, shown at `--size 224 224` only (its "
            "classifier adds 0.0004 G). HAT-Net's README FLOPs (2.0 / 4.3 G) leave out the "
            "attention matmuls (§4).",
        ]
    notes = [
        "Encoder = backbone alone. Params spec: docs/design/hila.md §7 backbone totals (parameters, buffers "
        "excluded); §9.2 gives no encoder-only FLOPs."
    ]
    if group == "swin":
        notes.append(
            "Swin §7 totals: Swin-T with norm0-3; the mlp-4 row is §7's count after the reuse "
            f"copy. {SWIN_HILA_NORMS_NOTE}"
        )
    return notes


def segmentor_notes(group: str, dataset: str) -> List[str]:
    _, classes, _ = DATASETS[dataset]
    if group == "hatnet":
        return [
            "Segmentor = HAT-Net FPN backbone (p2..p6, 256 channels) + detectron2's "
            "SemSegFPNHead, one whole image (logits upsampled to the input size). HAT-Net "
            "released no dense-prediction code or numbers (docs/design/hatnet.md §6, §8), so there is no "
            "spec column to compare with.",
        ]
    notes = [
        f"GFLOPs {OFFICIAL}: mmcv hook counter (Linear, Conv, LayerNorm ×2, ReLU; 1 "
        "multiply-add = 1 FLOP; skips BN, GELU, softmax, matmul, interpolation) plus analytic "
        "attention terms 2·n1·n2·dim, HILA charged as if stride 1 (§11 P14), so an "
        "approximation. §9.2 gives them for ADE 512×512, Cityscapes 1024×2048 and Swin "
        "512×2048 only; other sizes show `–`.",
        "Segmentor = backbone + decode head, one whole image through both (logits upsampled to "
        "the input size, as in eval).",
    ]
    if group == "mit":
        conv_seg = SEGFORMER_CONV_SEG_WIDTH * classes + classes
        notes.append(
            f"Params: the official counts include mmseg's unused `decode_head.conv_seg` "
            f"(Conv2d({SEGFORMER_CONV_SEG_WIDTH}, {classes}) = {conv_seg:,} params = "
            f"{conv_seg / 1e6:.3f} M), which our SegFormerHead lacks: ours = spec − "
            f"{conv_seg / 1e6:.3f} M when the architectures match."
        )
        notes.append(
            'B2(2,2,6,2) + S234 is HILA\'s "B2": depths 2,2,6,2 (SegFormer-B2: 3,4,6,3), both '
            "with head width 768, so its Δ over SegFormer-B2 mixes HILA with a shallower trunk."
        )
        if dataset == "city":
            notes.append(
                "SegFormer's published Cityscapes GFLOPs are 125.5 / 243.7 / 717.1 (B0 / B1 / "
                "B2); §9.2's replication of the official method undershoots them by ≈4 G. The "
                "sliding-window test (1024² windows) is not what is measured here."
            )
    else:
        notes.append(
            "Params include the auxiliary FCN head (not run at inference, so not in GFLOPs or "
            "latency), as the spec's do; UperNet's `conv_seg` is its classifier, counted on "
            "both sides. The mlp-4 row has the ratio-4 lower-level blocks of a reuse-trained "
            f"checkpoint (§9.2 gives its params, not its FLOPs). {SWIN_HILA_NORMS_NOTE}"
        )
    return notes


def environment(args, size: Tuple[int, int]) -> List[str]:
    """Versions, CPU, threads and input, one line each."""
    title, classes, _ = DATASETS[args.dataset]
    return [
        f"torch {torch.__version__}, detectron2 {detectron2.__version__}, Python "
        f"{platform.python_version()}",
        f"CPU: {device_name(torch.device('cpu'))} ({os.cpu_count()} logical CPUs visible), "
        f"torch threads: {torch.get_num_threads()}",
        f"input: 1×3×{size[0]}×{size[1]} random fp32, {title} configs ({classes} classes)",
    ]


def select(args) -> List[Model]:
    """The models of ``--models`` and ``--only`` that have a config for ``--dataset``."""
    groups = GROUPS if args.models == "all" else (args.models,)
    return [
        m
        for m in MODELS
        if m.group in groups and args.dataset in m.configs and (not args.only or m.key in args.only)
    ]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", choices=(*GROUPS, "all"), default="all")
    parser.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        default="ade",
        help="config family (classes); Swin and HAT-Net have ADE20K configs only",
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="input size, multiples of 32 (default: ADE 512 512, city 1024 2048)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="KEY",
        help="run only these models (keys as printed in the tables)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    parser.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch.set_num_threads (default: torch's current setting)",
    )
    parser.add_argument("--no-latency", action="store_true", help="skip the latency runs")
    parser.add_argument("--no-flops", action="store_true", help="skip fvcore's FLOP count")
    args = parser.parse_args(argv)
    if args.size and any(s <= 0 or s % 32 for s in args.size):
        parser.error(f"--size must be positive multiples of 32, got {args.size}")
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1, --warmup >= 0")
    unknown = set(args.only or ()) - {m.key for m in MODELS}
    if unknown:
        parser.error(f"unknown --only keys {sorted(unknown)}; known: {[m.key for m in MODELS]}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    size = tuple(args.size) if args.size else DATASETS[args.dataset][2]
    models = select(args)

    print("## HILA benchmark: params, GFLOPs, CPU latency\n")
    for line in environment(args, size):
        print(f"- {line}")
    if not models:
        print("\nNo model matches the selection (Swin and HAT-Net have ADE20K configs only).")
        return

    torch.manual_seed(0)
    images = torch.randn(1, 3, *size)
    results = {"encoder": {}, "segmentor": {}}
    for model in models:
        print(f"measuring {model.key} ...", file=sys.stderr, flush=True)
        built = build(model.configs[args.dataset])
        encoder = getattr(built.backbone, "bottom_up", built.backbone)  # inside an FPN or bare
        results["encoder"][model.key] = measure(
            Encoder(encoder), count_params(encoder), images, args
        )
        results["segmentor"][model.key] = measure(
            Segmentor(built.backbone, built.sem_seg_head), count_params(built), images, args
        )

    title = DATASETS[args.dataset][0]
    for group in GROUPS:
        members = [m for m in models if m.group == group]
        if not members:
            continue
        params_source, encoder_gflops_source, segmentor_source = GROUP_SOURCES[group]
        encoders = results["encoder"]
        print_table(
            f"{GROUP_TITLES[group]}: encoders, {title}, {size[0]}×{size[1]}",
            params_source,
            encoder_gflops_source,
            table_rows(
                members, encoders, lambda m: m.encoder_params,
                lambda m: m.encoder_gflops.get((args.dataset, *size)),
            ),
            encoder_notes(group) + common_notes(args) + skipped_note(members, encoders, args),
        )  # fmt: skip
        segmentors = results["segmentor"]
        print_table(
            f"{GROUP_TITLES[group]}: segmentors, {title}, {size[0]}×{size[1]}",
            segmentor_source,
            segmentor_source,
            table_rows(
                members, segmentors, lambda m: m.params.get(args.dataset),
                lambda m: m.gflops.get((args.dataset, *size)),
            ),
            segmentor_notes(group, args.dataset) + common_notes(args)
            + skipped_note(members, segmentors, args),
        )  # fmt: skip


if __name__ == "__main__":
    main()
