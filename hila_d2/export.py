"""TorchScript and ONNX export of semantic segmentors (detectron2's ``SemanticSegmentor`` and its
subclasses ``SlidingWindowSemanticSegmentor`` and ``HierarchicalMultiScaleSegmentor``) with any
hila_d2 encoder, plain or with HILA, traced through detectron2's ``TracingAdapter``.

An exported model takes one image ``(C, H, W)`` float32, 0-255 in ``INPUT.FORMAT`` (what the
dataset mapper gives the model: normalisation, padding to the backbone's size divisibility and
the crop back are inside the graph) and returns its ``sem_seg`` logits ``(K, H, W)``.

**The input size is fixed.** Tracing records one run of the Python code. Sizes read from tensors
stay graph values, but every Python decision on them is frozen: e.g. HAT-Net traced at 224x224,
where no window needs padding, fails at 256x256 with a reshape error, and the HMSA scale sizes
and sliding windows are Python ints. So an exported model accepts the traced shape only: the
TorchScript module raises an error naming both shapes, the ONNX model declares the fixed input
shape, which onnxruntime enforces. Export once per deployment size.

ONNX uses PyTorch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``, opset
``ONNX_OPSET``), the one detectron2's deployment tool uses, on the same ``TracingAdapter`` trace.
It is deprecated since torch 2.9 but works; the torch.export-based exporter (``dynamo=True``,
which also needs the ``onnxscript`` package) fails on detectron2's ``ImageList.from_tensors``,
whose padding sizes are tensors (``GuardOnDataDependentSymNode: Could not guard on
data-dependent expression``). The exporter cannot convert UperNet's pyramid pooling (adaptive
average pooling of a traced map: "input size not accessible"), so ``export_onnx`` supplies an
exact conversion for it.
"""

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import List, Sequence, Union

import torch
from detectron2.export import TracingAdapter
from detectron2.modeling import SemanticSegmentor
from torch import nn

__all__ = [
    "INPUT_NAME",
    "ONNX_OPSET",
    "OUTPUT_NAME",
    "FixedSizeSegmentor",
    "eager_sem_seg",
    "export_onnx",
    "export_torchscript",
    "run_onnx",
    "tracing_adapter",
]

ONNX_OPSET = 17  # LayerNormalization is one op from 17 on; CastLike needs 15, attention 14
INPUT_NAME, OUTPUT_NAME = "image", "sem_seg"


def _check_model(model: nn.Module, image: torch.Tensor) -> None:
    """TypeError unless ``model`` is a semantic segmentor; ValueError unless ``image`` is one
    ``(C, H, W)`` image with the model's channels."""
    if not isinstance(model, SemanticSegmentor):
        raise TypeError(
            f"Only semantic segmentors can be exported (MODEL.META_ARCHITECTURE "
            f"SemanticSegmentor, SlidingWindowSemanticSegmentor or "
            f"HierarchicalMultiScaleSegmentor); got {type(model).__name__}. For R-CNN and "
            f"panoptic models use detectron2's tools/deploy/export_model.py."
        )
    channels = model.pixel_mean.numel()
    if image.dim() != 3 or image.shape[0] != channels:
        raise ValueError(
            f"The sample must be one image of shape ({channels}, H, W), got {tuple(image.shape)}"
        )


def _sem_seg_logits(model: SemanticSegmentor, inputs: List[dict]) -> torch.Tensor:
    """The ``sem_seg`` logits (K, H, W) of the first (only) image."""
    return model(inputs)[0][OUTPUT_NAME]


def tracing_adapter(model: SemanticSegmentor, image: torch.Tensor) -> TracingAdapter:
    """``model`` (put in eval mode) wrapped for tracing with the sample ``image`` (C, H, W),
    0-255: a module ``image (C, H, W) -> (logits (K, H, W),)``."""
    _check_model(model, image)
    return TracingAdapter(model.eval(), [{"image": image}], _sem_seg_logits)


def eager_sem_seg(model: SemanticSegmentor, image: torch.Tensor) -> torch.Tensor:
    """What the exported models compute, computed by ``model`` itself (put in eval mode):
    image (C, H, W), 0-255 -> logits (K, H, W)."""
    _check_model(model, image)
    with torch.no_grad():
        return _sem_seg_logits(model.eval(), [{"image": image}])


class FixedSizeSegmentor(nn.Module):
    """A traced segmentor, image (C, H, W) -> logits (K, H, W), that refuses any other input
    shape than the traced one instead of running the frozen graph on it: a ValueError, raised as
    ``torch.jit.Error`` once scripted."""

    def __init__(self, traced: torch.jit.ScriptModule, shape: Sequence[int]):
        super().__init__()
        self.traced = traced
        self.shape = [int(s) for s in shape]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if list(image.shape) != self.shape:
            raise ValueError(
                f"This model was traced for images of shape {self.shape} and is valid for that "
                f"shape only, got {list(image.shape)}: resize the image, or export the model "
                f"at this size (tools/export_model.py --height --width)"
            )
        return self.traced(image)[0]


@contextmanager
def _without_tracer_warnings():
    """Silences tracing's warnings: each says that a Python value taken from a size is frozen,
    which the fixed input shape of the exported models covers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def export_torchscript(model: SemanticSegmentor, image: torch.Tensor) -> torch.jit.ScriptModule:
    """``model`` traced on the sample ``image`` (C, H, W), 0-255, as a TorchScript
    ``FixedSizeSegmentor``, image (C, H, W) -> logits (K, H, W), for that shape only; save it
    with ``torch.jit.save``. ``torch.jit.trace``'s own check is off (it would run the model
    twice more): compare with ``eager_sem_seg`` instead."""
    adapter = tracing_adapter(model, image)
    with _without_tracer_warnings():
        traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
    return torch.jit.script(FixedSizeSegmentor(traced, image.shape))


@torch.onnx.symbolic_helper.parse_args("v", "is")
def _adaptive_avg_pool2d(g, x, output_size: List[int]):
    """ONNX for ``aten::adaptive_avg_pool2d``, (N, C, H, W) -> (N, C, oh, ow), exact for any
    sizes: ``Ph @ x @ Pw^T`` with each axis' (o, L) averaging matrix (row i averages the bin
    ``[floor(i L / o), ceil((i + 1) L / o))``), built in the graph from x's shape. The
    exporter's own conversion needs a known L divisible by o."""

    def scalar(value: int):
        return g.op("Constant", value_t=torch.tensor(value, dtype=torch.int64))

    def averaging_matrix(axis: int, bins: int):
        length = g.op("Gather", g.op("Shape", x), scalar(axis), axis_i=0)
        index = g.op("Constant", value_t=torch.arange(bins, dtype=torch.int64)[:, None])
        start = g.op("Div", g.op("Mul", index, length), scalar(bins))  # non-negative: floor
        end_times_bins = g.op("Mul", g.op("Add", index, scalar(1)), length)
        end = g.op("Div", g.op("Add", end_times_bins, scalar(bins - 1)), scalar(bins))
        position = g.op("Range", scalar(0), length, scalar(1))
        inside = g.op("And", g.op("GreaterOrEqual", position, start), g.op("Less", position, end))
        weights = g.op("CastLike", inside, x)
        counts = g.op("ReduceSum", weights, g.op("Constant", value_t=torch.tensor([1])))
        return g.op("Div", weights, counts)

    rows = g.op("MatMul", averaging_matrix(2, output_size[0]), x)
    cols = g.op("Transpose", averaging_matrix(3, output_size[1]), perm_i=[1, 0])
    return g.op("MatMul", rows, cols)


def export_onnx(
    model: SemanticSegmentor, image: torch.Tensor, path: Union[str, Path], opset: int = ONNX_OPSET
) -> None:
    """Write ``model`` traced on the sample ``image`` (C, H, W), 0-255, to the ONNX file ``path``:
    input ``INPUT_NAME`` of exactly ``image``'s shape, output ``OUTPUT_NAME`` logits (K, H, W)."""
    adapter = tracing_adapter(model, image)
    torch.onnx.register_custom_op_symbolic("aten::adaptive_avg_pool2d", _adaptive_avg_pool2d, opset)
    try:
        with _without_tracer_warnings():
            torch.onnx.export(
                adapter,
                adapter.flattened_inputs,
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
            )
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::adaptive_avg_pool2d", opset)


def run_onnx(path: Union[str, Path], image: torch.Tensor) -> torch.Tensor:
    """The ONNX file ``path`` run by onnxruntime on the CPU: image (C, H, W) -> logits (K, H, W)."""
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError(
            "Running ONNX models needs onnxruntime: pip install -e '.[export]'"
        ) from e
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: image.detach().cpu().numpy()})
    return torch.from_numpy(logits)
