"""LR multipliers (``lr_multiplier``) of the YAML schedules, as fvcore ``ParamScheduler`` configs.

A lazy schedule is a function of the training progress ``iter / train.max_iter`` in [0, 1), as
in detectron2's lazy configs: the iteration counts given here are turned into fractions of
``max_iter``, so overriding ``train.max_iter`` stretches or shrinks warmup and steps with it
(the YAML ``SOLVER.WARMUP_ITERS`` and ``SOLVER.STEPS`` stay absolute).
"""

from typing import Sequence

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from hila_d2.solver import WarmupPolyParamScheduler


def warmup_poly(
    max_iter: int,
    warmup_iters: int,
    warmup_factor: float,
    power: float = 1.0,
    warmup_method: str = "linear",
):
    """``SOLVER.LR_SCHEDULER_NAME: WarmupPolyLR`` (hila_d2.solver.WarmupPolyParamScheduler) with
    ``SOLVER.{MAX_ITER, WARMUP_ITERS, WARMUP_FACTOR, POLY_LR_POWER, WARMUP_METHOD}``."""
    return L(WarmupPolyParamScheduler)(
        power=power,
        warmup_factor=warmup_factor,
        warmup_length=min(warmup_iters / max_iter, 1.0),
        warmup_method=warmup_method,
    )


def warmup_multistep(
    max_iter: int,
    steps: Sequence[int],
    warmup_iters: int,
    warmup_factor: float,
    gamma: float = 0.1,
    warmup_method: str = "linear",
):
    """detectron2's ``WarmupMultiStepLR`` with ``SOLVER.{MAX_ITER, STEPS, WARMUP_ITERS,
    WARMUP_FACTOR, GAMMA, WARMUP_METHOD}``: the values detectron2's ``build_lr_scheduler`` gives."""
    steps = [step for step in steps if step <= max_iter]
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[gamma**k for k in range(len(steps) + 1)],
            milestones=steps,
            num_updates=max_iter,
        ),
        warmup_factor=warmup_factor,
        warmup_length=min(warmup_iters / max_iter, 1.0),
        warmup_method=warmup_method,
    )
