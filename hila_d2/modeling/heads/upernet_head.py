"""UperNet decode head (Xiao et al., 2018) with an optional auxiliary FCN head, registered as
``UPerNetHead`` in SEM_SEG_HEADS_REGISTRY (mmseg's ``UPerHead`` + ``FCNHead`` semantics)."""
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from ..losses import semantic_segmentation_loss
from .head_inputs import levels_finest_first, select_in_features

__all__ = ["UPerNetHead"]


def _conv_norm_relu(in_channels: int, out_channels: int, kernel_size: int, norm: str) -> Conv2d:
    """Conv (no bias when normed, "same" padding) -> norm -> ReLU, He-initialised as mmcv's
    ConvModule (normal, fan_out)."""
    conv = Conv2d(
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        padding=kernel_size // 2,
        bias=not norm,
        norm=get_norm(norm, out_channels),
        activation=F.relu,
    )
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def _classifier(in_channels: int, num_classes: int) -> nn.Conv2d:
    """1x1 conv with bias, weight ~ N(0, 0.01^2), bias 0."""
    conv = nn.Conv2d(in_channels, num_classes, kernel_size=1)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    return conv


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@SEM_SEG_HEADS_REGISTRY.register()
class UPerNetHead(nn.Module):
    """Pyramid pooling on the coarsest level + FPN over all levels -> concat at the finest level
    -> 3x3 fuse conv -> dropout -> 1x1 classifier (UperNet, Xiao et al., 2018).

    An optional auxiliary FCN head (3x3 conv, dropout, 1x1 classifier) on one more feature adds
    ``loss_sem_seg_aux`` in training; it is not run at inference.

    ``forward(features, targets)`` follows detectron2's semantic heads: in training it returns
    ``(None, {"loss_sem_seg": ..., ["loss_sem_seg_aux": ...]})``; in inference
    ``(logits (B, K, H, W), {})`` at the padded input resolution (the finest level upsampled by
    its stride).
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        norm: str = "BN",
        ignore_value: int = 255,
        loss_weight: float = 1.0,
        aux_input_shape: Optional[Dict[str, ShapeSpec]] = None,
        aux_channels: int = 256,
        aux_loss_weight: float = 0.4,
    ):
        """
        Args:
            input_shape: the features the UperNet consumes (any number of levels), by name.
            num_classes: number of classes K.
            channels: width CH of the pyramid pooling, lateral, FPN and fuse convolutions.
            pool_scales: output sizes of the adaptive average pools on the coarsest level.
            dropout: dropout probability before both classifiers (channel-wise, as mmseg).
            norm: detectron2 norm name for every conv but the classifiers ("BN", "SyncBN",
                "GN", ...; "" for none, the convs then get a bias).
            ignore_value: label ignored by the losses.
            loss_weight: multiplier of the main loss.
            aux_input_shape: ``{name: ShapeSpec}`` of the one feature the auxiliary FCN head
                reads; None builds no auxiliary head.
            aux_channels: width of the auxiliary head's 3x3 conv.
            aux_loss_weight: multiplier of the auxiliary loss.
        """
        super().__init__()
        ordered = levels_finest_first(input_shape, "UPerNetHead")
        self.in_features = [name for name, _ in ordered]
        self.common_stride = ordered[0][1].stride
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        in_channels = [shape.channels for _, shape in ordered]

        # pyramid pooling module on the coarsest level; its bottleneck is that level's lateral
        self.ppm = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(scale), _conv_norm_relu(in_channels[-1], channels, 1, norm)
            )
            for scale in pool_scales
        )
        self.bottleneck = _conv_norm_relu(
            in_channels[-1] + len(pool_scales) * channels, channels, 3, norm
        )
        self.lateral_convs = nn.ModuleList(
            _conv_norm_relu(c, channels, 1, norm) for c in in_channels[:-1]
        )
        self.fpn_convs = nn.ModuleList(
            _conv_norm_relu(channels, channels, 3, norm) for _ in in_channels[:-1]
        )
        self.fpn_bottleneck = _conv_norm_relu(len(in_channels) * channels, channels, 3, norm)
        self.dropout = nn.Dropout2d(dropout)
        self.predictor = _classifier(channels, num_classes)

        self.aux_in_feature = None
        self.aux_head = None
        if aux_input_shape is not None:
            if len(aux_input_shape) != 1:
                raise ValueError(
                    "aux_input_shape must name exactly one feature, got "
                    f"{sorted(aux_input_shape)}"
                )
            self.aux_in_feature, aux_shape = next(iter(aux_input_shape.items()))
            self.aux_loss_weight = aux_loss_weight
            self.aux_head = nn.Sequential(
                _conv_norm_relu(aux_shape.channels, aux_channels, 3, norm),
                nn.Dropout2d(dropout),
                _classifier(aux_channels, num_classes),
            )

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head_cfg = cfg.MODEL.SEM_SEG_HEAD
        selected = select_in_features(head_cfg.IN_FEATURES, input_shape)
        aux_input_shape = None
        if head_cfg.AUX.LOSS_WEIGHT > 0:
            if head_cfg.AUX.IN_FEATURE not in input_shape:
                raise ValueError(
                    f"MODEL.SEM_SEG_HEAD.AUX.IN_FEATURE {head_cfg.AUX.IN_FEATURE!r} is not a "
                    f"backbone output; it outputs {sorted(input_shape)} (AUX.LOSS_WEIGHT 0 "
                    "builds no auxiliary head)"
                )
            aux_input_shape = {head_cfg.AUX.IN_FEATURE: input_shape[head_cfg.AUX.IN_FEATURE]}
        return {
            "input_shape": selected,
            "num_classes": head_cfg.NUM_CLASSES,
            "channels": head_cfg.UPERNET.CHANNELS,
            "pool_scales": tuple(head_cfg.UPERNET.POOL_SCALES),
            "dropout": head_cfg.DROPOUT,
            "norm": head_cfg.NORM,
            "ignore_value": head_cfg.IGNORE_VALUE,
            "loss_weight": head_cfg.LOSS_WEIGHT,
            "aux_input_shape": aux_input_shape,
            "aux_channels": head_cfg.AUX.CHANNELS,
            "aux_loss_weight": head_cfg.AUX.LOSS_WEIGHT,
        }

    def _classifier_input(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Features by name (B, C_i, H_i, W_i) -> the classifier's input (B, CH, H_0, W_0)."""
        xs = [features[name] for name in self.in_features]
        coarsest = xs[-1]
        pooled = [_resize(branch(coarsest), coarsest.shape[-2:]) for branch in self.ppm]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, xs[:-1])]
        laterals.append(self.bottleneck(torch.cat([coarsest, *pooled], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):  # top-down, coarse to fine
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        finest = outs[0].shape[-2:]
        outs = [outs[0]] + [_resize(x, finest) for x in outs[1:]]
        return self.dropout(self.fpn_bottleneck(torch.cat(outs, dim=1)))

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Features by name (B, C_i, H_i, W_i) -> logits (B, K, H_0, W_0) at the finest level."""
        return self.predictor(self._classifier_input(features))

    def forward_features(self, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Features by name (B, C_i, H_i, W_i) -> ``{"logits": (B, K, H_0, W_0), "attn_feats":
        (B, CH, H_0, W_0)}`` at the finest level, plus ``"aux_logits"`` (B, K, H_a, W_a) of the
        auxiliary head in training when it exists; ``attn_feats`` is the classifier's input (HMSA's
        scale attention reads it, docs/design/hmsa.md §2.3)."""
        x = self._classifier_input(features)
        outputs = {"logits": self.predictor(x), "attn_feats": x}
        if self.training and self.aux_head is not None:
            outputs["aux_logits"] = self.aux_head(features[self.aux_in_feature])
        return outputs

    def forward(self, features: Dict[str, torch.Tensor], targets: Optional[torch.Tensor] = None):
        outputs = self.forward_features(features)
        if self.training:
            loss = semantic_segmentation_loss(outputs["logits"], targets, self.ignore_value)
            losses = {"loss_sem_seg": loss * self.loss_weight}
            if "aux_logits" in outputs:
                aux_loss = semantic_segmentation_loss(
                    outputs["aux_logits"], targets, self.ignore_value
                )
                losses["loss_sem_seg_aux"] = aux_loss * self.aux_loss_weight
            return None, losses
        logits = F.interpolate(
            outputs["logits"], scale_factor=self.common_stride, mode="bilinear", align_corners=False
        )
        return logits, {}
