"""Official checkpoints -> state dicts of hila_d2 models: ``FORMATS``, the immutable table of
source formats in detection order; ``detect_format``, which picks a checkpoint's format once; and
``convert_checkpoint``, which hands the detected ``Format`` and the state dict to its family's
converter (``segformer``, ``swin``, ``hatnet``). Each converter returns a ``ConversionResult`` in
the names of a detectron2 model with the config keys that model needs (see ``core``). The
``convert_<family>`` functions convert a checkpoint that must be of their family's formats."""
from typing import Any, Callable, Mapping, Optional, Tuple

from .core import (
    ConversionResult,
    Format,
    KeyReport,
    check_keys,
    examples,
    quoted,
    require_tensors,
    state_dict_of,
)
from .hatnet import (
    HATNET_DROPPED,
    convert_hatnet_state_dict,
    hatnet_shapes,
    infer_hatnet_variant,
)
from .hila import HILA_FLAG, infer_hila_settings
from .segformer import (
    convert_hf_segformer_state_dict,
    convert_segformer_state_dict,
    convert_timm_pvt_v2_state_dict,
    infer_mit_variant,
    segformer_shapes,
)
from .swin import (
    SWIN_BUFFERS,
    convert_hila_swin_state_dict,
    convert_swin_state_dict,
    convert_timm_swin_state_dict,
    infer_swin_variant,
    swin_shapes,
    upernet_shapes,
)

__all__ = [
    "FORMATS",
    "ConversionResult",
    "Format",
    "KeyReport",
    "SUPPORTED_FORMATS",
    "check_keys",
    "convert_checkpoint",
    "convert_hatnet",
    "convert_hf_segformer",
    "convert_hila_swin",
    "convert_segformer",
    "convert_swin",
    "convert_timm_pvt_v2",
    "convert_timm_swin",
    "detect_format",
    "hatnet_shapes",
    "infer_hatnet_variant",
    "infer_hila_settings",
    "infer_mit_variant",
    "infer_swin_variant",
    "segformer_shapes",
    "swin_shapes",
    "upernet_shapes",
]


# Every source format, in detection order: the first whose markers all match the keys of a state
# dict (after unwrapping ``{"state_dict": ...}`` or ``{"model": ...}``) wins, so each HILA format
# precedes the plain format its files also match.
FORMATS: Tuple[Format, ...] = (
    # HILA ImageNet pretraining file (B0_S3.pth, ...): MiT names + the pairs' modules,
    # classifier
    Format(
        "hila_segformer_imagenet",
        ("patch_embed1.proj.weight", "topdown.*"),
        rf"head\..*|{HILA_FLAG}",
        convert_segformer_state_dict,
    ),
    # trained HILA-SegFormer (mmseg): the same under "backbone.", plus the SegFormer head
    Format(
        "hila_segformer_trained",
        ("backbone.patch_embed1.proj.weight", "backbone.topdown.*"),
        rf"decode_head\.conv_seg\..*|backbone\.{HILA_FLAG}",
        convert_segformer_state_dict,
    ),
    # trained HILA-Swin UperNet (mmseg): Swin segmentation names + each pair's modules in the
    # layer of its upper stage, UPerHead and auxiliary FCNHead
    Format(
        "hila_swin_trained",
        ("backbone.patch_embed.proj.weight", "backbone.layers.*.top_down.*"),
        rf"backbone\.({HILA_FLAG}|{SWIN_BUFFERS})",
        convert_hila_swin_state_dict,
    ),
    # official MiT ImageNet file mit_b{0..5}.pth: a bare NVlabs state dict (+ classifier head.*)
    Format(
        "segformer_imagenet",
        ("patch_embed1.proj.weight", "block1.0.attn.kv.weight"),
        r"head\..*",
        convert_segformer_state_dict,
    ),
    # trained SegFormer (mmseg): {"state_dict": {"backbone.…", "decode_head.…"}, ...};
    # mmseg's default classifier conv_seg is unused
    Format(
        "segformer_trained",
        ("backbone.patch_embed1.proj.weight", "decode_head.linear_fuse.conv.weight"),
        r"decode_head\.conv_seg\..*",
        convert_segformer_state_dict,
    ),
    # official Swin ImageNet file swin_{tiny,small,base,large}_*.pth: {"model": official names},
    # downsampling at the end of stages 0..2 (timm-layout files have no layers.0.downsample);
    # the classifier and its final norm have no hila_d2 counterpart
    Format(
        "swin_imagenet",
        (
            "layers.0.blocks.0.attn.relative_position_bias_table",
            "layers.0.downsample.reduction.weight",
        ),
        rf"head\..*|norm\..*|{SWIN_BUFFERS}",
        convert_swin_state_dict,
        resizes_window=True,
    ),
    # timm Swin (hub model.safetensors / pytorch_model.bin of swin_*_patch4_window*): timm's
    # names, which hila_d2's Swin keeps; after swin_imagenet, whose files also match
    Format(
        "timm_swin",
        (
            "layers.0.blocks.0.attn.relative_position_bias_table",
            "layers.1.downsample.reduction.weight",
            "norm.weight",
        ),
        rf"head\..*|norm\..*|{SWIN_BUFFERS}",
        convert_timm_swin_state_dict,
        resizes_window=True,
    ),
    # transformers Segformer as the hub's files and save_pretrained name it: SegformerModel
    # (encoder.…), SegformerForImageClassification (segformer.encoder.…, classifier.*) and
    # SegformerForSemanticSegmentation (segformer.encoder.…, decode_head.…)
    Format(
        "hf_segformer",
        (
            "*encoder.patch_embeddings.0.proj.weight",
            "*encoder.block.0.0.attention.self.query.weight",
        ),
        r"classifier\..*",
        convert_hf_segformer_state_dict,
    ),
    # the same in transformers 5.x's in-memory names (model.state_dict(): stages.{i}.…)
    Format(
        "hf_segformer_v5",
        (
            "*stages.0.patch_embeddings.proj.weight",
            "*stages.0.blocks.0.attention.q_proj.weight",
        ),
        r"classifier\..*",
        convert_hf_segformer_state_dict,
    ),
    # timm pvt_v2_b* (MixVisionTransformer's names); converted only where it is a MiT
    Format(
        "timm_pvt_v2",
        ("patch_embed.proj.weight", "stages.0.blocks.0.attn.kv.weight"),
        r"head\..*",
        convert_timm_pvt_v2_state_dict,
    ),
    # official HAT-Net v2.0 ImageNet file HAT-Net_{Tiny,Small,Medium,Large}.pth: bare or
    # {"model": ...}, possibly with DDP's "module." prefix; the classifier is dropped
    Format(
        "hatnet_imagenet",
        ("*patch_embed.3.weight", "*blocks.0.0.attn.grid_norm.weight"),
        HATNET_DROPPED,
        convert_hatnet_state_dict,
    ),
)
SUPPORTED_FORMATS = tuple(source.name for source in FORMATS)


def detect_format(obj: Any) -> Format:
    """The first ``FORMATS`` entry each of whose marker patterns (``*``: any characters) matches a
    key of ``obj`` (a loaded checkpoint or its state dict); ValueError listing the formats and
    their markers, and naming some of the keys found, when none matches."""
    state_dict = state_dict_of(obj)
    if isinstance(state_dict, Mapping):
        keys = [key for key in state_dict if isinstance(key, str)]
        for source in FORMATS:
            if source.matches(keys):
                return source
        found = f"a dict with {len(state_dict)} key(s): {examples(quoted(state_dict), 5)}"
    else:
        found = f"a {type(obj).__name__}, not a dict"
    supported = "; ".join(
        f"{source.name} (keys {examples(quoted(source.markers))})" for source in FORMATS
    )
    raise ValueError(
        f"Unknown checkpoint layout: found {found}. Supported formats (* matches anything): "
        f"{supported}"
    )


def convert_checkpoint(
    obj: Any, window_size: Optional[int] = None, source_format: Optional[Format] = None
) -> ConversionResult:
    """Convert a loaded checkpoint ``obj`` of any ``FORMATS`` entry: its ``source_format``
    (``detect_format(obj)``, detected here unless the caller passes it) gets the tensor state
    dict. ``window_size``: target attention window of a Swin ImageNet checkpoint (official or
    timm; None: the file's own window); a ValueError for any other format."""
    source = detect_format(obj) if source_format is None else source_format
    options = {}
    if window_size is not None:
        if not source.resizes_window:
            resizing = ", ".join(f.name for f in FORMATS if f.resizes_window)
            raise ValueError(
                f"window_size applies to Swin checkpoints only ({resizing}), not to {source.name}"
            )
        options["window_size"] = window_size
    state_dict = state_dict_of(obj)
    require_tensors(state_dict)
    return source.converter(source, state_dict, **options)


def _convert_with(
    name: str, converter: Callable[..., ConversionResult], obj: Any, **options: Any
) -> ConversionResult:
    """``convert_checkpoint`` of ``obj``; ValueError unless its format is one of ``converter``'s
    (``name``: the public function that asked, for the message)."""
    source = detect_format(obj)
    if source.converter is not converter:
        handled = ", ".join(f.name for f in FORMATS if f.converter is converter)
        raise ValueError(f"{name} takes {handled} checkpoints, got {source.name}")
    return convert_checkpoint(obj, source_format=source, **options)


def convert_segformer(checkpoint: Any) -> ConversionResult:
    """An official (HILA-)SegFormer checkpoint (``convert_segformer_state_dict``), bare or
    wrapped as ``{"state_dict": ...}``, -> hila_d2 SegFormer names."""
    return _convert_with("convert_segformer", convert_segformer_state_dict, checkpoint)


def convert_hf_segformer(checkpoint: Any) -> ConversionResult:
    """transformers Segformer weights (``convert_hf_segformer_state_dict``) -> hila_d2 SegFormer
    names."""
    return _convert_with("convert_hf_segformer", convert_hf_segformer_state_dict, checkpoint)


def convert_timm_pvt_v2(checkpoint: Any) -> ConversionResult:
    """timm ``pvt_v2_b*`` weights of a MiT (``convert_timm_pvt_v2_state_dict``) -> hila_d2 MiT
    names."""
    return _convert_with("convert_timm_pvt_v2", convert_timm_pvt_v2_state_dict, checkpoint)


def convert_swin(checkpoint: Any, window_size: Optional[int] = None) -> ConversionResult:
    """An official Swin ImageNet checkpoint (``convert_swin_state_dict``), ``{"model": ...}`` or
    bare, -> hila_d2 Swin names, its window resized to ``window_size`` (None: kept)."""
    return _convert_with(
        "convert_swin", convert_swin_state_dict, checkpoint, window_size=window_size
    )


def convert_timm_swin(checkpoint: Any, window_size: Optional[int] = None) -> ConversionResult:
    """timm's Swin weights (``convert_timm_swin_state_dict``) -> hila_d2 Swin names, the window
    resized to ``window_size`` (None: kept)."""
    return _convert_with(
        "convert_timm_swin", convert_timm_swin_state_dict, checkpoint, window_size=window_size
    )


def convert_hila_swin(checkpoint: Any) -> ConversionResult:
    """An official trained HILA-Swin UperNet checkpoint (``convert_hila_swin_state_dict``),
    ``{"state_dict": ...}`` or bare, -> hila_d2 Swin + UPerNetHead names."""
    return _convert_with("convert_hila_swin", convert_hila_swin_state_dict, checkpoint)


def convert_hatnet(checkpoint: Any) -> ConversionResult:
    """An official HAT-Net v2.0 ImageNet checkpoint (``convert_hatnet_state_dict``) -> hila_d2
    HAT-Net names."""
    return _convert_with("convert_hatnet", convert_hatnet_state_dict, checkpoint)
