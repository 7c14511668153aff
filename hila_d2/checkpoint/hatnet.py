"""Official HAT-Net v2.0 ImageNet checkpoints (``HAT-Net_{Tiny,Small,Medium,Large}.pth``) ->
hila_d2 ``HATNet`` names (docs/design/hatnet.md §5)."""
import re
from typing import Dict, Mapping, Tuple

import torch

from ..modeling.backbone.hatnet import HATNET_EXPANSIONS, HATNET_VARIANTS, HATNet
from .core import ConversionResult, Format, fitted_result, rename_keys, state_shapes

__all__ = ["HATNET_DROPPED", "convert_hatnet_state_dict", "hatnet_shapes", "infer_hatnet_variant"]

HATNET_DROPPED = r"(module\.)?classifier\..*"  # the ImageNet classifier
_DATA_PARALLEL = "module."  # prefix of checkpoints saved from a DistributedDataParallel model
_BLOCK = re.compile(r"backbone\.blocks\.(\d+)\.(\d+)\.conv\.conv2\.0\.weight")


def hatnet_shapes(variant: str) -> Dict[str, torch.Size]:
    """Name -> shape of every state-dict entry of a hila_d2 HAT-Net backbone (``backbone.…``) of
    ``variant``, built on the meta device."""
    with torch.device("meta"):
        backbone = HATNet(variant=variant)
    return state_shapes(backbone=backbone)


def infer_hatnet_variant(model: Mapping[str, torch.Tensor]) -> str:
    """The ``HATNET_VARIANTS`` entry whose widths, depths, depthwise kernels and expansions are
    those of the ``backbone.blocks.*`` entries of ``model``; ValueError naming them otherwise."""
    stages: Dict[int, Tuple[int, int, int, int]] = {}  # stage -> (blocks, width, kernel, expansion)
    for name, value in model.items():
        match = _BLOCK.fullmatch(name)
        if match:
            stage, block = int(match[1]), int(match[2])
            hidden, kernel = value.shape[0], value.shape[-1]
            width = model[name.replace("conv2.0.weight", "conv3.1.weight")].shape[0]
            blocks = max(stages.get(stage, (0,))[0], block + 1)
            stages[stage] = (blocks, width, kernel, hidden // width)
    found = {
        "depths": tuple(stages[s][0] for s in sorted(stages)),
        "dims": tuple(stages[s][1] for s in sorted(stages)),
        "kernel_sizes": tuple(stages[s][2] for s in sorted(stages)),
    }
    expansions = tuple(stages[s][3] for s in sorted(stages))
    for variant, spec in HATNET_VARIANTS.items():
        if all(tuple(spec[k]) == v for k, v in found.items()) and expansions == HATNET_EXPANSIONS:
            return variant
    known = "; ".join(
        f"{v}: " + ", ".join(f"{k} {tuple(s[k])}" for k in found)
        for v, s in HATNET_VARIANTS.items()
    )
    raise ValueError(
        f"No HAT-Net variant has {', '.join(f'{k} {v}' for k, v in found.items())} and "
        f"expansions {expansions} (all variants: {HATNET_EXPANSIONS}); known: {known}. Only the "
        "v2.0 HAT-Net weights are supported, not the v1.0 TransCNN ones"
    )


def convert_hatnet_state_dict(
    source: Format, state_dict: Mapping[str, torch.Tensor]
) -> ConversionResult:
    """Official HAT-Net v2.0 weights of the ``source`` format -> hila_d2 ``HATNet`` names
    (``backbone.…``).

    ``state_dict``: the official state dict (files hold it bare, as ``{"model": ...}`` or as
    ``{"state_dict": ...}``), with or without DistributedDataParallel's ``module.`` prefix. The
    classifier is dropped; the unused ``proj_norm`` weights are kept so that the backbone loads
    strictly. The variant is read off the tensors; source keys that map to no entry of that
    backbone, or to one of another shape, raise a ValueError.
    """

    def rename(key: str) -> str:
        return "backbone." + (key[len(_DATA_PARALLEL) :] if key.startswith(_DATA_PARALLEL) else key)

    model, source_of, dropped = rename_keys(source, state_dict, rename)
    variant = infer_hatnet_variant(model)
    config = {"MODEL.HATNET.VARIANT": variant}
    return fitted_result(source, variant, config, model, hatnet_shapes(variant), source_of, dropped)
