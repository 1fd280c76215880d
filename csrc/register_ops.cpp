// The schema of every op of the instseg extension. Kernels register per device next to their code
// (roi_align/, blender/); autograd formulas and fake (meta) kernels are registered from Python in
// instseg/layers/roi_align.py and instseg/layers/blend.py.
//
// Sizes (output bins, the input's shape given to a backward) are SymInt, so that torch.compile's
// dynamic shapes and torch.export trace them symbolically; the kernels take them as int64_t (the
// dispatcher converts concrete SymInts). sampling_ratio is a count of samples, not a size: int.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(instseg, m) {
  m.def(
      "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
      "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
      "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, "
      "int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "blend(Tensor bases, Tensor rois, Tensor attns, float spatial_scale, SymInt output_size, "
      "int sampling_ratio, bool aligned, bool bilinear) -> Tensor");
  m.def(
      "_blend_backward(Tensor grad, Tensor bases, Tensor rois, Tensor attns, float spatial_scale, "
      "SymInt output_size, int sampling_ratio, bool aligned, bool bilinear) -> (Tensor, Tensor)");
}

// `import instseg._C` loads this library, which runs the registrations above.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
