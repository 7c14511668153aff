"""A HILA pair: the inter-level blocks of two adjacent encoder stages, interleaved with the upper
stage's blocks following the official schedule (docs/design/hila.md §4)."""
from functools import partial
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import nn

from .blocks import LAYER_NORM_EPS, BottomUpBlock, TopDownBlock, init_hila_weights
from .recompute import checkpointed_step
from .schedule import PairPlan, hila_schedule, plan_pair
from .settings import HILASettings

__all__ = ["HILAPair"]


class HILAPair(nn.Module):
    """The HILA modules of one (lower, upper) stage pair and their schedule.

    ``bottom_block`` is the extra lower-level self-attention block supplied by the encoder, called
    as ``bottom_block(x (B, Hb, Wb, Cb), use_index)`` where ``use_index`` counts its uses in this
    forward pass from 0. With ``norm_every_step`` (the official Swin variant, in parity mode)
    ``bottom_norm`` runs after every upper block that is not followed by Top-Down; otherwise it
    runs once at the end (the official MiT ``prevnorm``). The weights are shared by all iterations.
    ``restrict(plan)`` keeps only the steps and modules that an encoder's used outputs need.

    In training, what each step keeps for the backward pass is chosen per module: the Top-Down
    and Bottom-Up blocks keep little by construction (their attention cores and Mix-FFNs
    recompute the cheap rest themselves); a lower-level block runs under selective activation
    checkpointing (``recompute``: Swin's, HAT-Net's, timm's) unless it says
    ``selective_checkpointing = False`` (MiT's, which recomputes its activations itself, and timm
    blocks that change a matmul's result in place). With ``checkpoint`` every
    step runs under full activation checkpointing (less memory, one more forward of the steps).

    ``set_strength(s)`` (the warmup of SOLVER.HILA_WARMUP_ITERS, ``hila_d2.hooks``) scales what
    each step changes: the Bottom-Up step makes ``top + s * (BU(top, bottom) - top)``, the
    Top-Down step with its lower-level block ``bottom + s * (block(TD(top, bottom)) - bottom)``.
    At s = 0 both token streams are those of the plain encoder (the lower one then only passes
    ``bottom_norm``); at s = 1, the default, the steps run unscaled.
    """

    def __init__(
        self,
        bottom_dim: int,
        top_dim: int,
        bottom_block: nn.Module,
        *,
        stride: int = 1,
        num_heads: int = 1,
        mlp_ratio: float = 4.0,
        info_weights: Sequence[float] = (0.5, 0.5),
        drop_path: float = 0.0,
        parity_mode: bool = True,
        norm_every_step: bool = False,
        checkpoint: bool = False,
    ):
        super().__init__()
        hila_schedule(1, stride)  # validates the stride
        self.stride = stride
        self.norm_every_step = norm_every_step
        self.checkpoint = checkpoint
        block_args = dict(
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            info_weights=info_weights,
            drop_path=drop_path,
            parity_mode=parity_mode,
        )
        self.top_down = TopDownBlock(bottom_dim, top_dim, **block_args)
        self.bottom_up = BottomUpBlock(bottom_dim, top_dim, **block_args)
        self.top_down.apply(init_hila_weights)
        self.bottom_up.apply(init_hila_weights)
        self.bottom_block = bottom_block
        # how to call bottom_block(x (B, Hb, Wb, Cb), use_index) when it is another encoder's block
        # in its own layout (hila_d2.modeling.hila.attach); None: call it directly
        self.bottom_block_call: Optional[Callable[..., torch.Tensor]] = None
        self.bottom_norm = nn.LayerNorm(bottom_dim, eps=LAYER_NORM_EPS)
        self.plan: Optional[PairPlan] = None  # None: every step of the schedule
        # a tensor, so that a changing strength neither recompiles nor syncs; not saved
        self.register_buffer("strength", torch.ones(()), persistent=False)
        self.scaled = False  # strength < 1: the steps' changes are scaled

    def set_strength(self, strength: float) -> None:
        """Scale each step's change by ``strength`` in [0, 1] from the next forward on."""
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"HILA strength must be in [0, 1], got {strength}")
        self.strength.fill_(strength)
        self.scaled = strength < 1.0

    def restrict(self, plan: PairPlan) -> None:
        """Run only the steps of ``plan`` and drop the modules that none of them uses."""
        self.plan = plan
        if not any(plan.bottom_up):
            self.bottom_up = None
        if not any(plan.top_down):
            self.top_down = self.bottom_block = None
        if not (plan.final_norm or any(plan.step_norm)):
            self.bottom_norm = None

    @classmethod
    def from_settings(
        cls,
        hila: HILASettings,
        top: int,
        bottom_dim: int,
        top_dim: int,
        bottom_block: nn.Module,
        **kwargs,
    ) -> "HILAPair":
        """The pair whose upper stage is ``top`` (1-based) with the stride, heads, MLP ratio, info
        weights, parity mode and checkpointing of ``hila``; ``kwargs`` (``drop_path``,
        ``norm_every_step``) as in ``__init__``."""
        return cls(
            bottom_dim,
            top_dim,
            bottom_block,
            stride=hila.strides[top - 1],
            num_heads=hila.num_heads,
            mlp_ratio=hila.mlp_ratio,
            info_weights=hila.info_weights,
            parity_mode=hila.parity_mode,
            checkpoint=hila.checkpoint,
            **kwargs,
        )

    def forward(
        self,
        top: torch.Tensor,
        bottom: torch.Tensor,
        top_blocks: Sequence[Callable[[torch.Tensor], torch.Tensor]],
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Run the upper stage's blocks with HILA interleaved.

        Args:
            top: (B, Ht, Wt, Ct) upper tokens entering the stage's first block.
            bottom: (B, Hb, Wb, Cb) the lower stage's tokens.
            top_blocks: the upper stage's blocks, each (B, Ht, Wt, Ct) -> (B, Ht, Wt, Ct) (the
                first ``plan.blocks`` of them when the pair is restricted).
        Returns:
            (upper tokens after the last block, updated and normalised lower tokens); with a
            plan, either may be left partly updated when that stream is not used.
        """
        plan = self.plan or plan_pair(len(top_blocks), self.stride, self.norm_every_step)
        uses = 0
        for j in range(plan.steps):
            top = self.before_block(j, top, bottom, plan)
            if j < plan.blocks:
                top = top_blocks[j](top)
            bottom, uses = self.after_block(j, top, bottom, uses, plan)
        return top, self.finish(bottom, plan.steps, plan)

    def before_block(self, j: int, top: torch.Tensor, bottom: torch.Tensor, plan: PairPlan):
        """The upper tokens (B, Ht, Wt, Ct) entering upper block ``j``: Bottom-Up when ``plan``
        schedules it there."""
        if plan.bottom_up[j]:
            top = self._scaled(top, self._run(self.bottom_up, top, bottom))
        return top

    def after_block(
        self, j: int, top: torch.Tensor, bottom: torch.Tensor, uses: int, plan: PairPlan
    ) -> Tuple[torch.Tensor, int]:
        """(lower tokens (B, Hb, Wb, Cb), uses of the lower-level block so far) after upper block
        ``j`` returned ``top``: Top-Down and the lower-level block, or a step norm, as ``plan``
        schedules."""
        if plan.top_down[j]:
            updated = self._run(self.top_down, top, bottom)
            block = self.bottom_block_call or self.bottom_block
            updated = self._run(
                partial(block, use_index=uses), updated,
                selective=getattr(self.bottom_block, "selective_checkpointing", True),
            )  # fmt: skip
            return self._scaled(bottom, updated), uses + 1
        if plan.step_norm[j]:
            bottom = self.bottom_norm(bottom)
        return bottom, uses

    def finish(self, bottom: torch.Tensor, done: int, plan: PairPlan) -> torch.Tensor:
        """The lower tokens the pair returns, once the steps before ``done`` have run: the step
        norms scheduled after blocks that do not run, and the final norm."""
        for j in range(done, plan.steps):
            bottom, _ = self.after_block(j, bottom, bottom, 0, plan)  # only step norms remain
        if plan.final_norm:
            bottom = self.bottom_norm(bottom)
        return bottom

    def _scaled(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """What a step makes of ``before`` (its result ``after``) at the pair's strength."""
        if not self.scaled:
            return after
        return (before + self.strength * (after - before)).to(after.dtype)

    def _run(
        self, step: Callable[..., torch.Tensor], *inputs: torch.Tensor, selective: bool = False
    ) -> torch.Tensor:
        """``step(*inputs)``; in training fully checkpointed with ``checkpoint``, else
        selectively checkpointed with ``selective``, else as it is."""
        if not (self.training and torch.is_grad_enabled()) or not (selective or self.checkpoint):
            return step(*inputs)
        return checkpointed_step(step, *inputs, recompute_all=self.checkpoint)

    @torch.no_grad()
    def init_bottom_block_from(self, block: nn.Module) -> None:
        """Copy ``block``'s weights into ``bottom_block`` in place (its parameters stay the same
        objects, so an optimiser built before keeps training them); ValueError on a shape
        mismatch, e.g. another MLP ratio (MODEL.HILA.BOTTOM_MLP_RATIO)."""
        source = block.state_dict()
        target = self.bottom_block.state_dict()
        mismatched = [k for k in target if k in source and source[k].shape != target[k].shape]
        if mismatched or set(source) != set(target):
            raise ValueError(
                "Cannot initialise the HILA lower-level block from the lower stage's last block: "
                f"their parameters differ ({mismatched or sorted(set(source) ^ set(target))}). "
                "Set MODEL.HILA.BOTTOM_MLP_RATIO to the encoder's MLP ratio (4)."
            )
        self.bottom_block.load_state_dict(source)
