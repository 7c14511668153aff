"""The input check of hila_d2's meta-architectures: images must have the channels that the
pixel normalisation (``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``) expects, or the subtraction fails with
a broadcasting error (or, for one channel, silently broadcasts)."""

from typing import Iterable

import torch

__all__ = ["check_image_channels"]


def check_image_channels(images: Iterable[torch.Tensor], channels: int) -> None:
    """Raise a ValueError unless every image is a (``channels``, H, W) tensor."""
    for i, image in enumerate(images):
        if image.dim() != 3 or image.shape[0] != channels:
            raise ValueError(
                f"Input image {i} has shape {tuple(image.shape)}, but the model takes "
                f"({channels}, H, W) images in INPUT.FORMAT (MODEL.PIXEL_MEAN has {channels} "
                "values); convert grayscale or RGBA images first, e.g. with "
                "hila_d2.data.images.read_image_file or to_model_image"
            )
