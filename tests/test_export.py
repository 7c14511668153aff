"""TorchScript and ONNX export (hila_d2.export, tools/export_model.py): for every encoder, plain and
with HILA, and for the sliding-window and HMSA segmentors, the exported models give the eager
logits (max abs difference <= 1e-4) on the traced image and on another image of the same size,
the saved TorchScript file reloads, other input shapes are refused, and models that are not
semantic segmentors are rejected."""

import re

import onnx
import onnxruntime
import pytest
import torch
from detectron2.modeling import build_model
from project_config import load_config, load_script

from hila_d2.export import (
    INPUT_NAME,
    ONNX_OPSET,
    OUTPUT_NAME,
    eager_sem_seg,
    export_onnx,
    export_torchscript,
    run_onnx,
)

TOLERANCE = 1e-4
# stage grids 16x24, 8x12, 4x6, 2x3: Swin's and HAT-Net's windows of 7 pad them, and UperNet pools
# the 2x3 map to 2, 3 and 6 bins (no divisors: the ONNX conversion of hila_d2.export runs)
SIZE = (64, 96)
BUILTIN = "configs/builtin/semantic-segmentation/"
SWIN = "configs/ade20k/semantic-segmentation/swin/"
NARROW_UPERNET = (
    "MODEL.SEM_SEG_HEAD.UPERNET.CHANNELS",
    "64",
    "MODEL.SEM_SEG_HEAD.AUX.CHANNELS",
    "32",
)
# case -> config and overrides: each encoder plain and with HILA, in the project's configs
CASES = {
    "mit_b0": (BUILTIN + "segformer_mit_b0.yaml",),
    "mit_b0_hila_s3": (BUILTIN + "hila_mit_b0_s3.yaml",),
    "swin_t": (SWIN + "upernet_swin_t_160k.yaml", *NARROW_UPERNET),
    "swin_t_hila_s234": (SWIN + "hila_upernet_swin_t_s234_160k.yaml", *NARROW_UPERNET),
    "hatnet_t": (BUILTIN + "semantic_fpn_hatnet_t.yaml",),
    "hatnet_t_hila_s3": (BUILTIN + "hila_semantic_fpn_hatnet_t_s3.yaml",),
    # the other meta-architectures: 3 overlapping windows; scales 0.5, 1.0, 2.0 chained
    "mit_b0_sliding_window": (BUILTIN + "segformer_mit_b0.yaml", "MODEL.META_ARCHITECTURE",
                              "SlidingWindowSemanticSegmentor", "TEST.SLIDING_WINDOW.CROP_SIZE",
                              "(64, 48)", "TEST.SLIDING_WINDOW.STRIDE", "(32, 24)"),
    "mit_b0_hila_s3_hmsa": (BUILTIN + "hmsa_hila_mit_b0_s3.yaml",),
}  # fmt: skip


def random_image(seed: int, size=SIZE) -> torch.Tensor:
    """A (3, H, W) image, 0-255."""
    return 255 * torch.rand(3, *size, generator=torch.Generator().manual_seed(seed))


def build(config: str, *opts):
    """The config's model, randomly initialised with seed 0, in eval mode."""
    torch.manual_seed(0)
    return build_model(load_config(config, *opts)).eval()


# the fast loop exports MiT-B0 with and without HILA; the other cases take 1.5-5 s per test
FAST_CASES = {"mit_b0", "mit_b0_hila_s3"}


@pytest.fixture(
    scope="module",
    params=[c if c in FAST_CASES else pytest.param(c, marks=pytest.mark.slow) for c in CASES],
)
def case(request):
    """(model, [the image to trace, another image of its size], their eager logits)."""
    model = build(*CASES[request.param])
    images = [random_image(1), random_image(2)]
    expected = [eager_sem_seg(model, image) for image in images]
    # the logits vary by far more than the tolerance, also between the images
    num_classes = load_config(*CASES[request.param]).MODEL.SEM_SEG_HEAD.NUM_CLASSES
    assert expected[0].shape == (num_classes, *SIZE)
    assert expected[0].std() > 300 * TOLERANCE
    assert (expected[0] - expected[1]).abs().max() > 300 * TOLERANCE
    return model, images, expected


def max_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape
    return (actual - expected).abs().max().item()


def test_torchscript_matches_eager_and_reloads(case, tmp_path):
    model, images, expected = case
    module = export_torchscript(model, images[0])
    with torch.no_grad():
        outputs = [module(image) for image in images]
    for actual, wanted in zip(outputs, expected):
        assert max_difference(actual, wanted) <= TOLERANCE
    path = tmp_path / "model.ts"
    torch.jit.save(module, str(path))
    with torch.no_grad():
        reloaded = torch.jit.load(str(path))(images[1])
    assert torch.equal(reloaded, outputs[1])


def test_onnx_matches_eager(case, tmp_path):
    model, images, expected = case
    path = tmp_path / "model.onnx"
    export_onnx(model, images[0], path)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [i.version for i in proto.opset_import if i.domain in ("", "ai.onnx")] == [ONNX_OPSET]
    assert [i.name for i in proto.graph.input] == [INPUT_NAME]
    assert [o.name for o in proto.graph.output] == [OUTPUT_NAME]
    for image, wanted in zip(images, expected):
        assert max_difference(run_onnx(path, image), wanted) <= TOLERANCE


@pytest.fixture(scope="module")
def mit():
    return build(*CASES["mit_b0"])


def test_other_input_sizes_are_refused(mit, tmp_path):
    image = random_image(1)
    other = random_image(1, (96, 128))
    module = export_torchscript(mit, image)
    with pytest.raises(torch.jit.Error, match=r"traced for images of shape \[3, 64, 96\].*"
                       r"got \[3, 96, 128\]"):  # fmt: skip
        module(other)
    path = tmp_path / "model.onnx"
    export_onnx(mit, image, path)
    with pytest.raises(onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument,
                       match="invalid dimensions for input: image"):  # fmt: skip
        run_onnx(path, other)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_cli_writes_the_file_and_reports_the_difference(fmt, mit, tmp_path, capsys):
    weights = tmp_path / "model.pth"
    torch.save({"model": mit.state_dict()}, weights)
    output = tmp_path / "export" / f"model.{fmt}"
    # 50x70 is padded to 64x96 inside the graph and the logits are cropped back
    args = ["--config-file", CASES["mit_b0"][0], "--format", fmt, "--output", str(output),
            "--height", "50", "--width", "70", "MODEL.WEIGHTS", str(weights)]  # fmt: skip
    difference = load_script("tools/export_model.py").main(args)
    out = capsys.readouterr().out
    assert f"wrote {output}" in out and "image (3, 50, 70)" in out and "logits (7, 50, 70)" in out
    reported = float(
        re.search(r"max abs difference to the model on the sample image: (\S+)", out)[1]
    )
    assert reported == pytest.approx(difference, rel=1e-2) and difference <= TOLERANCE
    image = random_image(3, (50, 70))
    if fmt == "torchscript":
        with torch.no_grad():
            actual = torch.jit.load(str(output))(image)
    else:
        actual = run_onnx(output, image)
    assert max_difference(actual, eager_sem_seg(mit, image)) <= TOLERANCE


def test_only_semantic_segmentors_are_exported(tmp_path):
    rcnn = build("configs/builtin/instance-segmentation/mask_rcnn_mit_b0.yaml")
    with pytest.raises(TypeError, match="got GeneralizedRCNN.*tools/deploy/export_model.py"):
        export_torchscript(rcnn, random_image(1))
    with pytest.raises(TypeError, match="Only semantic segmentors"):
        export_onnx(rcnn, random_image(1), tmp_path / "model.onnx")


def test_the_sample_must_be_one_image(mit):
    with pytest.raises(ValueError, match=r"one image of shape \(3, H, W\), got \(1, 3, 64, 96\)"):
        export_torchscript(mit, random_image(1)[None])
