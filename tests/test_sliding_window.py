"""Sliding-window inference: tiling, averaging, equivalence with whole-image inference."""
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import sem_seg_postprocess
from project_config import load_config

from hila_d2.modeling.meta_arch.sliding_window import sliding_window_boxes


def test_tiling_matches_segformer_example():
    # a 1024x2048 Cityscapes image with 1024 windows every 768 px: the last window is shifted back
    boxes = sliding_window_boxes(1024, 2048, (1024, 1024), (768, 768))
    assert boxes == [(0, 0, 1024, 1024), (0, 768, 1024, 1792), (0, 1024, 1024, 2048)]


@pytest.mark.parametrize("size", [(50, 70), (64, 64), (130, 97), (20, 200)])
def test_tiling_covers_the_image_with_in_bounds_windows(size):
    height, width = size
    boxes = sliding_window_boxes(height, width, (64, 48), (40, 32))
    covered = torch.zeros(height, width, dtype=torch.bool)
    for y0, x0, y1, x1 in boxes:
        assert 0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width
        assert y1 - y0 == min(64, height) and x1 - x0 == min(48, width)
        covered[y0:y1, x0:x1] = True
    assert covered.all()


def build(crop, stride, meta="SlidingWindowSemanticSegmentor"):
    cfg = load_config("configs/cityscapes/semantic-segmentation/segformer_mit_b0_bs8_160k.yaml")
    cfg.MODEL.META_ARCHITECTURE = meta
    cfg.TEST.SLIDING_WINDOW.CROP_SIZE = crop
    cfg.TEST.SLIDING_WINDOW.STRIDE = stride
    cfg.TEST.SLIDING_WINDOW.WINDOWS_PER_BATCH = 2
    torch.manual_seed(0)
    return build_model(cfg).eval()


def test_one_window_covering_the_image_equals_whole_image_inference():
    sliding = build((128, 128), (96, 96))
    whole = build((128, 128), (96, 96), meta="SemanticSegmentor")
    whole.load_state_dict(sliding.state_dict())
    inputs = [{"image": torch.rand(3, 96, 128) * 255, "height": 48, "width": 64}]
    with torch.no_grad():
        torch.testing.assert_close(sliding(inputs)[0]["sem_seg"], whole(inputs)[0]["sem_seg"])


def test_overlapping_windows_are_averaged():
    model = build((64, 64), (40, 40))
    image = torch.rand(3, 80, 100) * 255
    with torch.no_grad():
        result = model([{"image": image}])[0]["sem_seg"]
        normalised = (image - model.pixel_mean) / model.pixel_std
        total = torch.zeros(19, 80, 100)
        count = torch.zeros(1, 80, 100)
        for y0, x0, y1, x1 in sliding_window_boxes(80, 100, (64, 64), (40, 40)):
            crop = normalised[None, :, y0:y1, x0:x1]
            logits, _ = model.sem_seg_head(model.backbone(crop), None)
            total[:, y0:y1, x0:x1] += logits[0]
            count[:, y0:y1, x0:x1] += 1
        expected = sem_seg_postprocess(total / count, (80, 100), 80, 100)
    assert count.max() > 1  # the windows really overlap
    torch.testing.assert_close(result, expected, atol=1e-5, rtol=1e-5)


def test_stride_larger_than_window_names_the_key():
    with pytest.raises(ValueError, match=r"TEST\.SLIDING_WINDOW\.STRIDE"):
        build((64, 64), (80, 40))
