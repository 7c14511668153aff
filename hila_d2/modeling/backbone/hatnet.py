"""HAT-Net (Liu et al., "Vision Transformers with Hierarchical Attention") T/S/M/L as a detectron2
backbone, written from docs/design/hatnet.md.

Every tensor is NCHW, every projection a 1x1 convolution and every norm ``GroupNorm(1, C)``. A
block is ``x + DropPath(H-MHSA(x))`` then ``x + DropPath(InvertedResidual(x))``. H-MHSA attends
within G x G windows (local step), then from every token to the r x r average-pooled map (global
step); the last stage (G = 1) is plain multi-head self-attention. Parameter names are those of
the official classification model (``patch_embed``, ``blocks.{stage}.{block}``, ``ds2..ds4``), so
its v2.0 ImageNet weights load strictly once ``classifier.*`` is dropped (``hila_d2.checkpoint``).

Unlike the official model, which needs inputs that are multiples of 224, any size runs: a map not
divisible by G is zero-padded per window after the qkv projection, padded keys are masked
(``MODEL.HATNET.MASK_PADDED_KEYS``) and the local output is cropped before the residual; the
global keys pool in ceil mode (``MODEL.HATNET.POOL_CEIL_MODE``), so a border window averages its
valid pixels. At divisible sizes neither changes anything.

With ``MODEL.HILA.STAGES`` set, the HILA pairs live in ``hila.{tag}`` (tag "12", "23", "34";
``hila_d2.modeling.hila.HILAPairs``), as in MiT: the pair's lower tokens are the lower
stage's last block output, the next stage's downsampling reads them before the pair updates them,
the extra lower-level block is a HAT-Net block of the lower stage (its expansion and kernel, no drop
path), and the pair's ``bottom_norm``-ed lower tokens replace the lower stage's output.
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from timm.layers import DropPath, trunc_normal_
from torch import nn

from ..hila import BlockCall, HILAPairs, HILASettings, Layout, StageAccess
from .pyramid import STAGE_NAMES, STAGE_STRIDES, PyramidBackbone, check_out_features, variant_spec
from .stage_plan import EncoderPlan, plan_encoder

__all__ = [
    "HATNET_VARIANTS",
    "HATNet",
    "HATNetBlock",
    "HierarchicalAttention",
    "InvertedResidual",
    "build_hatnet_backbone",
]

_HATNET_WIDE = (64, 128, 320, 512)
# variant -> per-stage widths, blocks and depthwise kernels, and channels per attention head
HATNET_VARIANTS: Dict[str, Dict[str, Sequence[int]]] = {
    "T": {"dims": (48, 96, 240, 384), "depths": (2, 2, 6, 3), "kernel_sizes": (3, 3, 3, 3), "head_dim": 48},
    "S": {"dims": _HATNET_WIDE, "depths": (2, 3, 8, 3), "kernel_sizes": (3, 3, 3, 3), "head_dim": 64},
    "M": {"dims": _HATNET_WIDE, "depths": (3, 6, 18, 3), "kernel_sizes": (5, 3, 5, 3), "head_dim": 64},
    "L": {"dims": (64, 128, 320, 640), "depths": (3, 8, 27, 3), "kernel_sizes": (3, 3, 3, 3), "head_dim": 64},
}  # fmt: skip
HATNET_EXPANSIONS = (8, 8, 4, 4)
HATNET_GRID_SIZES = (8, 7, 7, 1)
HATNET_DS_RATIOS = (8, 4, 2, 1)
STEM_WIDTH = 16


def group_norm(channels: int) -> nn.GroupNorm:
    """HAT-Net's norm: GroupNorm with one group (statistics over C, H and W of each sample)."""
    return nn.GroupNorm(1, channels, eps=1e-6)


def _heads(x: torch.Tensor, parts: int, num_heads: int) -> List[torch.Tensor]:
    """(B, parts*C, H, W) -> ``parts`` tensors (B, heads, H*W, C/heads): channel
    ``p*C + head*d + j`` is element j of head ``head`` of part p."""
    batch, channels, height, width = x.shape
    head_dim = channels // (parts * num_heads)
    x = x.reshape(batch, parts, num_heads, head_dim, height * width)
    return list(x.permute(1, 0, 2, 4, 3).unbind(0))


def _merge_heads(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, heads, H*W, d) -> (B, heads*d, H, W), channel ``head*d + j``."""
    batch, num_heads, _, head_dim = x.shape
    return x.transpose(2, 3).reshape(batch, num_heads * head_dim, height, width)


class HierarchicalAttention(nn.Module):
    """H-MHSA (docs/design/hatnet.md §2): ``(B, C, H, W) -> (B, C, H, W)``, the attention branch of
    a block.

    ``grid_size`` G > 1: self-attention inside G x G windows of ``qkv(norm(x))``, ``L =
    grid_norm(x + local)``, then every token of ``q(L)`` attends to ``kv(ds_norm(avgpool_r(L)))``;
    the output is ``proj(global + L)``. G = 1: ``proj(MHSA(qkv(norm(x))))``. ``proj_norm`` is
    never used (it exists so that official weights load strictly) and is frozen.
    """

    def __init__(
        self,
        dim: int,
        head_dim: int,
        grid_size: int,
        ds_ratio: int,
        drop: float = 0.0,
        mask_padded_keys: bool = True,
        pool_ceil_mode: bool = True,
        attention_fp32: bool = False,
    ):
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"HAT-Net width {dim} is not a multiple of the head dim {head_dim}")
        self.num_heads = dim // head_dim
        self.grid_size = grid_size
        self.ds_ratio = ds_ratio
        self.mask_padded_keys = mask_padded_keys
        self.pool_ceil_mode = pool_ceil_mode
        self.attention_fp32 = attention_fp32
        self.norm = group_norm(dim)
        self.qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.proj_norm = group_norm(dim).requires_grad_(False)
        self.proj_drop = nn.Dropout2d(drop)
        if grid_size > 1:
            self.grid_norm = group_norm(dim)
            self.ds_norm = group_norm(dim)
            self.q = nn.Conv2d(dim, dim, 1)
            self.kv = nn.Conv2d(dim, dim * 2, 1)

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) v over (..., L, d) x (..., S, d); ``key_mask`` (bool,
        broadcastable to (..., L, S)) is False at keys to ignore. Float32 inside if
        ``attention_fp32``. The inputs are made contiguous: the kernel's rounding depends on
        their memory layout, and a fixed layout keeps results independent of how the windows
        and heads were cut."""
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        # float32 inputs run in float32 only outside autocast: under it, SDPA would cast them down
        if not self.attention_fp32 or (
            q.dtype == torch.float32 and not torch.is_autocast_enabled(q.device.type)
        ):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        with torch.autocast(q.device.type, enabled=False):
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=key_mask)
        return out.to(q.dtype)

    def local_attention(self, qkv: torch.Tensor) -> torch.Tensor:
        """(B, 3C, H, W) projected tokens -> (B, C, H, W) self-attention inside G x G windows
        (row-major tokens); a map not divisible by G is zero-padded at the bottom/right first,
        with padded keys masked if ``mask_padded_keys``, and the output is cropped back."""
        batch, _, height, width = qkv.shape
        grid = self.grid_size
        pad_h, pad_w = -height % grid, -width % grid
        if pad_h or pad_w:
            qkv = F.pad(qkv, (0, pad_w, 0, pad_h))
        rows, cols = (height + pad_h) // grid, (width + pad_w) // grid
        heads = self.num_heads
        head_dim = qkv.shape[1] // (3 * heads)
        # (B, 3, heads, d, rows, G, cols, G) -> (3, B*heads, rows*cols windows, G*G, d)
        windows = qkv.reshape(batch, 3, heads, head_dim, rows, grid, cols, grid)
        windows = windows.permute(1, 0, 2, 4, 6, 5, 7, 3)
        q, k, v = windows.reshape(3, batch * heads, rows * cols, grid * grid, head_dim).unbind(0)
        key_mask = None
        if (pad_h or pad_w) and self.mask_padded_keys:
            valid = torch.zeros(rows * grid, cols * grid, dtype=torch.bool, device=qkv.device)
            valid[:height, :width] = True
            key_mask = valid.reshape(rows, grid, cols, grid).transpose(1, 2)
            key_mask = key_mask.reshape(rows * cols, 1, grid * grid)
        out = self._attend(q, k, v, key_mask)
        out = out.reshape(batch, heads, rows, cols, grid, grid, head_dim)
        out = out.permute(0, 1, 6, 2, 4, 3, 5).reshape(batch, heads * head_dim, rows * grid, cols * grid)
        return out[:, :, :height, :width]

    def merged_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H', W') average over r x r windows: ceil mode (a border window
        averages its valid pixels, H' = ceil(H / r)) or the official floor mode (H' = H // r)."""
        height, width = x.shape[-2:]
        ratio = self.ds_ratio
        if not self.pool_ceil_mode and min(height, width) < ratio:
            raise ValueError(
                f"A {height}x{width} HAT-Net feature map is smaller than its key pooling ratio "
                f"{ratio}, so floor-mode pooling leaves no keys: use a larger input or set "
                "MODEL.HATNET.POOL_CEIL_MODE True"
            )
        return F.avg_pool2d(x, ratio, ratio, ceil_mode=self.pool_ceil_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        qkv = self.qkv(self.norm(x))
        if self.grid_size == 1:
            q, k, v = _heads(qkv, 3, self.num_heads)
            out = _merge_heads(self._attend(q, k, v), height, width)
            return self.proj_drop(self.proj(out))
        local = self.grid_norm(x + self.local_attention(qkv))
        (q,) = _heads(self.q(local), 1, self.num_heads)
        merged = self.merged_tokens(local)
        k, v = _heads(self.kv(self.ds_norm(merged)), 2, self.num_heads)
        out = _merge_heads(self._attend(q, k, v), height, width)
        return self.proj_drop(self.proj(out + local))


class InvertedResidual(nn.Module):
    """HAT-Net's FFN (docs/design/hatnet.md §3), ``(B, C, H, W) -> (B, C, H, W)``: GN, 1x1 conv to
    E*C, SiLU, k x k depthwise conv, SiLU, 1x1 conv back to C, GN (convolutions without bias)."""

    def __init__(self, dim: int, expansion: int, kernel_size: int, drop: float = 0.0):
        super().__init__()
        hidden = dim * expansion
        self.conv1 = nn.Sequential(group_norm(dim), nn.Conv2d(dim, hidden, 1, bias=False), nn.SiLU())
        self.conv2 = nn.Sequential(
            nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden, bias=False),
            nn.SiLU(),
        )
        self.conv3 = nn.Sequential(nn.Conv2d(hidden, dim, 1, bias=False), group_norm(dim))
        self.drop = nn.Dropout2d(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.conv3(self.drop(self.conv2(self.conv1(x)))))


class HATNetBlock(nn.Module):
    """``x + DropPath(attn(x))`` then ``x + DropPath(conv(x))`` on (B, C, H, W)."""

    def __init__(
        self,
        dim: int,
        head_dim: int,
        grid_size: int,
        ds_ratio: int,
        expansion: int,
        kernel_size: int,
        drop_path: float = 0.0,
        drop: float = 0.0,
        **attention_options,
    ):
        super().__init__()
        self.attn = HierarchicalAttention(
            dim, head_dim, grid_size, ds_ratio, drop=drop, **attention_options
        )
        self.conv = InvertedResidual(dim, expansion, kernel_size, drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(x))
        return x + self.drop_path(self.conv(x))


def _updated_channels_first(pairs: HILAPairs, stage: int, output: torch.Tensor) -> torch.Tensor:
    """``pairs.updated`` for an NCHW stage output (B, C, H, W), contiguous."""
    updated = pairs.updated(stage, output.permute(0, 2, 3, 1))
    return updated.permute(0, 3, 1, 2).contiguous()


class HATNetLowerBlock(HATNetBlock):
    """A HAT-Net block used as a HILA pair's extra lower-level block: ``forward(x (B, H, W, C),
    use_index)``; every use is the same block."""

    def forward(self, x: torch.Tensor, use_index: int) -> torch.Tensor:
        return super().forward(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class Downsample(nn.Module):
    """Between stages: 3x3 conv with stride 2 (ceil(H/2) x ceil(W/2)), then GN; no activation."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, 3, stride=2, padding=1)
        self.norm = group_norm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


def init_hatnet_weights(module: nn.Module) -> None:
    """Training from scratch (docs/design/hatnet.md §3): conv/linear weights trunc-normal(0.02),
    biases 0, GN (1, 0)."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.GroupNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _stage_values(name: str, values: Sequence[int], default: Sequence[int]) -> tuple:
    """``values`` (or ``default`` when empty) as 4 positive ints; ValueError naming
    ``MODEL.HATNET.{name}`` otherwise."""
    values = tuple(values) or tuple(default)
    if len(values) != 4 or min(values) < 1:
        raise ValueError(f"MODEL.HATNET.{name} needs 4 entries >= 1, got {list(values)}")
    return values


class HATNet(PyramidBackbone):
    """HAT-Net encoder returning ``{"res2": (B, C1, ceil(H/4), ceil(W/4)), ..., "res5": (B, C4,
    ceil(H/32), ceil(W/32))}`` for an input ``(B, 3, H, W)`` of any size; each output is the
    stage's last block output (no extra norm, as PVT's dense backbones), or with HILA the pair's
    updated, normalised lower tokens for every stage below a pair. Only what produces
    ``out_features`` is built (``stage_plan``): every parameter takes part in them."""

    config_group = "MODEL.HATNET"  # its yacs keys
    family = "HAT-Net"

    @configurable
    def __init__(
        self,
        *,
        variant: str = "T",
        out_features: Sequence[str] = STAGE_NAMES,
        dims: Sequence[int] = (),
        depths: Sequence[int] = (),
        expansions: Sequence[int] = (),
        kernel_sizes: Sequence[int] = (),
        head_dim: int = 0,
        grid_sizes: Sequence[int] = HATNET_GRID_SIZES,
        ds_ratios: Sequence[int] = HATNET_DS_RATIOS,
        drop_path_rate: float = 0.1,
        drop_rate: float = 0.0,
        frozen_stages: int = -1,
        mask_padded_keys: bool = True,
        pool_ceil_mode: bool = True,
        attention_fp32: bool = False,
        in_chans: int = 3,
        hila: HILASettings = HILASettings(),
    ):
        """
        Args:
            variant: "T", "S", "M" or "L"; sets every per-stage value left empty.
            out_features: subset of ``res2..res5`` to return.
            dims, depths, expansions, kernel_sizes: per-stage widths, blocks, inverted residual
                expansions and depthwise kernels (4 each; empty = the variant's).
            head_dim: channels per attention head (0 = the variant's).
            grid_sizes, ds_ratios: local window G and global pooling ratio r per stage.
            drop_path_rate: stochastic depth rate of the last block (linear from 0 over blocks).
            drop_rate: channel dropout after the attention projection and in the FFNs.
            frozen_stages: -1 none, 0 the stem, k the stem and stages 1..k with their
                downsampling layers (no gradients, always in eval mode).
            mask_padded_keys, pool_ceil_mode, attention_fp32: see ``HierarchicalAttention``.
            in_chans: input image channels.
            hila: HILA pairs and options; the default has none.
        """
        super().__init__()
        check_out_features(out_features, "MODEL.HATNET.OUT_FEATURES")
        spec = variant_spec(HATNET_VARIANTS, variant, "HAT-Net", "MODEL.HATNET.VARIANT")
        dims = _stage_values("DIMS", dims, spec["dims"])
        depths = _stage_values("DEPTHS", depths, spec["depths"])
        expansions = _stage_values("EXPANSIONS", expansions, HATNET_EXPANSIONS)
        kernel_sizes = _stage_values("KERNEL_SIZES", kernel_sizes, spec["kernel_sizes"])
        grid_sizes = _stage_values("GRID_SIZES", grid_sizes, HATNET_GRID_SIZES)
        ds_ratios = _stage_values("DS_RATIOS", ds_ratios, HATNET_DS_RATIOS)
        head_dim = head_dim or spec["head_dim"]
        if any(dim % head_dim for dim in dims):
            raise ValueError(
                f"Every width in MODEL.HATNET.DIMS {list(dims)} must be a multiple of "
                f"MODEL.HATNET.HEAD_DIM {head_dim}"
            )
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"MODEL.HATNET.FROZEN_STAGES must be in -1..4, got {frozen_stages}")
        if hila.stages and hila.bottom_mlp_ratio != HILASettings.bottom_mlp_ratio:
            raise ValueError(
                "MODEL.HILA.BOTTOM_MLP_RATIO does not apply to HAT-Net: its HILA lower-level "
                "block is a block of the lower stage, with that stage's expansion "
                "(MODEL.HATNET.EXPANSIONS); leave it at 4.0"
            )
        self.variant = variant
        self.in_chans = in_chans
        self.frozen_stages = frozen_stages
        self._out_features = list(out_features)
        self._out_feature_channels = dict(zip(STAGE_NAMES, dims))
        self._block_args = [
            dict(
                dim=dims[i],
                head_dim=head_dim,
                grid_size=grid_sizes[i],
                ds_ratio=ds_ratios[i],
                expansion=expansions[i],
                kernel_size=kernel_sizes[i],
                drop=drop_rate,
                mask_padded_keys=mask_padded_keys,
                pool_ceil_mode=pool_ceil_mode,
                attention_fp32=attention_fp32,
            )
            for i in range(len(STAGE_NAMES))
        ]

        self.patch_embed = nn.Sequential(
            nn.Conv2d(in_chans, STEM_WIDTH, 3, stride=2, padding=1),
            group_norm(STEM_WIDTH),
            nn.SiLU(),
            nn.Conv2d(STEM_WIDTH, dims[0], 3, stride=2, padding=1),
        )
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # linspace
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.blocks = nn.ModuleList(
            nn.ModuleList(
                HATNetBlock(drop_path=rates[start + j], **self._block_args[i])
                for j in range(depth)
            )
            for i, (start, depth) in enumerate(zip(starts, depths))
        )
        for i in range(1, len(STAGE_NAMES)):
            self.add_module(f"ds{i + 1}", Downsample(dims[i - 1], dims[i]))
        self.apply(init_hatnet_weights)
        self.hila = HILAPairs(hila, dims, self.blocks, self._build_lower_block)
        self._keep_only(plan_encoder(depths, out_features, hila))
        self.hila.hook(
            [
                StageAccess(stage[-1], Layout.NCHW, stage, BlockCall(Layout.NCHW), stride)
                for stage, stride in zip(self.blocks, STAGE_STRIDES)
            ]
        )
        for module in self._frozen_modules():
            module.requires_grad_(False)

    def _build_lower_block(self, top: int) -> HATNetLowerBlock:
        """The extra lower-level block of the HILA pair whose upper stage is ``top`` (1-based)."""
        bottom_block = HATNetLowerBlock(**self._block_args[top - 2])
        bottom_block.apply(init_hatnet_weights)
        return bottom_block

    def _drop_unplanned(self, plan: EncoderPlan) -> None:
        for i in range(plan.num_stages, len(self.blocks)):
            delattr(self, f"ds{i + 1}")
        self.blocks = self.blocks[: plan.num_stages]
        for i, blocks in enumerate(plan.blocks[: plan.num_stages]):
            self.blocks[i] = self.blocks[i][:blocks]

    def _frozen_modules(self) -> List[nn.Module]:
        """The stem (FROZEN_STAGES >= 0) and stages 1..FROZEN_STAGES with their ``ds`` layers
        (those that are built)."""
        if self.frozen_stages < 0:
            return []
        modules: List[nn.Module] = [self.patch_embed]
        for i in range(min(self.frozen_stages, len(self.blocks))):
            modules += ([getattr(self, f"ds{i + 1}")] if i else []) + [self.blocks[i]]
        return modules

    def train(self, mode: bool = True) -> "HATNet":
        """``nn.Module.train``, except that frozen stages stay in eval mode (no drop path)."""
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        hatnet = cfg.MODEL.HATNET
        return {
            "variant": hatnet.VARIANT,
            "out_features": hatnet.OUT_FEATURES,
            "dims": hatnet.DIMS,
            "depths": hatnet.DEPTHS,
            "expansions": hatnet.EXPANSIONS,
            "kernel_sizes": hatnet.KERNEL_SIZES,
            "head_dim": hatnet.HEAD_DIM,
            "grid_sizes": hatnet.GRID_SIZES,
            "ds_ratios": hatnet.DS_RATIOS,
            "drop_path_rate": hatnet.DROP_PATH_RATE,
            "drop_rate": hatnet.DROP_RATE,
            "frozen_stages": hatnet.FROZEN_STAGES,
            "mask_padded_keys": hatnet.MASK_PADDED_KEYS,
            "pool_ceil_mode": hatnet.POOL_CEIL_MODE,
            "attention_fp32": hatnet.ATTENTION_FP32,
            "in_chans": input_shape.channels,
            "hila": HILASettings.from_config(cfg),
        }

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """(B, in_chans, H, W) -> dict of NCHW stage outputs named in ``out_features``."""
        self.check_images(x)
        self.hila.start(x.shape[-2:])
        outputs: List[torch.Tensor] = []  # NCHW stage outputs
        tokens = self.patch_embed(x)  # (B, C1, ceil(H/4), ceil(W/4))
        for i, stage in enumerate(self.blocks):
            if i:
                tokens = getattr(self, f"ds{i + 1}")(outputs[-1])
            for block in stage:  # the HILA pairs run through hooks on them
                tokens = block(tokens)
            outputs.append(tokens)
        return {
            name: _updated_channels_first(self.hila, index + 1, out)
            for index, (name, out) in enumerate(zip(STAGE_NAMES, outputs))
            if name in self._out_features
        }

    def no_weight_decay_keywords(self) -> set:
        """Local parameter names exempt from weight decay: none (PVT's recipe decays every
        parameter; detectron2's WEIGHT_DECAY_NORM still applies to the GroupNorms)."""
        return set()


@BACKBONE_REGISTRY.register()
def build_hatnet_backbone(cfg, input_shape: ShapeSpec) -> HATNet:
    """detectron2 builder for ``MODEL.BACKBONE.NAME: build_hatnet_backbone`` (``MODEL.HATNET.*``)."""
    return HATNet(cfg, input_shape)
