"""Augmentations of the SegFormer (mmsegmentation) training recipe missing from detectron2.

Images are HxWx3 uint8 arrays in RGB order (``INPUT.FORMAT: RGB``); segmentation maps are only
resized (nearest) or left untouched.
"""
from typing import Sequence

import cv2
import numpy as np
from detectron2.data import transforms as T
from PIL import Image

__all__ = ["RandomResizeByRatio", "PhotometricDistortion"]


class RandomResizeByRatio(T.Augmentation):
    """Resize, keeping the aspect ratio, to fit ``base_size`` scaled by a random ratio.

    A ratio ``r`` is drawn uniformly from ``ratio_range``; the image is scaled by
    ``min(r*long_base / long_side, r*short_base / short_side)`` (mmseg ``Resize`` with
    ``img_scale=base_size, ratio_range=ratio_range, keep_ratio=True``).
    """

    def __init__(self, base_size: Sequence[int], ratio_range: Sequence[float]):
        """
        Args:
            base_size: (long side, short side) before scaling, e.g. (2048, 512).
            ratio_range: (low, high) of the uniform ratio.
        """
        super().__init__()
        if len(base_size) != 2 or len(ratio_range) != 2 or not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(
                f"INPUT.RESIZE_BASE_SIZE {tuple(base_size)} must be (long, short) and "
                f"INPUT.RESIZE_RATIO_RANGE {tuple(ratio_range)} must be (low, high) with 0 < low <= high"
            )
        self.base_size, self.ratio_range = tuple(base_size), tuple(ratio_range)
        self.long_base, self.short_base = max(base_size), min(base_size)

    def get_transform(self, image: np.ndarray) -> T.Transform:
        height, width = image.shape[:2]
        ratio = np.random.uniform(*self.ratio_range)
        scale = min(
            int(self.long_base * ratio) / max(height, width),
            int(self.short_base * ratio) / min(height, width),
        )
        new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)
        return T.ResizeTransform(height, width, new_h, new_w, Image.BILINEAR)


def _convert(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """``values * alpha + beta`` clipped to [0, 255] as uint8."""
    return np.clip(values.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


class PhotometricDistortion(T.Augmentation):
    """mmseg's ``PhotoMetricDistortion``: each with probability 1/2, random brightness, contrast
    (before or after the HSV steps, at random), saturation and hue changes."""

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: Sequence[float] = (0.5, 1.5),
        saturation_range: Sequence[float] = (0.5, 1.5),
        hue_delta: int = 18,
    ):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        rng = np.random
        brightness = rng.uniform(-self.brightness_delta, self.brightness_delta) if rng.randint(2) else None
        contrast_first = bool(rng.randint(2))
        contrast = rng.uniform(*self.contrast_range) if rng.randint(2) else None
        saturation = rng.uniform(*self.saturation_range) if rng.randint(2) else None
        hue = rng.randint(-self.hue_delta, self.hue_delta) if rng.randint(2) else None

        def distort(img: np.ndarray) -> np.ndarray:
            if brightness is not None:
                img = _convert(img, beta=brightness)
            if contrast_first and contrast is not None:
                img = _convert(img, alpha=contrast)
            if saturation is not None or hue is not None:
                hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
                if saturation is not None:
                    hsv[..., 1] = _convert(hsv[..., 1], alpha=saturation)
                if hue is not None:
                    hsv[..., 0] = (hsv[..., 0].astype(int) + hue) % 180
                img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
            if not contrast_first and contrast is not None:
                img = _convert(img, alpha=contrast)
            return img

        return T.ColorTransform(distort)
