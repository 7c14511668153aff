"""MiT and SegFormerHead against HuggingFace transformers' Segformer (pinned 5.23.0, random init).

HF's weights go through the official NVlabs layout (``hf_segformer_to_official``) and
``hila_d2.checkpoint.convert.convert_segformer``, so the converter is checked too.

LayerNorm eps: transformers 5.23.0 builds every Segformer LayerNorm with the default 1e-5 and
ignores ``config.layer_norm_eps``; MiT uses 1e-6 in block and stage norms. That difference moves
the outputs by only ~2e-5, below the 1e-4 tolerance, so ``use_mit_eps`` sets MiT's values on
the HF model and the eps of every LayerNorm pair is asserted separately.
"""

import pytest
import torch
from torch import nn
from transformers import SegformerForSemanticSegmentation, SegformerModel

from benchmarks.references import hf_segformer_config, use_mit_eps
from hila_d2.checkpoint.convert import convert_segformer
from hila_d2.checkpoint.segformer import hf_segformer_to_official
from hila_d2.modeling.backbone.mit import STAGE_NAMES, MixVisionTransformer
from hila_d2.modeling.heads.segformer_head import SegFormerHead

SIZES = [(96, 128), (75, 110)]  # a multiple of 32 and not


def _randomize_(model: nn.Module) -> None:
    """Perturb every parameter (biases and norms too) and BatchNorm statistics."""
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 1.5)


def _layer_norm_eps(model: nn.Module) -> list:
    return [m.eps for m in model.modules() if isinstance(m, nn.LayerNorm)]


@pytest.mark.parametrize("variant", ["B0", "B1"])
def test_mit_matches_hf_segformer(variant):
    torch.manual_seed(0)
    hf = SegformerModel(hf_segformer_config(variant)).eval()
    _randomize_(hf)
    use_mit_eps(hf)
    result = convert_segformer(hf_segformer_to_official(hf.state_dict()))
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
    hf = SegformerForSemanticSegmentation(hf_segformer_config("B0", num_labels=5)).eval()
    _randomize_(hf)
    use_mit_eps(hf.segformer)
    result = convert_segformer({"state_dict": hf_segformer_to_official(hf.state_dict())})
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
