// The planar path of the CPU transposed convolution, chosen for NCHW input when the output has
// fewer than kPlanarChannels channels per group (a generator's RGB layer): one image per task,
// every step on one thread, in the planar orientation. The general path's row orientation
// (conv_transpose2d_gemm.cpp) would run GEMMs with few columns and an epilogue that vectorizes over
// those few channels. With the image as a (C_in, pixels) matrix in place, Zt = W^T @ X (rows
// (co, kh, kw)) takes the weight as it is stored, and each output row is summed from Zt rows and
// written in NCHW order, vectorized along the row; the backward's G_col^T (rows (co, kh, kw)) gives
// grad_input = W @ G_col^T in NCHW and grad_weight += X @ G_col in the weight's own layout.
// No operand is transposed.
#include "conv_transpose2d_common.h"

namespace fastgan {
namespace cpu {
namespace conv_transpose2d_detail {
namespace {

// Output rows in phase-split order: the columns ow = b * stride + r of each phase r, one phase
// after another. Along the width, tap kw takes input column iw to output column
// (iw + shift) * stride + phase, so in a phase-split row every tap's contributions are a
// contiguous range and both the epilogue's sums and the backward's gather vectorize.
struct WidthTap {
  int64_t phase_start, shift, begin, end;  // iw in [begin, end) lands at phase_start + iw + shift
};

struct PhaseSplit {
  std::vector<int64_t> phase_start;  // stride + 1 entries; the last is out_w
  std::vector<WidthTap> taps;        // one per kw
};

PhaseSplit phase_split(const Geometry& g) {
  PhaseSplit split{std::vector<int64_t>(g.stride_w + 1, 0), std::vector<WidthTap>(g.kernel_w)};
  for (int64_t r = 0; r < g.stride_w; ++r) {
    const int64_t columns = r < g.out_w ? (g.out_w - r + g.stride_w - 1) / g.stride_w : 0;
    split.phase_start[r + 1] = split.phase_start[r] + columns;
  }
  for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
    const int64_t offset = kw * g.dilation_w - g.padding_w;
    const int64_t phase = ((offset % g.stride_w) + g.stride_w) % g.stride_w;
    const int64_t shift = (offset - phase) / g.stride_w;
    const int64_t columns = split.phase_start[phase + 1] - split.phase_start[phase];
    const int64_t begin = std::clamp<int64_t>(-shift, 0, g.in_w);
    split.taps[kw] = {split.phase_start[phase], shift, begin,
                      std::clamp<int64_t>(columns - shift, begin, g.in_w)};
  }
  return split;
}

// The epilogue of one NCHW output row from Zt (rows (c, kh, kw) of the image's pixels): the
// taps' sums in phase-split order, then bias and activation while the row is interleaved.
template <typename scalar_t>
void planar_output_row(const Geometry& g, const AxisTaps& taps_h, const PhaseSplit& split,
                       const scalar_t* zt, int64_t c, int64_t oh, scalar_t bias,
                       Activation activation, const Vec<scalar_t>& slope, scalar_t* sums,
                       scalar_t* row) {
  const int64_t pixels = g.in_h * g.in_w;
  std::fill_n(sums, g.out_w, bias);
  for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
    const int64_t ih = taps_h.input_of_output[oh * g.kernel_h + kh];
    if (ih < 0) continue;
    for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
      const WidthTap tap = split.taps[kw];
      const scalar_t* __restrict__ z =
          zt + (c * g.taps() + kh * g.kernel_w + kw) * pixels + ih * g.in_w;
      scalar_t* __restrict__ dst = sums + tap.phase_start + tap.shift;
      for (int64_t iw = tap.begin; iw < tap.end; ++iw) dst[iw] += z[iw];
    }
  }
  for (int64_t r = 0; r < g.stride_w; ++r) {
    const scalar_t* __restrict__ phase = sums + split.phase_start[r];
    const int64_t columns = split.phase_start[r + 1] - split.phase_start[r];
    for (int64_t b = 0; b < columns; ++b) row[b * g.stride_w + r] = phase[b];
  }
  map_contiguous<scalar_t, 1>(g.out_w, {row}, row, [&](const Vec<scalar_t>* v) {
    return activate(activation, v[0], slope);
  });
}

// G_col^T of one image, rows (c, kh, kw) of its input pixels: g at the output pixel that (ih, iw)
// reaches through (kh, kw), zero where none; g_split is the image's g in phase-split rows.
template <typename scalar_t>
void planar_gather(const Geometry& g, const AxisTaps& taps_h, const PhaseSplit& split,
                   const scalar_t* g_split, scalar_t* col) {
  const int64_t pixels = g.in_h * g.in_w;
  for (int64_t c = 0; c < g.out_channels; ++c) {
    for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
      for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
        const WidthTap tap = split.taps[kw];
        scalar_t* col_row = col + (c * g.taps() + kh * g.kernel_w + kw) * pixels;
        for (int64_t ih = 0; ih < g.in_h; ++ih) {
          scalar_t* dst = col_row + ih * g.in_w;
          const int64_t oh = taps_h.output_of_input[ih * g.kernel_h + kh];
          if (oh < 0) {
            std::fill_n(dst, g.in_w, scalar_t(0));
            continue;
          }
          const scalar_t* src = g_split + (c * g.out_h + oh) * g.out_w + tap.phase_start + tap.shift;
          std::fill(dst, dst + tap.begin, scalar_t(0));
          std::copy(src + tap.begin, src + tap.end, dst + tap.begin);
          std::fill(dst + tap.end, dst + g.in_w, scalar_t(0));
        }
      }
    }
  }
}

template <typename scalar_t>
void forward(const Geometry& g, const at::Tensor& x, const at::Tensor& weight_rows,
             const scalar_t* bias, Activation activation, scalar_t negative_slope,
             const at::Tensor& out) {
  const AxisTaps taps_h = axis_taps(g.in_h, g.out_h, g.kernel_h, g.stride_h, g.padding_h,
                                    g.dilation_h);
  const PhaseSplit split = phase_split(g);
  const int64_t T = g.taps(), Cg = g.out_per_group(), Cin_g = g.in_per_group();
  const int64_t pixels = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  const Vec<scalar_t> slope(negative_slope);
  const scalar_t* x_data = x.const_data_ptr<scalar_t>();
  scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, g.batch, 1, [&](int64_t begin, int64_t end) {
    const BelowAutograd below_autograd;
    const at::Tensor zt = at::empty({g.out_channels * T, pixels}, out.options());
    std::vector<scalar_t> sums(g.out_w);
    for (int64_t n = begin; n < end; ++n) {
      const at::Tensor image = at::from_blob(
          const_cast<scalar_t*>(x_data) + n * g.in_channels * pixels, {g.in_channels, pixels},
          out.options());
      for (int64_t group = 0; group < g.groups; ++group) {
        at::Tensor zt_group = zt.narrow(0, group * Cg * T, Cg * T);
        matrix_product(zt_group, weight_rows.narrow(0, group * Cin_g, Cin_g).t(),
                   image.narrow(0, group * Cin_g, Cin_g));
      }
      for (int64_t c = 0; c < g.out_channels; ++c) {
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          planar_output_row(g, taps_h, split, zt.const_data_ptr<scalar_t>(), c, oh,
                            bias != nullptr ? bias[c] : scalar_t(0), activation, slope,
                            sums.data(),
                            out_data + (n * g.out_channels + c) * out_plane + oh * g.out_w);
        }
      }
    }
  });
}

template <typename scalar_t>
void backward(const Geometry& g, const at::Tensor& grad_output, const at::Tensor& result,
              const at::Tensor& x, const at::Tensor& weight_rows, Activation activation,
              scalar_t negative_slope, const at::Tensor& grad_input,
              const at::Tensor& grad_weight_rows, std::vector<double>* grad_bias) {
  const AxisTaps taps_h = axis_taps(g.in_h, g.out_h, g.kernel_h, g.stride_h, g.padding_h,
                                    g.dilation_h);
  const PhaseSplit split = phase_split(g);
  const int64_t T = g.taps(), Cg = g.out_per_group(), Cin_g = g.in_per_group();
  const int64_t pixels = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  const int64_t out_image = g.out_channels * out_plane, in_image = g.in_channels * pixels;
  const bool want_input = grad_input.defined(), want_weight = grad_weight_rows.defined();
  const bool want_col = want_input || want_weight;
  const at::TensorOptions options = x.options();
  const scalar_t* go_data = grad_output.const_data_ptr<scalar_t>();
  const scalar_t* res_data = result.defined() ? result.const_data_ptr<scalar_t>() : nullptr;
  const scalar_t* x_data = x.const_data_ptr<scalar_t>();
  std::vector<double> image_sums(grad_bias != nullptr ? g.batch * g.out_channels : 0);
  std::vector<at::Tensor> chunk_sums(g.batch);
  at::parallel_for(0, g.batch, 1, [&](int64_t begin, int64_t end) {
    const BelowAutograd below_autograd;
    std::vector<scalar_t> g_split(out_image);
    const at::Tensor col = at::empty({want_col ? g.out_channels * T : 0, pixels}, options);
    const at::Tensor weight_sum = want_weight ? at::zeros_like(grad_weight_rows) : at::Tensor();
    for (int64_t n = begin; n < end; ++n) {
      // g = grad_output * activation'(result) in phase-split rows, and grad_bias's sums.
      for (int64_t c = 0; c < g.out_channels; ++c) {
        double channel_sum = 0;
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          const int64_t at = n * out_image + (c * g.out_h + oh) * g.out_w;
          scalar_t* dst = g_split.data() + (c * g.out_h + oh) * g.out_w;
          scalar_t row_sum = 0;
          for (int64_t r = 0; r < g.stride_w; ++r) {
            for (int64_t b = 0; b < split.phase_start[r + 1] - split.phase_start[r]; ++b) {
              const int64_t ow = b * g.stride_w + r;
              const scalar_t value = res_data != nullptr
                  ? go_data[at + ow] * activation_grad(activation, res_data[at + ow], negative_slope)
                  : go_data[at + ow];
              dst[split.phase_start[r] + b] = value;
              row_sum += value;
            }
          }
          channel_sum += row_sum;
        }
        if (grad_bias != nullptr) image_sums[n * g.out_channels + c] = channel_sum;
      }
      if (!want_col) continue;
      scalar_t* col_data = col.mutable_data_ptr<scalar_t>();
      planar_gather(g, taps_h, split, g_split.data(), col_data);
      const at::Tensor image = at::from_blob(const_cast<scalar_t*>(x_data) + n * in_image,
                                             {g.in_channels, pixels}, options);
      for (int64_t group = 0; group < g.groups; ++group) {
        const at::Tensor col_group = col.narrow(0, group * Cg * T, Cg * T);
        if (want_input) {
          at::Tensor grad_image =
              at::from_blob(grad_input.mutable_data_ptr<scalar_t>() + n * in_image,
                            {g.in_channels, pixels}, options)
                  .narrow(0, group * Cin_g, Cin_g);
          matrix_product(grad_image, weight_rows.narrow(0, group * Cin_g, Cin_g), col_group);
        }
        if (want_weight) {
          matrix_product(weight_sum.narrow(0, group * Cin_g, Cin_g),
                     image.narrow(0, group * Cin_g, Cin_g), col_group.t(), /*accumulate=*/true);
        }
      }
    }
    chunk_sums[begin] = weight_sum;
  });
  for (const auto& sum : chunk_sums) {
    if (sum.defined()) grad_weight_rows.add_(sum);
  }
  if (grad_bias != nullptr) {
    for (int64_t i = 0; i < g.batch * g.out_channels; ++i) {
      (*grad_bias)[i % g.out_channels] += image_sums[i];
    }
  }
}

}  // namespace

bool planar(const Geometry& g, const at::Tensor& input) {
  return !stored_channels_last(input) && g.out_per_group() < kPlanarChannels;
}

void planar_forward(const Geometry& g, const at::Tensor& x, const at::Tensor& weight_rows,
                    const at::Tensor& bias, Activation activation, double negative_slope,
                    const at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_transpose2d", [&] {
    forward<scalar_t>(g, x, weight_rows, bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr,
                      activation, static_cast<scalar_t>(negative_slope), out);
  });
}

void planar_backward(const Geometry& g, const at::Tensor& grad_output, const at::Tensor& result,
                     const at::Tensor& x, const at::Tensor& weight_rows, Activation activation,
                     double negative_slope, const at::Tensor& grad_input,
                     const at::Tensor& grad_weight_rows, std::vector<double>* grad_bias) {
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_transpose2d_backward", [&] {
    backward<scalar_t>(g, grad_output, result, x, weight_rows, activation,
                       static_cast<scalar_t>(negative_slope), grad_input, grad_weight_rows,
                       grad_bias);
  });
}

}  // namespace conv_transpose2d_detail
}  // namespace cpu
}  // namespace fastgan
