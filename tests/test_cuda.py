"""On a CUDA GPU (every test here is marked ``cuda`` and skips without one; scripts/gpu_check.sh
runs them): detectron2's AMP trainer (float16 + GradScaler) through train_net.py for MiT-B0/B1,
Swin-T and HAT-Net-T, plain, + HILA S3 and + HILA S234, on the built-in dataset; bf16 autocast
forward and backward close to float32 with every gradient finite; ``torch.compile`` equal to
eager."""

import pytest
import torch
import torch.nn.functional as F
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

from hila_d2.modeling.backbone.mit import MixVisionTransformer
from hila_d2.modeling.hila import HILASettings

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
