"""Image files and arrays as the (H, W, 3) uint8 images detectron2 models take, whatever their
channels: grayscale, 16-bit grayscale, palette, gray + alpha, RGB, RGBA, CMYK. What cannot be
turned into one fails with a ValueError that names the image and the problem."""

import numpy as np
from PIL import Image, ImageOps

__all__ = ["IMAGE_FORMATS", "read_image_file", "to_model_image"]

IMAGE_FORMATS = ("RGB", "BGR")  # the INPUT.FORMAT values of detectron2's DefaultPredictor

# PIL modes whose arrays to_model_image reads directly: gray, 16-bit gray, RGB, RGBA; PIL
# converts every other mode (palette, 1-bit, gray + alpha, CMYK, YCbCr, 32-bit, ...) first
_ARRAY_MODES = ("L", "I;16", "I;16L", "I;16B", "RGB", "RGBA")


def to_model_image(array: np.ndarray, format: str = "BGR", name: str = "image") -> np.ndarray:
    """An image array -> (H, W, 3) uint8 in ``format`` ("RGB" or "BGR").

    ``array`` is (H, W) or (H, W, 1) grayscale, (H, W, 3) RGB or (H, W, 4) RGBA (RGB channel
    order, as PIL gives them; alpha is dropped), uint8 or uint16 (scaled to 0-255). Anything else
    raises a ValueError naming ``name`` (e.g. the file) and the problem.
    """
    if format not in IMAGE_FORMATS:
        raise ValueError(f"{name}: format must be one of {IMAGE_FORMATS}, got {format!r}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(
            f"{name}: unsupported image shape {tuple(array.shape)}; an image must be (H, W) or "
            "(H, W, 1) grayscale, (H, W, 3) RGB or (H, W, 4) RGBA"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name}: the image is empty ({array.shape[1]} x {array.shape[0]} pixels)")
    if array.dtype.kind == "u" and array.dtype.itemsize == 2:  # 16 bits, either byte order
        array = np.round(array.astype(np.float32) * (255 / 65535)).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ValueError(
            f"{name}: unsupported pixel type {array.dtype}; convert it to uint8 (0-255) or uint16"
        )
    rgb = np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array[:, :, :3]
    return np.ascontiguousarray(rgb if format == "RGB" else rgb[:, :, ::-1])


def read_image_file(path: str, format: str = "BGR") -> np.ndarray:
    """Any image file PIL reads -> (H, W, 3) uint8 in ``format`` ("RGB" or "BGR"), with its EXIF
    orientation applied and alpha dropped (as detectron2's ``read_image``), 16-bit grayscale
    scaled to 0-255 (``read_image`` clips it). A missing, unreadable or corrupt file raises a
    ValueError naming it."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode not in _ARRAY_MODES:
                image = image.convert("RGBA" if image.has_transparency_data else "RGB")
            array = np.asarray(image)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image file {path!r}: {e}") from e
    return to_model_image(array, format, name=path)
