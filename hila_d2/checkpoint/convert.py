"""Official checkpoints -> state dicts of hila_d2 models: the formats, in detection order, and
``convert_checkpoint``, which detects the format and dispatches to its family's converter
(``segformer``, ``swin``, ``hatnet``). Each converter returns a ``ConversionResult`` in the
names of a detectron2 model with the config keys that model needs (see ``core``)."""
from typing import Any, Optional

from .core import FORMATS, ConversionResult, Format, KeyReport, check_keys, detect_format
from .hatnet import HATNET_DROPPED, convert_hatnet, hatnet_shapes, infer_hatnet_variant
from .hila import HILA_FLAG, infer_hila_settings
from .segformer import convert_segformer, infer_mit_variant, segformer_shapes
from .swin import (
    SWIN_BUFFERS,
    convert_hila_swin,
    convert_swin,
    infer_swin_variant,
    swin_shapes,
    upernet_shapes,
)

__all__ = [
    "ConversionResult",
    "KeyReport",
    "SUPPORTED_FORMATS",
    "check_keys",
    "convert_checkpoint",
    "convert_hatnet",
    "convert_hila_swin",
    "convert_segformer",
    "convert_swin",
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


# HILA formats first: their files also match the plain formats' markers
FORMATS.update(
    {
        # HILA ImageNet pretraining file (B0_S3.pth, ...): MiT names + the pairs' modules,
        # classifier
        "hila_segformer_imagenet": Format(
            ("patch_embed1.proj.weight", "topdown.*"), rf"head\..*|{HILA_FLAG}", convert_segformer
        ),
        # trained HILA-SegFormer (mmseg): the same under "backbone.", plus the SegFormer head
        "hila_segformer_trained": Format(
            ("backbone.patch_embed1.proj.weight", "backbone.topdown.*"),
            rf"decode_head\.conv_seg\..*|backbone\.{HILA_FLAG}",
            convert_segformer,
        ),
        # trained HILA-Swin UperNet (mmseg): Swin segmentation names + each pair's modules in the
        # layer of its upper stage, UPerHead and auxiliary FCNHead
        "hila_swin_trained": Format(
            ("backbone.patch_embed.proj.weight", "backbone.layers.*.top_down.*"),
            rf"backbone\.({HILA_FLAG}|{SWIN_BUFFERS})",
            convert_hila_swin,
        ),
        # official MiT ImageNet file mit_b{0..5}.pth: a bare NVlabs state dict (+ classifier head.*)
        "segformer_imagenet": Format(
            ("patch_embed1.proj.weight", "block1.0.attn.kv.weight"), r"head\..*", convert_segformer
        ),
        # trained SegFormer (mmseg): {"state_dict": {"backbone.…", "decode_head.…"}, ...};
        # mmseg's default classifier conv_seg is unused
        "segformer_trained": Format(
            ("backbone.patch_embed1.proj.weight", "decode_head.linear_fuse.conv.weight"),
            r"decode_head\.conv_seg\..*",
            convert_segformer,
        ),
        # official Swin ImageNet file swin_{tiny,small,base,large}_*.pth: {"model": official names},
        # downsampling at the end of stages 0..2 (timm-layout files have no layers.0.downsample);
        # the classifier and its final norm have no hila_d2 counterpart
        "swin_imagenet": Format(
            (
                "layers.0.blocks.0.attn.relative_position_bias_table",
                "layers.0.downsample.reduction.weight",
            ),
            rf"head\..*|norm\..*|{SWIN_BUFFERS}",
            convert_swin,
        ),
        # official HAT-Net v2.0 ImageNet file HAT-Net_{Tiny,Small,Medium,Large}.pth: bare or
        # {"model": ...}, possibly with DDP's "module." prefix; the classifier is dropped
        "hatnet_imagenet": Format(
            ("*patch_embed.3.weight", "*blocks.0.0.attn.grid_norm.weight"),
            HATNET_DROPPED,
            convert_hatnet,
        ),
    }
)
SUPPORTED_FORMATS = tuple(FORMATS)


def convert_checkpoint(obj: Any, window_size: Optional[int] = None) -> ConversionResult:
    """Convert a loaded checkpoint of any ``SUPPORTED_FORMATS`` format (see ``detect_format``).
    ``window_size``: target attention window of a Swin ImageNet checkpoint (None:
    ``convert_swin``'s default); a ValueError for any other format."""
    source_format = detect_format(obj)
    converter = FORMATS[source_format].convert
    if window_size is None:
        return converter(obj)
    if converter is not convert_swin:
        raise ValueError(
            f"window_size applies to Swin checkpoints only (swin_imagenet), not to "
            f"{source_format}"
        )
    return converter(obj, window_size=window_size)
