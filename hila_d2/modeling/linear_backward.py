"""The backward pass of ``F.linear``, for the autograd Functions that recompute a Linear's input
instead of keeping it (``mix_ffn``, ``hila.attention``)."""
from typing import Optional, Tuple

import torch

__all__ = ["linear_backward"]


def linear_backward(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Gradients of ``x`` (..., C_in), ``weight`` (C_out, C_in) and ``bias`` (C_out) of
    ``F.linear(x, weight, bias)`` from ``grad_out`` (..., C_out), computed in ``grad_out``'s dtype
    (autocast's, where the Linear ran under autocast), each returned in its input's dtype."""
    dtype = grad_out.dtype
    flat_grad = grad_out.flatten(0, -2)
    grad_weight = (flat_grad.t() @ x.to(dtype).flatten(0, -2)).to(weight.dtype)
    grad_x = (grad_out @ weight.to(dtype)).to(x.dtype)
    grad_bias = None if bias is None else flat_grad.sum(0).to(bias.dtype)
    return grad_x, grad_weight, grad_bias
