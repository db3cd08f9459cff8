// Transposed convolution on the CPU as GEMMs over the input's pixels, with no multiplications by
// the zeros a strided transposed convolution inserts.
//
// With the input as a matrix X of rows (n, ih, iw) and columns C_in (channels-last), and the weight
// packed per group as P (C_in/groups, kH * kW * C_out/groups), Z = X @ P holds every product of an
// input pixel with every tap: Z[(n, ih, iw), (kh, kw, co)] is the contribution of input pixel
// (ih, iw) to output pixel (ih * stride - padding + kh * dilation, ...). Each output pixel then sums
// the few entries that reach it (per axis, the kernel / stride taps of its sub-pixel phase), adds
// the bias and applies the activation: the epilogue, while the pixel is written. The backward is
// the adjoint of the same two steps: gather G_col[(n, ih, iw), (kh, kw, co)] = g at the output pixel
// that (ih, iw) reaches through (kh, kw) (zero where none), then
//   grad_input = G_col @ P^T,  grad_weight = X^T @ G_col,  grad_bias = sum of g,
// with g = grad_output * activation'(result).
//
// Images with many pixels run one per task, all steps on one thread; small images run in blocks
// of images with each step on all threads (see plan_work). NCHW operands are read transposed in
// place by the GEMMs or transposed to rows in cache; channels-last ones are used in place. Results
// take the input's layout. Three kinds of shapes take paths of their own: a 1x1 input (one GEMM,
// see single_pixel), NCHW operands with few output channels (the planar orientation, see planar)
// and stride 2 with a 4x4 kernel and padding 1 (Winograd's minimal filtering, see winograd).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include <c10/util/accumulate.h>

#include <algorithm>
#include <array>
#include <string_view>
#include <vector>

#include "../conv_transpose2d.h"
#include "parallel.h"

namespace fastgan {
namespace cpu {
namespace {

// OpenMP worker threads do not inherit the calling thread's dispatch state: tensor ops inside a
// parallel region must step below autograd themselves (the op itself runs below it).
using BelowAutograd = at::AutoDispatchBelowADInplaceOrView;

using namespace fastgan::conv_t;

template <typename scalar_t>
using Vec = at::vec::Vectorized<scalar_t>;

// ------------------------------------------------------------------------------------------------
// Layout

// An (N, C, H, W) tensor as the kernels read it: dense, channels-last or NCHW.
struct Dense {
  at::Tensor tensor;
  bool channels_last;
  explicit Dense(const at::Tensor& t)
      : tensor(stored_channels_last(t) ? t : t.contiguous()), channels_last(stored_channels_last(t)) {}
  int64_t channels() const { return tensor.size(1); }
  int64_t pixels() const { return tensor.size(2) * tensor.size(3); }
};

// Scratch memory kept from call to call, per calling thread and use: the kernels' buffers are
// MiBs to tens of MiB, and glibc hands blocks that large back to the system when they are freed,
// so fresh ones would cost a page fault per 4 KiB on every call (measured: up to twice the op's
// time). Uses: the weight as a GEMM operand; the GEMMs' big operands (G_col or Z; Winograd's V
// and M); image rows of the input, the output (or grad_output), the result and grad_input; a
// weight gradient; the weight's taps as rows.
enum class Scratch : int { kWeight, kTiles, kProducts, kInputRows, kOutputRows, kResultRows,
                           kInputGradientRows, kWeightGradient, kWeightTaps, kCount };

at::Tensor scratch(Scratch use, at::IntArrayRef sizes, const at::TensorOptions& options) {
  thread_local std::array<at::Tensor, static_cast<int>(Scratch::kCount)> buffers;
  at::Tensor& buffer = buffers[static_cast<int>(use)];
  const int64_t bytes = c10::multiply_integers(sizes) * options.dtype().itemsize();
  if (!buffer.defined() || buffer.numel() < bytes) {
    buffer = at::empty({bytes}, options.dtype(at::kByte));
  }
  return at::from_blob(buffer.data_ptr(), sizes, options);
}

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
// Geometry tables and blocks

// Per axis, for every (output position, tap) the input position that reaches it, and for every
// (input position, tap) the output position it reaches; -1 where there is none.
struct AxisTaps {
  std::vector<int64_t> input_of_output, output_of_input;
};

AxisTaps axis_taps(int64_t in_size, int64_t out_size, int64_t kernel, int64_t stride,
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

// Two ways to spread the work over threads. Images with many pixels (each one a GEMM of useful
// size) run one image per task, every step of an image on one thread (single-threaded GEMMs inside
// at::parallel_for): one parallel region for the whole op, and an image's Z or G_col stays in
// cache. Small images run in blocks of images, one block after another, each step on all threads
// (the GEMMs through at::mm's own threading), so that the GEMMs have many rows (grad_weight
// accumulates over them).
constexpr int64_t kImagePixels = 256;
// Z or G_col entries per block in block mode, and Winograd's V, M or dM (16 MiB of float32): blocks
// of 32 rather than 8 images ran the 256 -> 128 layer's backward GEMMs 7-9% faster.
constexpr int64_t kBlockEntries = 1 << 22;

struct Plan {
  bool by_image;
  int64_t images_per_block;
};

Plan plan_work(const Geometry& g) {
  const int64_t pixels = g.in_h * g.in_w;
  const int64_t per_image = std::max<int64_t>(1, pixels * g.taps() * g.out_channels);
  return {pixels >= kImagePixels,
          std::clamp<int64_t>(kBlockEntries / per_image, 1, std::max<int64_t>(1, g.batch))};
}

// The weight (C_in, C_out/groups, kH, kW) as per-group GEMM operands P: (groups, C_in/groups,
// kH * kW * C_out/groups), columns ordered (kh, kw, co).
at::Tensor pack_weight(const at::Tensor& weight, const Geometry& g) {
  return weight.permute({0, 2, 3, 1}).contiguous().view(
      {g.groups, g.in_per_group(), g.taps() * g.out_per_group()});
}

// Inverse of pack_weight.
at::Tensor unpack_weight(const at::Tensor& packed, const Geometry& g) {
  return packed.view({g.in_channels, g.kernel_h, g.kernel_w, g.out_per_group()})
      .permute({0, 3, 1, 2})
      .contiguous();
}

// Group `group`'s columns of a (rows, groups * width) matrix.
at::Tensor group_columns(const at::Tensor& matrix, int64_t group, int64_t width) {
  return matrix.narrow(1, group * width, width);
}

void check_cpu(const char* op, const at::Tensor& input) {
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble, op,
              ": the CPU kernels support float32 and float64, got ", input.scalar_type());
}

Geometry describe(const char* op, const at::Tensor& input, const at::Tensor& weight,
                  const at::Tensor& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                  at::IntArrayRef output_padding, int64_t groups, at::IntArrayRef dilation) {
  const Geometry g = check_and_describe(op, input, weight, bias, stride, padding, output_padding,
                                        groups, dilation);
  check_cpu(op, input);
  return g;
}

// ------------------------------------------------------------------------------------------------
// Elementwise passes of the epilogue and of the backward's first step

template <typename scalar_t>
void activate_in_place(const at::Tensor& t, Activation activation, scalar_t negative_slope) {
  if (activation == Activation::kNone) return;
  const Vec<scalar_t> slope(negative_slope);
  scalar_t* data = t.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, t.numel(), at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
    map_contiguous<scalar_t, 1>(end - begin, {data + begin}, data + begin,
                                [&](const Vec<scalar_t>* v) { return activate(activation, v[0], slope); });
  });
}

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

// ------------------------------------------------------------------------------------------------
// One input pixel, no padding, no dilation (a generator's first layer, from the latent vector):
// every tap writes an output pixel of its own, so the convolution is one GEMM per group of
// X (N, C_in) with the weight as stored, (C_in, C_out/groups * kH * kW), and the product is the
// NCHW output itself; the backward is two more GEMMs. No gather, no sums, no transposes.

bool single_pixel(const Geometry& g) {
  return g.in_h == 1 && g.in_w == 1 && g.out_h == g.kernel_h && g.out_w == g.kernel_w &&
         g.padding_h == 0 && g.padding_w == 0 && g.dilation_h == 1 && g.dilation_w == 1;
}

// The (N, C_in) input, the (C_in, C_out/groups * taps) weight and an output-shaped tensor's
// (N, C_out * taps) view, each narrowed to one group.
struct SinglePixelGroup {
  at::Tensor x, weight, out;
};

SinglePixelGroup single_pixel_group(const Geometry& g, const at::Tensor& x, const at::Tensor& weight,
                                    const at::Tensor& out_like, int64_t group) {
  const int64_t width = g.out_per_group() * g.taps();
  return {group_columns(x.view({g.batch, g.in_channels}), group, g.in_per_group()),
          weight.view({g.in_channels, width}).narrow(0, group * g.in_per_group(), g.in_per_group()),
          group_columns(out_like.view({g.batch, g.out_channels * g.taps()}), group, width)};
}

at::Tensor single_pixel_forward(const Geometry& g, const at::Tensor& input,
                                const at::Tensor& weight, const at::Tensor& bias,
                                Activation activation, double negative_slope) {
  const at::Tensor x = input.contiguous(), w = weight.contiguous();
  const at::Tensor out = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options());
  for (int64_t group = 0; group < g.groups; ++group) {
    const SinglePixelGroup m = single_pixel_group(g, x, w, out, group);
    at::Tensor product = m.out;
    if (bias.defined()) {
      const at::Tensor bias_per_tap =
          bias.narrow(0, group * g.out_per_group(), g.out_per_group()).repeat_interleave(g.taps());
      at::addmm_out(product, bias_per_tap, m.x, m.weight);
    } else {
      at::mm_out(product, m.x, m.weight);
    }
  }
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "conv_transpose2d", [&] {
    activate_in_place<scalar_t>(out, activation, static_cast<scalar_t>(negative_slope));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> single_pixel_backward(
    const Geometry& g, const at::Tensor& grad_output, const at::Tensor& input,
    const at::Tensor& weight, const at::Tensor& result, Activation activation,
    double negative_slope, std::array<bool, 3> output_mask) {
  at::Tensor grad = grad_output.contiguous();
  if (activation != Activation::kNone) {
    const at::Tensor res = result.contiguous();
    const at::Tensor chained = at::empty_like(grad);
    AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "conv_transpose2d_backward", [&] {
      const Vec<scalar_t> slope(static_cast<scalar_t>(negative_slope));
      const scalar_t* go = grad.const_data_ptr<scalar_t>();
      const scalar_t* r = res.const_data_ptr<scalar_t>();
      scalar_t* out = chained.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, grad.numel(), at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
        chain_activation_grad(end - begin, go + begin, r + begin, out + begin, activation, slope);
      });
    });
    grad = chained;
  }
  const at::Tensor x = input.contiguous(), w = weight.contiguous();
  at::Tensor grad_input = output_mask[0] ? at::empty_like(x) : input.new_empty({0});
  at::Tensor grad_weight = output_mask[1] ? at::empty_like(w) : input.new_empty({0});
  for (int64_t group = 0; group < g.groups; ++group) {
    const SinglePixelGroup m = single_pixel_group(g, x, w, grad, group);
    if (output_mask[0]) {
      at::Tensor grad_x = group_columns(grad_input.view({g.batch, g.in_channels}), group,
                                        g.in_per_group());
      at::mm_out(grad_x, m.out, m.weight.t());
    }
    if (output_mask[1]) {
      at::Tensor grad_w = single_pixel_group(g, x, grad_weight, grad, group).weight;
      at::mm_out(grad_w, m.x.t(), m.out);
    }
  }
  const at::Tensor grad_bias =
      output_mask[2]
          ? grad.view({g.batch, g.out_channels, g.taps()}).sum({0, 2}, false, at::kDouble)
                .to(input.scalar_type())
          : input.new_empty({0});
  return {grad_input, grad_weight, grad_bias};
}

// ------------------------------------------------------------------------------------------------
// NCHW operands with few output channels per group (a generator's RGB layer): one image per
// task, every step on one thread, in the planar orientation. The row orientation above would
// run GEMMs with few columns and an epilogue that vectorizes over those few channels. With the
// image as a (C_in, pixels) matrix in place, Zt = W^T @ X (rows (co, kh, kw)) takes the weight
// as it is stored, and each output row is summed from Zt rows and written in NCHW order,
// vectorized along the row; the backward's G_col^T (rows (co, kh, kw)) gives
// grad_input = W @ G_col^T in NCHW and grad_weight += X @ G_col in the weight's own layout.
// No operand is transposed.

// Below one vector of float32 output channels.
constexpr int64_t kPlanarChannels = 16;

bool planar(const Geometry& g, const at::Tensor& input) {
  return !stored_channels_last(input) && g.out_per_group() < kPlanarChannels;
}

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

template <typename scalar_t>
void planar_forward(const Geometry& g, const at::Tensor& x, const at::Tensor& weight_rows,
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
        at::mm_out(zt_group, weight_rows.narrow(0, group * Cin_g, Cin_g).t(),
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
void planar_backward(const Geometry& g, const at::Tensor& grad_output, const at::Tensor& result,
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
          at::mm_out(grad_image, weight_rows.narrow(0, group * Cin_g, Cin_g), col_group);
        }
        if (want_weight) {
          weight_sum.narrow(0, group * Cin_g, Cin_g)
              .addmm_(image.narrow(0, group * Cin_g, Cin_g), col_group.t());
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

// ------------------------------------------------------------------------------------------------
// Winograd path: stride 2, a 4 x 4 kernel, padding 1, no output padding, dilation or groups (the
// output is twice the input's size): the DCGAN generator's layers, and through fastgan.ops.conv2d
// the discriminator's (their transposes). Sub-pixel phase (a, b) of the output is a 2 x 2
// correlation of the input (x is 0 outside the image; x @ w: a pixel's C_in values times that
// tap's (C_in, C_out) matrix):
//   out[2i + a][2j + b] = sum over t, u in {0, 1} of
//                         x[i + a - 1 + t][j + b - 1 + u] @ w[3 - a - 2t][3 - b - 2u].
// Winograd's minimal filtering F(4 x 4, 2 x 2) computes a 4 x 4 tile of a phase from the 5 x 5
// input tile d under it with 25 tap-matrix products instead of 64:
//   Y = A^T [U (*) V] A,  V = B^T d B,  U = G g G^T  (g: the phase's 2 x 2 taps),
// where (*) multiplies entry by entry, each entry's product being a (C_in, C_out) matrix product:
// for each of the 4 phases x 25 entries one GEMM of the tiles' V (tiles, C_in) by U (C_in, C_out),
// batched. So the GEMMs do 25/64 of the direct method's multiply-adds; the transforms are
// elementwise passes over channel vectors. The backward is the adjoint, with the same GEMMs:
//   dM = A dY A^T;  grad_d = B [dM @ U^T] B^T (overlap-added into grad_input);
//   dU = sum over tiles of V^T @ dM;  grad_g = G^T dU G.
namespace winograd {

constexpr int kTile = 4;                   // outputs of a phase per tile and axis
constexpr int kSpan = kTile + 1;           // inputs per tile and axis (the 2-tap filter's overlap)
constexpr int kEntries = kSpan * kSpan;    // products per tile and phase
constexpr int kPhases = 4;
constexpr int kProducts = kPhases * kEntries;  // GEMMs in the batch

// Points 0, 1, -1, 2 and infinity. B^T's rows are scaled to integers and G's rows divided by the
// same factors, so the input transforms are exact and the fractions stay in the weight's transform.
constexpr double kInputTransform[kSpan][kSpan] = {  // B^T
    {2, -1, -2, 1, 0}, {0, 2, 1, -1, 0}, {0, -2, 3, -1, 0}, {0, -1, 0, 1, 0}, {0, 2, -1, -2, 1}};
constexpr double kFilterTransform[kSpan][2] = {  // G
    {1.0 / 2, 0}, {1.0 / 2, 1.0 / 2}, {1.0 / 6, -1.0 / 6}, {1.0 / 6, 1.0 / 3}, {0, 1}};
constexpr double kOutputTransform[kTile][kSpan] = {  // A^T
    {1, 1, 1, 1, 0}, {0, 1, -1, 2, 0}, {0, 1, 1, 4, 0}, {0, 1, -1, 8, 1}};

// Below these the transforms cost more than the GEMMs save (measured, forward+backward, 2 threads):
// channel counts, as the transforms' work per GEMM multiply-add grows as 1 / channels (64 -> 32
// channels: 5-10% slower than the direct method; 128 -> 64: 5-10% faster; 256 -> 128: 1.2-1.6x),
// and tiles in the batch, the GEMMs' rows, as every GEMM reads all of U (6.25 times the weight's
// size) at one multiply-add per value and row (512 -> 256 channels on 4x4 inputs: 1.2x faster
// with 64 or 128 tiles, slower with 32 or fewer).
constexpr int64_t kMinChannels = 64;
constexpr int64_t kMinTiles = 64;

bool applies(const Geometry& g) {
  const int64_t tiles = g.batch * ((g.in_h + kTile - 1) / kTile) * ((g.in_w + kTile - 1) / kTile);
  return g.stride_h == 2 && g.stride_w == 2 && g.kernel_h == 4 && g.kernel_w == 4 &&
         g.padding_h == 1 && g.padding_w == 1 && g.out_h == 2 * g.in_h &&
         g.out_w == 2 * g.in_w && g.dilation_h == 1 && g.dilation_w == 1 && g.groups == 1 &&
         std::min(g.in_channels, g.out_channels) >= kMinChannels && tiles >= kMinTiles;
}

// out = m in m^T for a coefficient table m of R x S (Adjoint: out = m^T in m, m of S x R). The
// loops unroll fully, so the coefficients are constants and the zeros and +-1 cost nothing.
template <int R, int S, bool Adjoint, typename V, typename Table>
inline __attribute__((always_inline)) void transform(const Table& m, const V (&in)[S][S],
                                                     V (&out)[R][R]) {
  const auto coefficient = [&](int r, int k) { return Adjoint ? m[k][r] : m[r][k]; };
  // sum over k of coefficient(r, k) * value, skipping zeros and multiplications by +-1.
  const auto combine = [&](int r, const auto& value) {
    V sum(0);
#pragma GCC unroll 8
    for (int k = 0; k < S; ++k) {
      const double c = coefficient(r, k);
      if (c == 1) sum = sum + value(k);
      else if (c == -1) sum = sum - value(k);
      else if (c != 0) sum = at::vec::fmadd(value(k), V(static_cast<typename V::value_type>(c)), sum);
    }
    return sum;
  };
  V half[R][S];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int s = 0; s < S; ++s) half[r][s] = combine(r, [&](int k) { return in[k][s]; });
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int s = 0; s < R; ++s) out[r][s] = combine(s, [&](int k) { return half[r][k]; });
  }
}

// Tiles of a block of images: `images` images of `height` x `width` pixels, ceil(size / 4) tiles
// per axis, tile t of image n at row n * per_image + t of the GEMM operands.
struct Tiling {
  int64_t height, width, tiles_h, tiles_w, per_image;
  Tiling(int64_t h, int64_t w)
      : height(h), width(w), tiles_h((h + kTile - 1) / kTile), tiles_w((w + kTile - 1) / kTile),
        per_image(tiles_h * tiles_w) {}
  int64_t images_per_block(int64_t channels, int64_t batch) const {
    return std::clamp<int64_t>(kBlockEntries / (kProducts * per_image * channels), 1, batch);
  }
};

// A (kProducts, rows, C) GEMM operand whose rows are a block's tiles; `stride` is its allocated
// rows per product.
template <typename scalar_t>
struct Operand {
  scalar_t* data;
  int64_t stride, channels;
  scalar_t* at(int64_t product, int64_t row) const {
    return data + (product * stride + row) * channels;
  }
};

// (kProducts, 16): row (phase a, b, entry xi, nu) holds U's coefficients of the weight's 16 taps
// (kh, kw): G[xi][t] * G[nu][u] for the phase's taps kh = 3 - a - 2t, kw = 3 - b - 2u, else 0.
at::Tensor filter_transform(const at::TensorOptions& options) {
  std::vector<double> table(kProducts * 16, 0.0);
  for (int phase = 0; phase < kPhases; ++phase) {
    for (int e = 0; e < kEntries; ++e) {
      for (int t = 0; t < 2; ++t) {
        for (int u = 0; u < 2; ++u) {
          const int tap = (3 - phase / 2 - 2 * t) * 4 + (3 - phase % 2 - 2 * u);
          table[(phase * kEntries + e) * 16 + tap] =
              kFilterTransform[e / kSpan][t] * kFilterTransform[e % kSpan][u];
        }
      }
    }
  }
  return at::tensor(table, options.dtype(at::kDouble)).view({kProducts, 16}).to(options.dtype());
}

// U of every phase and entry: (kProducts, C_in, C_out) GEMM operands, the filter transform
// times the weight's taps as (16, C_in * C_out) rows, both GEMM operands read in order. The rows
// come from a transposition of an NCHW weight, or from copies of a channels-last one's stretches
// of C_out (it is stored (C_in, taps, C_out)).
template <typename scalar_t>
at::Tensor transformed_weight(const at::Tensor& weight) {
  const int64_t C_in = weight.size(0), C_out = weight.size(1), pairs = C_in * C_out;
  const at::TensorOptions options = weight.options();
  const at::Tensor taps = scratch(Scratch::kWeightTaps, {16, pairs}, options);
  scalar_t* taps_data = taps.mutable_data_ptr<scalar_t>();
  if (stored_channels_last(weight)) {
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    parallel_tasks(C_in, 16 * C_out, [&](int64_t ci) {
      for (int64_t tap = 0; tap < 16; ++tap) {
        std::copy_n(w + (ci * 16 + tap) * C_out, C_out, taps_data + tap * pairs + ci * C_out);
      }
    });
  } else {
    const at::Tensor w = weight.contiguous();
    transpose_matrix(w.const_data_ptr<scalar_t>(), taps_data, pairs, 16);
  }
  at::Tensor u = scratch(Scratch::kWeight, {kProducts, pairs}, options);
  at::mm_out(u, filter_transform(options), taps);
  return u.view({kProducts, C_in, C_out});
}

// grad_weight = G^T dU G for the weight's taps: the adjoint of transformed_weight, a
// (16, C_in * C_out) product reading dU in order, transposed to (C_in, C_out, 4, 4).
template <typename scalar_t>
at::Tensor weight_gradient(const at::Tensor& transformed_gradient, int64_t C_in, int64_t C_out) {
  const at::TensorOptions options = transformed_gradient.options();
  at::Tensor taps = scratch(Scratch::kWeightTaps, {16, C_in * C_out}, options);
  at::mm_out(taps, filter_transform(options).t(),
             transformed_gradient.view({kProducts, C_in * C_out}));
  const at::Tensor grad = at::empty({C_in, C_out, 4, 4}, options);
  transpose_matrix(taps.const_data_ptr<scalar_t>(), grad.mutable_data_ptr<scalar_t>(), 16,
                   C_in * C_out);
  return grad;
}

// A block's (kProducts, rows, channels) GEMM operand in scratch memory, both as a tensor and as
// the transforms' Operand.
template <typename scalar_t>
std::pair<at::Tensor, Operand<scalar_t>> block_operand(Scratch use, int64_t rows, int64_t channels,
                                                       const at::TensorOptions& options) {
  const at::Tensor operand = scratch(use, {kProducts, rows, channels}, options);
  return {operand, Operand<scalar_t>{operand.mutable_data_ptr<scalar_t>(), rows, channels}};
}

// Fills a GEMM operand: for every tile and phase of `images` images and every vector of channels,
// transformed(n, tile_h, tile_w, phase, c, count, out) computes the kSpan x kSpan entries of
// image n's tile whose top-left output of the phase is at (tile_h, tile_w) in the phase's grid.
template <typename scalar_t, typename Transformed>
void fill_operand(const Tiling& tiling, int64_t images, const Operand<scalar_t>& operand,
                  const Transformed& transformed) {
  using Vector = Vec<scalar_t>;
  const int64_t C = operand.channels;
  parallel_tasks(images * tiling.per_image, kProducts * C, [&](int64_t row) {
    const int64_t n = row / tiling.per_image, tile = row % tiling.per_image;
    const int64_t tile_h = tile / tiling.tiles_w * kTile, tile_w = tile % tiling.tiles_w * kTile;
    for (int phase = 0; phase < kPhases; ++phase) {
      for (int64_t c = 0; c < C; c += Vector::size()) {
        const int64_t count = std::min<int64_t>(Vector::size(), C - c);
        Vector entries[kSpan][kSpan];
        transformed(n, tile_h, tile_w, phase, c, count, entries);
        for (int e = 0; e < kEntries; ++e) {
          entries[e / kSpan][e % kSpan].store(operand.at(phase * kEntries + e, row) + c, count);
        }
      }
    }
  });
}

// V = B^T d B of every tile and phase of `images` images given as dense rows (n, h, w) of C values
// (the tile d of phase (a, b) starts at input pixel (tile_h + a - 1, tile_w + b - 1)).
template <typename scalar_t>
void transform_inputs(const Tiling& tiling, int64_t images, const scalar_t* rows,
                      const Operand<scalar_t>& v) {
  using Vector = Vec<scalar_t>;
  const int64_t C = v.channels, H = tiling.height, W = tiling.width;
  fill_operand(tiling, images, v, [&](int64_t n, int64_t tile_h, int64_t tile_w, int phase,
                                      int64_t c, int64_t count, Vector (&entries)[kSpan][kSpan]) {
    const scalar_t* image = rows + n * H * W * C;
    Vector d[kSpan][kSpan];
    for (int p = 0; p < kSpan; ++p) {
      for (int q = 0; q < kSpan; ++q) {
        const int64_t h = tile_h + phase / 2 - 1 + p, w = tile_w + phase % 2 - 1 + q;
        d[p][q] = h >= 0 && h < H && w >= 0 && w < W
                      ? Vector::loadu(image + (h * W + w) * C + c, count)
                      : Vector(0);
      }
    }
    transform<kSpan, kSpan, false>(kInputTransform, d, entries);
  });
}

// dM = A dY A^T of every tile and phase from the output gradient g, dense rows (n, oh, ow) of C.
template <typename scalar_t>
void transform_output_gradients(const Tiling& tiling, int64_t images, const scalar_t* g,
                                const Operand<scalar_t>& dm) {
  using Vector = Vec<scalar_t>;
  const int64_t C = dm.channels, H = tiling.height, W = tiling.width;
  fill_operand(tiling, images, dm, [&](int64_t n, int64_t tile_h, int64_t tile_w, int phase,
                                       int64_t c, int64_t count, Vector (&entries)[kSpan][kSpan]) {
    const scalar_t* image = g + n * 4 * H * W * C;
    Vector dy[kTile][kTile];
    for (int i = 0; i < kTile; ++i) {
      for (int j = 0; j < kTile; ++j) {
        const int64_t h = tile_h + i, w = tile_w + j;
        const int64_t oh = 2 * h + phase / 2, ow = 2 * w + phase % 2;
        dy[i][j] = h < H && w < W ? Vector::loadu(image + (oh * 2 * W + ow) * C + c, count)
                                  : Vector(0);
      }
    }
    transform<kSpan, kTile, true>(kOutputTransform, dy, entries);
  });
}

// The forward's epilogue: out = activation(A^T M A + bias) of every tile and phase, written as dense
// rows (n, oh, ow) of C values.
template <typename scalar_t>
void transform_outputs(const Tiling& tiling, int64_t images, const Operand<scalar_t>& m,
                       const scalar_t* bias, Activation activation, scalar_t negative_slope,
                       scalar_t* out) {
  using Vector = Vec<scalar_t>;
  const int64_t C = m.channels, H = tiling.height, W = tiling.width;
  const Vector slope(negative_slope);
  parallel_tasks(images * tiling.per_image, kProducts * C, [&](int64_t row) {
    const int64_t n = row / tiling.per_image, tile = row % tiling.per_image;
    scalar_t* image = out + n * 4 * H * W * C;
    const int64_t h0 = tile / tiling.tiles_w * kTile, w0 = tile % tiling.tiles_w * kTile;
    for (int phase = 0; phase < kPhases; ++phase) {
      for (int64_t c = 0; c < C; c += Vector::size()) {
        const int64_t count = std::min<int64_t>(Vector::size(), C - c);
        const Vector b = bias != nullptr ? Vector::loadu(bias + c, count) : Vector(0);
        Vector products[kSpan][kSpan], y[kTile][kTile];
        for (int e = 0; e < kEntries; ++e) {
          products[e / kSpan][e % kSpan] = Vector::loadu(m.at(phase * kEntries + e, row) + c, count);
        }
        transform<kTile, kSpan, false>(kOutputTransform, products, y);
        for (int i = 0; i < kTile; ++i) {
          for (int j = 0; j < kTile; ++j) {
            const int64_t h = h0 + i, w = w0 + j;
            if (h >= H || w >= W) continue;
            const int64_t oh = 2 * h + phase / 2, ow = 2 * w + phase % 2;
            activate(activation, y[i][j] + b, slope).store(image + (oh * 2 * W + ow) * C + c, count);
          }
        }
      }
    }
  });
}

// grad_d = B dV B^T of every tile and phase of image n (row `first` of dv onwards), overlap-added
// into `rows`, its dense rows (h, w) of C values (zeroed here).
template <typename scalar_t>
void add_input_gradients(const Tiling& tiling, const Operand<scalar_t>& dv, int64_t first,
                         scalar_t* rows) {
  using Vector = Vec<scalar_t>;
  const int64_t C = dv.channels, H = tiling.height, W = tiling.width;
  std::fill_n(rows, H * W * C, scalar_t(0));
  for (int64_t tile = 0; tile < tiling.per_image; ++tile) {
    for (int phase = 0; phase < kPhases; ++phase) {
      const int64_t h0 = tile / tiling.tiles_w * kTile + phase / 2 - 1;
      const int64_t w0 = tile % tiling.tiles_w * kTile + phase % 2 - 1;
      for (int64_t c = 0; c < C; c += Vector::size()) {
        const int64_t count = std::min<int64_t>(Vector::size(), C - c);
        Vector products[kSpan][kSpan], dd[kSpan][kSpan];
        for (int e = 0; e < kEntries; ++e) {
          products[e / kSpan][e % kSpan] =
              Vector::loadu(dv.at(phase * kEntries + e, first + tile) + c, count);
        }
        transform<kSpan, kSpan, true>(kInputTransform, products, dd);
        for (int p = 0; p < kSpan; ++p) {
          for (int q = 0; q < kSpan; ++q) {
            const int64_t h = h0 + p, w = w0 + q;
            if (h < 0 || h >= H || w < 0 || w >= W) continue;
            scalar_t* pixel = rows + (h * W + w) * C + c;
            (Vector::loadu(pixel, count) + dd[p][q]).store(pixel, count);
          }
        }
      }
    }
  }
}

template <typename scalar_t>
void forward(const Geometry& g, const Dense& x, const at::Tensor& weight, const at::Tensor& bias,
             Activation activation, scalar_t negative_slope, const at::Tensor& out,
             bool out_channels_last) {
  const Tiling tiling(g.in_h, g.in_w);
  const int64_t C_in = g.in_channels, C_out = g.out_channels;
  const int64_t in_image = g.in_h * g.in_w * C_in, out_image = g.out_h * g.out_w * C_out;
  const int64_t most = tiling.images_per_block(std::max(C_in, C_out), g.batch);
  const at::TensorOptions options = out.options();
  const at::Tensor u = transformed_weight<scalar_t>(weight);
  const at::Tensor x_buffer = scratch(Scratch::kInputRows, {x.channels_last ? 0 : most * in_image},
                                      options);
  const at::Tensor out_buffer =
      scratch(Scratch::kOutputRows, {out_channels_last ? 0 : most * out_image}, options);
  scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
  for (int64_t first = 0; first < g.batch; first += most) {
    const int64_t last = std::min(g.batch, first + most), images = last - first;
    const int64_t rows = images * tiling.per_image;
    const auto [v, v_operand] = block_operand<scalar_t>(Scratch::kTiles, rows, C_in, options);
    auto [m, m_operand] = block_operand<scalar_t>(Scratch::kProducts, rows, C_out, options);
    transform_inputs(tiling, images,
                     rows_of(x, first, last, x_buffer.mutable_data_ptr<scalar_t>()), v_operand);
    at::bmm_out(m, v, u);
    scalar_t* out_rows = out_channels_last ? out_data + first * out_image
                                           : out_buffer.mutable_data_ptr<scalar_t>();
    transform_outputs(tiling, images, m_operand,
                      bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr, activation,
                      negative_slope, out_rows);
    if (!out_channels_last) {
      parallel_tasks(images, out_image, [&](int64_t i) {
        transpose_plane(out_rows + i * out_image, out_data + (first + i) * out_image,
                        g.out_h * g.out_w, C_out);
      });
    }
  }
}

// grad_input (when defined), grad_weight (when given; (C_in, C_out, 4, 4)) and the bias sums.
template <typename scalar_t>
void backward(const Geometry& g, const Dense& grad_output, const Dense* result, const Dense& x,
              const at::Tensor& weight, Activation activation, scalar_t negative_slope,
              const at::Tensor& grad_input, at::Tensor* grad_weight,
              std::vector<double>* grad_bias) {
  const Tiling tiling(g.in_h, g.in_w);
  const int64_t C_in = g.in_channels, C_out = g.out_channels;
  const int64_t in_image = g.in_h * g.in_w * C_in, out_image = g.out_h * g.out_w * C_out;
  const bool want_input = grad_input.defined(), want_weight = grad_weight != nullptr;
  const int64_t most = tiling.images_per_block(std::max(C_in, C_out), g.batch);
  const at::TensorOptions options = grad_output.tensor.options();
  const Vec<scalar_t> slope(negative_slope);
  const bool g_in_place = grad_output.channels_last && result == nullptr;
  const at::Tensor u = want_input ? transformed_weight<scalar_t>(weight) : at::Tensor();
  // Written by the first block's products, then accumulated: no zero fill of up to 50 MiB (the
  // path's batch is never empty).
  at::Tensor du =
      scratch(Scratch::kWeightGradient, {want_weight ? kProducts : 0, C_in, C_out}, options);
  const at::Tensor g_buffer =
      scratch(Scratch::kOutputRows, {g_in_place ? 0 : most * out_image}, options);
  const at::Tensor result_buffer =
      scratch(Scratch::kResultRows, {result != nullptr ? most * out_image : 0}, options);
  const at::Tensor x_buffer = scratch(
      Scratch::kInputRows, {want_weight && !x.channels_last ? most * in_image : 0}, options);
  std::vector<double> image_sums(grad_bias != nullptr ? g.batch * C_out : 0);
  scalar_t* grad_input_data = want_input ? grad_input.mutable_data_ptr<scalar_t>() : nullptr;
  const bool grad_input_channels_last = want_input && stored_channels_last(grad_input);
  for (int64_t first = 0; first < g.batch; first += most) {
    const int64_t last = std::min(g.batch, first + most), images = last - first;
    const int64_t rows = images * tiling.per_image;
    parallel_tasks(images, out_image, [&](int64_t i) {
      image_gradient(grad_output, result, activation, slope, first + i,
                     g_in_place ? nullptr : g_buffer.mutable_data_ptr<scalar_t>() + i * out_image,
                     result != nullptr ? result_buffer.mutable_data_ptr<scalar_t>() + i * out_image
                                       : nullptr,
                     grad_bias != nullptr ? image_sums.data() + (first + i) * C_out : nullptr);
    });
    if (!want_input && !want_weight) continue;
    const scalar_t* g_rows = g_in_place
        ? grad_output.tensor.const_data_ptr<scalar_t>() + first * out_image
        : g_buffer.const_data_ptr<scalar_t>();
    const auto [dm, dm_operand] = block_operand<scalar_t>(Scratch::kProducts, rows, C_out, options);
    // V for grad_weight, then dV for grad_input.
    auto [v, v_operand] = block_operand<scalar_t>(Scratch::kTiles, rows, C_in, options);
    transform_output_gradients(tiling, images, g_rows, dm_operand);
    if (want_weight) {
      transform_inputs(tiling, images,
                       rows_of(x, first, last, x_buffer.mutable_data_ptr<scalar_t>()), v_operand);
      if (first == 0) {
        at::bmm_out(du, v.transpose(1, 2), dm);
      } else {
        du.baddbmm_(v.transpose(1, 2), dm);
      }
    }
    if (want_input) {
      at::bmm_out(v, dm, u.transpose(1, 2));
      parallel_tasks(images, kProducts * tiling.per_image * C_in, [&](int64_t i) {
        scalar_t* image = grad_input_data + (first + i) * in_image;
        thread_local std::vector<scalar_t> rows_buffer;
        rows_buffer.resize(grad_input_channels_last ? 0 : in_image);
        scalar_t* image_rows = grad_input_channels_last ? image : rows_buffer.data();
        add_input_gradients(tiling, v_operand, i * tiling.per_image, image_rows);
        if (!grad_input_channels_last) transpose_plane(image_rows, image, g.in_h * g.in_w, C_in);
      });
    }
  }
  if (want_weight) *grad_weight = weight_gradient<scalar_t>(du, C_in, C_out);
  if (grad_bias != nullptr) {
    for (int64_t i = 0; i < g.batch * C_out; ++i) (*grad_bias)[i % C_out] += image_sums[i];
  }
}

}  // namespace winograd

// ------------------------------------------------------------------------------------------------
// Forward

template <typename scalar_t>
void forward_kernel(const Geometry& g, const Dense& x, const at::Tensor& packed,
                    const at::Tensor& bias, Activation activation, scalar_t negative_slope,
                    const at::Tensor& out, bool out_channels_last) {
  using V = Vec<scalar_t>;
  const AxisTaps taps_h = axis_taps(g.in_h, g.out_h, g.kernel_h, g.stride_h, g.padding_h,
                                    g.dilation_h);
  const AxisTaps taps_w = axis_taps(g.in_w, g.out_w, g.kernel_w, g.stride_w, g.padding_w,
                                    g.dilation_w);
  const int64_t C = g.out_channels, Cg = g.out_per_group(), T = g.taps();
  const int64_t pixels = g.in_h * g.in_w, z_row = T * C, out_row = g.out_w * C;
  const scalar_t* bias_data = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
  const V slope(negative_slope);

  // Z = X @ P for rows of the input (x_rows) into z_rows.
  const auto gemm = [&](const at::Tensor& x_rows, const at::Tensor& z_rows) {
    for (int64_t group = 0; group < g.groups; ++group) {
      at::Tensor z_group = group_columns(z_rows, group, T * Cg);
      at::mm_out(z_group, group_columns(x_rows, group, g.in_per_group()), packed[group]);
    }
  };
  // The epilogue for output row (n, oh), from the Z rows of image n.
  const auto epilogue = [&](const scalar_t* z_image, int64_t n, int64_t oh) {
    thread_local std::vector<scalar_t> row_buffer;
    row_buffer.resize(out_row);
    scalar_t* row = out_channels_last ? out_data + (n * g.out_h + oh) * out_row : row_buffer.data();
    for (int64_t ow = 0; ow < g.out_w; ++ow) {
      scalar_t* __restrict__ pixel = row + ow * C;
      for (int64_t c = 0; c < C; ++c) pixel[c] = bias_data != nullptr ? bias_data[c] : 0;
      for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
        const int64_t ih = taps_h.input_of_output[oh * g.kernel_h + kh];
        if (ih < 0) continue;
        for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
          const int64_t iw = taps_w.input_of_output[ow * g.kernel_w + kw];
          if (iw < 0) continue;
          const scalar_t* __restrict__ z_pixel =
              z_image + (ih * g.in_w + iw) * z_row + (kh * g.kernel_w + kw) * Cg;
          for (int64_t group = 0; group < g.groups; ++group) {
            for (int64_t c = 0; c < Cg; ++c) pixel[group * Cg + c] += z_pixel[group * T * Cg + c];
          }
        }
      }
    }
    map_contiguous<scalar_t, 1>(out_row, {row}, row,
                                [&](const V* v) { return activate(activation, v[0], slope); });
    if (!out_channels_last) {
      // NCHW: the row of pixels becomes C rows of out_w values.
      scalar_t* plane = out_data + n * C * g.out_h * g.out_w + oh * g.out_w;
      for (int64_t c = 0; c < C; ++c) {
        for (int64_t ow = 0; ow < g.out_w; ++ow) plane[c * g.out_h * g.out_w + ow] = row[ow * C + c];
      }
    }
  };

  const Plan plan = plan_work(g);
  const scalar_t* x_data = x.tensor.const_data_ptr<scalar_t>();
  if (plan.by_image) {
    at::parallel_for(0, g.batch, 1, [&](int64_t begin, int64_t end) {
      const BelowAutograd below_autograd;
      const at::Tensor z = at::empty({pixels, z_row}, out.options());
      for (int64_t n = begin; n < end; ++n) {
        gemm(image_matrix(x_data, x.channels_last, n, pixels, g.in_channels, out.options()), z);
        for (int64_t oh = 0; oh < g.out_h; ++oh) epilogue(z.const_data_ptr<scalar_t>(), n, oh);
      }
    });
    return;
  }
  const int64_t most_rows = plan.images_per_block * pixels;
  scalar_t* x_buffer =
      scratch(Scratch::kInputRows, {x.channels_last ? 0 : most_rows * g.in_channels}, out.options())
          .mutable_data_ptr<scalar_t>();
  const at::Tensor z_buffer = scratch(Scratch::kProducts, {most_rows, z_row}, out.options());
  for (int64_t first = 0; first < g.batch; first += plan.images_per_block) {
    const int64_t last = std::min(g.batch, first + plan.images_per_block);
    const int64_t rows = (last - first) * pixels;
    const at::Tensor z = z_buffer.narrow(0, 0, rows);
    gemm(at::from_blob(const_cast<scalar_t*>(rows_of(x, first, last, x_buffer)),
                       {rows, g.in_channels}, out.options()),
         z);
    const scalar_t* z_data = z.const_data_ptr<scalar_t>();
    parallel_tasks((last - first) * g.out_h, out_row * 4, [&](int64_t task) {
      const int64_t n = task / g.out_h;
      epilogue(z_data + (n * pixels) * z_row, first + n, task % g.out_h);
    });
  }
}

at::Tensor conv_transpose2d(const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias_opt, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef output_padding,
                            int64_t groups, at::IntArrayRef dilation,
                            c10::string_view activation_name, double negative_slope) {
  constexpr const char* op = "fastgan::conv_transpose2d";
  const at::Tensor bias = bias_opt.value_or(at::Tensor());
  const Geometry g = describe(op, input, weight, bias, stride, padding, output_padding, groups,
                              dilation);
  const Activation activation = checked_activation(op, activation_name, negative_slope);

  if (single_pixel(g)) {
    return single_pixel_forward(g, input, weight, bias, activation, negative_slope);
  }
  const Dense x(input);
  const at::Tensor out =
      x.channels_last
          ? at::empty({g.batch, g.out_h, g.out_w, g.out_channels}, input.options())
                .permute({0, 3, 1, 2})
          : at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options());
  if (out.numel() == 0) return out;
  const at::Tensor bias_c = bias.defined() ? bias.contiguous() : bias;
  if (planar(g, input)) {
    const at::Tensor weight_rows = weight.contiguous().view({g.in_channels, g.out_per_group() * g.taps()});
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "conv_transpose2d", [&] {
      planar_forward<scalar_t>(g, x.tensor, weight_rows,
                               bias_c.defined() ? bias_c.const_data_ptr<scalar_t>() : nullptr,
                               activation, static_cast<scalar_t>(negative_slope), out);
    });
    return out;
  }
  if (winograd::applies(g)) {
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "conv_transpose2d", [&] {
      winograd::forward<scalar_t>(g, x, weight, bias_c, activation,
                                  static_cast<scalar_t>(negative_slope), out, x.channels_last);
    });
    return out;
  }
  const at::Tensor packed = pack_weight(weight, g);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "conv_transpose2d", [&] {
    forward_kernel<scalar_t>(g, x, packed, bias_c, activation,
                             static_cast<scalar_t>(negative_slope), out, x.channels_last);
  });
  return out;
}

// ------------------------------------------------------------------------------------------------
// Backward

template <typename scalar_t>
void backward_kernel(const Geometry& g, const Dense& grad_output, const Dense* result,
                     const Dense& x, const at::Tensor& packed, Activation activation,
                     scalar_t negative_slope, const at::Tensor& grad_input,
                     const at::Tensor& grad_weight_packed, std::vector<double>* grad_bias) {
  using V = Vec<scalar_t>;
  const AxisTaps taps_h = axis_taps(g.in_h, g.out_h, g.kernel_h, g.stride_h, g.padding_h,
                                    g.dilation_h);
  const AxisTaps taps_w = axis_taps(g.in_w, g.out_w, g.kernel_w, g.stride_w, g.padding_w,
                                    g.dilation_w);
  const int64_t C = g.out_channels, Cg = g.out_per_group(), Cin_g = g.in_per_group();
  const int64_t T = g.taps(), pixels = g.in_h * g.in_w, out_image = g.out_h * g.out_w * C;
  const int64_t z_row = T * C, in_image = pixels * g.in_channels;
  const bool want_input = grad_input.defined(), want_weight = grad_weight_packed.defined();
  const bool want_col = want_input || want_weight;
  const V slope(negative_slope);
  const at::TensorOptions options = grad_output.tensor.options();
  const scalar_t* x_data = x.tensor.const_data_ptr<scalar_t>();
  scalar_t* grad_input_data = want_input ? grad_input.mutable_data_ptr<scalar_t>() : nullptr;
  // g is read in place from grad_output when it is channels-last and there is no activation.
  const bool g_in_place = grad_output.channels_last && result == nullptr;
  std::vector<double> image_sums(grad_bias != nullptr ? g.batch * C : 0);

  const auto image_g = [&](int64_t n, scalar_t* g_image, scalar_t* result_image) {
    return image_gradient(grad_output, result, activation, slope, n, g_image, result_image,
                          grad_bias != nullptr ? image_sums.data() + n * C : nullptr);
  };
  // G_col[(ih, iw), (group, kh, kw, co)] for input row ih of an image, from the image's g: the
  // adjoint of the forward's epilogue.
  const auto gather = [&](const scalar_t* g_image, scalar_t* col_image, int64_t ih) {
    for (int64_t iw = 0; iw < g.in_w; ++iw) {
      scalar_t* col_row = col_image + (ih * g.in_w + iw) * z_row;
      for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
        const int64_t oh = taps_h.output_of_input[ih * g.kernel_h + kh];
        for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
          const int64_t ow = taps_w.output_of_input[iw * g.kernel_w + kw];
          scalar_t* __restrict__ dst = col_row + kh * g.kernel_w * Cg + kw * Cg;
          if (oh < 0 || ow < 0) {
            for (int64_t group = 0; group < g.groups; ++group) std::fill_n(dst + group * T * Cg, Cg, 0);
            continue;
          }
          const scalar_t* __restrict__ src = g_image + (oh * g.out_w + ow) * C;
          for (int64_t group = 0; group < g.groups; ++group) {
            for (int64_t c = 0; c < Cg; ++c) dst[group * T * Cg + c] = src[group * Cg + c];
          }
        }
      }
    }
  };
  // grad_input rows = G_col @ P^T; grad_weight += X^T @ G_col (into `weight_sum`).
  const auto gemms = [&](const at::Tensor& col, const at::Tensor& grad_rows,
                         const at::Tensor& x_rows, const at::Tensor& weight_sum) {
    for (int64_t group = 0; group < g.groups; ++group) {
      const at::Tensor col_group = group_columns(col, group, T * Cg);
      if (want_input) {
        at::Tensor grad_group = group_columns(grad_rows, group, Cin_g);
        at::mm_out(grad_group, col_group, packed[group].t());
      }
      if (want_weight) {
        weight_sum[group].addmm_(group_columns(x_rows, group, Cin_g).t(), col_group);
      }
    }
  };

  const Plan plan = plan_work(g);
  if (plan.by_image) {
    // One task per image; grad_weight in one partial sum per chunk of images, added in order.
    std::vector<at::Tensor> chunk_sums(g.batch);
    at::parallel_for(0, g.batch, 1, [&](int64_t begin, int64_t end) {
      const BelowAutograd below_autograd;
      std::vector<scalar_t> g_image(g_in_place ? 0 : out_image);
      std::vector<scalar_t> result_image(result != nullptr ? out_image : 0);
      const at::Tensor col = at::empty({want_col ? pixels : 0, z_row}, options);
      const at::Tensor weight_sum = want_weight ? at::zeros_like(grad_weight_packed) : at::Tensor();
      for (int64_t n = begin; n < end; ++n) {
        const scalar_t* g_data = image_g(n, g_image.data(), result_image.data());
        if (!want_col) continue;
        for (int64_t ih = 0; ih < g.in_h; ++ih) {
          gather(g_data, col.mutable_data_ptr<scalar_t>(), ih);
        }
        gemms(col,
              want_input ? image_matrix<scalar_t>(grad_input_data, x.channels_last, n, pixels,
                                                  g.in_channels, options)
                         : at::Tensor(),
              want_weight ? image_matrix(x_data, x.channels_last, n, pixels, g.in_channels,
                                         options)
                          : at::Tensor(),
              weight_sum);
      }
      chunk_sums[begin] = weight_sum;
    });
    for (const auto& sum : chunk_sums) {
      if (sum.defined()) grad_weight_packed.add_(sum);
    }
  } else {
    const int64_t most = plan.images_per_block;
    const auto buffer = [&](Scratch use, bool wanted, int64_t count) {
      return scratch(use, {wanted ? count : 0}, options).mutable_data_ptr<scalar_t>();
    };
    scalar_t* g_buffer = buffer(Scratch::kOutputRows, !g_in_place, most * out_image);
    scalar_t* result_buffer = buffer(Scratch::kResultRows, result != nullptr, most * out_image);
    scalar_t* x_buffer = buffer(Scratch::kInputRows, want_weight && !x.channels_last,
                                most * in_image);
    scalar_t* grad_input_buffer = buffer(Scratch::kInputGradientRows,
                                         want_input && !x.channels_last, most * in_image);
    const at::Tensor col_buffer =
        scratch(Scratch::kTiles, {want_col ? most * pixels : 0, z_row}, options);
    for (int64_t first = 0; first < g.batch; first += most) {
      const int64_t last = std::min(g.batch, first + most), images = last - first;
      const int64_t rows = images * pixels;
      // g of the block's images, one after another (in place in grad_output, or in g_buffer).
      const scalar_t* g_data = g_in_place
          ? grad_output.tensor.const_data_ptr<scalar_t>() + first * out_image
          : g_buffer;
      parallel_tasks(images, out_image, [&](int64_t i) {
        image_g(first + i, g_in_place ? nullptr : g_buffer + i * out_image,
                result != nullptr ? result_buffer + i * out_image : nullptr);
      });
      if (!want_col) continue;
      const at::Tensor col = col_buffer.narrow(0, 0, rows);
      scalar_t* col_data = col.mutable_data_ptr<scalar_t>();
      parallel_tasks(images * g.in_h, g.in_w * z_row, [&](int64_t task) {
        const int64_t i = task / g.in_h;
        gather(g_data + i * out_image, col_data + i * pixels * z_row, task % g.in_h);
      });
      scalar_t* grad_rows = want_input
          ? (x.channels_last ? grad_input_data + first * in_image : grad_input_buffer)
          : nullptr;
      gemms(col,
            want_input ? at::from_blob(grad_rows, {rows, g.in_channels}, options) : at::Tensor(),
            want_weight ? at::from_blob(const_cast<scalar_t*>(rows_of(x, first, last, x_buffer)),
                                        {rows, g.in_channels}, options)
                        : at::Tensor(),
            grad_weight_packed);
      if (want_input && !x.channels_last) {
        parallel_tasks(images, in_image, [&](int64_t i) {
          transpose_plane(grad_input_buffer + i * in_image,
                          grad_input_data + (first + i) * in_image, pixels, g.in_channels);
        });
      }
    }
  }
  if (grad_bias != nullptr) {
    for (int64_t i = 0; i < g.batch * C; ++i) (*grad_bias)[i % C] += image_sums[i];
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_transpose2d_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& result_opt, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef output_padding, int64_t groups, at::IntArrayRef dilation,
    c10::string_view activation_name, double negative_slope, std::array<bool, 3> output_mask) {
  constexpr const char* op = "fastgan::conv_transpose2d_backward";
  const Geometry g = describe(op, input, weight, at::Tensor(), stride, padding, output_padding,
                              groups, dilation);
  const Activation activation = checked_activation(op, activation_name, negative_slope);
  const at::Tensor result = result_opt.value_or(at::Tensor());
  check_backward_tensors(op, grad_output, result, input, g, activation, activation_name);

  if (single_pixel(g)) {
    return single_pixel_backward(g, grad_output, input, weight, result, activation,
                                 negative_slope, output_mask);
  }
  const bool want_input = output_mask[0], want_weight = output_mask[1], want_bias = output_mask[2];
  const Dense x(input);
  // Outputs not asked for are distinct empty tensors (outputs must not alias).
  at::Tensor grad_input = input.new_empty({0}), grad_weight = input.new_empty({0}),
             grad_bias = input.new_empty({0});
  if (want_input) {
    grad_input = x.channels_last
                     ? at::empty({g.batch, g.in_h, g.in_w, g.in_channels}, input.options())
                           .permute({0, 3, 1, 2})
                     : at::empty_like(x.tensor);
  }
  // grad_weight's sum: in the weight's own layout (C_in, C_out/groups * taps) on the planar path,
  // packed per group on the others.
  const bool planar_path = planar(g, input);
  const bool winograd_path = !planar_path && winograd::applies(g) && g.batch > 0;
  const at::Tensor grad_weight_sum =
      !want_weight || winograd_path ? at::Tensor()
      : planar_path ? at::zeros({g.in_channels, g.out_per_group() * g.taps()}, input.options())
                    : at::zeros({g.groups, g.in_per_group(), g.taps() * g.out_per_group()},
                                input.options());
  std::vector<double> bias_sums(g.out_channels, 0.0);
  if (g.batch > 0 && (want_input || want_weight || want_bias)) {
    if (planar_path) {
      const at::Tensor weight_rows =
          weight.contiguous().view({g.in_channels, g.out_per_group() * g.taps()});
      const at::Tensor res = activation != Activation::kNone ? result.contiguous() : at::Tensor();
      AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "conv_transpose2d_backward", [&] {
        planar_backward<scalar_t>(g, grad_output.contiguous(), res, x.tensor, weight_rows,
                                  activation, static_cast<scalar_t>(negative_slope),
                                  want_input ? grad_input : at::Tensor(), grad_weight_sum,
                                  want_bias ? &bias_sums : nullptr);
      });
    } else {
      const Dense go(grad_output);
      const std::optional<Dense> res =
          activation != Activation::kNone ? std::optional<Dense>(Dense(result)) : std::nullopt;
      AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "conv_transpose2d_backward", [&] {
        if (winograd_path) {
          winograd::backward<scalar_t>(g, go, res ? &*res : nullptr, x, weight, activation,
                                       static_cast<scalar_t>(negative_slope),
                                       want_input ? grad_input : at::Tensor(),
                                       want_weight ? &grad_weight : nullptr,
                                       want_bias ? &bias_sums : nullptr);
          return;
        }
        const at::Tensor packed = want_input ? pack_weight(weight, g) : at::Tensor();
        backward_kernel<scalar_t>(g, go, res ? &*res : nullptr, x, packed, activation,
                                  static_cast<scalar_t>(negative_slope),
                                  want_input ? grad_input : at::Tensor(), grad_weight_sum,
                                  want_bias ? &bias_sums : nullptr);
      });
    }
  }
  if (want_weight && !winograd_path) {
    grad_weight = planar_path ? grad_weight_sum.view(weight.sizes())
                              : unpack_weight(grad_weight_sum, g);
  }
  if (want_bias) {
    grad_bias = at::tensor(bias_sums, input.options().dtype(at::kDouble)).to(input.scalar_type());
  }
  return {grad_input, grad_weight, grad_bias};
}

// ------------------------------------------------------------------------------------------------
// The activation's part of the double backward

std::tuple<at::Tensor, at::Tensor> conv_transpose2d_activation_double_backward(
    const at::Tensor& grad_preactivation, const at::Tensor& grad_output, const at::Tensor& result,
    c10::string_view activation_name, double negative_slope, std::array<bool, 2> output_mask) {
  constexpr const char* op = "fastgan::conv_transpose2d_activation_double_backward";
  const ActivationDoubleBackward a = prepare_activation_double_backward(
      op, grad_preactivation, grad_output, result, activation_name, negative_slope, output_mask);
  check_cpu(op, result);
  const Activation activation = a.activation;
  const int64_t count = a.result.numel();
  AT_DISPATCH_FLOATING_TYPES(result.scalar_type(), "conv_transpose2d_activation_double_backward",
                             [&] {
    using V = Vec<scalar_t>;
    const V slope(static_cast<scalar_t>(negative_slope));
    const scalar_t* gp_data = a.grad_preactivation.const_data_ptr<scalar_t>();
    const scalar_t* go_data = a.grad_output.const_data_ptr<scalar_t>();
    const scalar_t* res_data = a.result.const_data_ptr<scalar_t>();
    at::parallel_for(0, count, at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
      if (output_mask[0]) {
        map_contiguous<scalar_t, 2>(
            end - begin, {gp_data + begin, res_data + begin},
            a.grad_grad_output.mutable_data_ptr<scalar_t>() + begin,
            [&](const V* v) { return v[0] * activation_grad(activation, v[1], slope); });
      }
      if (output_mask[1]) {
        map_contiguous<scalar_t, 3>(
            end - begin, {gp_data + begin, go_data + begin, res_data + begin},
            a.grad_result.mutable_data_ptr<scalar_t>() + begin, [&](const V* v) {
              return v[0] * v[1] * activation_grad_derivative<V>(activation, v[2]);
            });
      }
    });
  });
  return {a.grad_grad_output, a.grad_result};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  register_kernels(m, &conv_transpose2d, &conv_transpose2d_backward,
                   &conv_transpose2d_activation_double_backward);
}

}  // namespace cpu
}  // namespace fastgan
