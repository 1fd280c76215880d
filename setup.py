"""Build and install the instseg toolkit and its C++/CUDA ops (one torch extension, instseg._C).

CPU kernels are always built. CUDA kernels are built when torch sees a GPU and CUDA_HOME is set, or
when FORCE_CUDA=1 (a compile-only build on a machine without a GPU; TORCH_CUDA_ARCH_LIST limits the
architectures, e.g. "9.0").
"""
import glob
import os

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = "csrc"


def _want_cuda():
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.cuda.is_available() and CUDA_HOME is not None


def _pip_cuda_include_dirs():
    """torch's CUDA headers include cusparse.h/cublas_v2.h; a bare nvcc toolkit may lack them, but
    the nvidia-* wheels that torch depends on ship them under site-packages/nvidia/*/include."""
    nvidia_root = os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia")
    return sorted(glob.glob(os.path.join(nvidia_root, "*", "include")))


def get_extensions():
    sources = sorted(glob.glob(os.path.join(CSRC, "*.cpp")) + glob.glob(os.path.join(CSRC, "*", "*.cpp")))
    # at::parallel_for expands to an OpenMP region in the headers; without -fopenmp it runs serially.
    # -fno-trapping-math lets GCC turn float compares into selects, so loops with a clamp (the
    # blender's softmax exp) vectorize; nothing here reads floating-point exception flags.
    extra_compile_args = {"cxx": ["-O3", "-fopenmp", "-fno-trapping-math"]}
    extension = CppExtension
    include_dirs = [os.path.join(ROOT, CSRC)]
    if _want_cuda():
        extension = CUDAExtension
        sources += sorted(glob.glob(os.path.join(CSRC, "*", "*.cu")))
        extra_compile_args["nvcc"] = ["-O3"]
        include_dirs += _pip_cuda_include_dirs()
    return [
        extension(
            "instseg._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args=extra_compile_args,
            extra_link_args=["-fopenmp"],
        )
    ]


setup(
    name="instseg",
    version="0.1.0",
    description="BlendMask, CenterMask, RefineMask and Mask R-CNN as Detectron2 plugins",
    packages=find_packages(include=["instseg*", "blendmask*", "centermask*", "refinemask*", "benchmark*"]),
    python_requires=">=3.10",
    # the methods instseg finds and loads when it builds the project config (instseg/methods.py)
    entry_points={"instseg.methods": ["blendmask = blendmask", "centermask = centermask", "refinemask = refinemask"]},
    ext_modules=get_extensions(),
    cmdclass={"build_ext": BuildExtension},
)
