"""MiT and SegFormerHead against HuggingFace transformers' Segformer (pinned 5.23.0, random init).

HF's weights go through the official NVlabs layout (``hf_to_official``) and
``hila_d2.checkpoint.convert.convert_segformer``, so the converter is checked too.

LayerNorm eps: transformers 5.23.0 builds every Segformer LayerNorm with the default 1e-5 and
ignores ``config.layer_norm_eps``; MiT uses 1e-6 in block and stage norms. That difference moves
the outputs by only ~2e-5, below the 1e-4 tolerance, so ``_use_mit_eps`` sets MiT's values on
the HF model and the eps of every LayerNorm pair is asserted separately.
"""

import re

import pytest
import torch
from torch import nn
from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerModel

from hila_d2.checkpoint.convert import convert_segformer
from hila_d2.modeling.backbone.mit import (
    MIT_NUM_HEADS,
    MIT_SR_RATIOS,
    STAGE_NAMES,
    MIT_VARIANTS,
    MixVisionTransformer,
)
from hila_d2.modeling.heads.segformer_head import SegFormerHead

SIZES = [(96, 128), (75, 110)]  # a multiple of 32 and not
# HF block-local name prefix -> NVlabs block-local name prefix (k_proj/v_proj are fused into kv)
_BLOCK_RENAMES = {
    "layernorm_before.": "norm1.",
    "attention.q_proj.": "attn.q.",
    "attention.o_proj.": "attn.proj.",
    "attention.sequence_reduction.sequence_reduction.": "attn.sr.",
    "attention.sequence_reduction.layer_norm.": "attn.norm.",
    "layernorm_after.": "norm2.",
    "mlp.": "mlp.",  # fc1, dwconv.dwconv, fc2 keep their names
}
# HF decode-head name prefix -> mmseg SegFormer decode-head name prefix
_HEAD_RENAMES = {
    **{f"linear_projections.{i}.": f"linear_c{i + 1}." for i in range(4)},
    "linear_fuse.": "linear_fuse.conv.",
    "batch_norm.": "linear_fuse.bn.",
    "classifier.": "linear_pred.",
}


def _replace_prefix(name: str, renames: dict) -> str:
    old = next(old for old in renames if name.startswith(old))
    return renames[old] + name[len(old) :]


def hf_to_official(hf_state: dict) -> dict:
    """HF ``SegformerModel`` state dict (5.x names ``stages.{i}.…``) -> NVlabs MiT state dict."""
    official = {}
    for name, value in hf_state.items():
        stage, rest = re.fullmatch(r"stages\.(\d)\.(.+)", name).groups()
        i = int(stage) + 1
        if rest.startswith("patch_embeddings."):
            local = rest[len("patch_embeddings.") :].replace("layer_norm.", "norm.")
            official[f"patch_embed{i}.{local}"] = value
        elif rest.startswith("layer_norm."):
            official[f"norm{i}.{rest[len('layer_norm.'):]}"] = value
        else:
            block, local = re.fullmatch(r"blocks\.(\d+)\.(.+)", rest).groups()
            if local.startswith("attention.k_proj."):  # kv rows: [:C] = K, [C:] = V
                value_proj = hf_state[name.replace("k_proj", "v_proj")]
                official[f"block{i}.{block}.attn.kv.{local.rsplit('.', 1)[1]}"] = torch.cat(
                    [value, value_proj]
                )
            elif not local.startswith("attention.v_proj."):
                official[f"block{i}.{block}.{_replace_prefix(local, _BLOCK_RENAMES)}"] = value
    return official


def hf_config(variant: str, **kwargs) -> SegformerConfig:
    spec = MIT_VARIANTS[variant]
    return SegformerConfig(
        depths=list(spec["depths"]),
        hidden_sizes=list(spec["embed_dims"]),
        num_attention_heads=list(MIT_NUM_HEADS),
        sr_ratios=list(MIT_SR_RATIOS),
        mlp_ratios=[4, 4, 4, 4],
        drop_path_rate=0.0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=1e-6,  # ignored by transformers 5.23.0's Segformer, see _use_mit_eps
        reshape_last_stage=True,
        **kwargs,
    )


def _randomize_(model: nn.Module) -> None:
    """Perturb every parameter (biases and norms too) and BatchNorm statistics."""
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 1.5)


def _use_mit_eps(encoder: SegformerModel) -> None:
    """MiT's eps: 1e-6 in block and stage norms (patch-embedding and reduction norms stay 1e-5)."""
    for stage in encoder.stages:
        stage.layer_norm.eps = 1e-6
        for block in stage.blocks:
            block.layernorm_before.eps = block.layernorm_after.eps = 1e-6


def _layer_norm_eps(model: nn.Module) -> list:
    return [m.eps for m in model.modules() if isinstance(m, nn.LayerNorm)]


@pytest.mark.parametrize("variant", ["B0", "B1"])
def test_mit_matches_hf_segformer(variant):
    torch.manual_seed(0)
    hf = SegformerModel(hf_config(variant)).eval()
    _randomize_(hf)
    _use_mit_eps(hf)
    result = convert_segformer(hf_to_official(hf.state_dict()))
    assert (result.source_format, result.variant, result.dropped) == (
        "segformer_imagenet",
        variant,
        [],
    )
    ours = MixVisionTransformer(variant=variant, drop_path_rate=0.0).eval()
    ours.load_state_dict({k[len("backbone.") :]: v for k, v in result.model.items()})  # strict
    # same LayerNorms in the same order, so this pairs them
    assert _layer_norm_eps(ours) == _layer_norm_eps(hf)

    for height, width in SIZES:
        x = torch.randn(2, 3, height, width)
        with torch.no_grad():
            reference = hf(x, output_hidden_states=True).hidden_states
            outputs = ours(x)
        assert len(reference) == len(STAGE_NAMES)
        for name, expected in zip(STAGE_NAMES, reference):
            assert expected.dim() == 4  # NCHW, the last stage included
            torch.testing.assert_close(outputs[name], expected, atol=1e-4, rtol=0)


def test_segformer_head_matches_hf_decode_head():
    """Head conversion (embeds order, fuse input order, BN) against HF's decode head."""
    torch.manual_seed(0)
    hf = SegformerForSemanticSegmentation(hf_config("B0", num_labels=5)).eval()
    _randomize_(hf)
    _use_mit_eps(hf.segformer)
    hf_state = hf.state_dict()
    trained = {
        "backbone." + name: value
        for name, value in hf_to_official(
            {k[len("segformer.") :]: v for k, v in hf_state.items() if k.startswith("segformer.")}
        ).items()
    }
    for name, value in hf_state.items():
        if name.startswith("decode_head."):
            trained[
                "decode_head." + _replace_prefix(name[len("decode_head.") :], _HEAD_RENAMES)
            ] = value
    result = convert_segformer({"state_dict": trained})
    assert (result.source_format, result.missing) == ("segformer_trained", [])

    backbone = MixVisionTransformer(variant="B0", drop_path_rate=0.0).eval()
    head = SegFormerHead(backbone.output_shape(), num_classes=5, embed_dim=256, norm="BN").eval()
    for prefix, module in (("backbone.", backbone), ("sem_seg_head.", head)):
        module.load_state_dict(
            {k[len(prefix) :]: v for k, v in result.model.items() if k.startswith(prefix)}
        )
    x = torch.randn(2, 3, 75, 110)
    with torch.no_grad():
        expected = hf(x).logits  # (B, K, H/4, W/4)
        logits = head.layers(backbone(x))
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
