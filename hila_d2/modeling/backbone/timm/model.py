"""The timm model of a ``TimmBackbone``: built from the config (``create``, ``plain``), its
outputs named by stride as detectron2 names ResNet's (``named_features``), and the error of a
model that cannot be a backbone (``TimmEncoderError``)."""
import math
from typing import Any, Dict, Mapping, Sequence

import timm

__all__ = ["TimmEncoderError", "create", "named_features", "plain"]


class TimmEncoderError(ValueError):
    """A timm model that cannot be a backbone (or take HILA) as configured."""


def _output_name(reduction: int) -> str:
    return f"res{int(math.log2(reduction))}"


def named_features(model_name: str, feature_info: Sequence[Mapping[str, Any]]) -> Dict[str, int]:
    """Output name -> index into ``feature_info`` (the deepest entry of each stride); error where
    the strides are not powers of two that grow from one output to the next."""
    reductions = [int(info["reduction"]) for info in feature_info]
    named: Dict[str, int] = {}
    for index, reduction in enumerate(reductions):
        if reduction < 2 or reduction & (reduction - 1):
            raise TimmEncoderError(
                f"timm model {model_name!r}: an output at stride {reduction} cannot be named "
                f"res<log2(stride)> (feature strides {reductions})"
            )
        named[_output_name(reduction)] = index
    if len(named) < 2 or sorted(reductions) != reductions:
        raise TimmEncoderError(
            f"timm model {model_name!r} is not a hierarchical encoder: its feature strides are "
            f"{reductions}, where a backbone needs outputs at growing strides (e.g. 4, 8, 16, 32); "
            "plain ViTs need a feature pyramid of their own (e.g. detectron2's ViTDet SimpleFPN)"
        )
    return named


def create(name: str, in_chans: int, drop_path_rate: float, kwargs: Mapping[str, Any]):
    """``timm.create_model`` with the config's keys, errors naming them."""
    options = dict(kwargs)
    if drop_path_rate:
        options["drop_path_rate"] = drop_path_rate
    try:
        return timm.create_model(name, pretrained=False, in_chans=in_chans, **options)
    except RuntimeError as error:
        if not timm.is_model(name):
            raise TimmEncoderError(
                f"MODEL.TIMM.NAME {name!r} is not a timm model; timm.list_models('*{name[:6]}*') "
                "lists similar names"
            ) from error
        raise
    except TypeError as error:
        raise TimmEncoderError(
            f"timm model {name!r} does not take the options {sorted(options)} "
            f"(MODEL.TIMM.DROP_PATH_RATE, MODEL.TIMM.KWARGS): {error}"
        ) from error


def plain(node: Mapping[str, Any]) -> Dict[str, Any]:
    """A config group (yacs or omegaconf) as plain dicts, its lists as tuples (timm's sizes)."""
    return {
        key: (
            plain(value) if isinstance(value, Mapping)
            else tuple(value) if isinstance(value, Sequence) and not isinstance(value, str)
            else value
        )
        for key, value in node.items()
    }  # fmt: skip
