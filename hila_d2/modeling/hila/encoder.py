"""HILA attached to a hierarchical encoder: ``HILAPairs``, the encoder's pairs, hooked into its
stages (``attach``), and the "no HILA pretraining" step of checkpoint loading
(``init_bottom_blocks_from_lower_stage``)."""
import logging
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .attach import BlockCall, HookedPair, StageAccess
from .pair import HILAPair
from .settings import HILASettings, pair_tag

__all__ = ["HILAPairs", "init_bottom_blocks_from_lower_stage"]

logger = logging.getLogger(__name__)

class HILAPairs(nn.ModuleDict):
    """An encoder's HILA pairs by ``pair_tag`` (its ``hila`` attribute: state-dict keys
    ``hila.12.…``, ``hila.23.…``, ``hila.34.…``; empty with HILA off), attached to the
    encoder's stages.

    Built from the settings ``hila`` (checked against ``len(dims)`` stages), the stage widths
    ``dims``, the encoder's ``stage_blocks`` (the blocks of each stage, in order) and
    ``lower_block(top)``, which builds the extra lower-level block of the pair whose upper stage
    is ``top`` (1-based), called as ``block(x (B, Hb, Wb, Cb), use_index)``. ``drop_paths[t - 1]``
    is the drop-path rate of the pair whose upper stage is t (default 0); ``norm_every_step`` as
    in ``HILAPair``. The encoder attaches the pairs to its stages with ``hook``, calls ``start``
    at the beginning of its forward pass and reads each stage's output through ``updated``.

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
        self._hooked: Dict[int, HookedPair] = {}  # by lower stage, once ``hook`` attached them
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

    def hook(
        self, stages: Sequence[StageAccess], lower_calls: Optional[Sequence[BlockCall]] = None
    ) -> None:
        """Attach every pair to the encoder's stages (``stages[i]``: stage i + 1), through hooks
        (``HookedPair``), once the pairs are restricted to their plans. ``lower_calls[i]`` says
        how to call the lower-level block of the pair whose lower stage is i + 1 when it is a
        block of the encoder (None: it takes channels-last tokens and its use index)."""
        self._hooked = {
            int(tag[0]): HookedPair(
                pair,
                stages[int(tag[0]) - 1],
                stages[int(tag[1]) - 1],
                lower_calls[int(tag[0]) - 1] if lower_calls else None,
            )
            for tag, pair in self.items()
        }

    def start(self, image_size: Tuple[int, int]) -> None:
        """Call at the start of the encoder's forward pass on images of ``image_size`` (H, W)."""
        for hooked in self._hooked.values():
            hooked.start(image_size)

    def updated(self, stage: int, output: torch.Tensor) -> torch.Tensor:
        """The output of ``stage`` (1-based) after the encoder's forward pass: the updated lower
        tokens (B, H, W, C) of the pair above it, else ``output`` as it is."""
        hooked = self._hooked.get(stage)
        return output if hooked is None else hooked.result()


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
