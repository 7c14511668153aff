"""Swin Transformer T/S/B/L as a detectron2 backbone, on timm's ``SwinTransformer``.

Follows the official Swin segmentation backbone: window 7 (``MODEL.HILA_D2_SWIN.WINDOW_SIZE``) with shift
window // 2 on every odd block whatever the feature size, the normed tokens zero-padded at the
bottom/right to a multiple of the window *before* the cyclic shift (timm shifts first, then pads,
and clamps the window to small construction sizes), and a LayerNorm ``norm{i}`` on each output
stage. Parameter names are timm's (``patch_embed``, ``layers.{i}.downsample`` for i = 1..3,
``layers.{i}.blocks.{j}``) plus ``norm{i}``; ``hila_d2.checkpoint`` maps official
ImageNet files onto them.

With ``MODEL.HILA.STAGES`` set, the HILA pairs live in ``hila.{tag}`` (tag "12", "23", "34";
``hila_d2.modeling.hila.HILAPairs``), following the official HILA-Swin (docs/design/hila.md
§4.2): the pair's lower tokens are the lower stage's raw block output (before any norm), the upper
stage's patch merging reads them before the pair updates them, the extra lower-level block is a Swin
block of the lower stage used alternately without and with the shift (shift 0 on its even uses,
counted from 0 in every forward pass: the official block toggles a persistent shift instead), every
HILA part has the drop-path rate of the upper stage's first block, and the pair's ``bottom_norm``-ed
lower tokens are the lower stage's output, which therefore has no ``norm{i}``. In parity mode
``bottom_norm`` runs after every upper block not followed by Top-Down, as the official code; in
clean mode once. Unlike the official code, a stage whose upper neighbour has no pair keeps its
``norm{i}`` output (the official code returns it un-normalised when another stage has HILA,
docs/design/hila.md §11 P10).
"""

from functools import partial
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from timm.layers import PatchEmbed, to_2tuple
from timm.models.swin_transformer import (
    SwinTransformer,
    SwinTransformerBlock,
    window_partition,
    window_reverse,
)
from torch import nn

from ..hila import BlockCall, HILAPairs, HILASettings, Layout, StageAccess, init_hila_weights
from .pyramid import STAGE_NAMES, STAGE_STRIDES, PyramidBackbone, check_out_features, variant_spec
from .stage_plan import EncoderPlan, plan_encoder

__all__ = [
    "SWIN_VARIANTS",
    "SwinBlock",
    "SwinLowerBlock",
    "SwinTransformerBackbone",
    "build_swin_backbone",
]

# variant -> embed dim of stage 0 (doubled at each later stage), blocks and heads per stage
SWIN_VARIANTS: Dict[str, Dict[str, Sequence[int]]] = {
    "T": {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24)},
    "S": {"embed_dim": 96, "depths": (2, 2, 18, 2), "num_heads": (3, 6, 12, 24)},
    "B": {"embed_dim": 128, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32)},
    "L": {"embed_dim": 192, "depths": (2, 2, 18, 2), "num_heads": (6, 12, 24, 48)},
}
# additive attention mask between tokens of one window that the cyclic shift brought together
_SHIFT_MASK_VALUE = -100.0


def _shifted_window_mask(
    height: int,
    width: int,
    window_size: Tuple[int, int],
    shift_size: Tuple[int, int],
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """(num_windows, wh*ww, wh*ww) additive mask for a (height, width) grid rolled by
    ``-shift_size``: 0 between tokens of the same region (of the three the shift makes per axis:
    before the last window, the last window minus the shift, the shift), -100 otherwise."""

    def regions(length: int, window: int, shift: int) -> torch.Tensor:
        index = torch.arange(length, device=device)
        return (index >= length - window).long() + (index >= length - shift).long()

    rows = regions(height, window_size[0], shift_size[0])
    cols = regions(width, window_size[1], shift_size[1])
    region = rows[:, None] * 3 + cols  # (height, width), 9 region ids
    windows = window_partition(region[None, :, :, None], window_size).flatten(1)  # (nW, wh*ww)
    mask = torch.zeros(windows.shape + windows.shape[-1:], dtype=dtype, device=device)
    return mask.masked_fill(windows[:, None, :] != windows[:, :, None], _SHIFT_MASK_VALUE)


class SwinBlock(SwinTransformerBlock):
    """timm's Swin block in the window order of the official Swin segmentation backbone: the normed
    tokens are zero-padded at the bottom/right to a multiple of the window, cyclically shifted,
    attended within windows (shift mask computed on the padded grid), shifted back and cropped.
    Equal to timm's block when H and W are multiples of the window. Build it with
    ``always_partition=True`` so that timm never clamps the window or the shift."""

    def forward(self, x: torch.Tensor, shift_size: Optional[int] = None) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C). ``shift_size``: cyclic shift of the windows (0 <= shift <
        window); None uses the block's own (0 on even blocks, window // 2 on odd ones)."""
        B, H, W, C = x.shape
        x = x + self.drop_path1(self._attn(self.norm1(x), shift_size))
        x = x.reshape(B, -1, C)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x.reshape(B, H, W, C)

    def _attn(self, x: torch.Tensor, shift_size: Optional[int] = None) -> torch.Tensor:
        """(B, H, W, C) normed tokens -> (B, H, W, C) shifted-window attention output."""
        shift = self.shift_size if shift_size is None else to_2tuple(shift_size)
        if not all(0 <= s < w for s, w in zip(shift, self.window_size)):
            raise ValueError(
                f"shift_size must satisfy 0 <= shift < window {self.window_size}, got {shift_size}"
            )
        _, H, W, C = x.shape
        win_h, win_w = self.window_size
        x = F.pad(x, (0, 0, 0, -W % win_w, 0, -H % win_h))
        Hp, Wp = x.shape[1:3]
        mask = None
        if any(shift):
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
            mask = _shifted_window_mask(Hp, Wp, self.window_size, shift, x.dtype, x.device)
        windows = window_partition(x, self.window_size).view(-1, self.window_area, C)
        windows = self.attn(windows, mask=mask).view(-1, win_h, win_w, C)
        x = window_reverse(windows, self.window_size, Hp, Wp)
        if any(shift):
            x = torch.roll(x, shifts=shift, dims=(1, 2))
        return x[:, :H, :W].contiguous()


class SwinLowerBlock(SwinBlock):
    """A Swin block used as a HILA pair's extra lower-level block: ``forward(x (B, H, W, C),
    use_index)`` attends without shift on even uses and with shift window // 2 on odd ones."""

    def forward(self, x: torch.Tensor, use_index: int) -> torch.Tensor:
        return super().forward(x, 0 if use_index % 2 == 0 else self.window_size[0] // 2)


class SwinTransformerBackbone(SwinTransformer, PyramidBackbone):
    """Swin encoder returning ``{"res2": (B, C, ceil(H/4), ceil(W/4)), ..., "res5": (B, 8C,
    ceil(H/32), ceil(W/32))}`` for an input ``(B, 3, H, W)`` of any size (the patch embedding pads
    to a multiple of 4, patch merging pads odd sizes); each output is the stage's tokens after its
    ``norm{i}``, or with HILA the pair's updated lower tokens for every stage below a pair.
    timm's final norm and classifier are removed, and ``norm{i}`` exists only for the stages in
    ``out_features`` that are not below a pair. Only what produces ``out_features`` is built
    (``stage_plan``): every parameter takes part in them."""

    config_group = "MODEL.HILA_D2_SWIN"  # its yacs keys
    family = "Swin"

    @configurable
    def __init__(
        self,
        *,
        variant: str = "T",
        window_size: int = 7,
        out_features: Sequence[str] = STAGE_NAMES,
        drop_path_rate: float = 0.3,
        in_chans: int = 3,
        hila: HILASettings = HILASettings(),
    ):
        """
        Args:
            variant: "T", "S", "B" or "L".
            window_size: attention window (tokens per side) of every stage.
            out_features: subset of ``res2..res5`` to return.
            drop_path_rate: stochastic depth rate of the last block (linear from 0 over blocks).
            in_chans: input image channels.
            hila: HILA pairs and options; the default has none.
        """
        if window_size < 1:
            raise ValueError(f"MODEL.HILA_D2_SWIN.WINDOW_SIZE must be a positive int, got {window_size}")
        check_out_features(out_features, "MODEL.HILA_D2_SWIN.OUT_FEATURES")
        spec = variant_spec(SWIN_VARIANTS, variant, "Swin", "MODEL.HILA_D2_SWIN.VARIANT")
        super().__init__(
            in_chans=in_chans,
            num_classes=0,
            embed_dim=spec["embed_dim"],
            depths=tuple(spec["depths"]),
            num_heads=tuple(spec["num_heads"]),
            window_size=window_size,
            always_partition=True,  # never clamp the window or the shift to the feature size
            strict_img_size=False,  # any input size; masks are built for it on each forward
            embed_layer=partial(PatchEmbed, dynamic_img_pad=True),
            mlp_ratio=4.0,
            qkv_bias=True,
            drop_path_rate=drop_path_rate,
        )
        del self.norm, self.head  # classification only: they would never get a gradient
        # timm's stages build their blocks themselves; SwinBlock only adds methods, no state
        for stage in self.layers:
            for block in stage.blocks:
                block.__class__ = SwinBlock
        self.variant = variant
        self._out_features = list(out_features)
        dims = [spec["embed_dim"] * 2**i for i in range(len(STAGE_NAMES))]
        below_a_pair = {top - 2 for top in hila.stages}  # 0-based lower stages of the pairs
        for i, dim in enumerate(dims):
            if i not in below_a_pair:
                self.add_module(f"norm{i}", nn.LayerNorm(dim))
        self._out_feature_channels = dict(zip(STAGE_NAMES, dims))
        # every HILA part of a pair has the drop-path rate of its upper stage's first block
        drop_paths = [
            getattr(stage.blocks[0].drop_path1, "drop_prob", 0.0)  # nn.Identity at rate 0
            for stage in self.layers
        ]
        self.hila = HILAPairs(
            hila,
            dims,
            [stage.blocks for stage in self.layers],
            partial(self._build_lower_block, dims=dims, window=window_size, hila=hila,
                    drop_paths=drop_paths),
            drop_paths=drop_paths,
            norm_every_step=hila.parity_mode,
        )  # fmt: skip
        self._keep_only(
            plan_encoder(spec["depths"], out_features, hila, norm_every_step=hila.parity_mode)
        )
        self.hila.hook(
            [
                StageAccess(stage.blocks[-1], Layout.NHWC, stage.blocks, BlockCall(Layout.NHWC),
                            stride)
                for stage, stride in zip(self.layers, STAGE_STRIDES)
            ]
        )  # fmt: skip

    def _drop_unplanned(self, plan: EncoderPlan) -> None:
        self.layers = self.layers[: plan.num_stages]
        for stage, blocks in zip(self.layers, plan.blocks):
            stage.blocks = stage.blocks[:blocks]
        for i, name in enumerate(STAGE_NAMES):
            if name not in self._out_features and hasattr(self, f"norm{i}"):
                delattr(self, f"norm{i}")

    def _build_lower_block(
        self,
        top: int,
        dims: Sequence[int],
        window: int,
        hila: HILASettings,
        drop_paths: Sequence[float],
    ) -> SwinLowerBlock:
        """The extra lower-level block of the HILA pair whose upper stage is ``top`` (1-based),
        with the drop-path rate ``drop_paths[top - 1]``."""
        lower = top - 2  # 0-based index of the lower stage
        bottom_block = SwinLowerBlock(
            dim=dims[lower],
            input_resolution=(window, window),
            num_heads=SWIN_VARIANTS[self.variant]["num_heads"][lower],
            window_size=window,
            shift_size=window // 2,
            always_partition=True,
            dynamic_mask=True,
            mlp_ratio=hila.bottom_mlp_ratio,
            qkv_bias=True,
            drop_path=drop_paths[top - 1],
        )
        bottom_block.apply(init_hila_weights)
        return bottom_block

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        return {
            "variant": cfg.MODEL.HILA_D2_SWIN.VARIANT,
            "window_size": cfg.MODEL.HILA_D2_SWIN.WINDOW_SIZE,
            "out_features": cfg.MODEL.HILA_D2_SWIN.OUT_FEATURES,
            "drop_path_rate": cfg.MODEL.HILA_D2_SWIN.DROP_PATH_RATE,
            "in_chans": input_shape.channels,
            "hila": HILASettings.from_config(cfg),
        }

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """(B, in_chans, H, W) -> dict of NCHW stage outputs named in ``out_features``."""
        self.check_images(x)
        self.hila.start(x.shape[-2:])
        stages = []  # per stage: NHWC tokens after its last block
        tokens = self.patch_embed(x)  # (B, ceil(H/4), ceil(W/4), C)
        for stage in self.layers:
            tokens = stage.downsample(tokens)  # patch merging (i > 0) of the raw lower tokens
            for block in stage.blocks:  # the HILA pairs run through hooks on them
                tokens = block(tokens)
            stages.append(tokens)
        outputs = {}
        for i, (name, tokens) in enumerate(zip(STAGE_NAMES, stages)):
            if name in self._out_features:
                tokens = self.hila.updated(i + 1, tokens)  # below a pair: the pair's, normed
                norm = getattr(self, f"norm{i}", None)  # None below a pair
                tokens = tokens if norm is None else norm(tokens)
                outputs[name] = tokens.permute(0, 3, 1, 2).contiguous()
        return outputs

    def no_weight_decay_keywords(self) -> set:
        """Local parameter names exempt from weight decay in the official Swin recipe (norms are
        exempted by type). It also exempts HILA's ``relative_position_bias_table``, as the
        official HILA-Swin recipe does by name."""
        return {"relative_position_bias_table"}


@BACKBONE_REGISTRY.register()
def build_swin_backbone(cfg, input_shape: ShapeSpec) -> SwinTransformerBackbone:
    """detectron2 builder for ``MODEL.BACKBONE.NAME: build_swin_backbone`` (``MODEL.HILA_D2_SWIN.*``)."""
    return SwinTransformerBackbone(cfg, input_shape)
