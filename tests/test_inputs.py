"""Input robustness: image files of any channel layout become (H, W, 3) model images or fail with
a ValueError naming the file; 32 px and extreme aspect ratios run through the semantic models;
tensors with the wrong channels fail with a message naming the expected shape."""

import re

import cv2
import numpy as np
import pytest
import torch
from detectron2.engine import DefaultPredictor
from PIL import Image
from project_config import load_config

from hila_d2.data.images import read_image_file, to_model_image

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)
GRAY = RGB[:, :, 0]
ALPHA = RNG.integers(0, 256, (6, 8), dtype=np.uint8)


def write(path, image):
    """Save the uint8 array ``image`` (gray, gray + alpha, RGB or RGBA) with PIL; its path."""
    Image.fromarray(image).save(path)
    return str(path)


@pytest.mark.parametrize(
    "name, image, expected_rgb",
    [
        ("gray.png", GRAY, np.stack([GRAY] * 3, axis=-1)),
        ("gray_alpha.png", np.stack([GRAY, ALPHA], axis=-1), np.stack([GRAY] * 3, axis=-1)),
        ("rgb.png", RGB, RGB),
        ("rgba.png", np.dstack([RGB, ALPHA]), RGB),
        ("rgb.jpg", np.full((6, 8, 3), (200, 40, 90), dtype=np.uint8), None),
    ],
)
def test_image_files_become_three_channel_images(tmp_path, name, image, expected_rgb):
    path = write(tmp_path / name, image)
    rgb = read_image_file(path, format="RGB")
    bgr = read_image_file(path, format="BGR")
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(bgr, rgb[:, :, ::-1])
    if expected_rgb is None:  # JPEG is lossy
        np.testing.assert_allclose(rgb.reshape(-1, 3).mean(0), (200, 40, 90), atol=3)
    else:
        np.testing.assert_array_equal(rgb, expected_rgb)


def test_palette_and_16_bit_files(tmp_path):
    palette = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    palette.save(tmp_path / "palette.png")
    expected = np.asarray(palette.convert("RGB"))
    np.testing.assert_array_equal(read_image_file(str(tmp_path / "palette.png"), "RGB"), expected)

    deep = (GRAY.astype(np.uint16) * 257)[:, :, None]  # 16-bit, k * 257 is k on 8 bits
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")
    rgb = read_image_file(str(tmp_path / "deep.png"), "RGB")
    np.testing.assert_array_equal(rgb, np.stack([GRAY] * 3, axis=-1))


@pytest.mark.parametrize(
    "array, problem",
    [
        (np.zeros((6, 8, 2), np.uint8), r"unsupported image shape \(6, 8, 2\)"),
        (np.zeros((6, 8, 5), np.uint8), r"unsupported image shape \(6, 8, 5\)"),
        (np.zeros((2, 6, 8, 3), np.uint8), r"unsupported image shape \(2, 6, 8, 3\)"),
        (np.zeros((0, 8, 3), np.uint8), "the image is empty"),
        (np.zeros((6, 8, 3), np.float32), "unsupported pixel type float32"),
    ],
)
def test_unsupported_arrays_name_the_image_and_the_problem(array, problem):
    with pytest.raises(ValueError, match=f"^frame 7: {problem}"):
        to_model_image(array, "BGR", name="frame 7")


def test_unreadable_files_name_the_file(tmp_path):
    (tmp_path / "text.png").write_bytes(b"this is not an image")
    good = tmp_path / "good.png"
    write(good, RGB)
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:60])
    for name in ("text.png", "truncated.png", "missing.png"):
        path = str(tmp_path / name)
        with pytest.raises(ValueError, match=re.escape(f"cannot read image file '{path}'")):
            read_image_file(path)


# (config, overrides): the built-in semantic models, sliding-window inference, and Swin-T + UperNet
# (head narrowed to 64 channels for CPU time; the encoder is unchanged)
SEMANTIC_MODELS = {
    "segformer": ("configs/builtin/semantic-segmentation/segformer_mit_b0.yaml", ()),
    "hila": ("configs/builtin/semantic-segmentation/hila_mit_b0_s3.yaml", ()),
    "hatnet_fpn": ("configs/builtin/semantic-segmentation/semantic_fpn_hatnet_t.yaml", ()),
    "hmsa": ("configs/builtin/semantic-segmentation/hmsa_segformer_mit_b0.yaml", ()),
    "sliding_window": (
        "configs/builtin/semantic-segmentation/segformer_mit_b0.yaml",
        (
            "MODEL.META_ARCHITECTURE",
            "SlidingWindowSemanticSegmentor",
            "TEST.SLIDING_WINDOW.CROP_SIZE",
            "(64, 64)",
            "TEST.SLIDING_WINDOW.STRIDE",
            "(48, 48)",
            "TEST.SLIDING_WINDOW.WINDOWS_PER_BATCH",
            "16",
        ),
    ),
    "swin_upernet": (
        "configs/ade20k/semantic-segmentation/swin/upernet_swin_t_160k.yaml",
        ("MODEL.SEM_SEG_HEAD.UPERNET.CHANNELS", "64"),
    ),
}


@pytest.fixture(scope="module")
def predictors():
    """Model name -> DefaultPredictor (random init) that feeds images at their own size
    (INPUT.MIN_SIZE_TEST 0: no resize), built on first use."""
    cache = {}

    def get(name):
        if name not in cache:
            config, opts = SEMANTIC_MODELS[name]
            torch.manual_seed(0)
            cache[name] = DefaultPredictor(load_config(config, "INPUT.MIN_SIZE_TEST", "0", *opts))
        return cache[name]

    return get


@pytest.mark.parametrize("size", [(32, 32), (64, 2048), (2048, 64)], ids=lambda s: "%dx%d" % s)
@pytest.mark.parametrize("model", sorted(SEMANTIC_MODELS))
def test_small_and_elongated_images_run_at_their_size(tmp_path, predictors, model, size):
    predictor = predictors(model)
    path = write(tmp_path / "image.png", RNG.integers(0, 256, (*size, 3), dtype=np.uint8))
    with torch.no_grad():
        logits = predictor(read_image_file(path, predictor.input_format))["sem_seg"]
    assert logits.shape == (predictor.cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, *size)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("channels", [1, 2, 4])
@pytest.mark.parametrize("model", ["hmsa", "sliding_window"])
def test_meta_architectures_name_the_expected_shape(predictors, model, channels):
    # detectron2's normalisation alone would broadcast 1 channel silently and fail on 2 or 4
    with pytest.raises(ValueError, match=rf"has shape \({channels}, 32, 32\).*\(3, H, W\)"):
        predictors(model).model([{"image": torch.zeros(channels, 32, 32)}])


@pytest.mark.parametrize("model", ["segformer", "hatnet_fpn", "swin_upernet"])
def test_backbones_name_the_expected_shape(predictors, model):
    with pytest.raises(ValueError, match=r"expects images of shape \(B, 3, H, W\), got \(1, 2"):
        predictors(model).model.backbone(torch.zeros(1, 2, 32, 32))


def test_mit_names_its_minimum_input_size():
    """MiT's stage-1 spatial reduction (an 8x8 stride-8 conv on the H/4 x W/4 grid) needs 29
    pixels a side: 28 is a ValueError naming the minimum, 29 runs."""
    from hila_d2.modeling.backbone.mit import MixVisionTransformer

    mit = MixVisionTransformer(variant="B0").eval()
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"MiT needs images of at least 29x29 pixels.*got 28x64"):
            mit(torch.zeros(1, 3, 28, 64))
        outputs = mit(torch.zeros(1, 3, 29, 64))
    assert outputs["res2"].shape[-2:] == (8, 16)
