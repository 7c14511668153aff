"""Small images drawn enlarged: the drawings of tools/demo.py and tools/visualize_hila.py.

detectron2's ``Visualizer`` writes its labels at a fixed size of about 10 px, so on a 128 x 128
image (the built-in dataset's) they cover the objects. An image whose shorter side is under
``MIN_DRAW_SIZE`` is therefore drawn enlarged to that shorter side, aspect kept: the photo by
cubic interpolation, label maps and masks by nearest neighbour (class borders stay exact). The
model still runs on the image at its own size; only what is drawn is enlarged.
"""
import argparse
from typing import Tuple

import cv2
import numpy as np
import torch

__all__ = [
    "MIN_DRAW_SIZE",
    "add_min_draw_size_argument",
    "drawing_size",
    "enlarge_image",
    "enlarge_labels",
]

# shortest side, in pixels, of the drawing of an image (smaller images are enlarged to it)
MIN_DRAW_SIZE = 512

Size = Tuple[int, int]


def drawing_size(size: Size, min_size: int = MIN_DRAW_SIZE) -> Size:
    """(H, W) of an image -> (H', W') of its drawing: the image's own size if its shorter side
    is at least ``min_size`` or ``min_size`` is 0, else scaled so that the shorter side is
    ``min_size``, aspect kept: (128, 128) -> (512, 512), (100, 300) -> (512, 1536)."""
    if min_size < 0:
        raise ValueError(f"min_size is {min_size}: give 0 (draw at the input size) or more")
    height, width = size
    shorter = min(height, width)
    if min_size == 0 or shorter >= min_size:
        return height, width
    return round(height * min_size / shorter), round(width * min_size / shorter)


def enlarge_image(image: np.ndarray, size: Size) -> np.ndarray:
    """(H, W) or (H, W, C) uint8 photo -> (H', W') or (H', W', C) uint8 by cubic interpolation;
    unchanged (the same array) if (H', W') = ``size`` is (H, W)."""
    if tuple(image.shape[:2]) == tuple(size):
        return image
    enlarged = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
    return enlarged.reshape(*size, *image.shape[2:])  # OpenCV drops a channel axis of 1


def enlarge_labels(labels: torch.Tensor, size: Size) -> torch.Tensor:
    """(..., H, W) label map or masks, any dtype -> (..., H', W') by nearest neighbour: drawing
    pixel (y, x) takes the label of (floor((y + 0.5) * H / H'), floor((x + 0.5) * W / W')), the
    input pixel under its centre; unchanged (the same tensor) if ``size`` is (H, W)."""
    height, width = labels.shape[-2:]
    if (height, width) == tuple(size):
        return labels

    def sources(count: int, enlarged: int) -> torch.Tensor:
        centres = torch.arange(enlarged, dtype=torch.float64, device=labels.device) + 0.5
        return (centres * count / enlarged).long().clamp(max=count - 1)

    return labels[..., sources(height, size[0])[:, None], sources(width, size[1])]


def pixels(text: str) -> int:
    """``--min-draw-size``'s value: a number of pixels, 0 or more."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"{value} is negative: give 0 (draw at the input size) or a number of pixels"
        )
    return value


def add_min_draw_size_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--min-draw-size`` flag (default ``MIN_DRAW_SIZE``) of the tools that draw."""
    parser.add_argument(
        "--min-draw-size",
        type=pixels,
        default=MIN_DRAW_SIZE,
        metavar="PIXELS",
        help="draw an image whose shorter side is under PIXELS enlarged to it, so that the "
        f"labels can be read (default {MIN_DRAW_SIZE}; 0: draw at the input size)",
    )
