"""Any timm encoder with ``feature_info`` as a detectron2 backbone, with or without HILA.

``TimmBackbone`` builds ``timm.create_model(MODEL.TIMM.NAME)``, keeps the stages up to the last
requested output (timm's ``prune_intermediate_layers``, which also drops the classifier) and runs
timm's own ``forward_intermediates``. Outputs are named by stride, as detectron2 names ResNet's:
``res{log2(stride)}`` (``res2`` .. ``res5`` for strides 4 .. 32, ``res1`` for a stride-2 stem
output), always NCHW; of several outputs at one stride the deepest is kept. Images of any size
run: they are padded (zeros, bottom and right) to a multiple of the deepest stride, or to the
fixed input size of a model that has one (Swin, MaxViT, EfficientFormerV2: set it with
``MODEL.TIMM.KWARGS.img_size``), and each output is cropped to ``ceil(H / stride)`` x
``ceil(W / stride)``.

With ``MODEL.HILA.STAGES``, HILA pairs join stages whose modules hold their blocks in
``blocks`` (``stages[i].blocks``, ``layers[i].blocks``), through hooks on those modules
(``hila_d2.modeling.hila.attach``), so the parameter names stay timm's. The layouts of each
stage's tokens (NCHW, NHWC, (B, N, C)) are read off one probe forward pass when the backbone is
built. A pair's lower-level block is a copy of the lower stage's last block.

A parameter that takes no part in the requested outputs (a classifier's norm, a stage norm whose
tokens nobody reads) is frozen when the backbone is built (found by a probe backward pass), so
DistributedDataParallel sees no unused parameter.
"""
import copy
import logging
import math
import sys
from functools import partial
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import timm
from timm.layers import freeze_batch_norm_2d
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

from ..hila import BlockCall, HILAPairs, HILASettings, Layout, StageAccess
from ..hila.recompute import checkpointed_step
from ..hila.layouts import layout_of
from .pyramid import STAGE_NAMES
from .stage_plan import plan_encoder

__all__ = ["TimmBackbone", "TimmEncoderError", "build_timm_backbone"]

logger = logging.getLogger(__name__)

_BLOCK_CONTAINERS = ("stages", "layers")  # timm's names of the stage lists HILA attaches to
_PROBE_SIZE = (128, 192)  # image size of the layout probe of models without a fixed input size


class TimmEncoderError(ValueError):
    """A timm model that cannot be a backbone (or take HILA) as configured."""


def _output_name(reduction: int) -> str:
    return f"res{int(math.log2(reduction))}"


def _named_features(model_name: str, feature_info: Sequence[Mapping[str, Any]]) -> Dict[str, int]:
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


def _create(name: str, in_chans: int, drop_path_rate: float, kwargs: Mapping[str, Any]):
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
        model_kwargs = _plain(model_kwargs or {})
        self.name = name
        self.in_chans = in_chans
        encoder = _create(name, in_chans, drop_path_rate, model_kwargs)
        if not getattr(encoder, "feature_info", None) or not hasattr(
            encoder, "forward_intermediates"
        ):
            raise TimmEncoderError(
                f"timm model {name!r} has no feature_info / forward_intermediates: it does not "
                "expose per-stage outputs, so it cannot be a detectron2 backbone"
            )
        self._named = _named_features(name, encoder.feature_info)
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
        stages_run = self._attach_hila(hila)
        last = max(self._named[f] for f in (*self._out_features, *stages_run))
        self._indices = sorted({self._named[f] for f in self._out_features} | {last})
        encoder.prune_intermediate_layers(self._indices, prune_norm=True, prune_head=True)
        self._freeze(freeze_at)
        self.unbuilt_keys = tuple(sorted(keys_before - set(self.state_dict())))
        if not any(p.is_meta for p in self.parameters()):
            self._check_selective_checkpointing()
            self._freeze_unused()

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

    # --- HILA ---------------------------------------------------------------------------------

    def _stage_module(self, name: str, why: str) -> nn.Module:
        """The module of output ``name`` if it is a stage holding its blocks, else an error."""
        module_name = self.encoder.feature_info[self._named[name]]["module"]
        container = module_name.split(".")[0]
        module = self.encoder.get_submodule(module_name)
        if container not in _BLOCK_CONTAINERS or not isinstance(
            getattr(module, "blocks", None), (nn.Sequential, nn.ModuleList)
        ):
            raise TimmEncoderError(
                f"timm model {self.name!r} cannot take HILA (MODEL.HILA.STAGES): {why}, its "
                f"output {name} comes from {module_name!r} ({type(module).__name__}), which does "
                "not hold its blocks in a `blocks` sequence (HILA needs stages[i].blocks or "
                "layers[i].blocks)"
            )
        return module

    def _attach_hila(self, hila: HILASettings) -> List[str]:
        """Build the pairs of ``hila`` and hook them into the encoder; the stage outputs that
        must run for them (the upper stages of the pairs)."""
        if not hila.stages:
            self.hila = HILAPairs(hila, [0] * 4, [[]] * 4, lambda top: None)
            return []
        if hila.bottom_mlp_ratio != HILASettings.bottom_mlp_ratio:
            raise TimmEncoderError(
                f"MODEL.HILA.BOTTOM_MLP_RATIO is {hila.bottom_mlp_ratio}, but a timm encoder's "
                "HILA lower-level block is a copy of its lower stage's last block, with that "
                f"block's MLP: leave it at {HILASettings.bottom_mlp_ratio}"
            )
        missing = [n for n in STAGE_NAMES if n not in self._named]
        if missing:
            raise TimmEncoderError(
                f"timm model {self.name!r} cannot take HILA: it has no outputs {missing} (HILA's "
                f"stages 1-4 are the outputs at strides 4, 8, 16, 32; it has {list(self._named)})"
            )
        used = {f for f in STAGE_NAMES if f in self._out_features}
        paired = {STAGE_NAMES[top - 2] for top in hila.stages} | {
            STAGE_NAMES[top - 1] for top in hila.stages
        }
        stages = {n: self._stage_module(n, "for its HILA pairs") for n in sorted(paired)}
        depths = [len(stages[n].blocks) if n in stages else 1 for n in STAGE_NAMES]
        dims = [self._out_feature_channels[n] for n in STAGE_NAMES]
        self.hila = HILAPairs(
            hila,
            dims,
            [list(stages[n].blocks) if n in stages else [] for n in STAGE_NAMES],
            lambda top: copy.deepcopy(stages[STAGE_NAMES[top - 2]].blocks[-1]),
        )
        plan = plan_encoder(depths, sorted(used), hila)
        for tag in list(self.hila):
            top = int(tag[1])
            if top not in plan.pairs:
                del self.hila[tag]
                continue
            self.hila[tag].restrict(plan.pairs[top])
            upper = stages[STAGE_NAMES[top - 1]]
            upper.blocks = upper.blocks[: plan.pairs[top].blocks]
        calls, outputs = self._probe_layouts(stages)
        self.hila.hook(
            [
                StageAccess(stages[n], outputs[n], stages[n].blocks, calls[n],
                            self._out_feature_strides[n]) if n in stages else None
                for n in STAGE_NAMES
            ],
            [calls.get(n) for n in STAGE_NAMES],
        )  # fmt: skip
        return [STAGE_NAMES[plan.num_stages - 1]] if plan.num_stages else []

    def _probe_size(self) -> Tuple[int, int]:
        if self.fixed_size is not None:
            return self.fixed_size
        return self._padded_size(*_PROBE_SIZE)

    @torch.no_grad()
    def _probe_layouts(
        self, stages: Mapping[str, nn.Module]
    ) -> Tuple[Dict[str, BlockCall], Dict[str, Layout]]:
        """One forward pass on zeros (in eval mode) recording, per stage in ``stages``, how its
        first block is called and the layout of its output; errors for stages HILA cannot join.
        """
        seen: Dict[str, Any] = {}
        handles = []
        for name, stage in stages.items():
            handles.append(stage.register_forward_hook(
                lambda m, a, out, name=name: seen.setdefault(("out", name), out)
            ))  # fmt: skip
            handles.append(stage.blocks[0].register_forward_pre_hook(
                lambda m, a, k, name=name: seen.setdefault(("in", name), (a, k)), with_kwargs=True
            ))  # fmt: skip
        height, width = self._probe_size()
        training = self.encoder.training
        try:
            self.encoder.eval()
            self.encoder.forward_intermediates(
                torch.zeros(1, self.in_chans, height, width), intermediates_only=True
            )
        finally:
            self.encoder.train(training)
            for handle in handles:
                handle.remove()
        calls, outputs = {}, {}
        for name in stages:
            stride, channels = self._out_feature_strides[name], self._out_feature_channels[name]
            grid = (height // stride, width // stride)
            args, kwargs = seen[("in", name)]
            block_layout = layout_of(args[0], channels, grid)
            output = layout_of(seen[("out", name)], channels, grid)
            extra = {(): "", (grid,): "tuple", grid: "ints"}
            rest = tuple(tuple(a) if isinstance(a, (list, torch.Size)) else a for a in args[1:])
            reason = (
                f"the blocks of {name} get tokens of shape {tuple(args[0].shape)}, not the "
                f"{channels} channels on the {grid[0]}x{grid[1]} grid of its output (the stage "
                "changes the resolution or width inside its first block)"
                if block_layout is None
                else f"the output of {name} has shape {tuple(seen[('out', name)].shape)}, in no "
                "NCHW / NHWC / (B, N, C) layout"
                if output is None
                else f"the blocks of {name} take more than their tokens and grid (args "
                f"{rest!r:.80}, kwargs {sorted(kwargs)})"
                if kwargs or rest not in extra
                else ""
            )
            if reason:
                raise TimmEncoderError(
                    f"timm model {self.name!r} cannot take HILA on this stage pair: {reason}"
                )
            calls[name] = BlockCall(block_layout, extra[rest])
            outputs[name] = output
        return calls, outputs

    # --- freezing -----------------------------------------------------------------------------

    def _levels(self) -> Dict[str, int]:
        """Parameter name (in ``encoder``) -> the level of the output it first feeds: that of the
        output module holding it, else of the next output module in registration order (1, the
        stem, before the first); parameters after the last output module are left out."""
        positions = {name: i for i, (name, _) in enumerate(self.encoder.named_modules())}
        outputs = sorted(
            (positions[self.encoder.feature_info[index]["module"]], int(name[3:]),
             self.encoder.feature_info[index]["module"])
            for name, index in self._named.items()
        )  # fmt: skip
        levels = {}
        for key, _ in self.encoder.named_parameters():
            owner = key.rpartition(".")[0]
            inside = [level for _, level, m in outputs if owner == m or owner.startswith(m + ".")]
            later = [level for position, level, _ in outputs if position > positions[owner]]
            if inside or later:
                levels[key] = 1 if positions[owner] < outputs[0][0] else (inside or later)[0]
        return levels

    def _freeze(self, freeze_at: int) -> None:
        """Freeze (``requires_grad=False``; BatchNorm -> timm's FrozenBatchNorm2d, with its
        activation for timm's BatchNormAct2d) the parameters of levels <= ``freeze_at``."""
        if freeze_at < 0 or freeze_at > max(int(n[3:]) for n in self._named):
            raise TimmEncoderError(
                f"MODEL.TIMM.FREEZE_AT must be in 0..{max(int(n[3:]) for n in self._named)} for "
                f"{self.name!r} (0: train all, 1: freeze the stem, k: also res2..res{{k}}), got "
                f"{freeze_at}"
            )
        if not freeze_at:
            return
        frozen = {key for key, level in self._levels().items() if level <= freeze_at}
        for key, parameter in self.encoder.named_parameters():
            if key in frozen:
                parameter.requires_grad_(False)
        for name, module in list(self.encoder.named_modules()):
            params = [f"{name}.{k}" if name else k for k, _ in module.named_parameters()]
            if isinstance(module, nn.BatchNorm2d) and params and set(params) <= frozen:
                parent, _, attr = name.rpartition(".")
                owner = self.encoder.get_submodule(parent) if parent else self.encoder
                setattr(owner, attr, freeze_batch_norm_2d(module))  # keeps BatchNormAct's act

    def _check_selective_checkpointing(self) -> None:
        """Run a lower-level block that cannot take selective activation checkpointing without
        it: a block that changes a matmul's result in place (timm's Swin V2: an in-place ReLU,
        ``qkv += bias``) breaks the policy's saved results. Found by one forward and backward
        pass of each pair's block under the policy, on zeros."""
        height, width = self._probe_size()
        self.hila.start((height, width))
        for tag, pair in self.hila.items():
            if pair.bottom_block is None:
                continue
            stride = self._out_feature_strides[STAGE_NAMES[int(tag[0]) - 1]]
            channels = self._out_feature_channels[STAGE_NAMES[int(tag[0]) - 1]]
            x = torch.zeros(1, height // stride, width // stride, channels, requires_grad=True)
            step = partial(pair.bottom_block_call, use_index=0)
            try:
                with torch.enable_grad():
                    checkpointed_step(step, x, recompute_all=False).sum().backward()
            except RuntimeError as error:
                if "mutated" not in str(error):
                    raise
                pair.bottom_block.selective_checkpointing = False
                logger.info("HILA pair %s: its lower-level block runs without selective "
                            "checkpointing (%s)", tag, error)  # fmt: skip

    def _freeze_unused(self) -> None:
        """Freeze the trainable parameters that receive no gradient from the outputs (found by
        one forward and backward pass on zeros in eval mode)."""
        training = self.training
        try:
            self.eval()
            with torch.enable_grad():
                outputs = self(torch.zeros(1, self.in_chans, *self._probe_size()))
                sum(out.sum() for out in outputs.values()).backward()
        finally:
            self.train(training)
        unused = [k for k, p in self.named_parameters() if p.requires_grad and p.grad is None]
        for key, parameter in self.named_parameters():
            parameter.grad = None
            if key in unused:
                parameter.requires_grad_(False)
        if any(not key.startswith("encoder.") for key in unused):
            raise RuntimeError(f"HILA parameters take no part in the outputs: {unused}")
        if unused:
            logger.info(
                "timm %s: %d parameters take no part in %s and are frozen: %s",
                self.name, len(unused), self._out_features, unused[:8],
            )  # fmt: skip

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


def _plain(node: Mapping[str, Any]) -> Dict[str, Any]:
    """A config group (yacs or omegaconf) as plain dicts, its lists as tuples (timm's sizes)."""
    return {
        key: (
            _plain(value) if isinstance(value, Mapping)
            else tuple(value) if isinstance(value, Sequence) and not isinstance(value, str)
            else value
        )
        for key, value in node.items()
    }  # fmt: skip


@BACKBONE_REGISTRY.register()
def build_timm_backbone(cfg, input_shape: ShapeSpec) -> TimmBackbone:
    """detectron2 builder for ``MODEL.BACKBONE.NAME: build_timm_backbone`` (``MODEL.TIMM.*``)."""
    return TimmBackbone(cfg, input_shape)
