// The single-pixel path of the CPU transposed convolution, chosen first, for one input pixel with
// no padding and no dilation (a generator's first layer, from the latent vector): every tap writes
// an output pixel of its own, so the convolution is one GEMM per group of X (N, C_in) with the
// weight as stored, (C_in, C_out/groups * kH * kW), and the product is the NCHW output itself; the
// backward is two more GEMMs. No gather, no sums, no transposes.
#include "conv_transpose2d_common.h"

namespace fastgan {
namespace cpu {
namespace conv_transpose2d_detail {
namespace {

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

}  // namespace

bool single_pixel(const Geometry& g) {
  return g.in_h == 1 && g.in_w == 1 && g.out_h == g.kernel_h && g.out_w == g.kernel_w &&
         g.padding_h == 0 && g.padding_w == 0 && g.dilation_h == 1 && g.dilation_w == 1;
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
      product.copy_(bias_per_tap.expand_as(product));
    }
    matrix_product(product, m.x, m.weight, /*accumulate=*/bias.defined());
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
      matrix_product(grad_x, m.out, m.weight.t());
    }
    if (output_mask[1]) {
      at::Tensor grad_w = single_pixel_group(g, x, grad_weight, grad, group).weight;
      matrix_product(grad_w, m.x.t(), m.out);
    }
  }
  const at::Tensor grad_bias =
      output_mask[2]
          ? grad.view({g.batch, g.out_channels, g.taps()}).sum({0, 2}, false, at::kDouble)
                .to(input.scalar_type())
          : input.new_empty({0});
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace conv_transpose2d_detail
}  // namespace cpu
}  // namespace fastgan
