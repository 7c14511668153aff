"""Freezing a timm encoder's parameters: those of the stem and the first stages with
``MODEL.TIMM.FREEZE_AT`` (``freeze``), and those that take no part in the requested outputs (a
classifier's norm, a stage norm whose tokens nobody reads), found by a probe backward pass when
the backbone is built (``freeze_unused``), so DistributedDataParallel sees no unused parameter."""
import logging
from typing import TYPE_CHECKING, Dict, Mapping

import torch
from timm.layers import freeze_batch_norm_2d
from torch import nn

from .model import TimmEncoderError

if TYPE_CHECKING:
    from .backbone import TimmBackbone

__all__ = ["freeze", "freeze_unused"]

logger = logging.getLogger(__name__)


def _levels(encoder: nn.Module, named: Mapping[str, int]) -> Dict[str, int]:
    """Parameter name (in ``encoder``) -> the level of the output it first feeds: that of the
    output module holding it, else of the next output module in registration order (1, the
    stem, before the first); parameters after the last output module are left out. ``named``:
    output name -> index into ``encoder.feature_info``."""
    positions = {name: i for i, (name, _) in enumerate(encoder.named_modules())}
    outputs = sorted(
        (positions[encoder.feature_info[index]["module"]], int(name[3:]),
         encoder.feature_info[index]["module"])
        for name, index in named.items()
    )  # fmt: skip
    levels = {}
    for key, _ in encoder.named_parameters():
        owner = key.rpartition(".")[0]
        inside = [level for _, level, m in outputs if owner == m or owner.startswith(m + ".")]
        later = [level for position, level, _ in outputs if position > positions[owner]]
        if inside or later:
            levels[key] = 1 if positions[owner] < outputs[0][0] else (inside or later)[0]
    return levels


def freeze(encoder: nn.Module, named: Mapping[str, int], freeze_at: int, model_name: str) -> None:
    """Freeze (``requires_grad=False``; BatchNorm -> timm's FrozenBatchNorm2d, with its
    activation for timm's BatchNormAct2d) the parameters of ``encoder`` (timm model
    ``model_name``, outputs ``named`` as ``_levels``) of levels <= ``freeze_at``."""
    if freeze_at < 0 or freeze_at > max(int(n[3:]) for n in named):
        raise TimmEncoderError(
            f"MODEL.TIMM.FREEZE_AT must be in 0..{max(int(n[3:]) for n in named)} for "
            f"{model_name!r} (0: train all, 1: freeze the stem, k: also res2..res{{k}}), got "
            f"{freeze_at}"
        )
    if not freeze_at:
        return
    frozen = {key for key, level in _levels(encoder, named).items() if level <= freeze_at}
    for key, parameter in encoder.named_parameters():
        if key in frozen:
            parameter.requires_grad_(False)
    for name, module in list(encoder.named_modules()):
        params = [f"{name}.{k}" if name else k for k, _ in module.named_parameters()]
        if isinstance(module, nn.BatchNorm2d) and params and set(params) <= frozen:
            parent, _, attr = name.rpartition(".")
            owner = encoder.get_submodule(parent) if parent else encoder
            setattr(owner, attr, freeze_batch_norm_2d(module))  # keeps BatchNormAct's act


def freeze_unused(backbone: "TimmBackbone") -> None:
    """Freeze the trainable parameters of ``backbone`` that receive no gradient from its outputs
    (found by one forward and backward pass on zeros (1, in_chans, H, W) in eval mode)."""
    training = backbone.training
    try:
        backbone.eval()
        with torch.enable_grad():
            outputs = backbone(torch.zeros(1, backbone.in_chans, *backbone.probe_size()))
            sum(out.sum() for out in outputs.values()).backward()
    finally:
        backbone.train(training)
    unused = [k for k, p in backbone.named_parameters() if p.requires_grad and p.grad is None]
    for key, parameter in backbone.named_parameters():
        parameter.grad = None
        if key in unused:
            parameter.requires_grad_(False)
    if any(not key.startswith("encoder.") for key in unused):
        raise RuntimeError(f"HILA parameters take no part in the outputs: {unused}")
    if unused:
        logger.info(
            "timm %s: %d parameters take no part in %s and are frozen: %s",
            backbone.name, len(unused), backbone._out_features, unused[:8],
        )  # fmt: skip
