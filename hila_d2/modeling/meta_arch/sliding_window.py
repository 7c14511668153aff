"""Semantic segmentor with SegFormer's sliding-window inference (training is unchanged)."""
from typing import List, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, SemanticSegmentor
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList

from .inputs import check_image_channels

__all__ = ["SlidingWindowSemanticSegmentor", "sliding_window_boxes"]


def sliding_window_boxes(
    height: int, width: int, crop_size: Sequence[int], stride: Sequence[int]
) -> List[Tuple[int, int, int, int]]:
    """Windows ``(y0, x0, y1, x1)`` covering an image of ``height x width``.

    A grid of ``crop_size`` windows every ``stride`` pixels; the last window of each row and
    column is shifted back to end at the border; windows are clipped to images smaller than
    ``crop_size``. The same tiling as SegFormer's ``slide_inference``.
    """
    crop_h, crop_w = crop_size
    stride_h, stride_w = stride
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    boxes = []
    for row in range(rows):
        for col in range(cols):
            y1 = min(row * stride_h + crop_h, height)
            x1 = min(col * stride_w + crop_w, width)
            boxes.append((max(y1 - crop_h, 0), max(x1 - crop_w, 0), y1, x1))
    return boxes


@META_ARCH_REGISTRY.register()
class SlidingWindowSemanticSegmentor(SemanticSegmentor):
    """detectron2's ``SemanticSegmentor`` whose inference averages the logits of overlapping
    windows (``TEST.SLIDING_WINDOW.*``) instead of running the whole image at once."""

    @configurable
    def __init__(self, *, crop_size: Sequence[int], stride: Sequence[int], windows_per_batch: int = 1, **kwargs):
        """
        Args:
            crop_size: window (height, width) in pixels of the network input.
            stride: step (height, width) between windows; must not exceed ``crop_size``.
            windows_per_batch: windows run through the network together.
            kwargs: the arguments of ``SemanticSegmentor``.
        """
        super().__init__(**kwargs)
        if any(s <= 0 or s > c for s, c in zip(stride, crop_size)) or min(crop_size) <= 0:
            raise ValueError(
                f"TEST.SLIDING_WINDOW.STRIDE {tuple(stride)} must be positive and at most "
                f"TEST.SLIDING_WINDOW.CROP_SIZE {tuple(crop_size)}, or windows leave gaps"
            )
        self.crop_size = tuple(crop_size)
        self.stride = tuple(stride)
        self.windows_per_batch = windows_per_batch

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret.update(
            crop_size=cfg.TEST.SLIDING_WINDOW.CROP_SIZE,
            stride=cfg.TEST.SLIDING_WINDOW.STRIDE,
            windows_per_batch=cfg.TEST.SLIDING_WINDOW.WINDOWS_PER_BATCH,
        )
        return ret

    def forward(self, batched_inputs):
        check_image_channels([x["image"] for x in batched_inputs], self.pixel_mean.numel())
        if self.training:
            return super().forward(batched_inputs)
        results = []
        for item in batched_inputs:
            image = (item["image"].to(self.device) - self.pixel_mean) / self.pixel_std
            logits = self.sliding_window_logits(image)
            height = item.get("height", image.shape[-2])
            width = item.get("width", image.shape[-1])
            results.append(
                {"sem_seg": sem_seg_postprocess(logits, image.shape[-2:], height, width)}
            )
        return results

    def sliding_window_logits(self, image: torch.Tensor) -> torch.Tensor:
        """Normalised image (C, H, W) -> logits (K, H, W), averaged where windows overlap."""
        height, width = image.shape[-2:]
        boxes = sliding_window_boxes(height, width, self.crop_size, self.stride)
        total = None
        count = image.new_zeros((1, height, width))
        for start in range(0, len(boxes), self.windows_per_batch):
            chunk = boxes[start : start + self.windows_per_batch]
            crops = ImageList.from_tensors(
                [image[:, y0:y1, x0:x1] for y0, x0, y1, x1 in chunk],
                self.backbone.size_divisibility,
                padding_constraints=self.backbone.padding_constraints,
            )
            logits, _ = self.sem_seg_head(self.backbone(crops.tensor), None)
            if total is None:
                total = image.new_zeros((logits.shape[1], height, width))
            for (y0, x0, y1, x1), window_logits in zip(chunk, logits):
                total[:, y0:y1, x0:x1] += window_logits[:, : y1 - y0, : x1 - x0]
                count[:, y0:y1, x0:x1] += 1
        return total / count
