// The Winograd paths of the CPU transposed convolution, for padding 1, no output padding, dilation
// or groups, with enough channels and tiles (see winograd()), in two schemes:
// - stride 2 and a 4 x 4 kernel (the output is twice the input's size): the DCGAN generator's
//   layers, and through fastgan.ops.conv2d the discriminator's (their transposes); also a 3 x 3
//   kernel with output padding 1, which is the 4 x 4 kernel whose last row and column are zero
//   (a ResNet generator's upsampling layers, and its downsampling convolutions' transposes);
// - stride 1 and a 3 x 3 kernel (the output has the input's size): through fastgan.ops.conv2d, the
//   3 x 3 convolutions of a ResNet generator's residual blocks.
// With stride S, output phase (a, b) (the pixels (S i + a, S j + b); one phase for stride 1) is a
// T x T correlation of the input, T = K / S taps per axis (x is 0 outside the image; x @ w: a
// pixel's C_in values times that tap's (C_in, C_out) matrix):
//   out[S i + a][S j + b] = sum over t, u < T of
//                           x[i + a - 1 + t][j + b - 1 + u] @ w[K - 1 - a - S t][K - 1 - b - S u].
// Winograd's minimal filtering F(4 x 4, T x T) computes a 4 x 4 tile of a phase from the
// (3 + T) x (3 + T) input tile d under it with (3 + T)^2 tap-matrix products instead of 16 T^2:
//   Y = A^T [U (*) V] A,  V = B^T d B,  U = G g G^T  (g: the phase's T x T taps),
// where (*) multiplies entry by entry, each entry's product being a (C_in, C_out) matrix product:
// for each phase and entry one GEMM of the tiles' V (tiles, C_in) by U (C_in, C_out), batched. So
// the GEMMs do 25/64 (S = 2) or 36/144 (S = 1) of the direct method's multiply-adds; the
// transforms are elementwise passes over channel vectors. The backward is the adjoint, with the
// same GEMMs:
//   dM = A dY A^T;  grad_d = B [dM @ U^T] B^T (overlap-added into grad_input);
//   dU = sum over tiles of V^T @ dM;  grad_g = G^T dU G.
#include "conv_transpose2d_common.h"
#include "switches.h"

namespace fastgan {
namespace cpu {
namespace conv_transpose2d_detail {
namespace {

// The transforms of F(4 x 4, T x T) (B^T, G, A^T), from Toom-Cook's interpolation points. B^T's
// rows are scaled to integers and G's rows divided by the same factors, so the fractions stay in
// the weight's transform. The points are those whose float32 results lie closest to the exact
// ones among sets of 0, +-1, +-2, +-1/2 (64 - 512 channels): about half the error of the usual
// ones, for a few more nonzero coefficients.
//   python benchmarks/run.py --only convt   (its float32 accuracy table)
template <int Taps>
struct Transforms;

// T = 2: points 0, -1, 1/2, 2 and infinity.
template <>
struct Transforms<2> {
  static constexpr double kInput[5][5] = {
      {2, -3, -3, 2, 0}, {0, 2, -5, 2, 0}, {0, -2, -1, 1, 0}, {0, -1, 1, 2, 0}, {0, 2, -3, -3, 2}};
  static constexpr double kFilter[5][2] = {
      {1.0 / 2, 0}, {-1.0 / 9, 1.0 / 9}, {-8.0 / 9, -4.0 / 9}, {1.0 / 18, 1.0 / 9}, {0, 1.0 / 2}};
  static constexpr double kOutput[4][5] = {
      {1, 1, 1, 1, 0}, {0, -1, 1.0 / 2, 2, 0}, {0, 1, 1.0 / 4, 4, 0}, {0, -1, 1.0 / 8, 8, 1}};
};

// T = 3: points 0, 1, -1, 1/2, -2 and infinity (the usual 0, +-1, +-2: about 2.3 times the error).
template <>
struct Transforms<3> {
  static constexpr double kInput[6][6] = {
      {2, -3, -4, 3, 2, 0},  {0, -2, 1, 5, 2, 0},  {0, 2, -5, 1, 2, 0},
      {0, -2, -1, 2, 1, 0},  {0, 1, -2, -1, 2, 0}, {0, 2, -3, -4, 3, 2}};
  static constexpr double kFilter[6][3] = {{1.0 / 2, 0, 0},
                                           {1.0 / 6, 1.0 / 6, 1.0 / 6},
                                           {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                           {-16.0 / 15, -8.0 / 15, -4.0 / 15},
                                           {1.0 / 30, -1.0 / 15, 2.0 / 15},
                                           {0, 0, 1.0 / 2}};
  static constexpr double kOutput[4][6] = {
      {1, 1, 1, 1, 1, 0}, {0, 1, -1, 1.0 / 2, -2, 0}, {0, 1, 1, 1.0 / 4, 4, 0},
      {0, 1, -1, 1.0 / 8, -8, 1}};
};

// One scheme: stride S and a K x K kernel, its phases and their F(4 x 4, T x T).
template <int Stride, int Kernel>
struct Scheme : Transforms<Kernel / Stride> {
  static constexpr int kStride = Stride, kKernel = Kernel, kTaps = Kernel / Stride;
  static constexpr int kTile = 4;                   // outputs of a phase per tile and axis
  static constexpr int kSpan = kTile + kTaps - 1;   // inputs per tile and axis
  static constexpr int kEntries = kSpan * kSpan;    // products per tile and phase
  static constexpr int kPhases = Stride * Stride;
  static constexpr int kProducts = kPhases * kEntries;  // GEMMs in the batch
  // The kernel tap of tap t of a phase's row (or column) a.
  static constexpr int tap(int a, int t) { return Kernel - 1 - a - Stride * t; }
  // The input row of phase row 0's first tap at output row 0, for a padding.
  static constexpr int input_offset(int64_t padding) {
    return static_cast<int>((padding - Kernel + 1) / Stride);
  }
};
using Stride2Kernel4 = Scheme<2, 4>;
using Stride1Kernel3 = Scheme<1, 3>;

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

// Tiles of a block of images: each output phase is a grid of `height` x `width` pixels (the
// output's size over the stride), with ceil(size / 4) tiles per axis, tile t of image n at row
// n * per_image + t of the GEMM operands. Phase a's tile at row tile_h reads input rows from
// tile_h + a + offset on, of in_height (zeros outside).
template <typename S>
struct Tiling {
  int64_t height, width, in_height, in_width, offset, tiles_h, tiles_w, per_image;
  explicit Tiling(const Geometry& g)
      : height(g.out_h / S::kStride), width(g.out_w / S::kStride), in_height(g.in_h),
        in_width(g.in_w), offset(S::input_offset(g.padding_h)),
        tiles_h((height + S::kTile - 1) / S::kTile), tiles_w((width + S::kTile - 1) / S::kTile),
        per_image(tiles_h * tiles_w) {}
  // Blocks of the work: `images` images at a time are read (and written) as dense rows, their
  // tiles `tiles` at a time through V, M or dM, about as many entries as U has (every block's
  // GEMMs read all of U), within the scheme's bounds. Large images take several blocks of tiles
  // each, so their operands stay in cache too.
  struct Blocks {
    int64_t images, tiles;
    // fn(first, end) for the blocks of tiles [first, end) that cover [0, count): at most `tiles`
    // each, of equal size (a last block of a few tiles would run its GEMMs on too few rows).
    template <typename Fn>
    void each(int64_t count, const Fn& fn) const {
      const int64_t size = equal_size(count, tiles);
      for (int64_t first = 0; first < count; first += size) fn(first, std::min(count, first + size));
    }
    // The size of the equal parts of at most `most` (tiles, or images) that cover `count`.
    static int64_t equal_size(int64_t count, int64_t most) {
      const int64_t blocks = (count + most - 1) / most;
      return (count + blocks - 1) / blocks;
    }
  };
  Blocks blocks(int64_t C_in, int64_t C_out, int64_t batch) const {
    const bool stride_1 = S::kStride == 1;
    const int64_t entries = std::clamp<int64_t>(
        S::kProducts * C_in * C_out,
        stride_1 ? kWinograd3x3LeastBlockEntries : kWinogradLeastBlockEntries,
        stride_1 ? kWinograd3x3MostBlockEntries : kBlockEntries);
    const int64_t tiles = std::max<int64_t>(entries / (S::kProducts * std::max(C_in, C_out)), 1);
    const int64_t images = std::clamp<int64_t>(tiles / per_image, 1, batch);
    return {images, std::min(tiles, images * per_image)};
  }
  // The top-left output of tile `tile` in its phase's grid.
  int64_t row_of(int64_t tile) const { return tile / tiles_w * S::kTile; }
  int64_t column_of(int64_t tile) const { return tile % tiles_w * S::kTile; }
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

// fn(column, count) for every vector of `size` columns (`count` of them: fewer in the last), in
// parallel, each vector's work `work` times its columns'.
template <typename scalar_t, typename Fn>
void each_column_vector(int64_t size, int64_t work, const Fn& fn) {
  constexpr int64_t kLanes = Vec<scalar_t>::size();
  parallel_tasks((size + kLanes - 1) / kLanes, work * kLanes, [&](int64_t vector) {
    const int64_t column = vector * kLanes;
    fn(column, std::min<int64_t>(kLanes, size - column));
  });
}

// U's coefficient of tap (t, v) of a phase in its entry e: G[xi][t] * G[nu][v], rounded once.
template <typename S, typename scalar_t>
constexpr scalar_t filter_coefficient(int e, int t, int v) {
  return static_cast<scalar_t>(S::kFilter[e / S::kSpan][t] * S::kFilter[e % S::kSpan][v]);
}

// The filter transform U = G g G^T of every phase, over `size` columns: row (phase a, b, entry
// xi, nu) of `u` from the rows of `taps` (K^2 of them, tap (kh, kw) at row kh * kernel + kw) of
// the phase's taps kh = tap(a, t), kw = tap(b, v); a kernel smaller than the scheme's has zeros
// past its last row and column. Each vector of columns is transformed in registers, reading the
// taps and writing U once: as a (kProducts, K^2) matrix product, its depth of 9 or 16 ran the
// multiply-adds at a fraction of their rate, and building U took longer than the products with
// it (256 channels at batch 1). Each entry is the same sum as that product's, in the taps' order.
template <typename S, typename scalar_t>
void transform_filters(const scalar_t* taps, int64_t kernel, int64_t size, scalar_t* u) {
  using Vector = Vec<scalar_t>;
  each_column_vector<scalar_t>(size, S::kProducts, [&](int64_t column, int64_t count) {
#pragma GCC unroll 4
    for (int phase = 0; phase < S::kPhases; ++phase) {
      const int a = phase / S::kStride, b = phase % S::kStride;
      Vector g[S::kTaps][S::kTaps];
#pragma GCC unroll 8
      for (int t = 0; t < S::kTaps; ++t) {
#pragma GCC unroll 8
        for (int v = 0; v < S::kTaps; ++v) {
          const int kh = S::tap(a, t), kw = S::tap(b, v);
          g[t][v] = kh < kernel && kw < kernel
                        ? Vector::loadu(taps + (kh * kernel + kw) * size + column, count)
                        : Vector(0);
        }
      }
#pragma GCC unroll 128
      for (int e = 0; e < S::kEntries; ++e) {
        Vector sum(0);
        // Taps in the order of their rows: kh = tap(a, t) falls as t rises.
#pragma GCC unroll 8
        for (int t = S::kTaps - 1; t >= 0; --t) {
#pragma GCC unroll 8
          for (int v = S::kTaps - 1; v >= 0; --v) {
            const scalar_t c = filter_coefficient<S, scalar_t>(e, t, v);
            if (c != 0) sum = at::vec::fmadd(g[t][v], Vector(c), sum);
          }
        }
        sum.store(u + (phase * S::kEntries + e) * size + column, count);
      }
    }
  });
}

// The adjoint: the taps' rows (K^2 of `size` values) from U's gradient dU (kProducts rows),
// grad_g = G^T dU G per phase, in the same way (every tap of the kernel is one phase's), each
// tap the sum over the phase's entries in order.
template <typename S, typename scalar_t>
void transform_filter_gradients(const scalar_t* du, int64_t kernel, int64_t size,
                                scalar_t* taps) {
  using Vector = Vec<scalar_t>;
  each_column_vector<scalar_t>(size, S::kProducts, [&](int64_t column, int64_t count) {
#pragma GCC unroll 4
    for (int phase = 0; phase < S::kPhases; ++phase) {
      const int a = phase / S::kStride, b = phase % S::kStride;
      const scalar_t* entries = du + phase * S::kEntries * size + column;
#pragma GCC unroll 8
      for (int t = 0; t < S::kTaps; ++t) {
#pragma GCC unroll 8
        for (int v = 0; v < S::kTaps; ++v) {
          const int kh = S::tap(a, t), kw = S::tap(b, v);
          if (kh >= kernel || kw >= kernel) continue;
          Vector sum(0);
#pragma GCC unroll 128
          for (int e = 0; e < S::kEntries; ++e) {
            const scalar_t c = filter_coefficient<S, scalar_t>(e, t, v);
            if (c != 0) {
              sum = at::vec::fmadd(Vector::loadu(entries + e * size, count), Vector(c), sum);
            }
          }
          sum.store(taps + (kh * kernel + kw) * size + column, count);
        }
      }
    }
  });
}

// The weight's taps as (K^2, C_in, C_out) rows, or (K^2, C_out, C_in) when Transposed. A weight
// stored (outer, taps, inner) with the channels innermost, channels-last (outer C_in) or the
// transposed view of a channels-last one (outer C_out: fastgan.ops.conv2d's turned kernels), gives
// them by copies of its stretches of `inner` values or by a transposition per tap; an NCHW one by
// one transposition; any other by a permuting copy.
template <typename scalar_t, bool Transposed>
void weight_taps(const at::Tensor& weight, int64_t K, const at::Tensor& taps) {
  const int64_t C_in = weight.size(0), C_out = weight.size(1), count = K * K;
  const int64_t pairs = C_in * C_out;
  const at::IntArrayRef st = weight.strides();
  const bool in_outer = st[1] == 1 && st[3] == C_out && st[2] == K * C_out && st[0] == count * C_out;
  const bool out_outer = st[0] == 1 && st[3] == C_in && st[2] == K * C_in && st[1] == count * C_in;
  const scalar_t* w = weight.const_data_ptr<scalar_t>();
  scalar_t* rows = taps.mutable_data_ptr<scalar_t>();
  if (in_outer || out_outer) {
    const int64_t outer = in_outer ? C_in : C_out, inner = in_outer ? C_out : C_in;
    if (in_outer != Transposed) {  // the rows wanted are (tap, outer, inner): copies
      parallel_tasks(outer, count * inner, [&](int64_t o) {
        for (int64_t tap = 0; tap < count; ++tap) {
          std::copy_n(w + (o * count + tap) * inner, inner, rows + tap * pairs + o * inner);
        }
      });
    } else {
      parallel_tasks(count, pairs, [&](int64_t tap) {
        at::vec::transpose_mxn<scalar_t>(w + tap * inner, count * inner, rows + tap * pairs,
                                         outer, static_cast<int>(outer),
                                         static_cast<int>(inner));
      });
    }
  } else if (!Transposed) {
    const at::Tensor dense = weight.contiguous();
    transpose_matrix(dense.const_data_ptr<scalar_t>(), rows, pairs, count);
  } else {
    taps.view({K, K, C_out, C_in}).copy_(weight.permute({2, 3, 1, 0}));
  }
}

// U of every phase and entry: (kProducts, C_in, C_out) GEMM operands (Transposed: U^T,
// (kProducts, C_out, C_in), for the input gradient's products), the filter transform of the
// weight's taps (transform_filters). With a panel width (gemm.h), each product's
// operand is stored packed, as the products read it: the taps are packed, and the filter
// transform, a linear combination of the taps, keeps their layout. The products then read U
// once, in order, rather than packing it anew in every call.
template <typename S, typename scalar_t, bool Transposed>
at::Tensor transformed_weight(const at::Tensor& weight, int64_t width) {
  const int64_t C_in = weight.size(0), C_out = weight.size(1), pairs = C_in * C_out;
  const int64_t kernel = weight.size(2), tap_count = kernel * kernel;
  const at::TensorOptions options = weight.options();
  if (width == 0) {
    const at::Tensor taps = scratch(Scratch::kWeightTaps, {tap_count, pairs}, options);
    weight_taps<scalar_t, Transposed>(weight, kernel, taps);
    at::Tensor u = scratch(Scratch::kWeight, {S::kProducts, pairs}, options);
    transform_filters<S>(taps.const_data_ptr<scalar_t>(), kernel, pairs,
                         u.mutable_data_ptr<scalar_t>());
    return Transposed ? u.view({S::kProducts, C_out, C_in})
                      : u.view({S::kProducts, C_in, C_out});
  }
  const int64_t size = Transposed ? packed_size(C_out, C_in, width)
                                  : packed_size(C_in, C_out, width);
  const at::Tensor taps = scratch(Scratch::kWeightTaps, {tap_count, size}, options);
  const at::Tensor by_tap = weight.permute({2, 3, 0, 1}).reshape({tap_count, C_in, C_out});
  float* packed = taps.mutable_data_ptr<float>();
  parallel_tasks(tap_count, pairs, [&](int64_t tap) {
    const at::Tensor matrix = by_tap.select(0, tap);
    pack_b(Transposed ? matrix.t() : matrix, packed + tap * size);
  });
  at::Tensor u = scratch(Scratch::kWeight, {S::kProducts, size}, options);
  transform_filters<S>(packed, kernel, size, u.mutable_data_ptr<float>());
  return u;
}

// out = a @ U for U as transformed_weight built it with `width`.
void multiply_by_u(const at::Tensor& out, const at::Tensor& a, const at::Tensor& u,
                   int64_t width) {
  if (width > 0) {
    matrix_product_packed(out, a, u);
  } else {
    matrix_product(out, a, u);
  }
}

// grad_weight = G^T dU G for the weight's taps (transform_filter_gradients, the adjoint of
// transformed_weight), transposed to (C_in, C_out, K, K).
template <typename S, typename scalar_t>
at::Tensor weight_gradient(const at::Tensor& transformed_gradient, int64_t C_in, int64_t C_out,
                           int64_t kernel) {
  const int64_t tap_count = kernel * kernel;
  const at::TensorOptions options = transformed_gradient.options();
  at::Tensor taps = scratch(Scratch::kWeightTaps, {tap_count, C_in * C_out}, options);
  transform_filter_gradients<S>(transformed_gradient.contiguous().const_data_ptr<scalar_t>(),
                                kernel, C_in * C_out, taps.mutable_data_ptr<scalar_t>());
  const at::Tensor grad = at::empty({C_in, C_out, kernel, kernel}, options);
  transpose_matrix(taps.const_data_ptr<scalar_t>(), grad.mutable_data_ptr<scalar_t>(), tap_count,
                   C_in * C_out);
  return grad;
}

// A block's (kProducts, rows, channels) GEMM operand in scratch memory, both as a tensor and as
// the transforms' Operand.
template <typename S, typename scalar_t>
std::pair<at::Tensor, Operand<scalar_t>> block_operand(Scratch use, int64_t rows, int64_t channels,
                                                       const at::TensorOptions& options) {
  const at::Tensor operand = scratch(use, {S::kProducts, rows, channels}, options);
  return {operand, Operand<scalar_t>{operand.mutable_data_ptr<scalar_t>(), rows, channels}};
}

// Fills a GEMM operand: for the tiles [first, last) of a block of images (row r - first of the
// operand holds tile r), every phase and every vector of channels, transformed(n, tile_h, tile_w,
// phase, c, count, out) computes the kSpan x kSpan entries of image n's tile whose top-left output
// of the phase is at (tile_h, tile_w) in the phase's grid.
template <typename S, typename scalar_t, typename Transformed>
void fill_operand(const Tiling<S>& tiling, int64_t first, int64_t last,
                  const Operand<scalar_t>& operand, const Transformed& transformed) {
  using Vector = Vec<scalar_t>;
  const int64_t C = operand.channels;
  parallel_tasks(last - first, S::kProducts * C, [&](int64_t row) {
    const int64_t n = (first + row) / tiling.per_image, tile = (first + row) % tiling.per_image;
    const int64_t tile_h = tiling.row_of(tile), tile_w = tiling.column_of(tile);
    for (int phase = 0; phase < S::kPhases; ++phase) {
      for (int64_t c = 0; c < C; c += Vector::size()) {
        const int64_t count = std::min<int64_t>(Vector::size(), C - c);
        Vector entries[S::kSpan][S::kSpan];
        transformed(n, tile_h, tile_w, phase, c, count, entries);
        for (int e = 0; e < S::kEntries; ++e) {
          entries[e / S::kSpan][e % S::kSpan].store(operand.at(phase * S::kEntries + e, row) + c,
                                                    count);
        }
      }
    }
  });
}

// V = B^T d B of every phase of tiles [first, last) of images given as dense rows (n, h, w) of C
// values (the tile d of phase (a, b) starts at input pixel (tile_h + a, tile_w + b) + offset).
template <typename S, typename scalar_t>
void transform_inputs(const Tiling<S>& tiling, int64_t first, int64_t last, const scalar_t* rows,
                      const Operand<scalar_t>& v) {
  using Vector = Vec<scalar_t>;
  const int64_t C = v.channels, H = tiling.in_height, W = tiling.in_width;
  fill_operand(tiling, first, last, v, [&](int64_t n, int64_t tile_h, int64_t tile_w, int phase,
                                      int64_t c, int64_t count,
                                      Vector (&entries)[S::kSpan][S::kSpan]) {
    const scalar_t* image = rows + n * H * W * C;
    Vector d[S::kSpan][S::kSpan];
    for (int p = 0; p < S::kSpan; ++p) {
      for (int q = 0; q < S::kSpan; ++q) {
        const int64_t h = tile_h + phase / S::kStride + tiling.offset + p;
        const int64_t w = tile_w + phase % S::kStride + tiling.offset + q;
        d[p][q] = h >= 0 && h < H && w >= 0 && w < W
                      ? Vector::loadu(image + (h * W + w) * C + c, count)
                      : Vector(0);
      }
    }
    transform<S::kSpan, S::kSpan, false>(S::kInput, d, entries);
  });
}

// dM = A dY A^T of every phase of tiles [first, last) from the output gradient g, dense rows
// (n, oh, ow) of C values.
template <typename S, typename scalar_t>
void transform_output_gradients(const Tiling<S>& tiling, int64_t first, int64_t last,
                                const scalar_t* g, const Operand<scalar_t>& dm) {
  using Vector = Vec<scalar_t>;
  const int64_t C = dm.channels, H = tiling.height, W = tiling.width;
  fill_operand(tiling, first, last, dm, [&](int64_t n, int64_t tile_h, int64_t tile_w, int phase,
                                       int64_t c, int64_t count,
                                       Vector (&entries)[S::kSpan][S::kSpan]) {
    const scalar_t* image = g + n * S::kPhases * H * W * C;
    Vector dy[S::kTile][S::kTile];
    for (int i = 0; i < S::kTile; ++i) {
      for (int j = 0; j < S::kTile; ++j) {
        const int64_t h = tile_h + i, w = tile_w + j;
        const int64_t oh = S::kStride * h + phase / S::kStride;
        const int64_t ow = S::kStride * w + phase % S::kStride;
        dy[i][j] = h < H && w < W
                       ? Vector::loadu(image + (oh * S::kStride * W + ow) * C + c, count)
                       : Vector(0);
      }
    }
    transform<S::kSpan, S::kTile, true>(S::kOutput, dy, entries);
  });
}

// The forward's epilogue: out = activation(A^T M A + bias) of every phase of tiles [first, last),
// written as dense rows (n, oh, ow) of C values.
template <typename S, typename scalar_t>
void transform_outputs(const Tiling<S>& tiling, int64_t first, int64_t last,
                       const Operand<scalar_t>& m,
                       const scalar_t* bias, Activation activation, scalar_t negative_slope,
                       scalar_t* out) {
  using Vector = Vec<scalar_t>;
  const int64_t C = m.channels, H = tiling.height, W = tiling.width;
  const Vector slope(negative_slope);
  parallel_tasks(last - first, S::kProducts * C, [&](int64_t row) {
    const int64_t n = (first + row) / tiling.per_image, tile = (first + row) % tiling.per_image;
    scalar_t* image = out + n * S::kPhases * H * W * C;
    const int64_t h0 = tiling.row_of(tile), w0 = tiling.column_of(tile);
    for (int phase = 0; phase < S::kPhases; ++phase) {
      for (int64_t c = 0; c < C; c += Vector::size()) {
        const int64_t count = std::min<int64_t>(Vector::size(), C - c);
        const Vector b = bias != nullptr ? Vector::loadu(bias + c, count) : Vector(0);
        Vector products[S::kSpan][S::kSpan], y[S::kTile][S::kTile];
        for (int e = 0; e < S::kEntries; ++e) {
          products[e / S::kSpan][e % S::kSpan] =
              Vector::loadu(m.at(phase * S::kEntries + e, row) + c, count);
        }
        transform<S::kTile, S::kSpan, false>(S::kOutput, products, y);
        for (int i = 0; i < S::kTile; ++i) {
          for (int j = 0; j < S::kTile; ++j) {
            const int64_t h = h0 + i, w = w0 + j;
            if (h >= H || w >= W) continue;
            const int64_t oh = S::kStride * h + phase / S::kStride;
            const int64_t ow = S::kStride * w + phase % S::kStride;
            activate(activation, y[i][j] + b, slope)
                .store(image + (oh * S::kStride * W + ow) * C + c, count);
          }
        }
      }
    }
  });
}

// grad_d = B dV B^T of every phase of tiles [first, last), overlap-added into `rows`, the images'
// dense rows (n, h, w) of C values. The tasks split the channels: tiles overlap, channels do not.
template <typename S, typename scalar_t>
void add_input_gradients(const Tiling<S>& tiling, const Operand<scalar_t>& dv, int64_t first,
                         int64_t last, scalar_t* rows) {
  using Vector = Vec<scalar_t>;
  const int64_t C = dv.channels, H = tiling.in_height, W = tiling.in_width;
  const int64_t vectors = (C + Vector::size() - 1) / Vector::size();
  parallel_tasks(vectors, (last - first) * S::kProducts * Vector::size(), [&](int64_t vector) {
    const int64_t c = vector * Vector::size();
    const int64_t count = std::min<int64_t>(Vector::size(), C - c);
    for (int64_t row = first; row < last; ++row) {
      const int64_t n = row / tiling.per_image, tile = row % tiling.per_image;
      scalar_t* image = rows + n * H * W * C;
      for (int phase = 0; phase < S::kPhases; ++phase) {
        const int64_t h0 = tiling.row_of(tile) + phase / S::kStride + tiling.offset;
        const int64_t w0 = tiling.column_of(tile) + phase % S::kStride + tiling.offset;
        Vector products[S::kSpan][S::kSpan], dd[S::kSpan][S::kSpan];
        for (int e = 0; e < S::kEntries; ++e) {
          products[e / S::kSpan][e % S::kSpan] =
              Vector::loadu(dv.at(phase * S::kEntries + e, row - first) + c, count);
        }
        transform<S::kSpan, S::kSpan, true>(S::kInput, products, dd);
        for (int p = 0; p < S::kSpan; ++p) {
          for (int q = 0; q < S::kSpan; ++q) {
            const int64_t h = h0 + p, w = w0 + q;
            if (h < 0 || h >= H || w < 0 || w >= W) continue;
            scalar_t* pixel = image + (h * W + w) * C + c;
            (Vector::loadu(pixel, count) + dd[p][q]).store(pixel, count);
          }
        }
      }
    }
  });
}

// Images [0, images) of `pixels` x C dense rows each at `rows`, transposed into NCHW planes at
// `planes`: in parallel over the images, or over strips of a single one.
template <typename scalar_t>
void rows_to_planes(const scalar_t* rows, scalar_t* planes, int64_t images, int64_t pixels,
                    int64_t C) {
  if (images == 1) return transpose_matrix(rows, planes, pixels, C);
  parallel_tasks(images, pixels * C, [&](int64_t i) {
    transpose_plane(rows + i * pixels * C, planes + i * pixels * C, pixels, C);
  });
}

// How a call's tiles spread over the threads. Each step shared out among the threads hands every
// block's V and M (or dM) from one thread to another between the steps; on the machine measured,
// such a forward ran about 1.5x slower for much of the time (benchmarks/README.md). Where the work
// allows, each thread instead runs whole images, or whole blocks of tiles, through every step, at
// half the block size (for two threads: the same scratch in all).
template <typename S>
struct Spread {
  int64_t threads;
  typename Tiling<S>::Blocks shared, local;
  bool local_blocks;  // the per-thread blocks have rows enough for the GEMMs
  bool by_image;      // and the batch shares out evenly among the threads

  Spread(const Tiling<S>& tiling, int64_t C_in, int64_t C_out, int64_t batch)
      : threads(at::in_parallel_region() ? 1 : at::get_num_threads()),
        shared(tiling.blocks(C_in, C_out, batch)) {
    const int64_t tiles = std::max<int64_t>(shared.tiles / threads, 1);
    const int64_t images = std::clamp<int64_t>(tiles / tiling.per_image, 1, shared.images);
    local = {images, std::min(tiles, images * tiling.per_image)};
    local_blocks = threads > 1 && local.tiles >= kWinogradLeastThreadBlockTiles;
    by_image = local_blocks && images_share_out(batch, threads);
  }
  // fn(begin, end) for each thread's share [begin, end) of `count` items (images or blocks), all
  // threads side by side, the calling thread's share first. Each thread's scratch is its own,
  // freed when it is done.
  template <typename Fn>
  void each_thread(int64_t count, const Fn& fn) const {
    at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
      const BelowAutograd below_autograd;
      const ScratchScope scratch_scope;
      fn(begin, end);
    });
  }
};

template <typename S, typename scalar_t>
void forward(const Geometry& g, const Dense& x, const at::Tensor& weight, const at::Tensor& bias,
             Activation activation, scalar_t negative_slope, const at::Tensor& out,
             bool out_channels_last) {
  using Blocks = typename Tiling<S>::Blocks;
  const Tiling<S> tiling(g);
  const int64_t C_in = g.in_channels, C_out = g.out_channels;
  const int64_t in_image = g.in_h * g.in_w * C_in, out_image = g.out_h * g.out_w * C_out;
  const Spread<S> spread(tiling, C_in, C_out, g.batch);
  const at::TensorOptions options = out.options();
  const int64_t width = panel_width(out.scalar_type());
  const at::Tensor u = transformed_weight<S, scalar_t, false>(weight, width);
  scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
  // Channels-last operands are read and written in place: their images need not go in groups.
  const bool in_place = x.channels_last && out_channels_last;

  // Images [first, first + images) through every step, their tiles in `blocks`: whole blocks to
  // each thread (blocks_per_thread), else one after another with each step shared out.
  const auto run_images = [&](int64_t first, int64_t images, const Blocks& blocks,
                              bool blocks_per_thread) {
    const at::Tensor x_buffer =
        scratch(Scratch::kInputRows, {x.channels_last ? 0 : images * in_image}, options);
    const at::Tensor out_buffer =
        scratch(Scratch::kOutputRows, {out_channels_last ? 0 : images * out_image}, options);
    const scalar_t* x_rows =
        rows_of(x, first, first + images, x_buffer.mutable_data_ptr<scalar_t>());
    scalar_t* out_rows = out_channels_last ? out_data + first * out_image
                                           : out_buffer.mutable_data_ptr<scalar_t>();
    const auto run_block = [&](int64_t tile, int64_t end) {
      const auto [v, v_operand] =
          block_operand<S, scalar_t>(Scratch::kTiles, end - tile, C_in, options);
      auto [m, m_operand] =
          block_operand<S, scalar_t>(Scratch::kProducts, end - tile, C_out, options);
      transform_inputs(tiling, tile, end, x_rows, v_operand);
      multiply_by_u(m, v, u, width);
      transform_outputs(tiling, tile, end, m_operand,
                        bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr, activation,
                        negative_slope, out_rows);
    };
    const int64_t count = images * tiling.per_image;
    if (blocks_per_thread) {  // as many equal blocks to every thread
      const int64_t per_thread = (count + spread.threads - 1) / spread.threads;
      const int64_t size = Blocks::equal_size(per_thread, blocks.tiles);
      spread.each_thread((count + size - 1) / size, [&](int64_t begin, int64_t end) {
        for (int64_t block = begin; block < end; ++block) {
          run_block(block * size, std::min(count, (block + 1) * size));
        }
      });
    } else {
      blocks.each(count, run_block);
    }
    if (!out_channels_last) {
      rows_to_planes(out_rows, out_data + first * out_image, images, g.out_h * g.out_w, C_out);
    }
  };

  if (spread.by_image) {
    spread.each_thread(g.batch, [&](int64_t begin, int64_t end) {
      const int64_t group =
          in_place ? end - begin : Blocks::equal_size(end - begin, spread.local.images);
      for (int64_t first = begin; first < end; first += group) {
        run_images(first, std::min(end - first, group), spread.local, false);
      }
    });
    return;
  }
  const int64_t group = in_place ? g.batch : Blocks::equal_size(g.batch, spread.shared.images);
  for (int64_t first = 0; first < g.batch; first += group) {
    const int64_t images = std::min(g.batch - first, group);
    // Whole blocks to each thread where each thread's share has rows enough for the GEMMs.
    const bool blocks_per_thread =
        spread.local_blocks &&
        images * tiling.per_image >= spread.threads * kWinogradLeastThreadBlockTiles;
    run_images(first, images, blocks_per_thread ? spread.local : spread.shared, blocks_per_thread);
  }
}

template <typename S, typename scalar_t>
void backward(const Geometry& g, const Dense& grad_output, const Dense* result, const Dense& x,
              const at::Tensor& weight, Activation activation, scalar_t negative_slope,
              const at::Tensor& grad_input, at::Tensor* grad_weight,
              std::vector<double>* grad_bias) {
  using Blocks = typename Tiling<S>::Blocks;
  const Tiling<S> tiling(g);
  const int64_t C_in = g.in_channels, C_out = g.out_channels;
  const int64_t in_image = g.in_h * g.in_w * C_in, out_image = g.out_h * g.out_w * C_out;
  const bool want_input = grad_input.defined(), want_weight = grad_weight != nullptr;
  const int64_t du_entries = S::kProducts * C_in * C_out;
  const Spread<S> spread(tiling, C_in, C_out, g.batch);
  // By image, each thread sums its own images' dU, added up at the end in thread order: that
  // costs a dU per thread, kept to one block's scratch.
  const bool by_image = spread.by_image &&
                        (!want_weight || (spread.threads - 1) * du_entries <= kBlockEntries);
  const at::TensorOptions options = grad_output.tensor.options();
  const Vec<scalar_t> slope(negative_slope);
  const bool g_in_place = grad_output.channels_last && result == nullptr;
  const bool grad_input_channels_last = want_input && stored_channels_last(grad_input);
  const int64_t width = panel_width(grad_output.tensor.scalar_type());
  const at::Tensor u_t =
      want_input ? transformed_weight<S, scalar_t, true>(weight, width) : at::Tensor();
  const int64_t partials = by_image ? spread.threads : 1;
  const at::Tensor du = scratch(
      Scratch::kWeightGradient, {want_weight ? partials : 0, S::kProducts, C_in, C_out}, options);
  std::vector<double> image_sums(grad_bias != nullptr ? g.batch * C_out : 0);
  scalar_t* grad_input_data = want_input ? grad_input.mutable_data_ptr<scalar_t>() : nullptr;

  // Images [first, first + images) through every step, their tiles in `blocks`, their dU summed
  // into `du_sum`: written by its first block's products, then accumulated (no zero fill of up to
  // 50 MiB), `accumulate` saying which.
  const auto run_images = [&](int64_t first, int64_t images, const Blocks& blocks,
                              const at::Tensor& du_sum, bool& accumulate) {
    const at::Tensor g_buffer =
        scratch(Scratch::kOutputRows, {g_in_place ? 0 : images * out_image}, options);
    const at::Tensor result_buffer =
        scratch(Scratch::kResultRows, {result != nullptr ? images * out_image : 0}, options);
    const at::Tensor x_buffer = scratch(
        Scratch::kInputRows, {want_weight && !x.channels_last ? images * in_image : 0}, options);
    const at::Tensor grad_input_buffer = scratch(
        Scratch::kInputGradientRows,
        {want_input && !grad_input_channels_last ? images * in_image : 0}, options);
    parallel_tasks(images, out_image, [&](int64_t i) {
      image_gradient(grad_output, result, activation, slope, first + i,
                     g_in_place ? nullptr : g_buffer.mutable_data_ptr<scalar_t>() + i * out_image,
                     result != nullptr ? result_buffer.mutable_data_ptr<scalar_t>() + i * out_image
                                       : nullptr,
                     grad_bias != nullptr ? image_sums.data() + (first + i) * C_out : nullptr);
    });
    if (!want_input && !want_weight) return;
    const scalar_t* g_rows = g_in_place
        ? grad_output.tensor.const_data_ptr<scalar_t>() + first * out_image
        : g_buffer.const_data_ptr<scalar_t>();
    const scalar_t* x_rows = want_weight
        ? rows_of(x, first, first + images, x_buffer.mutable_data_ptr<scalar_t>())
        : nullptr;
    scalar_t* grad_input_rows = !want_input ? nullptr
        : grad_input_channels_last ? grad_input_data + first * in_image
                                   : grad_input_buffer.mutable_data_ptr<scalar_t>();
    if (want_input) {  // the overlap-add's start, an image per task
      parallel_tasks(images, in_image, [&](int64_t i) {
        std::fill_n(grad_input_rows + i * in_image, in_image, scalar_t(0));
      });
    }
    blocks.each(images * tiling.per_image, [&](int64_t tile, int64_t end) {
      const auto [dm, dm_operand] =
          block_operand<S, scalar_t>(Scratch::kProducts, end - tile, C_out, options);
      auto [v, v_operand] = block_operand<S, scalar_t>(Scratch::kTiles, end - tile, C_in, options);
      transform_output_gradients(tiling, tile, end, g_rows, dm_operand);
      if (want_weight) {
        transform_inputs(tiling, tile, end, x_rows, v_operand);
        matrix_product(du_sum, v.transpose(1, 2), dm, accumulate);
        accumulate = true;
      }
      if (want_input) {  // dV, in V's place
        multiply_by_u(v, dm, u_t, width);
        add_input_gradients(tiling, v_operand, tile, end, grad_input_rows);
      }
    });
    if (want_input && !grad_input_channels_last) {
      rows_to_planes(grad_input_rows, grad_input_data + first * in_image, images,
                     g.in_h * g.in_w, C_in);
    }
  };

  const at::Tensor du_total = want_weight ? du.select(0, 0) : at::Tensor();
  if (by_image) {
    std::vector<char> summed(spread.threads, 0);  // which partials hold a sum
    spread.each_thread(g.batch, [&](int64_t begin, int64_t end) {
      const int64_t thread = at::get_thread_num();
      const at::Tensor du_sum = want_weight ? du.select(0, thread) : at::Tensor();
      const int64_t group = Blocks::equal_size(end - begin, spread.local.images);
      bool accumulate = false;
      for (int64_t first = begin; first < end; first += group) {
        run_images(first, std::min(end - first, group), spread.local, du_sum, accumulate);
      }
      summed[thread] = accumulate;
    });
    for (int64_t thread = 1; thread < partials; ++thread) {
      if (summed[thread]) du_total.add_(du.select(0, thread));
    }
  } else {
    const int64_t group = Blocks::equal_size(g.batch, spread.shared.images);
    bool accumulate = false;
    for (int64_t first = 0; first < g.batch; first += group) {
      run_images(first, std::min(g.batch - first, group), spread.shared, du_total, accumulate);
    }
  }
  if (want_weight) *grad_weight = weight_gradient<S, scalar_t>(du_total, C_in, C_out, g.kernel_h);
  if (grad_bias != nullptr) {
    for (int64_t i = 0; i < g.batch * C_out; ++i) (*grad_bias)[i % C_out] += image_sums[i];
  }
}

// fn(scheme) for the scheme of a geometry that winograd() accepts: a value of type S, to pick the
// template.
template <typename Fn>
void with_scheme(const Geometry& g, const Fn& fn) {
  if (g.stride_h == 2) {
    fn(Stride2Kernel4());
  } else {
    fn(Stride1Kernel3());
  }
}

// Whether g is one of the schemes' geometries: stride S, a K x K kernel, no output padding,
// dilation or groups, and padding 1 (stride 2) or up to 2 (stride 1: 2 maps a padded input to
// the size before padding, as a 3x3 nn.Conv2d after nn.ReflectionPad2d(1); fastgan.ops.conv2d
// runs such a convolution so). At stride 2 also a 3 x 3 kernel whose output padding 1 gives the
// 4 x 4 kernel's output size.
template <typename S>
bool fits(const Geometry& g) {
  const bool padding = g.padding_h == g.padding_w &&
                       (g.padding_h == 1 || (S::kStride == 1 && g.padding_h <= 2));
  const bool kernel = g.kernel_h == g.kernel_w &&
                      (g.kernel_h == S::kKernel || (S::kStride == 2 && g.kernel_h == 3));
  return padding && kernel && g.stride_h == S::kStride && g.stride_w == S::kStride &&
         g.out_h == (g.in_h - 1) * S::kStride - 2 * g.padding_h + S::kKernel &&
         g.out_w == (g.in_w - 1) * S::kStride - 2 * g.padding_w + S::kKernel &&
         g.dilation_h == 1 && g.dilation_w == 1 && g.groups == 1;
}

}  // namespace

bool winograd(const Geometry& g) {
  if (!allow_winograd().load(std::memory_order_relaxed)) return false;
  if (!fits<Stride2Kernel4>(g) && !fits<Stride1Kernel3>(g)) return false;
  const int64_t stride = g.stride_h;  // the tiles cover each phase's out / stride pixels
  const int64_t tiles = g.batch * ((g.out_h / stride + 3) / 4) * ((g.out_w / stride + 3) / 4);
  // The stride-1 scheme's U is 4 times the weight, not 6.25: it wins from kWinogradMinTiles on.
  const bool operands_outweigh_u =
      stride == 1 || tiles * (g.in_channels + g.out_channels) * kWinogradTilesOverU.den >=
                         kWinogradTilesOverU.num * g.in_channels * g.out_channels;
  return std::min(g.in_channels, g.out_channels) >= kWinogradMinChannels &&
         tiles >= kWinogradMinTiles && operands_outweigh_u;
}

void winograd_forward(const Geometry& g, const Dense& x, const at::Tensor& weight,
                      const at::Tensor& bias, Activation activation, double negative_slope,
                      const at::Tensor& out, bool out_channels_last) {
  AT_DISPATCH_FLOATING_TYPES(x.tensor.scalar_type(), "conv_transpose2d", [&] {
    with_scheme(g, [&](auto scheme) {
      forward<decltype(scheme), scalar_t>(g, x, weight, bias, activation,
                                          static_cast<scalar_t>(negative_slope), out,
                                          out_channels_last);
    });
  });
}

void winograd_backward(const Geometry& g, const Dense& grad_output, const Dense* result,
                       const Dense& x, const at::Tensor& weight, Activation activation,
                       double negative_slope, const at::Tensor& grad_input,
                       at::Tensor* grad_weight, std::vector<double>* grad_bias) {
  AT_DISPATCH_FLOATING_TYPES(x.tensor.scalar_type(), "conv_transpose2d_backward", [&] {
    with_scheme(g, [&](auto scheme) {
      backward<decltype(scheme), scalar_t>(g, grad_output, result, x, weight, activation,
                                           static_cast<scalar_t>(negative_slope), grad_input,
                                           grad_weight, grad_bias);
    });
  });
}

}  // namespace conv_transpose2d_detail

std::atomic<bool>& allow_winograd() {
  static std::atomic<bool> allowed{true};
  return allowed;
}

}  // namespace cpu
}  // namespace fastgan
