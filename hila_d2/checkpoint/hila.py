"""HILA pairs in official checkpoints: their module names and the settings their weights fix,
shared by the MiT (SegFormer) and Swin converters."""
import re
from typing import Any, Dict, Mapping

import torch

from ..modeling.hila import HILASettings, pair_tag

__all__ = ["HILA_FLAG", "hila_config", "hila_param_name", "infer_hila_settings"]

# official module -> HILAPair attribute where they differ
_HILA_RENAMED_MODULES = {
    "topdown": "top_down",
    "bottomup": "bottom_up",
    "prevblock": "bottom_block",
    "prevnorm": "bottom_norm",
    "bottom_sa": "bottom_block",
}
# official HILA modules that are ModuleLists of per-iteration copies ("{module}.0" when shared)
_HILA_COPIED = ("topdown", "bottomup", "prevblock", "bottom_sa")
HILA_FLAG = "reuse_bottomsa_pretraining_flag"  # official buffer: 1 once the lower block was copied


def infer_hila_settings(model: Mapping[str, torch.Tensor]) -> HILASettings:
    """The HILA pairs of the ``backbone.hila.{tag}.*`` entries of ``model`` and the options that
    shape them: ``mlp_ratio`` (hidden / width of the first pair's Bottom-Up Mix-FFN) and
    ``bottom_mlp_ratio`` (of its lower-level block's MLP). The other options (strides, heads,
    parity mode) leave no trace in the weights and keep their defaults, as do the ratios whose
    weights are absent; ``HILASettings()`` without pairs."""
    stages = tuple(  # upper stages of a four-stage encoder
        top
        for top in range(2, 5)
        if any(n.startswith(f"backbone.hila.{pair_tag(top)}.") for n in model)
    )
    default = HILASettings()
    if not stages:
        return default

    def ratio(module: str, fallback: float) -> float:
        weight = model.get(f"backbone.hila.{pair_tag(stages[0])}.{module}.fc1.weight")
        return fallback if weight is None else weight.shape[0] / weight.shape[1]

    return HILASettings(
        stages=stages,
        mlp_ratio=ratio("bottom_up.top_mlp", default.mlp_ratio),
        bottom_mlp_ratio=ratio("bottom_block.mlp", default.bottom_mlp_ratio),
    )


def hila_config(hila: HILASettings) -> Dict[str, Any]:
    """The ``MODEL.HILA`` keys of ``hila`` that the weights determine; {} without pairs."""
    if not hila.stages:
        return {}
    return {
        "MODEL.HILA.STAGES": list(hila.stages),
        "MODEL.HILA.MLP_RATIO": hila.mlp_ratio,
        "MODEL.HILA.BOTTOM_MLP_RATIO": hila.bottom_mlp_ratio,
    }

def hila_param_name(key: str, match: re.Match, tag: str) -> str:
    """``hila.{tag}.{HILAPair attribute}.…`` of the official HILA ``key`` whose backbone-relative
    name ``match`` matched; ValueError for a pair with unshared per-iteration weights."""
    module, rest = match["module"], match["rest"]
    if module in _HILA_COPIED:
        index, _, rest = rest.partition(".")
        if index != "0":
            raise ValueError(
                f"{key!r} is not a weight of the shared copy {module}…0 of HILA pair {tag}: "
                "hila_d2 has one set of HILA weights per pair, shared by all iterations as in the "
                "official configs; checkpoints with unshared copies (.1, .2, …) are not supported"
            )
    rest = rest.replace("dwconv.dwconv", "dwconv")  # NVlabs Mix-FFN -> timm's, as _rename_mit
    return f"hila.{tag}.{_HILA_RENAMED_MODULES.get(module, module)}.{rest}"
