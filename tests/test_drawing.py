"""hila_d2.utils.drawing: the size small images are drawn at, and their enlargement (cubic for
the photo, nearest neighbour for label maps and masks)."""
import argparse

import numpy as np
import pytest
import torch

from hila_d2.utils.drawing import (
    MIN_DRAW_SIZE,
    add_min_draw_size_argument,
    drawing_size,
    enlarge_image,
    enlarge_labels,
)


@pytest.mark.parametrize(
    "size, min_size, drawn",
    [
        ((128, 128), 512, (512, 512)),
        ((100, 300), 512, (512, 1536)),  # aspect kept
        ((300, 100), 512, (1536, 512)),
        ((128, 171), 512, (512, 684)),
        ((97, 65), 512, (764, 512)),  # rounded to whole pixels
        ((600, 800), 512, (600, 800)),  # big enough: its own size
        ((512, 2000), 512, (512, 2000)),
        ((100, 300), 0, (100, 300)),  # 0: always its own size
    ],
)
def test_drawing_size(size, min_size, drawn):
    assert drawing_size(size, min_size) == drawn


def test_drawing_size_refuses_a_negative_minimum():
    with pytest.raises(ValueError, match="min_size is -1: give 0"):
        drawing_size((10, 10), -1)


def test_flag_defaults_to_the_constant_and_refuses_negative_values(capsys):
    parser = argparse.ArgumentParser()
    add_min_draw_size_argument(parser)
    assert parser.parse_args([]).min_draw_size == MIN_DRAW_SIZE == 512
    assert parser.parse_args(["--min-draw-size", "0"]).min_draw_size == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["--min-draw-size", "-3"])
    assert "-3 is negative: give 0 (draw at the input size)" in capsys.readouterr().err


def test_enlarge_labels_repeats_each_pixel_for_a_whole_factor():
    torch.manual_seed(0)
    labels = torch.randint(0, 9, (2, 5, 7), dtype=torch.int32)
    enlarged = enlarge_labels(labels, (20, 28))
    assert enlarged.dtype == torch.int32
    expected = labels.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)
    torch.testing.assert_close(enlarged, expected, rtol=0, atol=0)
    masks = labels > 4
    torch.testing.assert_close(enlarge_labels(masks, (20, 28)), expected > 4, rtol=0, atol=0)


def test_enlarge_labels_takes_the_pixel_under_each_centre_for_any_factor():
    """100 rows -> 512 (factor 5.12): rows keep their order, each source row is repeated 5 or
    6 times, and drawn row y shows the source row under its centre, (y + 0.5) / 5.12."""
    labels = torch.arange(100 * 3).view(100, 3)
    rows = enlarge_labels(labels, (512, 3))[:, 0] // 3
    runs = torch.bincount(rows)
    assert len(runs) == 100 and set(runs.tolist()) == {5, 6}
    for y in (0, 5, 6, 255, 256, 511):
        assert int(rows[y]) == int((y + 0.5) / 5.12)


def test_enlarge_keeps_inputs_of_the_drawing_size():
    image = np.zeros((6, 8, 3), np.uint8)
    labels = torch.zeros(6, 8)
    assert enlarge_image(image, (6, 8)) is image
    assert enlarge_labels(labels, (6, 8)) is labels


def test_enlarge_image_is_cubic():
    """A constant image stays constant; a ramp is interpolated (not repeated as by nearest)."""
    constant = np.full((4, 5, 3), 77, np.uint8)
    np.testing.assert_array_equal(enlarge_image(constant, (16, 20)), np.full((16, 20, 3), 77))
    ramp = np.repeat(np.arange(0, 250, 50, dtype=np.uint8)[None, :, None], 4, axis=0)
    row = enlarge_image(ramp, (16, 20))[8, :, 0].astype(int)
    assert len(np.unique(row)) > 5  # nearest neighbour would give the 5 input values only
    assert (np.diff(row[2:-2]) >= 0).all()  # and it keeps rising
