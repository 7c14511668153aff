"""Hierarchical multi-scale attention (Tao, Sapra, Catanzaro, 2020; docs/design/hmsa.md): a semantic
segmentor that runs one network at several image scales and fuses their logits with a learned
per-pixel attention between adjacent scales. It trains on two scales and chains any number at
inference."""

from typing import Dict, Iterable, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, SemanticSegmentor
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import nn

from ..heads.head_features import head_forward_features, penultimate_channels
from ..heads.scale_attention import ScaleAttentionHead
from ..losses import semantic_segmentation_loss
from .inputs import check_image_channels

__all__ = ["HierarchicalMultiScaleSegmentor", "fuse_hierarchically", "check_scales"]

FUSED_KEYS = ("logits", "aux_logits")  # the per-scale outputs that are fused


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize (align_corners False, no antialias) of (B, C, h, w) to ``size``."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def check_scales(key: str, scales: Sequence[float], count: int = 0) -> Tuple[float, ...]:
    """``scales`` as a tuple after checking that they are positive, distinct and contain 1.0
    (and number ``count`` when given); a ValueError naming the config ``key`` otherwise."""
    scales = tuple(float(s) for s in scales)
    example = "(0.5, 1.0)" if count == 2 else "(0.5, 1.0, 2.0), or (1.0,) for one scale"
    if count and len(scales) != count:
        raise ValueError(
            f"{key} is {scales}: HMSA trains on exactly {count} scales, 1.0 (the crop, where the "
            f"loss is taken) and one other, e.g. {example}"
        )
    if not scales or any(s <= 0 for s in scales) or len(set(scales)) != len(scales):
        raise ValueError(f"{key} is {scales}: it must hold one or more positive, distinct scales")
    if 1.0 not in scales:
        raise ValueError(
            f"{key} is {scales}: it must contain 1.0, the resolution at which the scales are "
            f"fused and the loss or output is taken; e.g. {example}"
        )
    return scales


def _fuse_pair(acc: torch.Tensor, logits: torch.Tensor, attn: torch.Tensor, scale: float):
    """One step of docs/design/hmsa.md §4.1: ``acc`` (B, K, H', W') fused from the higher scales,
    ``logits`` (B, K, h, w) and ``attn`` (B, 1, h, w) of the next lower ``scale``. At or above
    1.0 the accumulator comes down to this scale; below it, this scale's weighted logits
    (multiplied first, then resized) and its attention go up to the accumulator's size."""
    if scale >= 1.0:
        return attn * logits + (1 - attn) * _resize(acc, logits.shape[-2:])
    size = acc.shape[-2:]
    return _resize(attn * logits, size) + (1 - _resize(attn, size)) * acc


def fuse_hierarchically(
    scale_outputs: Iterable[Tuple[float, Dict[str, torch.Tensor]]],
) -> Dict[str, torch.Tensor]:
    """Hierarchical fusion of per-scale outputs, given from the highest scale down
    (docs/design/hmsa.md §4.1).

    Each item is ``(scale, {"logits": (B, K, h_s, w_s), ["aux_logits": ...], "attn": (B, 1,
    h_s, w_s)})``, attention in (0, 1); the highest scale's attention is never used and may be
    absent. An iterable is consumed one item at a time, so a generator keeps only the accumulator
    and the current scale alive. Returns the fused ``{"logits", ["aux_logits"]}`` at the size of
    the scale 1.0 item. With attention ``a_i`` at ascending scales ``t_i``, scale ``t_i``'s
    weight is ``a_i * prod_{j<i}(1 - a_j)`` (the highest: ``prod_{j<n}(1 - a_j)``), up to resizing.
    """
    fused, previous = None, None
    for scale, outputs in scale_outputs:
        if fused is None:
            fused = {k: outputs[k] for k in FUSED_KEYS if k in outputs}
        elif scale >= previous:
            raise ValueError(f"scales must come in descending order, got {scale} after {previous}")
        else:
            fused = {k: _fuse_pair(v, outputs[k], outputs["attn"], scale) for k, v in fused.items()}
        previous = scale
    return fused


@META_ARCH_REGISTRY.register()
class HierarchicalMultiScaleSegmentor(SemanticSegmentor):
    """detectron2's ``SemanticSegmentor`` (backbone + semantic head) run at several image scales,
    with a :class:`ScaleAttentionHead` (``scale_attn``) whose per-pixel attention fuses the
    logits of adjacent scales, lowest scale first (docs/design/hmsa.md §3-§4).

    Training (``MODEL.HMSA.TRAIN_SCALES``, two scales) returns ``loss_sem_seg`` of the fused
    logits, ``loss_sem_seg_aux`` of the fused auxiliary logits when the head has an auxiliary
    branch, and ``loss_sem_seg_scale_{lo,hi}`` of each scale's own logits when
    ``MODEL.HMSA.SCALE_LOSS_WEIGHT`` > 0. Inference fuses ``test_scales`` (settable on the
    model, e.g. ``model.test_scales = (1.0,)``), optionally with flipped copies, and returns
    ``[{"sem_seg": logits (K, height, width)}]`` like ``SemanticSegmentor``.

    Every scale ``s`` rescales the padded batch (H, W) to ``(floor(s H), floor(s W))``, re-pads
    it to the backbone's ``size_divisibility`` and runs all its images (and their flips) in one
    batch; its logits and attention are upsampled to the re-padded size and cropped. Fusion and
    losses run in float32.
    """

    @configurable
    def __init__(
        self,
        *,
        scale_attn: nn.Module,
        train_scales: Sequence[float] = (0.5, 1.0),
        test_scales: Sequence[float] = (0.5, 1.0, 2.0),
        test_flip: bool = False,
        attn_in_feature: str = "",
        ignore_value: int = 255,
        loss_weight: float = 1.0,
        aux_loss_weight: float = 0.0,
        scale_loss_weight: float = 0.0,
        **kwargs,
    ):
        """
        Args:
            scale_attn: the attention head, (B, C, h, w) features -> (B, 1, h, w) in (0, 1).
            train_scales: two scales, one of them 1.0.
            test_scales: any scales containing 1.0.
            test_flip: also run horizontally flipped images and average the fused logits.
            attn_in_feature: "" to feed ``scale_attn`` the head's penultimate features, else the
                name of the backbone feature it reads.
            ignore_value: label ignored by the losses (and used to pad the targets).
            loss_weight: weight of the fused logits' loss.
            aux_loss_weight: weight of the fused auxiliary logits' loss (heads with an
                auxiliary branch only).
            scale_loss_weight: weight of each training scale's own loss; 0 for none.
            kwargs: the arguments of ``SemanticSegmentor``.
        """
        super().__init__(**kwargs)
        self.scale_attn = scale_attn
        self.train_scales = check_scales("MODEL.HMSA.TRAIN_SCALES", train_scales, count=2)
        self.test_scales = test_scales
        self.test_flip = test_flip
        self.attn_in_feature = attn_in_feature
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.aux_loss_weight = aux_loss_weight
        self.scale_loss_weight = scale_loss_weight

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        hmsa = cfg.MODEL.HMSA
        shapes = ret["backbone"].output_shape()
        if hmsa.ATTN_IN_FEATURE:
            if hmsa.ATTN_IN_FEATURE not in shapes:
                raise ValueError(
                    f"MODEL.HMSA.ATTN_IN_FEATURE {hmsa.ATTN_IN_FEATURE!r} is not a backbone "
                    f"output; it outputs {sorted(shapes)} ('' reads the head's features)"
                )
            in_channels = shapes[hmsa.ATTN_IN_FEATURE].channels
        else:
            in_channels = penultimate_channels(ret["sem_seg_head"])
            if in_channels is None:
                raise ValueError(
                    f"MODEL.SEM_SEG_HEAD.NAME {cfg.MODEL.SEM_SEG_HEAD.NAME!r} gives HMSA no "
                    "penultimate features (no forward_features): set MODEL.HMSA.ATTN_IN_FEATURE "
                    f"to the backbone feature the attention should read, one of {sorted(shapes)}"
                )
        ret.update(
            scale_attn=ScaleAttentionHead(cfg, in_channels),
            train_scales=hmsa.TRAIN_SCALES,
            test_scales=hmsa.TEST_SCALES,
            test_flip=hmsa.TEST_FLIP,
            attn_in_feature=hmsa.ATTN_IN_FEATURE,
            ignore_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            loss_weight=cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT,
            aux_loss_weight=cfg.MODEL.SEM_SEG_HEAD.AUX.LOSS_WEIGHT,
            scale_loss_weight=hmsa.SCALE_LOSS_WEIGHT,
        )
        return ret

    @property
    def test_scales(self) -> Tuple[float, ...]:
        """The inference scales; setting them checks them as ``MODEL.HMSA.TEST_SCALES``."""
        return self._test_scales

    @test_scales.setter
    def test_scales(self, scales: Sequence[float]) -> None:
        self._test_scales = check_scales("MODEL.HMSA.TEST_SCALES", scales)

    def forward(self, batched_inputs: List[dict]):
        if not self.training:
            return self.inference(batched_inputs)
        images = self._normalized_batch([x["image"] for x in batched_inputs])
        targets = ImageList.from_tensors(
            [x["sem_seg"].to(self.device) for x in batched_inputs],
            self.backbone.size_divisibility,
            self.ignore_value,
            self.backbone.padding_constraints,
        ).tensor
        return self.losses(images.tensor, targets)

    def _normalized_batch(self, images: List[torch.Tensor]) -> ImageList:
        """Images (3, H_i, W_i), 0-255 -> normalised and padded as ``SemanticSegmentor`` does."""
        check_image_channels(images, self.pixel_mean.numel())
        return ImageList.from_tensors(
            [(x.to(self.device) - self.pixel_mean) / self.pixel_std for x in images],
            self.backbone.size_divisibility,
            padding_constraints=self.backbone.padding_constraints,
        )

    def rescale(self, images: torch.Tensor, scale: float) -> ImageList:
        """Padded batch (B, 3, H, W) -> the batch resized (bilinear, no antialias) to ``(h, w) =
        (floor(scale H), floor(scale W))`` and re-padded to the backbone's size divisibility;
        ``image_sizes`` hold ``(h, w)``."""
        height, width = images.shape[-2:]
        size = (int(scale * height), int(scale * width))
        if min(size) < 1:
            raise ValueError(
                f"Scale {scale} shrinks the {height}x{width} input to {size[0]}x{size[1]}: "
                "raise the smallest of MODEL.HMSA.TRAIN_SCALES / TEST_SCALES"
            )
        if scale == 1.0:
            return ImageList(images, [size] * len(images))
        return ImageList.from_tensors(
            list(_resize(images, size)),
            self.backbone.size_divisibility,
            padding_constraints=self.backbone.padding_constraints,
        )

    def head_outputs(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Batch (B, 3, H, W) -> backbone + head outputs at the head's resolutions:
        ``{"logits", "attn_feats", ["aux_logits"]}`` (see ``head_forward_features``), with
        ``attn_feats`` the backbone's ``attn_in_feature`` when that is set."""
        features = self.backbone(images)
        outputs = head_forward_features(self.sem_seg_head, features)
        if self.attn_in_feature:
            outputs["attn_feats"] = features[self.attn_in_feature]
        return outputs

    @staticmethod
    def to_scaled_image(x: torch.Tensor, scaled: ImageList) -> torch.Tensor:
        """Head output (B, C, h', w') -> float32 (B, C, h, w): upsampled to the re-padded size of
        ``scaled``, then cropped to its unpadded size."""
        height, width = scaled.image_sizes[0]
        return _resize(x.float(), scaled.tensor.shape[-2:])[..., :height, :width]

    def run_scale(
        self, images: torch.Tensor, scale: float, with_attention: bool
    ) -> Dict[str, torch.Tensor]:
        """Padded batch (B, 3, H, W) at one ``scale`` -> ``{"logits": (B, K, h, w),
        ["aux_logits": (B, K, h, w)], ["attn": (B, 1, h, w)]}`` at ``(h, w) = (floor(scale H),
        floor(scale W))``, float32; the attention only ``with_attention``."""
        scaled = self.rescale(images, scale)
        outputs = self.head_outputs(scaled.tensor)
        result = {k: self.to_scaled_image(outputs[k], scaled) for k in FUSED_KEYS if k in outputs}
        if with_attention:
            result["attn"] = self.to_scaled_image(self.scale_attn(outputs["attn_feats"]), scaled)
        return result

    def hierarchical_logits(
        self, images: torch.Tensor, scales: Sequence[float]
    ) -> Dict[str, torch.Tensor]:
        """Padded batch (B, 3, H, W) -> ``{"logits": (B, K, H, W), ["aux_logits"]}`` fused over
        ``scales`` (which contain 1.0), highest first; only one scale's outputs and the
        accumulator are alive at a time."""
        ordered = sorted(scales, reverse=True)
        return fuse_hierarchically(
            (scale, self.run_scale(images, scale, with_attention=i > 0))
            for i, scale in enumerate(ordered)
        )

    def losses(self, images: torch.Tensor, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Padded batch (B, 3, H, W) and labels (B, H, W) -> the training losses
        (docs/design/hmsa.md §3): the lower scale runs first, then 1.0's (or the higher one's), then
        they are fused."""
        low, high = sorted(self.train_scales)
        outputs = {s: self.run_scale(images, s, with_attention=s == low) for s in (low, high)}
        fused = fuse_hierarchically((s, outputs[s]) for s in (high, low))

        def loss(logits: torch.Tensor) -> torch.Tensor:
            return semantic_segmentation_loss(logits, targets, self.ignore_value)

        losses = {"loss_sem_seg": self.loss_weight * loss(fused["logits"])}
        if "aux_logits" in fused and self.aux_loss_weight > 0:
            losses["loss_sem_seg_aux"] = self.aux_loss_weight * loss(fused["aux_logits"])
        if self.scale_loss_weight > 0:
            for name, scale in (("lo", low), ("hi", high)):
                losses[f"loss_sem_seg_scale_{name}"] = self.scale_loss_weight * loss(
                    outputs[scale]["logits"]
                )
        return losses

    def inference(self, batched_inputs: List[dict]) -> List[Dict[str, torch.Tensor]]:
        """``SemanticSegmentor``'s inference over ``test_scales`` (and flips with
        ``test_flip``): ``[{"sem_seg": logits (K, height, width)}]``."""
        raw = [x["image"] for x in batched_inputs]
        if self.test_flip:
            raw += [x.flip(-1) for x in raw]
        images = self._normalized_batch(raw)
        logits = self.hierarchical_logits(images.tensor, self.test_scales)["logits"]
        results = []
        for i, (item, (height, width)) in enumerate(zip(batched_inputs, images.image_sizes)):
            result = logits[i, :, :height, :width]
            if self.test_flip:
                flipped = logits[i + len(batched_inputs), :, :height, :width]
                result = (result + flipped.flip(-1)) / 2
            out_size = (item.get("height", height), item.get("width", width))
            results.append({"sem_seg": sem_seg_postprocess(result, (height, width), *out_size)})
        return results
