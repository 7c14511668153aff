"""The schedule of a HILA pair: when Bottom-Up and Top-Down run between the upper stage's blocks
(``hila_schedule``), and which of those steps an encoder's used outputs need (``plan_pair``)."""
from dataclasses import dataclass
from typing import List, Tuple

__all__ = ["PairPlan", "hila_schedule", "plan_pair"]


def hila_schedule(depth: int, stride: int) -> List[Tuple[bool, bool]]:
    """Per upper-stage block j: (Bottom-Up before it, Top-Down + lower block after it).

    Bottom-Up runs when ``j % stride == 0``; Top-Down when ``j != depth - 1`` and
    ``(j - 1) % stride == 0`` (Python modulo). Stride 1 gives ``depth`` Bottom-Up and
    ``depth - 1`` Top-Down iterations.
    """
    if stride < 1:
        raise ValueError(f"HILA stride must be >= 1 (MODEL.HILA.STRIDES), got {stride}")
    return [(j % stride == 0, j != depth - 1 and (j - 1) % stride == 0) for j in range(depth)]


@dataclass(frozen=True)
class PairPlan:
    """The steps of a pair's schedule that contribute to the outputs in use, per upper block j.

    ``bottom_up[j]``: Bottom-Up before block j; ``top_down[j]``: Top-Down + lower block after it;
    ``step_norm[j]``: ``bottom_norm`` after it (``norm_every_step``); ``final_norm``: once at the
    end. Only the first ``blocks`` upper blocks run (a norm may follow a block that does not);
    ``bottom_in``: the lower tokens are read.
    """

    bottom_up: Tuple[bool, ...]
    top_down: Tuple[bool, ...]
    step_norm: Tuple[bool, ...]
    final_norm: bool
    blocks: int
    bottom_in: bool

    @property
    def steps(self) -> int:
        """Iterations j of the schedule that run anything."""
        flags = zip(self.bottom_up, self.top_down, self.step_norm)
        used = [j for j, step in enumerate(flags) if any(step)]
        return max(used[-1] + 1 if used else 0, self.blocks)

    @property
    def runs_anything(self) -> bool:
        return self.steps > 0 or self.final_norm


def plan_pair(
    depth: int,
    stride: int,
    norm_every_step: bool,
    top_used: bool = True,
    bottom_used: bool = True,
) -> PairPlan:
    """The steps of the schedule (``hila_schedule``) of a pair over ``depth`` upper blocks that
    affect the upper tokens (``top_used``) or the lower tokens (``bottom_used``) it returns.

    A backward liveness pass: a step runs only if what it writes is read later. A Top-Down step
    (and the lower block) writes the lower tokens, reading both; a Bottom-Up step writes the upper
    tokens, reading both; an upper block and a norm read and write one stream.
    """
    schedule = hila_schedule(depth, stride)
    bottom_up, top_down, step_norm, blocks = ([False] * depth for _ in range(4))
    top, bottom = top_used, bottom_used
    final_norm = bottom and not norm_every_step
    for j in reversed(range(depth)):
        scheduled_bottom_up, scheduled_top_down = schedule[j]
        if scheduled_top_down:
            top_down[j] = bottom
            top = top or bottom
        elif norm_every_step:
            step_norm[j] = bottom
        blocks[j] = top
        if scheduled_bottom_up and top:
            bottom_up[j] = bottom = True
    return PairPlan(
        tuple(bottom_up), tuple(top_down), tuple(step_norm), final_norm, sum(blocks), bottom
    )
