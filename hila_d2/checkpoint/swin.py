"""Official Swin ImageNet and HILA-Swin UperNet checkpoints -> hila_d2 Swin (+ UPerNetHead)
names."""
import math
import re
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import torch
from detectron2.layers import ShapeSpec
from timm.layers import resize_rel_pos_bias_table_simple

from ..modeling.backbone.pyramid import STAGE_NAMES
from ..modeling.backbone.swin import SWIN_VARIANTS, SwinTransformerBackbone
from ..modeling.heads.upernet_head import UPerNetHead
from ..modeling.hila import HILASettings, pair_tag
from .core import (
    PREDICTOR,
    ConversionResult,
    Format,
    compile_renames,
    fitted_result,
    rename_by,
    rename_keys,
    state_shapes,
)
from .hila import hila_config, hila_param_name, infer_hila_settings

__all__ = [
    "SWIN_BUFFERS",
    "convert_hila_swin_state_dict",
    "convert_swin_state_dict",
    "convert_timm_swin_state_dict",
    "infer_swin_variant",
    "swin_shapes",
    "swin_window_size",
    "upernet_shapes",
]


# mmseg UPerHead and auxiliary FCNHead -> UPerNetHead; then _CONV_MODULE maps each mmcv
# ConvModule's ".conv" / ".bn" onto the detectron2 Conv2d itself / its ".norm"
_UPERNET_HEAD = compile_renames(
    (r"decode_head\.psp_modules\.(\d+)\.1\.", r"sem_seg_head.ppm.\1.1."),
    (r"decode_head\.(bottleneck|fpn_bottleneck|(?:lateral|fpn)_convs\.\d+)\.", r"sem_seg_head.\1."),
    (r"decode_head\.conv_seg\.", "sem_seg_head.predictor."),
    (r"auxiliary_head\.convs\.0\.", "sem_seg_head.aux_head.0."),
    (r"auxiliary_head\.conv_seg\.", "sem_seg_head.aux_head.2."),
)
_CONV_MODULE = re.compile(r"\.(conv|bn)\.(?=[^.]+$)")
# official HILA keys of Swin (after "backbone."): "layers.{upper stage index}.{module}.{rest}"
_SWIN_HILA_KEY = re.compile(
    r"layers\.(?P<top>\d+)\.(?P<module>top_down|bottom_up|bottom_sa|bottom_norm)\.(?P<rest>.+)"
)
SWIN_BUFFERS = r".*\.(relative_position_index|attn_mask)"  # recomputed Swin buffers
# official Swin merges patches at the end of stage s (0..2), timm at the start of stage s + 1
_SWIN_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.")
_SWIN_TABLE = re.compile(
    r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table"
)


def swin_shapes(
    variant: str, window_size: int = 7, hila: HILASettings = HILASettings()
) -> Dict[str, torch.Size]:
    """Name -> shape of every state-dict entry of a hila_d2 Swin backbone (``backbone.…``) of
    ``variant``, ``window_size`` and ``hila`` pairs, built on the meta device."""
    with torch.device("meta"):
        backbone = SwinTransformerBackbone(variant=variant, window_size=window_size, hila=hila)
    return state_shapes(backbone=backbone)


def upernet_shapes(
    in_channels: Sequence[int],
    num_classes: int,
    channels: int = 512,
    aux_in_channels: Optional[int] = None,
    aux_channels: int = 256,
) -> Dict[str, torch.Size]:
    """Name -> shape of every state-dict entry of a ``UPerNetHead`` (``sem_seg_head.…``) on
    features of ``in_channels`` (finest first), with an auxiliary head on a feature of
    ``aux_in_channels`` (None: without), built on the meta device."""
    input_shape = {f"in{i}": ShapeSpec(channels=c, stride=2**i) for i, c in enumerate(in_channels)}
    aux_input_shape = (
        None if aux_in_channels is None else {"aux": ShapeSpec(channels=aux_in_channels)}
    )
    with torch.device("meta"):
        head = UPerNetHead(
            input_shape,
            num_classes=num_classes,
            channels=channels,
            norm="BN",
            aux_input_shape=aux_input_shape,
            aux_channels=aux_channels,
        )
    return state_shapes(sem_seg_head=head)


def _rename_swin(key: str) -> str:
    """Official Swin name -> timm name: patch merging moves to the start of the next stage."""
    return _SWIN_DOWNSAMPLE.sub(lambda m: f"layers.{int(m[1]) + 1}.downsample.", key)


def _swin_tables(model: Mapping[str, torch.Tensor]) -> Dict[Tuple[int, int], torch.Tensor]:
    """(stage, block) -> relative position bias table ((2w-1)^2, heads) of ``model``."""
    tables = {}
    for name, value in model.items():
        match = _SWIN_TABLE.fullmatch(name)
        if match:
            tables[int(match[1]), int(match[2])] = value
    return tables


def infer_swin_variant(model: Mapping[str, torch.Tensor]) -> str:
    """The ``SWIN_VARIANTS`` name whose embed dim (``backbone.patch_embed.proj.weight``), depths
    and heads (the second dim of the ``relative_position_bias_table`` entries) match ``model``;
    ValueError if none does."""
    proj = model.get("backbone.patch_embed.proj.weight")
    embed_dim = None if proj is None else proj.shape[0]
    stages: Dict[int, Tuple[int, int]] = {}  # stage -> (blocks, heads)
    for (stage, block), table in _swin_tables(model).items():
        stages[stage] = (max(stages.get(stage, (0, 0))[0], block + 1), table.shape[-1])
    depths = tuple(stages[s][0] for s in sorted(stages))
    heads = tuple(stages[s][1] for s in sorted(stages))
    for variant, spec in SWIN_VARIANTS.items():
        if (embed_dim, depths, heads) == (
            spec["embed_dim"],
            tuple(spec["depths"]),
            tuple(spec["num_heads"]),
        ):
            return variant
    known = ", ".join(
        f"{v} (embed dim {s['embed_dim']}, depths {tuple(s['depths'])}, "
        f"heads {tuple(s['num_heads'])})"
        for v, s in SWIN_VARIANTS.items()
    )
    raise ValueError(
        f"No Swin variant has embed dim {embed_dim}, depths {depths} and heads {heads}; "
        f"known: {known}"
    )


def swin_window_size(
    state_or_tables: Union[Mapping[str, torch.Tensor], Iterable[torch.Tensor]],
) -> Optional[int]:
    """The attention window of Swin relative position bias tables: a table of shape
    ((2w-1)^2, heads) -> w.

    ``state_or_tables``: a state dict, whose tables are its 2-dim entries named
    ``…relative_position_bias_table`` (HILA's 1-dim tables of that name are not Swin's), or the
    tables themselves. None for a state dict without any; ValueError unless the tables (at least
    one, when given themselves) all have the (2w-1)^2 rows of one window w.
    """
    if isinstance(state_or_tables, Mapping):
        tables = [
            value
            for key, value in state_or_tables.items()
            if isinstance(key, str)
            and key.endswith("relative_position_bias_table")
            and value.dim() == 2
        ]
        if not tables:
            return None
    else:
        tables = list(state_or_tables)
    rows = sorted({table.shape[0] for table in tables})
    side = math.isqrt(rows[0]) if len(rows) == 1 else 0
    if side % 2 == 0 or side * side != rows[0]:
        raise ValueError(
            f"relative_position_bias_table rows must be (2w-1)^2 for one window w, got {rows}"
        )
    return (side + 1) // 2


def _fit_window(
    model: Dict[str, torch.Tensor], window_size: Optional[int]
) -> int:
    """The window of ``model``'s relative position bias tables, after resizing each one
    bicubically to ``window_size`` (None: keep the file's own window) as (2w-1)x(2w-1) images,
    one per head, as the official Swin code does."""
    tables = _swin_tables(model)
    file_window = swin_window_size(tables.values())
    if window_size is None or window_size == file_window:
        return file_window
    rows = (2 * window_size - 1) ** 2
    for (stage, block), table in tables.items():
        name = f"backbone.layers.{stage}.blocks.{block}.attn.relative_position_bias_table"
        model[name] = resize_rel_pos_bias_table_simple(
            table, (window_size, window_size), (rows, table.shape[1])
        ).contiguous()
    return window_size


def _convert_swin_classifier_file(
    source: Format,
    state_dict: Mapping[str, torch.Tensor],
    rename: Callable[[str], str],
    window_size: Optional[int],
) -> ConversionResult:
    """The Swin backbone of an ImageNet classifier file under ``rename``, its relative position
    tables resized to ``window_size`` (None: the file's own window)."""
    model, source_of, dropped = rename_keys(source, state_dict, rename)
    variant = infer_swin_variant(model)
    window_size = _fit_window(model, window_size)
    config = {"MODEL.HILA_D2_SWIN.VARIANT": variant, "MODEL.HILA_D2_SWIN.WINDOW_SIZE": window_size}
    expected = swin_shapes(variant, window_size)
    return fitted_result(source, variant, config, model, expected, source_of, dropped)


def convert_swin_state_dict(
    source: Format, state_dict: Mapping[str, torch.Tensor], window_size: Optional[int] = None
) -> ConversionResult:
    """Official Swin ImageNet weights (ImageNet-1k or -22k, 224/window 7 or 384/window 12) of the
    ``source`` format -> hila_d2 ``SwinTransformerBackbone`` names.

    ``state_dict``: Microsoft's state dict (files hold ``{"model": state_dict}``). Each
    ``layers.{s}.downsample`` moves to stage s + 1 (timm's layout); the buffers
    ``relative_position_index`` and ``attn_mask``, the classifier ``head.*`` (1000 or 21841
    classes) and its final ``norm.*`` are dropped; the variant is inferred from the shapes.
    ``window_size``: the target ``MODEL.HILA_D2_SWIN.WINDOW_SIZE`` (None: the file's own window);
    when the file's window differs, each relative position bias table is resized bicubically as
    (2w-1)x(2w-1) images, one per head, as the official Swin code does. Source keys that map to
    no entry of the backbone, or to one of another shape, raise a ValueError.
    """
    return _convert_swin_classifier_file(
        source, state_dict, lambda key: "backbone." + _rename_swin(key), window_size
    )


def convert_timm_swin_state_dict(
    source: Format, state_dict: Mapping[str, torch.Tensor], window_size: Optional[int] = None
) -> ConversionResult:
    """timm's Swin weights of the ``source`` format
    (``swin_{tiny,small,base,large}_patch4_window{7,12}_{224,384}``, as timm's hub stores them:
    ``model.safetensors`` / ``pytorch_model.bin``) -> hila_d2 ``SwinTransformerBackbone`` names.

    hila_d2's Swin is timm's ``SwinTransformer``, so the names are kept (patch merging already at
    the start of stages 1..3); the final ``norm.*`` and the classifier ``head.fc.*`` (1000 or
    21841 classes) are dropped, as are the buffers ``relative_position_index`` and ``attn_mask``
    should a file hold them. ``window_size`` as in ``convert_swin_state_dict``.
    """
    return _convert_swin_classifier_file(
        source, state_dict, lambda key: "backbone." + key, window_size
    )


def _upernet_fit(
    model: Mapping[str, torch.Tensor], variant: str
) -> Tuple[Dict[str, torch.Size], Dict[str, Any]]:
    """(``upernet_shapes``, config keys) of the UPerNetHead, and its auxiliary head if any, whose
    converted weights ``model`` holds, on a Swin ``variant``."""
    num_classes, channels = model[PREDICTOR].shape[:2]
    config = {
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": num_classes,
        "MODEL.SEM_SEG_HEAD.UPERNET.CHANNELS": channels,
    }
    widths = {
        name: SWIN_VARIANTS[variant]["embed_dim"] * 2**i for i, name in enumerate(STAGE_NAMES)
    }
    aux = model.get("sem_seg_head.aux_head.0.weight")
    aux_sizes = {}
    if aux is not None:
        aux_channels, aux_in_channels = aux.shape[:2]
        features = [name for name, width in widths.items() if width == aux_in_channels]
        if not features:
            raise ValueError(
                f"'auxiliary_head.convs.0.conv.weight' reads {aux_in_channels} channels, but no "
                f"Swin-{variant} stage has that width: {widths}"
            )
        config["MODEL.SEM_SEG_HEAD.AUX.IN_FEATURE"] = features[0]
        config["MODEL.SEM_SEG_HEAD.AUX.CHANNELS"] = aux_channels
        aux_sizes = {"aux_in_channels": aux_in_channels, "aux_channels": aux_channels}
    shapes = upernet_shapes(list(widths.values()), num_classes, channels, **aux_sizes)
    return shapes, config


def _rename_hila_swin(key: str) -> str:
    """HILA-Swin UperNet (mmseg) name -> hila_d2 name, or "" if it has none."""
    if not key.startswith("backbone."):
        return _CONV_MODULE.sub(
            lambda m: "." if m[1] == "conv" else ".norm.", rename_by(_UPERNET_HEAD, key)
        )
    local = key[len("backbone.") :]
    match = _SWIN_HILA_KEY.fullmatch(local)
    if match:  # the pair is named after its upper stage, layers.{i} (0-based)
        return "backbone." + hila_param_name(key, match, pair_tag(int(match["top"]) + 1))
    return "backbone." + _rename_swin(local)


def convert_hila_swin_state_dict(
    source: Format, state_dict: Mapping[str, torch.Tensor]
) -> ConversionResult:
    """Official trained HILA-Swin UperNet weights of the ``source`` format -> hila_d2 Swin +
    UPerNetHead names.

    ``state_dict``: an mmseg state dict (files hold ``{"state_dict": ...}``) with ``backbone.`` +
    Swin segmentation names, ``backbone.layers.{i}.{top_down,bottom_up,bottom_sa.0,bottom_norm}``
    of each pair (-> ``backbone.hila.{i}{i+1}.{top_down,bottom_up,bottom_block,bottom_norm}``),
    ``decode_head.*`` (UPerHead) and ``auxiliary_head.*`` (FCNHead). The buffers
    ``relative_position_index`` and the flag ``reuse_bottomsa_pretraining_flag`` are dropped, and
    so is ``norm{i}`` of each stage below a pair (hila_d2 does not build it: the official model
    computes it and discards the result). Variant, window, HILA pairs and ratios (the lower-level
    blocks of "no HILA pretraining" files have MLP ratio 4, not the config's 2) and head sizes are
    read off the tensors; source keys that map to no entry of that model, or to one of another
    shape, raise a ValueError.
    """
    model, source_of, dropped = rename_keys(source, state_dict, _rename_hila_swin)
    variant = infer_swin_variant(model)
    window_size = swin_window_size(_swin_tables(model).values())
    hila = infer_hila_settings(model)
    for top in hila.stages:
        for name in [n for n in model if n.startswith(f"backbone.norm{top - 2}.")]:
            del model[name]
            dropped.append(source_of.pop(name))
    config = {"MODEL.HILA_D2_SWIN.VARIANT": variant, "MODEL.HILA_D2_SWIN.WINDOW_SIZE": window_size}
    config.update(hila_config(hila))
    expected = swin_shapes(variant, window_size, hila)
    if PREDICTOR in model:
        head_shapes, head_config = _upernet_fit(model, variant)
        expected.update(head_shapes)
        config.update(head_config)
    return fitted_result(source, variant, config, model, expected, source_of, dropped)
