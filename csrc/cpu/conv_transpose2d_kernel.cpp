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
// The batch runs in blocks of whole images, one after another, each step of a block on all threads
// (the GEMMs through at::mm's own threading). A block has enough rows for efficient GEMMs (grad_weight
// accumulates over them) while its Z or G_col stays small. NCHW tensors are transposed to rows a
// block at a time, in cache; channels-last ones are used in place. Results take the input's layout.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <string_view>
#include <vector>

#include "../conv_transpose2d.h"

namespace fastgan {
namespace cpu {
namespace {

using namespace fastgan::conv_t;

template <typename scalar_t>
using Vec = at::vec::Vectorized<scalar_t>;

// ------------------------------------------------------------------------------------------------
// Layout

// Channels-last storage that is not also plain contiguous (mirrored by fastgan/ops for the fake
// kernels): such tensors are read in place, and the op's results take that layout too.
bool stored_channels_last(const at::Tensor& t) {
  return !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// An (N, C, H, W) tensor as the kernels read it: dense, channels-last or NCHW.
struct Dense {
  at::Tensor tensor;
  bool channels_last;
  explicit Dense(const at::Tensor& t)
      : tensor(stored_channels_last(t) ? t : t.contiguous()), channels_last(stored_channels_last(t)) {}
  int64_t channels() const { return tensor.size(1); }
  int64_t pixels() const { return tensor.size(2) * tensor.size(3); }
};

// dst[c][r] = src[r][c] for a rows x cols plane (vectorized in 16 x 16 tiles for float).
template <typename scalar_t>
void transpose_plane(const scalar_t* src, scalar_t* dst, int64_t rows, int64_t cols) {
  at::vec::transpose_mxn<scalar_t>(src, cols, dst, rows, static_cast<int>(rows),
                                   static_cast<int>(cols));
}

// Parallel over tasks of about `work` elements each.
template <typename Fn>
void parallel_tasks(int64_t count, int64_t work, const Fn& fn) {
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, work));
  at::parallel_for(0, count, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) fn(task);
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

// NCHW images with at least this many pixels are GEMM operands in place (see RowMatrices).
constexpr int64_t kPerImagePixels = 256;

// The GEMMs' view of input-shaped rows (n, h, w) x C_in for a block of images, as pieces (first row
// within the block, (rows, C_in) matrix). Channels-last storage is one matrix in place. NCHW images
// with many pixels are one transposed matrix each, in place (BLAS reads them transposed); small
// NCHW images go through a transposed copy in buffer(), which the caller fills or empties.
template <typename scalar_t>
class RowMatrices {
 public:
  RowMatrices(bool channels_last, int64_t images, int64_t pixels, int64_t channels,
              at::TensorOptions options)
      : channels_last_(channels_last), pixels_(pixels), channels_(channels), options_(options),
        buffer_(buffered() ? images * pixels * channels : 0) {}

  bool buffered() const { return !channels_last_ && pixels_ < kPerImagePixels; }
  scalar_t* buffer() { return buffer_.data(); }

  // Pieces for images [first, last) of the (N, C, H, W) storage at `data`.
  std::vector<std::pair<int64_t, at::Tensor>> pieces(const scalar_t* data, int64_t first,
                                                     int64_t last) {
    const int64_t image = pixels_ * channels_, rows = (last - first) * pixels_;
    if (channels_last_) return {{0, wrap(data + first * image, rows, channels_)}};
    if (buffered()) return {{0, wrap(buffer_.data(), rows, channels_)}};
    std::vector<std::pair<int64_t, at::Tensor>> result;
    for (int64_t n = first; n < last; ++n) {
      result.emplace_back((n - first) * pixels_, wrap(data + n * image, channels_, pixels_).t());
    }
    return result;
  }

 private:
  at::Tensor wrap(const scalar_t* data, int64_t rows, int64_t cols) const {
    return at::from_blob(const_cast<scalar_t*>(data), {rows, cols}, options_);
  }

  bool channels_last_;
  int64_t pixels_, channels_;
  at::TensorOptions options_;
  std::vector<scalar_t> buffer_;
};

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

// Z or G_col entries per block (16 MiB of float32): blocks are few (each step of a block is one
// parallel region, costly when threads are contended) and have many rows (the GEMMs' M, and
// grad_weight's K) while their buffers stay moderate.
constexpr int64_t kBlockEntries = 1 << 20;

struct Blocks {
  int64_t images, count;
};

Blocks plan_blocks(const Geometry& g) {
  const int64_t per_image = std::max<int64_t>(1, g.in_h * g.in_w * g.taps() * g.out_channels);
  const int64_t images = std::clamp<int64_t>(kBlockEntries / per_image, 1,
                                             std::max<int64_t>(1, g.batch));
  return {images, (g.batch + images - 1) / images};
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
  const Blocks blocks = plan_blocks(g);
  const scalar_t* bias_data = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
  const V slope(negative_slope);

  const int64_t most_rows = blocks.images * pixels;
  RowMatrices<scalar_t> x_rows(x.channels_last, blocks.images, pixels, g.in_channels,
                               out.options());
  const at::Tensor z_buffer = at::empty({most_rows, z_row}, out.options());
  for (int64_t first = 0; first < g.batch; first += blocks.images) {
    const int64_t last = std::min(g.batch, first + blocks.images), rows = (last - first) * pixels;
    if (x_rows.buffered()) rows_of(x, first, last, x_rows.buffer());
    at::Tensor z = z_buffer.narrow(0, 0, rows);
    for (const auto& [offset, x_piece] : x_rows.pieces(x.tensor.const_data_ptr<scalar_t>(), first,
                                                       last)) {
      for (int64_t group = 0; group < g.groups; ++group) {
        at::Tensor z_group = group_columns(z.narrow(0, offset, x_piece.size(0)), group, T * Cg);
        at::mm_out(z_group, group_columns(x_piece, group, g.in_per_group()), packed[group]);
      }
    }
    const scalar_t* z_data = z.const_data_ptr<scalar_t>();
    // The epilogue, one output row (n, oh) per task.
    parallel_tasks((last - first) * g.out_h, out_row * 4, [&](int64_t task) {
      const int64_t n = first + task / g.out_h, oh = task % g.out_h;
      thread_local std::vector<scalar_t> row_buffer;
      row_buffer.resize(out_row);
      scalar_t* row = out_channels_last ? out_data + (n * g.out_h + oh) * out_row
                                        : row_buffer.data();
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
                z_data + (((n - first) * g.in_h + ih) * g.in_w + iw) * z_row +
                (kh * g.kernel_w + kw) * Cg;
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
  const Activation activation = parse_activation(
      op, std::string_view(activation_name.data(), activation_name.size()));
  check_negative_slope(op, activation, negative_slope);

  const Dense x(input);
  const at::Tensor out =
      x.channels_last
          ? at::empty({g.batch, g.out_h, g.out_w, g.out_channels}, input.options())
                .permute({0, 3, 1, 2})
          : at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options());
  if (out.numel() == 0) return out;
  const at::Tensor packed = pack_weight(weight, g);
  const at::Tensor bias_c = bias.defined() ? bias.contiguous() : bias;
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
  const int64_t T = g.taps(), pixels = g.in_h * g.in_w, out_pixels = g.out_h * g.out_w;
  const int64_t z_row = T * C;
  const Blocks blocks = plan_blocks(g);
  const bool want_input = grad_input.defined(), want_weight = grad_weight_packed.defined();
  const bool in_channels_last = x.channels_last;
  const V slope(negative_slope);
  const at::Tensor& like = grad_output.tensor;

  const int64_t most_rows = blocks.images * pixels, most_out = blocks.images * out_pixels * C;
  // g is read in place from grad_output when it is channels-last and there is no activation.
  const bool g_in_place = grad_output.channels_last && result == nullptr;
  std::vector<scalar_t> g_buffer(g_in_place ? 0 : most_out), result_buffer(result != nullptr ? most_out : 0);
  RowMatrices<scalar_t> x_rows(in_channels_last, want_weight ? blocks.images : 0, pixels,
                               g.in_channels, like.options());
  RowMatrices<scalar_t> grad_input_rows(in_channels_last, want_input ? blocks.images : 0, pixels,
                                        g.in_channels, like.options());
  std::vector<double> image_sums(grad_bias != nullptr ? blocks.images * C : 0);
  const at::Tensor col_buffer = at::empty({want_input || want_weight ? most_rows : 0, z_row},
                                          like.options());
  for (int64_t first = 0; first < g.batch; first += blocks.images) {
    const int64_t last = std::min(g.batch, first + blocks.images), images = last - first;
    const int64_t rows = images * pixels;

    // Per image: g = grad_output * activation'(result) as rows (oh, ow) of C, and grad_bias's
    // sums: in scalar_t per output row, then in double; images are added in order.
    const scalar_t* g_data = g_in_place
        ? grad_output.tensor.const_data_ptr<scalar_t>() + first * out_pixels * C
        : g_buffer.data();
    parallel_tasks(images, out_pixels * C, [&](int64_t n) {
      const int64_t offset = n * out_pixels * C;
      if (!g_in_place) {
        scalar_t* g_image = g_buffer.data() + offset;
        const scalar_t* go = image_rows(grad_output, first + n, g_image);
        if (result != nullptr) {
          const scalar_t* res = image_rows(*result, first + n, result_buffer.data() + offset);
          map_contiguous<scalar_t, 2>(
              out_pixels * C, {go, res}, g_image,
              [&](const V* v) { return v[0] * activation_grad(activation, v[1], slope); });
        }
      }
      if (grad_bias == nullptr) return;
      double* sums = image_sums.data() + n * C;
      std::fill_n(sums, C, 0.0);
      thread_local std::vector<scalar_t> row_sums;
      row_sums.resize(C);
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        std::fill(row_sums.begin(), row_sums.end(), scalar_t(0));
        const scalar_t* row = g_data + offset + oh * g.out_w * C;
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          for (int64_t c = 0; c < C; ++c) row_sums[c] += row[ow * C + c];
        }
        for (int64_t c = 0; c < C; ++c) sums[c] += row_sums[c];
      }
    });
    if (grad_bias != nullptr) {
      for (int64_t i = 0; i < images * C; ++i) (*grad_bias)[i % C] += image_sums[i];
    }
    if (!want_input && !want_weight) continue;

    // G_col[(n, ih, iw), (group, kh, kw, co)]: the adjoint of the forward's epilogue.
    at::Tensor col = col_buffer.narrow(0, 0, rows);
    scalar_t* col_data = col.mutable_data_ptr<scalar_t>();
    parallel_tasks(images * g.in_h, g.in_w * z_row, [&](int64_t task) {
      const int64_t n = task / g.in_h, ih = task % g.in_h;
      for (int64_t iw = 0; iw < g.in_w; ++iw) {
        scalar_t* col_row = col_data + ((n * g.in_h + ih) * g.in_w + iw) * z_row;
        for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
          const int64_t oh = taps_h.output_of_input[ih * g.kernel_h + kh];
          for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
            const int64_t ow = taps_w.output_of_input[iw * g.kernel_w + kw];
            const scalar_t* __restrict__ src = g_data + ((n * g.out_h + oh) * g.out_w + ow) * C;
            for (int64_t group = 0; group < g.groups; ++group) {
              scalar_t* __restrict__ dst = col_row + (group * T + kh * g.kernel_w + kw) * Cg;
              if (oh < 0 || ow < 0) {
                for (int64_t c = 0; c < Cg; ++c) dst[c] = 0;
              } else {
                for (int64_t c = 0; c < Cg; ++c) dst[c] = src[group * Cg + c];
              }
            }
          }
        }
      }
    });

    if (want_input) {
      scalar_t* grad_input_data = grad_input.mutable_data_ptr<scalar_t>();
      for (const auto& [offset, grad_piece] : grad_input_rows.pieces(grad_input_data, first, last)) {
        const at::Tensor col_piece = col.narrow(0, offset, grad_piece.size(0));
        for (int64_t group = 0; group < g.groups; ++group) {
          at::Tensor grad_group = group_columns(grad_piece, group, Cin_g);
          at::mm_out(grad_group, group_columns(col_piece, group, T * Cg), packed[group].t());
        }
      }
      if (grad_input_rows.buffered()) {
        const int64_t image = pixels * g.in_channels;
        parallel_tasks(images, image, [&](int64_t n) {
          transpose_plane(grad_input_rows.buffer() + n * image,
                          grad_input_data + (first + n) * image, pixels, g.in_channels);
        });
      }
    }
    if (want_weight) {
      if (x_rows.buffered()) rows_of(x, first, last, x_rows.buffer());
      for (const auto& [offset, x_piece] : x_rows.pieces(x.tensor.const_data_ptr<scalar_t>(),
                                                         first, last)) {
        const at::Tensor col_piece = col.narrow(0, offset, x_piece.size(0));
        for (int64_t group = 0; group < g.groups; ++group) {
          grad_weight_packed[group].addmm_(group_columns(x_piece, group, Cin_g).t(),
                                           group_columns(col_piece, group, T * Cg));
        }
      }
    }
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
  const Activation activation = parse_activation(
      op, std::string_view(activation_name.data(), activation_name.size()));
  check_negative_slope(op, activation, negative_slope);
  check_output_like(op, "grad_output", grad_output, input, g);
  const at::Tensor result = result_opt.value_or(at::Tensor());
  TORCH_CHECK(activation == Activation::kNone || result.defined(), op,
              ": result (the forward's output) is required for activation \"",
              std::string_view(activation_name.data(), activation_name.size()), "\"");
  if (activation != Activation::kNone) check_output_like(op, "result", result, input, g);

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
  const at::Tensor grad_weight_packed =
      want_weight ? at::zeros({g.groups, g.in_per_group(), g.taps() * g.out_per_group()},
                              input.options())
                  : at::Tensor();
  std::vector<double> bias_sums(g.out_channels, 0.0);
  if (g.batch > 0 && (want_input || want_weight || want_bias)) {
    const Dense go(grad_output);
    const std::optional<Dense> res =
        activation != Activation::kNone ? std::optional<Dense>(Dense(result)) : std::nullopt;
    const at::Tensor packed = want_input ? pack_weight(weight, g) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "conv_transpose2d_backward", [&] {
      backward_kernel<scalar_t>(g, go, res ? &*res : nullptr, x, packed, activation,
                                static_cast<scalar_t>(negative_slope),
                                want_input ? grad_input : at::Tensor(), grad_weight_packed,
                                want_bias ? &bias_sums : nullptr);
    });
  }
  if (want_weight) grad_weight = unpack_weight(grad_weight_packed, g);
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
  const Activation activation = parse_activation(
      op, std::string_view(activation_name.data(), activation_name.size()));
  check_negative_slope(op, activation, negative_slope);
  check_cpu(op, result);
  for (const auto& [name, t] : {std::pair{"grad_preactivation", &grad_preactivation},
                                std::pair{"grad_output", &grad_output}}) {
    TORCH_CHECK(t->sizes() == result.sizes(), op, ": ", name, " must have the shape of result ",
                result.sizes(), ", got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == result.scalar_type(), op, ": ", name, " must have dtype ",
                result.scalar_type(), ", got ", t->scalar_type());
  }
  TORCH_CHECK(result.dim() == 4, op, ": result must have shape (N, C, H, W), got ",
              result.sizes());
  // Every tensor in result's storage order, so that one flat pass covers all three.
  const auto format = stored_channels_last(result) ? at::MemoryFormat::ChannelsLast
                                                   : at::MemoryFormat::Contiguous;
  const at::Tensor gp = grad_preactivation.contiguous(format);
  const at::Tensor go = grad_output.contiguous(format);
  const at::Tensor res = result.contiguous(format);
  at::Tensor grad_grad_output = output_mask[0] ? at::empty_like(res) : result.new_empty({0});
  at::Tensor grad_result = output_mask[1] ? at::empty_like(res) : result.new_empty({0});
  const int64_t count = res.numel();
  AT_DISPATCH_FLOATING_TYPES(result.scalar_type(), "conv_transpose2d_activation_double_backward",
                             [&] {
    using V = Vec<scalar_t>;
    const V slope(static_cast<scalar_t>(negative_slope));
    const scalar_t* gp_data = gp.const_data_ptr<scalar_t>();
    const scalar_t* go_data = go.const_data_ptr<scalar_t>();
    const scalar_t* res_data = res.const_data_ptr<scalar_t>();
    at::parallel_for(0, count, at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
      if (output_mask[0]) {
        map_contiguous<scalar_t, 2>(
            end - begin, {gp_data + begin, res_data + begin},
            grad_grad_output.mutable_data_ptr<scalar_t>() + begin,
            [&](const V* v) { return v[0] * activation_grad(activation, v[1], slope); });
      }
      if (output_mask[1]) {
        map_contiguous<scalar_t, 3>(
            end - begin, {gp_data + begin, go_data + begin, res_data + begin},
            grad_result.mutable_data_ptr<scalar_t>() + begin, [&](const V* v) {
              return v[0] * v[1] * activation_grad_derivative<V>(activation, v[2]);
            });
      }
    });
  });
  return {grad_grad_output, grad_result};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("conv_transpose2d", &conv_transpose2d);
  m.impl("conv_transpose2d_backward", &conv_transpose2d_backward);
  m.impl("conv_transpose2d_activation_double_backward",
         &conv_transpose2d_activation_double_backward);
}

}  // namespace cpu
}  // namespace fastgan
