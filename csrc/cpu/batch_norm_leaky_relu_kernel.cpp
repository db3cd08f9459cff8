// Fused BatchNorm + LeakyReLU on the CPU: two passes over the data for each of the forward, the
// backward and the double backward (one reduction, one element-wise map), channels-first and
// channels-last alike.
#include <torch/library.h>

#include "../batch_norm_leaky_relu.h"
#include "per_channel.h"

namespace fastgan {
namespace cpu {
namespace {

using namespace fastgan::bn_lrelu;

// Per-channel values converted to scalar_t arrays for the vectorized passes.
template <typename scalar_t>
struct ChannelArrays {
  std::vector<std::vector<scalar_t>> arrays;
  ChannelArrays(int count, int64_t channels) : arrays(count, std::vector<scalar_t>(channels)) {}
  scalar_t& operator()(int i, int64_t c) { return arrays[i][c]; }
  template <int P>
  std::array<const scalar_t*, P> pointers() const {
    std::array<const scalar_t*, P> result;
    for (int p = 0; p < P; ++p) result[p] = arrays[p].data();
    return result;
  }
};

// Reads a per-channel tensor as doubles; an undefined one reads as `fallback`.
std::vector<double> channel_values(const at::Tensor& t, int64_t channels, double fallback) {
  if (!t.defined()) return std::vector<double>(channels, fallback);
  const at::Tensor d = t.to(at::kDouble).contiguous();
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + channels);
}

at::Tensor channel_tensor(const std::vector<double>& values, const at::Tensor& like) {
  return at::tensor(values, like.options().dtype(at::kDouble)).to(like.scalar_type());
}

void check_cpu(const char* op, const at::Tensor& input) {
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble, op,
              ": the CPU kernels support float32 and float64 input, got ", input.scalar_type());
}

// Per-channel state every pass needs: layout, statistics, the folded affine transform.
struct Channels {
  ChannelLayout layout;
  std::vector<double> mean, invstd, weight, scale, shift;
  double count;
  Channels(const at::Tensor& input, const at::Tensor& mean_t, const at::Tensor& var_t,
           const at::Tensor& weight_t, const at::Tensor& bias_t, double eps)
      : layout(choose_layout(input)) {
    const int64_t C = layout.channels;
    mean = channel_values(mean_t, C, 0.0);
    const auto var = channel_values(var_t, C, 1.0);
    weight = channel_values(weight_t, C, 1.0);
    const auto bias = channel_values(bias_t, C, 0.0);
    invstd.resize(C);
    scale.resize(C);
    shift.resize(C);
    for (int64_t c = 0; c < C; ++c) {
      invstd[c] = inverse_std(var[c], eps);
      const auto a = affine(mean[c], invstd[c], weight[c], bias[c]);
      scale[c] = a.scale;
      shift[c] = a.shift;
    }
    count = static_cast<double>(layout.batch * layout.spatial);
  }
};

// g = grad_out * leaky_relu'(x * scale + shift), vectorized.
template <typename scalar_t>
inline Vec<scalar_t> activation_gradient(const Vec<scalar_t>& x, const Vec<scalar_t>& grad_out,
                                         const Vec<scalar_t>& scale, const Vec<scalar_t>& shift,
                                         const Vec<scalar_t>& slope) {
  using V = Vec<scalar_t>;
  const V y = at::vec::fmadd(x, scale, shift);
  return grad_out * V::blendv(slope, V(scalar_t(1)), y > V(scalar_t(0)));
}

std::tuple<at::Tensor, at::Tensor> batch_norm_stats(const at::Tensor& input) {
  constexpr const char* op = "fastgan::batch_norm_stats";
  TORCH_CHECK(input.dim() >= 2, op, ": input must have shape (N, C, *), got ", input.sizes());
  check_cpu(op, input);
  const auto layout = choose_layout(input);
  const at::Tensor x = to_layout(input, layout);
  const int64_t C = layout.channels;
  std::vector<double> mean(C, 0.0), var(C, 0.0);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_stats", [&] {
    const scalar_t* data = x.const_data_ptr<scalar_t>();
    if (layout.batch * layout.spatial == 0) return;
    // Shift each channel by its first element (see moments_from_shifted_sums).
    std::vector<scalar_t> shift(C);
    for (int64_t c = 0; c < C; ++c) shift[c] = data[layout.channels_last ? c : c * layout.spatial];
    std::vector<double> sums(2 * C);
    reduce_per_channel<scalar_t, 2, 1, 1>(
        layout, {data}, {shift.data()}, sums.data(),
        [](Vec<scalar_t>* acc, const Vec<scalar_t>* in, const Vec<scalar_t>* coef) {
          const auto d = in[0] - coef[0];
          acc[0] = acc[0] + d;
          acc[1] = at::vec::fmadd(d, d, acc[1]);
        });
    const double count = static_cast<double>(layout.batch * layout.spatial);
    for (int64_t c = 0; c < C; ++c) {
      const auto m = moments_from_shifted_sums<double>(count, shift[c], sums[c], sums[C + c]);
      mean[c] = m.mean;
      var[c] = m.var;
    }
  });
  return {channel_tensor(mean, input), channel_tensor(var, input)};
}

at::Tensor batch_norm_leaky_relu(const at::Tensor& input, const at::Tensor& mean,
                                 const at::Tensor& var, const std::optional<at::Tensor>& weight,
                                 const std::optional<at::Tensor>& bias, bool training, double eps,
                                 double negative_slope) {
  constexpr const char* op = "fastgan::batch_norm_leaky_relu";
  const at::Tensor w = weight.value_or(at::Tensor()), b = bias.value_or(at::Tensor());
  check_inputs(op, input, mean, var, w, b, input.scalar_type(), input.scalar_type(), eps);
  check_cpu(op, input);
  const Channels ch(input, mean, var, w, b, eps);
  const at::Tensor x = to_layout(input, ch.layout);
  at::Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_leaky_relu", [&] {
    using V = Vec<scalar_t>;
    ChannelArrays<scalar_t> coef(2, ch.layout.channels);
    for (int64_t c = 0; c < ch.layout.channels; ++c) {
      coef(0, c) = static_cast<scalar_t>(ch.scale[c]);
      coef(1, c) = static_cast<scalar_t>(ch.shift[c]);
    }
    const V slope(static_cast<scalar_t>(negative_slope));
    map_per_channel<scalar_t, 1, 2, 1>(
        ch.layout, {x.const_data_ptr<scalar_t>()}, coef.template pointers<2>(),
        {out.mutable_data_ptr<scalar_t>()}, [&](const V* in, const V* k, V* result) {
          const V y = at::vec::fmadd(in[0], k[0], k[1]);
          result[0] = V::blendv(y * slope, y, y > V(scalar_t(0)));
        });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_leaky_relu_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean,
    const at::Tensor& var, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, bool training, double eps, double negative_slope,
    std::array<bool, 3> output_mask) {
  constexpr const char* op = "fastgan::batch_norm_leaky_relu_backward";
  const at::Tensor w = weight.value_or(at::Tensor()), b = bias.value_or(at::Tensor());
  check_inputs(op, input, mean, var, w, b, input.scalar_type(), input.scalar_type(), eps);
  check_like_input(op, "grad_output", grad_output, input);
  check_cpu(op, input);
  const Channels ch(input, mean, var, w, b, eps);
  const int64_t C = ch.layout.channels;
  const at::Tensor x = to_layout(input, ch.layout);
  const at::Tensor go = to_layout(grad_output, ch.layout);
  const bool need_sums = output_mask[1] || output_mask[2] || (training && output_mask[0]);
  at::Tensor grad_input, grad_weight, grad_bias;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_leaky_relu_backward", [&] {
    using V = Vec<scalar_t>;
    const V slope(static_cast<scalar_t>(negative_slope));
    ChannelArrays<scalar_t> coef(6, C);  // scale, shift, mean, then grad_input's coefficients
    for (int64_t c = 0; c < C; ++c) {
      coef(0, c) = static_cast<scalar_t>(ch.scale[c]);
      coef(1, c) = static_cast<scalar_t>(ch.shift[c]);
      coef(2, c) = static_cast<scalar_t>(ch.mean[c]);
    }
    const std::array<const scalar_t*, 2> data{x.const_data_ptr<scalar_t>(),
                                               go.const_data_ptr<scalar_t>()};
    // Pass 1: sum(g) and sum(g * (x - mean)).
    std::vector<double> sums(2 * C, 0.0);
    if (need_sums) {
      reduce_per_channel<scalar_t, 2, 2, 3>(
          ch.layout, data, coef.template pointers<3>(), sums.data(),
          [&](V* acc, const V* in, const V* k) {
            const V g = activation_gradient(in[0], in[1], k[0], k[1], slope);
            acc[0] = acc[0] + g;
            acc[1] = at::vec::fmadd(g, in[0] - k[2], acc[1]);
          });
    }
    // Pass 2: grad_input = g * k_grad + x * k_input + k_constant.
    if (output_mask[0]) {
      for (int64_t c = 0; c < C; ++c) {
        const auto k = backward_coefficients<double>(training, ch.count, ch.mean[c], ch.invstd[c],
                                                     ch.weight[c], sums[c], sums[C + c]);
        coef(3, c) = static_cast<scalar_t>(k.grad);
        coef(4, c) = static_cast<scalar_t>(k.input);
        coef(5, c) = static_cast<scalar_t>(k.constant);
      }
      grad_input = at::empty_like(x);
      map_per_channel<scalar_t, 2, 6, 1>(
          ch.layout, data, coef.template pointers<6>(), {grad_input.mutable_data_ptr<scalar_t>()},
          [&](const V* in, const V* k, V* result) {
            const V g = activation_gradient(in[0], in[1], k[0], k[1], slope);
            result[0] = at::vec::fmadd(g, k[3], at::vec::fmadd(in[0], k[4], k[5]));
          });
    }
    std::vector<double> gw(C), gb(sums.begin(), sums.begin() + C);
    for (int64_t c = 0; c < C; ++c) gw[c] = ch.invstd[c] * sums[C + c];
    if (output_mask[1] && w.defined()) grad_weight = channel_tensor(gw, w);
    if (output_mask[2] && b.defined()) grad_bias = channel_tensor(gb, b);
  });
  // Outputs not asked for are returned empty.
  auto or_empty = [&](const at::Tensor& t) { return t.defined() ? t : input.new_empty({0}); };
  return {or_empty(grad_input), or_empty(grad_weight), or_empty(grad_bias)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_leaky_relu_double_backward(
    const std::optional<at::Tensor>& grad_grad_input,
    const std::optional<at::Tensor>& grad_grad_weight,
    const std::optional<at::Tensor>& grad_grad_bias, const at::Tensor& grad_output,
    const at::Tensor& input, const at::Tensor& mean, const at::Tensor& var,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, bool training,
    double eps, double negative_slope, std::array<bool, 3> output_mask) {
  constexpr const char* op = "fastgan::batch_norm_leaky_relu_double_backward";
  const at::Tensor w = weight.value_or(at::Tensor()), b = bias.value_or(at::Tensor());
  check_inputs(op, input, mean, var, w, b, input.scalar_type(), input.scalar_type(), eps);
  check_like_input(op, "grad_output", grad_output, input);
  const at::Tensor ggi_in = grad_grad_input.value_or(at::Tensor());
  if (ggi_in.defined()) check_like_input(op, "grad_grad_input", ggi_in, input);
  const at::Tensor ggw_in = grad_grad_weight.value_or(at::Tensor());
  const at::Tensor ggb_in = grad_grad_bias.value_or(at::Tensor());
  check_channel_tensor(op, "grad_grad_weight", ggw_in, input, input.scalar_type());
  check_channel_tensor(op, "grad_grad_bias", ggb_in, input, input.scalar_type());
  check_cpu(op, input);

  const Channels ch(input, mean, var, w, b, eps);
  const int64_t C = ch.layout.channels;
  const at::Tensor x = to_layout(input, ch.layout);
  const at::Tensor go = to_layout(grad_output, ch.layout);
  const at::Tensor ggi = ggi_in.defined() ? to_layout(ggi_in, ch.layout) : at::zeros_like(x);
  const auto ggw = channel_values(ggw_in, C, 0.0), ggb = channel_values(ggb_in, C, 0.0);
  at::Tensor grad_grad_output = at::empty_like(x), grad_input = at::empty_like(x);
  std::vector<double> grad_weight(C);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_norm_leaky_relu_double_backward", [&] {
    using V = Vec<scalar_t>;
    const V slope(static_cast<scalar_t>(negative_slope));
    ChannelArrays<scalar_t> coef(10, C);  // scale, shift, mean, then the seven coefficients
    for (int64_t c = 0; c < C; ++c) {
      coef(0, c) = static_cast<scalar_t>(ch.scale[c]);
      coef(1, c) = static_cast<scalar_t>(ch.shift[c]);
      coef(2, c) = static_cast<scalar_t>(ch.mean[c]);
    }
    const std::array<const scalar_t*, 3> data{x.const_data_ptr<scalar_t>(),
                                               go.const_data_ptr<scalar_t>(),
                                               ggi.const_data_ptr<scalar_t>()};
    // Pass 1: the five sums of DoubleBackwardSums.
    std::vector<double> sums(5 * C, 0.0);
    reduce_per_channel<scalar_t, 5, 3, 3>(
        ch.layout, data, coef.template pointers<3>(), sums.data(),
        [&](V* acc, const V* in, const V* k) {
          const V g = activation_gradient(in[0], in[1], k[0], k[1], slope);
          const V xc = in[0] - k[2];
          acc[0] = acc[0] + g;
          acc[1] = at::vec::fmadd(g, xc, acc[1]);
          acc[2] = acc[2] + in[2];
          acc[3] = at::vec::fmadd(in[2], xc, acc[3]);
          acc[4] = at::vec::fmadd(in[2], g, acc[4]);
        });
    for (int64_t c = 0; c < C; ++c) {
      const DoubleBackwardSums<double> s{sums[c], sums[C + c], sums[2 * C + c], sums[3 * C + c],
                                         sums[4 * C + c]};
      const auto k = double_backward_coefficients<double>(
          training, ch.count, ch.mean[c], ch.invstd[c], ch.weight[c], ggw[c], ggb[c], s);
      const double values[7] = {k.go_ggi, k.go_x, k.go_const, k.x_ggi, k.x_g, k.x_x, k.x_const};
      for (int i = 0; i < 7; ++i) coef(3 + i, c) = static_cast<scalar_t>(values[i]);
      grad_weight[c] = k.grad_weight;
    }
    // Pass 2: grad_grad_output and grad_input, both linear per channel.
    map_per_channel<scalar_t, 3, 10, 2>(
        ch.layout, data, coef.template pointers<10>(),
        {grad_grad_output.mutable_data_ptr<scalar_t>(), grad_input.mutable_data_ptr<scalar_t>()},
        [&](const V* in, const V* k, V* result) {
          const V y = at::vec::fmadd(in[0], k[0], k[1]);
          const V activation = V::blendv(slope, V(scalar_t(1)), y > V(scalar_t(0)));
          const V g = in[1] * activation;
          result[0] = activation * at::vec::fmadd(in[2], k[3], at::vec::fmadd(in[0], k[4], k[5]));
          result[1] = at::vec::fmadd(in[2], k[6], at::vec::fmadd(g, k[7],
                                                                 at::vec::fmadd(in[0], k[8], k[9])));
        });
  });
  const at::Tensor empty = input.new_empty({0});
  return {output_mask[0] ? grad_grad_output : empty, output_mask[1] ? grad_input : empty,
          output_mask[2] && w.defined() ? channel_tensor(grad_weight, w) : empty};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("batch_norm_stats", &batch_norm_stats);
  m.impl("batch_norm_leaky_relu", &batch_norm_leaky_relu);
  m.impl("batch_norm_leaky_relu_backward", &batch_norm_leaky_relu_backward);
  m.impl("batch_norm_leaky_relu_double_backward", &batch_norm_leaky_relu_double_backward);
}

}  // namespace cpu
}  // namespace fastgan
