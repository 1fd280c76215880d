// RoIAlign CPU kernels. Each RoI's samples are computed once and shared by all channels
// (roi_samples_cpu.h, which pools a plane in two separable passes).
// Forward runs in parallel over (RoI, channel) pairs, or over (RoI, block of channels) for a
// channels-last input, which it pools in place into a channels-last output (no copy to NCHW);
// backward runs in parallel over channels, or over bands of image rows for a channels-last
// gradient (which it sums into a channels-last input gradient), so that no two threads ever add
// into the same gradient element.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <torch/library.h>

#include "roi_align_checks.h"
#include "roi_align_common.h"
#include "roi_samples_cpu.h"

namespace instseg {
namespace {

// Channels per work item of the channels-last forward: with 2 threads and a dozen RoIs there is
// work for both, and a RoI's row buffer stays small (rows read x pooled width x 64).
constexpr int64_t kChannelBlock = 64;

// Strided like NHWC and not like NCHW (a tensor with C == 1 or H == W == 1 is both: NCHW then).
bool is_channels_last(const at::Tensor& t) {
  return t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous();
}

// Zeros, channels-last or NCHW. (at::zeros ignores a memory format given in its options.)
at::Tensor zeros_in_format(at::IntArrayRef sizes, const at::TensorOptions& options, bool channels_last) {
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  return at::empty(sizes, options, format).zero_();
}

// Half and bfloat16 have no CPU kernels of their own: they are pooled in float32 (the CUDA kernels'
// opmath type) and the result rounded once to the input's dtype, keeping its memory format.
bool is_reduced_float(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

at::Tensor roi_align_forward_cpu(
    const at::Tensor& input,
    const at::Tensor& rois,
    double spatial_scale,
    int64_t pooled_height,
    int64_t pooled_width,
    int64_t sampling_ratio,
    bool aligned) {
  check_roi_align_args(input, rois, pooled_height, pooled_width);
  TORCH_CHECK(input.is_cpu(), "roi_align: CPU kernel got a tensor on ", input.device());
  if (is_reduced_float(input)) {
    return roi_align_forward_cpu(
               input.to(at::kFloat), rois.to(at::kFloat), spatial_scale, pooled_height, pooled_width,
               sampling_ratio, aligned)
        .to(input.scalar_type());
  }
  const int64_t num_rois = rois.size(0);
  const int64_t channels = input.size(1);
  const int height = input.size(2);
  const int width = input.size(3);
  const bool channels_last = is_channels_last(input);
  at::Tensor output =
      zeros_in_format({num_rois, channels, pooled_height, pooled_width}, input.options(), channels_last);
  if (output.numel() == 0 || height == 0 || width == 0) {
    return output;
  }
  at::Tensor input_c = channels_last ? input : input.contiguous();
  at::Tensor rois_c = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "roi_align_forward_cpu", [&] {
    const auto samples = sample_rois<scalar_t>(
        rois_c.data_ptr<scalar_t>(), num_rois, input.size(0), height, width,
        static_cast<scalar_t>(spatial_scale), pooled_height, pooled_width, sampling_ratio, aligned,
        "roi_align");
    const scalar_t* in = input_c.data_ptr<scalar_t>();
    scalar_t* out = output.data_ptr<scalar_t>();
    const int64_t plane = static_cast<int64_t>(height) * width;
    const int64_t bins = pooled_height * pooled_width;
    if (channels_last) {
      const int64_t blocks = (channels + kChannelBlock - 1) / kChannelBlock;
      at::parallel_for(0, num_rois * blocks, 1, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> rows;
        for (int64_t i = begin; i < end; ++i) {
          const int64_t r = i / blocks;
          const int64_t c0 = (i % blocks) * kChannelBlock;
          const RoISamples<scalar_t>& s = samples[r];
          forward_roi_channels_last(
              s, in + s.bins.batch * plane * channels, width, channels, c0,
              std::min(c0 + kChannelBlock, channels), pooled_height, pooled_width, rows,
              out + r * bins * channels);
        }
      });
      return;
    }
    at::parallel_for(0, num_rois * channels, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> rows;
      for (int64_t i = begin; i < end; ++i) {
        const int64_t r = i / channels;
        const int64_t c = i % channels;
        const RoISamples<scalar_t>& s = samples[r];
        forward_plane(
            s, in + (s.bins.batch * channels + c) * plane, width, pooled_height, pooled_width, rows,
            out + i * bins);
      }
    });
  });
  return output;
}

at::Tensor roi_align_backward_cpu(
    const at::Tensor& grad,
    const at::Tensor& rois,
    double spatial_scale,
    int64_t pooled_height,
    int64_t pooled_width,
    int64_t batch_size,
    int64_t channels,
    int64_t height,
    int64_t width,
    int64_t sampling_ratio,
    bool aligned) {
  TORCH_CHECK(grad.is_cpu() && rois.is_cpu(), "roi_align backward: CPU kernel got a non-CPU tensor");
  check_roi_align_backward_args(grad, rois, channels, pooled_height, pooled_width);
  if (is_reduced_float(grad)) {
    return roi_align_backward_cpu(
               grad.to(at::kFloat), rois.to(at::kFloat), spatial_scale, pooled_height, pooled_width,
               batch_size, channels, height, width, sampling_ratio, aligned)
        .to(grad.scalar_type());
  }
  // the gradient of a channels-last output (the input was channels-last) is channels-last too
  const bool channels_last = is_channels_last(grad);
  at::Tensor grad_input =
      zeros_in_format({batch_size, channels, height, width}, grad.options(), channels_last);
  if (grad.numel() == 0 || grad_input.numel() == 0) {
    return grad_input;
  }
  at::Tensor rois_c = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "roi_align_backward_cpu", [&] {
    const auto samples = sample_rois<scalar_t>(
        rois_c.data_ptr<scalar_t>(), rois.size(0), batch_size, height, width,
        static_cast<scalar_t>(spatial_scale), pooled_height, pooled_width, sampling_ratio, aligned,
        "roi_align");
    // grad may be non-contiguous (e.g. expanded from a sum): read it through its strides
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const int64_t sr = grad.stride(0), sc = grad.stride(1), sh = grad.stride(2), sw = grad.stride(3);
    scalar_t* gi = grad_input.data_ptr<scalar_t>();
    const int64_t plane = height * width;
    if (channels_last) {
      // work items are bands of image rows (over the batch), each taking every channel: whole
      // pixels are contiguous, which is what makes this faster than the NCHW planes
      at::parallel_for(0, batch_size * height, 1, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> rows;
        for (size_t r = 0; r < samples.size(); ++r) {
          const RoISamples<scalar_t>& s = samples[r];
          const int64_t first = s.bins.batch * height;
          const int64_t row_begin = std::max<int64_t>(begin - first, 0);
          const int64_t row_end = std::min<int64_t>(end - first, height);
          if (row_begin < row_end) {
            backward_roi_channels_last(
                s, g + r * sr, sh, sw, width, channels, row_begin, row_end, pooled_height,
                pooled_width, rows, gi + s.bins.batch * plane * channels);
          }
        }
      });
      return;
    }
    at::parallel_for(0, channels, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> rows;
      for (int64_t c = begin; c < end; ++c) {
        for (size_t r = 0; r < samples.size(); ++r) {
          const RoISamples<scalar_t>& s = samples[r];
          backward_plane(
              s, g + r * sr + c * sc, sh, sw, width, pooled_height, pooled_width, rows,
              gi + (s.bins.batch * channels + c) * plane);
        }
      }
    });
  });
  return grad_input;
}

} // namespace

TORCH_LIBRARY_IMPL(instseg, CPU, m) {
  m.impl("roi_align", &roi_align_forward_cpu);
  m.impl("_roi_align_backward", &roi_align_backward_cpu);
}

} // namespace instseg
