#!/usr/bin/env python
"""Run a hila_d2 model on images or a video and draw its predictions over them:

    python tools/demo.py --config-file CONFIG --input a.jpg b.png --output vis/ MODEL.WEIGHTS m.pkl
    python tools/demo.py --config-file CONFIG --input photos/ --output vis/ MODEL.DEVICE cpu
    python tools/demo.py --config-file CONFIG --input 'photos/*.jpg' --output vis/
    python tools/demo.py --config-file CONFIG --input a.jpg --output a_vis.png
    python tools/demo.py --config-file CONFIG --video-input clip.avi --output vis/

Images are read whatever their channels (grayscale, 16-bit, palette, RGBA:
``hila_d2.data.images.read_image_file``) and run as detectron2's ``DefaultPredictor`` runs them:
MODEL.WEIGHTS loaded by ``hila_d2.checkpoint.loading.ValidatingCheckpointer``, resized by
INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST, predictions at the input's size. The drawing is the panoptic
segmentation if the model outputs one (Panoptic FPN), else the instances (Mask R-CNN), else the
semantic segmentation, with the class names and colours of DATASETS.TEST[0]; where that dataset
has no ``stuff_classes``, or DATASETS.TEST is empty, with the class names the weights carry (a hub
model directory's config.json ``id2label``, or a file converted from one:
``ValidatingCheckpointer.class_names``).
Each image gives ``OUTPUT/<name>.png`` (or the --output file ending in .png, for one image); a
video gives ``OUTPUT/<name>.mp4`` (or the --output file ending in .mp4): every frame drawn, at
the video's frame rate, with instance colours kept from frame to frame. A drawing has the image's
(frame's) size, but an image whose shorter side is under --min-draw-size (default 512) is drawn
enlarged to it so that the labels can be read (``hila_d2.utils.drawing``): the model runs on the
image itself and its masks are enlarged by nearest neighbour, its boxes scaled.
"""

import argparse
import glob
import os
import sys
from collections import Counter
from typing import List, Optional

import cv2
import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.engine import DefaultPredictor
from detectron2.structures import Instances
from detectron2.utils.video_visualizer import VideoVisualizer
from PIL import Image
from tqdm import tqdm

import hila_d2
from hila_d2.checkpoint.loading import ValidatingCheckpointer
from hila_d2.data.images import read_image_file
from hila_d2.data.metadata import set_class_names
from hila_d2.utils.drawing import (
    add_min_draw_size_argument,
    drawing_size,
    enlarge_image,
    enlarge_labels,
)

# every file extension PIL reads (".png", ".jpg", ".tif", ...): the images taken from a folder
IMAGE_EXTENSIONS = frozenset(Image.registered_extensions())


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, help="a model config (YAML)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input",
        nargs="+",
        help="image files, folders (their image files) or quoted glob patterns ('dir/*.jpg'); "
        "put KEY VALUE overrides after --output, or they are taken for inputs",
    )
    source.add_argument("--video-input", help="a video file (anything OpenCV reads)")
    parser.add_argument(
        "--output",
        required=True,
        help="folder for the drawings (created); or, for one image, a file ending in .png; for "
        "a video, a file ending in .mp4",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="lowest score of the instances drawn (instance and panoptic models)",
    )
    add_min_draw_size_argument(parser)
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs, last"
    )
    return parser.parse_args(argv)


def setup_config(args: argparse.Namespace):
    """The frozen config: hila_d2's keys, the file, the confidence threshold, then ``opts``."""
    thresholds = [
        key_value
        for key in (
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
            "MODEL.RETINANET.SCORE_THRESH_TEST",
            "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH",
        )
        for key_value in (key, str(args.confidence_threshold))
    ]
    cfg = hila_d2.load_config(args.config_file, [*thresholds, *args.opts])
    hila_d2.validate_config(cfg)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but CUDA is not available: append "
            "MODEL.DEVICE cpu to the command"
        )
    return cfg


def drawing_metadata(cfg, class_names: Optional[List[str]]) -> Metadata:
    """The class names and colours drawn: DATASETS.TEST[0]'s metadata, given the weights'
    ``class_names`` (str per class, or None) where it has none (``set_class_names``); with
    DATASETS.TEST empty, ``class_names`` alone (the visualizer picks the colours). ValueError
    where neither names the classes."""
    if cfg.DATASETS.TEST:
        if class_names is not None:
            set_class_names(cfg.DATASETS.TEST[0], class_names, cfg.MODEL.WEIGHTS)
        return MetadataCatalog.get(cfg.DATASETS.TEST[0])
    if class_names is None:
        raise ValueError(
            "DATASETS.TEST is empty and MODEL.WEIGHTS names no classes: set it to a dataset "
            "whose metadata names the classes, e.g. DATASETS.TEST \"('ade20k_sem_seg_val',)\""
        )
    return Metadata(stuff_classes=class_names)


def _without_weights(cfg):
    """``cfg`` with MODEL.WEIGHTS empty: DefaultPredictor then builds the model without loading,
    which ValidatingCheckpointer does with its checks."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = ""
    cfg.freeze()
    return cfg


def _extension(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def image_paths(inputs: List[str]) -> List[str]:
    """``--input`` items (files, folders, glob patterns) -> image files, in the given order,
    each folder's and pattern's sorted; ValueError for an item that gives none."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            names = sorted(os.listdir(item))
            found = [os.path.join(item, n) for n in names if _extension(n) in IMAGE_EXTENSIONS]
            problem = "no image files in this folder"
        elif any(c in item for c in "*?["):
            found = sorted(p for p in glob.glob(item) if os.path.isfile(p))
            problem = "no file matches this pattern"
        else:
            found = [item] if os.path.isfile(item) else []
            problem = "no such file"
        if not found:
            raise ValueError(f"--input {item!r}: {problem}")
        paths += found
    return paths


def image_outputs(paths: List[str], output: str) -> List[str]:
    """The drawing's file for each image: ``output`` itself if it ends in .png (one image only),
    else ``output/<image name>.png``; ValueError if two images would share a file."""
    if _extension(output) == ".png":
        if len(paths) != 1:
            raise ValueError(
                f"--output {output!r} is one file but there are {len(paths)} images: give a folder"
            )
        return [output]
    names = [os.path.splitext(os.path.basename(p))[0] + ".png" for p in paths]
    shared = sorted(name for name, count in Counter(names).items() if count > 1)
    if shared:
        raise ValueError(
            f"several inputs would be drawn to {os.path.join(output, shared[0])}: rename them or "
            "run them separately"
        )
    return [os.path.join(output, name) for name in names]


def enlarge_instances(instances: Instances, size) -> Instances:
    """Instances predicted on an (H, W) image -> the same instances on an (H', W') = ``size``
    enlargement of it: ``pred_boxes`` scaled, ``pred_masks`` (N, H, W) enlarged by nearest
    neighbour to (N, H', W'), the other fields (scores, classes) kept."""
    height, width = instances.image_size
    if (height, width) == tuple(size):
        return instances
    enlarged = Instances(tuple(size), **instances.get_fields())
    if instances.has("pred_boxes"):
        enlarged.pred_boxes = instances.pred_boxes.clone()
        enlarged.pred_boxes.scale(size[1] / width, size[0] / height)
    if instances.has("pred_masks"):
        enlarged.pred_masks = enlarge_labels(instances.pred_masks, size)
    return enlarged


def draw_predictions(
    visualizer: VideoVisualizer, image: np.ndarray, predictions: dict, min_draw_size: int
) -> np.ndarray:
    """RGB image (H, W, 3) uint8 and the model's outputs for it (at H x W) -> (H', W', 3) uint8
    RGB drawing of ``panoptic_seg`` if there is one, else of ``instances``, else of
    ``sem_seg``, where (H', W') = ``drawing_size((H, W), min_draw_size)``: the image enlarged by
    cubic interpolation, the predicted segments and masks by nearest neighbour, the boxes scaled.
    detectron2's ``VideoVisualizer`` draws each with ``Visualizer`` and keeps the colours of
    instances it saw in earlier frames."""
    size = drawing_size(image.shape[:2], min_draw_size)
    shown = enlarge_image(image, size)
    if "panoptic_seg" in predictions:
        panoptic, segments = predictions["panoptic_seg"]
        panoptic = enlarge_labels(panoptic.cpu(), size)
        drawn = visualizer.draw_panoptic_seg_predictions(shown, panoptic, segments)
    elif "instances" in predictions:
        instances = enlarge_instances(predictions["instances"].to("cpu"), size)
        drawn = visualizer.draw_instance_predictions(shown, instances)
    elif "sem_seg" in predictions:
        labels = enlarge_labels(predictions["sem_seg"].argmax(dim=0).cpu(), size)
        drawn = visualizer.draw_sem_seg(shown, labels)
    else:
        raise ValueError(
            f"the model outputs {sorted(predictions)}; the demo draws panoptic_seg, instances "
            "or sem_seg"
        )
    return drawn.get_image()


def run_images(
    predictor: DefaultPredictor,
    metadata,
    paths: List[str],
    outputs: List[str],
    min_draw_size: int,
) -> None:
    """Draw the predictions of every image in ``paths`` to its file in ``outputs`` (PNG),
    enlarged where the image's shorter side is under ``min_draw_size``."""
    os.makedirs(os.path.dirname(os.path.abspath(outputs[0])), exist_ok=True)  # one folder
    for path, output in zip(tqdm(paths, unit="image"), outputs):
        image = read_image_file(path, format="BGR")  # DefaultPredictor takes BGR
        # a fresh VideoVisualizer draws one image as detectron2's Visualizer does
        drawing = draw_predictions(
            VideoVisualizer(metadata), image[:, :, ::-1], predictor(image), min_draw_size
        )
        if not cv2.imwrite(output, np.ascontiguousarray(drawing[:, :, ::-1])):
            raise ValueError(f"--output: OpenCV cannot write {output!r}")


def video_output(path: str, output: str) -> str:
    """The mp4 file for the video ``path``: ``output`` if it ends in .mp4, else
    ``output/<video name>.mp4``."""
    if _extension(output) == ".mp4":
        return output
    return os.path.join(output, os.path.splitext(os.path.basename(path))[0] + ".mp4")


def run_video(
    predictor: DefaultPredictor, metadata, path: str, output: str, min_draw_size: int
) -> int:
    """Draw the predictions of every frame of the video ``path`` into the mp4 ``output``, at the
    frames' size enlarged where their shorter side is under ``min_draw_size``; returns the
    number of frames."""
    video = cv2.VideoCapture(path)
    if not video.isOpened():
        raise ValueError(f"--video-input {path!r}: OpenCV cannot read it as a video")
    frame_size = (
        int(video.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        int(video.get(cv2.CAP_PROP_FRAME_WIDTH)),
    )
    height, width = drawing_size(frame_size, min_draw_size)
    fps = video.get(cv2.CAP_PROP_FPS) or 30.0  # 0 when the file does not say
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    writer = cv2.VideoWriter(output, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    visualizer = VideoVisualizer(metadata)  # one for the whole video: instance colours persist
    frames = 0
    try:
        if not writer.isOpened():
            raise ValueError(f"--output {output!r}: OpenCV cannot write an mp4 video there")
        total = int(video.get(cv2.CAP_PROP_FRAME_COUNT)) or None  # None: unknown
        with tqdm(total=total, unit="frame") as progress:
            ok, frame = video.read()  # (H, W, 3) uint8 BGR
            while ok:
                drawing = draw_predictions(
                    visualizer, frame[:, :, ::-1], predictor(frame), min_draw_size
                )
                writer.write(np.ascontiguousarray(drawing[:, :, ::-1]))
                frames += 1
                progress.update()
                ok, frame = video.read()
    finally:
        video.release()
        writer.release()
    if not frames:
        raise ValueError(f"--video-input {path!r}: no frame could be read")
    return frames


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = setup_config(args)
    if args.video_input:
        if not os.path.isfile(args.video_input):
            raise ValueError(f"--video-input {args.video_input!r}: no such file")
        output = video_output(args.video_input, args.output)
    else:
        paths = image_paths(args.input)
        outputs = image_outputs(paths, args.output)
    if not cfg.MODEL.WEIGHTS:
        print(
            "warning: MODEL.WEIGHTS is empty, the model is randomly initialised: "
            "the drawings show untrained predictions",
            file=sys.stderr,
        )
    predictor = DefaultPredictor(_without_weights(cfg))
    checkpointer = ValidatingCheckpointer(predictor.model)
    checkpointer.load(cfg.MODEL.WEIGHTS)
    metadata = drawing_metadata(cfg, checkpointer.class_names)
    if args.video_input:
        frames = run_video(predictor, metadata, args.video_input, output, args.min_draw_size)
        print(f"wrote {output} ({frames} frames)")
    else:
        run_images(predictor, metadata, paths, outputs, args.min_draw_size)
        print(f"wrote {len(outputs)} drawing(s), e.g. {outputs[0]}")


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:
        sys.exit(f"error: {e}")
