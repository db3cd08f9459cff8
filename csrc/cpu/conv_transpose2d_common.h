// The shared pieces of the CPU transposed convolution. Its ops (conv_transpose2d_kernel.cpp) choose
// among four paths, each in a file of its own: conv_transpose2d_single_pixel.cpp,
// conv_transpose2d_planar.cpp, conv_transpose2d_winograd.cpp and conv_transpose2d_gemm.cpp. Here:
// the operands' layout, transposes, the epilogue's activation on vectors, per-axis tap tables,
// weight packing, and the paths' entry points; their scratch buffers are in scratch.h.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/core/LegacyTypeDispatch.h>

#include <c10/util/accumulate.h>

#include <algorithm>
#include <array>
#include <tuple>
#include <vector>

#include "../conv_transpose2d.h"
#include "gemm.h"
#include "parallel.h"
#include "scratch.h"
#include "tuning.h"

namespace fastgan {
namespace cpu {
namespace conv_transpose2d_detail {

// OpenMP worker threads do not inherit the calling thread's dispatch state: tensor ops inside a
// parallel region must step below autograd themselves (the op itself runs below it).
using BelowAutograd = at::AutoDispatchBelowADInplaceOrView;

using namespace fastgan::conv_t;

template <typename scalar_t>
using Vec = at::vec::Vectorized<scalar_t>;

// ------------------------------------------------------------------------------------------------
// Types and state the files share

// An (N, C, H, W) tensor as the kernels read it: dense, channels-last or NCHW.
struct Dense {
  at::Tensor tensor;
  bool channels_last;
  explicit Dense(const at::Tensor& t)
      : tensor(stored_channels_last(t) ? t : t.contiguous()), channels_last(stored_channels_last(t)) {}
  int64_t channels() const { return tensor.size(1); }
  int64_t pixels() const { return tensor.size(2) * tensor.size(3); }
};

// Per axis, for every (output position, tap) the input position that reaches it, and for every
// (input position, tap) the output position it reaches; -1 where there is none.
struct AxisTaps {
  std::vector<int64_t> input_of_output, output_of_input;
};

// ------------------------------------------------------------------------------------------------
// Helpers compiled into each file that includes them, with internal linkage: the compiler inlines
// them into the file's loops and splits their hot and cold code as for the file's own functions
// (it keeps a function that files share in one piece).
namespace {

// dst[c][r] = src[r][c] for a rows x cols plane (vectorized in 16 x 16 tiles for float).
template <typename scalar_t>
void transpose_plane(const scalar_t* src, scalar_t* dst, int64_t rows, int64_t cols) {
  at::vec::transpose_mxn<scalar_t>(src, cols, dst, rows, static_cast<int>(rows),
                                   static_cast<int>(cols));
}

// transpose_plane of a large matrix: in parallel strips of 256 along its longer side.
template <typename scalar_t>
void transpose_matrix(const scalar_t* src, scalar_t* dst, int64_t rows, int64_t cols) {
  constexpr int64_t kStrip = 256;
  const bool by_rows = rows >= cols;
  const int64_t length = by_rows ? rows : cols, width = by_rows ? cols : rows;
  parallel_tasks((length + kStrip - 1) / kStrip, kStrip * width, [&](int64_t strip) {
    const int64_t first = strip * kStrip;
    const int span = static_cast<int>(std::min(kStrip, length - first));
    if (by_rows) {
      at::vec::transpose_mxn<scalar_t>(src + first * cols, cols, dst + first, rows, span,
                                       static_cast<int>(cols));
    } else {
      at::vec::transpose_mxn<scalar_t>(src + first, cols, dst + first * rows, rows,
                                       static_cast<int>(rows), span);
    }
  });
}

// Whether a batch shares out evenly enough among `threads` threads for each to take whole images
// (a batch of one, CycleGAN's, would run on one thread of two).
inline bool images_share_out(int64_t batch, int64_t threads) {
  return batch % threads == 0 || batch >= 4 * threads;
}

// Image n of `t` as dense rows (h, w) of C values: in place when t is stored channels-last, else
// transposed into `buffer`.
template <typename scalar_t>
const scalar_t* image_rows(const Dense& t, int64_t n, scalar_t* buffer) {
  const int64_t C = t.channels(), pixels = t.pixels();
  const scalar_t* data = t.tensor.const_data_ptr<scalar_t>() + n * C * pixels;
  if (t.channels_last) return data;
  transpose_plane(data, buffer, C, pixels);
  return buffer;
}

// Images [first, last) of `t` as dense rows (n, h, w) of C values, the same way.
template <typename scalar_t>
const scalar_t* rows_of(const Dense& t, int64_t first, int64_t last, scalar_t* buffer) {
  if (t.channels_last) return image_rows(t, first, buffer);
  const int64_t size = t.channels() * t.pixels();
  if (last - first == 1) {  // one image: in parallel strips
    transpose_matrix(t.tensor.const_data_ptr<scalar_t>() + first * size, buffer, t.channels(),
                     t.pixels());
    return buffer;
  }
  parallel_tasks(last - first, size, [&](int64_t n) {
    image_rows(t, first + n, buffer + n * size);
  });
  return buffer;
}

// Image n of an (N, C, H, W) tensor's storage at `data` as a (pixels, C) GEMM operand, in place:
// rows of channels-last storage, or NCHW storage read transposed (BLAS handles either).
template <typename scalar_t>
at::Tensor image_matrix(const scalar_t* data, bool channels_last, int64_t n, int64_t pixels,
                        int64_t channels, const at::TensorOptions& options) {
  scalar_t* image = const_cast<scalar_t*>(data) + n * pixels * channels;
  return channels_last ? at::from_blob(image, {pixels, channels}, options)
                       : at::from_blob(image, {channels, pixels}, options).t();
}

// ------------------------------------------------------------------------------------------------
// The epilogue's activation on vectors: the vector form of conv_t::activate and
// conv_t::activation_grad (same conventions; the tests hold both to torch's results).

template <typename scalar_t>
Vec<scalar_t> activate(Activation activation, const Vec<scalar_t>& y, const Vec<scalar_t>& slope) {
  using V = Vec<scalar_t>;
  const V zero(scalar_t(0));
  switch (activation) {
    case Activation::kRelu: return V::blendv(zero, y, y > zero);
    case Activation::kLeakyRelu: return V::blendv(y * slope, y, y > zero);
    case Activation::kTanh: return y.tanh();
    default: return y;
  }
}

template <typename scalar_t>
Vec<scalar_t> activation_grad(Activation activation, const Vec<scalar_t>& out,
                              const Vec<scalar_t>& slope) {
  using V = Vec<scalar_t>;
  const V zero(scalar_t(0)), one(scalar_t(1));
  switch (activation) {
    case Activation::kRelu: return V::blendv(zero, one, out > zero);
    case Activation::kLeakyRelu: return V::blendv(slope, one, out > zero);
    case Activation::kTanh: return one - out * out;
    default: return one;
  }
}

// fn(const Vec in[I]) -> Vec over `count` contiguous elements of each input, written to out.
template <typename scalar_t, int I, typename Fn>
void map_contiguous(int64_t count, const std::array<const scalar_t*, I>& in, scalar_t* out,
                    const Fn& fn) {
  using V = Vec<scalar_t>;
  for (int64_t i = 0; i < count; i += V::size()) {
    const int64_t n = std::min<int64_t>(V::size(), count - i);
    V values[I];
    for (int k = 0; k < I; ++k) values[k] = V::loadu(in[k] + i, n);
    fn(values).store(out + i, n);
  }
}

// ------------------------------------------------------------------------------------------------
// Geometry tables and the packed weight

inline AxisTaps axis_taps(int64_t in_size, int64_t out_size, int64_t kernel, int64_t stride,
                          int64_t padding, int64_t dilation) {
  AxisTaps taps{std::vector<int64_t>(out_size * kernel), std::vector<int64_t>(in_size * kernel)};
  for (int64_t o = 0; o < out_size; ++o) {
    for (int64_t k = 0; k < kernel; ++k) {
      taps.input_of_output[o * kernel + k] = input_index(o, k, stride, padding, dilation, in_size);
    }
  }
  for (int64_t i = 0; i < in_size; ++i) {
    for (int64_t k = 0; k < kernel; ++k) {
      taps.output_of_input[i * kernel + k] = output_index(i, k, stride, padding, dilation, out_size);
    }
  }
  return taps;
}

// The weight (C_in, C_out/groups, kH, kW) as per-group GEMM operands P: (groups, C_in/groups,
// kH * kW * C_out/groups), columns ordered (kh, kw, co).
inline at::Tensor pack_weight(const at::Tensor& weight, const Geometry& g) {
  return weight.permute({0, 2, 3, 1}).contiguous().view(
      {g.groups, g.in_per_group(), g.taps() * g.out_per_group()});
}

// Inverse of pack_weight.
inline at::Tensor unpack_weight(const at::Tensor& packed, const Geometry& g) {
  return packed.view({g.in_channels, g.kernel_h, g.kernel_w, g.out_per_group()})
      .permute({0, 3, 1, 2})
      .contiguous();
}

// Group `group`'s columns of a (rows, groups * width) matrix.
inline at::Tensor group_columns(const at::Tensor& matrix, int64_t group, int64_t width) {
  return matrix.narrow(1, group * width, width);
}

// ------------------------------------------------------------------------------------------------
// Elementwise passes of the epilogue and of the backward's first step

// g = grad_output * activation'(result) over `count` contiguous elements.
template <typename scalar_t>
void chain_activation_grad(int64_t count, const scalar_t* grad_output, const scalar_t* result,
                           scalar_t* g, Activation activation, const Vec<scalar_t>& slope) {
  map_contiguous<scalar_t, 2>(count, {grad_output, result}, g, [&](const Vec<scalar_t>* v) {
    return v[0] * activation_grad(activation, v[1], slope);
  });
}

// Image n's g = grad_output * activation'(result) as dense rows (oh, ow) of C values: in place in
// grad_output when that is channels-last and there is no activation (result == nullptr), else
// written to g_image (result_image is scratch). Adds the image's sums of g to bias_sums (C values)
// when given: in scalar_t per output row, then in double.
template <typename scalar_t>
const scalar_t* image_gradient(const Dense& grad_output, const Dense* result, Activation activation,
                               const Vec<scalar_t>& slope, int64_t n, scalar_t* g_image,
                               scalar_t* result_image, double* bias_sums) {
  const int64_t C = grad_output.channels(), out_h = grad_output.tensor.size(2),
                out_w = grad_output.tensor.size(3);
  const scalar_t* go = image_rows(grad_output, n, g_image);
  if (result != nullptr) {
    const scalar_t* res = image_rows(*result, n, result_image);
    chain_activation_grad(out_h * out_w * C, go, res, g_image, activation, slope);
    go = g_image;
  }
  if (bias_sums != nullptr) {
    thread_local std::vector<scalar_t> row_sums;
    row_sums.resize(C);
    for (int64_t oh = 0; oh < out_h; ++oh) {
      std::fill(row_sums.begin(), row_sums.end(), scalar_t(0));
      const scalar_t* row = go + oh * out_w * C;
      for (int64_t ow = 0; ow < out_w; ++ow) {
        for (int64_t c = 0; c < C; ++c) row_sums[c] += row[ow * C + c];
      }
      for (int64_t c = 0; c < C; ++c) bias_sums[c] += row_sums[c];
    }
  }
  return go;
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// The paths' entry points, each path in its own file. Each path's predicate says whether it takes
// the shape; the forward and backward functions dispatch on the dtype (float32 or float64).

// One input pixel (conv_transpose2d_single_pixel.cpp).
bool single_pixel(const Geometry& g);
at::Tensor single_pixel_forward(const Geometry& g, const at::Tensor& input,
                                const at::Tensor& weight, const at::Tensor& bias,
                                Activation activation, double negative_slope);
std::tuple<at::Tensor, at::Tensor, at::Tensor> single_pixel_backward(
    const Geometry& g, const at::Tensor& grad_output, const at::Tensor& input,
    const at::Tensor& weight, const at::Tensor& result, Activation activation,
    double negative_slope, std::array<bool, 3> output_mask);

// NCHW operands with few output channels (conv_transpose2d_planar.cpp). x, grad_output and
// result are contiguous; weight_rows is the weight as stored, (C_in, C_out/groups * kH * kW), and
// so is grad_weight_rows, the weight gradient's sum (undefined: not wanted).
bool planar(const Geometry& g, const at::Tensor& input);
void planar_forward(const Geometry& g, const at::Tensor& x, const at::Tensor& weight_rows,
                    const at::Tensor& bias, Activation activation, double negative_slope,
                    const at::Tensor& out);
void planar_backward(const Geometry& g, const at::Tensor& grad_output, const at::Tensor& result,
                     const at::Tensor& x, const at::Tensor& weight_rows, Activation activation,
                     double negative_slope, const at::Tensor& grad_input,
                     const at::Tensor& grad_weight_rows, std::vector<double>* grad_bias);

// Stride 2, a 4 x 4 kernel and padding 1 (or a 3 x 3 one with output padding 1), or stride 1, a
// 3 x 3 kernel and padding 0 - 2 (conv_transpose2d_winograd.cpp). The backward writes grad_input
// (when defined), grad_weight (when given; (C_in, C_out, K, K)) and the bias sums.
bool winograd(const Geometry& g);
void winograd_forward(const Geometry& g, const Dense& x, const at::Tensor& weight,
                      const at::Tensor& bias, Activation activation, double negative_slope,
                      const at::Tensor& out, bool out_channels_last);
void winograd_backward(const Geometry& g, const Dense& grad_output, const Dense* result,
                       const Dense& x, const at::Tensor& weight, Activation activation,
                       double negative_slope, const at::Tensor& grad_input,
                       at::Tensor* grad_weight, std::vector<double>* grad_bias);

// Every other shape: the general sub-pixel GEMMs (conv_transpose2d_gemm.cpp), with the weight
// packed (pack_weight) and the weight gradient's sum packed too (undefined: not wanted).
void gemm_forward(const Geometry& g, const Dense& x, const at::Tensor& packed,
                  const at::Tensor& bias, Activation activation, double negative_slope,
                  const at::Tensor& out, bool out_channels_last);
void gemm_backward(const Geometry& g, const Dense& grad_output, const Dense* result,
                   const Dense& x, const at::Tensor& packed, Activation activation,
                   double negative_slope, const at::Tensor& grad_input,
                   const at::Tensor& grad_weight_packed, std::vector<double>* grad_bias);

}  // namespace conv_transpose2d_detail
}  // namespace cpu
}  // namespace fastgan
