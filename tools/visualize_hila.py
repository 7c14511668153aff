#!/usr/bin/env python
"""Visualise HILA's hierarchical Top-Down assignment (docs/design/hila.md §10): what one top-level
token owns on every lower stage, blended over the image:

    python tools/visualize_hila.py --config-file CONFIG --input IMAGE --output DIR \\
        --location X Y MODEL.WEIGHTS model.pkl
    python tools/visualize_hila.py --config-file CONFIG --input IMAGE --output DIR \\
        --pixel X Y MODEL.WEIGHTS model.pkl MODEL.DEVICE cpu

The image is resized as detectron2's DefaultPredictor does (INPUT.MIN_SIZE_TEST /
MAX_SIZE_TEST), normalised and padded as the model's SemanticSegmentor does, and run through the
backbone once, whole (no sliding window). One PNG per lower stage of the chain of HILA pairs,
``hila_stage{s}_from_stage{T}_x{X}_y{Y}.png`` for the stage-T token at column X, row Y, is
written over the resized image, with that token's 4x4 child patch outlined in blue; a resized
image whose shorter side is under --min-draw-size (default 512) is drawn enlarged to it
(``hila_d2.utils.drawing``: the image by cubic interpolation, the map by nearest neighbour).
"""

import argparse
import os
import sys

import cv2
import numpy as np
import torch
from detectron2.data import detection_utils
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import ImageList

import hila_d2
from hila_d2.checkpoint.loading import ValidatingCheckpointer
from hila_d2.utils.drawing import add_min_draw_size_argument
from hila_d2.utils.hila_attention_maps import (
    chain_down,
    compute_assignments,
    owner_of_pixel,
    patch_footprint,
    render_map,
    stage_stride,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, help="a HILA model config (YAML)")
    parser.add_argument("--input", required=True, help="the image file")
    parser.add_argument("--output", required=True, help="folder for the PNGs (created)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--location",
        nargs=2,
        type=int,
        metavar=("X", "Y"),
        help="column and row of the token on the chain's top stage (e.g. stage 4 for S234)",
    )
    where.add_argument(
        "--pixel",
        nargs=2,
        type=int,
        metavar=("X", "Y"),
        help="a pixel of the input image (its own resolution): show the top-stage token "
        "that owns it, traced up the chain of Top-Down assignments",
    )
    add_min_draw_size_argument(parser)
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs"
    )
    return parser.parse_args(argv)


def setup_config(args: argparse.Namespace):
    cfg = hila_d2.load_config(args.config_file, args.opts)
    hila_d2.validate_config(cfg)
    return cfg


def load_model(cfg) -> torch.nn.Module:
    """The config's model in eval mode with MODEL.WEIGHTS loaded (warns when there are none)."""
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        ValidatingCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        print(
            "warning: MODEL.WEIGHTS is empty, the model is randomly initialised: "
            "the maps show untrained attention",
            file=sys.stderr,
        )
    return model


def network_input(model: torch.nn.Module, image: np.ndarray) -> torch.Tensor:
    """(H, W, C) image in INPUT.FORMAT -> (1, C, H', W') normalised and padded as detectron2's
    SemanticSegmentor does (H' and W' round H and W up to the backbone's size divisibility)."""
    tensor = torch.as_tensor(image.astype("float32").transpose(2, 0, 1)).to(model.device)
    return ImageList.from_tensors(
        [(tensor - model.pixel_mean) / model.pixel_std],
        model.backbone.size_divisibility,
        padding_constraints=model.backbone.padding_constraints,
    ).tensor


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = setup_config(args)
    original = detection_utils.read_image(args.input, format=cfg.INPUT.FORMAT)
    if args.pixel and not (
        0 <= args.pixel[0] < original.shape[1] and 0 <= args.pixel[1] < original.shape[0]
    ):
        raise ValueError(
            f"--pixel {args.pixel[0]} {args.pixel[1]} lies outside the {original.shape[1]} x "
            f"{original.shape[0]} image {args.input}"
        )
    resize = T.ResizeShortestEdge(
        [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
    ).get_transform(original)
    image = resize.apply_image(original)  # (H, W, C) in INPUT.FORMAT

    model = load_model(cfg)
    assignments = compute_assignments(model.backbone, network_input(model, image))
    top = assignments.chain()[0]
    if args.pixel:
        x, y = args.pixel
        centre = resize.apply_coords(np.array([[x + 0.5, y + 0.5]], dtype=np.float64))[0]
        row, col = owner_of_pixel((int(centre[0]), int(centre[1])), assignments)
        print(f"pixel x={x} y={y} is owned by the stage-{top} token x={col} y={row}")
    else:
        col, row = args.location
        rows, cols = assignments.grids[top]
        if not (0 <= col < cols and 0 <= row < rows):
            height, width = assignments.input_size
            raise ValueError(
                f"--location {col} {row} lies outside the stage-{top} token grid of {cols} x "
                f"{rows} (X < {cols}, Y < {rows}) of the {width} x {height} network input"
            )

    shown = detection_utils.convert_image_to_rgb(image, cfg.INPUT.FORMAT)
    shown = np.ascontiguousarray(shown[:, :, ::-1]).astype(np.uint8)  # BGR for OpenCV
    footprint = patch_footprint((row, col), top)
    os.makedirs(args.output, exist_ok=True)
    for stage, level_map in chain_down((row, col), assignments):
        path = os.path.join(args.output, f"hila_stage{stage}_from_stage{top}_x{col}_y{row}.png")
        drawing = render_map(shown, level_map, stage_stride(stage), footprint, args.min_draw_size)
        cv2.imwrite(path, drawing)
        print(path)


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:
        sys.exit(f"error: {e}")
