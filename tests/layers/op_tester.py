"""One tester for this project's custom ops (instseg::roi_align, instseg::blend).

An op is described by an `OpCase`: how to make its inputs, its call, an independent reference (a
plain PyTorch / torchvision composition) and the arguments of its registered backward op. A test
module subclasses `OpTester` with `case = OpCase(...)`; the class's tests then run the matrix

    dtype (float16, bfloat16, float32, float64) x device (cpu, cuda when present)
    x memory layout (contiguous, non-contiguous, channels-last) x requires_grad

over: values and gradients against the reference, float64 gradcheck, torch.library.opcheck of the
forward op and of the backward op, torch.compile (aot_eager, and inductor: slow) with dynamic=True
forward and backward (no recompilation for other sizes), torch.export, CUDA autocast float16,
torch.use_deterministic_algorithms, and the error of a double backward.

CUDA cases are skipped without a GPU.
"""
import dataclasses
import warnings
from typing import Callable, Sequence, Tuple

import pytest
import torch
from torch import Tensor

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
LAYOUTS = ["contiguous", "non_contiguous", "channels_last"]

# (atol, rtol) of an op's output and of its gradients in a dtype, against the float64 reference of
# the same (rounded) inputs. Half precision: computed in float32 and rounded once on CPU; on CUDA the
# backward adds into the half-precision gradient with atomics (several roundings), hence the wider
# gradient tolerances.
OUTPUT_TOL = {
    torch.float16: (4e-3, 4e-3),
    torch.float32: (1e-5, 1e-5),
    torch.float64: (1e-12, 1e-12),
    torch.bfloat16: (3e-2, 2e-2),
}
GRAD_TOL = {
    torch.float16: (2e-2, 1e-2),
    torch.float32: (1e-4, 1e-5),
    torch.float64: (1e-11, 1e-11),
    torch.bfloat16: (1.5e-1, 5e-2),
}


def to_layout(t: Tensor, layout: str) -> Tensor:
    """A copy of a 4-d `t` in a memory layout: contiguous, channels_last, or non_contiguous (every
    other column of a buffer twice as wide: strided like neither NCHW nor NHWC)."""
    if layout == "contiguous":
        return t.contiguous().clone()
    if layout == "channels_last":
        out = t.contiguous(memory_format=torch.channels_last).clone(memory_format=torch.channels_last)
        assert out.is_contiguous(memory_format=torch.channels_last)
        return out
    if layout == "non_contiguous":
        buffer = t.new_zeros(*t.shape[:-1], 2 * t.shape[-1])
        buffer[..., ::2] = t
        out = buffer[..., ::2]
        assert not out.is_contiguous() and not out.is_contiguous(memory_format=torch.channels_last)
        return out
    raise ValueError(layout)


@dataclasses.dataclass
class OpCase:
    """An op of the tester.

    name: the op, torch.ops.instseg.<name>; its backward op is torch.ops.instseg._<name>_backward.
    make_inputs(seed, scale): the op's tensor arguments (float64, CPU), in the schema's order; `scale`
        (1 or 2) makes the sizes that torch.compile(dynamic=True) and torch.export see vary.
    params: the op's other arguments, after the tensors.
    differentiable: the indices of the tensors with a gradient (all 4-d: the layout applies to them).
    per_box: the indices of the tensors with one row per box (dim 0), dynamic in torch.export.
    reference(*tensors): an independent implementation of op(*tensors, *params).
    backward_args(tensors, grad): the backward op's arguments for that output gradient.
    """

    name: str
    make_inputs: Callable[[int, int], Tuple[Tensor, ...]]
    params: tuple
    differentiable: Sequence[int]
    reference: Callable[..., Tensor]
    backward_args: Callable[[Tuple[Tensor, ...], Tensor], tuple]
    per_box: Sequence[int]

    @property
    def op(self):
        return getattr(torch.ops.instseg, self.name).default

    @property
    def backward_op(self):
        return getattr(torch.ops.instseg, f"_{self.name}_backward").default

    def __call__(self, *tensors: Tensor) -> Tensor:
        return self.op(*tensors, *self.params)

    def inputs(self, dtype=torch.float64, device="cpu", layout="contiguous", requires_grad=False, seed=0, scale=1):
        """The inputs in a dtype, on a device, the differentiable ones in a layout (and requiring
        grad if asked)."""
        tensors = []
        for i, t in enumerate(self.make_inputs(seed, scale)):
            t = t.to(device=device, dtype=dtype)
            if i in self.differentiable:
                t = to_layout(t, layout).requires_grad_(requires_grad)
            tensors.append(t)
        return tuple(tensors)


def _grads(out: Tensor, tensors, case: OpCase, grad_out: Tensor):
    return torch.autograd.grad(out, [tensors[i] for i in case.differentiable], grad_out)


def _assert_close(actual: Tensor, expected: Tensor, tol):
    atol, rtol = tol
    torch.testing.assert_close(actual.detach().cpu().double(), expected.detach().cpu().double(), atol=atol, rtol=rtol)


class OpTester:
    """Subclass as `class TestXOp(OpTester): case = OpCase(...)`."""

    case: OpCase

    # ---- values and gradients --------------------------------------------------------------

    @pytest.mark.parametrize("layout", LAYOUTS)
    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize("device", DEVICES)
    def test_matches_reference(self, device, dtype, layout):
        case = self.case
        tensors = case.inputs(dtype, device, layout, requires_grad=True, seed=1)
        out = case(*tensors)
        assert out.dtype == dtype and out.device.type == device
        # the reference runs on the same (rounded) values in float64 on CPU
        ref_tensors = tuple(t.detach().cpu().double().requires_grad_(i in case.differentiable) for i, t in enumerate(tensors))
        ref = case.reference(*ref_tensors)
        _assert_close(out, ref, OUTPUT_TOL[dtype])
        grad_out = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(dtype)
        grads = _grads(out, tensors, case, grad_out.to(device))
        ref_grads = _grads(ref, ref_tensors, case, grad_out.double())
        for g, r, i in zip(grads, ref_grads, case.differentiable):
            assert g.dtype == dtype and g.shape == tensors[i].shape
            _assert_close(g, r, GRAD_TOL[dtype])

    @pytest.mark.parametrize("layout", LAYOUTS)
    @pytest.mark.parametrize("device", DEVICES)
    def test_gradcheck(self, device, layout):
        case = self.case
        tensors = case.inputs(torch.float64, device, layout, requires_grad=True, seed=3)
        diff = [tensors[i] for i in case.differentiable]

        def fn(*d):
            args = list(tensors)
            for i, t in zip(case.differentiable, d):
                args[i] = t
            return case(*args)

        # CUDA's backward adds with atomics, in a varying order: allow its last-bit differences
        nondet_tol = 1e-12 if device == "cuda" else 0.0
        assert torch.autograd.gradcheck(fn, diff, eps=1e-6, atol=1e-5, nondet_tol=nondet_tol)

    # ---- torch.library.opcheck ---------------------------------------------------------------

    @pytest.mark.parametrize("layout", LAYOUTS)
    @pytest.mark.parametrize("requires_grad", [False, True])
    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize("device", DEVICES)
    def test_opcheck_forward(self, device, dtype, requires_grad, layout):
        """Schema, autograd registration, fake kernel (shapes, strides: a layout's, dtype) and
        aot_dispatch with dynamic shapes (its forward and, with requires_grad, its backward)."""
        case = self.case
        tensors = case.inputs(dtype, device, layout, requires_grad=requires_grad)
        torch.library.opcheck(case.op, (*tensors, *case.params))

    @pytest.mark.parametrize("layout", LAYOUTS)
    @pytest.mark.parametrize("requires_grad", [False, True])
    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize("device", DEVICES)
    def test_opcheck_backward(self, device, dtype, requires_grad, layout):
        """The registered backward op (the layout is the inputs' and a 4-d output gradient's); with
        requires_grad its own backward (a double backward) is the clear error of
        test_double_backward_raises, which aot_dispatch reaches."""
        case = self.case
        tensors = case.inputs(dtype, device, layout, requires_grad=requires_grad)
        out = case(*[t.detach() for t in tensors])
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(4)).to(device=device, dtype=dtype)
        if grad.dim() == 4:
            grad = to_layout(grad, layout)
        args = case.backward_args(tensors, grad.requires_grad_(requires_grad))
        checks = ("test_schema", "test_autograd_registration", "test_faketensor")
        if not requires_grad:
            checks += ("test_aot_dispatch_dynamic",)
        torch.library.opcheck(case.backward_op, args, test_utils=checks)
        if requires_grad:
            with pytest.raises(Exception, match=f"instseg::{case.name}: double backward is not supported"):
                torch.library.opcheck(case.backward_op, args, test_utils="test_aot_dispatch_dynamic")

    # ---- torch.compile and torch.export ------------------------------------------------------

    def _check_compiled(self, backend, device, dtype, layout="contiguous"):
        """torch.compile(dynamic=True): forward and backward equal eager's; a second call with other
        sizes (boxes, map, output) runs the same graph (recompiling fails)."""
        case = self.case
        torch._dynamo.reset()
        compiled = torch.compile(case.__call__, backend=backend, dynamic=True, fullgraph=True)
        tol = OUTPUT_TOL[dtype]
        for scale in (1, 2):
            stance = "fail_on_recompile" if scale == 2 else "default"
            tensors = case.inputs(dtype, device, layout, requires_grad=True, seed=5, scale=scale)
            eager_tensors = tuple(t.detach().clone().requires_grad_(t.requires_grad) for t in tensors)
            with torch.compiler.set_stance(stance):
                out = compiled(*tensors)
            expected = case(*eager_tensors)
            _assert_close(out, expected, tol)
            grad_out = torch.randn(expected.shape, generator=torch.Generator().manual_seed(6)).to(device=device, dtype=dtype)
            for g, e in zip(_grads(out, tensors, case, grad_out), _grads(expected, eager_tensors, case, grad_out)):
                _assert_close(g, e, GRAD_TOL[dtype])
        torch._dynamo.reset()

    @pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
    @pytest.mark.parametrize("device", DEVICES)
    def test_compile_aot_eager_dynamic(self, device, dtype, layout):
        self._check_compiled("aot_eager", device, dtype, layout)

    @pytest.mark.slow
    @pytest.mark.parametrize("device", DEVICES)
    def test_compile_inductor_dynamic(self, device):
        self._check_compiled("inductor", device, torch.float32)

    @pytest.mark.parametrize("device", DEVICES)
    def test_export(self, device):
        """torch.export of a module calling the op, the number of boxes dynamic: the exported program
        runs and equals eager, also for another number of boxes."""
        case = self.case

        class Module(torch.nn.Module):
            def forward(self, *tensors):
                return case(*tensors)

        tensors = case.inputs(torch.float32, device, seed=7)
        boxes = torch.export.Dim("boxes", min=2)
        dynamic_shapes = tuple({0: boxes} if i in case.per_box else None for i in range(len(tensors)))
        exported = torch.export.export(Module(), tensors, dynamic_shapes={"tensors": dynamic_shapes})
        ops = {n.target for n in exported.graph.nodes if n.op == "call_function"}
        assert case.op in ops
        torch.testing.assert_close(exported.module()(*tensors), case(*tensors))
        fewer = tuple(t[: len(t) - 1] if s else t for t, s in zip(tensors, dynamic_shapes))
        torch.testing.assert_close(exported.module()(*fewer), case(*fewer))

    # ---- autocast, determinism, double backward ---------------------------------------------

    @needs_cuda
    @pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
    def test_cuda_autocast_float16(self, dtype):
        """Under CUDA autocast float16 the op computes in float32 (instseg/layers/autocast.py) and
        returns its first input's dtype; gradients come back in the inputs' dtypes."""
        case = self.case
        tensors = case.inputs(dtype, "cuda", requires_grad=True, seed=8)
        with torch.autocast("cuda", dtype=torch.float16):
            out = case(*tensors)
        assert out.dtype == dtype
        f32 = tuple(t.detach().float().requires_grad_(t.requires_grad) for t in tensors)
        expected = case(*f32)
        assert torch.equal(out, expected.to(dtype))
        grad_out = torch.randn(expected.shape, device="cuda", dtype=dtype)
        grads = _grads(out, tensors, case, grad_out)
        expected_grads = _grads(expected, f32, case, grad_out.float())
        for g, e, i in zip(grads, expected_grads, case.differentiable):
            assert g.dtype == tensors[i].dtype
            _assert_close(g, e, GRAD_TOL[dtype])

    @pytest.mark.parametrize("device", DEVICES)
    def test_deterministic_algorithms(self, device):
        """torch.use_deterministic_algorithms(True): the forward runs on every device; the CUDA
        backward (atomic adds) raises and, with warn_only, warns; the CPU backward runs and gives the
        same bits twice."""
        case = self.case
        previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
        try:
            torch.use_deterministic_algorithms(True)
            tensors = case.inputs(torch.float32, device, requires_grad=True, seed=9)
            out = case(*tensors)
            grad_out = torch.ones_like(out)
            if device == "cuda":
                with pytest.raises(RuntimeError, match=f"{case.name}_backward_cuda does not have a deterministic"):
                    _grads(out, tensors, case, grad_out)
                torch.use_deterministic_algorithms(True, warn_only=True)
                with pytest.warns(UserWarning, match=f"{case.name}_backward_cuda does not have a deterministic"):
                    _grads(case(*tensors), tensors, case, grad_out)
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    first = _grads(out, tensors, case, grad_out)
                    second = _grads(case(*tensors), tensors, case, grad_out)
                for a, b in zip(first, second):
                    assert torch.equal(a, b)
        finally:
            torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])

    @pytest.mark.parametrize("device", DEVICES)
    def test_double_backward_raises(self, device):
        """The gradient of the op's gradient is not implemented: a named error, not the autograd
        fallback's warning and a silently missing gradient."""
        case = self.case
        tensors = case.inputs(torch.float64, device, requires_grad=True, seed=10)
        out = case(*tensors)
        # the output gradient requires grad too, so that every gradient depends on something
        # differentiable (RoIAlign's input gradient is linear in it and independent of the input)
        grad_out = torch.randn_like(out).requires_grad_()
        grads = torch.autograd.grad(out, [tensors[i] for i in case.differentiable], grad_out, create_graph=True)
        assert all(g.requires_grad for g in grads)
        with pytest.raises(RuntimeError, match=f"instseg::{case.name}: double backward is not supported"):
            sum(g.sum() for g in grads).backward()
        # a first-order gradient with create_graph=True still works (the error is only on use)
        plain = torch.autograd.grad(case(*tensors), [tensors[i] for i in case.differentiable], grad_out.detach())
        for g, p in zip(grads, plain):
            torch.testing.assert_close(g.detach(), p)
