#!/usr/bin/env python
"""Convert an official checkpoint (see ``hila_d2.checkpoint.convert.SUPPORTED_FORMATS``) into a
detectron2 checkpoint of a hila_d2 model, for ``MODEL.WEIGHTS``:

    python tools/convert_pretrained.py mit_b0.pth output/mit_b0.pkl
    python tools/convert_pretrained.py swin_base_patch4_window12_384.pth swin.pkl --window-size 12
    python tools/convert_pretrained.py B1_S234.pth output/hila_b1_s234.pkl
    python tools/convert_pretrained.py HAT-Net_Small.pth output/hatnet_s_fpn.pkl --fpn
    python tools/convert_pretrained.py segformer-b0-finetuned-ade-512-512/ output/segformer_b0.pkl
    python tools/convert_pretrained.py swin_tiny_patch4_window7_224/model.safetensors swin_t.pkl
    python tools/convert_pretrained.py hf://nvidia/segformer-b0-finetuned-ade-512-512 segformer.pkl
    python tools/convert_pretrained.py timm://swin_tiny_patch4_window7_224 swin_t.pkl

SRC may be any format of ``SUPPORTED_FORMATS`` in any file kind that ``hila_d2.checkpoint.files``
reads: ``.pth``/``.bin``/``.pkl``, ``.safetensors``, or a hub model directory (transformers'
``save_pretrained`` output, a downloaded snapshot); a ``config.json`` beside transformers or timm
weights is checked against them. SRC may also be a hub name (``hila_d2.checkpoint.hub``):
``hf://ORG/REPO`` (a model directory), ``hf://ORG/REPO/FILE``, either with ``@REVISION``, or
``timm://MODEL[.TAG]``, fetched into (or read from) the Hugging Face cache.

DST ending in ``.pkl`` gets detectron2's model-zoo layout (numpy arrays, no name-matching
heuristics); ``.pth`` gets the same dict with tensors. Where the source names its classes (a
transformers ``config.json``'s ``id2label``), both hold them as a top-level ``"stuff_classes"``
list beside ``"model"``, which ``ValidatingCheckpointer`` reads back (``class_names``).

``--fpn`` names the encoder weights as the ``bottom_up`` of an FPN backbone
(``build_*_fpn_backbone``: Mask R-CNN, Panoptic FPN, Semantic FPN) instead of a bare encoder
backbone (SegFormer, UperNet). It prints the config keys that build the model
the weights fit (``KEY VALUE`` lines for the YAML or the command line). Exits non-zero on
unreadable or unknown files.
"""

import argparse
import os
import pickle
import sys

import torch

from hila_d2.checkpoint.convert import ConversionResult
from hila_d2.checkpoint.files import (  # noqa: F401  (HILA_NOTE, config_value: API)
    HILA_NOTE,
    checkpoint_data,
    config_value,
    convert_source,
    read_checkpoint,
    report_lines,
)
from hila_d2.checkpoint.hub import hub_local_path, is_hub_name

BACKBONE = "backbone."
FPN_ENCODER = "backbone.bottom_up."  # detectron2's FPN holds the encoder as its bottom_up


def fpn_names(model: dict) -> dict:
    """``backbone.X`` -> ``backbone.bottom_up.X`` for an encoder-only ``model``; ValueError if it
    has weights outside the backbone (a trained segmentor's head, which no FPN model has)."""
    other = sorted(name for name in model if not name.startswith(BACKBONE))
    if other:
        raise ValueError(
            f"--fpn takes encoder-only (ImageNet) checkpoints, but this one also has "
            f"{len(other)} head weights, e.g. {other[0]!r}"
        )
    return {FPN_ENCODER + name[len(BACKBONE) :]: tensor for name, tensor in model.items()}


def write_checkpoint(result: ConversionResult, dst: str, fpn: bool = False) -> None:
    """Write ``checkpoint_data`` of ``result`` (its model under ``fpn_names`` if ``fpn``, its class
    names) to ``dst``: .pkl, detectron2's model-zoo layout of numpy arrays; .pth, torch.save."""
    model = fpn_names(result.model) if fpn else result.model
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    pkl = dst.endswith(".pkl")
    data = checkpoint_data(
        result,
        {name: tensor.numpy() for name, tensor in model.items()} if pkl else model,
        f"hila_d2 convert_pretrained ({result.source_format})",
    )
    if pkl:
        with open(dst, "wb") as f:
            pickle.dump(data, f)
    else:
        torch.save(data, dst)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "src",
        help="official checkpoint (.pth, .pkl), transformers or timm weights (.safetensors, "
        ".bin), a model directory (config.json + model.safetensors or pytorch_model.bin), or a "
        "hub name: hf://ORG/REPO[/FILE][@REVISION], timm://MODEL[.TAG]",
    )
    parser.add_argument("dst", help="output detectron2 checkpoint, ending in .pkl or .pth")
    parser.add_argument(
        "--window-size",
        type=int,
        help="Swin only: the model's MODEL.HILA_D2_SWIN.WINDOW_SIZE (default 7); relative position "
        "tables of another window are resized bicubically",
    )
    parser.add_argument(
        "--fpn",
        action="store_true",
        help="name the encoder weights for an FPN backbone (backbone.bottom_up.*), as the "
        "Mask R-CNN, Panoptic FPN and Semantic FPN configs build it",
    )
    args = parser.parse_args(argv)
    if not args.dst.endswith((".pkl", ".pth")):
        parser.error(f"DST must end in .pkl or .pth, got {args.dst!r}")

    src = args.src
    if is_hub_name(src):
        try:
            src = hub_local_path(src)
        except ValueError as e:  # malformed, unknown, or neither on the hub nor in the cache
            sys.exit(f"error: {e}")
        print(f"{args.src} resolved to {src}")
    try:
        source = read_checkpoint(src)
    except ValueError as e:  # missing, truncated or not a checkpoint: all mean "cannot read"
        sys.exit(f"error: {e}")
    try:
        result = convert_source(source, window_size=args.window_size)
    except ValueError as e:
        sys.exit(f"error: cannot convert {e}")
    print("\n".join(report_lines(result)))
    try:
        write_checkpoint(result, args.dst, fpn=args.fpn)
    except ValueError as e:
        sys.exit(f"error: cannot convert {args.src!r}: {e}")
    print(f"wrote {args.dst}")


if __name__ == "__main__":
    main()
