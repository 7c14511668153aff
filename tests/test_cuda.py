"""On a CUDA GPU (every test here is marked ``cuda`` and skips without one; scripts/gpu_check.sh
runs them): detectron2's AMP trainer (float16 + GradScaler) through train_net.py for MiT-B0/B1,
Swin-T and HAT-Net-T, plain, + HILA S3 and + HILA S234, on the built-in dataset; bf16 autocast
forward and backward close to float32 with every gradient finite; ``torch.compile`` equal to
eager; HILA's hand-written backward passes; the benchmark's training step in GPU mode."""

import pytest
import torch
import torch.nn.functional as F
from project_config import load_script
from test_autocast import (  # noqa: F401  (tiny_swin: the autouse fixture of those encoders)
    ENCODERS,
    MAX_REL_ERROR,
    MIN_GRAD_COSINE,
    STAGES,
    build_encoder,
    rel_error,
    tiny_swin,
    trainable,
)
from test_benchmark_hila_cost import table
from test_hila_formulation import _float64
from timm.models.pvt_v2 import MlpWithDepthwiseConv

from hila_d2.modeling.backbone.mit import MixVisionTransformer
from hila_d2.modeling.hila import HILASettings
from hila_d2.modeling.hila.attention import _BottomUpCore, _TopDownCore
from hila_d2.modeling.mix_ffn import MixFFN

pytestmark = pytest.mark.cuda

CONFIG = "configs/builtin/semantic-segmentation/segformer_mit_b0.yaml"
BACKBONES = {
    "mit_b0": ("MODEL.MIT.VARIANT", "B0"),
    "mit_b1": ("MODEL.MIT.VARIANT", "B1"),
    "swin_t": ("MODEL.BACKBONE.NAME", "build_swin_backbone", "MODEL.HILA_D2_SWIN.VARIANT", "T"),
    "hatnet_t": ("MODEL.BACKBONE.NAME", "build_hatnet_backbone", "MODEL.HATNET.VARIANT", "T"),
}
HILA = {"plain": (), "s3": ("MODEL.HILA.STAGES", "[3]"), "s234": ("MODEL.HILA.STAGES", "[2, 3, 4]")}
# 40 iterations: detectron2's writers log every 20, so the loss is logged twice (each the median
# of its 20 iterations)
AMP_RUN = ("MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", "True", "SOLVER.MAX_ITER", "40",
           "DATASETS.TEST", "()", "MODEL.SEM_SEG_HEAD.NORM", "BN")  # fmt: skip


@pytest.fixture
def no_tf32(monkeypatch):
    """float32 matmuls and convolutions in float32 (not TF32) for the duration of a test."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


@pytest.mark.slow
@pytest.mark.parametrize("hila", list(HILA))
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_amp_training_loss_is_finite_and_falls(train_net, backbone, hila):
    run = train_net(CONFIG, *AMP_RUN, *BACKBONES[backbone], *HILA[hila])
    final = torch.load(run.output_dir / "model_final.pth", map_location="cpu", weights_only=False)
    assert "grad_scaler" in final["trainer"]["_trainer"]  # detectron2's AMPTrainer ran
    losses = list(run.losses().values())
    assert len(losses) == 2 and all(map(torch.isfinite, torch.tensor(losses))), losses
    run.assert_loss_fell()


@pytest.mark.parametrize("name", list(ENCODERS))
def test_bf16_autocast_forward_and_backward_are_close_to_float32(name, no_tf32):
    """The encoders of test_autocast.py on the GPU: stage outputs within MAX_REL_ERROR, every
    trainable parameter (HILA's included) with a finite float32 gradient pointing where the
    float32 one does."""
    model, x = build_encoder(name)
    model, x = model.cuda().train(), x.cuda()
    params = trainable(model)

    def step(mixed: bool):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=mixed):
            outputs = model(x)
            loss = sum(outputs[k].float().square().mean() for k in STAGES)
        loss.backward()
        return {k: v.detach() for k, v in outputs.items()}, {n: p.grad for n, p in params.items()}

    exact, grads32 = step(mixed=False)
    mixed, grads16 = step(mixed=True)
    for stage in STAGES:
        assert mixed[stage].dtype == torch.bfloat16, stage
        assert rel_error(mixed[stage], exact[stage]) < MAX_REL_ERROR, stage
    missing = [n for n, g in grads16.items() if g is None or not torch.isfinite(g).all()]
    assert not missing, f"no finite gradient: {missing}"
    flat32 = torch.cat([grads32[n].flatten() for n in params]).double()
    flat16 = torch.cat([grads16[n].flatten() for n in params]).double()
    assert F.cosine_similarity(flat16, flat32, dim=0).item() > MIN_GRAD_COSINE


def test_compiled_hila_encoder_equals_eager_on_cuda(no_tf32):
    """torch.compile (inductor, Triton) of MiT-B0 + HILA S3: outputs equal eager's in float32
    (TF32 off) up to summation order."""
    torch.manual_seed(0)
    hila = HILASettings(stages=(3,), parity_mode=True)
    model = MixVisionTransformer(variant="B0", depths=(1, 1, 2, 1), hila=hila).cuda().eval()
    images = torch.randn(2, 3, 67, 45, device="cuda")
    torch._dynamo.reset()
    compiled = torch.compile(model)
    with torch.no_grad():
        eager, fast = model(images), compiled(images)
    for key in eager:
        torch.testing.assert_close(fast[key], eager[key], atol=1e-4, rtol=1e-4)


def test_attention_cores_and_mix_ffn_backward_on_cuda(no_tf32):
    """The hand-written backward passes on the GPU: both attention cores pass float64 gradcheck,
    and HILA's Mix-FFN training path equals timm's forward under float16 autocast (output and
    every gradient, to float16 rounding)."""
    def cuda64(*shape, seed):
        return _float64(*shape, seed=seed).detach().cuda().requires_grad_()

    ht, wt = 2, 3
    q, children = cuda64(2, ht, wt, 2, 2, seed=0), cuda64(2, 2 * ht, 2 * wt, 3, seed=1)
    weight, position = cuda64(8, 3, seed=2), cuda64(16, seed=3)
    assert torch.autograd.gradcheck(
        lambda *a: _BottomUpCore.apply(*a, 0.7), (q, children, weight, position)
    )
    q, kv = cuda64(2, 2 * ht, 2 * wt, 2, 2, seed=4), cuda64(2, ht, wt, 8, seed=5)
    bias = cuda64(4, 1, ht, wt, 1, 4, seed=6)
    assert torch.autograd.gradcheck(lambda *a: _TopDownCore.apply(*a, 0.7), (q, kv, bias))

    torch.manual_seed(0)
    ffn = MixFFN(16, 64).cuda().train()
    x = torch.randn(2, 9, 7, 16, device="cuda")

    def run(forward):
        inputs = x.clone().requires_grad_()
        ffn.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16):
            out = forward(inputs)
        out.float().square().sum().backward()
        return [out.float(), inputs.grad] + [p.grad for p in ffn.parameters()]

    def timm_forward(tokens):
        out = MlpWithDepthwiseConv.forward(ffn, tokens.reshape(2, 63, 16), (9, 7))
        return out.reshape(2, 9, 7, 16)

    for ours, theirs in zip(run(ffn), run(timm_forward), strict=True):
        torch.testing.assert_close(ours, theirs, atol=2e-3, rtol=2e-3)


@pytest.mark.slow
def test_benchmark_times_the_training_step_on_cuda(capsys):
    """tools/benchmark.py hila-cost on the GPU: CUDA-synchronised timings of the training step,
    its ratio against the target, and max_memory_allocated as the peak."""
    load_script("tools/benchmark.py").main(
        ["hila-cost", "--device", "cuda", "--cases", "mit-b0-s3", "--size", "64", "64",
         "--repeats", "1", "--warmup", "1"]
    )  # fmt: skip
    output = capsys.readouterr().out
    hila = table(output)[("MiT-B0 + S3", "HILA")]
    assert float(hila[7]) > 0 and float(hila[8]) > 0 and float(hila[11]) > 0
    assert hila[12].startswith("≤ ") and "max_memory_allocated" in output
