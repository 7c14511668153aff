"""HILA inside a timm encoder: with ``MODEL.HILA.STAGES``, HILA pairs join stages whose modules
hold their blocks in ``blocks`` (``stages[i].blocks``, ``layers[i].blocks``), through hooks on
those modules (``hila_d2.modeling.hila.attach``), so the parameter names stay timm's. The layouts
of each joined stage's tokens (NCHW, NHWC, (B, N, C)) are read off one probe forward pass of the
encoder once it is pruned to the stages that run. A pair's lower-level block is a copy of the
lower stage's last block."""
import copy
import logging
from functools import partial
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Tuple

import torch
from torch import nn

from ...hila import BlockCall, HILAPairs, HILASettings, Layout, StageAccess
from ...hila.layouts import layout_of
from ...hila.recompute import checkpointed_step
from ..pyramid import STAGE_NAMES
from ..stage_plan import plan_encoder
from .model import TimmEncoderError

if TYPE_CHECKING:
    from .backbone import TimmBackbone

__all__ = ["build_pairs", "check_selective_checkpointing", "hook_pairs"]

logger = logging.getLogger(__name__)

_BLOCK_CONTAINERS = ("stages", "layers")  # timm's names of the stage lists HILA attaches to


def _stage_module(backbone: "TimmBackbone", name: str, why: str) -> nn.Module:
    """The module of output ``name`` if it is a stage holding its blocks, else an error."""
    module_name = backbone.encoder.feature_info[backbone._named[name]]["module"]
    container = module_name.split(".")[0]
    module = backbone.encoder.get_submodule(module_name)
    if container not in _BLOCK_CONTAINERS or not isinstance(
        getattr(module, "blocks", None), (nn.Sequential, nn.ModuleList)
    ):
        raise TimmEncoderError(
            f"timm model {backbone.name!r} cannot take HILA (MODEL.HILA.STAGES): {why}, its "
            f"output {name} comes from {module_name!r} ({type(module).__name__}), which does "
            "not hold its blocks in a `blocks` sequence (HILA needs stages[i].blocks or "
            "layers[i].blocks)"
        )
    return module


def build_pairs(
    backbone: "TimmBackbone", hila: HILASettings
) -> Tuple[HILAPairs, Dict[str, nn.Module], List[str]]:
    """The pairs of ``hila`` over ``backbone.encoder``, restricted to their plan (the upper
    stages' blocks cut to it); the stages the remaining pairs join (output name -> module, for
    ``hook_pairs``); the stage outputs that must run for them (the upper stages of the pairs)."""
    if not hila.stages:
        return HILAPairs(hila, [0] * 4, [[]] * 4, lambda top: None), {}, []
    if hila.bottom_mlp_ratio != HILASettings.bottom_mlp_ratio:
        raise TimmEncoderError(
            f"MODEL.HILA.BOTTOM_MLP_RATIO is {hila.bottom_mlp_ratio}, but a timm encoder's "
            "HILA lower-level block is a copy of its lower stage's last block, with that "
            f"block's MLP: leave it at {HILASettings.bottom_mlp_ratio}"
        )
    named = backbone._named
    missing = [n for n in STAGE_NAMES if n not in named]
    if missing:
        raise TimmEncoderError(
            f"timm model {backbone.name!r} cannot take HILA: it has no outputs {missing} (HILA's "
            f"stages 1-4 are the outputs at strides 4, 8, 16, 32; it has {list(named)})"
        )
    used = {f for f in STAGE_NAMES if f in backbone._out_features}
    paired = {STAGE_NAMES[top - 2] for top in hila.stages} | {
        STAGE_NAMES[top - 1] for top in hila.stages
    }
    stages = {n: _stage_module(backbone, n, "for its HILA pairs") for n in sorted(paired)}
    depths = [len(stages[n].blocks) if n in stages else 1 for n in STAGE_NAMES]
    dims = [backbone._out_feature_channels[n] for n in STAGE_NAMES]
    pairs = HILAPairs(
        hila,
        dims,
        [list(stages[n].blocks) if n in stages else [] for n in STAGE_NAMES],
        lambda top: copy.deepcopy(stages[STAGE_NAMES[top - 2]].blocks[-1]),
    )
    plan = plan_encoder(depths, sorted(used), hila)
    for tag in list(pairs):
        top = int(tag[1])
        if top not in plan.pairs:
            del pairs[tag]
            continue
        pairs[tag].restrict(plan.pairs[top])
        upper = stages[STAGE_NAMES[top - 1]]
        upper.blocks = upper.blocks[: plan.pairs[top].blocks]
    joined = {n: stages[n] for n in sorted({STAGE_NAMES[int(i) - 1] for tag in pairs for i in tag})}
    return pairs, joined, [STAGE_NAMES[plan.num_stages - 1]] if plan.num_stages else []


def hook_pairs(backbone: "TimmBackbone", stages: Mapping[str, nn.Module]) -> None:
    """Hook the pairs of ``backbone.hila`` into ``stages`` (``build_pairs``'), in the layouts
    that one probe pass of the encoder (pruned, so that only the stages that run run) reads."""
    if not stages:  # no pair runs
        return
    calls, outputs = _probe_layouts(backbone, stages)
    strides = backbone._out_feature_strides
    backbone.hila.hook(
        [
            StageAccess(stages[n], outputs[n], stages[n].blocks, calls[n], strides[n])
            if n in stages else None
            for n in STAGE_NAMES
        ],
        [calls.get(n) for n in STAGE_NAMES],
    )  # fmt: skip


@torch.no_grad()
def _probe_layouts(
    backbone: "TimmBackbone", stages: Mapping[str, nn.Module]
) -> Tuple[Dict[str, BlockCall], Dict[str, Layout]]:
    """One forward pass of the encoder on zeros (1, in_chans, H, W) (in eval mode) recording, per
    stage in ``stages``, how its first block is called and the layout of its output; errors for
    stages HILA cannot join.
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
    height, width = backbone.probe_size()
    encoder = backbone.encoder
    training = encoder.training
    try:
        encoder.eval()
        encoder.forward_intermediates(
            torch.zeros(1, backbone.in_chans, height, width), intermediates_only=True
        )
    finally:
        encoder.train(training)
        for handle in handles:
            handle.remove()
    calls, outputs = {}, {}
    for name in stages:
        stride = backbone._out_feature_strides[name]
        channels = backbone._out_feature_channels[name]
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
                f"timm model {backbone.name!r} cannot take HILA on this stage pair: {reason}"
            )
        calls[name] = BlockCall(block_layout, extra[rest])
        outputs[name] = output
    return calls, outputs


def check_selective_checkpointing(backbone: "TimmBackbone") -> None:
    """Run a lower-level block that cannot take selective activation checkpointing without
    it: a block that changes a matmul's result in place (timm's Swin V2: an in-place ReLU,
    ``qkv += bias``) breaks the policy's saved results. Found by one forward and backward
    pass of each pair's block under the policy, on zeros (1, H / stride, W / stride, C)."""
    height, width = backbone.probe_size()
    backbone.hila.start((height, width))
    for tag, pair in backbone.hila.items():
        if pair.bottom_block is None:
            continue
        stride = backbone._out_feature_strides[STAGE_NAMES[int(tag[0]) - 1]]
        channels = backbone._out_feature_channels[STAGE_NAMES[int(tag[0]) - 1]]
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
