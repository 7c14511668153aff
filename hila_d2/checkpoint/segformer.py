"""Official SegFormer (MiT) and HILA-SegFormer checkpoints -> hila_d2 SegFormer names, and HF
transformers' Segformer weights -> the official layouts."""
import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch
from timm.models.pvt_v2 import checkpoint_filter_fn as pvt_v2_checkpoint_filter_fn

from ..modeling.backbone.mit import MIT_VARIANTS, MixVisionTransformer
from ..modeling.heads.segformer_head import SegFormerHead
from ..modeling.hila import HILASettings
from .core import (
    PREDICTOR,
    ConversionResult,
    Format,
    compile_renames,
    examples,
    fitted_result,
    quoted,
    rename_by,
    rename_keys,
    state_shapes,
)
from .hila import hila_config, hila_param_name, infer_hila_settings

__all__ = [
    "convert_hf_segformer_state_dict",
    "convert_segformer_state_dict",
    "convert_timm_pvt_v2_state_dict",
    "hf_segformer_to_official",
    "infer_mit_variant",
    "segformer_shapes",
]


# SegFormer decode head (mmseg "decode_head.…") -> SegFormerHead
_SEGFORMER_HEAD = compile_renames(
    (r"decode_head\.linear_c([1-4])\.proj\.", lambda m: f"sem_seg_head.embeds.{int(m[1]) - 1}."),
    (r"decode_head\.linear_fuse\.conv\.", "sem_seg_head.fuse."),
    (r"decode_head\.linear_fuse\.bn\.", "sem_seg_head.fuse.norm."),
    (r"decode_head\.linear_pred\.", "sem_seg_head.predictor."),
)
# official HILA keys of MiT (after "backbone."): "{module}.{tag}.{rest}"
_MIT_HILA_KEY = re.compile(
    r"(?P<module>topdown|bottomup|prevblock|prevnorm)\.(?P<tag>\d+)\.(?P<rest>.+)"
)
_BLOCK_NORM1 = re.compile(r"backbone\.stages\.(\d+)\.blocks\.(\d+)\.norm1\.weight")

# HF transformers (5.x) Segformer block-local name prefix -> NVlabs MiT block-local name prefix
# (k_proj and v_proj are fused into kv)
_HF_BLOCK_RENAMES = {
    "layernorm_before.": "norm1.",
    "attention.q_proj.": "attn.q.",
    "attention.o_proj.": "attn.proj.",
    "attention.sequence_reduction.sequence_reduction.": "attn.sr.",
    "attention.sequence_reduction.layer_norm.": "attn.norm.",
    "layernorm_after.": "norm2.",
    "mlp.": "mlp.",  # fc1, dwconv.dwconv, fc2 keep their names
}
# HF decode-head name prefix -> mmseg SegFormer decode-head name prefix
_HF_HEAD_RENAMES = {
    **{f"linear_projections.{i}.": f"linear_c{i + 1}." for i in range(4)},
    "linear_fuse.": "linear_fuse.conv.",
    "batch_norm.": "linear_fuse.bn.",
    "classifier.": "linear_pred.",
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
    return state_shapes(backbone=backbone, sem_seg_head=head)


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


def _rename_mit(key: str) -> str:
    """NVlabs MiT name -> timm PVTv2 name (``MixVisionTransformer``'s), by timm's own renaming."""
    (renamed,) = pvt_v2_checkpoint_filter_fn({key: None}, None)
    return renamed


def _replace_prefix(name: str, renames: Mapping[str, str]) -> str:
    old = next(old for old in renames if name.startswith(old))
    return renames[old] + name[len(old) :]


def _official_mit_name(name: str) -> str:
    """HF encoder name ``stages.{i}.…`` -> NVlabs MiT name; ``attention.k_proj`` and
    ``attention.v_proj`` both -> ``attn.kv``."""
    stage, rest = re.fullmatch(r"stages\.(\d)\.(.+)", name).groups()
    i = int(stage) + 1
    if rest.startswith("patch_embeddings."):
        return f"patch_embed{i}." + rest[len("patch_embeddings.") :].replace("layer_norm.", "norm.")
    if rest.startswith("layer_norm."):
        return f"norm{i}.{rest[len('layer_norm.'):]}"
    block, local = re.fullmatch(r"blocks\.(\d+)\.(.+)", rest).groups()
    if re.match(r"attention\.[kv]_proj\.", local):
        return f"block{i}.{block}.attn.kv.{local.rsplit('.', 1)[1]}"
    return f"block{i}.{block}.{_replace_prefix(local, _HF_BLOCK_RENAMES)}"


def _hf_v5_official_name(key: str) -> str:
    """transformers 5.x in-memory Segformer name -> official name, or "" if it has none:
    ``[segformer.]stages.{i}.…`` -> NVlabs MiT ``patch_embed{i+1}|block{i+1}.{j}|norm{i+1}.…``
    (K and V both -> ``attn.kv``; no ``backbone.`` prefix), ``decode_head.…`` -> mmseg
    ``decode_head.linear_c{k+1}|linear_fuse.conv|linear_fuse.bn|linear_pred.…``."""
    try:
        if key.startswith("decode_head."):
            local = key[len("decode_head.") :]
            return "decode_head." + _replace_prefix(local, _HF_HEAD_RENAMES)
        return _official_mit_name(key[len("segformer.") :] if key.startswith("segformer.") else key)
    except (AttributeError, StopIteration):
        return ""


def hf_segformer_to_official(hf_state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """HF transformers (5.x) Segformer weights -> the official layouts ``convert_segformer``
    reads.

    ``hf_state`` is either a ``SegformerModel`` state dict (``stages.{i}.patch_embeddings|
    blocks.{j}|layer_norm.…``, i = 0..3), returned as a bare NVlabs MiT ImageNet state dict
    (``patch_embed{i+1}.…``, ``block{i+1}.{j}.…``, ``norm{i+1}.…``), or a
    ``SegformerForSemanticSegmentation`` state dict (the same behind ``segformer.``, plus
    ``decode_head.linear_projections.{k}|linear_fuse|batch_norm|classifier.…``), returned as an
    mmseg SegFormer state dict (``backbone.`` + the MiT names, ``decode_head.linear_c{k+1}|
    linear_fuse.conv|linear_fuse.bn|linear_pred.…``). HF's separate K and V projections become
    the rows of ``attn.kv`` ([:C] = K, [C:] = V).
    """
    official = {}
    for name, value in hf_state.items():
        if _is_value(name):
            continue  # joins its K in attn.kv
        official_name = _hf_v5_official_name(name)
        if not official_name:
            raise ValueError(f"{name!r} is no transformers 5.x Segformer name")
        if official_name.split(".")[-2] == "kv":
            value = torch.cat([value, hf_state[name.replace("k_proj", "v_proj")]])
        official[("backbone." if name.startswith("segformer.") else "") + official_name] = value
    return official


def convert_segformer_state_dict(
    source: Format, state_dict: Mapping[str, torch.Tensor]
) -> ConversionResult:
    """Official SegFormer or HILA-SegFormer weights of the ``source`` format -> hila_d2 SegFormer
    names.

    ``state_dict``: a bare MiT ImageNet state dict (NVlabs names; HILA's adds ``topdown``,
    ``bottomup``, ``prevblock`` and ``prevnorm``; formats ``*_imagenet``) or a trained mmseg state
    dict (the same with the ``backbone.`` prefix, plus ``decode_head.linear_c{1..4}|linear_fuse|
    linear_pred``). Variant, depths (any, with HILA; a plain SegFormer file has its variant's),
    HILA pairs and ratios and head sizes are read off the tensors; source keys that map to no
    entry of that model, or to one of another shape, raise a ValueError.
    """
    encoder_prefix = "" if source.name.endswith("_imagenet") else "backbone."
    return _convert_official_mit(source, state_dict, encoder_prefix)


def _convert_official_mit(
    source: Format, state_dict: Mapping[str, torch.Tensor], encoder_prefix: str
) -> ConversionResult:
    """``convert_segformer_state_dict`` of a state dict in the official names whose encoder keys
    start with ``encoder_prefix`` ("" or "backbone."), in the messages of the ``source``
    format."""

    def rename(key: str) -> str:
        if not key.startswith(encoder_prefix):
            return rename_by(_SEGFORMER_HEAD, key)
        local = key[len(encoder_prefix) :]
        match = _MIT_HILA_KEY.fullmatch(local)
        if match:
            return "backbone." + hila_param_name(key, match, match["tag"])
        return "backbone." + _rename_mit(local)

    model, source_of, dropped = rename_keys(source, state_dict, rename)
    variant, depths = infer_mit_variant(model)
    variant_depths = tuple(MIT_VARIANTS[variant]["depths"])
    if depths != variant_depths and not source.name.startswith("hila_"):
        raise ValueError(
            f"No MiT variant has depths {depths}: a {source.name} file has all the blocks of "
            f"its variant (MiT-{variant}: {variant_depths}), so this one is incomplete"
        )
    hila = infer_hila_settings(model)
    config: Dict[str, Any] = {"MODEL.MIT.VARIANT": variant}
    if depths != variant_depths:
        config["MODEL.MIT.DEPTHS"] = list(depths)
    config.update(hila_config(hila))
    head_sizes: Dict[str, int] = {}
    if PREDICTOR in model:
        num_classes, embed_dim = model[PREDICTOR].shape[:2]
        head_sizes = {"num_classes": num_classes, "embed_dim": embed_dim}
        config["MODEL.SEM_SEG_HEAD.NUM_CLASSES"] = num_classes
        config["MODEL.SEM_SEG_HEAD.EMBED_DIM"] = embed_dim
    expected = segformer_shapes(variant, depths=depths, hila=hila, **head_sizes)
    return fitted_result(source, variant, config, model, expected, source_of, dropped)


# transformers' Segformer names as the hub's files and ``save_pretrained`` (5.23.0 included)
# write them -> NVlabs MiT / mmseg SegFormer names. The encoder sits behind "segformer.encoder."
# (SegformerFor*) or "encoder." (SegformerModel); K and V go into attn.kv.
_HF_PARAM = r"(?=[^.]+$)"  # the rule must reach the parameter name
_HF_ENCODER = r"(?:segformer\.)?encoder\."
_HF_BLOCK = _HF_ENCODER + r"block\.(\d)\.(\d+)\."
_HF_ON_DISK = compile_renames(
    *(
        (_HF_ENCODER + rf"patch_embeddings\.(\d)\.{hf}\.{_HF_PARAM}",
         lambda m, ours=ours: f"patch_embed{int(m[1]) + 1}.{ours}.")
        for hf, ours in (("proj", "proj"), ("layer_norm", "norm"))
    ),
    *(
        (_HF_BLOCK + hf.replace(".", r"\.") + rf"\.{_HF_PARAM}",
         lambda m, ours=ours: f"block{int(m[1]) + 1}.{m[2]}.{ours}.")
        for hf, ours in (
            ("layer_norm_1", "norm1"),
            ("layer_norm_2", "norm2"),
            ("attention.self.query", "attn.q"),
            ("attention.self.key", "attn.kv"),  # rows [:C]
            ("attention.self.value", "attn.kv"),  # rows [C:]
            ("attention.self.sr", "attn.sr"),
            ("attention.self.layer_norm", "attn.norm"),
            ("attention.output.dense", "attn.proj"),
            ("mlp.dense1", "mlp.fc1"),
            ("mlp.dwconv.dwconv", "mlp.dwconv.dwconv"),
            ("mlp.dense2", "mlp.fc2"),
        )
    ),
    (_HF_ENCODER + rf"layer_norm\.(\d)\.{_HF_PARAM}", lambda m: f"norm{int(m[1]) + 1}."),
    (rf"decode_head\.linear_c\.(\d)\.proj\.{_HF_PARAM}",
     lambda m: f"decode_head.linear_c{int(m[1]) + 1}.proj."),
    (rf"decode_head\.linear_fuse\.{_HF_PARAM}", "decode_head.linear_fuse.conv."),
    (rf"decode_head\.batch_norm\.{_HF_PARAM}", "decode_head.linear_fuse.bn."),
    (rf"decode_head\.classifier\.{_HF_PARAM}", "decode_head.linear_pred."),
)


def _is_value(key: str) -> bool:
    return ".attention.self.value." in key or ".attention.v_proj." in key


def _restore_names(message: str, names: Mapping[str, str]) -> str:
    """``message`` of ``_convert_official_mit`` with each quoted official key replaced by the
    source key(s) it came from."""
    for name, key in names.items():
        message = message.replace(repr(name), key)
    return message


def convert_hf_segformer_state_dict(
    source: Format, state_dict: Mapping[str, torch.Tensor]
) -> ConversionResult:
    """transformers Segformer weights of the ``source`` format -> hila_d2 SegFormer names.

    ``state_dict``: the state dict of a ``SegformerModel`` (``encoder.…``, as nvidia/mit-b*),
    ``SegformerForImageClassification`` (``segformer.encoder.…`` + ``classifier.*``, dropped) or
    ``SegformerForSemanticSegmentation`` (``segformer.encoder.…`` + ``decode_head.linear_c.{i}|
    linear_fuse|batch_norm|classifier``, -> ``SegFormerHead``), in the names of the hub's files and
    of ``save_pretrained`` (format ``hf_segformer``) or in transformers 5.x's in-memory names
    (``stages.{i}.…``, format ``hf_segformer_v5``, e.g. a ``torch.save(model.state_dict())``).
    The names go to the official layouts and through ``convert_segformer_state_dict``'s
    conversion; its report and errors name the source keys. Keys that map to nothing raise a
    ValueError, as does a K without its V.
    """
    dropped_keys = re.compile(source.dropped)
    dropped = sorted(k for k in state_dict if dropped_keys.fullmatch(k))
    with_head = any(k.startswith("decode_head.") for k in state_dict)
    official: Dict[str, torch.Tensor] = {}
    names: Dict[str, str] = {}  # official name -> quoted source key(s)
    kv: Dict[str, Dict[bool, Tuple[str, torch.Tensor]]] = {}
    unmapped = []
    for key, value in state_dict.items():
        if key in dropped:
            continue
        if source.name == "hf_segformer":
            name = rename_by(_HF_ON_DISK, key)
        else:
            name = _hf_v5_official_name(key)
        if not name:
            unmapped.append(key)
            continue
        if with_head and not name.startswith("decode_head."):
            name = "backbone." + name
        if name.rsplit(".", 2)[-2] == "kv":
            kv.setdefault(name, {})[_is_value(key)] = (key, value)
            continue
        if name in official:
            raise ValueError(f"Source keys {names[name]} and {key!r} both map to {name!r}")
        official[name], names[name] = value, repr(key)
    if unmapped:
        raise ValueError(
            f"{source.name} checkpoint has keys that map to no hila_d2 parameter: "
            f"{examples(quoted(sorted(unmapped)))}"
        )
    for name, parts in kv.items():
        if set(parts) != {False, True}:
            (key, _), = parts.values()
            raise ValueError(
                f"{source.name} checkpoint has {key!r} without its "
                f"{'key' if _is_value(key) else 'value'} projection: K and V form {name!r}"
            )
        official[name] = torch.cat([parts[False][1], parts[True][1]])
        names[name] = f"{parts[False][0]!r} + {parts[True][0]!r}"
    try:
        result = _convert_official_mit(source, official, "backbone." if with_head else "")
    except ValueError as error:
        raise ValueError(_restore_names(str(error), names)) from None
    result.dropped = dropped
    return result


def convert_timm_pvt_v2_state_dict(
    source: Format, state_dict: Mapping[str, torch.Tensor]
) -> ConversionResult:
    """timm ``pvt_v2_b*`` weights of the ``source`` format -> hila_d2 MiT names, where the file
    is a MiT.

    hila_d2's MiT is timm's ``PyramidVisionTransformerV2``, so the names are kept and only the
    classifier ``head.*`` is dropped. timm's pretrained ``pvt_v2_b0..b5`` are PVTv2, not MiT: MLP
    ratios (8, 8, 4, 4) where MiT has 4 in every stage; ``pvt_v2_b2_li`` (linear attention) pools
    to 7x7 and reduces with a 1x1 ``sr`` in every stage, the last one included. Both raise a
    ValueError saying so; a pvt_v2 file with MiT's ratios and reductions converts.
    """
    model, source_of, dropped = rename_keys(source, state_dict, lambda key: "backbone." + key)
    ratios = []
    for stage in range(4):
        fc1 = model.get(f"backbone.stages.{stage}.blocks.0.mlp.fc1.weight")
        if fc1 is not None:
            ratios.append(fc1.shape[0] // fc1.shape[1])
    sr = [
        (stage, tuple(model[name].shape[-2:]))
        for stage in range(4)
        for name in [f"backbone.stages.{stage}.blocks.0.attn.sr.weight"]
        if name in model
    ]
    if any(size == (1, 1) for _, size in sr) or any(stage == 3 for stage, _ in sr):
        raise ValueError(
            f"{source.name} checkpoint is the linear-attention PVTv2 (pvt_v2_*_li: a 1x1 "
            f"attn.sr in stages {[s for s, _ in sr]}), not a MiT: MiT reduces with strided "
            "convolutions (sr ratios 8, 4, 2) in stages 0..2 and none in stage 3"
        )
    if any(ratio != 4 for ratio in ratios):
        raise ValueError(
            f"{source.name} checkpoint has MLP ratios {tuple(ratios)} (mlp.fc1 rows / width "
            "per stage): it is a PVTv2 (timm's pvt_v2_b* have (8, 8, 4, 4)), not a MiT, whose "
            "ratio is 4 in every stage; use the MiT weights (mit_b*.pth or nvidia/mit-b*)"
        )
    variant, depths = infer_mit_variant(model)
    variant_depths = tuple(MIT_VARIANTS[variant]["depths"])
    if depths != variant_depths:
        raise ValueError(
            f"No MiT variant has depths {depths}: MiT-{variant} has {variant_depths}"
        )
    config: Dict[str, Any] = {"MODEL.MIT.VARIANT": variant}
    expected = segformer_shapes(variant)
    return fitted_result(source, variant, config, model, expected, source_of, dropped)
