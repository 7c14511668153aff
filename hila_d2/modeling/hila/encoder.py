"""HILA attached to a hierarchical encoder: ``HILAPairs``, the encoder's pairs, which runs its
stages, and the "no HILA pretraining" step of checkpoint loading
(``init_bottom_blocks_from_lower_stage``)."""
import logging
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .pair import HILAPair
from .settings import HILASettings, pair_tag

__all__ = ["HILAPairs", "apply_channels_first", "init_bottom_blocks_from_lower_stage"]

logger = logging.getLogger(__name__)

Block = Callable[[torch.Tensor], torch.Tensor]


def apply_channels_first(function: Block, x: torch.Tensor) -> torch.Tensor:
    """Apply an NCHW ``function`` to channels-last tokens (B, H, W, C) -> (B, H, W, C)."""
    return function(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class HILAPairs(nn.ModuleDict):
    """An encoder's HILA pairs by ``pair_tag`` (its ``hila`` attribute: state-dict keys
    ``hila.12.…``, ``hila.23.…``, ``hila.34.…``; empty with HILA off), and the stage loop.

    Built from the settings ``hila`` (checked against ``len(dims)`` stages), the stage widths
    ``dims``, the encoder's ``stage_blocks`` (the blocks of each stage, in order) and
    ``lower_block(top)``, which builds the extra lower-level block of the pair whose upper stage
    is ``top`` (1-based), called as ``block(x (B, Hb, Wb, Cb), use_index)``. ``drop_paths[t - 1]``
    is the drop-path rate of the pair whose upper stage is t (default 0); ``norm_every_step`` as
    in ``HILAPair``. ``channels_first``: the encoder's tokens and blocks are NCHW (the pairs
    themselves work channels-last).

    With ``hila.init_bottom_from_lower_stage``, a pair's lower-level block starts as a copy of the
    lower stage's last block (``bottom_block_sources``) when a loaded checkpoint lacks it
    (``init_bottom_blocks_from_lower_stage``).
    """

    def __init__(
        self,
        hila: HILASettings,
        dims: Sequence[int],
        stage_blocks: Sequence[Sequence[nn.Module]],
        lower_block: Callable[[int], nn.Module],
        *,
        drop_paths: Optional[Sequence[float]] = None,
        norm_every_step: bool = False,
        channels_first: bool = False,
    ):
        hila.check(num_stages=len(dims))
        drop_paths = drop_paths or [0.0] * len(dims)
        tops = sorted(hila.stages)
        super().__init__(
            {
                pair_tag(top): HILAPair.from_settings(
                    hila,
                    top,
                    dims[top - 2],
                    dims[top - 1],
                    lower_block(top),
                    drop_path=drop_paths[top - 1],
                    norm_every_step=norm_every_step,
                )
                for top in tops
            }
        )
        self.channels_first = channels_first
        # a plain dict: the lower stages' blocks belong to the encoder, not to the pairs
        self._copy_sources: Dict[str, nn.Module] = (
            {pair_tag(top): stage_blocks[top - 2][-1] for top in tops}
            if hila.init_bottom_from_lower_stage
            else {}
        )

    def bottom_block_sources(self) -> Dict[str, Tuple[nn.Module, nn.Module]]:
        """By tag, (the pair's lower-level block, the lower stage's last block it starts as a copy
        of) for each pair that has such a block; empty without
        ``MODEL.HILA.INIT_BOTTOM_FROM_LOWER_STAGE``."""
        return {
            tag: (self[tag].bottom_block, source)
            for tag, source in self._copy_sources.items()
            if tag in self and self[tag].bottom_block is not None
        }

    def set_strength(self, strength: float) -> None:
        """``HILAPair.set_strength`` of every pair."""
        for pair in self.values():
            pair.set_strength(strength)

    def run_stage(
        self,
        top: int,
        blocks: Sequence[Block],
        tokens: torch.Tensor,
        stage_outputs: List[torch.Tensor],
    ) -> torch.Tensor:
        """Run stage ``top`` (1-based) on its input ``tokens``: its ``blocks`` in turn or, when it
        is the upper stage of a pair, the pair, which also replaces ``stage_outputs[-1]`` (the
        lower stage's output, ``stage_outputs`` being those of the stages below) by its updated
        lower tokens. Tokens and blocks are channels-last (B, H, W, C), or NCHW with
        ``channels_first``. Returns the stage's tokens after its last block."""
        tag = pair_tag(top)
        if tag not in self:
            for block in blocks:
                tokens = block(tokens)
            return tokens
        pair = self[tag]
        if not self.channels_first:
            tokens, stage_outputs[-1] = pair(tokens, stage_outputs[-1], blocks)
            return tokens
        top_tokens, bottom = pair(
            tokens.permute(0, 2, 3, 1),
            stage_outputs[-1].permute(0, 2, 3, 1),
            [partial(apply_channels_first, block) for block in blocks],
        )
        stage_outputs[-1] = bottom.permute(0, 3, 1, 2)
        return top_tokens.permute(0, 3, 1, 2)


def init_bottom_blocks_from_lower_stage(model: nn.Module, missing_keys: Sequence[str]) -> List[str]:
    """The "no HILA pretraining" step (``MODEL.HILA.INIT_BOTTOM_FROM_LOWER_STAGE``) after loading
    a checkpoint into ``model`` that lacked ``missing_keys`` (state-dict keys relative to
    ``model``).

    For each pair of the ``HILAPairs`` in ``model`` with ``bottom_block_sources``: when the
    checkpoint lacked every weight of the pair's lower-level block and held all of the lower
    stage's last block, that block is copied into the pair's (in place, so an optimiser built
    before keeps training it) and the copy is logged; when it lacked the lower stage's block or
    held part of the pair's, the pair's block keeps its initialisation, with a warning. Returns
    the keys of the blocks copied into, which the checkpoint no longer needs to hold.
    """
    names = {module: name for name, module in model.named_modules()}
    missing = set(missing_keys)
    initialised: List[str] = []
    for pairs in (module for module in model.modules() if isinstance(module, HILAPairs)):
        for tag, (block, source) in pairs.bottom_block_sources().items():
            own = [f"{names[block]}.{key}" for key in block.state_dict()]
            if not any(key in missing for key in own):
                continue  # the checkpoint has the pair's block
            source_name = names[source]
            if not all(key in missing for key in own) or any(
                f"{source_name}.{key}" in missing for key in source.state_dict()
            ):
                logger.warning(
                    "HILA pair %s: not initialising its lower-level block from %s (the checkpoint "
                    "lacks that block or has part of the pair's own block)", tag, source_name
                )
                continue
            pairs[tag].init_bottom_block_from(source)
            initialised += own
            logger.info("HILA pair %s: lower-level block initialised from %s", tag, source_name)
    return initialised
