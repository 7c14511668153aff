"""Training hooks of hila_d2 (detectron2 ``HookBase``): ``HILAWarmup`` fades the HILA pairs in.

A HILA pair starts from random weights. From iteration 0 its Bottom-Up and Top-Down steps rewrite
the tokens of the stages it links. That includes the stages that came from pretrained weights,
and for the upper stage its later blocks. ``HILAWarmup`` (``SOLVER.HILA_WARMUP_ITERS``) ramps
the pairs' strength (``HILAPair.set_strength``) linearly from 0 to 1 over the first
iterations. The encoder starts out as the plain encoder, and HILA takes over as its weights
train. Every HILA parameter stays in the loss throughout, so DDP needs no unused-parameter
search. At strength 0 its gradients are zero. After the warmup, and in any model not trained
with the hook, the strength is 1.

``train_net.py`` adds the hook when ``SOLVER.HILA_WARMUP_ITERS`` > 0, ``lazyconfig_train_net.py``
when ``train.hila_warmup_iters`` > 0. Another trainer adds ``build_hila_warmup(cfg)`` (None when
the key is 0) to its hooks, ahead of its evaluation hook.
"""
import logging
from typing import Optional

import torch
from detectron2.config import CfgNode
from detectron2.engine import HookBase

from .modeling.hila import HILAPairs

__all__ = ["HILAWarmup", "build_hila_warmup", "hila_warmup", "set_hila_strength"]

logger = logging.getLogger(__name__)


def set_hila_strength(model: torch.nn.Module, strength: float) -> int:
    """Set the strength of every HILA pair in ``model`` (also inside a DDP wrapper); returns
    how many encoders' pairs were set."""
    encoders = [module for module in model.modules() if isinstance(module, HILAPairs) and module]
    for pairs in encoders:
        pairs.set_strength(strength)
    return len(encoders)


class HILAWarmup(HookBase):
    """Before training step t, set the HILA pairs' strength to ``min(1, t / iters)``: 0 at the
    first step, 1 from step ``iters`` on and after training. It is computed from the trainer's
    iteration, so a resumed run continues the ramp. A model without HILA pairs is a
    ValueError at the start of training that names the config ``key`` that asked for it."""

    def __init__(self, iters: int, key: str = "SOLVER.HILA_WARMUP_ITERS"):
        if iters < 1:
            raise ValueError(f"HILAWarmup needs at least 1 iteration, got {iters}")
        self.iters = iters
        self.key = key

    def strength(self, iteration: int) -> float:
        return min(1.0, iteration / self.iters)

    def before_train(self):
        start = self.trainer.start_iter
        if not set_hila_strength(self.trainer.model, self.strength(start)):
            raise ValueError(
                f"{self.key} is set, but the model has no HILA pairs (no HILA stages, or the "
                "encoder does not use them); set it to 0"
            )
        if start < self.iters:
            logger.info(
                "HILA warmup: the pairs' strength rises linearly from %.3g at iteration %d to 1 "
                "at iteration %d", self.strength(start), start, self.iters
            )

    def before_step(self):
        set_hila_strength(self.trainer.model, self.strength(self.trainer.iter))

    def after_train(self):
        set_hila_strength(self.trainer.model, 1.0)


def hila_warmup(
    iters: int,
    max_iter: int,
    key: str = "SOLVER.HILA_WARMUP_ITERS",
    max_iter_key: str = "SOLVER.MAX_ITER",
) -> Optional[HILAWarmup]:
    """The ``HILAWarmup`` of ``iters`` (the value of config ``key``) in a run of ``max_iter``
    iterations; None when it is 0. ValueError when it is negative or leaves no iteration at full
    strength (>= ``max_iter``)."""
    if iters == 0:
        return None
    if not isinstance(iters, int) or iters < 0 or iters >= max_iter:
        raise ValueError(
            f"{key} must be an integer in [0, {max_iter_key} = {max_iter}), got {iters!r}"
        )
    return HILAWarmup(iters, key)


def build_hila_warmup(cfg: CfgNode) -> Optional[HILAWarmup]:
    """``hila_warmup`` of ``cfg.SOLVER.HILA_WARMUP_ITERS``; also a ValueError when it is set and
    MODEL.HILA.STAGES is empty."""
    iters = cfg.SOLVER.get("HILA_WARMUP_ITERS", 0)  # absent where add_solver_config was not used
    if iters and not cfg.MODEL.get("HILA", {}).get("STAGES"):
        raise ValueError(
            f"SOLVER.HILA_WARMUP_ITERS = {iters} warms up HILA pairs, but MODEL.HILA.STAGES is "
            "empty; set MODEL.HILA.STAGES (e.g. [3]) or SOLVER.HILA_WARMUP_ITERS 0"
        )
    return hila_warmup(iters, cfg.SOLVER.MAX_ITER)
