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
// The batch is processed in blocks of whole images so that Z and G_col stay in cache; blocks are
// spread over threads and each GEMM (at::mm) runs on one thread. Inputs of either NCHW or
// channels-last layout are read natively; outputs take the input's layout.
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

// A dense (N, H, W, C) copy of an (N, C, H, W) tensor; no copy when it is stored channels-last.
at::Tensor to_nhwc(const at::Tensor& t) { return t.permute({0, 2, 3, 1}).contiguous(); }

// An (N, C, H, W) tensor from a dense (N, H, W, C) one, stored channels-last or contiguous.
at::Tensor from_nhwc(const at::Tensor& nhwc, bool channels_last) {
  const at::Tensor nchw = nhwc.permute({0, 3, 1, 2});
  return channels_last ? nchw : nchw.contiguous();
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
// Geometry tables and work split

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

// Z and G_col entries per block, as a target: about 1 MiB of float32, so that a block's Z (or
// G_col) stays in the L2 cache between the GEMM that writes it and the pass that reads it.
constexpr int64_t kBlockEntries = 1 << 18;

// Blocks of whole images, at least two per thread where the batch allows, and the "lanes" that
// run them: lane l runs blocks l, l + lanes, ... and keeps its own partial sums, so results
// depend on the thread count but never on scheduling.
struct BlockPlan {
  int64_t images_per_block, blocks, lanes;
};

BlockPlan plan_blocks(const Geometry& g) {
  const int64_t per_image = std::max<int64_t>(1, g.in_h * g.in_w * g.taps() * g.out_channels);
  const int64_t threads = at::get_num_threads();
  const int64_t most = std::max<int64_t>(1, (g.batch + 2 * threads - 1) / (2 * threads));
  const int64_t images = std::clamp<int64_t>(kBlockEntries / per_image, 1, most);
  const int64_t blocks = (g.batch + images - 1) / images;
  return {images, blocks, std::min(blocks, threads)};
}

template <typename Fn>
void for_each_block(const BlockPlan& plan, int64_t batch, const Fn& fn) {
  at::parallel_for(0, plan.lanes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t lane = begin; lane < end; ++lane) {
      for (int64_t block = lane; block < plan.blocks; block += plan.lanes) {
        const int64_t first = block * plan.images_per_block;
        fn(lane, first, std::min(batch, first + plan.images_per_block));
      }
    }
  });
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
void forward_kernel(const Geometry& g, const at::Tensor& x_rows, const at::Tensor& packed,
                    const at::Tensor& bias, Activation activation, scalar_t negative_slope,
                    scalar_t* out, bool out_channels_last) {
  using V = Vec<scalar_t>;
  const AxisTaps taps_h = axis_taps(g.in_h, g.out_h, g.kernel_h, g.stride_h, g.padding_h,
                                    g.dilation_h);
  const AxisTaps taps_w = axis_taps(g.in_w, g.out_w, g.kernel_w, g.stride_w, g.padding_w,
                                    g.dilation_w);
  const int64_t C = g.out_channels, Cg = g.out_per_group(), T = g.taps();
  const int64_t pixels = g.in_h * g.in_w, z_row = T * C;
  const BlockPlan plan = plan_blocks(g);
  const scalar_t* bias_data = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
  const V slope(negative_slope);

  for_each_block(plan, g.batch, [&](int64_t, int64_t first, int64_t last) {
    const int64_t rows = (last - first) * pixels;
    const at::Tensor z = at::empty({rows, z_row}, x_rows.options());
    const at::Tensor x_block = x_rows.narrow(0, first * pixels, rows);
    for (int64_t group = 0; group < g.groups; ++group) {
      at::Tensor z_group = group_columns(z, group, T * Cg);
      at::mm_out(z_group, group_columns(x_block, group, g.in_per_group()), packed[group]);
    }
    const scalar_t* z_data = z.const_data_ptr<scalar_t>();
    std::vector<scalar_t> row_buffer(out_channels_last ? 0 : g.out_w * C);
    for (int64_t n = first; n < last; ++n) {
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        scalar_t* row = out_channels_last ? out + (n * g.out_h + oh) * g.out_w * C
                                          : row_buffer.data();
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          scalar_t* pixel = row + ow * C;
          if (bias_data != nullptr) {
            std::copy_n(bias_data, C, pixel);
          } else {
            std::fill_n(pixel, C, scalar_t(0));
          }
          for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
            const int64_t ih = taps_h.input_of_output[oh * g.kernel_h + kh];
            if (ih < 0) continue;
            for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
              const int64_t iw = taps_w.input_of_output[ow * g.kernel_w + kw];
              if (iw < 0) continue;
              const scalar_t* z_pixel = z_data + (((n - first) * g.in_h + ih) * g.in_w + iw) * z_row
                                        + (kh * g.kernel_w + kw) * Cg;
              for (int64_t group = 0; group < g.groups; ++group) {
                scalar_t* sum = pixel + group * Cg;
                map_contiguous<scalar_t, 2>(Cg, {sum, z_pixel + group * T * Cg}, sum,
                                            [](const V* v) { return v[0] + v[1]; });
              }
            }
          }
        }
        map_contiguous<scalar_t, 1>(g.out_w * C, {row}, row,
                                    [&](const V* v) { return activate(activation, v[0], slope); });
        if (!out_channels_last) {
          // NCHW: the row of pixels becomes C rows of out_w values.
          scalar_t* plane = out + n * C * g.out_h * g.out_w + oh * g.out_w;
          for (int64_t c = 0; c < C; ++c) {
            for (int64_t ow = 0; ow < g.out_w; ++ow) {
              plane[c * g.out_h * g.out_w + ow] = row[ow * C + c];
            }
          }
        }
      }
    }
  });
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

  const bool channels_last = stored_channels_last(input);
  at::Tensor out_nhwc = at::empty({g.batch, g.out_h, g.out_w, g.out_channels}, input.options());
  at::Tensor out = channels_last ? out_nhwc.permute({0, 3, 1, 2})
                                 : at::empty({g.batch, g.out_channels, g.out_h, g.out_w},
                                             input.options());
  if (out.numel() == 0) return out;
  const at::Tensor x_rows = to_nhwc(input).view({-1, g.in_channels});
  const at::Tensor packed = pack_weight(weight, g);
  const at::Tensor bias_c = bias.defined() ? bias.contiguous() : bias;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "conv_transpose2d", [&] {
    forward_kernel<scalar_t>(g, x_rows, packed, bias_c, activation,
                             static_cast<scalar_t>(negative_slope),
                             out.mutable_data_ptr<scalar_t>(), channels_last);
  });
  return out;
}

// ------------------------------------------------------------------------------------------------
// Backward

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
  const bool channels_last = stored_channels_last(input);
  const int64_t C = g.out_channels, Cg = g.out_per_group(), Cin_g = g.in_per_group();
  const int64_t T = g.taps(), pixels = g.in_h * g.in_w, out_pixels = g.out_h * g.out_w;
  const int64_t z_row = T * C;
  const BlockPlan plan = plan_blocks(g);

  at::Tensor grad_input_nhwc = want_input ? at::empty({g.batch, g.in_h, g.in_w, g.in_channels},
                                                      input.options())
                                          : at::Tensor();
  std::vector<at::Tensor> weight_partials(want_weight ? plan.lanes : 0);
  for (auto& partial : weight_partials) partial = at::zeros({g.groups, Cin_g, T * Cg}, input.options());
  std::vector<double> bias_partials(want_bias ? plan.lanes * C : 0, 0.0);

  if (g.batch > 0 && (want_input || want_weight || want_bias)) {
    const at::Tensor go = to_nhwc(grad_output);
    const at::Tensor res = activation != Activation::kNone ? to_nhwc(result) : at::Tensor();
    const at::Tensor x_rows = want_weight ? to_nhwc(input).view({-1, g.in_channels}) : at::Tensor();
    const at::Tensor packed = want_input ? pack_weight(weight, g) : at::Tensor();
    const AxisTaps taps_h = axis_taps(g.in_h, g.out_h, g.kernel_h, g.stride_h, g.padding_h,
                                      g.dilation_h);
    const AxisTaps taps_w = axis_taps(g.in_w, g.out_w, g.kernel_w, g.stride_w, g.padding_w,
                                      g.dilation_w);
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "conv_transpose2d_backward", [&] {
      using V = Vec<scalar_t>;
      const V slope(static_cast<scalar_t>(negative_slope));
      for_each_block(plan, g.batch, [&](int64_t lane, int64_t first, int64_t last) {
        const int64_t images = last - first, rows = images * pixels;
        // g = grad_output * activation'(result) for this block's images, (n, oh, ow, co).
        const int64_t block_offset = first * out_pixels * C, block_size = images * out_pixels * C;
        const scalar_t* g_data = go.const_data_ptr<scalar_t>() + block_offset;
        std::vector<scalar_t> g_buffer;
        if (activation != Activation::kNone) {
          g_buffer.resize(block_size);
          map_contiguous<scalar_t, 2>(
              block_size, {g_data, res.const_data_ptr<scalar_t>() + block_offset},
              g_buffer.data(),
              [&](const V* v) { return v[0] * activation_grad(activation, v[1], slope); });
          g_data = g_buffer.data();
        }
        if (want_bias) {
          // Per output row in scalar_t, then into double: accurate for any batch.
          double* sums = bias_partials.data() + lane * C;
          std::vector<scalar_t> row_sums(C);
          for (int64_t r = 0; r < images * g.out_h; ++r) {
            std::fill(row_sums.begin(), row_sums.end(), scalar_t(0));
            for (int64_t ow = 0; ow < g.out_w; ++ow) {
              const scalar_t* pixel = g_data + (r * g.out_w + ow) * C;
              for (int64_t c = 0; c < C; ++c) row_sums[c] += pixel[c];
            }
            for (int64_t c = 0; c < C; ++c) sums[c] += row_sums[c];
          }
        }
        if (!want_input && !want_weight) return;

        // G_col[(n, ih, iw), (group, kh, kw, co)]: the adjoint of the forward's epilogue.
        const at::Tensor g_col = at::empty({rows, z_row}, input.options());
        scalar_t* col = g_col.mutable_data_ptr<scalar_t>();
        for (int64_t n = 0; n < images; ++n) {
          for (int64_t ih = 0; ih < g.in_h; ++ih) {
            for (int64_t iw = 0; iw < g.in_w; ++iw) {
              scalar_t* col_row = col + ((n * g.in_h + ih) * g.in_w + iw) * z_row;
              for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
                const int64_t oh = taps_h.output_of_input[ih * g.kernel_h + kh];
                for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
                  const int64_t ow = taps_w.output_of_input[iw * g.kernel_w + kw];
                  const int64_t tap = kh * g.kernel_w + kw;
                  for (int64_t group = 0; group < g.groups; ++group) {
                    scalar_t* dst = col_row + (group * T + tap) * Cg;
                    if (oh < 0 || ow < 0) {
                      std::fill_n(dst, Cg, scalar_t(0));
                    } else {
                      std::copy_n(g_data + ((n * g.out_h + oh) * g.out_w + ow) * C + group * Cg,
                                  Cg, dst);
                    }
                  }
                }
              }
            }
          }
        }
        for (int64_t group = 0; group < g.groups; ++group) {
          const at::Tensor g_group = group_columns(g_col, group, T * Cg);
          if (want_input) {
            at::Tensor grad_rows = group_columns(
                grad_input_nhwc.view({-1, g.in_channels}).narrow(0, first * pixels, rows), group,
                Cin_g);
            at::mm_out(grad_rows, g_group, packed[group].t());
          }
          if (want_weight) {
            const at::Tensor x_group =
                group_columns(x_rows.narrow(0, first * pixels, rows), group, Cin_g);
            weight_partials[lane][group].addmm_(x_group.t(), g_group);
          }
        }
      });
    });
  }

  // Outputs not asked for are distinct empty tensors (outputs must not alias).
  at::Tensor grad_input = input.new_empty({0}), grad_weight = input.new_empty({0}),
             grad_bias = input.new_empty({0});
  if (want_input) grad_input = from_nhwc(grad_input_nhwc, channels_last);
  if (want_weight) {
    at::Tensor sum = at::zeros({g.groups, Cin_g, T * Cg}, input.options());
    for (const auto& partial : weight_partials) sum.add_(partial);
    grad_weight = unpack_weight(sum, g);
  }
  if (want_bias) {
    std::vector<double> sums(C, 0.0);
    for (int64_t lane = 0; lane < plan.lanes; ++lane) {
      for (int64_t c = 0; c < C; ++c) sums[c] += bias_partials[lane * C + c];
    }
    grad_bias = at::tensor(sums, input.options().dtype(at::kDouble)).to(input.scalar_type());
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
