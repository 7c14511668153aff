"""tools/demo.py: images, folders, globs and videos drawn with a model's predictions, small ones
enlarged to --min-draw-size (hila_d2.utils.drawing)."""

import os
import re
import runpy
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, Instances
from PIL import Image
from project_config import REPO, load_config, load_script

from hila_d2.data.images import read_image_file
from hila_d2.utils.drawing import enlarge_image

demo = load_script("tools/demo.py")

SEMANTIC = "configs/builtin/semantic-segmentation/segformer_mit_b0.yaml"
INSTANCE = "configs/builtin/instance-segmentation/mask_rcnn_mit_b0.yaml"
PANOPTIC = "configs/builtin/panoptic-segmentation/panoptic_fpn_mit_b0.yaml"
HEIGHT, WIDTH = 64, 96
SCALE = 8  # the 64x96 test images are drawn at 512x768 (--min-draw-size 512)
DRAWN = (HEIGHT * SCALE, WIDTH * SCALE)


def nearest_enlarged(labels):
    """(H, W) array -> (8H, 8W), each pixel repeated 8 x 8: nearest neighbour at SCALE 8."""
    return np.repeat(np.repeat(labels, SCALE, axis=0), SCALE, axis=1)


def run(config, *args):
    demo.main(["--config-file", str(REPO / config), *map(str, args)])


def noise(seed, channels):
    shape = (HEIGHT, WIDTH) if channels == 1 else (HEIGHT, WIDTH, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture
def folder(tmp_path):
    """A folder with a colour, a grayscale and an RGBA PNG (64x96) and a text file."""
    path = tmp_path / "images"
    path.mkdir()
    for name, channels in (("color", 3), ("gray", 1), ("rgba", 4)):
        Image.fromarray(noise(channels, channels)).save(path / f"{name}.png")
    (path / "notes.txt").write_text("not an image")
    return path


def assert_drawn_over(drawing_path, image_path):
    """The drawing is the 64x96 image enlarged to 512x768 and differs from the enlarged image
    (something was drawn: with nothing drawn the two are equal, see
    test_confidence_threshold_filters_instances)."""
    drawing = read_image_file(str(drawing_path), "RGB").astype(int)
    image = read_image_file(str(image_path), "RGB")
    assert image.shape == (HEIGHT, WIDTH, 3)
    assert drawing.shape == (*DRAWN, 3)
    assert np.abs(drawing - enlarge_image(image, DRAWN)).mean() > 2


def test_folder_of_color_grayscale_and_rgba_images(folder, tmp_path, capsys):
    run(SEMANTIC, "--input", folder, "--output", tmp_path / "out")
    names = sorted(os.listdir(tmp_path / "out"))
    assert names == ["color.png", "gray.png", "rgba.png"]  # one PNG per image, notes.txt skipped
    for name in names:
        assert_drawn_over(tmp_path / "out" / name, folder / name)
    err = capsys.readouterr().err
    assert "MODEL.WEIGHTS is empty" in err
    assert re.search(r"3/3 \[", err)  # tqdm's bar over the 3 images


def test_glob_and_file_inputs_in_order(folder, tmp_path, capsys):
    run(SEMANTIC, "--input", folder / "r*.png", folder / "color.png", "--output", tmp_path / "o")
    assert sorted(os.listdir(tmp_path / "o")) == ["color.png", "rgba.png"]
    assert "wrote 2 drawing(s), e.g. " + str(tmp_path / "o" / "rgba.png") in capsys.readouterr().out


@pytest.mark.parametrize("config", [INSTANCE, PANOPTIC], ids=["instance", "panoptic"])
def test_random_init_detection_models_draw_one_image(folder, tmp_path, config):
    output = tmp_path / "vis.png"
    run(config, "--input", folder / "color.png", "--output", output, "--confidence-threshold", 0)
    assert_drawn_over(output, folder / "color.png")


def test_confidence_threshold_filters_instances(folder, tmp_path):
    output = tmp_path / "vis.png"
    run(INSTANCE, "--input", folder / "color.png", "--output", output, "--confidence-threshold", 1)
    image = read_image_file(str(folder / "color.png"), "RGB")
    np.testing.assert_array_equal(  # no instance scores 1: nothing is drawn over the enlargement
        read_image_file(str(output), "RGB"), enlarge_image(image, DRAWN)
    )


class FixedPredictor:
    """Stands in for DefaultPredictor: records the images it gets, answers ``OUTPUTS`` (built
    for 64x96 images)."""

    OUTPUTS = {}
    IMAGES = []

    def __init__(self, cfg):
        assert not cfg.MODEL.WEIGHTS  # demo.py loads them itself, with ValidatingCheckpointer
        self.model = torch.nn.Module()

    def __call__(self, image):
        self.IMAGES.append(image)
        return self.OUTPUTS


MASK = np.zeros((HEIGHT, WIDTH), bool)
MASK[5:40, 5:60] = True
COLOR = np.array([40, 90, 200])  # RGB of the input image, every pixel


def fixed_outputs():
    """sem_seg: class 2 everywhere; panoptic_seg: stuff class 1 everywhere; instances: one
    instance whose mask is ``MASK``."""
    sem_seg = torch.zeros(7, HEIGHT, WIDTH)
    sem_seg[2] = 1
    instances = Instances(
        (HEIGHT, WIDTH),
        pred_boxes=Boxes(torch.tensor([[5.0, 5.0, 60.0, 40.0]])),
        scores=torch.tensor([0.9]),
        pred_classes=torch.tensor([0]),
        pred_masks=torch.as_tensor(MASK)[None],
    )
    segments = [{"id": 1, "isthing": False, "category_id": 1}]
    panoptic = (torch.ones(HEIGHT, WIDTH, dtype=torch.int32), segments)
    return {"sem_seg": sem_seg, "instances": instances, "panoptic_seg": panoptic}


def stuff_color(config, label):
    metadata = MetadataCatalog.get(load_config(config).DATASETS.TEST[0])
    return np.array(metadata.stuff_colors[label])


@pytest.mark.parametrize(
    "config, keys",
    [
        (SEMANTIC, ["sem_seg"]),
        (INSTANCE, ["sem_seg", "instances"]),
        (PANOPTIC, ["sem_seg", "instances", "panoptic_seg"]),
    ],
    ids=["semantic", "instance", "panoptic"],
)
def test_drawing_follows_the_model_outputs(tmp_path, monkeypatch, config, keys):
    outputs = fixed_outputs()
    monkeypatch.setattr(FixedPredictor, "OUTPUTS", {k: outputs[k] for k in keys})
    monkeypatch.setattr(FixedPredictor, "IMAGES", [])
    monkeypatch.setattr(demo, "DefaultPredictor", FixedPredictor)
    Image.fromarray(np.full((HEIGHT, WIDTH, 3), COLOR, np.uint8)).save(tmp_path / "in.png")
    run(config, "--input", tmp_path / "in.png", "--output", tmp_path / "vis.png")
    [image] = FixedPredictor.IMAGES  # DefaultPredictor takes BGR
    np.testing.assert_array_equal(image, np.full((HEIGHT, WIDTH, 3), COLOR[::-1]))
    drawing = read_image_file(str(tmp_path / "vis.png"), "RGB").astype(float)
    typical = np.median(drawing.reshape(-1, 3), axis=0)  # the fill colour, not edges or text
    if keys == ["sem_seg"]:  # every pixel: class 2's colour of DATASETS.TEST[0], alpha 0.8
        expected = 0.8 * stuff_color(config, 2) + 0.2 * COLOR
        np.testing.assert_allclose(typical, expected, atol=2)
    elif "panoptic_seg" in keys:  # the panoptic stuff segment is drawn (alpha 0.5), not sem_seg
        expected = 0.5 * stuff_color(config, 1) + 0.5 * COLOR
        np.testing.assert_allclose(typical, expected, atol=2)
    else:  # the instance mask is drawn (enlarged), not sem_seg: far from it nothing changes
        changed = np.abs(drawing - COLOR).max(axis=2) > 0
        assert changed[nearest_enlarged(MASK)].mean() > 0.9
        assert not changed[48 * SCALE :, 70 * SCALE :].any()


class SizedPredictor(FixedPredictor):
    """Stands in for DefaultPredictor: records the images it gets, answers sem_seg class 2
    everywhere at each image's size."""

    def __call__(self, image):
        self.IMAGES.append(image)
        sem_seg = torch.zeros(7, *image.shape[:2])
        sem_seg[2] = 1
        return {"sem_seg": sem_seg}


@pytest.mark.parametrize(
    "flag, drawn",
    [
        ([], {"big": (600, 800), "square": (512, 512), "wide": (512, 1536)}),
        (["--min-draw-size", 0], {"big": (600, 800), "square": (128, 128), "wide": (100, 300)}),
    ],
    ids=["default", "min-draw-size-0"],
)
def test_small_images_are_drawn_enlarged_and_big_ones_at_their_size(
    tmp_path, monkeypatch, flag, drawn
):
    """By default 128x128 is drawn at 512x512 and 100x300 at 512x1536 (aspect kept), 600x800 at
    its own size; with --min-draw-size 0 every drawing has its image's size. Either way the
    model gets the images themselves."""
    monkeypatch.setattr(SizedPredictor, "IMAGES", [])
    monkeypatch.setattr(demo, "DefaultPredictor", SizedPredictor)
    sizes = {"big": (600, 800), "square": (128, 128), "wide": (100, 300)}
    for name, size in sizes.items():
        Image.fromarray(np.full((*size, 3), COLOR, np.uint8)).save(tmp_path / f"{name}.png")
    inputs = [tmp_path / f"{name}.png" for name in sizes]
    run(SEMANTIC, "--input", *inputs, "--output", tmp_path / "out", *flag)
    assert [image.shape for image in SizedPredictor.IMAGES] == [(*s, 3) for s in sizes.values()]
    for name in sizes:
        drawing = read_image_file(str(tmp_path / "out" / f"{name}.png"), "RGB").astype(float)
        assert drawing.shape == (*drawn[name], 3), name
        expected = 0.8 * stuff_color(SEMANTIC, 2) + 0.2 * COLOR  # class 2's fill, alpha 0.8
        np.testing.assert_allclose(np.median(drawing.reshape(-1, 3), axis=0), expected, atol=2)


@pytest.mark.parametrize(
    "config, key, alpha",
    [(SEMANTIC, "sem_seg", 0.8), (PANOPTIC, "panoptic_seg", 0.5)],
    ids=["semantic", "panoptic"],
)
def test_enlarged_segments_are_the_nearest_enlarged_prediction(
    tmp_path, monkeypatch, config, key, alpha
):
    """A class-3 block (rows 16:48, cols 24:72 of the 64x96 prediction) in class 1 is drawn
    as the block enlarged 8 times (rows 128:384, cols 192:576 of 512x768): each drawn pixel
    has the fill colour of its segment in the nearest-enlarged prediction, but for the labels'
    text and the segments' outlines."""
    labels = np.full((HEIGHT, WIDTH), 1)
    labels[16:48, 24:72] = 3
    if key == "sem_seg":
        scores = torch.nn.functional.one_hot(torch.as_tensor(labels), 7).permute(2, 0, 1)
        outputs = {"sem_seg": scores.float()}
    else:  # segment ids 1 and 2: stuff classes 1 and 3
        segments = [{"id": i, "isthing": False, "category_id": c} for i, c in ((1, 1), (2, 3))]
        ids = torch.as_tensor(np.where(labels == 3, 2, 1), dtype=torch.int32)
        outputs = {"panoptic_seg": (ids, segments)}
    monkeypatch.setattr(FixedPredictor, "OUTPUTS", outputs)
    monkeypatch.setattr(FixedPredictor, "IMAGES", [])
    monkeypatch.setattr(demo, "DefaultPredictor", FixedPredictor)
    Image.fromarray(np.full((HEIGHT, WIDTH, 3), COLOR, np.uint8)).save(tmp_path / "in.png")
    run(config, "--input", tmp_path / "in.png", "--output", tmp_path / "vis.png")
    drawing = read_image_file(str(tmp_path / "vis.png"), "RGB").astype(float)
    assert drawing.shape == (*DRAWN, 3)
    fill = {label: alpha * stuff_color(config, label) + (1 - alpha) * COLOR for label in (1, 3)}
    block = nearest_enlarged(labels == 3)[..., None]
    matches = np.abs(drawing - np.where(block, fill[3], fill[1])).max(axis=2) <= 2
    assert matches.mean() > 0.97
    # 4 drawn pixels either side of the block's edges, on a row and a column away from the text
    near_edges = {
        1: [(150, 188), (150, 580), (124, 300), (388, 300)],  # (y, x) outside the block
        3: [(150, 196), (150, 572), (132, 300), (380, 300)],  # inside
    }
    for label, pixels in near_edges.items():
        for y, x in pixels:
            np.testing.assert_allclose(drawing[y, x], fill[label], atol=2, err_msg=f"{y}, {x}")


def test_negative_min_draw_size_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(SEMANTIC, "--input", "a.png", "--output", tmp_path, "--min-draw-size", -1)
    assert "--min-draw-size: -1 is negative: give 0 (draw at the input size)" in (
        capsys.readouterr().err
    )


def write_clip(path, frames):
    """An MJPG .avi at 5 fps of the (H, W, 3) uint8 BGR ``frames``."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (WIDTH, HEIGHT))
    for frame in frames:
        writer.write(frame)
    writer.release()


def read_clip(path):
    """The (H, W, 3) uint8 BGR frames of a video file and its frame rate."""
    video = cv2.VideoCapture(str(path))
    frames = []
    ok, frame = video.read()
    while ok:
        frames.append(frame)
        ok, frame = video.read()
    fps = video.get(cv2.CAP_PROP_FPS)
    video.release()
    return frames, fps


def test_video_becomes_an_mp4_of_drawn_frames(tmp_path, capsys):
    write_clip(tmp_path / "clip.avi", [noise(seed, 3) for seed in range(3)])
    run(SEMANTIC, "--video-input", tmp_path / "clip.avi", "--output", tmp_path / "out")
    frames, fps = read_clip(tmp_path / "out" / "clip.mp4")
    assert fps == 5
    assert [f.shape for f in frames] == [(*DRAWN, 3)] * 3  # each frame enlarged
    assert np.abs(frames[0].astype(int) - enlarge_image(noise(0, 3), DRAWN)).mean() > 10
    assert re.search(r"3/3 \[", capsys.readouterr().err)  # tqdm's bar over the 3 frames


def test_video_frames_are_drawn_in_the_right_colours(tmp_path, monkeypatch):
    monkeypatch.setattr(FixedPredictor, "OUTPUTS", {"sem_seg": fixed_outputs()["sem_seg"]})
    monkeypatch.setattr(FixedPredictor, "IMAGES", [])
    monkeypatch.setattr(demo, "DefaultPredictor", FixedPredictor)
    bgr = np.full((HEIGHT, WIDTH, 3), COLOR[::-1], np.uint8)
    write_clip(tmp_path / "clip.avi", [bgr] * 3)
    run(SEMANTIC, "--video-input", tmp_path / "clip.avi", "--output", tmp_path / "drawn.mp4")
    assert len(FixedPredictor.IMAGES) == 3  # DefaultPredictor takes BGR frames
    np.testing.assert_allclose(np.median(FixedPredictor.IMAGES[0], axis=(0, 1)), bgr[0, 0], atol=3)
    frames, _ = read_clip(tmp_path / "drawn.mp4")
    assert len(frames) == 3
    expected_rgb = 0.8 * stuff_color(SEMANTIC, 2) + 0.2 * COLOR
    np.testing.assert_allclose(np.median(frames[2], axis=(0, 1)), expected_rgb[::-1], atol=4)


@pytest.mark.parametrize(
    "args, problem",
    [
        (["--input", "missing.png"], "--input 'missing.png': no such file"),
        (["--input", "empty"], "--input 'empty': no image files in this folder"),
        (["--input", "images/*.jpeg"], "--input 'images/*.jpeg': no file matches this pattern"),
        (
            ["--input", "images/color.png", "images/gray.png", "--output", "vis.png"],
            "--output 'vis.png' is one file but there are 2 images: give a folder",
        ),
        (
            ["--input", "images/color.png", "copy/color.png"],
            "several inputs would be drawn to out/color.png",
        ),
        (["--video-input", "missing.avi"], "--video-input 'missing.avi': no such file"),
    ],
)
def test_bad_inputs_fail_before_the_model_is_built(folder, tmp_path, monkeypatch, args, problem):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "color.png").write_bytes((folder / "color.png").read_bytes())
    monkeypatch.setattr(demo, "DefaultPredictor", None)  # building it would fail
    if "--output" not in args:
        args += ["--output", "out"]
    with pytest.raises(ValueError, match=re.escape(problem)):
        run(SEMANTIC, *args)


def test_corrupt_image_names_the_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match=re.escape(f"cannot read image file '{tmp_path}/broken")):
        run(SEMANTIC, "--input", tmp_path / "broken.png", "--output", tmp_path / "out")


def test_command_line_errors_exit_with_the_message(tmp_path, monkeypatch):
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "demo.py",
            "--config-file",
            str(REPO / SEMANTIC),
            "--input",
            str(tmp_path / "no.png"),
            "--output",
            "out",
        ],
    )
    with pytest.raises(SystemExit, match=re.escape(f"error: --input '{tmp_path}/no.png': no such")):
        runpy.run_path(str(REPO / "tools/demo.py"), run_name="__main__")


@pytest.mark.slow
def test_command_line_from_another_directory(folder):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools/demo.py"),
            "--config-file",
            str(REPO / SEMANTIC),
            "--input",
            "gray.png",
            "--output",
            "vis/gray_drawn.png",
            "MODEL.DEVICE",
            "cpu",
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert_drawn_over(folder / "vis" / "gray_drawn.png", folder / "gray.png")
