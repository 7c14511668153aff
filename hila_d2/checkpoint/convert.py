"""Official checkpoints -> state dicts of hila_d2 models (pure functions, no file I/O).

Each source format is an entry of ``_FORMATS``: the keys that identify its state dict and its
converter; ``convert_checkpoint`` detects the format and dispatches. Every converter returns a
``ConversionResult`` in the names of a detectron2 model (``backbone.…``, ``sem_seg_head.…``),
drops only the source keys it lists in ``dropped``, and raises a ValueError for any source key it
cannot place in the model.
"""

import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import torch
from timm.models.pvt_v2 import checkpoint_filter_fn as pvt_v2_checkpoint_filter_fn

from ..modeling.backbone.mit import MIT_VARIANTS, MixVisionTransformer
from ..modeling.heads.segformer_head import SegFormerHead

__all__ = [
    "ConversionResult",
    "KeyReport",
    "SUPPORTED_FORMATS",
    "check_keys",
    "convert_checkpoint",
    "convert_segformer",
    "detect_format",
    "infer_mit_variant",
    "segformer_shapes",
]

# SegFormer decode-head name prefix (after "decode_head.") -> SegFormerHead name prefix
_SEGFORMER_HEAD_PREFIXES = {
    **{f"linear_c{i + 1}.proj.": f"embeds.{i}." for i in range(4)},  # linear_c1 is the finest
    "linear_fuse.conv.": "fuse.",
    "linear_fuse.bn.": "fuse.norm.",
    "linear_pred.": "predictor.",
}
# source keys that SegFormer files carry but no hila_d2 model has, per format
_SEGFORMER_DROPPED_PREFIXES = {
    "segformer_imagenet": ("head.",),  # the 1000-class ImageNet classifier
    "segformer_trained": ("decode_head.conv_seg.",),  # mmseg's unused default classifier
}
_BLOCK_NORM1 = re.compile(r"backbone\.stages\.(\d+)\.blocks\.(\d+)\.norm1\.weight")


@dataclass
class ConversionResult:
    """A converted checkpoint.

    ``model``: hila_d2 name -> tensor; ``source_format``: a ``SUPPORTED_FORMATS`` name;
    ``variant``: the backbone variant (e.g. "B0"); ``dropped``: source keys deliberately left out;
    ``missing``: keys of a hila_d2 model of ``variant`` that the source does not provide (for an
    ImageNet file, the whole ``sem_seg_head``). Both lists are sorted.
    """

    model: Dict[str, torch.Tensor]
    source_format: str
    variant: str
    dropped: List[str]
    missing: List[str]


@dataclass
class KeyReport:
    """Sorted key lists: ``missing`` (expected, not produced), ``unexpected`` (produced, not
    expected) and ``mismatched`` (in both, with another shape than expected)."""

    missing: List[str]
    unexpected: List[str]
    mismatched: List[str]


def _examples(items: Sequence[str], limit: int = 8) -> str:
    """The first ``limit`` items and how many more there are."""
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _quoted(keys) -> List[str]:
    return [repr(key) for key in keys]


def _state_dict_of(obj: Any) -> Any:
    """The state dict of a loaded checkpoint: ``obj["state_dict"]`` (mmcv/mmseg) or ``obj``."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        return obj["state_dict"]
    return obj


def detect_format(obj: Any) -> str:
    """Name of the ``SUPPORTED_FORMATS`` entry whose marker keys ``obj`` (a loaded checkpoint or
    its state dict) has; ValueError naming some of its keys when no format matches."""
    state_dict = _state_dict_of(obj)
    if isinstance(state_dict, Mapping):
        for name, (markers, _) in _FORMATS.items():
            if all(key in state_dict for key in markers):
                return name
        found = f"a dict with {len(state_dict)} key(s): {_examples(_quoted(state_dict), 5)}"
    else:
        found = f"a {type(obj).__name__}, not a dict"
    supported = "; ".join(
        f"{name} (keys {_examples(_quoted(markers))})" for name, (markers, _) in _FORMATS.items()
    )
    raise ValueError(f"Unknown checkpoint layout: found {found}. Supported formats: {supported}")


def segformer_shapes(
    variant: str, num_classes: int = 1, embed_dim: int = 256
) -> Dict[str, torch.Size]:
    """Name -> shape of every state-dict entry of a hila_d2 SegFormer (a detectron2
    SemanticSegmentor with MiT ``variant`` and SegFormerHead). The head sizes change shapes only,
    not names. Built on the meta device, so it allocates nothing."""
    with torch.device("meta"):
        backbone = MixVisionTransformer(variant=variant)
        # "BN" has the same entries as "SyncBN", the configs' default
        head = SegFormerHead(
            backbone.output_shape(), num_classes=num_classes, embed_dim=embed_dim, norm="BN"
        )
    return {
        f"{prefix}.{name}": value.shape
        for prefix, module in (("backbone", backbone), ("sem_seg_head", head))
        for name, value in module.state_dict().items()
    }


def check_keys(model: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size]) -> KeyReport:
    """Compare converted tensors with the expected names and shapes (e.g. ``segformer_shapes``)."""
    return KeyReport(
        missing=sorted(expected.keys() - model.keys()),
        unexpected=sorted(model.keys() - expected.keys()),
        mismatched=sorted(
            k for k in model.keys() & expected.keys() if model[k].shape != expected[k]
        ),
    )


def infer_mit_variant(model: Mapping[str, torch.Tensor]) -> str:
    """The ``MIT_VARIANTS`` name whose depths and embed dims match the ``backbone.stages.*``
    entries of ``model``; ValueError if none does."""
    stages: Dict[int, Tuple[int, int]] = {}  # stage -> (blocks, embed dim)
    for name, value in model.items():
        match = _BLOCK_NORM1.fullmatch(name)
        if match:
            stage, block = int(match[1]), int(match[2])
            stages[stage] = (max(stages.get(stage, (0, 0))[0], block + 1), value.shape[0])
    depths = tuple(stages[s][0] for s in sorted(stages))
    dims = tuple(stages[s][1] for s in sorted(stages))
    for variant, spec in MIT_VARIANTS.items():
        if depths == tuple(spec["depths"]) and dims == tuple(spec["embed_dims"]):
            return variant
    known = ", ".join(
        f"{v} (depths {tuple(s['depths'])}, dims {tuple(s['embed_dims'])})"
        for v, s in MIT_VARIANTS.items()
    )
    raise ValueError(f"No MiT variant has depths {depths} and embed dims {dims}; known: {known}")


def _rename_mit(key: str) -> str:
    """NVlabs MiT name -> timm PVTv2 name (``MixVisionTransformer``'s), by timm's own renaming."""
    (renamed,) = pvt_v2_checkpoint_filter_fn({key: None}, None)
    return renamed


def _rename_segformer_head(key: str) -> str:
    """SegFormer ``decode_head.…`` name -> ``sem_seg_head.…`` name, or "" if it has none."""
    for old, new in _SEGFORMER_HEAD_PREFIXES.items():
        if key.startswith("decode_head." + old):
            return "sem_seg_head." + new + key[len("decode_head." + old) :]
    return ""


def convert_segformer(checkpoint: Mapping[str, Any]) -> ConversionResult:
    """Official SegFormer weights -> hila_d2 SegFormer names.

    ``checkpoint``: a bare MiT ImageNet state dict (NVlabs names) or a trained SegFormer state
    dict (``backbone.`` + NVlabs names, ``decode_head.linear_c{1..4}|linear_fuse|linear_pred``),
    optionally wrapped as ``{"state_dict": ...}``. The variant is inferred from the blocks; source
    keys that map to no entry of that model, or to one of another shape, raise a ValueError.
    """
    source_format = detect_format(checkpoint)
    if source_format not in _SEGFORMER_DROPPED_PREFIXES:
        raise ValueError(
            f"convert_segformer takes {sorted(_SEGFORMER_DROPPED_PREFIXES)} checkpoints, "
            f"got {source_format}"
        )
    state_dict = _state_dict_of(checkpoint)
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(
            f"State-dict entries that are not tensors: {_examples(_quoted(not_tensors))}"
        )
    encoder_prefix = "" if source_format == "segformer_imagenet" else "backbone."

    model: Dict[str, torch.Tensor] = {}
    source_of: Dict[str, str] = {}  # hila_d2 name -> source key
    dropped, unmapped = [], []
    for key, value in state_dict.items():
        if key.startswith(_SEGFORMER_DROPPED_PREFIXES[source_format]):
            dropped.append(key)
            continue
        if key.startswith(encoder_prefix):
            name = "backbone." + _rename_mit(key[len(encoder_prefix) :])
        else:
            name = _rename_segformer_head(key)
        if not name:
            unmapped.append(key)
            continue
        if name in model:
            raise ValueError(f"Source keys {source_of[name]!r} and {key!r} both map to {name!r}")
        model[name], source_of[name] = value, key
    if unmapped:
        raise ValueError(
            f"{source_format} checkpoint has keys that map to no hila_d2 parameter: "
            f"{_examples(_quoted(sorted(unmapped)))}"
        )

    variant = infer_mit_variant(model)
    head_sizes: Dict[str, int] = {}
    if "sem_seg_head.predictor.weight" in model:
        num_classes, embed_dim = model["sem_seg_head.predictor.weight"].shape[:2]
        head_sizes = {"num_classes": num_classes, "embed_dim": embed_dim}
    expected = segformer_shapes(variant, **head_sizes)
    report = check_keys(model, expected)
    problems = [f"{source_of[name]!r} -> {name!r}" for name in report.unexpected] + [
        f"{source_of[name]!r} -> {name!r} of shape {tuple(model[name].shape)}, "
        f"expected {tuple(expected[name])}"
        for name in report.mismatched
    ]
    if problems:
        raise ValueError(
            f"{source_format} checkpoint does not fit a hila_d2 MiT-{variant} SegFormer: "
            f"unexpected keys or shapes: {_examples(problems)}"
        )
    return ConversionResult(
        model=model,
        source_format=source_format,
        variant=variant,
        dropped=sorted(dropped),
        missing=report.missing,
    )


# format -> (keys that all occur in its state dict, after unwrapping ``{"state_dict": ...}``,
#            its converter)
_FORMATS: Dict[str, Tuple[Sequence[str], Callable[[Any], ConversionResult]]] = {
    # official MiT ImageNet file mit_b{0..5}.pth: a bare NVlabs state dict (+ classifier head.*)
    "segformer_imagenet": (
        ("patch_embed1.proj.weight", "block1.0.attn.kv.weight"),
        convert_segformer,
    ),
    # trained SegFormer (mmseg): {"state_dict": {"backbone.…", "decode_head.…"}, "meta": ...}
    "segformer_trained": (
        ("backbone.patch_embed1.proj.weight", "decode_head.linear_fuse.conv.weight"),
        convert_segformer,
    ),
}
SUPPORTED_FORMATS = tuple(_FORMATS)


def convert_checkpoint(obj: Any) -> ConversionResult:
    """Convert a loaded checkpoint of any ``SUPPORTED_FORMATS`` format (see ``detect_format``)."""
    return _FORMATS[detect_format(obj)][1](obj)
