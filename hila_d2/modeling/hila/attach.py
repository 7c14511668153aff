"""A HILA pair run inside an encoder's own forward pass through hooks on the encoder's modules.

No module of the encoder is replaced, so its parameter names, and the checkpoints written for
it, stay the encoder's own. ``HookedPair`` registers:

* a forward hook on the lower stage, which keeps the stage's output (the lower tokens);
* a forward pre-hook on each upper block that runs, which applies the Bottom-Up step of the
  schedule before the block (replacing the block's input);
* a forward hook on each such block, which applies the Top-Down step and the pair's lower-level
  block after it, and after the last one the pair's final norm.

The upper stage's own downsampling reads the lower stage's output before the pair updates it
(as in the official HILA-SegFormer); the encoder takes the updated lower tokens from ``result``
after its forward pass. Tokens cross the hooks in the stages' own layouts (``layouts``); an
encoder describes each stage once (``StageAccess``), and ``HILAPairs.hook`` attaches its pairs.
"""
from dataclasses import dataclass
from functools import partial
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from .layouts import Layout, from_channels_last, to_channels_last
from .pair import HILAPair

__all__ = ["BlockCall", "HookedPair", "StageAccess"]


@dataclass(frozen=True)
class BlockCall:
    """How a stage calls its blocks: ``block(x, *grid)`` with x in ``layout``; ``grid_args``:
    "" (no more arguments), "tuple" (the grid (H, W) as one argument, PVTv2) or "ints" (H, W)."""

    layout: Layout
    grid_args: str = ""

    def args(self, grid: Tuple[int, int]) -> Tuple[Any, ...]:
        """The arguments after the tokens for a block on ``grid``."""
        return {"": (), "tuple": (grid,), "ints": grid}[self.grid_args]


@dataclass(frozen=True)
class StageAccess:
    """How HILA reaches one stage of an encoder: ``output``, the module whose output is the
    stage's tokens (in ``output_layout``), which a pair above reads as its lower tokens; its
    ``blocks`` in order (a pair below runs between the first ``plan.blocks`` of them), called as
    ``block_call`` says; its ``stride`` (its grid is ``ceil(H / stride)`` x ``ceil(W / stride)``
    for images of H x W)."""

    output: nn.Module
    output_layout: Layout
    blocks: Sequence[nn.Module]
    block_call: BlockCall
    stride: int


class HookedPair:
    """Runs ``pair`` (a ``HILAPair`` restricted to its plan) between the stages ``lower`` and
    ``upper``. ``lower_call`` says how to call the pair's lower-level block when it is a block
    of the encoder in the encoder's layout (None: it takes channels-last tokens and its use
    index, ``HILAPair``'s own convention)."""

    def __init__(
        self,
        pair: HILAPair,
        lower: StageAccess,
        upper: StageAccess,
        lower_call: Optional[BlockCall] = None,
    ):
        self.pair = pair
        self.plan = pair.plan
        self.lower, self.upper, self.lower_call = lower, upper, lower_call
        self.grids: Tuple[Tuple[int, int], Tuple[int, int]] = ((0, 0), (0, 0))
        self._bottom: Optional[torch.Tensor] = None
        self._uses = 0
        self._result: Optional[torch.Tensor] = None
        if lower_call is not None:
            pair.bottom_block_call = self._call_bottom_block
        lower.output.register_forward_hook(self._capture)
        for j, block in enumerate(upper.blocks[: self.plan.blocks]):
            block.register_forward_pre_hook(partial(self._before, j), with_kwargs=True)
            block.register_forward_hook(partial(self._after, j))

    def start(self, image_size: Tuple[int, int]) -> None:
        """Prepare a forward pass of the encoder on images of ``image_size`` (H, W)."""
        self.grids = tuple(
            (-(-image_size[0] // stage.stride), -(-image_size[1] // stage.stride))
            for stage in (self.lower, self.upper)
        )
        self._bottom = self._result = None

    def result(self) -> torch.Tensor:
        """The updated lower tokens of the last forward pass, channels-last (B, Hb, Wb, Cb)."""
        if self._result is None:
            raise RuntimeError("The HILA pair did not run: the encoder's stages were not called")
        return self._result

    def _capture(self, module: nn.Module, args: Tuple[Any, ...], output: torch.Tensor) -> None:
        self._bottom = to_channels_last(output, self.lower.output_layout, self.grids[0])
        self._uses = 0

    def _before(self, j: int, module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]):
        if not self.plan.bottom_up[j]:
            return None
        layout, grid = self.upper.block_call.layout, self.grids[1]
        top = to_channels_last(args[0], layout, grid)
        top = self.pair.before_block(j, top, self._bottom, self.plan)
        return (from_channels_last(top, layout), *args[1:]), kwargs

    def _after(self, j: int, module: nn.Module, args: Tuple[Any, ...], output: torch.Tensor):
        top = to_channels_last(output, self.upper.block_call.layout, self.grids[1])
        bottom, uses = self.pair.after_block(j, top, self._bottom, self._uses, self.plan)
        self._bottom, self._uses = bottom, uses
        if j == self.plan.blocks - 1:
            self._result = self.pair.finish(self._bottom, j + 1, self.plan)

    def _call_bottom_block(self, x: torch.Tensor, use_index: int) -> torch.Tensor:
        """The pair's lower-level block on channels-last tokens (B, Hb, Wb, Cb)."""
        layout, grid = self.lower_call.layout, self.grids[0]
        out = self.pair.bottom_block(from_channels_last(x, layout), *self.lower_call.args(grid))
        return to_channels_last(out, layout, grid)
