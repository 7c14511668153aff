"""The per-offset formulation of HILA's inter-level attention (``hila_d2.modeling.hila.attention``)
against the first, unfold/gather one (``benchmarks.hila_reference``): the same outputs and
gradients in float32, at module and encoder level; the hand-written backward passes of its two
attention cores against numerical gradients (float64); the views it is built from; activation
checkpointing; channels-last depthwise weights; and ``torch.compile`` without graph breaks."""
import pytest
import torch
import torch.nn.functional as F
from timm.models.pvt_v2 import MlpWithDepthwiseConv

from benchmarks.hila_reference import (
    reference_bottom_up,
    reference_formulation,
    reference_top_down,
)
from hila_d2.modeling.backbone.hatnet import HATNet
from hila_d2.modeling.backbone.mit import MixVisionTransformer
from hila_d2.modeling.backbone.swin import SwinTransformerBackbone
from hila_d2.modeling.hila import HILASettings
from hila_d2.modeling.hila.attention import (
    BottomUpAttention,
    TopDownAttention,
    _BottomUpCore,
    _TopDownCore,
    interleave_sub_positions,
    patch_children,
    sub_position_children,
)
from hila_d2.modeling.hila.pair import HILAPair
from hila_d2.modeling.mix_ffn import MixFFN

TOL = 1e-5  # float32, as the formulations sum in different orders
GEOMETRIES = [(3, 4, 6, 8), (4, 3, 7, 5), (5, 5, 9, 9)]  # (Ht, Wt, Hb, Wb), odd Hb/Wb included


def _random_parameters(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere, the zero-initialised position biases included."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return module


def _outputs_and_gradients(run, inputs, module):
    """``run(*inputs)``, and the gradients of a random projection of it w.r.t. the inputs and
    every parameter of ``module``."""
    inputs = [x.detach().requires_grad_() for x in inputs]
    out = run(*inputs)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    params = list(module.parameters())
    grads = torch.autograd.grad((out * weights).sum(), inputs + params)
    return out.detach(), grads


@pytest.mark.parametrize("parity", [True, False])
@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_bottom_up_equals_the_reference_formulation(parity, heads, geometry):
    ht, wt, hb, wb = geometry
    attn = BottomUpAttention(
        12, 8, 8, heads, scale_dim=12 if parity else 8, mask_padding=not parity
    )
    _random_parameters(attn, seed=heads)
    top = torch.randn(2, ht, wt, 12)
    bottom = F.pad(torch.randn(2, hb, wb, 8), (0, 0, 0, 2 * wt - wb, 0, 2 * ht - hb))
    valid = torch.zeros(2 * ht, 2 * wt, dtype=torch.bool)
    valid[:hb, :wb] = True
    new = _outputs_and_gradients(lambda t, b: attn(t, b, valid), (top, bottom), attn)
    old = _outputs_and_gradients(
        lambda t, b: reference_bottom_up(attn, t, b, valid), (top, bottom), attn
    )
    torch.testing.assert_close(new[0], old[0], atol=TOL, rtol=0)
    for a, b in zip(new[1], old[1], strict=True):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_top_down_equals_the_reference_formulation(heads, geometry):
    ht, wt, _, _ = geometry
    attn = _random_parameters(TopDownAttention(8, 12, 8, heads, scale_dim=8), seed=10 + heads)
    top, bottom = torch.randn(2, ht, wt, 12), torch.randn(2, 2 * ht, 2 * wt, 8)
    new = _outputs_and_gradients(attn, (top, bottom), attn)
    old = _outputs_and_gradients(lambda t, b: reference_top_down(attn, t, b), (top, bottom), attn)
    torch.testing.assert_close(new[0], old[0], atol=TOL, rtol=0)
    for a, b in zip(new[1], old[1], strict=True):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)


def _float64(*shape, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, dtype=torch.float64, generator=generator).requires_grad_()


@pytest.fixture(params=["in place", "compiling"])
def backward_formulation(request, monkeypatch):
    """Both ways the cores sum their key and value gradients: in place into one buffer (eager),
    and from shifted parts, as they do while torch.compile traces them (run here eagerly)."""
    if request.param == "compiling":
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    return request.param


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("heads", [1, 2])
def test_bottom_up_core_backward_is_the_gradient(masked, heads, backward_formulation):
    """The Bottom-Up core's analytic backward (queries, the children and the key/value
    projection through one padded buffer, the position bias) passes float64 gradcheck, with
    masked children (-inf) or not, in both formulations."""
    ht, wt, dim, channels = 2, 3, 2, 3
    q = _float64(2, ht, wt, heads, dim, seed=0)
    children = _float64(2, 2 * ht, 2 * wt, channels, seed=1)
    kv_weight = _float64(2 * heads * dim, channels, seed=4)
    position = _float64(16, seed=2)
    invalid = torch.rand(1, ht, wt, 1, 16, generator=torch.Generator().manual_seed(3)) < 0.3
    invalid[..., 5] = False  # every parent keeps a child

    def core(q, children, kv_weight, position):
        bias = position.masked_fill(invalid, float("-inf")) if masked else position
        return _BottomUpCore.apply(q, children, kv_weight, bias, 0.7)

    assert torch.autograd.gradcheck(core, (q, children, kv_weight, position))


@pytest.mark.parametrize("heads", [1, 2])
def test_top_down_core_backward_is_the_gradient(heads, backward_formulation):
    """The Top-Down core's analytic backward (queries per sub-position, keys and values through
    one padded buffer, the per-candidate bias, -inf outside the grid) passes float64 gradcheck,
    in both formulations."""
    ht, wt, dim = 2, 3, 2
    q = _float64(2, 2 * ht, 2 * wt, heads, dim, seed=0)
    kv = _float64(2, ht, wt, 2 * heads * dim, seed=1)
    bias = _float64(4, 1, ht, wt, 1, 4, seed=2)
    outside = torch.rand(4, 1, ht, wt, 1, 4, generator=torch.Generator().manual_seed(3)) < 0.3
    outside[..., 0] = False

    def core(q, kv, bias):
        return _TopDownCore.apply(q, kv, bias.masked_fill(outside, float("-inf")), 0.7)

    assert torch.autograd.gradcheck(core, (q, kv, bias))


def test_patch_children_are_the_4x4_patches():
    x = torch.randn(2, 6, 8, 3)
    views = patch_children(x)
    assert len(views) == 16
    for a in range(4):
        for b in range(4):
            for i in range(3):
                for j in range(4):
                    r, c = 2 * i - 1 + a, 2 * j - 1 + b
                    inside = 0 <= r < 6 and 0 <= c < 8
                    expected = x[:, r, c] if inside else torch.zeros(2, 3)
                    assert torch.equal(views[4 * a + b][:, i, j], expected)


def test_sub_positions_split_and_interleave():
    x = torch.randn(2, 6, 8, 5)
    parts = sub_position_children(x)
    assert torch.equal(parts[1][:, 2, 3], x[:, 4, 7])  # (s, t) = (0, 1): child (2m, 2n + 1)
    assert torch.equal(parts[2][:, 1, 0], x[:, 3, 0])  # (1, 0): child (2m + 1, 2n)
    assert torch.equal(interleave_sub_positions(parts), x)


def _mit(parity_mode: bool = True, checkpoint: bool = False, drop_path: float = 0.0):
    hila = HILASettings(stages=(2, 3, 4), parity_mode=parity_mode, checkpoint=checkpoint)
    return MixVisionTransformer(
        variant="B0", depths=(1, 2, 3, 2), drop_path_rate=drop_path, hila=hila
    )


ENCODERS = {
    "mit-parity": (lambda: _mit(True), (1, 3, 67, 45)),
    "mit-clean": (lambda: _mit(False), (1, 3, 67, 45)),
    "swin": (
        lambda: SwinTransformerBackbone(
            variant="T", drop_path_rate=0.0, hila=HILASettings(stages=(3, 4), mlp_ratio=2.0)
        ),
        (1, 3, 67, 45),
    ),
    "hatnet": (
        lambda: HATNet(
            dims=(16, 32, 48, 64), head_dim=16, depths=(1, 2, 2, 2), expansions=(2, 2, 2, 2),
            drop_path_rate=0.0, hila=HILASettings(stages=(3,)),
        ),
        (1, 3, 45, 67),
    ),
}  # fmt: skip


def _encoder_run(model, images):
    """Stage outputs and every parameter's gradient of a random projection of them."""
    outputs = model(images)
    generator = torch.Generator().manual_seed(3)
    weights = [torch.randn(out.shape, generator=generator) for out in outputs.values()]
    loss = sum((out * w).sum() for out, w in zip(outputs.values(), weights))
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in outputs.items()}, grads


@pytest.mark.parametrize("name", list(ENCODERS))
def test_encoders_equal_the_reference_formulation(name):
    """Whole HILA encoders at odd sizes: the same stage outputs (<= 1e-5) and the same gradient
    of every parameter (<= 1e-5 of that gradient's largest entry, or of 0.01 where that is
    smaller: the attention query biases get near-zero gradients, sums that mostly cancel)."""
    build, shape = ENCODERS[name]
    torch.manual_seed(0)
    model = build().train()
    images = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    outputs, grads = _encoder_run(model, images)
    with reference_formulation(model):
        ref_outputs, ref_grads = _encoder_run(model, images)
    assert set(grads) == set(ref_grads) and any(n.startswith("hila.") for n in grads)
    for key in outputs:
        torch.testing.assert_close(outputs[key], ref_outputs[key], atol=TOL, rtol=0)
    for key, grad in grads.items():
        scale = ref_grads[key].abs().max().clamp_min(1e-2)
        torch.testing.assert_close(grad / scale, ref_grads[key] / scale, atol=TOL, rtol=0)
    # the formulations are really swapped back and forth
    attention = [m for m in model.modules() if isinstance(m, (BottomUpAttention, TopDownAttention))]
    assert attention and all("forward" not in vars(m) for m in attention)
    assert all("_run" not in vars(pair) for pair in model.hila.values())


def _swin(checkpoint: bool = False, drop_path: float = 0.0):
    hila = HILASettings(stages=(3, 4), mlp_ratio=2.0, checkpoint=checkpoint)
    return SwinTransformerBackbone(variant="T", drop_path_rate=drop_path, hila=hila)


@pytest.mark.parametrize(
    "build, checkpoint, rerun",
    [
        # MODEL.HILA.CHECKPOINT: every step runs again in the backward pass
        (_mit, True, {"bottom_up": True, "top_down": True, "bottom_block": True}),
        # MiT: no step runs again (the attention cores and Mix-FFNs recompute inside)
        (_mit, False, {"bottom_up": False, "top_down": False, "bottom_block": False}),
        # Swin: its lower-level block runs under selective activation checkpointing
        (_swin, False, {"bottom_up": False, "top_down": False, "bottom_block": True}),
    ],
)
def test_checkpointed_steps_give_the_same_outputs_and_gradients(
    build, checkpoint, rerun, monkeypatch
):
    """In training a HILA step runs under activation checkpointing where its module does not
    recompute its activations itself (selective: matmul results kept), and every step with
    MODEL.HILA.CHECKPOINT (full); drop path's random state is replayed, so the outputs and every
    gradient equal those of steps run without checkpointing, and the checkpointed steps really
    run again in the backward pass."""
    images = torch.randn(1, 3, 67, 45)

    def run(patch_run: bool):
        torch.manual_seed(0)
        model = build(checkpoint=checkpoint, drop_path=0.2).train()
        pair = next(iter(model.hila.values()))
        calls = {name: 0 for name in rerun}
        for name in rerun:
            module = getattr(pair, name)
            module.register_forward_pre_hook(lambda *args, n=name: calls.update({n: calls[n] + 1}))
        with monkeypatch.context() as patch:
            if patch_run:
                patch.setattr(HILAPair, "_run", lambda self, step, *inputs, **_: step(*inputs))
            torch.manual_seed(5)
            return (*_encoder_run(model, images), calls)

    outputs, grads, calls = run(patch_run=False)
    ref_outputs, ref_grads, ref_calls = run(patch_run=True)
    assert all(ref_calls[name] > 0 for name in rerun)
    assert calls == {name: ref_calls[name] * (2 if again else 1) for name, again in rerun.items()}
    assert set(grads) == set(ref_grads)
    for key in outputs:
        torch.testing.assert_close(outputs[key], ref_outputs[key], atol=1e-6, rtol=0)
    for key in grads:
        torch.testing.assert_close(grads[key], ref_grads[key], atol=1e-6, rtol=1e-5)


def _channels_last_strides(weight: torch.Tensor) -> bool:
    """A depthwise weight (C, 1, k, k) has the same memory order in both layouts; channels-last
    records stride 1 for its size-1 input-channel axis (contiguous: k * k), which is what makes
    oneDNN take its channels-last kernel."""
    return weight.stride() == (weight.shape[2] * weight.shape[3], 1, weight.shape[3], 1)


def test_mix_ffn_depthwise_weights_are_channels_last_and_stay_so():
    """The Mix-FFN depthwise weights (MiT blocks and HILA blocks) are stored channels-last, keep
    that layout through ``load_state_dict`` of contiguous tensors and ``.double()``, and give the
    same result as the contiguous layout."""
    model = _mit()
    convs = [m.dwconv for m in model.modules() if hasattr(m, "dwconv")]
    assert len(convs) == 8 + 3 * 3  # 8 MiT blocks; 3 pairs x (2 HILA FFNs + lower block)
    contiguous = torch.contiguous_format
    state = {k: v.clone(memory_format=contiguous) for k, v in model.state_dict().items()}
    assert not any(_channels_last_strides(v) for k, v in state.items() if k.endswith("dwconv.weight"))
    model.load_state_dict(state)
    model.double()
    assert all(_channels_last_strides(conv.weight) for conv in convs)
    ffn = MixFFN(16, 64)
    x = torch.randn(2, 9, 7, 16)
    out = ffn(x)
    ffn.dwconv.weight.data = ffn.dwconv.weight.data.clone(memory_format=torch.contiguous_format)
    assert not _channels_last_strides(ffn.dwconv.weight)
    torch.testing.assert_close(out, ffn(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("autocast", [False, True])
def test_mix_ffn_training_path_keeps_its_input_only_and_equals_timm(autocast):
    """In training HILA's Mix-FFN keeps only its input for the backward pass and recomputes the
    rest there: its output and the gradients of its input and of every parameter equal timm's
    forward (autograd keeping every activation), to 1e-6 in float32 and exactly under bf16
    autocast (the same operations), on an odd grid."""
    ffn = _random_parameters(MixFFN(16, 64), seed=3).train()
    x = torch.randn(2, 9, 7, 16)
    weights = torch.randn(2, 9, 7, 16, generator=torch.Generator().manual_seed(4))

    def timm_forward(tokens):
        out = MlpWithDepthwiseConv.forward(ffn, tokens.reshape(2, 63, 16), (9, 7))
        return out.reshape(2, 9, 7, 16)

    def run(forward):
        inputs = x.clone().requires_grad_()
        ffn.zero_grad(set_to_none=True)
        saved = []

        def pack(t):
            if not isinstance(t, torch.nn.Parameter):
                saved.append(tuple(t.shape))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out = forward(inputs)
        (out.float() * weights).sum().backward()
        return out.detach().float(), [inputs.grad] + [p.grad for p in ffn.parameters()], saved

    out, grads, saved = run(ffn)
    ref_out, ref_grads, ref_saved = run(timm_forward)
    tol = 0 if autocast else 1e-6
    torch.testing.assert_close(out, ref_out, atol=tol, rtol=0)
    for grad, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref, atol=tol, rtol=tol)
    if not autocast:  # (under autocast the weights' bf16 copies are kept too)
        assert saved == [(2, 63, 16)]
        assert len(ref_saved) > len(saved)


def _hila_graph_breaks(model, images):
    """(graph breaks whose stack passes through a HILA module, ``hila_d2/modeling/hila/``,
    graph count, all graph breaks)."""
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(images)
    in_hila = [
        b for b in explanation.break_reasons
        if any("/modeling/hila/" in frame.filename for frame in b.user_stack)
    ]  # fmt: skip
    return in_hila, explanation.graph_count, explanation.graph_break_count


@pytest.mark.slow
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("name", ["mit-parity", "swin", "hatnet"])
def test_hila_pairs_trace_without_graph_breaks(name, training):
    """torch._dynamo captures every HILA pair in one graph, in inference and in training (the
    attention cores' and Mix-FFNs' autograd Functions, the selective checkpointing of Swin's and
    HAT-Net's lower-level blocks): no break inside a HILA module; MiT and HAT-Net have no break
    at all."""
    build, shape = ENCODERS[name]
    model = build().train(training)
    with torch.set_grad_enabled(training):
        in_hila, graphs, breaks = _hila_graph_breaks(model, torch.randn(shape))
    assert in_hila == []
    if name != "swin":
        assert (graphs, breaks) == (1, 0)


@pytest.mark.slow
def test_compiled_hila_encoder_gives_the_eager_output():
    """torch.compile (inductor, CPU) of a MiT + HILA S3 encoder equals eager to 1e-5: one pair,
    since every pair lowers the same operations (and the S234 encoders trace as one graph
    above), on 5 blocks, since inductor's code generation dominates the test's time."""
    torch.manual_seed(0)
    hila = HILASettings(stages=(3,), parity_mode=True)
    model = MixVisionTransformer(variant="B0", depths=(1, 1, 2, 1), hila=hila).eval()
    images = torch.randn(1, 3, 67, 45)
    torch._dynamo.reset()
    compiled = torch.compile(model)
    with torch.no_grad():
        eager, fast = model(images), compiled(images)
    for key in eager:
        torch.testing.assert_close(fast[key], eager[key], atol=TOL, rtol=0)


@pytest.mark.slow
def test_compiled_hila_training_step_gives_the_eager_gradients():
    """torch.compile (inductor, CPU) of a MiT + HILA S3 encoder in training: the outputs and every
    parameter's gradient equal eager ones to 1e-5 (the cores' backward passes sum their key and
    value gradients functionally under the compiler, in place in eager)."""
    torch.manual_seed(0)
    hila = HILASettings(stages=(3,), parity_mode=True)
    model = MixVisionTransformer(
        variant="B0", depths=(1, 1, 2, 1), hila=hila, drop_path_rate=0.0
    ).train()
    images = torch.randn(1, 3, 67, 45)

    def step(run):
        model.zero_grad(set_to_none=True)
        outputs = run(images)
        sum((out * out).mean() for out in outputs.values()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return {k: v.detach() for k, v in outputs.items()}, grads

    eager_outputs, eager_grads = step(model)
    torch._dynamo.reset()
    outputs, grads = step(torch.compile(model))
    for key in eager_outputs:
        torch.testing.assert_close(outputs[key], eager_outputs[key], atol=TOL, rtol=0)
    assert grads.keys() == eager_grads.keys()
    for name in eager_grads:
        torch.testing.assert_close(grads[name], eager_grads[name], atol=TOL, rtol=TOL, msg=name)
