"""Which stages, blocks and HILA steps an encoder runs for the outputs it is asked for.

A parameter that produces no requested output gets no gradient, and DistributedDataParallel with
``find_unused_parameters=False`` (detectron2's default) then stops at the second iteration. So an
encoder builds everything (keeping the random initialisation of the full model), plans, and drops
what the plan does not run: stages above the highest one needed, the blocks of a top stage after
its last useful HILA step, the norms of tokens nobody reads, and the HILA steps (and their
modules) whose results are never read.

A stage's tokens after its blocks are read by the next stage (its downsampling), by the pair
above it (as that pair's lower tokens) or, without a pair above, as the stage's output. A pair
returns the lower stage's output and the upper stage's tokens; ``plan_pair`` finds its steps.
"""
from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

from ..hila import HILASettings, PairPlan, hila_schedule, plan_pair
from .pyramid import STAGE_NAMES

__all__ = ["EncoderPlan", "plan_encoder"]


@dataclass(frozen=True)
class EncoderPlan:
    """``blocks[i]``: blocks that run in stage i (0-based; 0: the stage does not run; the running
    stages are a prefix); ``tokens_used[i]``: stage i's tokens after its blocks are read;
    ``pairs``: the plan of each pair that runs, by its upper stage (1-based, as MODEL.HILA.STAGES).
    """

    blocks: Tuple[int, ...]
    tokens_used: Tuple[bool, ...]
    pairs: Dict[int, PairPlan]

    @property
    def num_stages(self) -> int:
        """The stages that run (stages ``0 .. num_stages - 1``)."""
        return sum(1 for count in self.blocks if count)


def _check_every_pair_updates(depths: Sequence[int], hila: HILASettings) -> None:
    """ValueError for a pair whose schedule has no Top-Down step: its lower level would never be
    updated (e.g. stride 2 over a 2-block stage)."""
    for top in hila.stages:
        depth, stride = depths[top - 1], hila.strides[top - 1]
        if not any(top_down for _, top_down in hila_schedule(depth, stride)):
            raise ValueError(
                f"MODEL.HILA.STRIDES[{top - 1}] = {stride} leaves the HILA pair of stage {top} "
                f"({depth} blocks) without a Top-Down step, so its lower stage is never updated: "
                "an upper stage of 2 blocks needs stride 1, one of 1 block cannot have a pair"
            )


def plan_encoder(
    depths: Sequence[int],
    out_features: Sequence[str],
    hila: HILASettings,
    norm_every_step: bool = False,
) -> EncoderPlan:
    """The plan of an encoder with ``depths`` blocks per stage returning ``out_features``
    (names from ``res2..res5``), with the pairs of ``hila`` (``norm_every_step`` as ``HILAPair``).
    """
    _check_every_pair_updates(depths, hila)
    stages = len(depths)
    returned = [name in out_features for name in STAGE_NAMES[:stages]]
    blocks, tokens_used = [0] * stages, [False] * stages
    pairs: Dict[int, PairPlan] = {}
    next_stage_runs = above_reads_lower = False
    for i in reversed(range(stages)):
        has_pair_above = (i + 2) in hila.stages  # the pair whose lower stage is i
        tokens_used[i] = next_stage_runs or (above_reads_lower if has_pair_above else returned[i])
        above_reads_lower = False
        if (i + 1) in hila.stages:  # the pair whose upper stage is i
            plan = plan_pair(
                depths[i],
                hila.strides[i],
                norm_every_step,
                top_used=tokens_used[i],
                bottom_used=returned[i - 1],
            )
            blocks[i] = plan.blocks
            if plan.runs_anything:
                pairs[i + 1] = plan
                above_reads_lower = plan.bottom_in
        else:
            blocks[i] = depths[i] if tokens_used[i] else 0
        next_stage_runs = blocks[i] > 0
    return EncoderPlan(tuple(blocks), tuple(tokens_used), pairs)
