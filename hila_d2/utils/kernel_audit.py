"""The running machine's bfloat16 kernels checked op by op, for tests that compare a bf16
(autocast) computation with its float32 counterpart.

Such a test judges hila_d2's dtype handling, but it can only do so where the vendor kernels
underneath (oneDNN convolutions and matmuls, ATen's attention) compute what their float32
versions compute, up to bf16 rounding. Some CPUs have bf16 kernels that are wrong for some
shapes: a wrong result or NaN from finite inputs, with the same code correct on other machines.
``KernelAudit`` tells the two cases apart: while it is active, every out-of-place op that reads
a bfloat16 tensor runs a second time on the same inputs widened to float32, and an op whose
bf16 result is far from that is a ``KernelFault`` of the machine, named with its shapes.

Each op's own rounding error is about 2**-9 relative (0.2 %) of its output (measured at most
0.2 % for every op in the forward passes of the MiT, Swin and HAT-Net encoders, with and without
HILA): ``MAX_OP_ERROR`` (5 %) is 25 times that, so a fault is a gross error, never an
accumulation of roundings. Audit forward passes: a backward op whose output cancels is
legitimately further off in relative terms (LayerNorm's input gradient of a mean loss, whose
terms cancel, measured 5-7 % off).

Known fault: torch 2.14.1's oneDNN bf16 convolution on CPUs with AMX is wrong when the output is
one column wide and the stride is above 1 (MiT's stage-3 spatial-reduction conv on a small
grid); with oneDNN off (``onednn_off``) the same op is sound. Run as a program, this module
audits a config's model on this machine (``main``).
"""
import contextlib
import math
from typing import Any, List, NamedTuple, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

__all__ = ["KernelAudit", "KernelFault", "MAX_OP_ERROR", "audit_model", "onednn_off", "op_error"]

MAX_OP_ERROR = 0.05  # relative L2 error of one op's bf16 result against float32 (see above)
_UNINITIALISED = ("empty", "new_empty", "empty_like", "empty_strided", "new_empty_strided")


class KernelFault(NamedTuple):
    """One op whose bf16 result is wrong: its name, the shapes of its tensor inputs and the
    relative L2 error of its output against float32 (inf: non-finite where float32 is finite)."""

    op: str
    shapes: Tuple[Tuple[int, ...], ...]
    error: float

    def __str__(self) -> str:
        shapes = ", ".join("x".join(map(str, shape)) or "scalar" for shape in self.shapes)
        error = "non-finite" if math.isinf(self.error) else f"{100 * self.error:.1f} % off"
        return f"{self.op}({shapes}): {error}"


def _widen(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dtype == torch.bfloat16:
        return value.float()
    return value


def _reads_bf16(args: tuple, kwargs: dict) -> bool:
    leaves, _ = tree_flatten((args, kwargs))
    return any(isinstance(x, torch.Tensor) and x.dtype == torch.bfloat16 for x in leaves)


def _checked(func) -> bool:
    """Out-of-place, deterministic ops whose output is defined by their inputs."""
    name = func.overloadpacket.__name__
    return not (
        func._schema.is_mutable
        or torch.Tag.nondeterministic_seeded in func.tags
        or name in _UNINITIALISED
    )


def op_error(result: torch.Tensor, reference: torch.Tensor) -> float:
    """Relative L2 error of ``result`` against ``reference`` (computed in float32); inf where
    their non-finite elements differ (NaN or inf in one only, infs of other signs)."""
    result, reference = result.detach().float(), reference.detach().float()
    if not (torch.isfinite(result).all() and torch.isfinite(reference).all()):
        masks = (torch.isnan, torch.isposinf, torch.isneginf)
        if not all(torch.equal(mask(result), mask(reference)) for mask in masks):
            return math.inf
        finite = torch.isfinite(reference)
        result, reference = result.where(finite, 0.0), reference.where(finite, 0.0)
    difference = (result - reference).norm().item()
    scale = reference.norm().item()
    return difference / scale if scale > 0 else (math.inf if difference > 0 else 0.0)


class KernelAudit(TorchDispatchMode):
    """A dispatch mode (``with KernelAudit() as audit: ...``) that records in ``faults`` each op
    whose bf16 result is off by more than ``max_error`` (relative L2) from the same op on its
    inputs widened to float32, or non-finite where that is finite. Results are left as computed;
    ops that write in place, draw random numbers or allocate uninitialised memory are not
    checked. Under autocast it sees the ops after autocast's casts. Costs one float32 run of
    every checked op."""

    def __init__(self, max_error: float = MAX_OP_ERROR):
        super().__init__()
        self.max_error = max_error
        self.faults: List[KernelFault] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not (_checked(func) and _reads_bf16(args, kwargs)):
            return out
        reference = func(*tree_map(_widen, args), **tree_map(_widen, kwargs))
        results, _ = tree_flatten(out)
        references, _ = tree_flatten(reference)
        for result, expected in zip(results, references):
            if not (isinstance(result, torch.Tensor) and result.is_floating_point()):
                continue
            error = op_error(result, expected)
            if error > self.max_error:
                inputs, _ = tree_flatten((args, kwargs))
                shapes = tuple(tuple(x.shape) for x in inputs if isinstance(x, torch.Tensor))
                self.faults.append(KernelFault(str(func), shapes, error))
                break
        return out


@contextlib.contextmanager
def onednn_off():
    """A context in which torch's CPU convolutions and matmuls take ATen's own kernels instead of
    oneDNN's (``torch.backends.mkldnn.enabled``), the workaround for a faulty oneDNN bf16 kernel."""
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled


def audit_model(model: torch.nn.Module, images: torch.Tensor) -> List[KernelFault]:
    """The faulty bf16 kernels met by a detectron2 model in eval mode on the batch ``images``
    (B, 3, H, W) under CPU bf16 autocast."""
    with torch.no_grad(), KernelAudit() as audit, torch.autocast("cpu", dtype=torch.bfloat16):
        model([{"image": image} for image in images])
    return audit.faults


def main(argv=None) -> int:
    """``python -m hila_d2.utils.kernel_audit --config-file CONFIG [--size H W] [--batch B]
    [KEY VALUE ...]``: audits the model of CONFIG (random weights unless MODEL.WEIGHTS is given)
    on B images of H x W under bf16 autocast on this CPU, natively and with oneDNN off; exit
    status 1 where the native kernels are faulty."""
    import argparse

    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from ..config import load_single_process_config

    parser = argparse.ArgumentParser(description=main.__doc__.split(":", 1)[0])
    parser.add_argument("--config-file", required=True, help="a hila_d2 YAML config")
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2, help="images per forward pass")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs of the config")
    args = parser.parse_args(argv)
    cfg = load_single_process_config(args.config_file, ["MODEL.DEVICE", "cpu", *args.opts])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 3, *args.size, generator=generator) * 255
    native = audit_model(model, images)
    with onednn_off():
        fallback = audit_model(model, images)
    for title, faults in (("native kernels", native), ("oneDNN off", fallback)):
        print(f"{title}: " + ("sound" if not faults else f"{len(faults)} faulty op(s)"))
        for fault in faults:
            print(f"  {fault}")
    return 1 if native else 0


if __name__ == "__main__":
    raise SystemExit(main())
