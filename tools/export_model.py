#!/usr/bin/env python
"""Export a semantic segmentor (any hila_d2 encoder, plain or with HILA) to TorchScript or ONNX
for one fixed input size (hila_d2.export), then check the written file against the model:

    python tools/export_model.py --config-file CONFIG --format torchscript --output model.ts \\
        --height 512 --width 512 MODEL.WEIGHTS model.pkl MODEL.DEVICE cpu
    python tools/export_model.py --config-file CONFIG --format onnx --output model.onnx \\
        --height 512 --width 512 MODEL.WEIGHTS model.pkl MODEL.DEVICE cpu

The model is traced on a random ``--height x --width`` image (0-255, seed 0). The file takes one
image (C, H, W) float32, 0-255 in the config's INPUT.FORMAT, of exactly that size, and returns the
``sem_seg`` logits (K, H, W). The TorchScript file is reloaded and the ONNX file run with
onnxruntime on the sample, and the largest absolute difference to the model's own logits printed.
"""

import argparse
import os
import sys

import torch
from detectron2.modeling import build_model

import hila_d2
from hila_d2.checkpoint.loading import ValidatingCheckpointer
from hila_d2.export import (
    ONNX_OPSET,
    eager_sem_seg,
    export_onnx,
    export_torchscript,
    run_onnx,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, help="a semantic segmentation config")
    parser.add_argument("--format", required=True, choices=("torchscript", "onnx"))
    parser.add_argument("--output", required=True, help="the file to write (folders created)")
    parser.add_argument(
        "--height", type=int, required=True, help="input height the exported model accepts"
    )
    parser.add_argument(
        "--width", type=int, required=True, help="input width the exported model accepts"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs")
    args = parser.parse_args(argv)
    if args.height < 1 or args.width < 1:
        parser.error(f"--height and --width must be positive, got {args.height} {args.width}")
    return args


def setup_config(args: argparse.Namespace):
    cfg = hila_d2.load_config(args.config_file, args.opts)
    hila_d2.validate_config(cfg)
    return cfg


def main(argv=None) -> float:
    """Export as the arguments say; returns the max abs difference it printed."""
    args = parse_args(argv)
    cfg = setup_config(args)
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        ValidatingCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        print(
            "warning: MODEL.WEIGHTS is empty, exporting a randomly initialised model",
            file=sys.stderr,
        )
    channels = model.pixel_mean.numel()
    generator = torch.Generator().manual_seed(0)
    image = 255 * torch.rand(channels, args.height, args.width, generator=generator)
    expected = eager_sem_seg(model, image)

    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    if args.format == "torchscript":
        torch.jit.save(export_torchscript(model, image), args.output)
        with torch.no_grad():
            actual = torch.jit.load(args.output)(image)
        written = "TorchScript"
    else:
        export_onnx(model, image, args.output)
        actual = run_onnx(args.output, image)
        written = f"ONNX (opset {ONNX_OPSET})"
    difference = (actual.to(expected.device) - expected).abs().max().item()
    print(
        f"wrote {args.output}: {written}, image ({channels}, {args.height}, {args.width}) float32 "
        f"0-255 {cfg.INPUT.FORMAT} -> sem_seg logits {tuple(expected.shape)}; valid for "
        f"{args.height}x{args.width} inputs only"
    )
    print(f"max abs difference to the model on the sample image: {difference:.3g}")
    return difference


if __name__ == "__main__":
    try:
        main()
    except (TypeError, ValueError) as e:
        sys.exit(f"error: {e}")
