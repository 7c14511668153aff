"""The machinery shared by every checkpoint converter (pure functions, no file I/O).

``Format`` describes one source format: the key patterns that identify its state dict, the source
keys it drops and its converter; ``hila_d2.checkpoint.convert`` holds the table of them
(``FORMATS``, in detection order) and detects a checkpoint's format once. A converter takes that
``Format`` and the checkpoint's tensor state dict, renames its keys with ``rename_keys`` into the
names of a detectron2 model (``backbone.…``, ``sem_seg_head.…``), reads every size off the
tensors, builds the expected model on the meta device and returns ``fitted_result``: a
``ConversionResult``, or a ValueError for any key or shape that does not fit.
"""
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = [
    "PREDICTOR",
    "ConversionResult",
    "Format",
    "KeyReport",
    "Renames",
    "check_keys",
    "compile_renames",
    "examples",
    "fitted_result",
    "quoted",
    "rename_by",
    "rename_keys",
    "require_tensors",
    "state_dict_of",
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


@dataclass(frozen=True)
class Format:
    """How to recognise and convert one source format.

    ``name``: its ``SUPPORTED_FORMATS`` name; ``markers``: patterns (fnmatch, ``*`` = anything),
    each matching some key of its state dicts; ``dropped``: a regular expression fully matching
    the source keys deliberately left out; ``converter(format, state_dict, **options)``: its
    family's converter, given this Format and the checkpoint's tensor state dict;
    ``resizes_window``: whether the converter takes ``window_size`` (Swin ImageNet files).
    """

    name: str
    markers: Tuple[str, ...]
    dropped: str
    converter: Callable[..., ConversionResult]
    resizes_window: bool = False

    def matches(self, keys: Sequence[str]) -> bool:
        """Whether each marker matches one of ``keys`` (the string keys of a state dict)."""
        return all(any(fnmatchcase(key, marker) for key in keys) for marker in self.markers)


def examples(items: Sequence[str], limit: int = 8) -> str:
    """The first ``limit`` items and how many more there are."""
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def quoted(keys) -> List[str]:
    """``repr`` of each of ``keys``."""
    return [repr(key) for key in keys]


def state_dict_of(obj: Any) -> Any:
    """The state dict of a loaded checkpoint: ``obj["state_dict"]`` (mmcv/mmseg) or
    ``obj["model"]`` (Microsoft's Swin) where that is a non-empty dict, else ``obj``."""
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), Mapping) and obj[wrapper]:
                return obj[wrapper]
    return obj


def require_tensors(state_dict: Mapping[str, Any]) -> None:
    """ValueError naming the entries of ``state_dict`` that are not tensors."""
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(
            f"State-dict entries that are not tensors: {examples(quoted(not_tensors))}"
        )


def rename_keys(
    source: Format, state_dict: Mapping[str, torch.Tensor], rename: Callable[[str], str]
) -> Tuple[Dict[str, torch.Tensor], Dict[str, str], List[str]]:
    """(hila_d2 name -> tensor, hila_d2 name -> source key, dropped source keys): every key that
    the ``source`` format does not drop, under its ``rename``; ValueError for keys that
    ``rename`` places nowhere ("") and for two keys with one name."""
    dropped_keys = re.compile(source.dropped)
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
            f"{source.name} checkpoint has keys that map to no hila_d2 parameter: "
            f"{examples(quoted(sorted(unmapped)))}"
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
    source: Format,
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
            f"{source.name} checkpoint does not fit the hila_d2 model of {_describe(config)}: "
            f"unexpected keys or shapes: {examples(problems)}"
        )
    return ConversionResult(
        model=model,
        source_format=source.name,
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
