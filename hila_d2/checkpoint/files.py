"""Checkpoint files as users get them -> ``ConversionResult``: the readers of each file kind,
the ``config.json`` that the hub stores beside transformers and timm weights, the report
that ``tools/convert_pretrained.py`` prints and ``ValidatingCheckpointer`` logs, and the
detectron2 checkpoint dict that both make of a conversion (``checkpoint_data``).

Readers, by path: a directory holding ``config.json`` and ``model.safetensors`` or
``pytorch_model.bin`` (a hub snapshot, ``save_pretrained``'s output); ``*.safetensors``
(safetensors); ``*.pkl`` (pickle; numpy arrays become tensors); anything else (``.pth``,
``.bin``, ``.pt``) through ``torch.load(weights_only=True)``. A ``config.json`` beside a weights
file is read too, and is checked against the weights of the transformers and timm formats.
"""

import json
import os
import pickle
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch

from ..modeling.backbone.mit import MIT_NUM_HEADS, MIT_SR_RATIOS, MIT_VARIANTS
from .convert import convert_checkpoint, detect_format
from .core import ConversionResult, Format, state_dict_of
from .swin import swin_window_size

__all__ = [
    "CLASS_NAMES",
    "HUB_WEIGHTS",
    "SourceFile",
    "checkpoint_data",
    "convert_file",
    "convert_source",
    "read_checkpoint",
    "report_lines",
]

HUB_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # in a hub directory, first found wins
CONFIG_JSON = "config.json"
# top-level entry of a checkpoint beside "model": the class names of its semantic classifier
# (list of str, one per row of sem_seg_head.predictor), detectron2's metadata name for them
CLASS_NAMES = "stuff_classes"


@dataclass
class SourceFile:
    """A read checkpoint: ``obj`` (what the file holds, tensors), ``path`` (the weights file
    read), ``config`` (the parsed ``config.json`` beside it, or None) and ``config_path``."""

    obj: Any
    path: str
    config: Optional[Dict[str, Any]] = None
    config_path: Optional[str] = None


def as_tensors(obj: Any) -> Any:
    """``obj`` with the numpy arrays of it and of its dict values (one level of wrapping)
    turned into tensors."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj)
    if isinstance(obj, Mapping):
        return {
            k: (
                {kk: as_tensors(vv) for kk, vv in v.items()}
                if isinstance(v, Mapping)
                else as_tensors(v) if isinstance(v, np.ndarray) else v
            )
            for k, v in obj.items()
        }
    return obj


def _kind(path: str) -> str:
    if path.endswith(".safetensors"):
        return "safetensors file"
    if path.endswith(".pkl"):
        return "pickle checkpoint"
    return "torch checkpoint"


def _read_weights(path: str) -> Any:
    """What the weights file ``path`` holds; ValueError naming the file and its kind."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        if path.endswith(".pkl"):
            with open(path, "rb") as f:
                return as_tensors(pickle.load(f, encoding="latin1"))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # safetensors, torch, zipfile and pickle each raise their own
        raise ValueError(
            f"cannot read {path!r} as a {_kind(path)}: {type(error).__name__}: {error}"
            + (
                " (the file is truncated, e.g. an interrupted download, or is not a safetensors "
                "file)"
                if path.endswith(".safetensors")
                else ""
            )
        ) from error


def read_checkpoint(path: str) -> SourceFile:
    """Read ``path`` (a weights file or a hub directory, see the module doc) and the
    ``config.json`` beside it; ValueError naming the file for anything unreadable."""
    path = os.fspath(path)
    if os.path.isdir(path):
        config_path = os.path.join(path, CONFIG_JSON)
        weights = [os.path.join(path, name) for name in HUB_WEIGHTS]
        found = [w for w in weights if os.path.isfile(w)]
        if not found or not os.path.isfile(config_path):
            raise ValueError(
                f"cannot read the directory {path!r}: a model directory holds {CONFIG_JSON} and "
                f"one of {', '.join(HUB_WEIGHTS)}; found {sorted(os.listdir(path))[:10]}"
            )
        weights_path = found[0]
    else:
        weights_path = path
        config_path = os.path.join(os.path.dirname(os.path.abspath(path)), CONFIG_JSON)
    obj = _read_weights(weights_path)
    config = None
    if os.path.isfile(config_path):
        try:
            with open(config_path) as f:
                config = json.load(f)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read {config_path!r} as JSON: {error}") from error
    return SourceFile(obj, weights_path, config, config_path if config is not None else None)


# ------------------------------------------------------------------ config.json against weights


def _check_hf_segformer_config(
    result: ConversionResult, config: Mapping[str, Any], where: str
) -> Optional[List[str]]:
    """ValueError where the transformers ``config`` disagrees with ``result``; the class names
    (``id2label``) of a segmentation head, else None."""
    variant = result.variant
    depths = result.config.get("MODEL.MIT.DEPTHS", list(MIT_VARIANTS[variant]["depths"]))
    expected = {
        "model_type": "segformer",
        "hidden_sizes": list(MIT_VARIANTS[variant]["embed_dims"]),
        "depths": list(depths),
        "num_attention_heads": list(MIT_NUM_HEADS),
        "sr_ratios": list(MIT_SR_RATIOS),
        "mlp_ratios": [4, 4, 4, 4],
    }
    labels = None
    if "MODEL.SEM_SEG_HEAD.NUM_CLASSES" in result.config:
        expected["decoder_hidden_size"] = result.config["MODEL.SEM_SEG_HEAD.EMBED_DIM"]
        id2label = config.get("id2label")
        if id2label:
            labels = [id2label[k] for k in sorted(id2label, key=int)]
            expected["len(id2label)"] = result.config["MODEL.SEM_SEG_HEAD.NUM_CLASSES"]
    found = {**config, "len(id2label)": len(labels) if labels is not None else None}
    wrong = [
        f"{key} {found.get(key)!r} (the weights: {value!r})"
        for key, value in expected.items()
        if (key in found or key == "model_type") and found.get(key) != value
    ]
    if wrong:
        raise ValueError(
            f"{where} disagrees with the weights beside it ({result.source_format}, MiT-"
            f"{variant}): {'; '.join(wrong)}"
        )
    return labels


_TIMM_SWIN_NAME = re.compile(r"swin_(tiny|small|base|large)_patch4_window(\d+)_(\d+)")


def _check_timm_config(
    result: ConversionResult, config: Mapping[str, Any], where: str, file_window: Optional[int]
) -> None:
    """ValueError where timm's ``config`` (``architecture``) disagrees with ``result``."""
    architecture = config.get("architecture", "")
    family = "swin_" if result.source_format == "timm_swin" else "pvt_v2_"
    problems = []
    if not architecture.startswith(family):
        problems.append(f"architecture {architecture!r}, the weights are {family}*")
    match = _TIMM_SWIN_NAME.match(architecture) if family == "swin_" else None
    if match:
        variant = match[1][0].upper()
        if variant != result.variant:
            problems.append(
                f"architecture {architecture!r} is Swin-{variant}, the weights "
                f"Swin-{result.variant}"
            )
        if file_window is not None and int(match[2]) != file_window:
            problems.append(
                f"architecture {architecture!r} has window {match[2]}, the weights' "
                f"relative position tables window {file_window}"
            )
    if problems:
        raise ValueError(f"{where} disagrees with the weights beside it: {'; '.join(problems)}")


def convert_source(
    source: SourceFile,
    window_size: Optional[int] = None,
    source_format: Optional[Format] = None,
) -> ConversionResult:
    """``convert_checkpoint`` of a read file, checked against its ``config.json`` (transformers
    and timm formats); ValueError messages name the file. ``source_format``: the file's
    ``detect_format``, detected here unless the caller passes it."""
    try:
        if source_format is None:
            source_format = detect_format(source.obj)
        result = convert_checkpoint(source.obj, window_size, source_format)
        if source.config is not None:
            where = f"{source.config_path!r}"
            if source_format.name.startswith("hf_"):
                result.labels = _check_hf_segformer_config(result, source.config, where)
            elif source_format.name.startswith("timm_"):
                file_window = swin_window_size(state_dict_of(source.obj))
                _check_timm_config(result, source.config, where, file_window)
    except ValueError as error:
        raise ValueError(f"{source.path!r}: {error}") from None
    return result


def convert_file(path: str, window_size: Optional[int] = None) -> ConversionResult:
    """``read_checkpoint`` + ``convert_source``."""
    return convert_source(read_checkpoint(path), window_size)


def checkpoint_data(
    result: ConversionResult, model: Mapping[str, Any], author: str
) -> Dict[str, Any]:
    """The detectron2 checkpoint of a conversion: ``{"model": model, "__author__": author,
    "matching_heuristics": False}`` (``model``: name -> tensor or array, ``result.model`` possibly
    renamed), plus ``CLASS_NAMES: result.labels`` where the source names its classes."""
    data = {"model": model, "__author__": author, "matching_heuristics": False}
    if result.labels is not None:
        data[CLASS_NAMES] = list(result.labels)
    return data


# ------------------------------------------------------------------ the report

# the MODEL.HILA keys that shape no weight, so no checkpoint tells them
HILA_NOTE = (
    "note: MODEL.HILA.STRIDES, NUM_HEADS and PARITY_MODE leave no trace in the weights; the paper "
    'configs use STRIDES [1,1,1,1] (HILA "B2": [1,1,3,1], Swin: [1,1,2,1]), NUM_HEADS 1 and, '
    "for official checkpoints, PARITY_MODE True"
)


def config_value(value) -> str:
    """A config value as one command-line token that detectron2 parses back (lists without
    spaces; strings bare)."""
    return value if isinstance(value, str) else repr(value).replace(" ", "")


def _keys(title: str, keys, note: str = "") -> List[str]:
    return [f"{title} ({len(keys)}){note}" + (":" if keys else "")] + [f"  {k}" for k in keys]


def report_lines(result: ConversionResult) -> List[str]:
    """The conversion report: format, variant, tensors, dropped and missing keys, config keys,
    class names where the source names them."""
    lines = [
        f"source format: {result.source_format}",
        f"variant: {result.variant}",
        f"converted tensors: {len(result.model)}",
        *_keys("dropped source keys", result.dropped),
    ]
    head_only = bool(result.missing) and all(k.startswith("sem_seg_head.") for k in result.missing)
    note = (
        " [the decode head: not in this checkpoint, it keeps its initialisation]"
        if head_only
        else ""
    )
    lines += _keys("missing model keys", result.missing, note)
    lines += _keys(
        "config",
        [f"{key} {config_value(value)}" for key, value in result.config.items()],
        " [KEY VALUE: set these in the YAML or append them to the train_net.py command line]",
    )
    if result.labels is not None:
        shown = ", ".join(result.labels[:10]) + (", ..." if len(result.labels) > 10 else "")
        lines.append(f"class names ({len(result.labels)}, config.json id2label): {shown}")
    if "MODEL.HILA.STAGES" in result.config:
        lines.append(HILA_NOTE)
    return lines
