"""The machinery shared by every checkpoint converter (pure functions, no file I/O).

``FORMATS`` maps each source format to the key patterns that identify its state dict, the source
keys it drops and its converter; ``hila_d2.checkpoint.convert`` fills it in detection order.
A converter takes the state dict from ``source_state_dict``, renames its keys with
``rename_keys`` into the names of a detectron2 model (``backbone.…``, ``sem_seg_head.…``), reads
every size off the tensors, builds the expected model on the meta device and returns
``fitted_result``: a ``ConversionResult``, or a ValueError for any key or shape that does not fit.
"""
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = [
    "FORMATS",
    "PREDICTOR",
    "ConversionResult",
    "Format",
    "KeyReport",
    "Renames",
    "check_keys",
    "compile_renames",
    "detect_format",
    "fitted_result",
    "rename_by",
    "rename_keys",
    "source_state_dict",
    "state_shapes",
]

# (pattern, replacement) rules: re.sub replacements of the start of a key
Renames = Sequence[Tuple[re.Pattern, Any]]


def compile_renames(*rules: Tuple[str, Any]) -> Renames:
    """Compile (pattern, replacement) rules for ``rename_by``."""
    return tuple((re.compile(pattern), replacement) for pattern, replacement in rules)


def rename_by(rules: Renames, key: str) -> str:
    """``key`` with the start matched by the first matching rule replaced, or "" if none matches."""
    for pattern, replacement in rules:
        if pattern.match(key):
            return pattern.sub(replacement, key, count=1)
    return ""


PREDICTOR = "sem_seg_head.predictor.weight"  # the classifier of both decode heads


@dataclass
class ConversionResult:
    """A converted checkpoint.

    ``model``: hila_d2 name -> tensor; ``source_format``: a ``SUPPORTED_FORMATS`` name;
    ``variant``: the backbone variant (e.g. "B0", "T"); ``dropped``: source keys deliberately left
    out; ``missing``: keys of the hila_d2 model that the source does not provide (for an ImageNet
    MiT file, the whole ``sem_seg_head``; for an ImageNet Swin file, whose head is not fixed, only
    the backbone's ``norm{i}``), both sorted; ``config``: the config keys and values that build
    that model (e.g. ``{"MODEL.MIT.VARIANT": "B2", "MODEL.MIT.DEPTHS": [2, 2, 6, 2],
    "MODEL.HILA.STAGES": [2, 3, 4], ...}``), read off the tensors; ``labels``: the class names
    of the decode head where the source names them (a transformers ``config.json``'s
    ``id2label``), else None.
    """

    model: Dict[str, torch.Tensor]
    source_format: str
    variant: str
    dropped: List[str]
    missing: List[str]
    config: Dict[str, Any]
    labels: Optional[List[str]] = None


@dataclass
class KeyReport:
    """Sorted key lists: ``missing`` (expected, not produced), ``unexpected`` (produced, not
    expected) and ``mismatched`` (in both, with another shape than expected)."""

    missing: List[str]
    unexpected: List[str]
    mismatched: List[str]


class Format(NamedTuple):
    """How to recognise and convert one source format."""

    markers: Tuple[str, ...]  # patterns (fnmatch, * = anything), each matching some key
    dropped: str  # regular expression fully matching the source keys deliberately left out
    convert: Callable[..., ConversionResult]


# format -> how to recognise and convert it; keys are those of the state dict after unwrapping
# ``{"state_dict": ...}`` or ``{"model": ...}``. Filled by ``hila_d2.checkpoint.convert``; the
# first format whose markers all match wins, so each HILA format precedes the plain format its
# files also match.
FORMATS: Dict[str, Format] = {}


def _examples(items: Sequence[str], limit: int = 8) -> str:
    """The first ``limit`` items and how many more there are."""
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _quoted(keys) -> List[str]:
    return [repr(key) for key in keys]


def state_dict_of(obj: Any) -> Any:
    """The state dict of a loaded checkpoint: ``obj["state_dict"]`` (mmcv/mmseg) or
    ``obj["model"]`` (Microsoft's Swin) where that is a non-empty dict, else ``obj``."""
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), Mapping) and obj[wrapper]:
                return obj[wrapper]
    return obj


def _require_tensors(state_dict: Mapping[str, Any]) -> None:
    """ValueError naming the entries of ``state_dict`` that are not tensors."""
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(
            f"State-dict entries that are not tensors: {_examples(_quoted(not_tensors))}"
        )


def detect_format(obj: Any) -> str:
    """Name of the first ``SUPPORTED_FORMATS`` entry each of whose marker patterns (``*``: any
    characters) matches a key of ``obj`` (a loaded checkpoint or its state dict); ValueError
    naming some of its keys when no format matches."""
    state_dict = state_dict_of(obj)
    if isinstance(state_dict, Mapping):
        keys = [key for key in state_dict if isinstance(key, str)]
        for name, source in FORMATS.items():
            if all(any(fnmatchcase(key, marker) for key in keys) for marker in source.markers):
                return name
        found = f"a dict with {len(state_dict)} key(s): {_examples(_quoted(state_dict), 5)}"
    else:
        found = f"a {type(obj).__name__}, not a dict"
    supported = "; ".join(
        f"{name} (keys {_examples(_quoted(source.markers))})" for name, source in FORMATS.items()
    )
    raise ValueError(
        f"Unknown checkpoint layout: found {found}. Supported formats (* matches anything): "
        f"{supported}"
    )


def source_state_dict(
    checkpoint: Any, converter: Callable[..., ConversionResult]
) -> Tuple[str, Mapping[str, torch.Tensor]]:
    """(format, tensor state dict) of ``checkpoint``; ValueError unless ``converter`` handles it."""
    source_format = detect_format(checkpoint)
    if FORMATS[source_format].convert is not converter:
        handled = ", ".join(n for n, s in FORMATS.items() if s.convert is converter)
        raise ValueError(f"{converter.__name__} takes {handled} checkpoints, got {source_format}")
    state_dict = state_dict_of(checkpoint)
    _require_tensors(state_dict)
    return source_format, state_dict


def rename_keys(
    source_format: str, state_dict: Mapping[str, torch.Tensor], rename: Callable[[str], str]
) -> Tuple[Dict[str, torch.Tensor], Dict[str, str], List[str]]:
    """(hila_d2 name -> tensor, hila_d2 name -> source key, dropped source keys): every key that
    the format does not drop, under its ``rename``; ValueError for keys that ``rename`` places
    nowhere ("") and for two keys with one name."""
    dropped_keys = re.compile(FORMATS[source_format].dropped)
    model: Dict[str, torch.Tensor] = {}
    source_of: Dict[str, str] = {}
    dropped, unmapped = [], []
    for key, value in state_dict.items():
        if dropped_keys.fullmatch(key):
            dropped.append(key)
            continue
        name = rename(key)
        if not name:
            unmapped.append(key)
            continue
        if name in model:
            raise ValueError(f"Source keys {source_of[name]!r} and {key!r} both map to {name!r}")
        model[name], source_of[name] = value, key
    if unmapped:
        raise ValueError(
            f"{source_format} checkpoint has keys that map to no hila_d2 parameter: "
            f"{_examples(_quoted(sorted(unmapped)))}"
        )
    return model, source_of, dropped


def check_keys(model: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size]) -> KeyReport:
    """Compare converted tensors with the expected names and shapes (e.g. ``segformer_shapes``)."""
    return KeyReport(
        missing=sorted(expected.keys() - model.keys()),
        unexpected=sorted(model.keys() - expected.keys()),
        mismatched=sorted(
            k for k in model.keys() & expected.keys() if model[k].shape != expected[k]
        ),
    )


def _describe(config: Mapping[str, Any]) -> str:
    """``config`` as "KEY VALUE, KEY VALUE"."""
    return ", ".join(f"{key} {value}" for key, value in config.items())


def fitted_result(
    source_format: str,
    variant: str,
    config: Dict[str, Any],
    model: Dict[str, torch.Tensor],
    expected: Mapping[str, torch.Size],
    source_of: Mapping[str, str],
    dropped: Sequence[str],
) -> ConversionResult:
    """The ``ConversionResult`` of ``model`` after ``check_keys`` against ``expected``;
    ValueError naming ``'source key' -> 'name'`` for each unexpected converted name, with the
    shapes for each mismatched one."""
    report = check_keys(model, expected)
    problems = [f"{source_of[name]!r} -> {name!r}" for name in report.unexpected] + [
        f"{source_of[name]!r} -> {name!r} of shape {tuple(model[name].shape)}, "
        f"expected {tuple(expected[name])}"
        for name in report.mismatched
    ]
    if problems:
        raise ValueError(
            f"{source_format} checkpoint does not fit the hila_d2 model of {_describe(config)}: "
            f"unexpected keys or shapes: {_examples(problems)}"
        )
    return ConversionResult(
        model=model,
        source_format=source_format,
        variant=variant,
        dropped=sorted(dropped),
        missing=report.missing,
        config=config,
    )


def state_shapes(**modules: nn.Module) -> Dict[str, torch.Size]:
    """``{prefix}.{name}`` -> shape of every state-dict entry of each module, by its prefix."""
    return {
        f"{prefix}.{name}": value.shape
        for prefix, module in modules.items()
        for name, value in module.state_dict().items()
    }
