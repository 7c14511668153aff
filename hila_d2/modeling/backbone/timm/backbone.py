"""``TimmBackbone``: any timm encoder with ``feature_info`` as a detectron2 backbone, with or
without HILA (``hila_attachment``), and its builder ``build_timm_backbone``.

``TimmBackbone`` builds ``timm.create_model(MODEL.TIMM.NAME)``, keeps the stages up to the last
requested output (timm's ``prune_intermediate_layers``, which also drops the classifier) and runs
timm's own ``forward_intermediates``. Outputs are named by stride, as detectron2 names ResNet's:
``res{log2(stride)}`` (``res2`` .. ``res5`` for strides 4 .. 32, ``res1`` for a stride-2 stem
output), always NCHW; of several outputs at one stride the deepest is kept. Images of any size
run: they are padded (zeros, bottom and right) to a multiple of the deepest stride, or to the
fixed input size of a model that has one (Swin, MaxViT, EfficientFormerV2: set it with
``MODEL.TIMM.KWARGS.img_size``), and each output is cropped to ``ceil(H / stride)`` x
``ceil(W / stride)``.
"""
import sys
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

from ...hila import HILASettings
from ..pyramid import STAGE_NAMES
from .freezing import freeze, freeze_unused
from .hila_attachment import build_pairs, check_selective_checkpointing, hook_pairs
from .model import TimmEncoderError, create, named_features, plain

__all__ = ["TimmBackbone", "build_timm_backbone"]

_PROBE_SIZE = (128, 192)  # image size of the build's probe passes of models without a fixed size


class TimmBackbone(Backbone):
    """A timm encoder returning ``{"res2": (B, C2, ceil(H/4), ceil(W/4)), ...}`` (the names of
    ``out_features``) for images (B, in_chans, H, W) of any size; the timm model is ``encoder``
    (state-dict keys ``encoder.<timm key>``) and the HILA pairs ``hila.{tag}``."""

    @configurable
    def __init__(
        self,
        *,
        name: str,
        out_features: Sequence[str] = STAGE_NAMES,
        drop_path_rate: float = 0.0,
        freeze_at: int = 0,
        in_chans: int = 3,
        model_kwargs: Optional[Mapping[str, Any]] = None,
        hila: HILASettings = HILASettings(),
    ):
        """
        Args:
            name: a timm model name, e.g. "convnext_atto" (``timm.list_models()``).
            out_features: output names (``res1`` .. ``res5`` as the model has them).
            drop_path_rate: stochastic depth rate (0: the model's default).
            freeze_at: 0 trains everything; k >= 1 freezes the stem and the stages up to
                ``res{k}`` (detectron2's meaning: 1 the stem, 2 also res2, ...).
            in_chans: input image channels.
            model_kwargs: more ``timm.create_model`` keyword arguments (e.g. img_size).
            hila: HILA pairs and options; the default has none.
        """
        super().__init__()
        model_kwargs = plain(model_kwargs or {})
        self.name = name
        self.in_chans = in_chans
        encoder = create(name, in_chans, drop_path_rate, model_kwargs)
        if not getattr(encoder, "feature_info", None) or not hasattr(
            encoder, "forward_intermediates"
        ):
            raise TimmEncoderError(
                f"timm model {name!r} has no feature_info / forward_intermediates: it does not "
                "expose per-stage outputs, so it cannot be a detectron2 backbone"
            )
        self._named = named_features(name, encoder.feature_info)
        unknown = [f for f in out_features if f not in self._named]
        if not out_features or unknown:
            raise TimmEncoderError(
                f"MODEL.TIMM.OUT_FEATURES must be a non-empty subset of the outputs of {name!r}, "
                f"{list(self._named)}, got {list(out_features)}"
            )
        self._out_features = [f for f in self._named if f in out_features]
        info = encoder.feature_info
        self._out_feature_channels = {n: int(info[i]["num_chs"]) for n, i in self._named.items()}
        self._out_feature_strides = {n: int(info[i]["reduction"]) for n, i in self._named.items()}
        self.fixed_size = self._fixed_size(encoder, model_kwargs)
        self.encoder = encoder
        keys_before = set(self.state_dict())
        self.hila, paired_stages, stages_run = build_pairs(self, hila)
        last = max(self._named[f] for f in (*self._out_features, *stages_run))
        self._indices = sorted({self._named[f] for f in self._out_features} | {last})
        encoder.prune_intermediate_layers(self._indices, prune_norm=True, prune_head=True)
        hook_pairs(self, paired_stages)  # after pruning: its probe runs only the stages kept
        freeze(encoder, self._named, freeze_at, name)
        self.unbuilt_keys = tuple(sorted(keys_before - set(self.state_dict())))
        if not any(p.is_meta for p in self.parameters()):
            check_selective_checkpointing(self)
            freeze_unused(self)

    # --- sizes --------------------------------------------------------------------------------

    @staticmethod
    def _fixed_size(encoder: nn.Module, kwargs: Mapping[str, Any]) -> Optional[Tuple[int, int]]:
        """The (H, W) a fixed-input-size model runs on (``img_size`` or its default); None for
        models that take any size."""
        if not encoder.pretrained_cfg.get("fixed_input_size") or kwargs.get("dynamic_img_size"):
            return None
        size = kwargs.get("img_size", encoder.pretrained_cfg["input_size"][1:])
        size = (size, size) if isinstance(size, int) else tuple(size)
        return int(size[0]), int(size[1])

    @property
    def size_divisibility(self) -> int:
        """The deepest stride: inputs padded to a multiple of it make every stage grid exact."""
        return max(self._out_feature_strides[f] for f in self._named)

    @property
    def padding_constraints(self) -> Dict[str, int]:
        """detectron2's batch padding rule: to a multiple of ``size_divisibility``, not square."""
        return {"size_divisibility": self.size_divisibility, "square_size": 0}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }

    def _padded_size(self, height: int, width: int) -> Tuple[int, int]:
        if self.fixed_size is None:
            step = self.size_divisibility
            return -(-height // step) * step, -(-width // step) * step
        if height > self.fixed_size[0] or width > self.fixed_size[1]:
            raise ValueError(
                f"timm model {self.name!r} runs on images of at most {self.fixed_size[0]}x"
                f"{self.fixed_size[1]} (its fixed input size), got {height}x{width}: set "
                "MODEL.TIMM.KWARGS.img_size to the largest input (e.g. INPUT.CROP.SIZE), or "
                "dynamic_img_size: True where the model takes it (Swin)"
            )
        return self.fixed_size

    def probe_size(self) -> Tuple[int, int]:
        """The (H, W) of the probe passes run when the backbone is built."""
        if self.fixed_size is not None:
            return self.fixed_size
        return self._padded_size(*_PROBE_SIZE)

    # --- running ------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """(B, in_chans, H, W) -> dict of NCHW outputs named in ``out_features``."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"timm model {self.name!r} expects images of shape (B, {self.in_chans}, H, W), "
                f"got {tuple(x.shape)}"
            )
        height, width = x.shape[-2:]
        padded_height, padded_width = self._padded_size(height, width)
        x = F.pad(x, (0, padded_width - width, 0, padded_height - height))
        self.hila.start((padded_height, padded_width))
        features = self.encoder.forward_intermediates(
            x, indices=self._indices, intermediates_only=True
        )
        by_index = dict(zip(self._indices, features))
        outputs = {}
        for name in self._out_features:
            out = by_index[self._named[name]]
            if name in STAGE_NAMES:  # below a HILA pair: the pair's updated tokens
                level = STAGE_NAMES.index(name) + 1
                out = self.hila.updated(level, out.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            stride = self._out_feature_strides[name]
            outputs[name] = out[..., : -(-height // stride), : -(-width // stride)].contiguous()
        return outputs

    # --- weights ------------------------------------------------------------------------------

    def timm_state_dict(self, state: Mapping[str, torch.Tensor]) -> Optional[Dict[str, Any]]:
        """``state`` under this backbone's names (``encoder.<key>``) if it is a timm checkpoint of
        this model (after the family's ``checkpoint_filter_fn``, which maps the original
        releases' names onto timm's): it holds every parameter and buffer of the encoder.
        None otherwise."""
        own = self.encoder.state_dict()
        family = sys.modules[type(self.encoder).__module__]
        filter_fn = getattr(family, "checkpoint_filter_fn", None)
        if filter_fn is not None and not all(k in state for k in own):
            try:
                state = filter_fn(dict(state), self.encoder)
            except Exception:  # a filter for another layout of the family: the keys decide
                pass
        if not all(k in state for k in own):
            return None
        return {f"encoder.{k}": v for k, v in state.items()}

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        timm_cfg = cfg.MODEL.TIMM
        if not timm_cfg.NAME:
            raise TimmEncoderError(
                "MODEL.TIMM.NAME is empty: name a timm model for build_timm_backbone, e.g. "
                "convnext_atto or pvt_v2_b0"
            )
        return {
            "name": timm_cfg.NAME,
            "out_features": timm_cfg.OUT_FEATURES,
            "drop_path_rate": timm_cfg.DROP_PATH_RATE,
            "freeze_at": timm_cfg.FREEZE_AT,
            "in_chans": input_shape.channels,
            "model_kwargs": timm_cfg.KWARGS,
            "hila": HILASettings.from_config(cfg),
        }


@BACKBONE_REGISTRY.register()
def build_timm_backbone(cfg, input_shape: ShapeSpec) -> TimmBackbone:
    """detectron2 builder for ``MODEL.BACKBONE.NAME: build_timm_backbone`` (``MODEL.TIMM.*``)."""
    return TimmBackbone(cfg, input_shape)
