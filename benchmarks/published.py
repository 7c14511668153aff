"""The published parameter counts and GFLOPs of the MiT and Swin encoders and segmentors with
and without HILA and of HAT-Net T/S with Semantic FPN (docs/design/hila.md §7 and §9.2,
docs/design/hatnet.md §4), the models they belong to, and the tables of our counts beside them
that ``tools/analyze_model.py --published`` prints; ``tools/benchmark.py latency`` times the same
models (``select``, ``build_parts``).

fvcore's FlopCountAnalysis counts one multiply-add as one FLOP, but it is not the official
counting method (mmcv hooks plus analytic attention terms, docs/design/hila.md §9.2 and §11 P14),
so its numbers and the published ones stay in separate, labelled columns.
"""

import argparse
import os
import platform
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import detectron2
import torch
from detectron2.modeling import build_model
from torch import nn

from .profiling import BackboneOutputs, device_name, fvcore_gflops, markdown_table
from .configs import benchmark_config

__all__ = [
    "DATASETS", "GROUPS", "MODELS", "PARTS", "Model", "add_selection_arguments", "build_parts",
    "check_selection", "each_part", "environment", "input_size", "model_cell",
    "overhead_note", "part_title", "print_published_tables", "select",
]  # fmt: skip

DATASETS = {  # name -> (title, classes, default input size)
    "ade": ("ADE20K", 150, (512, 512)),
    "city": ("Cityscapes", 19, (1024, 2048)),
}
SEGFORMER_CONV_SEG_WIDTH = 128  # mmseg's unused decode_head.conv_seg is Conv2d(128, K)
OFFICIAL = "docs/design/hila.md §9.2 (official method)"
SWIN_HILA_NORMS_NOTE = (
    "Our Swin + HILA encoders have no norm0-2, whose outputs HILA replaces (docs/design/hila.md "
    "§8); the official counts keep them: ours = published − 1,344 params (2·(96 + 192 + 384))."
)


@dataclass(frozen=True)
class Model:
    """One model, its configs, and its published numbers (docs/design/hila.md §7 and §9.2)."""

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
    """A HAT-Net Semantic FPN model on ADE20K: docs/design/hatnet.md §4's backbone params and
    fvcore total at 224x224 (no official segmentor numbers exist)."""
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
# group -> (source of the published encoder params, of the encoder GFLOPs, of the segmentor numbers)
GROUP_SOURCES = {
    "mit": ("docs/design/hila.md §7", OFFICIAL, OFFICIAL),
    "swin": ("docs/design/hila.md §7", OFFICIAL, OFFICIAL),
    "hatnet": ("docs/design/hatnet.md §4", "docs/design/hatnet.md §4 fvcore", "none published"),
}


PARTS = ("encoder", "segmentor")


class Segmentor(nn.Module):
    """Backbone + semantic head in eval mode: images (B, 3, H, W) -> logits (B, K, H, W)."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))[0]


def build_parts(model: Model, dataset: str, device: str) -> Dict[str, Tuple[nn.Module, int]]:
    """The eval-mode encoder (images (B, 3, H, W) -> its features, a tuple) and segmentor
    (-> logits (B, K, H, W)) of ``model``'s ``dataset`` config on ``device``, by part, each with
    its parameter count (the segmentor's: the whole built model, auxiliary heads included)."""
    cfg = benchmark_config(f"configs/{model.configs[dataset]}", ["MODEL.DEVICE", device])
    built = build_model(cfg).eval()
    encoder = getattr(built.backbone, "bottom_up", built.backbone)  # inside an FPN or bare
    return {
        "encoder": (BackboneOutputs(encoder), count_params(encoder)),
        "segmentor": (Segmentor(built.backbone, built.sem_seg_head), count_params(built)),
    }


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def each_part(
    models: Sequence[Model], dataset: str, device: str
) -> Iterator[Tuple[Model, str, nn.Module, int]]:
    """(model, part, module, params) for the two parts of every model, built in turn."""
    for model in models:
        print(f"measuring {model.key} ...", file=sys.stderr, flush=True)
        parts = build_parts(model, dataset, device)
        for part, (module, params) in parts.items():
            yield model, part, module, params


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """``--models``, ``--dataset`` and ``--only``: which of ``MODELS`` to run."""
    parser.add_argument("--models", choices=(*GROUPS, "all"), default="all")
    parser.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        default="ade",
        help="config family (classes); Swin and HAT-Net have ADE20K configs only",
    )
    parser.add_argument(
        "--only", nargs="+", metavar="KEY",
        help="run only these models (keys as printed in the tables)",
    )  # fmt: skip


def check_selection(parser: argparse.ArgumentParser, args) -> None:
    """argparse errors for ``--only`` keys not in ``MODELS`` and a ``--size`` off the 32 grid."""
    unknown = set(args.only or ()) - {m.key for m in MODELS}
    if unknown:
        parser.error(f"unknown --only keys {sorted(unknown)}; known: {[m.key for m in MODELS]}")
    if args.size and any(s <= 0 or s % 32 for s in args.size):
        parser.error(f"--size must be positive multiples of 32, got {args.size[0]} {args.size[1]}")


def select(args) -> List[Model]:
    """The models of ``--models`` and ``--only`` that have a config for ``--dataset``."""
    groups = GROUPS if args.models == "all" else (args.models,)
    return [
        m
        for m in MODELS
        if m.group in groups and args.dataset in m.configs and (not args.only or m.key in args.only)
    ]


def input_size(args) -> Tuple[int, int]:
    """``--size``, else the dataset's default input size."""
    return tuple(args.size) if args.size else DATASETS[args.dataset][2]


def environment(args, device: torch.device) -> List[str]:
    """Versions, device, threads and input, one line each."""
    title, classes, _ = DATASETS[args.dataset]
    height, width = input_size(args)
    batch = getattr(args, "batch", 1)
    return [
        f"torch {torch.__version__}, detectron2 {detectron2.__version__}, Python "
        f"{platform.python_version()}",
        f"device: {device} ({device_name(device)}; {os.cpu_count()} logical CPUs visible), "
        f"torch threads: {torch.get_num_threads()}",
        f"input: {batch}×3×{height}×{width} random fp32, {title} configs ({classes} classes)",
    ]


def model_cell(model: Model) -> str:
    """The first cell of a model's row: its label and its key."""
    return f"{model.label} `{model.key}`"


def part_title(group: str, part: str, args) -> str:
    """The heading of one table, e.g. "MiT + SegFormer head: encoders, ADE20K, 512×512"."""
    height, width = input_size(args)
    return f"{GROUP_TITLES[group]}: {part}s, {DATASETS[args.dataset][0]}, {height}×{width}"


def _fmt(value: Optional[float], digits: Optional[int] = None, signed: bool = False) -> str:
    """``–`` for None, else ``digits`` decimals (None: as written, for the published numbers)."""
    if value is None:
        return "–"
    if digits is None:
        return f"{value:g}"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


@dataclass
class Count:
    """Our parameter count of an encoder or segmentor, and fvcore's GFLOPs with the ops it
    skipped (None and empty when FLOPs were not counted)."""

    params: int
    gflops: Optional[float]
    skipped: Counter


def count_rows(
    models: List[Model],
    counts: Dict[str, Count],
    published_params: Callable[[Model], Optional[float]],
    published_gflops: Callable[[Model], Optional[float]],
) -> List[List[str]]:
    """One row per model: ours, the published numbers, and the overhead over its base model."""
    rows = []
    for model in models:
        row, base = counts[model.key], counts.get(model.base)
        d_params = d_gflops = None
        if base is not None:
            d_params = (row.params - base.params) / 1e6
            d_gflops = None if row.gflops is None else row.gflops - base.gflops
        rows.append([
            model_cell(model),
            _fmt(row.params / 1e6, 3),
            _fmt(published_params(model)),
            _fmt(row.gflops, 3),
            _fmt(published_gflops(model)),
            _fmt(d_params, 3, signed=True),
            _fmt(d_gflops, 3, signed=True),
        ])  # fmt: skip
    return rows


def count_header(params_source: str, gflops_source: str) -> List[str]:
    return [
        "model", "params (M) ours", f"params (M) {params_source}", "GFLOPs fvcore",
        f"GFLOPs {gflops_source}", "Δ params (M) ours", "Δ GFLOPs fvcore",
    ]  # fmt: skip


def skipped_note(models: List[Model], counts: Dict[str, Count]) -> List[str]:
    """The ops fvcore skipped, one line per model."""
    lines = ["Ops fvcore skipped (not counted), per model:"]
    for model in models:
        skipped = counts[model.key].skipped
        ops = ", ".join(f"`{op}` ×{n}" for op, n in sorted(skipped.items())) or "none"
        lines.append(f"   - `{model.key}`: {ops}")
    return ["\n".join(lines)]


FVCORE_NOTE = (
    "GFLOPs fvcore: fvcore's FlopCountAnalysis on the traced forward, 1 multiply-add = 1 FLOP, "
    "plus one handle added here for `aten::scaled_dot_product_attention` (Q·Kᵀ and A·V "
    "multiply-adds), which fvcore would skip. It counts the attention matmuls itself (every HILA "
    "iteration as run) and counts BatchNorm, bilinear interpolation (4 per output element) and "
    "adaptive pooling, which the official method skips. These are not the official numbers."
)


def overhead_note(columns: str, same: str) -> str:
    """The note on the columns that compare a HILA model with its base model."""
    return (
        f"{columns}: the HILA row over its base model (same {same}); `–` for base rows or when "
        "the base model was not run."
    )


def encoder_notes(group: str) -> List[str]:
    if group == "hatnet":
        return [
            "Encoder = backbone alone. Params published: docs/design/hatnet.md §4 backbone "
            "without classifier. GFLOPs published: docs/design/hatnet.md §4's fvcore total "
            "(conv + attention matmuls + GroupNorm) of the classification model at 224×224, "
            "shown at `--size 224 224` only (its classifier adds 0.0004 G). HAT-Net's README "
            "FLOPs (2.0 / 4.3 G) leave out the attention matmuls (§4).",
        ]
    notes = [
        "Encoder = backbone alone. Params published: docs/design/hila.md §7 backbone totals "
        "(parameters, buffers excluded); §9.2 gives no encoder-only FLOPs."
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
            "released no dense-prediction code or numbers (docs/design/hatnet.md §6, §8), so "
            "there is no published column to compare with.",
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
            f"{conv_seg / 1e6:.3f} M), which our SegFormerHead lacks: ours = published − "
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
            "latency), as the published ones do; UperNet's `conv_seg` is its classifier, counted "
            "on both sides. The mlp-4 row has the ratio-4 lower-level blocks of a reuse-trained "
            f"checkpoint (§9.2 gives its params, not its FLOPs). {SWIN_HILA_NORMS_NOTE}"
        )
    return notes


def print_published_tables(args, count_flops: bool) -> None:
    """For each group of the selected models, the encoders' and the segmentors' table of params
    and (with ``count_flops``) fvcore GFLOPs on CPU beside the published numbers, with notes."""
    models = select(args)
    print("## HILA models: params and fvcore GFLOPs beside the published numbers\n")
    for line in environment(args, torch.device("cpu")):
        print(f"- {line}")
    if not models:
        print("\nNo model matches the selection (Swin and HAT-Net have ADE20K configs only).")
        return
    torch.manual_seed(0)
    images = torch.randn(1, 3, *input_size(args))
    counts: Dict[str, Dict[str, Count]] = {part: {} for part in PARTS}
    for model, part, module, params in each_part(models, args.dataset, "cpu"):
        with torch.no_grad():
            gflops, skipped = fvcore_gflops(module, images) if count_flops else (None, Counter())
        counts[part][model.key] = Count(params, gflops, skipped)
    size = (args.dataset, *input_size(args))
    for group in GROUPS:
        members = [m for m in models if m.group == group]
        if not members:
            continue
        params_source, encoder_gflops_source, segmentor_source = GROUP_SOURCES[group]
        sections = {
            "encoder": (params_source, encoder_gflops_source, lambda m: m.encoder_params,
                        lambda m: m.encoder_gflops.get(size), encoder_notes(group)),
            "segmentor": (segmentor_source, segmentor_source, lambda m: m.params.get(args.dataset),
                          lambda m: m.gflops.get(size), segmentor_notes(group, args.dataset)),
        }  # fmt: skip
        for part, (p_source, g_source, p_published, g_published, notes) in sections.items():
            notes = notes + [overhead_note("Δ columns", "dataset, size")]
            if count_flops:
                notes = notes + [FVCORE_NOTE] + skipped_note(members, counts[part])
            print(f"\n### {part_title(group, part, args)}\n")
            rows = count_rows(members, counts[part], p_published, g_published)
            print(markdown_table(count_header(p_source, g_source), rows) + "\n")
            for index, note in enumerate(notes, 1):
                print(f"{index}. {note}")
