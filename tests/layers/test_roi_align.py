"""instseg's RoIAlign op against torchvision.ops.roi_align (an independent implementation), hand-computed
values, float64 gradcheck, torch.library.opcheck, and its error messages; the shared op tester's
matrix (tests/layers/op_tester.py: dtypes x devices x memory layouts, opcheck of the forward and
backward ops, torch.compile, torch.export, autocast, determinism, double backward) in TestRoIAlignOp."""
import itertools

import pytest
import torch
import torchvision
from op_tester import OpCase, OpTester

from instseg.layers import ROIAlign, roi_align
from instseg.layers.memory_format import is_channels_last

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def random_rois(num, height, width, batch, dtype=torch.float32, seed=0, margin=0.0):
    """Boxes in image coordinates of a (height, width) image; `margin` (a fraction of the image) lets
    boxes reach outside it. Rows are (batch_index, x1, y1, x2, y2)."""
    g = torch.Generator().manual_seed(seed)
    lo = torch.tensor([-margin * width, -margin * height])
    span = torch.tensor([width, height]) * (1 + 2 * margin)
    p1 = lo + torch.rand(num, 2, generator=g) * span
    p2 = lo + torch.rand(num, 2, generator=g) * span
    xy1, xy2 = torch.minimum(p1, p2), torch.maximum(p1, p2)
    index = torch.randint(0, batch, (num, 1), generator=g).float()
    return torch.cat([index, xy1, xy2], dim=1).to(dtype)


def special_rois(height, width, dtype):
    """Wholly outside, partly outside, zero-size and one-pixel boxes."""
    return torch.tensor(
        [
            [0, -50.0, -40.0, -10.0, -5.0],  # wholly outside (top-left)
            [1, width + 5.0, 2.0, width + 30.0, 9.0],  # wholly outside (right)
            [0, -8.0, -8.0, 10.0, 12.0],  # partly outside
            [1, width - 6.0, height - 4.0, width + 9.0, height + 20.0],  # partly outside
            [0, 5.0, 5.0, 5.0, 5.0],  # zero-size
            [1, 3.0, 7.0, 3.0, 15.0],  # zero width
            [0, 2.0, 2.0, 3.0, 3.0],  # one pixel
        ],
        dtype=dtype,
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned,sampling_ratio", itertools.product([False, True], [0, 2]))
def test_matches_torchvision(device, dtype, aligned, sampling_ratio):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 24, 36, generator=g, dtype=dtype).to(device)
    rois = torch.cat(
        [random_rois(40, 24 * 4, 36 * 4, 2, dtype, margin=0.2), special_rois(24 * 4, 36 * 4, dtype)]
    ).to(device)
    for output_size in [(7, 7), (5, 3)]:
        args = (output_size, 0.25, sampling_ratio, aligned)
        x1 = x.clone().requires_grad_(True)
        x2 = x.clone().requires_grad_(True)
        ours = roi_align(x1, rois, *args)
        ref = torchvision.ops.roi_align(x2, rois, *args)
        torch.testing.assert_close(ours, ref, atol=TOL[dtype], rtol=0)
        grad_out = torch.randn(ours.shape, generator=g, dtype=dtype).to(device)
        (g1,) = torch.autograd.grad(ours, x1, grad_out)
        (g2,) = torch.autograd.grad(ref, x2, grad_out)
        torch.testing.assert_close(g1, g2, atol=10 * TOL[dtype], rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_memory_formats_and_box_lists(device):
    x = torch.randn(2, 6, 20, 20, device=device)
    rois = random_rois(30, 20, 20, 2).to(device)
    ref = torchvision.ops.roi_align(x, rois, 4, 1.0, 2, True)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    non_contiguous = torch.randn(2, 20, 20, 6, device=device).permute(0, 3, 1, 2)
    non_contiguous.copy_(x)
    assert not non_contiguous.is_contiguous()
    for inp in (channels_last, non_contiguous):
        torch.testing.assert_close(roi_align(inp, rois, 4, 1.0, 2, True), ref, atol=1e-5, rtol=0)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    order = torch.cat([torch.nonzero(rois[:, 0] == i)[:, 0] for i in range(2)])
    torch.testing.assert_close(roi_align(x, boxes, 4, 1.0, 2, True), ref[order], atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned,sampling_ratio", [(True, 0), (False, 2)])
def test_channels_last_is_pooled_in_place_like_nchw(dtype, aligned, sampling_ratio):
    """CPU: a channels-last map is pooled without a copy into a channels-last result, equal bit for bit
    to the NCHW kernel's (the same sums in the same order) and to torchvision's; gradients too. 130
    channels: two full blocks of 64 and a partial one."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 130, 24, 36, generator=g, dtype=dtype)
    rois = torch.cat([random_rois(30, 24 * 4, 36 * 4, 2, dtype, margin=0.2), special_rois(24 * 4, 36 * 4, dtype)])
    args = ((7, 5), 0.25, sampling_ratio, aligned)
    x_cl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    out = roi_align(x_cl, rois, *args)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, roi_align(x, rois, *args))
    x_ref = x.clone().requires_grad_()
    ref = torchvision.ops.roi_align(x_ref, rois, *args)
    torch.testing.assert_close(out, ref, atol=TOL[dtype], rtol=0)
    grad = torch.randn(ref.shape, generator=g, dtype=dtype)
    out.backward(grad.contiguous(memory_format=torch.channels_last))
    ref.backward(grad)
    torch.testing.assert_close(x_cl.grad, x_ref.grad, atol=10 * TOL[dtype], rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned,sampling_ratio", [(True, 0), (False, 2)])
def test_channels_last_grad_is_summed_in_place_like_nchw(dtype, aligned, sampling_ratio):
    """CPU: a channels-last output gradient (what a channels-last model sends back) is summed into a
    channels-last input gradient, equal bit for bit to the NCHW kernel's (the same additions in the
    same order), also where a box spans the row bands of several threads."""
    g = torch.Generator().manual_seed(3)
    rois = torch.cat([random_rois(30, 24 * 4, 36 * 4, 2, dtype, margin=0.2), special_rois(24 * 4, 36 * 4, dtype)])
    grad = torch.randn(len(rois), 130, 7, 5, generator=g, dtype=dtype)
    args = (rois, 0.25, 7, 5, 2, 130, 24, 36, sampling_ratio, aligned)
    nchw = torch.ops.instseg._roi_align_backward(grad, *args)
    threads = torch.get_num_threads()
    try:
        for num_threads in (1, 3):  # 3 threads: bands of 16 of the 2 x 24 rows, so bands split images
            torch.set_num_threads(num_threads)
            ours = torch.ops.instseg._roi_align_backward(grad.contiguous(memory_format=torch.channels_last), *args)
            assert is_channels_last(ours)
            assert torch.equal(ours, nchw)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_reads_strided_grads(device):
    # the backward kernel reads grad through its strides: an expanded grad (stride 0, as from a sum
    # or a mean) and a transposed one must give torchvision's input gradient
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, device=device)
    rois = random_rois(20, 16, 16, 2, torch.float64, margin=0.2).to(device)
    transposed = torch.randn(len(rois), 3, 5, 5, dtype=torch.float64, device=device).transpose(2, 3)
    expanded = torch.ones(1, 1, 1, 1, dtype=torch.float64, device=device).expand(len(rois), 3, 5, 5)
    for grad in (transposed, expanded):
        assert not grad.is_contiguous()
        grads = []
        for op in (roi_align, torchvision.ops.roi_align):
            inp = x.clone().requires_grad_(True)
            op(inp, rois, 5, 1.0, 2, True).backward(grad)
            grads.append(inp.grad)
        torch.testing.assert_close(grads[0], grads[1], atol=1e-12, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_rois_and_empty_input(device):
    x = torch.randn(2, 3, 10, 10, device=device, requires_grad=True)
    out = roi_align(x, torch.zeros(0, 5, device=device), 7, 1.0, 2, True)
    assert out.shape == (0, 3, 7, 7)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    empty_map = torch.randn(1, 3, 0, 10, device=device)
    out = roi_align(empty_map, torch.tensor([[0, 1.0, 1.0, 4.0, 4.0]], device=device), 2, 1.0, 2, True)
    assert out.shape == (1, 3, 2, 2) and torch.all(out == 0)


def test_hand_computed_values():
    # 4 x 4 map with value = 4 * y + x; bilinear interpolation of a linear map is exact, so each bin
    # is the map's value at the bin centre: 4 * cy + cx (aligned: pixel centres at integer coords).
    x = torch.arange(16, dtype=torch.float64).reshape(1, 1, 4, 4)
    rois = torch.tensor([[0, 0.5, 0.5, 2.5, 2.5]], dtype=torch.float64)
    out = roi_align(x, rois, 2, 1.0, 2, aligned=True)
    # box (0,0)-(2,2) after the -0.5 shift, bins centred at 0.5 and 1.5
    expected = torch.tensor([[4 * 0.5 + 0.5, 4 * 0.5 + 1.5], [4 * 1.5 + 0.5, 4 * 1.5 + 1.5]])
    torch.testing.assert_close(out[0, 0], expected.double())
    # a box wholly outside the map by more than one pixel pools to exactly zero
    outside = torch.tensor([[0, 10.0, 10.0, 12.0, 12.0]], dtype=torch.float64)
    assert torch.all(roi_align(x, outside, 2, 1.0, 2, aligned=True) == 0)


NON_FINITE_ROIS = [
    [0, float("nan"), 1.0, 5.0, 6.0],
    [1, 1.0, 1.0, float("inf"), 6.0],
    [0, float("-inf"), float("nan"), 3.0, float("inf")],
    [1, 0.0, 0.0, 1e30, 1e30],  # finite, but over 2^24 samples per bin
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("aligned,sampling_ratio", [(True, 2), (False, 0), (True, 0)])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_non_finite_boxes_pool_to_zero(device, aligned, sampling_ratio, memory_format):
    """A diverged model's boxes (NaN, inf, astronomically large) used to read memory at undefined
    indices (a segfault); they sample nothing now, and the other boxes are unaffected."""
    x = torch.rand(2, 3, 8, 9, dtype=torch.float64, device=device).contiguous(memory_format=memory_format)
    x.requires_grad_(True)
    good = random_rois(5, 8, 9, 2, torch.float64).to(device)
    bad = torch.tensor(NON_FINITE_ROIS, dtype=torch.float64, device=device)
    out = roi_align(x, torch.cat([good, bad]), 3, 1.0, sampling_ratio, aligned)
    out.sum().backward()
    assert torch.equal(out[len(good):], torch.zeros_like(out[len(good):]))
    grad_with_bad = x.grad.clone()
    x.grad = None
    expected = roi_align(x, good, 3, 1.0, sampling_ratio, aligned)
    expected.sum().backward()
    torch.testing.assert_close(out[: len(good)], expected, rtol=0, atol=0)
    torch.testing.assert_close(grad_with_bad, x.grad)  # summed in another order


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("aligned,sampling_ratio", [(True, 2), (False, 0), (True, -1)])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_gradcheck(device, seed, aligned, sampling_ratio, memory_format):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 2, 8, 9, generator=g, dtype=torch.float64).to(device)
    x = x.contiguous(memory_format=memory_format).requires_grad_(True)
    rois = torch.cat([random_rois(6, 8, 9, 2, torch.float64, seed, margin=0.3),
                      special_rois(8, 9, torch.float64)]).to(device)

    def fn(inp):
        return roi_align(inp, rois, (3, 2), 1.0, sampling_ratio, aligned)

    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_opcheck_schema_autograd_fake(memory_format):
    """Also checks that the fake kernels give the real ones' strides (channels-last in and out)."""
    x = torch.randn(2, 3, 10, 12).contiguous(memory_format=memory_format).requires_grad_()
    rois = random_rois(5, 10, 12, 2)
    torch.library.opcheck(torch.ops.instseg.roi_align.default, (x, rois, 1.0, 3, 3, 2, True))
    grad = torch.randn(5, 3, 3, 3).contiguous(memory_format=memory_format)
    torch.library.opcheck(
        torch.ops.instseg._roi_align_backward.default, (grad, rois, 1.0, 3, 3, 2, 3, 10, 12, 2, True)
    )


def test_torch_compile_traces_the_op():
    x = torch.randn(1, 4, 16, 16)
    rois = random_rois(8, 16, 16, 1)
    module = ROIAlign((4, 4), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    compiled = torch.compile(module, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, rois), module(x, rois))


def test_module_casts_rois_to_input_dtype():
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    rois = random_rois(3, 8, 8, 1, torch.float32)
    out = ROIAlign(2, 1.0, 2)(x, rois)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, torchvision.ops.roi_align(x, rois.double(), 2, 1.0, 2, True))


def test_autocast_pools_in_float32_with_unrounded_boxes():
    """Under CPU autocast (bfloat16): float32 inside, the input's dtype out (detectron2's ROIPooler
    writes the result into a tensor of that dtype), boxes not rounded to bfloat16, gradients through."""
    x = torch.randn(2, 3, 16, 16).bfloat16().requires_grad_()
    rois = random_rois(6, 16, 16, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ROIAlign(4, 1.0, 2)(x, rois)
    assert out.dtype == torch.bfloat16
    x32 = x.detach().float().requires_grad_()
    expected = roi_align(x32, rois, 4, 1.0, 2, True)
    assert torch.equal(out, expected.bfloat16())
    assert not torch.equal(out, roi_align(x32, rois.bfloat16().float(), 4, 1.0, 2, True).bfloat16())
    grad = torch.randn_like(expected)
    out.backward(grad.bfloat16())
    expected.backward(grad.bfloat16().float())
    assert x.grad.dtype == torch.bfloat16 and torch.equal(x.grad, x32.grad.bfloat16())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_autocast_float16_pools_in_float32_with_unrounded_boxes():
    """Under CUDA autocast (float16), as on CPU with bfloat16: float32 inside, float16 out, float32
    boxes (ROIAlign keeps them unrounded under autocast), gradients through in float16."""
    x = torch.randn(2, 3, 16, 16, device="cuda").half().requires_grad_()
    rois = random_rois(6, 16, 16, 2).cuda()
    with torch.autocast("cuda", dtype=torch.float16):
        out = ROIAlign(4, 1.0, 2)(x, rois)
    assert out.dtype == torch.float16
    x32 = x.detach().float().requires_grad_()
    expected = roi_align(x32, rois, 4, 1.0, 2, True)
    assert torch.equal(out, expected.half())
    grad = torch.randn_like(expected).half()
    out.backward(grad)
    expected.backward(grad.float())
    assert x.grad.dtype == torch.float16
    torch.testing.assert_close(x.grad, x32.grad.half(), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize(
    "make_args,message",
    [
        (lambda: (torch.randn(3, 10, 10), torch.zeros(1, 5)), "input must be \\(N, C, H, W\\)"),
        (lambda: (torch.randn(1, 3, 10, 10), torch.zeros(1, 4)), "rois must be \\(K, 5\\)"),
        (lambda: (torch.randn(1, 3, 10, 10), torch.zeros(1, 5, dtype=torch.float64)),
         "rois must have the input's dtype"),
        (lambda: (torch.ones(1, 3, 10, 10, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long)),
         "input must be a floating-point tensor"),
        (lambda: (torch.randn(1, 3, 10, 10), torch.tensor([[1.0, 0, 0, 2, 2]])),
         "is not an image index in \\[0, 1\\)"),
    ],
)
def test_clear_errors(make_args, message):
    x, rois = make_args()
    with pytest.raises(RuntimeError, match=message):
        torch.ops.instseg.roi_align(x, rois, 1.0, 2, 2, 2, True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU to mix devices")
def test_error_on_mixed_devices():
    x, rois = torch.randn(1, 1, 4, 4, device="cuda"), torch.zeros(1, 5)
    with pytest.raises(RuntimeError, match="rois must be on the input's device"):
        torch.ops.instseg.roi_align(x, rois, 1.0, 2, 2, 2, True)


def test_error_on_non_positive_output_size():
    with pytest.raises(RuntimeError, match="output size must be positive"):
        roi_align(torch.randn(1, 1, 4, 4), torch.zeros(1, 5), (0, 2))


# ---- the shared op tester ------------------------------------------------------------------------

ROI_ALIGN_PARAMS = (0.5, 3, 4, 2, True)  # spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned


def _roi_align_inputs(seed, scale):
    """A (2, 3, 8s, 9s + 1) map at stride 2 and 6s boxes, some of them across or beyond its borders."""
    g = torch.Generator().manual_seed(seed)
    height, width = 8 * scale, 9 * scale + 1
    x = torch.randn(2, 3, height, width, generator=g, dtype=torch.float64)
    rois = torch.cat([random_rois(6 * scale - 3, 2 * height, 2 * width, 2, torch.float64, seed, margin=0.2),
                      special_rois(2 * height, 2 * width, torch.float64)[[0, 2, 6]]])
    return x, rois


def _roi_align_reference(x, rois):
    spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = ROI_ALIGN_PARAMS
    return torchvision.ops.roi_align(x, rois, (pooled_height, pooled_width), spatial_scale, sampling_ratio, aligned)


def _roi_align_backward_args(tensors, grad):
    x, rois = tensors
    spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = ROI_ALIGN_PARAMS
    return (grad, rois, spatial_scale, pooled_height, pooled_width, *x.shape, sampling_ratio, aligned)


class TestRoIAlignOp(OpTester):
    case = OpCase(
        name="roi_align",
        make_inputs=_roi_align_inputs,
        params=ROI_ALIGN_PARAMS,
        differentiable=(0,),
        reference=_roi_align_reference,
        backward_args=_roi_align_backward_args,
        per_box=(1,),
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_half_precision_on_cpu_is_float32_rounded_once(dtype, memory_format):
    """CPU float16/bfloat16: computed by the float32 kernel and rounded once, keeping the memory format
    (channels-last in, channels-last out and input gradient)."""
    x, rois = _roi_align_inputs(11, 1)
    x = x.to(dtype).contiguous(memory_format=memory_format).requires_grad_()
    rois = rois.to(dtype)
    out = roi_align(x, rois, (3, 4), 0.5, 2, True)
    x32 = x.detach().float().requires_grad_()
    expected = roi_align(x32, rois.float(), (3, 4), 0.5, 2, True)
    assert out.dtype == dtype and torch.equal(out, expected.to(dtype))
    assert out.is_contiguous(memory_format=memory_format)
    grad = torch.randn(out.shape).to(dtype).contiguous(memory_format=memory_format)
    out.backward(grad)
    expected.backward(grad.float())
    assert x.grad.dtype == dtype and torch.equal(x.grad, x32.grad.to(dtype))
    assert x.grad.is_contiguous(memory_format=memory_format)


def test_compile_dynamic_output_size_is_symbolic():
    """The pooled sizes are SymInt in the schema: an output size computed from a dynamic shape is traced
    as a symbol, so that another size runs the same graph (aot_eager, forward and backward)."""
    torch._dynamo.reset()

    def fn(x, rois):
        return torch.ops.instseg.roi_align(x, rois, 1.0, x.size(2) // 2, x.size(3) // 2, 2, True)

    compiled = torch.compile(fn, backend="aot_eager", dynamic=True, fullgraph=True)
    for i, (height, width) in enumerate([(8, 10), (12, 6)]):
        x = torch.randn(2, 3, height, width, requires_grad=True)
        rois = random_rois(5, height, width, 2, seed=i)
        with torch.compiler.set_stance("fail_on_recompile" if i else "default"):
            out = compiled(x, rois)
        assert out.shape == (5, 3, height // 2, width // 2)
        x_ref = x.detach().clone().requires_grad_()
        ref = fn(x_ref, rois)
        torch.testing.assert_close(out, ref)
        out.sum().backward()
        ref.sum().backward()
        torch.testing.assert_close(x.grad, x_ref.grad)
    torch._dynamo.reset()
