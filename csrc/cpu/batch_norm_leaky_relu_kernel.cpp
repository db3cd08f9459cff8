// Fused BatchNorm + LeakyReLU on the CPU. Each op is a reduction (statistics, or the backward's
// sums) and then one element-wise pass that applies the normalization, the activation and their
// derivatives at once (per_channel.h).
#include <torch/library.h>

#include <vector>

#include "../batch_norm_leaky_relu.h"
#include "per_channel.h"

namespace fastgan {
namespace cpu {
namespace {

using namespace fastgan::bn_lrelu;

// bfloat16 and float16 input computes in float32 (its statistics, weight and bias are float32).
void check_cpu(const char* op, const at::Tensor& input) {
  const auto dtype = input.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 ||
                  dtype == at::kHalf,
              op, ": the CPU kernels support float32, float64, bfloat16 and float16 input, got ",
              dtype);
}

#define FASTGAN_DISPATCH_CPU_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, __VA_ARGS__)

// Reads a per-channel tensor as doubles; an undefined one reads as `fallback`. Element by element
// rather than through tensor ops: these are small, and each op costs microseconds.
std::vector<double> channel_values(const at::Tensor& t, int64_t channels, double fallback) {
  if (!t.defined()) return std::vector<double>(channels, fallback);
  std::vector<double> values(channels);
  FASTGAN_DISPATCH_CPU_TYPES(t.scalar_type(), "channel_values", [&] {
    const scalar_t* data = t.const_data_ptr<scalar_t>();
    for (int64_t c = 0; c < channels; ++c) values[c] = static_cast<double>(data[c * t.stride(0)]);
  });
  return values;
}

// Per-channel values for each statistics channel of `layout` (ChannelLayout::statistics): repeated
// for every sample when the statistics are per sample.
std::vector<double> per_statistic(const std::vector<double>& values, const ChannelLayout& layout) {
  if (!layout.instance) return values;
  std::vector<double> repeated;
  repeated.reserve(layout.statistics());
  for (int64_t n = 0; n < layout.batch; ++n) {
    repeated.insert(repeated.end(), values.begin(), values.end());
  }
  return repeated;
}

// Per-statistic values summed per channel, over the samples when the statistics are per sample:
// the gradients of the per-channel weight and bias.
std::vector<double> per_channel_sums(const std::vector<double>& values,
                                     const ChannelLayout& layout) {
  if (!layout.instance) return values;
  std::vector<double> sums(layout.channels, 0.0);
  for (size_t j = 0; j < values.size(); ++j) sums[j % layout.channels] += values[j];
  return sums;
}

// running += momentum * (factor * batch - running), in running's own dtype: torch's update of the
// running statistics, done here because as tensor ops it cost more than a small layer's kernels.
void update_running(const at::Tensor& running, const std::vector<double>& batch, double factor,
                    double momentum) {
  FASTGAN_DISPATCH_CPU_TYPES(running.scalar_type(), "update_running", [&] {
    scalar_t* data = running.mutable_data_ptr<scalar_t>();
    const int64_t stride = running.stride(0);
    for (size_t c = 0; c < batch.size(); ++c) {
      const double value = static_cast<double>(data[c * stride]);
      data[c * stride] = static_cast<scalar_t>(value + momentum * (factor * batch[c] - value));
    }
  });
}

at::Tensor channel_tensor(const std::vector<double>& values, const at::TensorOptions& options) {
  at::Tensor t = at::empty({static_cast<int64_t>(values.size())}, options);
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "channel_tensor", [&] {
    scalar_t* data = t.mutable_data_ptr<scalar_t>();
    for (size_t c = 0; c < values.size(); ++c) data[c] = static_cast<scalar_t>(values[c]);
  });
  return t;
}

// Per-channel arrays of the compute type T that the vectorized passes read (and `finish`
// callbacks write).
template <typename T, int P>
struct Coefficients {
  std::array<std::vector<T>, P> values;
  explicit Coefficients(int64_t channels) { values.fill(std::vector<T>(channels)); }
  std::array<T*, P> pointers() {
    std::array<T*, P> result;
    for (int p = 0; p < P; ++p) result[p] = values[p].data();
    return result;
  }
};

// The slots of the coefficient arrays, named as the CUDA kernel names the same quantities. Every
// pass computes y = (x - mean) * scale + bias, with mean as rounded to the compute type and bias the
// affine shift centered on it (see ChannelParams).
// The forward's: the shift of the statistics' sums (see moments_from_shifted_sums), then y's.
struct ForwardSlots {
  enum : int { kShift, kScale, kBias, kMean, kCount };
};
// The backward passes': y's first.
struct AffineSlots {
  enum : int { kScale, kBias, kMean, kCount };
};
// The backward's: grad_input = g * grad + (x - mean) * input + constant.
struct BackwardSlots : AffineSlots {
  enum : int { kGrad = AffineSlots::kCount, kInput, kConstant, kCount };
};
// The double backward's: grad_grad_output = leaky_relu'(y) * (ggi * go_ggi + xc * go_x + go_const)
// and grad_input = ggi * x_ggi + g * x_g + xc * x_x + x_const, xc = x - mean.
struct DoubleBackwardSlots : AffineSlots {
  enum : int { kGoGgi = AffineSlots::kCount, kGoX, kGoConst, kXGgi, kXG, kXX, kXConst, kCount };
};

// What every pass needs per channel: the statistics, weight, bias and the affine transform
// y = (x - mean) * scale + shift, centered so that float32 rounds the small x - mean, not the
// large x * scale (exact for constant channels, accurate when |mean| >> std).
struct ChannelParams {
  std::vector<double> mean, invstd, weight, scale, shift;
  // Per statistics channel of `layout`: mean_t and var_t hold one value each, weight_t and
  // bias_t one per channel.
  ChannelParams(const ChannelLayout& layout, const at::Tensor& mean_t, const at::Tensor& var_t,
                const at::Tensor& weight_t, const at::Tensor& bias_t, double eps)
      : mean(channel_values(mean_t, layout.statistics(), 0.0)),
        invstd(layout.statistics()),
        weight(per_statistic(channel_values(weight_t, layout.channels, 1.0), layout)),
        scale(layout.statistics()),
        shift(layout.statistics()) {
    const auto var = channel_values(var_t, layout.statistics(), 1.0);
    const auto bias = per_statistic(channel_values(bias_t, layout.channels, 0.0), layout);
    for (int64_t c = 0; c < layout.statistics(); ++c) {
      invstd[c] = inverse_std(var[c], eps);
      const auto a = affine(mean[c], invstd[c], weight[c], bias[c]);
      scale[c] = a.scale;
      shift[c] = a.shift;
    }
  }
  // The AffineSlots, as the backward passes read them: the shift goes with x minus the mean as
  // rounded to T.
  template <typename T, int P>
  void store_affine(Coefficients<T, P>& coef) const {
    for (size_t c = 0; c < mean.size(); ++c) {
      const auto center = static_cast<T>(mean[c]);
      coef.values[AffineSlots::kScale][c] = static_cast<T>(scale[c]);
      const double centered_shift = shift[c] + static_cast<double>(center) * scale[c];
      coef.values[AffineSlots::kBias][c] = static_cast<T>(centered_shift);
      coef.values[AffineSlots::kMean][c] = center;
    }
  }
};

// What both backward ops read: the input and grad_output in the input's layout, and the
// per-channel parameters.
struct SavedOperands {
  ChannelLayout layout;
  at::Tensor x, go;
  ChannelParams ch;
  SavedOperands(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean,
                const at::Tensor& var, const at::Tensor& weight, const at::Tensor& bias,
                double eps, bool instance)
      : layout(choose_layout(input, instance)),
        x(to_layout(input, layout)),
        go(to_layout(grad_output, layout)),
        ch(layout, mean, var, weight, bias, eps) {}
};

// leaky_relu'(xc * scale + bias) for xc = x - mean, vectorized (the header's leaky_relu_grad).
template <typename V>
inline V activation_slope(const V& xc, const V& scale, const V& bias, const V& slope) {
  using T = typename V::value_type;
  const V y = at::vec::fmadd(xc, scale, bias);
  return V::blendv(slope, V(T(1)), y > V(T(0)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_leaky_relu(
    const at::Tensor& input, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, bool training, double momentum, double eps,
    double negative_slope, bool instance) {
  constexpr const char* op = "fastgan::batch_norm_leaky_relu";
  const at::Tensor w = weight.value_or(at::Tensor()), b = bias.value_or(at::Tensor());
  const at::Tensor m = running_mean.value_or(at::Tensor()), v = running_var.value_or(at::Tensor());
  check_cpu(op, input);
  const auto opmath = at::toOpMathType(input.scalar_type());
  check_forward_inputs(op, input, m, v, w, b, training, momentum, eps, instance);
  const auto layout = choose_layout(input, instance);
  const int64_t C = layout.statistics();
  const at::Tensor x = to_layout(input, layout);
  at::Tensor out = at::empty_like(x);
  const double count = static_cast<double>(layout.per_statistic());
  const auto weights = per_statistic(channel_values(w, layout.channels, 1.0), layout);
  const auto biases = per_statistic(channel_values(b, layout.channels, 0.0), layout);
  // Training: the batch statistics; evaluation: the running ones.
  std::vector<double> batch_mean(C, 0.0), batch_var(C, 1.0);
  if (!training) {
    batch_mean = channel_values(m, C, 0.0);
    batch_var = channel_values(v, C, 1.0);
  }
  FASTGAN_DISPATCH_CPU_TYPES(x.scalar_type(), "batch_norm_leaky_relu", [&] {
    using V = Vec<scalar_t>;
    using T = opmath_t<scalar_t>;
    using Slot = ForwardSlots;
    const scalar_t* data = x.const_data_ptr<scalar_t>();
    Coefficients<T, Slot::kCount> coef(C);
    if (training && count > 0) {
      // Sums are of x minus the channel's first element (see moments_from_shifted_sums); with
      // instance statistics, statistics channel c is channel c % C of sample c / C.
      const int64_t channels = layout.channels, sample = layout.spatial * channels;
      for (int64_t c = 0; c < C; ++c) {
        coef.values[Slot::kShift][c] = static_cast<T>(
            data[layout.stored_channels_last ? c / channels * sample + c % channels
                                             : c * layout.spatial]);
      }
    }
    auto set_affine = [&](int64_t c) {
      const auto a = affine(batch_mean[c], inverse_std(batch_var[c], eps), weights[c], biases[c]);
      const auto center = static_cast<T>(batch_mean[c]);
      coef.values[Slot::kScale][c] = static_cast<T>(a.scale);
      coef.values[Slot::kBias][c] =
          static_cast<T>(a.shift + static_cast<double>(center) * a.scale);
      coef.values[Slot::kMean][c] = center;
    };
    const V slope(static_cast<T>(negative_slope));
    auto apply = [&](const V* in, const V* k, V* result) {
      const V y = at::vec::fmadd(in[0] - k[Slot::kMean], k[Slot::kScale], k[Slot::kBias]);
      result[0] = V::blendv(y * slope, y, y > V(T(0)));
    };
    if (!training) {
      for (int64_t c = 0; c < C; ++c) set_affine(c);
      reduce_then_map<scalar_t, 0, 1, Slot::kCount, 1>(
          layout, {data}, coef.pointers(), {out.mutable_data_ptr<scalar_t>()},
          [](V*, const V*, const V*) {}, [](int64_t, const double*) {}, apply);
      return;
    }
    reduce_then_map<scalar_t, 2, 1, Slot::kCount, 1>(
        layout, {data}, coef.pointers(), {out.mutable_data_ptr<scalar_t>()},
        [](V* acc, const V* in, const V* k) {
          const V d = in[0] - k[Slot::kShift];
          acc[0] = acc[0] + d;
          acc[1] = at::vec::fmadd(d, d, acc[1]);
        },
        [&](int64_t c, const double* sums) {
          const double shift = coef.values[Slot::kShift][c];
          const auto moments = moments_from_shifted_sums<double>(count, shift, sums[0], sums[1]);
          batch_mean[c] = moments.mean;
          batch_var[c] = moments.var;
          set_affine(c);
          // The shifted sums cancel when the shift (the first element, an outlier maybe) lies
          // many standard deviations from the mean: then sum again around the mean.
          if (shifted_sums_accurate(moments, shift)) return true;
          coef.values[Slot::kShift][c] = static_cast<T>(moments.mean);
          return false;
        },
        apply);
  });
  const auto stats_options = input.options().dtype(opmath);
  if (!training) return {out, at::empty({0}, stats_options), at::empty({0}, stats_options)};
  if (m.defined() && count > 0) {
    update_running(m, batch_mean, 1.0, momentum);
    update_running(v, batch_var, count / (count - 1), momentum);
  }
  return {out, channel_tensor(batch_mean, stats_options), channel_tensor(batch_var, stats_options)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_leaky_relu_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean,
    const at::Tensor& var, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, bool training, double eps, double negative_slope,
    std::array<bool, 3> output_mask, bool instance) {
  constexpr const char* op = "fastgan::batch_norm_leaky_relu_backward";
  const at::Tensor w = weight.value_or(at::Tensor()), b = bias.value_or(at::Tensor());
  check_cpu(op, input);
  check_backward_inputs(op, grad_output, input, mean, var, w, b, eps, instance);
  const SavedOperands saved(grad_output, input, mean, var, w, b, eps, instance);
  const ChannelLayout& layout = saved.layout;
  const at::Tensor &x = saved.x, &go = saved.go;
  const ChannelParams& ch = saved.ch;
  const int64_t C = layout.statistics();
  const double count = static_cast<double>(layout.per_statistic());
  at::Tensor grad_input = output_mask[0] ? at::empty_like(x) : at::Tensor();
  std::vector<double> grad_weight(C, 0.0), grad_bias(C, 0.0);
  const bool need_sums = output_mask[1] || output_mask[2] || (training && output_mask[0]);
  FASTGAN_DISPATCH_CPU_TYPES(x.scalar_type(), "batch_norm_leaky_relu_backward", [&] {
    using V = Vec<scalar_t>;
    using T = opmath_t<scalar_t>;
    using Slot = BackwardSlots;
    constexpr int P = Slot::kCount;
    const V slope(static_cast<T>(negative_slope));
    Coefficients<T, P> coef(C);
    ch.store_affine(coef);
    auto set_coefficients = [&](int64_t c, double sum_g, double sum_g_xc) {
      grad_weight[c] = ch.invstd[c] * sum_g_xc;
      grad_bias[c] = sum_g;
      const auto k = backward_coefficients<double>(training, count, ch.mean[c], ch.invstd[c],
                                                   ch.weight[c], sum_g, sum_g_xc);
      coef.values[Slot::kGrad][c] = static_cast<T>(k.grad);
      coef.values[Slot::kInput][c] = static_cast<T>(k.input);
      // grad_input's x * input + constant, rewritten for x - mean
      coef.values[Slot::kConstant][c] =
          static_cast<T>(k.constant + coef.values[Slot::kMean][c] * k.input);
    };
    auto finish = [&](int64_t c, const double* sums) { set_coefficients(c, sums[0], sums[1]); };
    // Sums of g and g * (x - mean), g = grad_out * leaky_relu'(y).
    auto accumulate = [&](V* acc, const V* in, const V* k) {
      const V xc = in[0] - k[Slot::kMean];
      const V g = in[1] * activation_slope(xc, k[Slot::kScale], k[Slot::kBias], slope);
      acc[0] = acc[0] + g;
      acc[1] = at::vec::fmadd(g, xc, acc[1]);
    };
    auto apply = [&](const V* in, const V* k, V* result) {
      const V xc = in[0] - k[Slot::kMean];
      const V g = in[1] * activation_slope(xc, k[Slot::kScale], k[Slot::kBias], slope);
      result[0] = at::vec::fmadd(g, k[Slot::kGrad],
                                 at::vec::fmadd(xc, k[Slot::kInput], k[Slot::kConstant]));
    };
    const std::array<const scalar_t*, 2> data{x.const_data_ptr<scalar_t>(),
                                               go.const_data_ptr<scalar_t>()};
    if (need_sums && output_mask[0]) {
      reduce_then_map<scalar_t, 2, 2, P, 1>(layout, data, coef.pointers(),
                                            {grad_input.mutable_data_ptr<scalar_t>()}, accumulate,
                                            finish, apply);
    } else if (need_sums) {
      reduce_then_map<scalar_t, 2, 2, P, 0>(layout, data, coef.pointers(), {}, accumulate, finish,
                                            apply);
    } else if (output_mask[0]) {  // evaluation, grad_input only: no sums needed
      reduce_then_map<scalar_t, 0, 2, P, 1>(
          layout, data, coef.pointers(), {grad_input.mutable_data_ptr<scalar_t>()}, accumulate,
          [&](int64_t c, const double*) { set_coefficients(c, 0.0, 0.0); }, apply);
    }
  });
  return {output_mask[0] ? grad_input : input.new_empty({0}),
          output_mask[1] && w.defined()
              ? channel_tensor(per_channel_sums(grad_weight, layout), w.options())
              : input.new_empty({0}),
          output_mask[2] && b.defined()
              ? channel_tensor(per_channel_sums(grad_bias, layout), b.options())
              : input.new_empty({0})};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_leaky_relu_double_backward(
    const std::optional<at::Tensor>& grad_grad_input,
    const std::optional<at::Tensor>& grad_grad_weight,
    const std::optional<at::Tensor>& grad_grad_bias, const at::Tensor& grad_output,
    const at::Tensor& input, const at::Tensor& mean, const at::Tensor& var,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, bool training,
    double eps, double negative_slope, std::array<bool, 3> output_mask, bool instance) {
  constexpr const char* op = "fastgan::batch_norm_leaky_relu_double_backward";
  const at::Tensor w = weight.value_or(at::Tensor()), b = bias.value_or(at::Tensor());
  check_cpu(op, input);
  const at::Tensor ggi_in = grad_grad_input.value_or(at::Tensor());
  const at::Tensor ggw_in = grad_grad_weight.value_or(at::Tensor());
  const at::Tensor ggb_in = grad_grad_bias.value_or(at::Tensor());
  check_double_backward_inputs(op, ggi_in, ggw_in, ggb_in, grad_output, input, mean, var, w, b,
                               eps, instance);
  const SavedOperands saved(grad_output, input, mean, var, w, b, eps, instance);
  const ChannelLayout& layout = saved.layout;
  const at::Tensor &x = saved.x, &go = saved.go;
  const ChannelParams& ch = saved.ch;
  const int64_t C = layout.statistics();
  const double count = static_cast<double>(layout.per_statistic());
  const at::Tensor ggi = ggi_in.defined() ? to_layout(ggi_in, layout) : at::zeros_like(x);
  const auto ggw = per_statistic(channel_values(ggw_in, layout.channels, 0.0), layout);
  const auto ggb = per_statistic(channel_values(ggb_in, layout.channels, 0.0), layout);
  // Only the outputs asked for are computed: R1 with a constant upstream gradient needs no
  // grad_grad_output, which saves a write of the input's size.
  at::Tensor grad_grad_output = output_mask[0] ? at::empty_like(x) : at::Tensor();
  at::Tensor grad_input = output_mask[1] ? at::empty_like(x) : at::Tensor();
  std::vector<double> grad_weight(C);
  FASTGAN_DISPATCH_CPU_TYPES(x.scalar_type(), "batch_norm_leaky_relu_double_backward", [&] {
    using V = Vec<scalar_t>;
    using T = opmath_t<scalar_t>;
    using Slot = DoubleBackwardSlots;
    const V slope(static_cast<T>(negative_slope));
    Coefficients<T, Slot::kCount> coef(C);
    ch.store_affine(coef);
    // The five sums of DoubleBackwardSums.
    auto accumulate = [&](V* acc, const V* in, const V* k) {
      const V xc = in[0] - k[Slot::kMean];
      const V g = in[1] * activation_slope(xc, k[Slot::kScale], k[Slot::kBias], slope);
      acc[0] = acc[0] + g;
      acc[1] = at::vec::fmadd(g, xc, acc[1]);
      acc[2] = acc[2] + in[2];
      acc[3] = at::vec::fmadd(in[2], xc, acc[3]);
      acc[4] = at::vec::fmadd(in[2], g, acc[4]);
    };
    auto finish = [&](int64_t c, const double* sums) {
      const DoubleBackwardSums<double> s{sums[0], sums[1], sums[2], sums[3], sums[4]};
      const auto k = double_backward_coefficients<double>(training, count, ch.mean[c],
                                                          ch.invstd[c], ch.weight[c], ggw[c],
                                                          ggb[c], s);
      // The constants go with x - mean rather than x.
      const double center = coef.values[Slot::kMean][c];
      const auto set = [&](int slot, double value) { coef.values[slot][c] = static_cast<T>(value); };
      set(Slot::kGoGgi, k.go_ggi);
      set(Slot::kGoX, k.go_x);
      set(Slot::kGoConst, k.go_const + center * k.go_x);
      set(Slot::kXGgi, k.x_ggi);
      set(Slot::kXG, k.x_g);
      set(Slot::kXX, k.x_x);
      set(Slot::kXConst, k.x_const + center * k.x_x);
      grad_weight[c] = k.grad_weight;
    };
    // Both results are linear per channel: result 0 is grad_grad_output, 1 grad_input.
    auto result = [&](auto which, const V* in, const V* k, const V& xc, const V& activation) {
      if constexpr (decltype(which)::value == 0) {
        return activation * at::vec::fmadd(in[2], k[Slot::kGoGgi],
                                           at::vec::fmadd(xc, k[Slot::kGoX], k[Slot::kGoConst]));
      } else {
        return at::vec::fmadd(
            in[2], k[Slot::kXGgi],
            at::vec::fmadd(in[1] * activation, k[Slot::kXG],
                           at::vec::fmadd(xc, k[Slot::kXX], k[Slot::kXConst])));
      }
    };
    const std::array<const scalar_t*, 3> data{x.const_data_ptr<scalar_t>(),
                                               go.const_data_ptr<scalar_t>(),
                                               ggi.const_data_ptr<scalar_t>()};
    auto run = [&](auto... which) {
      const std::array<at::Tensor, 2> targets{grad_grad_output, grad_input};
      const std::array<scalar_t*, sizeof...(which)> outputs{
          targets[decltype(which)::value].template mutable_data_ptr<scalar_t>()...};
      reduce_then_map<scalar_t, 5, 3, Slot::kCount, sizeof...(which)>(
          layout, data, coef.pointers(), outputs, accumulate, finish,
          [&](const V* in, const V* k, V* out) {
            [[maybe_unused]] const V xc = in[0] - k[Slot::kMean];
            [[maybe_unused]] const V activation =
                activation_slope(xc, k[Slot::kScale], k[Slot::kBias], slope);
            [[maybe_unused]] int o = 0;
            ((out[o++] = result(which, in, k, xc, activation)), ...);
          });
    };
    constexpr std::integral_constant<int, 0> kGradGradOutput;
    constexpr std::integral_constant<int, 1> kGradInput;
    if (output_mask[0] && output_mask[1]) {
      run(kGradGradOutput, kGradInput);
    } else if (output_mask[0]) {
      run(kGradGradOutput);
    } else if (output_mask[1]) {
      run(kGradInput);
    } else {
      run();
    }
  });
  return {output_mask[0] ? grad_grad_output : input.new_empty({0}),
          output_mask[1] ? grad_input : input.new_empty({0}),
          output_mask[2] && w.defined()
              ? channel_tensor(per_channel_sums(grad_weight, layout), w.options())
              : input.new_empty({0})};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("batch_norm_leaky_relu", &batch_norm_leaky_relu);
  m.impl("batch_norm_leaky_relu_backward", &batch_norm_leaky_relu_backward);
  m.impl("batch_norm_leaky_relu_double_backward", &batch_norm_leaky_relu_double_backward);
}

}  // namespace cpu
}  // namespace fastgan
