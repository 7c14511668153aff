"""Official checkpoints -> state dicts of hila_d2 models (pure functions, no file I/O).

Each source format is an entry of ``_FORMATS``: the key patterns that identify its state dict,
the source keys it drops and its converter; ``convert_checkpoint`` detects the format and
dispatches. Every converter returns a ``ConversionResult`` in the names of a detectron2 model
(``backbone.…``, ``sem_seg_head.…``) with the config keys that model needs, drops only the source
keys its format lists, and raises a ValueError for any source key it cannot place in the model.
Every size is read off the checkpoint's tensors, then the expected model is built (on the meta
device) with those sizes and its names and shapes are compared with the converted ones.
"""

import math
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
from detectron2.layers import ShapeSpec
from timm.layers import resize_rel_pos_bias_table_simple
from timm.models.pvt_v2 import checkpoint_filter_fn as pvt_v2_checkpoint_filter_fn
from torch import nn

from ..modeling.backbone.mit import MIT_VARIANTS, MixVisionTransformer
from ..modeling.backbone.pyramid import STAGE_NAMES
from ..modeling.backbone.swin import SWIN_VARIANTS, SwinTransformerBackbone
from ..modeling.heads.segformer_head import SegFormerHead
from ..modeling.heads.upernet_head import UPerNetHead
from ..modeling.hila import HILASettings, pair_tag

__all__ = [
    "ConversionResult",
    "KeyReport",
    "SUPPORTED_FORMATS",
    "check_keys",
    "convert_checkpoint",
    "convert_hila_swin",
    "convert_segformer",
    "convert_swin",
    "detect_format",
    "infer_hila_settings",
    "infer_mit_variant",
    "infer_swin_variant",
    "segformer_shapes",
    "swin_shapes",
    "upernet_shapes",
]

# (pattern, replacement) rules: re.sub replacements of the start of a key
_Renames = Sequence[Tuple[re.Pattern, Any]]


def _renames(*rules: Tuple[str, Any]) -> _Renames:
    """Compile (pattern, replacement) rules for ``_rename_by``."""
    return tuple((re.compile(pattern), replacement) for pattern, replacement in rules)


def _rename_by(rules: _Renames, key: str) -> str:
    """``key`` with the start matched by the first matching rule replaced, or "" if none matches."""
    for pattern, replacement in rules:
        if pattern.match(key):
            return pattern.sub(replacement, key, count=1)
    return ""


# SegFormer decode head (mmseg "decode_head.…") -> SegFormerHead
_SEGFORMER_HEAD = _renames(
    (r"decode_head\.linear_c([1-4])\.proj\.", lambda m: f"sem_seg_head.embeds.{int(m[1]) - 1}."),
    (r"decode_head\.linear_fuse\.conv\.", "sem_seg_head.fuse."),
    (r"decode_head\.linear_fuse\.bn\.", "sem_seg_head.fuse.norm."),
    (r"decode_head\.linear_pred\.", "sem_seg_head.predictor."),
)
# mmseg UPerHead and auxiliary FCNHead -> UPerNetHead; then _CONV_MODULE maps each mmcv
# ConvModule's ".conv" / ".bn" onto the detectron2 Conv2d itself / its ".norm"
_UPERNET_HEAD = _renames(
    (r"decode_head\.psp_modules\.(\d+)\.1\.", r"sem_seg_head.ppm.\1.1."),
    (r"decode_head\.(bottleneck|fpn_bottleneck|(?:lateral|fpn)_convs\.\d+)\.", r"sem_seg_head.\1."),
    (r"decode_head\.conv_seg\.", "sem_seg_head.predictor."),
    (r"auxiliary_head\.convs\.0\.", "sem_seg_head.aux_head.0."),
    (r"auxiliary_head\.conv_seg\.", "sem_seg_head.aux_head.2."),
)
_CONV_MODULE = re.compile(r"\.(conv|bn)\.(?=[^.]+$)")
# official HILA keys (after "backbone."): MiT "{module}.{tag}.{rest}", Swin
# "layers.{upper stage index}.{module}.{rest}"; official module -> HILAPair attribute where
# they differ
_MIT_HILA_KEY = re.compile(
    r"(?P<module>topdown|bottomup|prevblock|prevnorm)\.(?P<tag>\d+)\.(?P<rest>.+)"
)
_SWIN_HILA_KEY = re.compile(
    r"layers\.(?P<top>\d+)\.(?P<module>top_down|bottom_up|bottom_sa|bottom_norm)\.(?P<rest>.+)"
)
_HILA_RENAMED_MODULES = {
    "topdown": "top_down",
    "bottomup": "bottom_up",
    "prevblock": "bottom_block",
    "prevnorm": "bottom_norm",
    "bottom_sa": "bottom_block",
}
# official HILA modules that are ModuleLists of per-iteration copies ("{module}.0" when shared)
_HILA_COPIED = ("topdown", "bottomup", "prevblock", "bottom_sa")
_HILA_FLAG = "reuse_bottomsa_pretraining_flag"  # official buffer: 1 once the lower block was copied
_BLOCK_NORM1 = re.compile(r"backbone\.stages\.(\d+)\.blocks\.(\d+)\.norm1\.weight")
_BUFFERS = r".*\.(relative_position_index|attn_mask)"  # recomputed Swin buffers
# official Swin merges patches at the end of stage s (0..2), timm at the start of stage s + 1
_SWIN_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.")
_SWIN_TABLE = re.compile(
    r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table"
)
_PREDICTOR = "sem_seg_head.predictor.weight"  # the classifier of both decode heads


@dataclass
class ConversionResult:
    """A converted checkpoint.

    ``model``: hila_d2 name -> tensor; ``source_format``: a ``SUPPORTED_FORMATS`` name;
    ``variant``: the backbone variant (e.g. "B0", "T"); ``dropped``: source keys deliberately left
    out; ``missing``: keys of the hila_d2 model that the source does not provide (for an ImageNet
    MiT file, the whole ``sem_seg_head``; for an ImageNet Swin file, whose head is not fixed, only
    the backbone's ``norm{i}``), both sorted; ``config``: the config keys and values that build
    that model (e.g. ``{"MODEL.MIT.VARIANT": "B2", "MODEL.MIT.DEPTHS": [2, 2, 6, 2],
    "MODEL.HILA.STAGES": [2, 3, 4], ...}``), read off the tensors.
    """

    model: Dict[str, torch.Tensor]
    source_format: str
    variant: str
    dropped: List[str]
    missing: List[str]
    config: Dict[str, Any]


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
    """The state dict of a loaded checkpoint: ``obj["state_dict"]`` (mmcv/mmseg) or
    ``obj["model"]`` (Microsoft's Swin) where that is a non-empty dict, else ``obj``."""
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), Mapping) and obj[wrapper]:
                return obj[wrapper]
    return obj


def _require_tensors(state_dict: Mapping[str, Any]) -> None:
    """ValueError naming the entries of ``state_dict`` that are not tensors."""
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(
            f"State-dict entries that are not tensors: {_examples(_quoted(not_tensors))}"
        )


def detect_format(obj: Any) -> str:
    """Name of the first ``SUPPORTED_FORMATS`` entry each of whose marker patterns (``*``: any
    characters) matches a key of ``obj`` (a loaded checkpoint or its state dict); ValueError
    naming some of its keys when no format matches."""
    state_dict = _state_dict_of(obj)
    if isinstance(state_dict, Mapping):
        keys = [key for key in state_dict if isinstance(key, str)]
        for name, source in _FORMATS.items():
            if all(any(fnmatchcase(key, marker) for key in keys) for marker in source.markers):
                return name
        found = f"a dict with {len(state_dict)} key(s): {_examples(_quoted(state_dict), 5)}"
    else:
        found = f"a {type(obj).__name__}, not a dict"
    supported = "; ".join(
        f"{name} (keys {_examples(_quoted(source.markers))})" for name, source in _FORMATS.items()
    )
    raise ValueError(
        f"Unknown checkpoint layout: found {found}. Supported formats (* matches anything): "
        f"{supported}"
    )


def _source(
    checkpoint: Any, converter: Callable[..., ConversionResult]
) -> Tuple[str, Mapping[str, torch.Tensor]]:
    """(format, tensor state dict) of ``checkpoint``; ValueError unless ``converter`` handles it."""
    source_format = detect_format(checkpoint)
    if _FORMATS[source_format].convert is not converter:
        handled = ", ".join(n for n, s in _FORMATS.items() if s.convert is converter)
        raise ValueError(f"{converter.__name__} takes {handled} checkpoints, got {source_format}")
    state_dict = _state_dict_of(checkpoint)
    _require_tensors(state_dict)
    return source_format, state_dict


def _renamed(
    source_format: str, state_dict: Mapping[str, torch.Tensor], rename: Callable[[str], str]
) -> Tuple[Dict[str, torch.Tensor], Dict[str, str], List[str]]:
    """(hila_d2 name -> tensor, hila_d2 name -> source key, dropped source keys): every key that
    the format does not drop, under its ``rename``; ValueError for keys that ``rename`` places
    nowhere ("") and for two keys with one name."""
    dropped_keys = re.compile(_FORMATS[source_format].dropped)
    model: Dict[str, torch.Tensor] = {}
    source_of: Dict[str, str] = {}
    dropped, unmapped = [], []
    for key, value in state_dict.items():
        if dropped_keys.fullmatch(key):
            dropped.append(key)
            continue
        name = rename(key)
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
    return model, source_of, dropped


def check_keys(model: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size]) -> KeyReport:
    """Compare converted tensors with the expected names and shapes (e.g. ``segformer_shapes``)."""
    return KeyReport(
        missing=sorted(expected.keys() - model.keys()),
        unexpected=sorted(model.keys() - expected.keys()),
        mismatched=sorted(
            k for k in model.keys() & expected.keys() if model[k].shape != expected[k]
        ),
    )


def _describe(config: Mapping[str, Any]) -> str:
    """``config`` as "KEY VALUE, KEY VALUE"."""
    return ", ".join(f"{key} {value}" for key, value in config.items())


def _fitted_result(
    source_format: str,
    variant: str,
    config: Dict[str, Any],
    model: Dict[str, torch.Tensor],
    expected: Mapping[str, torch.Size],
    source_of: Mapping[str, str],
    dropped: Sequence[str],
) -> ConversionResult:
    """The ``ConversionResult`` of ``model`` after ``check_keys`` against ``expected``;
    ValueError naming ``'source key' -> 'name'`` for each unexpected converted name, with the
    shapes for each mismatched one."""
    report = check_keys(model, expected)
    problems = [f"{source_of[name]!r} -> {name!r}" for name in report.unexpected] + [
        f"{source_of[name]!r} -> {name!r} of shape {tuple(model[name].shape)}, "
        f"expected {tuple(expected[name])}"
        for name in report.mismatched
    ]
    if problems:
        raise ValueError(
            f"{source_format} checkpoint does not fit the hila_d2 model of {_describe(config)}: "
            f"unexpected keys or shapes: {_examples(problems)}"
        )
    return ConversionResult(
        model=model,
        source_format=source_format,
        variant=variant,
        dropped=sorted(dropped),
        missing=report.missing,
        config=config,
    )


def _state_shapes(**modules: nn.Module) -> Dict[str, torch.Size]:
    """``{prefix}.{name}`` -> shape of every state-dict entry of each module, by its prefix."""
    return {
        f"{prefix}.{name}": value.shape
        for prefix, module in modules.items()
        for name, value in module.state_dict().items()
    }


def segformer_shapes(
    variant: str,
    num_classes: int = 1,
    embed_dim: int = 256,
    depths: Optional[Sequence[int]] = None,
    hila: HILASettings = HILASettings(),
) -> Dict[str, torch.Size]:
    """Name -> shape of every state-dict entry of a hila_d2 SegFormer (a detectron2
    SemanticSegmentor with MiT ``variant``, optionally other ``depths`` and HILA pairs, and a
    SegFormerHead). The head sizes change shapes only, not names. Built on the meta device, so it
    allocates nothing."""
    with torch.device("meta"):
        backbone = MixVisionTransformer(variant=variant, depths=depths, hila=hila)
        # "BN" has the same entries as "SyncBN", the configs' default
        head = SegFormerHead(
            backbone.output_shape(), num_classes=num_classes, embed_dim=embed_dim, norm="BN"
        )
    return _state_shapes(backbone=backbone, sem_seg_head=head)


def swin_shapes(
    variant: str, window_size: int = 7, hila: HILASettings = HILASettings()
) -> Dict[str, torch.Size]:
    """Name -> shape of every state-dict entry of a hila_d2 Swin backbone (``backbone.…``) of
    ``variant``, ``window_size`` and ``hila`` pairs, built on the meta device."""
    with torch.device("meta"):
        backbone = SwinTransformerBackbone(variant=variant, window_size=window_size, hila=hila)
    return _state_shapes(backbone=backbone)


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
    return _state_shapes(sem_seg_head=head)


def infer_mit_variant(model: Mapping[str, torch.Tensor]) -> Tuple[str, Tuple[int, ...]]:
    """(variant, depths) of the ``backbone.stages.*`` entries of ``model``.

    ``variant`` is the ``MIT_VARIANTS`` entry with these embed dims and depths; if none has these
    depths (HILA's "B2" has (2, 2, 6, 2)), the first with these embed dims whose depths are all at
    least these (whose ImageNet file covers every block), else the first with these embed dims.
    ValueError if no variant has these embed dims.
    """
    stages: Dict[int, Tuple[int, int]] = {}  # stage -> (blocks, embed dim)
    for name, value in model.items():
        match = _BLOCK_NORM1.fullmatch(name)
        if match:
            stage, block = int(match[1]), int(match[2])
            stages[stage] = (max(stages.get(stage, (0, 0))[0], block + 1), value.shape[0])
    depths = tuple(stages[s][0] for s in sorted(stages))
    dims = tuple(stages[s][1] for s in sorted(stages))
    same_dims = {
        v: tuple(s["depths"]) for v, s in MIT_VARIANTS.items() if tuple(s["embed_dims"]) == dims
    }
    if not same_dims:
        known = ", ".join(f"{v} {tuple(s['embed_dims'])}" for v, s in MIT_VARIANTS.items())
        raise ValueError(f"No MiT variant has embed dims {dims} (depths {depths}); known: {known}")
    exact = [v for v, d in same_dims.items() if d == depths]
    deeper = [v for v, d in same_dims.items() if all(a >= b for a, b in zip(d, depths))]
    return (exact + deeper + list(same_dims))[0], depths


def infer_hila_settings(model: Mapping[str, torch.Tensor]) -> HILASettings:
    """The HILA pairs of the ``backbone.hila.{tag}.*`` entries of ``model`` and the options that
    shape them: ``mlp_ratio`` (hidden / width of the first pair's Bottom-Up Mix-FFN) and
    ``bottom_mlp_ratio`` (of its lower-level block's MLP). The other options (strides, heads,
    parity mode) leave no trace in the weights and keep their defaults, as do the ratios whose
    weights are absent; ``HILASettings()`` without pairs."""
    stages = tuple(  # upper stages of a four-stage encoder
        top
        for top in range(2, 5)
        if any(n.startswith(f"backbone.hila.{pair_tag(top)}.") for n in model)
    )
    default = HILASettings()
    if not stages:
        return default

    def ratio(module: str, fallback: float) -> float:
        weight = model.get(f"backbone.hila.{pair_tag(stages[0])}.{module}.fc1.weight")
        return fallback if weight is None else weight.shape[0] / weight.shape[1]

    return HILASettings(
        stages=stages,
        mlp_ratio=ratio("bottom_up.top_mlp", default.mlp_ratio),
        bottom_mlp_ratio=ratio("bottom_block.mlp", default.bottom_mlp_ratio),
    )


def _hila_config(hila: HILASettings) -> Dict[str, Any]:
    """The ``MODEL.HILA`` keys of ``hila`` that the weights determine; {} without pairs."""
    if not hila.stages:
        return {}
    return {
        "MODEL.HILA.STAGES": list(hila.stages),
        "MODEL.HILA.MLP_RATIO": hila.mlp_ratio,
        "MODEL.HILA.BOTTOM_MLP_RATIO": hila.bottom_mlp_ratio,
    }


def _rename_mit(key: str) -> str:
    """NVlabs MiT name -> timm PVTv2 name (``MixVisionTransformer``'s), by timm's own renaming."""
    (renamed,) = pvt_v2_checkpoint_filter_fn({key: None}, None)
    return renamed


def _rename_swin(key: str) -> str:
    """Official Swin name -> timm name: patch merging moves to the start of the next stage."""
    return _SWIN_DOWNSAMPLE.sub(lambda m: f"layers.{int(m[1]) + 1}.downsample.", key)


def _hila_name(key: str, match: re.Match, tag: str) -> str:
    """``hila.{tag}.{HILAPair attribute}.…`` of the official HILA ``key`` whose backbone-relative
    name ``match`` matched; ValueError for a pair with unshared per-iteration weights."""
    module, rest = match["module"], match["rest"]
    if module in _HILA_COPIED:
        index, _, rest = rest.partition(".")
        if index != "0":
            raise ValueError(
                f"{key!r} is not a weight of the shared copy {module}…0 of HILA pair {tag}: "
                "hila_d2 has one set of HILA weights per pair, shared by all iterations as in the "
                "official configs; checkpoints with unshared copies (.1, .2, …) are not supported"
            )
    rest = rest.replace("dwconv.dwconv", "dwconv")  # NVlabs Mix-FFN -> timm's, as _rename_mit
    return f"hila.{tag}.{_HILA_RENAMED_MODULES.get(module, module)}.{rest}"


def convert_segformer(checkpoint: Mapping[str, Any]) -> ConversionResult:
    """Official SegFormer or HILA-SegFormer weights -> hila_d2 SegFormer names.

    ``checkpoint``: a bare MiT ImageNet state dict (NVlabs names; HILA's adds ``topdown``,
    ``bottomup``, ``prevblock`` and ``prevnorm``) or a trained mmseg state dict (the same with the
    ``backbone.`` prefix, plus ``decode_head.linear_c{1..4}|linear_fuse|linear_pred``), optionally
    wrapped as ``{"state_dict": ...}``. Variant, depths (any, with HILA; a plain SegFormer file
    has its variant's), HILA pairs and ratios and head sizes are read off the tensors; source keys
    that map to no entry of that model, or to one of another shape, raise a ValueError.
    """
    source_format, state_dict = _source(checkpoint, convert_segformer)
    encoder_prefix = "" if source_format.endswith("_imagenet") else "backbone."

    def rename(key: str) -> str:
        if not key.startswith(encoder_prefix):
            return _rename_by(_SEGFORMER_HEAD, key)
        local = key[len(encoder_prefix) :]
        match = _MIT_HILA_KEY.fullmatch(local)
        return "backbone." + (_hila_name(key, match, match["tag"]) if match else _rename_mit(local))

    model, source_of, dropped = _renamed(source_format, state_dict, rename)
    variant, depths = infer_mit_variant(model)
    variant_depths = tuple(MIT_VARIANTS[variant]["depths"])
    if depths != variant_depths and not source_format.startswith("hila_"):
        raise ValueError(
            f"No MiT variant has depths {depths}: a {source_format} file has all the blocks of "
            f"its variant (MiT-{variant}: {variant_depths}), so this one is incomplete"
        )
    hila = infer_hila_settings(model)
    config: Dict[str, Any] = {"MODEL.MIT.VARIANT": variant}
    if depths != variant_depths:
        config["MODEL.MIT.DEPTHS"] = list(depths)
    config.update(_hila_config(hila))
    head_sizes: Dict[str, int] = {}
    if _PREDICTOR in model:
        num_classes, embed_dim = model[_PREDICTOR].shape[:2]
        head_sizes = {"num_classes": num_classes, "embed_dim": embed_dim}
        config["MODEL.SEM_SEG_HEAD.NUM_CLASSES"] = num_classes
        config["MODEL.SEM_SEG_HEAD.EMBED_DIM"] = embed_dim
    expected = segformer_shapes(variant, depths=depths, hila=hila, **head_sizes)
    return _fitted_result(source_format, variant, config, model, expected, source_of, dropped)


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


def _swin_window_size(tables: Mapping[Tuple[int, int], torch.Tensor]) -> int:
    """The window w of relative position bias tables that all have (2w-1)^2 rows."""
    rows = sorted({table.shape[0] for table in tables.values()})
    side = math.isqrt(rows[0]) if len(rows) == 1 else 0
    if side % 2 == 0 or side * side != rows[0]:
        raise ValueError(
            f"relative_position_bias_table rows must be (2w-1)^2 for one window w, got {rows}"
        )
    return (side + 1) // 2


def convert_swin(checkpoint: Mapping[str, Any], window_size: int = 7) -> ConversionResult:
    """Official Swin ImageNet weights -> hila_d2 ``SwinTransformerBackbone`` names.

    ``checkpoint``: Microsoft's ``{"model": state_dict}`` (or the bare state dict). Each
    ``layers.{s}.downsample`` moves to stage s + 1 (timm's layout); the buffers
    ``relative_position_index`` and ``attn_mask``, the classifier ``head.*`` and its final
    ``norm.*`` are dropped; the variant is inferred from the shapes. ``window_size``: the target
    ``MODEL.SWIN.WINDOW_SIZE``; when the file's window differs, each relative position bias table
    is resized bicubically as (2w-1)x(2w-1) images, one per head, as the official Swin code does.
    Source keys that map to no entry of the backbone, or to one of another shape, raise a
    ValueError.
    """
    source_format, state_dict = _source(checkpoint, convert_swin)
    model, source_of, dropped = _renamed(
        source_format, state_dict, lambda key: "backbone." + _rename_swin(key)
    )
    variant = infer_swin_variant(model)
    tables = _swin_tables(model)
    if _swin_window_size(tables) != window_size:
        rows = (2 * window_size - 1) ** 2
        for (stage, block), table in tables.items():
            name = f"backbone.layers.{stage}.blocks.{block}.attn.relative_position_bias_table"
            model[name] = resize_rel_pos_bias_table_simple(
                table, (window_size, window_size), (rows, table.shape[1])
            ).contiguous()
    config = {"MODEL.SWIN.VARIANT": variant, "MODEL.SWIN.WINDOW_SIZE": window_size}
    expected = swin_shapes(variant, window_size)
    return _fitted_result(source_format, variant, config, model, expected, source_of, dropped)


def _upernet_fit(
    model: Mapping[str, torch.Tensor], variant: str
) -> Tuple[Dict[str, torch.Size], Dict[str, Any]]:
    """(``upernet_shapes``, config keys) of the UPerNetHead, and its auxiliary head if any, whose
    converted weights ``model`` holds, on a Swin ``variant``."""
    num_classes, channels = model[_PREDICTOR].shape[:2]
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
            lambda m: "." if m[1] == "conv" else ".norm.", _rename_by(_UPERNET_HEAD, key)
        )
    local = key[len("backbone.") :]
    match = _SWIN_HILA_KEY.fullmatch(local)
    if match:  # the pair is named after its upper stage, layers.{i} (0-based)
        return "backbone." + _hila_name(key, match, pair_tag(int(match["top"]) + 1))
    return "backbone." + _rename_swin(local)


def convert_hila_swin(checkpoint: Mapping[str, Any]) -> ConversionResult:
    """Official trained HILA-Swin UperNet weights -> hila_d2 Swin + UPerNetHead names.

    ``checkpoint``: an mmseg ``{"state_dict": ...}`` (or the bare state dict) with ``backbone.`` +
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
    source_format, state_dict = _source(checkpoint, convert_hila_swin)
    model, source_of, dropped = _renamed(source_format, state_dict, _rename_hila_swin)
    variant = infer_swin_variant(model)
    window_size = _swin_window_size(_swin_tables(model))
    hila = infer_hila_settings(model)
    for top in hila.stages:
        for name in [n for n in model if n.startswith(f"backbone.norm{top - 2}.")]:
            del model[name]
            dropped.append(source_of.pop(name))
    config = {"MODEL.SWIN.VARIANT": variant, "MODEL.SWIN.WINDOW_SIZE": window_size}
    config.update(_hila_config(hila))
    expected = swin_shapes(variant, window_size, hila)
    if _PREDICTOR in model:
        head_shapes, head_config = _upernet_fit(model, variant)
        expected.update(head_shapes)
        config.update(head_config)
    return _fitted_result(source_format, variant, config, model, expected, source_of, dropped)


class _Format(NamedTuple):
    """How to recognise and convert one source format."""

    markers: Tuple[str, ...]  # patterns (fnmatch, * = anything), each matching some key
    dropped: str  # regular expression fully matching the source keys deliberately left out
    convert: Callable[..., ConversionResult]


# format -> how to recognise and convert it; keys are those of the state dict after unwrapping
# ``{"state_dict": ...}`` or ``{"model": ...}``. The first format whose markers all match wins,
# so each HILA format precedes the plain format its files also match.
_FORMATS: Dict[str, _Format] = {
    # HILA ImageNet pretraining file (B0_S3.pth, ...): MiT names + the pairs' modules, classifier
    "hila_segformer_imagenet": _Format(
        ("patch_embed1.proj.weight", "topdown.*"), rf"head\..*|{_HILA_FLAG}", convert_segformer
    ),
    # trained HILA-SegFormer (mmseg): the same under "backbone.", plus the SegFormer head
    "hila_segformer_trained": _Format(
        ("backbone.patch_embed1.proj.weight", "backbone.topdown.*"),
        rf"decode_head\.conv_seg\..*|backbone\.{_HILA_FLAG}",
        convert_segformer,
    ),
    # trained HILA-Swin UperNet (mmseg): Swin segmentation names + each pair's modules in the
    # layer of its upper stage, UPerHead and auxiliary FCNHead
    "hila_swin_trained": _Format(
        ("backbone.patch_embed.proj.weight", "backbone.layers.*.top_down.*"),
        rf"backbone\.({_HILA_FLAG}|{_BUFFERS})",
        convert_hila_swin,
    ),
    # official MiT ImageNet file mit_b{0..5}.pth: a bare NVlabs state dict (+ classifier head.*)
    "segformer_imagenet": _Format(
        ("patch_embed1.proj.weight", "block1.0.attn.kv.weight"), r"head\..*", convert_segformer
    ),
    # trained SegFormer (mmseg): {"state_dict": {"backbone.…", "decode_head.…"}, "meta": ...};
    # mmseg's default classifier conv_seg is unused
    "segformer_trained": _Format(
        ("backbone.patch_embed1.proj.weight", "decode_head.linear_fuse.conv.weight"),
        r"decode_head\.conv_seg\..*",
        convert_segformer,
    ),
    # official Swin ImageNet file swin_{tiny,small,base,large}_*.pth: {"model": Microsoft names},
    # downsampling at the end of stages 0..2 (timm-layout files have no layers.0.downsample);
    # the classifier and its final norm have no hila_d2 counterpart
    "swin_imagenet": _Format(
        (
            "layers.0.blocks.0.attn.relative_position_bias_table",
            "layers.0.downsample.reduction.weight",
        ),
        rf"head\..*|norm\..*|{_BUFFERS}",
        convert_swin,
    ),
}
SUPPORTED_FORMATS = tuple(_FORMATS)


def convert_checkpoint(obj: Any, window_size: Optional[int] = None) -> ConversionResult:
    """Convert a loaded checkpoint of any ``SUPPORTED_FORMATS`` format (see ``detect_format``).
    ``window_size``: target attention window of a Swin ImageNet checkpoint (None:
    ``convert_swin``'s default); a ValueError for any other format."""
    source_format = detect_format(obj)
    converter = _FORMATS[source_format].convert
    if window_size is None:
        return converter(obj)
    if converter is not convert_swin:
        raise ValueError(
            f"window_size applies to Swin checkpoints only (swin_imagenet), not to "
            f"{source_format}"
        )
    return converter(obj, window_size=window_size)
