// Blender CPU kernels, in parallel over boxes; each box is computed as whole R x R planes (crops,
// softmax weights, mask) so that the softmax vectorizes. Backward recomputes a box's planes and
// accumulates the bases' gradient in one buffer per thread (boxes of one image share base planes),
// summed at the end.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "../roi_align/roi_samples_cpu.h"
#include "blend_checks.h"
#include "blend_common.h"

namespace instseg {
namespace {

template <typename T>
struct BlendGeometry {
  int64_t num_bases, height, width, attn_size, output_size;
  T scale;
  int sampling_ratio;
  bool aligned, bilinear;
};

// A box's RoIAlign samples (shared with the RoIAlign kernels) and the attention-resize samples of
// each output row / column, computed once per box instead of once per pixel.
template <typename T>
struct BoxSamples {
  std::vector<RoISamples<T>> rois;
  std::vector<AxisSample<T>> resize;  // index y (or x) of the R x R output; rows and columns alike
};

template <typename T>
BoxSamples<T> sample_boxes(const T* rois, int64_t num_boxes, int64_t batch_size, const BlendGeometry<T>& g) {
  BoxSamples<T> s;
  s.rois = sample_rois<T>(
      rois, num_boxes, batch_size, g.height, g.width, g.scale, g.output_size, g.output_size,
      g.sampling_ratio, g.aligned, "blend");
  for (int i = 0; i < g.output_size; ++i) {
    s.resize.push_back(resize_sample<T>(i, g.output_size, g.attn_size, g.bilinear));
  }
  return s;
}

// exp for the softmax: float uses a branch-free 2^n * e^r (|r| <= ln2 / 2, degree-6 Taylor
// polynomial, relative error < 2e-7) that the compiler vectorizes over a plane; double keeps std::exp.
inline float softmax_exp(float x) {
  x = x < -87.0f ? -87.0f : x;  // x <= 0 here (logit - max); below -87 the weight is ~0 anyway; NaN stays NaN
  const float round_magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (x * 1.44269504f + round_magic) - round_magic;
  const float r = (x - n * 0.693145752f) - n * 1.42860677e-6f;  // ln2 split in two for precision
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return p * two_n;
}

inline double softmax_exp(double x) {
  return std::exp(x);
}

// The blend of one box as R x R planes (index y * R + x): crop[k], the RoIAlign of base k;
// weight[k], the softmax over k of the resized attention logits; mask = sum_k weight[k] * crop[k].
// `inv_total` (R x R), `rows` (A x R, the separable attention resize) and `crop_rows` (RoIAlign's
// separable passes) are scratch.
template <typename T>
struct BoxPlanes {
  std::vector<T> crop, weight, mask, inv_total, rows, crop_rows;
  explicit BoxPlanes(const BlendGeometry<T>& g)
      : crop(g.num_bases * g.output_size * g.output_size),
        weight(g.num_bases * g.output_size * g.output_size),
        mask(g.output_size * g.output_size),
        inv_total(g.output_size * g.output_size),
        rows(g.attn_size * g.output_size) {}
};

template <typename T>
void blend_box(const RoISamples<T>& r, const BoxSamples<T>& s, const T* base, const T* attn, const BlendGeometry<T>& g, BoxPlanes<T>& out) {
  const int R = g.output_size;
  const int64_t n = int64_t(R) * R;
  const int64_t plane = g.height * g.width;
  const int64_t attn_plane = g.attn_size * g.attn_size;
  for (int64_t k = 0; k < g.num_bases; ++k) {
    forward_plane(r, base + k * plane, g.width, R, R, out.crop_rows, out.crop.data() + k * n);
    // attention resize, separably: along x into `rows` (A x R), then along y (vectorizes over x)
    const T* a = attn + k * attn_plane;
    T* rows = out.rows.data();
    for (int row = 0; row < g.attn_size; ++row) {
      for (int x = 0; x < R; ++x) {
        const AxisSample<T>& ax = s.resize[x];
        rows[row * R + x] = ax.w_low * a[row * g.attn_size + ax.low] + ax.w_high * a[row * g.attn_size + ax.high];
      }
    }
    T* logit = out.weight.data() + k * n;
    for (int y = 0; y < R; ++y) {
      const AxisSample<T>& ay = s.resize[y];
      const T* low = rows + ay.low * R;
      const T* high = rows + ay.high * R;
      for (int x = 0; x < R; ++x) {
        logit[y * R + x] = ay.w_low * low[x] + ay.w_high * high[x];
      }
    }
  }
  // softmax over k, plane by plane so that the loops vectorize; mask first holds the max logit
  T* mask = out.mask.data();
  T* weight = out.weight.data();
  const T* crop = out.crop.data();
  std::copy(weight, weight + n, mask);
  for (int64_t k = 1; k < g.num_bases; ++k) {
    for (int64_t i = 0; i < n; ++i) {
      mask[i] = weight[k * n + i] > mask[i] ? weight[k * n + i] : mask[i];
    }
  }
  for (int64_t k = 0; k < g.num_bases; ++k) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      weight[k * n + i] = softmax_exp(weight[k * n + i] - mask[i]);
    }
  }
  T* inv_total = out.inv_total.data();  // the sum over k first, then its inverse
  std::copy(weight, weight + n, inv_total);
  for (int64_t k = 1; k < g.num_bases; ++k) {
    for (int64_t i = 0; i < n; ++i) {
      inv_total[i] += weight[k * n + i];
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    inv_total[i] = T(1) / inv_total[i];
  }
  std::fill(mask, mask + n, T(0));
  for (int64_t k = 0; k < g.num_bases; ++k) {
    for (int64_t i = 0; i < n; ++i) {
      weight[k * n + i] *= inv_total[i];
      mask[i] += weight[k * n + i] * crop[k * n + i];
    }
  }
}

template <typename T>
BlendGeometry<T> geometry(
    const at::Tensor& bases, const at::Tensor& attns, double scale, int64_t output_size,
    int64_t sampling_ratio, bool aligned, bool bilinear) {
  return {bases.size(1), bases.size(2), bases.size(3), attns.size(2), output_size,
          static_cast<T>(scale), static_cast<int>(sampling_ratio), aligned, bilinear};
}

// Half and bfloat16 have no CPU kernels of their own: they are blended in float32 (the CUDA kernels'
// opmath type) and the results rounded once to the inputs' dtype.
bool is_reduced_float(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

at::Tensor blend_forward_cpu(
    const at::Tensor& bases,
    const at::Tensor& rois,
    const at::Tensor& attns,
    double spatial_scale,
    int64_t output_size,
    int64_t sampling_ratio,
    bool aligned,
    bool bilinear) {
  check_blend_args(bases, rois, attns, output_size);
  TORCH_CHECK(bases.is_cpu(), "blend: CPU kernel got a tensor on ", bases.device());
  if (is_reduced_float(bases)) {
    return blend_forward_cpu(
               bases.to(at::kFloat), rois.to(at::kFloat), attns.to(at::kFloat), spatial_scale, output_size,
               sampling_ratio, aligned, bilinear)
        .to(bases.scalar_type());
  }
  const int64_t num_boxes = rois.size(0);
  at::Tensor output = at::zeros({num_boxes, output_size, output_size}, bases.options());
  if (num_boxes == 0 || bases.size(2) == 0 || bases.size(3) == 0) {
    return output;
  }
  at::Tensor bases_c = bases.contiguous(), rois_c = rois.contiguous(), attns_c = attns.contiguous();
  AT_DISPATCH_FLOATING_TYPES(bases.scalar_type(), "blend_forward_cpu", [&] {
    using T = scalar_t;
    const auto g = geometry<T>(bases, attns, spatial_scale, output_size, sampling_ratio, aligned, bilinear);
    const T* base_data = bases_c.data_ptr<T>();
    const T* roi_data = rois_c.data_ptr<T>();
    const T* attn_data = attns_c.data_ptr<T>();
    T* out = output.data_ptr<T>();
    const int64_t attn_box = g.num_bases * g.attn_size * g.attn_size;
    const int64_t base_image = g.num_bases * g.height * g.width;
    const BoxSamples<T> samples = sample_boxes(roi_data, num_boxes, bases.size(0), g);
    at::parallel_for(0, num_boxes, 1, [&](int64_t begin, int64_t end) {
      BoxPlanes<T> planes(g);
      for (int64_t p = begin; p < end; ++p) {
        const RoISamples<T>& r = samples.rois[p];
        blend_box(r, samples, base_data + r.bins.batch * base_image, attn_data + p * attn_box, g, planes);
        std::copy(planes.mask.begin(), planes.mask.end(), out + p * output_size * output_size);
      }
    });
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor> blend_backward_cpu(
    const at::Tensor& grad,
    const at::Tensor& bases,
    const at::Tensor& rois,
    const at::Tensor& attns,
    double spatial_scale,
    int64_t output_size,
    int64_t sampling_ratio,
    bool aligned,
    bool bilinear) {
  check_blend_args(bases, rois, attns, output_size);
  TORCH_CHECK(grad.is_cpu() && bases.is_cpu(), "blend backward: CPU kernel got a non-CPU tensor");
  TORCH_CHECK(
      grad.dim() == 3 && grad.size(0) == rois.size(0) && grad.size(1) == output_size &&
          grad.size(2) == output_size,
      "blend backward: grad must be (P, R, R) = (", rois.size(0), ", ", output_size, ", ",
      output_size, "), got ", grad.sizes());
  if (is_reduced_float(bases)) {
    TORCH_CHECK(grad.scalar_type() == bases.scalar_type(), "blend backward: grad must have the bases' dtype");
    auto grads = blend_backward_cpu(
        grad.to(at::kFloat), bases.to(at::kFloat), rois.to(at::kFloat), attns.to(at::kFloat), spatial_scale,
        output_size, sampling_ratio, aligned, bilinear);
    return {std::get<0>(grads).to(bases.scalar_type()), std::get<1>(grads).to(attns.scalar_type())};
  }
  const int64_t num_boxes = rois.size(0);
  at::Tensor grad_attns = at::zeros_like(attns, at::MemoryFormat::Contiguous);
  if (num_boxes == 0 || bases.numel() == 0) {
    return {at::zeros_like(bases, at::MemoryFormat::Contiguous), grad_attns};
  }
  const int threads = at::get_num_threads();
  at::Tensor grad_bases_per_thread = at::zeros(
      {threads, bases.size(0), bases.size(1), bases.size(2), bases.size(3)}, bases.options());
  at::Tensor bases_c = bases.contiguous(), rois_c = rois.contiguous(), attns_c = attns.contiguous();
  at::Tensor grad_c = grad.contiguous();
  AT_DISPATCH_FLOATING_TYPES(bases.scalar_type(), "blend_backward_cpu", [&] {
    using T = scalar_t;
    const auto g = geometry<T>(bases, attns, spatial_scale, output_size, sampling_ratio, aligned, bilinear);
    const T* base_data = bases_c.data_ptr<T>();
    const T* roi_data = rois_c.data_ptr<T>();
    const T* attn_data = attns_c.data_ptr<T>();
    const T* grad_data = grad_c.data_ptr<T>();
    T* grad_attn_data = grad_attns.data_ptr<T>();
    T* grad_base_buffers = grad_bases_per_thread.data_ptr<T>();
    const int64_t attn_plane = g.attn_size * g.attn_size;
    const int64_t attn_box = g.num_bases * attn_plane;
    const int64_t plane = g.height * g.width;
    const int64_t base_image = g.num_bases * plane;
    const BoxSamples<T> samples = sample_boxes(roi_data, num_boxes, bases.size(0), g);
    const int64_t n = output_size * output_size;
    at::parallel_for(0, num_boxes, 1, [&](int64_t begin, int64_t end) {
      T* grad_base_all = grad_base_buffers + at::get_thread_num() * bases.numel();
      BoxPlanes<T> planes(g);
      std::vector<T> grad_crop(n);
      for (int64_t p = begin; p < end; ++p) {
        const RoISamples<T>& r = samples.rois[p];
        const T* base = base_data + r.bins.batch * base_image;
        blend_box(r, samples, base, attn_data + p * attn_box, g, planes);
        const T* gout = grad_data + p * n;
        T* grad_base = grad_base_all + r.bins.batch * base_image;
        T* grad_attn = grad_attn_data + p * attn_box;
        for (int64_t k = 0; k < g.num_bases; ++k) {
          const T* weight = planes.weight.data() + k * n;
          const T* crop = planes.crop.data() + k * n;
          // d mask / d logit_k = s_k (crop_k - mask), taken back through the separable resize:
          // along y into rows (A x R), then along x into the attention plane
          T* rows = planes.rows.data();
          std::fill(rows, rows + g.attn_size * output_size, T(0));
          for (int y = 0; y < output_size; ++y) {
            const AxisSample<T>& ay = samples.resize[y];
            T* low = rows + ay.low * output_size;
            T* high = rows + ay.high * output_size;
            for (int x = 0; x < output_size; ++x) {
              const int64_t i = y * output_size + x;
              const T ga = gout[i] * weight[i] * (crop[i] - planes.mask[i]);
              low[x] += ay.w_low * ga;
              high[x] += ay.w_high * ga;
            }
          }
          T* ga_plane = grad_attn + k * attn_plane;
          for (int row = 0; row < g.attn_size; ++row) {
            for (int x = 0; x < output_size; ++x) {
              const AxisSample<T>& ax = samples.resize[x];
              ga_plane[row * g.attn_size + ax.low] += ax.w_low * rows[row * output_size + x];
              ga_plane[row * g.attn_size + ax.high] += ax.w_high * rows[row * output_size + x];
            }
          }
          // d mask / d crop_k = s_k, taken back through RoIAlign
          for (int64_t i = 0; i < n; ++i) {
            grad_crop[i] = gout[i] * weight[i];
          }
          backward_plane(
              r, grad_crop.data(), output_size, 1, g.width, output_size, output_size,
              planes.crop_rows, grad_base + k * plane);
        }
      }
    });
  });
  return {grad_bases_per_thread.sum(0), grad_attns};
}

} // namespace

TORCH_LIBRARY_IMPL(instseg, CPU, m) {
  m.impl("blend", &blend_forward_cpu);
  m.impl("_blend_backward", &blend_backward_cpu);
}

} // namespace instseg
