"""Official checkpoints -> state dicts of hila_d2 models: the formats, in detection order, and
``convert_checkpoint``, which detects the format and dispatches to its family's converter
(``segformer``, ``swin``, ``hatnet``). Each converter returns a ``ConversionResult`` in the
names of a detectron2 model with the config keys that model needs (see ``core``)."""
from typing import Any, Optional

from .core import FORMATS, ConversionResult, Format, KeyReport, check_keys, detect_format
from .hatnet import HATNET_DROPPED, convert_hatnet, hatnet_shapes, infer_hatnet_variant
from .hila import HILA_FLAG, infer_hila_settings
from .segformer import (
    convert_hf_segformer,
    convert_segformer,
    convert_timm_pvt_v2,
    infer_mit_variant,
    segformer_shapes,
)
from .swin import (
    SWIN_BUFFERS,
    convert_hila_swin,
    convert_swin,
    convert_timm_swin,
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
        # timm Swin (hub model.safetensors / pytorch_model.bin of swin_*_patch4_window*): timm's
        # names, which hila_d2's Swin keeps; after swin_imagenet, whose files also match
        "timm_swin": Format(
            (
                "layers.0.blocks.0.attn.relative_position_bias_table",
                "layers.1.downsample.reduction.weight",
                "norm.weight",
            ),
            rf"head\..*|norm\..*|{SWIN_BUFFERS}",
            convert_timm_swin,
        ),
        # transformers Segformer as the hub's files and save_pretrained name it: SegformerModel
        # (encoder.…), SegformerForImageClassification (segformer.encoder.…, classifier.*) and
        # SegformerForSemanticSegmentation (segformer.encoder.…, decode_head.…)
        "hf_segformer": Format(
            (
                "*encoder.patch_embeddings.0.proj.weight",
                "*encoder.block.0.0.attention.self.query.weight",
            ),
            r"classifier\..*",
            convert_hf_segformer,
        ),
        # the same in transformers 5.x's in-memory names (model.state_dict(): stages.{i}.…)
        "hf_segformer_v5": Format(
            (
                "*stages.0.patch_embeddings.proj.weight",
                "*stages.0.blocks.0.attention.q_proj.weight",
            ),
            r"classifier\..*",
            convert_hf_segformer,
        ),
        # timm pvt_v2_b* (MixVisionTransformer's names); converted only where it is a MiT
        "timm_pvt_v2": Format(
            ("patch_embed.proj.weight", "stages.0.blocks.0.attn.kv.weight"),
            r"head\..*",
            convert_timm_pvt_v2,
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
# the converters that take a window_size
SWIN_CLASSIFIER_CONVERTERS = (convert_swin, convert_timm_swin)


def convert_checkpoint(obj: Any, window_size: Optional[int] = None) -> ConversionResult:
    """Convert a loaded checkpoint of any ``SUPPORTED_FORMATS`` format (see ``detect_format``).
    ``window_size``: target attention window of a Swin ImageNet checkpoint (official or timm;
    None: the file's own window); a ValueError for any other format."""
    source_format = detect_format(obj)
    converter = FORMATS[source_format].convert
    if window_size is None:
        return converter(obj)
    if converter not in SWIN_CLASSIFIER_CONVERTERS:
        raise ValueError(
            f"window_size applies to Swin checkpoints only (swin_imagenet, timm_swin), not to "
            f"{source_format}"
        )
    return converter(obj, window_size=window_size)
