"""Training augmentations and mappers: the SegFormer semantic recipe and the DETR-style crop
policy of the Swin 3x detection recipe."""
import numpy as np
import pytest
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from project_config import load_config

from hila_d2.data.augmentations import PhotometricDistortion, RandomResizeByRatio
from hila_d2.data.mappers import build_semantic_train_augmentations, build_train_mapper


def test_resize_fits_the_scaled_base_size_keeping_aspect_ratio():
    image = np.zeros((100, 200, 3), np.uint8)
    transform = RandomResizeByRatio((2048, 512), (1.0, 1.0)).get_transform(image)
    # min(2048 / 200, 512 / 100) = 5.12
    assert (transform.new_h, transform.new_w) == (512, 1024)
    np.random.seed(0)
    for _ in range(50):
        t = RandomResizeByRatio((2048, 512), (0.5, 2.0)).get_transform(image)
        scale = t.new_h / 100
        assert 0.5 * 5.12 - 0.01 <= scale <= 2.0 * 5.12 + 0.01
        assert t.new_w == pytest.approx(2 * t.new_h, abs=1)


def test_resize_rejects_a_bad_ratio_range():
    with pytest.raises(ValueError, match="RESIZE_RATIO_RANGE"):
        RandomResizeByRatio((2048, 512), (2.0, 0.5))


def test_photometric_distortion_changes_colours_only():
    rng = np.random.RandomState(0)
    image = rng.randint(0, 256, (32, 48, 3)).astype(np.uint8)
    seg = rng.randint(0, 7, (32, 48)).astype(np.uint8)
    np.random.seed(1)
    changed = 0
    for _ in range(40):
        aug_input = T.AugInput(image.copy(), sem_seg=seg.copy())
        T.AugmentationList([PhotometricDistortion()])(aug_input)
        assert aug_input.image.shape == image.shape and aug_input.image.dtype == np.uint8
        np.testing.assert_array_equal(aug_input.sem_seg, seg)
        changed += not np.array_equal(aug_input.image, image)
    # each of the 4 steps is skipped with probability 1/2: about 1 in 16 draws leave the image as is
    assert 30 <= changed < 40


def test_photometric_hue_shift_rotates_hue():
    """A pure red image with only the hue step (delta 18 in OpenCV's 0-180 hue) becomes orange
    or magenta; brightness/contrast/saturation steps cannot change hue."""
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    aug = PhotometricDistortion(brightness_delta=0, contrast_range=(1, 1), saturation_range=(1, 1), hue_delta=18)
    np.random.seed(0)
    hues = set()
    for _ in range(30):
        out = aug.get_transform(red).apply_image(red.copy())
        hues.add(tuple(out[0, 0]))
    assert (255, 0, 0) in hues and len(hues) > 3  # unchanged when the step is skipped, shifted otherwise
    assert all(pixel[0] == 255 or pixel[2] == 255 for pixel in hues)  # still a saturated red-ish hue


def segformer_cfg():
    return load_config("configs/ade20k/semantic-segmentation/segformer_mit_b0_bs16_160k.yaml")


def test_ade20k_recipe_order():
    augs = build_semantic_train_augmentations(segformer_cfg())
    assert [type(a).__name__ for a in augs] == [
        "RandomResizeByRatio", "RandomCrop_CategoryAreaConstraint", "RandomFlip", "PhotometricDistortion",
    ]
    assert augs[0].ratio_range == (0.5, 2.0) and (augs[0].long_base, augs[0].short_base) == (2048, 512)
    assert tuple(augs[1].crop_size) == (512, 512) and augs[1].single_category_max_area == 0.75


def test_mapper_output_on_the_builtin_dataset():
    cfg = segformer_cfg()
    cfg.INPUT.RESIZE_BASE_SIZE = (512, 128)
    cfg.INPUT.CROP.SIZE = (96, 96)
    mapper = build_train_mapper(cfg)
    record = DatasetCatalog.get("hila_shapes_val_sem_seg")[0]
    np.random.seed(0)
    for _ in range(5):
        out = mapper(dict(record))
        image, sem_seg = out["image"], out["sem_seg"]
        assert image.shape[0] == 3 and image.shape[1:] == sem_seg.shape
        assert max(sem_seg.shape) <= 96
        assert set(sem_seg.unique().tolist()) <= set(range(7))


def test_unknown_mapper_names_the_key():
    cfg = segformer_cfg()
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"
    with pytest.raises(ValueError, match="INPUT.DATASET_MAPPER_NAME"):
        build_train_mapper(cfg)


def detr_crop_mapper(prob: float):
    cfg = load_config(
        "configs/builtin/instance-segmentation/mask_rcnn_mit_b0.yaml",
        "INPUT.DATASET_MAPPER_NAME", "detr_crop",
        "INPUT.DETR_CROP.PROB", str(prob),
        "INPUT.DETR_CROP.MIN_SIZES", "(100,)",
        "INPUT.CROP.ENABLED", "True",
        "INPUT.CROP.TYPE", "absolute_range",
        "INPUT.CROP.SIZE", "(48, 64)",
        "INPUT.MIN_SIZE_TRAIN", "(160,)",
    )
    return build_train_mapper(cfg)


def tight_boxes(masks):
    """(N, H, W) bool -> (N, 4) XYXY boxes enclosing each mask's pixels."""
    boxes = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return np.array(boxes, dtype=np.float32)


def test_detr_crop_policy_crops_then_resizes_and_recomputes_boxes():
    record = DatasetCatalog.get("hila_shapes_val")[0]  # 128x128, 2-6 shapes
    np.random.seed(0)
    without_crop = detr_crop_mapper(0.0)(dict(record))
    assert tuple(without_crop["image"].shape) == (3, 160, 160)  # shortest edge 128 -> 160
    assert len(without_crop["instances"]) == len(record["annotations"])

    mapper = detr_crop_mapper(1.0)
    sizes = set()
    for _ in range(8):
        out = mapper(dict(record))
        _, h, w = out["image"].shape
        sizes.add((h, w))
        # resized to 100, cropped to 48..64 per side, then the shorter side resized to 160
        assert min(h, w) == 160 and 160 <= max(h, w) <= 160 * 64 / 48 + 1
        masks = out["instances"].gt_masks.tensor.numpy()
        assert masks.shape[1:] == (h, w)
        kept = masks.reshape(len(masks), -1).any(1)
        np.testing.assert_allclose(
            out["instances"].gt_boxes.tensor.numpy()[kept], tight_boxes(masks[kept]), atol=1e-4
        )
    assert len(sizes) > 1  # the crop size is drawn at random
