"""Activation checkpointing of the HILA steps in training.

Selective: a step keeps only the results of its matmuls, attention kernels and dense convolutions
for the backward pass and recomputes the cheap rest there (``_KEPT_RESULTS``), so that its memory
follows its compute. ``HILAPair`` runs a lower-level block this way unless the block says
``selective_checkpointing = False`` (MiT's recomputes its activations itself); the Top-Down and Bottom-Up blocks never need it (their attention
cores and Mix-FFNs keep little by construction), which spares them the policy's per-operation
dispatch. Full (``MODEL.HILA.CHECKPOINT``): every step keeps nothing but its inputs. The random
state of drop path is replayed in the recomputation.
"""
from functools import partial
from typing import Callable

import torch
from torch.utils.checkpoint import CheckpointPolicy
from torch.utils.checkpoint import checkpoint as activation_checkpoint
from torch.utils.checkpoint import create_selective_checkpoint_contexts

__all__ = ["checkpointed_step"]


_ATEN = torch.ops.aten
# ops whose results a HILA step keeps for its backward pass in training: matmuls, attention
# kernels and dense convolutions; everything else in the step (norms, padding, the elementwise
# inter-level attention, GELU, depthwise convolutions) is recomputed in the backward pass
_KEPT_RESULTS = {
    _ATEN.mm, _ATEN.addmm, _ATEN.bmm, _ATEN._scaled_dot_product_flash_attention_for_cpu,
    _ATEN._scaled_dot_product_flash_attention, _ATEN._scaled_dot_product_efficient_attention,
    _ATEN._scaled_dot_product_cudnn_attention,
}  # fmt: skip


def _keep_costly_results(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """Selective activation checkpointing policy of the HILA steps (see ``_KEPT_RESULTS``)."""
    if op.overloadpacket in _KEPT_RESULTS:
        return CheckpointPolicy.MUST_SAVE
    if op.overloadpacket is _ATEN.convolution and args[8] == 1:  # groups: dense, not depthwise
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


_SELECTIVE_CHECKPOINT = partial(create_selective_checkpoint_contexts, _keep_costly_results)


def _without_autocast_cache(
    step: Callable[..., torch.Tensor], *inputs: torch.Tensor
) -> torch.Tensor:
    """``step(*inputs)``, under autocast with its weight-cast cache off: selective checkpointing
    needs the recomputation (which starts with an empty cache) to repeat the forward's casts one
    for one."""
    device = inputs[0].device.type
    if not torch.is_autocast_enabled(device):
        return step(*inputs)
    with torch.autocast(device, dtype=torch.get_autocast_dtype(device), cache_enabled=False):
        return step(*inputs)


def checkpointed_step(
    step: Callable[..., torch.Tensor], *inputs: torch.Tensor, recompute_all: bool
) -> torch.Tensor:
    """``step(*inputs)`` with activation checkpointing: selective (the results of
    ``_KEPT_RESULTS`` kept), or full with ``recompute_all`` (only the inputs kept)."""
    if recompute_all:
        return activation_checkpoint(step, *inputs, use_reentrant=False)
    return activation_checkpoint(
        partial(_without_autocast_cache, step), *inputs, use_reentrant=False,
        context_fn=_SELECTIVE_CHECKPOINT,
    )  # fmt: skip
