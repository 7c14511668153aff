#!/usr/bin/env python
"""Convert an official checkpoint (see ``hila_d2.checkpoint.convert.SUPPORTED_FORMATS``) into a
detectron2 checkpoint of a hila_d2 model, for ``MODEL.WEIGHTS``:

    python tools/convert_pretrained.py mit_b0.pth output/mit_b0.pkl

DST ending in ``.pkl`` gets detectron2's model-zoo layout (numpy arrays, no name-matching
heuristics); ``.pth`` gets ``{"model": tensors}``. Exits non-zero on unreadable or unknown files.
"""

import argparse
import os
import pickle
import sys

# the repository's hila_d2, whatever the working directory (detectron2 installs a "tools" package)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from hila_d2.checkpoint.convert import ConversionResult, convert_checkpoint  # noqa: E402


def _print_keys(title: str, keys, note: str = "") -> None:
    print(f"{title} ({len(keys)}){note}" + (":" if keys else ""))
    for key in keys:
        print(f"  {key}")


def write_checkpoint(result: ConversionResult, dst: str) -> None:
    """Write ``result.model`` to ``dst`` (.pkl: detectron2 model-zoo dict; .pth: torch.save)."""
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    if dst.endswith(".pkl"):
        data = {
            "model": {name: tensor.numpy() for name, tensor in result.model.items()},
            "__author__": f"hila_d2 convert_pretrained ({result.source_format})",
            "matching_heuristics": False,
        }
        with open(dst, "wb") as f:
            pickle.dump(data, f)
    else:
        torch.save({"model": result.model}, dst)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="official checkpoint (.pth), e.g. mit_b0.pth")
    parser.add_argument("dst", help="output detectron2 checkpoint, ending in .pkl or .pth")
    args = parser.parse_args(argv)
    if not args.dst.endswith((".pkl", ".pth")):
        parser.error(f"DST must end in .pkl or .pth, got {args.dst!r}")

    try:
        checkpoint = torch.load(args.src, map_location="cpu", weights_only=True)
    except Exception as e:  # missing, truncated or not a torch file: all mean "cannot read"
        sys.exit(f"error: cannot read {args.src!r} as a torch checkpoint: {type(e).__name__}: {e}")
    try:
        result = convert_checkpoint(checkpoint)
    except ValueError as e:
        sys.exit(f"error: cannot convert {args.src!r}: {e}")

    print(f"source format: {result.source_format}")
    print(f"variant: {result.variant}")
    print(f"converted tensors: {len(result.model)}")
    _print_keys("dropped source keys", result.dropped)
    head_only = bool(result.missing) and all(k.startswith("sem_seg_head.") for k in result.missing)
    note = (
        " [the decode head: not in this checkpoint, it keeps its initialisation]"
        if head_only
        else ""
    )
    _print_keys("missing model keys", result.missing, note)
    write_checkpoint(result, args.dst)
    print(f"wrote {args.dst}")


if __name__ == "__main__":
    main()
