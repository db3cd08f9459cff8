// The Winograd path of the CPU transposed convolution, chosen for stride 2, a 4 x 4 kernel,
// padding 1, no output padding, dilation or groups (the output is twice the input's size) with
// enough channels and tiles (see winograd()): the DCGAN generator's layers, and through
// fastgan.ops.conv2d the discriminator's (their transposes). Sub-pixel phase (a, b) of the output
// is a 2 x 2 correlation of the input (x is 0 outside the image; x @ w: a pixel's C_in values
// times that tap's (C_in, C_out) matrix):
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
#include "conv_transpose2d_common.h"
#include "switches.h"

namespace fastgan {
namespace cpu {
namespace conv_transpose2d_detail {
namespace {

constexpr int kTile = 4;                   // outputs of a phase per tile and axis
constexpr int kSpan = kTile + 1;           // inputs per tile and axis (the 2-tap filter's overlap)
constexpr int kEntries = kSpan * kSpan;    // products per tile and phase
constexpr int kPhases = 4;
constexpr int kProducts = kPhases * kEntries;  // GEMMs in the batch

// Points 0, -1, 1/2, 2 and infinity (Toom-Cook): with its mirror (0, 1, -2, -1/2) the set of
// powers of two whose float32 result lies closest to the exact one, about half the error of the
// usual 0, 1, -1, 2 (64 - 512 channels; sets with 3/2 or 2/3 gain a little more but multiply
// inexactly), for two more nonzero coefficients in B^T. B^T's rows are scaled to integers and
// G's rows divided by the same factors, so the fractions stay in the weight's transform.
//   python benchmarks/run.py --only convt   (its float32 accuracy table)
constexpr double kInputTransform[kSpan][kSpan] = {  // B^T
    {2, -3, -3, 2, 0}, {0, 2, -5, 2, 0}, {0, -2, -1, 1, 0}, {0, -1, 1, 2, 0}, {0, 2, -3, -3, 2}};
constexpr double kFilterTransform[kSpan][2] = {  // G
    {1.0 / 2, 0}, {-1.0 / 9, 1.0 / 9}, {-8.0 / 9, -4.0 / 9}, {1.0 / 18, 1.0 / 9}, {0, 1.0 / 2}};
constexpr double kOutputTransform[kTile][kSpan] = {  // A^T
    {1, 1, 1, 1, 0}, {0, -1, 1.0 / 2, 2, 0}, {0, 1, 1.0 / 4, 4, 0}, {0, -1, 1.0 / 8, 8, 1}};

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
  // Images per block of V, M or dM: about as many entries as U has (every block's GEMMs read
  // all of U), within [kWinogradLeastBlockEntries, kBlockEntries].
  int64_t images_per_block(int64_t C_in, int64_t C_out, int64_t batch) const {
    const int64_t entries =
        std::clamp<int64_t>(kProducts * C_in * C_out, kWinogradLeastBlockEntries, kBlockEntries);
    return std::clamp<int64_t>(entries / (kProducts * per_image * std::max(C_in, C_out)), 1,
                               batch);
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
  matrix_product(u, filter_transform(options), taps);
  return u.view({kProducts, C_in, C_out});
}

// grad_weight = G^T dU G for the weight's taps: the adjoint of transformed_weight, a
// (16, C_in * C_out) product reading dU in order, transposed to (C_in, C_out, 4, 4).
template <typename scalar_t>
at::Tensor weight_gradient(const at::Tensor& transformed_gradient, int64_t C_in, int64_t C_out) {
  const at::TensorOptions options = transformed_gradient.options();
  at::Tensor taps = scratch(Scratch::kWeightTaps, {16, C_in * C_out}, options);
  matrix_product(taps, filter_transform(options).t(),
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
  const int64_t most = tiling.images_per_block(C_in, C_out, g.batch);
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
    matrix_product(m, v, u);
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

template <typename scalar_t>
void backward(const Geometry& g, const Dense& grad_output, const Dense* result, const Dense& x,
              const at::Tensor& weight, Activation activation, scalar_t negative_slope,
              const at::Tensor& grad_input, at::Tensor* grad_weight,
              std::vector<double>* grad_bias) {
  const Tiling tiling(g.in_h, g.in_w);
  const int64_t C_in = g.in_channels, C_out = g.out_channels;
  const int64_t in_image = g.in_h * g.in_w * C_in, out_image = g.out_h * g.out_w * C_out;
  const bool want_input = grad_input.defined(), want_weight = grad_weight != nullptr;
  const int64_t most = tiling.images_per_block(C_in, C_out, g.batch);
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
      matrix_product(du, v.transpose(1, 2), dm, /*accumulate=*/first > 0);
    }
    if (want_input) {
      matrix_product(v, dm, u.transpose(1, 2));
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

}  // namespace

bool winograd(const Geometry& g) {
  if (!allow_winograd().load(std::memory_order_relaxed)) return false;
  const int64_t tiles = g.batch * ((g.in_h + kTile - 1) / kTile) * ((g.in_w + kTile - 1) / kTile);
  return g.stride_h == 2 && g.stride_w == 2 && g.kernel_h == 4 && g.kernel_w == 4 &&
         g.padding_h == 1 && g.padding_w == 1 && g.out_h == 2 * g.in_h &&
         g.out_w == 2 * g.in_w && g.dilation_h == 1 && g.dilation_w == 1 && g.groups == 1 &&
         std::min(g.in_channels, g.out_channels) >= kWinogradMinChannels &&
         tiles >= kWinogradMinTiles &&
         tiles * (g.in_channels + g.out_channels) * kWinogradTilesOverU.den >=
             kWinogradTilesOverU.num * g.in_channels * g.out_channels;
}

void winograd_forward(const Geometry& g, const Dense& x, const at::Tensor& weight,
                      const at::Tensor& bias, Activation activation, double negative_slope,
                      const at::Tensor& out, bool out_channels_last) {
  AT_DISPATCH_FLOATING_TYPES(x.tensor.scalar_type(), "conv_transpose2d", [&] {
    forward<scalar_t>(g, x, weight, bias, activation, static_cast<scalar_t>(negative_slope), out,
                      out_channels_last);
  });
}

void winograd_backward(const Geometry& g, const Dense& grad_output, const Dense* result,
                       const Dense& x, const at::Tensor& weight, Activation activation,
                       double negative_slope, const at::Tensor& grad_input,
                       at::Tensor* grad_weight, std::vector<double>* grad_bias) {
  AT_DISPATCH_FLOATING_TYPES(x.tensor.scalar_type(), "conv_transpose2d_backward", [&] {
    backward<scalar_t>(g, grad_output, result, x, weight, activation,
                       static_cast<scalar_t>(negative_slope), grad_input, grad_weight, grad_bias);
  });
}

}  // namespace conv_transpose2d_detail

std::atomic<bool>& allow_winograd() {
  static std::atomic<bool> allowed{true};
  return allowed;
}

}  // namespace cpu
}  // namespace fastgan
