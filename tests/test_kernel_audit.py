"""hila_d2.utils.kernel_audit and project_config.judged_on_sound_kernels: the op-by-op check of
this machine's bf16 kernels that test_autocast.py uses to judge hila_d2 on sound kernels.

Every test here builds its own premise, whatever this CPU's kernels do: ``SoundKernels`` beneath
the audit computes each bf16 op in float32 and rounds (correct kernels), and ``BrokenKernel``
above it corrupts one op's bf16 results, as a faulty kernel would (optionally only while oneDNN
is on, as on CPUs with AMX)."""
import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from project_config import REPO, judged_on_sound_kernels
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from hila_d2.modeling.backbone.mit import MixVisionTransformer
from hila_d2.utils.kernel_audit import MAX_OP_ERROR, KernelAudit, main, onednn_off, op_error
from hila_d2.utils.kernel_audit import _checked, _reads_bf16, _widen

BF16 = torch.bfloat16
aten = torch.ops.aten


class SoundKernels(TorchDispatchMode):
    """Correct bf16 kernels: the results of every out-of-place op that reads a bf16 tensor are
    the same op's on its inputs widened to float32, rounded to the dtypes the op returns. Views
    and ops that write, draw random numbers or allocate stay as they are."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        returns_view = any(r.alias_info is not None for r in func._schema.returns)
        if returns_view or not (_checked(func) and _reads_bf16(args, kwargs)):
            return out
        reference = func(*tree_map(_widen, args), **tree_map(_widen, kwargs))
        results, spec = tree_flatten(out)
        references, _ = tree_flatten(reference)
        rounded = [
            expected.to(result.dtype) if isinstance(result, torch.Tensor) else result
            for result, expected in zip(results, references)
        ]
        return tree_unflatten(rounded, spec)


class BrokenKernel(TorchDispatchMode):
    """Corrupts the bf16 results of ``op``: ``corrupt(result)`` instead of the result; with
    ``onednn_only``, only while oneDNN is on (``torch.backends.mkldnn.enabled``)."""

    def __init__(self, op, corrupt, onednn_only=False):
        super().__init__()
        self.op, self.corrupt, self.onednn_only = op, corrupt, onednn_only

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        broken = not self.onednn_only or torch.backends.mkldnn.enabled
        if func is self.op and out.dtype == BF16 and broken:
            return self.corrupt(out)
        return out


def small_network(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """conv (stride 2, the shape MiT's stage-3 keys take) -> GELU -> mean, all elementwise or
    reduction ops besides the conv."""
    return F.gelu(F.conv2d(x, weight, stride=2)).mean(dim=1)


def inputs():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 5, 3, generator=generator).to(BF16)
    weight = torch.randn(8, 8, 2, 2, generator=generator).to(BF16)
    return x, weight


@pytest.mark.parametrize(
    "corrupt, expected_error",
    [
        (lambda out: torch.full_like(out, math.nan), math.inf),  # NaN from finite inputs
        (lambda out: out * 4, 3.0),  # finite but wrong: 300 % off
    ],
)
def test_a_faulty_kernel_is_named_with_its_shapes_and_error(corrupt, expected_error):
    x, weight = inputs()
    with SoundKernels(), BrokenKernel(aten.convolution.default, corrupt), KernelAudit() as audit:
        out = small_network(x, weight)
    assert [fault.op for fault in audit.faults] == ["aten.convolution.default"]
    fault = audit.faults[0]
    assert fault.shapes == ((2, 8, 5, 3), (8, 8, 2, 2))
    assert fault.error == pytest.approx(expected_error, rel=1e-2)
    assert str(fault).startswith("aten.convolution.default(2x8x5x3, 8x8x2x2): ")
    # the results are left as the kernel computed them
    with SoundKernels(), BrokenKernel(aten.convolution.default, corrupt):
        corrupted = small_network(x, weight)
    torch.testing.assert_close(out, corrupted, equal_nan=True, rtol=0, atol=0)


def test_bf16_rounding_is_not_a_fault():
    """A broken kernel that is off by a few bf16 roundings (2**-7 relative) is within the
    bound; one off by twice the bound is not."""
    x, weight = inputs()
    for factor, faulty in ((1 + 2**-7, False), (1 + 2 * MAX_OP_ERROR, True)):
        broken = BrokenKernel(aten.gelu.default, lambda out: out * factor)
        with SoundKernels(), broken, KernelAudit() as audit:
            small_network(x, weight)
        assert [f.op for f in audit.faults] == (["aten.gelu.default"] if faulty else []), factor


def test_only_ops_reading_bf16_are_checked_once_each():
    """float32 ops are not run again; bf16 ops are run once more, on float32 inputs; in-place
    ops and uninitialised allocations are not run again either."""
    x, weight = inputs()
    x32, weight32 = x.float(), weight.float()
    network_ops = {"aten.convolution.default", "aten.gelu.default", "aten.mean.dim"}
    runs = []

    class Counting(TorchDispatchMode):  # beneath the audit: sees every run of an op
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            dtypes = [a.dtype for a in args if isinstance(a, torch.Tensor)]
            runs.append((str(func), dtypes[0] if dtypes else None))
            return func(*args, **(kwargs or {}))

    with SoundKernels(), Counting(), KernelAudit() as audit:
        small_network(x32, weight32)
    assert audit.faults == []
    assert [run for run in runs if run[0] in network_ops] == [
        ("aten.convolution.default", torch.float32),
        ("aten.gelu.default", torch.float32),
        ("aten.mean.dim", torch.float32),
    ]
    runs.clear()
    with SoundKernels(), Counting(), KernelAudit() as audit:
        small_network(x, weight)
        torch.empty_like(x).add_(1.0)
    assert audit.faults == []
    assert [run for run in runs if run[0] in network_ops] == [
        ("aten.convolution.default", BF16),
        ("aten.convolution.default", torch.float32),
        ("aten.gelu.default", BF16),
        ("aten.gelu.default", torch.float32),
        ("aten.mean.dim", BF16),
        ("aten.mean.dim", torch.float32),
    ]
    assert [run for run in runs if run[0].startswith(("aten.empty", "aten.add_"))] == [
        ("aten.empty_like.default", BF16),
        ("aten.add_.Tensor", BF16),
    ]


def test_op_error():
    reference = torch.tensor([3.0, -4.0, math.inf, 0.0])
    assert op_error(reference.to(BF16), reference) == 0.0
    assert op_error(torch.tensor([3.0, -4.0, math.inf, 0.5]), reference) == pytest.approx(0.1)
    assert op_error(torch.tensor([3.0, -4.0, -math.inf, 0.0]), reference) == math.inf
    assert op_error(torch.tensor([3.0, math.nan, math.inf, 0.0]), reference) == math.inf
    assert op_error(torch.zeros(3), torch.zeros(3)) == 0.0
    assert op_error(torch.ones(3), torch.zeros(3)) == math.inf
    nan = torch.tensor([math.nan])
    assert op_error(nan, nan) == 0.0  # non-finite alike: the float32 op gave NaN too


def test_sound_kernels_equal_float32_rounded():
    """SoundKernels' bf16 results are the float32 op's rounded to bf16, on this CPU as on any
    other; ops that return float32 from bf16 inputs keep their dtype."""
    x, weight = inputs()
    with SoundKernels():
        out = small_network(x, weight)
        widened = x.float()
    assert out.dtype == BF16 and widened.dtype == torch.float32
    expected = F.gelu(F.conv2d(x.float(), weight.float(), stride=2).to(BF16).float())
    torch.testing.assert_close(out, expected.to(BF16).float().mean(dim=1).to(BF16))
    torch.testing.assert_close(widened, x.float(), rtol=0, atol=0)



def mit_stage3_conv(out: torch.Tensor) -> bool:
    return out.shape[1] == 160 and out.shape[2:] == (2, 1)


def mit_stage_outputs(broken: BrokenKernel = None):
    """A MiT-B0 (one block per stage) at 67 x 45 in float32 and a ``run`` of it under bf16
    autocast for ``judged_on_sound_kernels``, on SoundKernels beneath ``broken`` if given:
    (float32 outputs, run, the oneDNN states the runs saw)."""
    torch.manual_seed(0)
    model = MixVisionTransformer(variant="B0", depths=(1, 1, 1, 1), drop_path_rate=0.0).eval()
    x = torch.randn(2, 3, 67, 45, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        exact = model(x)
    onednn = []

    def run(audit):
        onednn.append(torch.backends.mkldnn.enabled)
        with torch.no_grad(), SoundKernels(), broken or contextlib.nullcontext(), audit:
            with torch.autocast("cpu", dtype=BF16):
                return model(x)

    return exact, run, onednn


def stage_outputs_agree(exact):
    def check(mixed):
        for stage, value in exact.items():
            assert torch.isfinite(mixed[stage]).all(), stage
            error = op_error(mixed[stage], value)
            assert error < 0.03, f"{stage}: {error:.3f}"

    return check


def nan_at_mit_stage3(onednn_only: bool) -> BrokenKernel:
    """What CPUs with AMX do to MiT's stage 3 in oneDNN (NaN from its spatial-reduction conv,
    160 channels on the 5 x 3 grid); with ``onednn_only`` False, every backend does it."""
    return BrokenKernel(
        aten.convolution.default,
        lambda out: torch.full_like(out, math.nan) if mit_stage3_conv(out) else out,
        onednn_only=onednn_only,
    )


def test_sound_kernels_judge_once_natively():
    exact, run, onednn = mit_stage_outputs()
    judged_on_sound_kernels(run, stage_outputs_agree(exact))
    assert onednn == [True]


def test_a_faulty_onednn_kernel_is_judged_again_with_onednn_off():
    """The check passes on the run with oneDNN off, although the native run's res4 is NaN."""
    exact, run, onednn = mit_stage_outputs(nan_at_mit_stage3(onednn_only=True))
    checked = []

    def check(mixed):
        checked.append(torch.isfinite(mixed["res4"]).all().item())
        stage_outputs_agree(exact)(mixed)

    judged_on_sound_kernels(run, check)
    assert onednn == [True, False] and checked == [True]
    assert torch.backends.mkldnn.enabled  # restored


def test_a_kernel_faulty_in_every_backend_skips_naming_it():
    exact, run, onednn = mit_stage_outputs(nan_at_mit_stage3(onednn_only=False))
    with pytest.raises(pytest.skip.Exception) as skipped:
        judged_on_sound_kernels(run, stage_outputs_agree(exact))
    assert onednn == [True, False]
    message = str(skipped.value)
    fault = "aten.convolution.default(2x160x5x3, 160x160x2x2, 160): non-finite"
    assert message.startswith(f"this machine's bf16 kernels are wrong natively ({fault}")
    assert f"and with oneDNN off ({fault}" in message
    assert "(res4)" in message  # the check that failed


@pytest.mark.parametrize("onednn_fault", [False, True])
def test_a_hila_d2_bug_fails_on_sound_kernels(onednn_fault):
    """A bug after the kernels (a stage scaled by 1.5) fails the test, whether the native run
    was sound or the judging run is the one with oneDNN off."""
    exact, run, onednn = mit_stage_outputs(nan_at_mit_stage3(True) if onednn_fault else None)

    def buggy(audit):
        outputs = run(audit)
        return {**outputs, "res3": outputs["res3"] * 1.5}

    with pytest.raises(AssertionError, match="res3"):
        judged_on_sound_kernels(buggy, stage_outputs_agree(exact))
    assert onednn == ([True, False] if onednn_fault else [True])


def test_onednn_off_restores_the_flags():
    enabled = torch.backends.mkldnn.enabled
    with onednn_off():
        assert not torch.backends.mkldnn.enabled
    assert torch.backends.mkldnn.enabled == enabled


@pytest.mark.parametrize("broken", [None, nan_at_mit_stage3(onednn_only=True)])
def test_the_audit_command_reports_this_machines_faults(broken, capsys):
    """``python -m hila_d2.utils.kernel_audit --config-file CONFIG``: status 0 and "sound" on
    sound kernels; status 1 and the faulty op natively, "sound" with oneDNN off, where oneDNN's
    kernel is the faulty one."""
    config = REPO / "configs/builtin/semantic-segmentation/segformer_mit_b0.yaml"
    with SoundKernels(), broken or contextlib.nullcontext():
        status = main(["--config-file", str(config), "--size", "64", "32", "--batch", "2"])
    lines = capsys.readouterr().out.splitlines()
    if broken is None:
        assert status == 0 and lines == ["native kernels: sound", "oneDNN off: sound"]
    else:
        assert status == 1
        assert lines[0] == "native kernels: 1 faulty op(s)"
        assert lines[1].startswith("  aten.convolution.default(2x160x4x2, 160x160x2x2, 160): ")
        assert lines[2:] == ["oneDNN off: sound"]
