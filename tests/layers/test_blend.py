"""The fused blender op against its plain PyTorch + torchvision composition, float64 gradcheck,
torch.library.opcheck, empty inputs, boxes at and beyond the borders, and its errors; the shared op
tester's matrix (tests/layers/op_tester.py: dtypes x devices x memory layouts, opcheck of the forward
and backward ops, torch.compile, torch.export, autocast, determinism, double backward) in
TestBlendOp."""
import itertools

import pytest
import torch
from op_tester import OpCase, OpTester

from instseg.layers import blend, blend_reference

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make_inputs(num_boxes=12, dtype=torch.float32, seed=0, device="cpu", bases_hw=(24, 32), attn=7):
    g = torch.Generator().manual_seed(seed)
    bases = torch.randn(2, 4, *bases_hw, generator=g, dtype=dtype)
    height, width = bases_hw[0] * 4, bases_hw[1] * 4  # bases at stride 4
    xy = torch.rand(num_boxes, 2, generator=g, dtype=dtype) * torch.tensor([width, height], dtype=dtype) * 1.2 - 10
    wh = torch.rand(num_boxes, 2, generator=g, dtype=dtype) * 60
    special = torch.tensor(
        [[0, -30, -30, -5, -5], [1, 0, 0, width, height], [0, width - 8, height - 8, width + 20, height + 20],
         [1, 10, 10, 10, 10]],  # wholly outside, whole image, across the border, zero size
        dtype=dtype,
    )
    index = torch.randint(0, 2, (num_boxes, 1), generator=g).to(dtype)
    rois = torch.cat([torch.cat([index, xy, xy + wh], dim=1), special])
    attns = torch.randn(len(rois), 4, attn, attn, generator=g, dtype=dtype)
    return bases.to(device), rois.to(device), attns.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize(
    "interp,sampling_ratio,aligned", list(itertools.product(["bilinear", "nearest"], [1, 2, 0], [True, False]))
)
def test_matches_reference(device, dtype, tol, interp, sampling_ratio, aligned):
    bases, rois, attns = make_inputs(dtype=dtype, device=device)
    args = (0.25, 16, sampling_ratio, aligned, interp)
    b1, a1 = bases.clone().requires_grad_(True), attns.clone().requires_grad_(True)
    b2, a2 = bases.clone().requires_grad_(True), attns.clone().requires_grad_(True)
    ours, ref = blend(b1, rois, a1, *args), blend_reference(b2, rois, a2, *args)
    assert ours.shape == (len(rois), 16, 16)
    torch.testing.assert_close(ours, ref, atol=tol, rtol=0)
    grad = torch.randn_like(ours)
    g1 = torch.autograd.grad(ours, (b1, a1), grad)
    g2 = torch.autograd.grad(ref, (b2, a2), grad)
    for x, y in zip(g1, g2):
        torch.testing.assert_close(x, y, atol=10 * tol, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("interp", ["bilinear", "nearest"])
def test_gradcheck(seed, interp):
    bases, rois, attns = make_inputs(4, torch.float64, seed, bases_hw=(6, 7), attn=3)
    bases.requires_grad_(True)
    attns.requires_grad_(True)

    def fn(b, a):
        return blend(b, rois, a, 0.25, 5, 2, True, interp)

    assert torch.autograd.gradcheck(fn, (bases, attns), eps=1e-6, atol=1e-5)


def test_opcheck_schema_autograd_fake():
    bases, rois, attns = make_inputs(3)
    bases.requires_grad_(True)
    attns.requires_grad_(True)
    torch.library.opcheck(torch.ops.instseg.blend.default, (bases, rois, attns, 0.25, 8, 1, True, True))


def test_autocast_blends_in_float32_and_keeps_the_bases_dtype():
    bases, rois, attns = make_inputs(8)
    bases, attns = bases.bfloat16(), attns.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = blend(bases, rois, attns, 0.25, 14)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, blend(bases.float(), rois, attns.float(), 0.25, 14).bfloat16())


def test_empty_boxes():
    bases, _, _ = make_inputs()
    bases.requires_grad_(True)
    attns = torch.zeros(0, 4, 7, 7, requires_grad=True)
    out = blend(bases, torch.zeros(0, 5), attns, 0.25, 56)
    assert out.shape == (0, 56, 56)
    out.sum().backward()
    assert torch.equal(bases.grad, torch.zeros_like(bases))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sampling_ratio", [1, 0])
def test_non_finite_boxes_blend_to_zero(device, sampling_ratio):
    """A diverged model's boxes (NaN, inf, astronomically large) used to read memory at undefined
    indices (a segfault); they crop nothing now, and the other boxes are unaffected."""
    bases, rois, attns = make_inputs(6, torch.float64, device=device)
    bad = torch.tensor(
        [[0, float("nan"), 1.0, 5.0, 6.0], [1, 1.0, 1.0, float("inf"), 6.0], [0, 0.0, 0.0, 1e30, 1e30]],
        dtype=torch.float64,
        device=device,
    )
    bad_attns = torch.randn(len(bad), *attns.shape[1:], dtype=torch.float64, device=device)
    bases.requires_grad_(True)
    out = blend(bases, torch.cat([rois, bad]), torch.cat([attns, bad_attns]), 0.25, 8, sampling_ratio)
    out.sum().backward()
    assert torch.equal(out[len(rois):], torch.zeros_like(out[len(rois):]))
    grad_with_bad = bases.grad.clone()
    bases.grad = None
    expected = blend(bases, rois, attns, 0.25, 8, sampling_ratio)
    expected.sum().backward()
    torch.testing.assert_close(out[: len(rois)], expected, rtol=0, atol=0)
    torch.testing.assert_close(grad_with_bad, bases.grad)  # summed in another order


def test_torch_compile_traces_the_op():
    bases, rois, attns = make_inputs(3)
    compiled = torch.compile(lambda b, r, a: blend(b, r, a, 0.25, 8), backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(bases, rois, attns), blend(bases, rois, attns, 0.25, 8))


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda b, r, a: (b[0], r, a), "bases must be \\(N, K, H, W\\)"),
        (lambda b, r, a: (b, r[:, :4], a), "rois must be \\(P, 5\\)"),
        (lambda b, r, a: (b, r, a[:, :3]), "attns must be \\(P, K, A, A\\)"),
        (lambda b, r, a: (b, r.double(), a), "must have the bases' dtype"),
        (lambda b, r, a: (b.repeat(1, 5, 1, 1), r, a.repeat(1, 5, 1, 1)), "K must be 1 to 16 bases, got 20"),
        (lambda b, r, a: (b[:, :0], r, a[:, :0]), "K must be 1 to 16 bases, got 0"),
        (lambda b, r, a: (b, r, a[:, :, :0, :0]), "attns must have a positive size A"),
    ],
)
def test_clear_errors(change, message):
    bases, rois, attns = change(*make_inputs(3))
    with pytest.raises(RuntimeError, match=message):
        torch.ops.instseg.blend(bases, rois, attns, 0.25, 8, 1, True, True)


def test_bad_interpolation_mode():
    with pytest.raises(ValueError, match="attn_interp"):
        blend(*make_inputs(3), 0.25, 8, attn_interp="bicubic")


# ---- the shared op tester ------------------------------------------------------------------------

BLEND_PARAMS = (0.25, 5, 2, True, True)  # spatial_scale, output_size, sampling_ratio, aligned, bilinear


def _blend_inputs(seed, scale):
    """(2, 4, 6s, 9s) bases at stride 4, 3s + 4 boxes (with the special ones) of 3 x 3 attentions (no
    two sizes alike, else torch.compile's duck sizing would take them equal)."""
    return make_inputs(3 * scale, torch.float64, seed, bases_hw=(6 * scale, 9 * scale), attn=3)


def _blend_reference(bases, rois, attns):
    spatial_scale, output_size, sampling_ratio, aligned, bilinear = BLEND_PARAMS
    interp = "bilinear" if bilinear else "nearest"
    return blend_reference(bases, rois, attns, spatial_scale, output_size, sampling_ratio, aligned, interp)


class TestBlendOp(OpTester):
    case = OpCase(
        name="blend",
        make_inputs=_blend_inputs,
        params=BLEND_PARAMS,
        differentiable=(0, 2),
        reference=_blend_reference,
        backward_args=lambda tensors, grad: (grad, *tensors, *BLEND_PARAMS),
        per_box=(1, 2),
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_cpu_is_float32_rounded_once(dtype):
    """CPU float16/bfloat16: computed by the float32 kernel and rounded once."""
    bases, rois, attns = (t.to(dtype) for t in _blend_inputs(12, 1))
    bases.requires_grad_()
    attns.requires_grad_()
    out = blend(bases, rois, attns, 0.25, 5, 2)
    b32, a32 = (t.detach().float().requires_grad_() for t in (bases, attns))
    expected = blend(b32, rois.float(), a32, 0.25, 5, 2)
    assert out.dtype == dtype and torch.equal(out, expected.to(dtype))
    grad = torch.randn(out.shape).to(dtype)
    out.backward(grad)
    expected.backward(grad.float())
    assert bases.grad.dtype == dtype and torch.equal(bases.grad, b32.grad.to(dtype))
    assert attns.grad.dtype == dtype and torch.equal(attns.grad, a32.grad.to(dtype))
