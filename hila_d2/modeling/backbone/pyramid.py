"""What the four-stage hierarchical encoders (MiT, Swin, HAT-Net) share as detectron2 backbones: outputs
``res2..res5`` at strides 4, 8, 16, 32, their ``output_shape`` and ``size_divisibility`` and ``padding_constraints``."""
from abc import abstractmethod
from typing import Any, Dict, Mapping, Sequence, Tuple

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone

__all__ = [
    "PyramidBackbone",
    "STAGE_NAMES",
    "STAGE_STRIDES",
    "check_out_features",
    "variant_spec",
]

STAGE_NAMES = ("res2", "res3", "res4", "res5")
STAGE_STRIDES = (4, 8, 16, 32)


def check_out_features(out_features: Sequence[str], key: str) -> None:
    """Raise a ValueError naming ``key`` if ``out_features`` is empty or has unknown names."""
    unknown = [f for f in out_features if f not in STAGE_NAMES]
    if not out_features or unknown:
        raise ValueError(
            f"{key} must be a non-empty subset of {list(STAGE_NAMES)}, got {list(out_features)}"
        )


def variant_spec(variants: Mapping[str, Any], variant: str, family: str, key: str) -> Any:
    """``variants[variant]``; ValueError naming ``key`` and the known variants otherwise."""
    if variant not in variants:
        raise ValueError(
            f"Unknown {family} variant {variant!r} ({key}); choose one of {sorted(variants)}"
        )
    return variants[variant]


class PyramidBackbone(Backbone):
    """A detectron2 ``Backbone`` whose subclass sets ``_out_features`` and the per-stage
    ``_out_feature_channels`` (name -> C) in its constructor, builds its full model with HILA
    pairs in ``self.hila``, and then calls ``_keep_only(plan)``.

    ``unbuilt_keys`` lists the state-dict keys (relative to the backbone) of the full model that
    the plan dropped, because they produce no requested output: a checkpoint of the full model
    may hold them (``ValidatingCheckpointer`` accepts them as unused).
    """

    _out_feature_strides = dict(zip(STAGE_NAMES, STAGE_STRIDES))
    config_group = ""  # the encoder's yacs group, e.g. "MODEL.MIT"
    family = ""  # the encoder's name in error messages, e.g. "MiT"
    min_input_size = 1  # the smallest image height and width it runs on
    min_input_reason = ""  # why, for the error message
    unbuilt_keys: Tuple[str, ...] = ()

    def check_images(self, x: torch.Tensor) -> None:
        """ValueError naming the expected shape unless ``x`` is (B, in_chans, H, W) with H and W
        at least ``min_input_size``."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"{self.family} expects images of shape (B, {self.in_chans}, H, W), got "
                f"{tuple(x.shape)}"
            )
        if min(x.shape[2:]) < self.min_input_size:
            size = self.min_input_size
            raise ValueError(
                f"{self.family} needs images of at least {size}x{size} pixels "
                f"({self.min_input_reason}), got {x.shape[2]}x{x.shape[3]}: resize or pad them "
                "(e.g. INPUT.MIN_SIZE_TEST, or pad to a multiple of size_divisibility 32)"
            )

    def _keep_only(self, plan) -> None:
        """Drop the stages, blocks, norms (``_drop_unplanned``, per encoder) and HILA steps that
        ``plan`` (an ``EncoderPlan``) does not run, and record their keys in ``unbuilt_keys``."""
        before = set(self.state_dict())
        self._drop_unplanned(plan)
        for tag in list(self.hila):
            top = int(tag[1])
            if top in plan.pairs:
                self.hila[tag].restrict(plan.pairs[top])
            else:
                del self.hila[tag]
        self.unbuilt_keys = tuple(sorted(before - set(self.state_dict())))

    @abstractmethod
    def _drop_unplanned(self, plan) -> None:
        """Remove the encoder's own modules that ``plan`` does not run."""

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name],
                stride=self._out_feature_strides[name],
            )
            for name in self._out_features
        }

    @property
    def size_divisibility(self) -> int:
        """Every input size runs (odd stage grids are padded internally); inputs padded to a
        multiple of 32 make every stage grid exact, as the official models expect."""
        return 32

    @property
    def padding_constraints(self) -> Dict[str, int]:
        """detectron2's batch padding rule: to a multiple of ``size_divisibility``, not square."""
        return {"size_divisibility": self.size_divisibility, "square_size": 0}
