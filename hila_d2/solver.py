"""Optimiser and LR schedule of the SegFormer/HILA recipes, from detectron2 and fvcore parts.

Parameter groups: no weight decay on normalisation layers (``SOLVER.WEIGHT_DECAY_NORM``) and on
the parameters that any module (an encoder, also inside an FPN) names in
``no_weight_decay_keywords()`` (position tables);
``SOLVER.HEAD_LR_MULTIPLIER`` on every parameter outside ``model.backbone``.
"""
from typing import Any, Dict, List

import torch
from detectron2.config import CfgNode
from detectron2.solver import build_lr_scheduler as build_d2_lr_scheduler
from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.solver.lr_scheduler import LRMultiplier
from fvcore.common.param_scheduler import ParamScheduler, PolynomialDecayParamScheduler

__all__ = [
    "WarmupPolyParamScheduler",
    "build_lr_scheduler",
    "build_optimizer",
    "build_param_groups",
    "get_param_groups",
]

OPTIMIZERS = ("ADAMW", "SGD")


def get_param_groups(
    model: torch.nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float = 0.0,
    head_lr_multiplier: float = 1.0,
) -> List[Dict[str, Any]]:
    """Optimizer parameter groups (each with its own ``lr`` and ``weight_decay``): no weight
    decay on the names that modules list in ``no_weight_decay_keywords()``, ``weight_decay_norm``
    on normalisation layers, ``head_lr_multiplier`` on every parameter outside ``model.backbone``.
    Usable from a LazyConfig (``L(get_param_groups)(base_lr=..., ...)``)."""
    no_decay_names = set().union(
        *(
            module.no_weight_decay_keywords()
            for module in model.modules()
            if hasattr(module, "no_weight_decay_keywords")
        )
    )

    def lr_factor(param_name: str) -> float:
        return 1.0 if param_name.startswith("backbone.") else head_lr_multiplier

    return get_default_optimizer_params(
        model,
        base_lr=base_lr,
        weight_decay=weight_decay,
        weight_decay_norm=weight_decay_norm,
        lr_factor_func=lr_factor,
        overrides={name: {"weight_decay": 0.0} for name in no_decay_names},
    )


def build_param_groups(cfg: CfgNode, model: torch.nn.Module) -> List[Dict[str, Any]]:
    """:func:`get_param_groups` with ``SOLVER.{BASE_LR,WEIGHT_DECAY,WEIGHT_DECAY_NORM,
    HEAD_LR_MULTIPLIER}``."""
    return get_param_groups(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        head_lr_multiplier=cfg.SOLVER.HEAD_LR_MULTIPLIER,
    )


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """``SOLVER.OPTIMIZER`` over :func:`build_param_groups`, with detectron2's gradient clipping."""
    name = cfg.SOLVER.OPTIMIZER.upper()
    params = build_param_groups(cfg, model)
    if name == "ADAMW":
        optimizer_cls = maybe_add_gradient_clipping(cfg, torch.optim.AdamW)
        return optimizer_cls(params, lr=cfg.SOLVER.BASE_LR, betas=tuple(cfg.SOLVER.BETAS))
    if name == "SGD":
        optimizer_cls = maybe_add_gradient_clipping(cfg, torch.optim.SGD)
        return optimizer_cls(
            params,
            lr=cfg.SOLVER.BASE_LR,
            momentum=cfg.SOLVER.MOMENTUM,
            nesterov=cfg.SOLVER.NESTEROV,
        )
    raise ValueError(f"SOLVER.OPTIMIZER is {cfg.SOLVER.OPTIMIZER!r}; choose one of {OPTIMIZERS}")


class WarmupPolyParamScheduler(ParamScheduler):
    """mmsegmentation's poly schedule with warmup, as a multiplier of the base LR.

    ``value(where) = (1 - where) ** power * w(where)`` where, during the first ``warmup_length``
    of training, ``w`` rises linearly from ``warmup_factor`` to 1 ("linear") or stays at
    ``warmup_factor`` ("constant"), and is 1 afterwards. (detectron2's ``WarmupParamScheduler``
    instead interpolates towards the poly value at the end of warmup.)
    """

    def __init__(self, power: float, warmup_factor: float, warmup_length: float, warmup_method: str):
        if warmup_method not in ("linear", "constant"):
            raise ValueError(f"SOLVER.WARMUP_METHOD is {warmup_method!r}; choose 'linear' or 'constant'")
        self._poly = PolynomialDecayParamScheduler(1.0, power)
        self._warmup_factor = warmup_factor
        self._warmup_length = warmup_length
        self._warmup_method = warmup_method

    def __call__(self, where: float) -> float:
        value = self._poly(where)
        if where < self._warmup_length:
            progress = where / self._warmup_length if self._warmup_method == "linear" else 0.0
            value *= self._warmup_factor + (1.0 - self._warmup_factor) * progress
        return value


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer):
    """``WarmupPolyLR``: :class:`WarmupPolyParamScheduler` from ``SOLVER.POLY_LR_POWER`` and
    ``SOLVER.WARMUP_*``. Any other ``SOLVER.LR_SCHEDULER_NAME`` is detectron2's own."""
    if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupPolyLR":
        return build_d2_lr_scheduler(cfg, optimizer)
    schedule = WarmupPolyParamScheduler(
        cfg.SOLVER.POLY_LR_POWER,
        cfg.SOLVER.WARMUP_FACTOR,
        min(cfg.SOLVER.WARMUP_ITERS / cfg.SOLVER.MAX_ITER, 1.0),
        cfg.SOLVER.WARMUP_METHOD,
    )
    return LRMultiplier(optimizer, multiplier=schedule, max_iter=cfg.SOLVER.MAX_ITER)
