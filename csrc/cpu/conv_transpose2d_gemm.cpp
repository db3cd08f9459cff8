// The general path of the CPU transposed convolution, chosen for every shape the other three paths
// do not take (see conv_transpose2d_kernel.cpp): GEMMs over the input's pixels, with no
// multiplications by the zeros a strided transposed convolution inserts.
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
// take the input's layout.
#include "conv_transpose2d_common.h"

namespace fastgan {
namespace cpu {
namespace conv_transpose2d_detail {
namespace {

// Two ways to spread the work over threads. Images of kImagePixels or more (each one a GEMM of
// useful size), where they share out evenly, run one image per task, every step of an image on
// one thread (single-threaded GEMMs inside at::parallel_for): one parallel region for the whole
// op, and an image's Z or G_col stays in cache. Smaller images run in blocks of images (of about
// kBlockEntries entries of Z or G_col), one block after another, each step on all threads (the
// GEMMs through at::mm's own threading), so that the GEMMs have many rows (grad_weight
// accumulates over them).
struct Plan {
  bool by_image;
  int64_t images_per_block;
};

Plan plan_work(const Geometry& g) {
  const int64_t pixels = g.in_h * g.in_w;
  const int64_t per_image = std::max<int64_t>(1, pixels * g.taps() * g.out_channels);
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  return {pixels >= kImagePixels && images_share_out(g.batch, threads),
          std::clamp<int64_t>(kBlockEntries / per_image, 1, std::max<int64_t>(1, g.batch))};
}

template <typename scalar_t>
void forward(const Geometry& g, const Dense& x, const at::Tensor& packed, const at::Tensor& bias,
             Activation activation, scalar_t negative_slope, const at::Tensor& out,
             bool out_channels_last) {
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
      matrix_product(z_group, group_columns(x_rows, group, g.in_per_group()), packed[group]);
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


template <typename scalar_t>
void backward(const Geometry& g, const Dense& grad_output, const Dense* result, const Dense& x,
              const at::Tensor& packed, Activation activation, scalar_t negative_slope,
              const at::Tensor& grad_input, const at::Tensor& grad_weight_packed,
              std::vector<double>* grad_bias) {
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
        matrix_product(grad_group, col_group, packed[group].t());
      }
      if (want_weight) {
        matrix_product(weight_sum[group], group_columns(x_rows, group, Cin_g).t(), col_group,
                   /*accumulate=*/true);
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

}  // namespace

void gemm_forward(const Geometry& g, const Dense& x, const at::Tensor& packed,
                  const at::Tensor& bias, Activation activation, double negative_slope,
                  const at::Tensor& out, bool out_channels_last) {
  AT_DISPATCH_FLOATING_TYPES(x.tensor.scalar_type(), "conv_transpose2d", [&] {
    forward<scalar_t>(g, x, packed, bias, activation, static_cast<scalar_t>(negative_slope), out,
                      out_channels_last);
  });
}

void gemm_backward(const Geometry& g, const Dense& grad_output, const Dense* result,
                   const Dense& x, const at::Tensor& packed, Activation activation,
                   double negative_slope, const at::Tensor& grad_input,
                   const at::Tensor& grad_weight_packed, std::vector<double>* grad_bias) {
  AT_DISPATCH_FLOATING_TYPES(x.tensor.scalar_type(), "conv_transpose2d_backward", [&] {
    backward<scalar_t>(g, grad_output, result, x, packed, activation,
                       static_cast<scalar_t>(negative_slope), grad_input, grad_weight_packed,
                       grad_bias);
  });
}

}  // namespace conv_transpose2d_detail
}  // namespace cpu
}  // namespace fastgan
