"""The levels a semantic head reads: chosen by MODEL.SEM_SEG_HEAD.IN_FEATURES, ordered finest
first (the order both SegFormerHead and UPerNetHead build their per-level layers in)."""

from typing import Dict, List, Sequence, Tuple

from detectron2.layers import ShapeSpec

__all__ = ["select_in_features", "levels_finest_first"]


def select_in_features(
    in_features: Sequence[str], input_shape: Dict[str, ShapeSpec]
) -> Dict[str, ShapeSpec]:
    """The backbone's ``{name: ShapeSpec}`` restricted to ``in_features``; one error naming the
    missing names and the backbone's outputs when the config asks for a feature that is absent.
    """
    missing = [f for f in in_features if f not in input_shape]
    if missing:
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.IN_FEATURES asks for {missing}, which the backbone does not "
            f"output; it outputs {sorted(input_shape)}"
        )
    return {name: input_shape[name] for name in in_features}


def levels_finest_first(
    input_shape: Dict[str, ShapeSpec], head_name: str
) -> List[Tuple[str, ShapeSpec]]:
    """``{name: ShapeSpec}`` -> ``[(name, ShapeSpec), ...]`` by increasing stride; the first entry's
    stride is the head's common stride. Raises when there is no level."""
    if not input_shape:
        raise ValueError(
            f"{head_name} needs at least one input feature (SEM_SEG_HEAD.IN_FEATURES)"
        )
    return sorted(input_shape.items(), key=lambda item: item[1].stride)
