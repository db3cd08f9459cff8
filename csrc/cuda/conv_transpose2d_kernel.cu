// Transposed convolution on CUDA as implicit GEMMs: nothing is unfolded into memory, every operand
// tile is gathered from the tensors (any strides: NCHW, channels-last, views) into shared memory.
//
// - Forward: one GEMM per group and sub-pixel phase (the header's transposed_phase_plan): rows are
//   the phase's output pixels (n, oh, ow), columns the group's output channels, and the reduction
//   runs over the phase's taps times the group's input channels. No products with the zeros a
//   strided transposed convolution inserts. Bias and activation are applied as the tile is
//   written (the epilogue).
// - grad_input: the same kind of GEMM over input pixels (an ordinary strided convolution of
//   g = grad_output * activation'(result), strided_convolution_plan).
// - grad_weight: per group and tap, (C_in/groups x C_out/groups) = x^T g over the batch's input
//   pixels that reach an output through the tap, split along that reduction into a fixed number
//   of partial sums that a second kernel adds in order (deterministic, no atomics).
// - grad_bias: the sum of g over (N, H, W) (at::sum, deterministic).
//
// Every GEMM runs in one templated kernel (implicit_gemm_kernel): 64 x 64 output tiles, 16-deep
// reduction steps through shared memory, one "Math" policy for the products: FMA in float (float32,
// or float16 / bfloat16 on GPUs before sm_80) or double, WMMA m16n16k16 with a float accumulator
// for float16 / bfloat16, WMMA TF32 (m16n16k8) for float32 when
// torch.backends.cuda.matmul.allow_tf32 is set.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string_view>
#include <type_traits>

#include "../conv_transpose2d.h"

// WMMA with bfloat16 and TF32 needs sm_80; the host only picks those paths on such devices, and
// device code compiled for older architectures leaves them empty.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define FASTGAN_WMMA_SM80 1
#else
#define FASTGAN_WMMA_SM80 0
#endif

namespace fastgan {
namespace cuda {
namespace {

using namespace fastgan::conv_t;
namespace wmma = nvcuda::wmma;

constexpr int kThreads = 256;
constexpr int kTileM = 64, kTileN = 64, kTileK = 16;
// Each thread loads kLoads elements of a 64 x 16 operand tile and writes kStores of the output tile.
constexpr int kLoads = kTileM * kTileK / kThreads;
constexpr int kStores = kTileM * kTileN / kThreads;
static_assert(kTileM == kTileN, "both operand tiles share the load mapping");
static_assert(kTileM * kTileN == 16 * kThreads, "FMA: a 4 x 4 block of the tile per thread");
static_assert(kThreads == 8 * 32, "WMMA: 8 warps, each a 16 x 32 block of the tile");

// ------------------------------------------------------------------------------------------------
// Shared memory: operand tiles A as [kTileK][kLdA] (A[m][k] at k * kLdA + m, WMMA's column-major
// matrix_a) and B as [kTileK][kLdB] (B[k][n] at k * kLdB + n, row-major matrix_b); after the main
// loop the same memory holds the accumulators C as [kTileM][kLdC]. Rows are padded by 16 bytes
// (fewer bank conflicts; keeps WMMA's 32-byte fragment alignment).

template <typename smem_t, typename acc_t>
struct SharedLayout {
  static constexpr int kLdA = kTileM + static_cast<int>(16 / sizeof(smem_t));
  static constexpr int kLdB = kTileN + static_cast<int>(16 / sizeof(smem_t));
  static constexpr int kLdC = kTileN + static_cast<int>(16 / sizeof(acc_t));
  static constexpr int kOperandBytes = kTileK * (kLdA + kLdB) * static_cast<int>(sizeof(smem_t));
  static constexpr int kResultBytes = kTileM * kLdC * static_cast<int>(sizeof(acc_t));
  static constexpr int kBytes = kOperandBytes > kResultBytes ? kOperandBytes : kResultBytes;
};

// ------------------------------------------------------------------------------------------------
// Math policies: the shared-memory element type, the conversion into it, and an Accumulator that
// multiplies one pair of shared tiles into the thread's part of the output tile and stores it.

// Plain multiply-adds: thread (ty, tx) of a 16 x 16 grid owns rows 4 ty.. and columns 4 tx.. .
template <typename scalar_t>
struct FmaMath {
  using acc_t = at::opmath_type<scalar_t>;
  using smem_t = acc_t;
  using Layout = SharedLayout<smem_t, acc_t>;
  static __device__ __forceinline__ smem_t to_shared(scalar_t v) { return static_cast<acc_t>(v); }
  static __device__ __forceinline__ smem_t zero() { return smem_t(0); }

  struct Accumulator {
    acc_t value[4][4];
    __device__ void clear() {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) value[i][j] = acc_t(0);
      }
    }
    __device__ void multiply(const smem_t* a, const smem_t* b) {
      const int row = (threadIdx.x / 16) * 4, col = (threadIdx.x % 16) * 4;
#pragma unroll
      for (int k = 0; k < kTileK; ++k) {
        acc_t a_k[4], b_k[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          a_k[i] = a[k * Layout::kLdA + row + i];
          b_k[i] = b[k * Layout::kLdB + col + i];
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
          for (int j = 0; j < 4; ++j) value[i][j] += a_k[i] * b_k[j];
        }
      }
    }
    __device__ void store(acc_t* c) const {
      const int row = (threadIdx.x / 16) * 4, col = (threadIdx.x % 16) * 4;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) c[(row + i) * Layout::kLdC + col + j] = value[i][j];
      }
    }
  };
};

// WMMA: warp w owns rows 16 (w % 4).. and columns 32 (w / 4).., two 16 x 16 accumulator
// fragments. Fragment is the matrix_a/matrix_b element type, Step the WMMA depth, Convert makes
// loaded fragment elements ready for the MMA (a no-op except for TF32's rounding).
template <typename smem_t, typename fragment_t, int Step>
struct WmmaAccumulator {
  using Layout = SharedLayout<smem_t, float>;
#if FASTGAN_WMMA_SM80
  wmma::fragment<wmma::accumulator, 16, 16, Step, float> value[2];
#endif
  __device__ void clear() {
#if FASTGAN_WMMA_SM80
    wmma::fill_fragment(value[0], 0.0f);
    wmma::fill_fragment(value[1], 0.0f);
#endif
  }
  __device__ void multiply(const smem_t* a, const smem_t* b) {
#if FASTGAN_WMMA_SM80
    const int warp = threadIdx.x / 32, row = 16 * (warp % 4), col = 32 * (warp / 4);
#pragma unroll
    for (int k = 0; k < kTileK; k += Step) {
      wmma::fragment<wmma::matrix_a, 16, 16, Step, fragment_t, wmma::col_major> a_frag;
      wmma::load_matrix_sync(a_frag, a + k * Layout::kLdA + row, Layout::kLdA);
      round(a_frag);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        wmma::fragment<wmma::matrix_b, 16, 16, Step, fragment_t, wmma::row_major> b_frag;
        wmma::load_matrix_sync(b_frag, b + k * Layout::kLdB + col + 16 * j, Layout::kLdB);
        round(b_frag);
        wmma::mma_sync(value[j], a_frag, b_frag, value[j]);
      }
    }
#endif
  }
  __device__ void store(float* c) const {
#if FASTGAN_WMMA_SM80
    const int warp = threadIdx.x / 32, row = 16 * (warp % 4), col = 32 * (warp / 4);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::store_matrix_sync(c + row * Layout::kLdC + col + 16 * j, value[j], Layout::kLdC,
                              wmma::mem_row_major);
    }
#endif
  }

 private:
  template <typename Fragment>
  static __device__ void round(Fragment& fragment) {
#if FASTGAN_WMMA_SM80
    if constexpr (std::is_same_v<fragment_t, wmma::precision::tf32>) {
#pragma unroll
      for (int i = 0; i < fragment.num_elements; ++i) {
        fragment.x[i] = wmma::__float_to_tf32(fragment.x[i]);
      }
    }
#endif
  }
};

template <typename scalar_t>
struct HalfType;
template <>
struct HalfType<at::Half> {
  using type = __half;
  static __device__ __forceinline__ type from_float(float v) { return __float2half_rn(v); }
};
template <>
struct HalfType<at::BFloat16> {
  using type = __nv_bfloat16;
  static __device__ __forceinline__ type from_float(float v) { return __float2bfloat16_rn(v); }
};

// float16 / bfloat16 operands (exact copies), float accumulation.
template <typename scalar_t>
struct HalfWmmaMath {
  using acc_t = float;
  using smem_t = typename HalfType<scalar_t>::type;
  using Layout = SharedLayout<smem_t, acc_t>;
  using Accumulator = WmmaAccumulator<smem_t, smem_t, 16>;
  static __device__ __forceinline__ smem_t to_shared(scalar_t v) {
    return HalfType<scalar_t>::from_float(static_cast<float>(v));
  }
  static __device__ __forceinline__ smem_t zero() { return HalfType<scalar_t>::from_float(0.0f); }
};

// float32 operands rounded to TF32 as they enter the tensor cores, float accumulation.
struct Tf32WmmaMath {
  using acc_t = float;
  using smem_t = float;
  using Layout = SharedLayout<smem_t, acc_t>;
  using Accumulator = WmmaAccumulator<float, wmma::precision::tf32, 8>;
  static __device__ __forceinline__ smem_t to_shared(float v) { return v; }
  static __device__ __forceinline__ smem_t zero() { return 0.0f; }
};

// ------------------------------------------------------------------------------------------------
// The GEMM kernel. A Problem supplies Block<Math>, the per-thread view of one output tile:
// init() (false: the tile is empty, the whole block leaves), the reduction steps
// [k_begin, k_end), load(step, a, b) which fills the two operand tiles, and finish(c) which
// writes the finished tile (the epilogue).

template <typename Math, typename Problem>
__global__ void __launch_bounds__(kThreads) implicit_gemm_kernel(const Problem problem) {
  using Layout = typename Math::Layout;
  using smem_t = typename Math::smem_t;
  using acc_t = typename Math::acc_t;
  __shared__ __align__(128) unsigned char shared_memory[Layout::kBytes];
  smem_t* a = reinterpret_cast<smem_t*>(shared_memory);
  smem_t* b = a + kTileK * Layout::kLdA;
  typename Problem::template Block<Math> block;
  if (!block.init(problem)) return;  // uniform over the block, before any barrier
  typename Math::Accumulator accumulator;
  accumulator.clear();
  for (int64_t step = block.k_begin; step < block.k_end; ++step) {
    block.load(problem, step, a, b);
    __syncthreads();
    accumulator.multiply(a, b);
    __syncthreads();  // the next load (or the results below) overwrites the tiles
  }
  acc_t* c = reinterpret_cast<acc_t*>(shared_memory);
  accumulator.store(c);
  __syncthreads();
  block.finish(problem, c);
}

// Element i < kLoads of the 64 x kTileK operand tile that this thread loads, as (row, k): with
// k_fastest, consecutive threads take consecutive k (for sources contiguous along the reduction),
// otherwise consecutive rows.
__device__ __forceinline__ int load_row(int i, bool k_fastest) {
  return k_fastest ? static_cast<int>(threadIdx.x) / kTileK + i * (kThreads / kTileK)
                   : static_cast<int>(threadIdx.x) % kTileM;
}
__device__ __forceinline__ int load_k(int i, bool k_fastest) {
  return k_fastest ? static_cast<int>(threadIdx.x) % kTileK
                   : static_cast<int>(threadIdx.x) / kTileM + i * (kThreads / kTileM);
}

// Element i < kStores of the 64 x 64 output tile that this thread writes, as (row, column):
// consecutive threads take consecutive columns (channels) when the destination is contiguous
// along them, otherwise consecutive rows.
__device__ __forceinline__ int store_row(int i, bool columns_fastest) {
  return columns_fastest ? static_cast<int>(threadIdx.x) / kTileN + i * (kThreads / kTileN)
                         : static_cast<int>(threadIdx.x) % kTileM;
}
__device__ __forceinline__ int store_column(int i, bool columns_fastest) {
  return columns_fastest ? static_cast<int>(threadIdx.x) % kTileN
                         : static_cast<int>(threadIdx.x) / kTileM + i * (kThreads / kTileM);
}

// Index (< 2^31, checked on the host) of a pixel in an (images, height, width) grid: 32-bit
// divisions, several times cheaper than 64-bit ones.
struct Pixel {
  int64_t image, h, w;
};
__device__ __forceinline__ Pixel split_pixel(int64_t index, int64_t height, int64_t width) {
  const uint32_t i = static_cast<uint32_t>(index), plane = static_cast<uint32_t>(height * width);
  const uint32_t image = i / plane, in_plane = i - image * plane;
  const uint32_t h = in_plane / static_cast<uint32_t>(width);
  return {image, h, in_plane - h * static_cast<uint32_t>(width)};
}

// An (N, C, H, W) tensor's data and strides (elements).
template <typename T>
struct Strided4d {
  T* data;
  int64_t stride[4];
  __device__ __forceinline__ int64_t offset(int64_t n, int64_t c, int64_t h, int64_t w) const {
    return n * stride[0] + c * stride[1] + h * stride[2] + w * stride[3];
  }
  // Whether channels are closer in memory than pixels: loads then walk channels.
  bool channels_fastest() const { return stride[1] < stride[3]; }
};

template <typename T>
Strided4d<T> strided(const at::Tensor& t) {
  return {static_cast<T*>(t.data_ptr()), {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}};
}

// ------------------------------------------------------------------------------------------------
// Gathering convolutions: the forward (transposed, per sub-pixel phase) and grad_input (strided).
//
// GEMM (group, phase): D[m, co] = sum over taps (th, tw) and channels c of
//   src[n, group * reduce + c, src_h(m) + offset_h(th), src_w(m) + offset_w(tw)]
//   * weight[group, kh(th), kw(tw), c, co],
// rows m = (n, jh, jw) over the phase's destination pixels, written to dst[n, group * columns + co,
// dst_h(m), dst_w(m)] as activation(D + bias). `weight` is packed (groups, kH, kW, reduce, columns).

template <typename scalar_t>
struct GatherConvolution {
  Strided4d<const scalar_t> src;
  const scalar_t* weight;
  const scalar_t* bias;  // null: none
  Strided4d<scalar_t> dst;
  Geometry g;
  bool transposed;  // the forward: sub-pixel phases; else grad_input, one strided convolution
  int64_t reduce, columns;  // channels per group: reduced over, and of dst
  Activation activation;
  double negative_slope;
  bool src_channels_fastest, dst_channels_fastest;

  // blockIdx.z = phase * groups + group, phase = phase_h * stride_w + phase_w (forward).
  __device__ AxisPlan plan_h(int64_t phase) const {
    return transposed ? transposed_phase_plan(phase / g.stride_w, g.in_h, g.out_h, g.kernel_h,
                                              g.stride_h, g.padding_h, g.dilation_h)
                      : strided_convolution_plan(g.in_h, g.out_h, g.kernel_h, g.stride_h,
                                                 g.padding_h, g.dilation_h);
  }
  __device__ AxisPlan plan_w(int64_t phase) const {
    return transposed ? transposed_phase_plan(phase % g.stride_w, g.in_w, g.out_w, g.kernel_w,
                                              g.stride_w, g.padding_w, g.dilation_w)
                      : strided_convolution_plan(g.in_w, g.out_w, g.kernel_w, g.stride_w,
                                                 g.padding_w, g.dilation_w);
  }

  template <typename Math>
  struct Block {
    using acc_t = typename Math::acc_t;
    AxisPlan h, w;
    int64_t group, rows, m0, n0, chunks, k_begin, k_end;
    // The rows this thread loads: image offset in src, source position before the tap's offset.
    int64_t row_image[kLoads], row_h[kLoads], row_w[kLoads];
    bool row_valid[kLoads];

    __device__ bool init(const GatherConvolution& p) {
      group = blockIdx.z % p.g.groups;
      const int64_t phase = blockIdx.z / p.g.groups;
      h = p.plan_h(phase);
      w = p.plan_w(phase);
      rows = p.g.batch * h.count * w.count;
      m0 = static_cast<int64_t>(blockIdx.x) * kTileM;
      n0 = static_cast<int64_t>(blockIdx.y) * kTileN;
      if (m0 >= rows) return false;
      chunks = (p.reduce + kTileK - 1) / kTileK;
      k_begin = 0;
      k_end = h.taps * w.taps * chunks;
#pragma unroll
      for (int i = 0; i < kLoads; ++i) {
        const int64_t m = m0 + load_row(i, p.src_channels_fastest);
        row_valid[i] = m < rows;
        const Pixel pixel = split_pixel(row_valid[i] ? m : 0, h.count, w.count);
        row_image[i] = pixel.image * p.src.stride[0];
        row_h[i] = h.src_first + pixel.h * h.src_step;
        row_w[i] = w.src_first + pixel.w * w.src_step;
      }
      return true;
    }

    __device__ void load(const GatherConvolution& p, int64_t step, typename Math::smem_t* a,
                         typename Math::smem_t* b) const {
      using Layout = typename Math::Layout;
      const int64_t tap = step / chunks, c0 = (step - tap * chunks) * kTileK;
      const int64_t th = tap / w.taps, tw = tap % w.taps;
      const int64_t offset_h = h.offset_first + th * h.offset_step;
      const int64_t offset_w = w.offset_first + tw * w.offset_step;
      const int64_t kh = h.tap_first + th * h.tap_step, kw = w.tap_first + tw * w.tap_step;
      const bool k_fastest = p.src_channels_fastest;
#pragma unroll
      for (int i = 0; i < kLoads; ++i) {
        const int row = load_row(i, k_fastest), k = load_k(i, k_fastest);
        const int64_t c = c0 + k, ih = row_h[i] + offset_h, iw = row_w[i] + offset_w;
        const bool valid = row_valid[i] && c < p.reduce && ih >= 0 && ih < h.src_size &&
                           iw >= 0 && iw < w.src_size;
        a[k * Layout::kLdA + row] =
            valid ? Math::to_shared(p.src.data[row_image[i] + (group * p.reduce + c) * p.src.stride[1] +
                                               ih * p.src.stride[2] + iw * p.src.stride[3]])
                  : Math::zero();
      }
      const scalar_t* weight =
          p.weight + (((group * p.g.kernel_h + kh) * p.g.kernel_w + kw) * p.reduce + c0) * p.columns;
#pragma unroll
      for (int i = 0; i < kLoads; ++i) {
        const int column = load_row(i, false), k = load_k(i, false);
        const bool valid = c0 + k < p.reduce && n0 + column < p.columns;
        b[k * Layout::kLdB + column] =
            valid ? Math::to_shared(weight[k * p.columns + n0 + column]) : Math::zero();
      }
    }

    __device__ void finish(const GatherConvolution& p, const acc_t* c) const {
      using Layout = typename Math::Layout;
      const acc_t slope = static_cast<acc_t>(p.negative_slope);
#pragma unroll 4
      for (int i = 0; i < kStores; ++i) {
        const int row = store_row(i, p.dst_channels_fastest);
        const int column = store_column(i, p.dst_channels_fastest);
        const int64_t m = m0 + row, co = n0 + column;
        if (m >= rows || co >= p.columns) continue;
        const Pixel pixel = split_pixel(m, h.count, w.count);
        const int64_t oh = h.dst_first + pixel.h * h.dst_step;
        const int64_t ow = w.dst_first + pixel.w * w.dst_step;
        const int64_t channel = group * p.columns + co;
        acc_t y = c[row * Layout::kLdC + column];
        if (p.bias != nullptr) y += static_cast<acc_t>(p.bias[channel]);
        p.dst.data[p.dst.offset(pixel.image, channel, oh, ow)] =
            static_cast<scalar_t>(activate(p.activation, y, slope));
      }
    }
  };
};

// ------------------------------------------------------------------------------------------------
// grad_weight. GEMM (group, tap, split): P[ci, co] = sum over k = (n, ih, iw) of
//   x[n, group * C_in/groups + ci, ih, iw] * g[n, group * C_out/groups + co, oh, ow]
// with (oh, ow) the output pixel that (ih, iw) reaches through the tap, k over the input pixels
// that reach one (inputs_reaching_output) and over this split's share of them; written to
// partial[split, group, tap, ci, co].

template <typename scalar_t>
struct WeightGradient {
  Strided4d<const scalar_t> x, g_out;  // g_out: the gradient at the pre-activation
  void* partial;                       // acc_t (splits, groups, taps, rows, columns)
  Geometry g;
  int64_t rows, columns, splits;  // rows = C_in/groups, columns = C_out/groups
  bool x_channels_fastest, g_channels_fastest;

  template <typename Math>
  struct Block {
    using acc_t = typename Math::acc_t;
    int64_t group, tap, split, kh, kw, m0, n0, k_begin, k_end, reduction;
    Range ih, iw;

    __device__ bool init(const WeightGradient& p) {
      const int64_t taps = p.g.kernel_h * p.g.kernel_w;
      split = blockIdx.z % p.splits;
      tap = blockIdx.z / p.splits % taps;
      group = blockIdx.z / p.splits / taps;
      kh = tap / p.g.kernel_w;
      kw = tap % p.g.kernel_w;
      m0 = static_cast<int64_t>(blockIdx.x) * kTileM;
      n0 = static_cast<int64_t>(blockIdx.y) * kTileN;
      ih = inputs_reaching_output(kh, p.g.in_h, p.g.out_h, p.g.stride_h, p.g.padding_h,
                                  p.g.dilation_h);
      iw = inputs_reaching_output(kw, p.g.in_w, p.g.out_w, p.g.stride_w, p.g.padding_w,
                                  p.g.dilation_w);
      reduction = p.g.batch * ih.count * iw.count;
      const int64_t steps = (reduction + kTileK - 1) / kTileK;
      const int64_t per_split = (steps + p.splits - 1) / p.splits;
      k_begin = std::min(steps, split * per_split);
      k_end = std::min(steps, k_begin + per_split);
      return true;  // even an empty share writes its (zero) partial sums
    }

    // Reduction index k -> (image, input row, input column).
    __device__ Pixel input_pixel(int64_t k) const {
      const Pixel pixel = split_pixel(k, ih.count, iw.count);
      return {pixel.image, ih.first + pixel.h, iw.first + pixel.w};
    }

    __device__ void load(const WeightGradient& p, int64_t step, typename Math::smem_t* a,
                         typename Math::smem_t* b) const {
      using Layout = typename Math::Layout;
      const int64_t k0 = step * kTileK;
      // A[ci, k] = x: NCHW x is contiguous along k (input columns), channels-last along ci.
      const bool a_k_fastest = !p.x_channels_fastest;
#pragma unroll
      for (int i = 0; i < kLoads; ++i) {
        const int row = load_row(i, a_k_fastest), k = load_k(i, a_k_fastest);
        const int64_t ci = m0 + row;
        typename Math::smem_t value = Math::zero();
        if (ci < p.rows && k0 + k < reduction) {
          const Pixel in = input_pixel(k0 + k);
          value = Math::to_shared(p.x.data[p.x.offset(in.image, group * p.rows + ci, in.h, in.w)]);
        }
        a[k * Layout::kLdA + row] = value;
      }
      // B[k, co] = g at the output pixel the tap reaches.
      const bool b_k_fastest = !p.g_channels_fastest;
#pragma unroll
      for (int i = 0; i < kLoads; ++i) {
        const int column = load_row(i, b_k_fastest), k = load_k(i, b_k_fastest);
        const int64_t co = n0 + column;
        typename Math::smem_t value = Math::zero();
        if (co < p.columns && k0 + k < reduction) {
          const Pixel in = input_pixel(k0 + k);
          const int64_t oh = in.h * p.g.stride_h - p.g.padding_h + kh * p.g.dilation_h;
          const int64_t ow = in.w * p.g.stride_w - p.g.padding_w + kw * p.g.dilation_w;
          value = Math::to_shared(
              p.g_out.data[p.g_out.offset(in.image, group * p.columns + co, oh, ow)]);
        }
        b[k * Layout::kLdB + column] = value;
      }
    }

    __device__ void finish(const WeightGradient& p, const acc_t* c) const {
      using Layout = typename Math::Layout;
      const int64_t taps = p.g.kernel_h * p.g.kernel_w;
      acc_t* partial = static_cast<acc_t*>(p.partial) +
                       ((split * p.g.groups + group) * taps + tap) * p.rows * p.columns;
#pragma unroll 4
      for (int i = 0; i < kStores; ++i) {
        const int row = store_row(i, true), column = store_column(i, true);
        const int64_t ci = m0 + row, co = n0 + column;
        if (ci < p.rows && co < p.columns) {
          partial[ci * p.columns + co] = c[row * Layout::kLdC + column];
        }
      }
    }
  };
};

// grad_weight (C_in, C_out/groups, kH, kW), contiguous: the splits' partial sums added in order.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    sum_partials_kernel(const acc_t* partial, scalar_t* grad_weight, Geometry g, int64_t splits) {
  const int64_t rows = g.in_channels / g.groups, columns = g.out_channels / g.groups;
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t count = g.in_channels * columns * taps;
  const int64_t slice = g.groups * taps * rows * columns;  // one split's partial sums
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < count;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t tap = index % taps, co = index / taps % columns, channel = index / taps / columns;
    const int64_t group = channel / rows, ci = channel % rows;
    const acc_t* source = partial + ((group * taps + tap) * rows + ci) * columns + co;
    acc_t sum = 0;
    for (int64_t split = 0; split < splits; ++split) sum += source[split * slice];
    grad_weight[index] = static_cast<scalar_t>(sum);
  }
}

// ------------------------------------------------------------------------------------------------
// Element-wise activation terms over dense tensors of one layout (null outputs are skipped):
//   first = grad * activation'(result), second = grad * grad_output * activation''(result).

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    activation_terms_kernel(int64_t count, const scalar_t* grad, const scalar_t* grad_output,
                            const scalar_t* result, scalar_t* first, scalar_t* second,
                            Activation activation, double negative_slope) {
  using T = at::opmath_type<scalar_t>;
  const T slope = static_cast<T>(negative_slope);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const T gradient = static_cast<T>(grad[i]), out = static_cast<T>(result[i]);
    if (first != nullptr) {
      first[i] = static_cast<scalar_t>(gradient * activation_grad(activation, out, slope));
    }
    if (second != nullptr) {
      second[i] = static_cast<scalar_t>(gradient * static_cast<T>(grad_output[i]) *
                                        activation_grad_derivative(activation, out));
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Host

struct Device {
  cudaStream_t stream;
  int multiprocessors;
  bool sm80;  // compute capability >= 8.0: WMMA with bfloat16 and TF32
};

Device current_device(const at::Tensor& t) {
  const int index = t.get_device();
  int multiprocessors = 0, major = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, index));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, index));
  return {c10::cuda::getCurrentCUDAStream(index).stream(), multiprocessors, major >= 8};
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T>
struct Type {
  using type = T;
};

// fn(Type<Math>{}) with the Math policy for scalar_t on this device.
template <typename scalar_t, typename Fn>
void with_math(const Device& device, const Fn& fn) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (device.sm80 && at::globalContext().allowTF32CuBLAS()) {
      fn(Type<Tf32WmmaMath>{});
    } else {
      fn(Type<FmaMath<float>>{});
    }
  } else if constexpr (std::is_same_v<scalar_t, at::Half> ||
                       std::is_same_v<scalar_t, at::BFloat16>) {
    if (device.sm80) {
      fn(Type<HalfWmmaMath<scalar_t>>{});
    } else {
      fn(Type<FmaMath<scalar_t>>{});
    }
  } else {
    fn(Type<FmaMath<scalar_t>>{});
  }
}

void check_grid(const char* op, int64_t x, int64_t y, int64_t z) {
  TORCH_CHECK(x <= std::numeric_limits<int32_t>::max() && y <= 65535 && z <= 65535, op,
              ": the problem is too large for one launch (grid ", x, " x ", y, " x ", z,
              "; at most 2^31-1 x 65535 x 65535 tiles)");
}

// A grid of x * y * z output tiles (blockIdx.z: the problem's GEMM index).
template <typename Math, typename Problem>
void launch_gemm(const char* op, const Problem& problem, int64_t x, int64_t y, int64_t z,
                 const Device& device) {
  if (x == 0 || y == 0 || z == 0) return;
  check_grid(op, x, y, z);
  implicit_gemm_kernel<Math, Problem>
      <<<dim3(static_cast<unsigned>(x), static_cast<unsigned>(y), static_cast<unsigned>(z)),
         kThreads, 0, device.stream>>>(problem);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

int64_t grid_stride_blocks(int64_t count, const Device& device) {
  return std::clamp<int64_t>(ceil_div(count, kThreads), 1, int64_t{device.multiprocessors} * 8);
}

void check_cuda(const char* op, const at::Tensor& input) {
  const auto dtype = input.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                  dtype == at::kBFloat16,
              op, ": the CUDA kernels support float32, float64, float16 and bfloat16, got ", dtype);
}

// Kernel sizes, strides and dilations index per-block loops; keep them (and everything derived)
// far from overflow.
void check_geometry(const char* op, const Geometry& g) {
  constexpr int64_t limit = std::numeric_limits<int32_t>::max();
  for (const int64_t v : {g.kernel_h, g.kernel_w, g.stride_h, g.stride_w, g.dilation_h,
                          g.dilation_w, g.padding_h, g.padding_w}) {
    TORCH_CHECK(v <= (1 << 20), op, ": kernel size, stride, padding and dilation must be at most ",
                1 << 20, " on CUDA, got ", v);
  }
  TORCH_CHECK(g.in_channels <= limit && g.out_channels <= limit, op,
              ": at most 2^31-1 channels are supported on CUDA");
  TORCH_CHECK(g.batch * g.in_h * g.in_w <= limit && g.batch * g.out_h * g.out_w <= limit, op,
              ": at most 2^31-1 input and output pixels (batch * height * width) are supported on "
              "CUDA, got ", g.batch * g.in_h * g.in_w, " and ", g.batch * g.out_h * g.out_w);
}

at::Tensor empty_in_layout_of(const at::Tensor& like, int64_t n, int64_t c, int64_t h, int64_t w) {
  return stored_channels_last(like)
             ? at::empty({n, h, w, c}, like.options()).permute({0, 3, 1, 2})
             : at::empty({n, c, h, w}, like.options());
}

// The weight (C_in, C_out/groups, kH, kW) as (groups, kH, kW, reduce, columns): for the forward
// (reduce = C_in/groups, columns = C_out/groups) or transposed for grad_input.
at::Tensor pack_weight(const at::Tensor& weight, const Geometry& g, bool for_grad_input) {
  const at::Tensor grouped = weight.reshape(
      {g.groups, g.in_channels / g.groups, g.out_channels / g.groups, g.kernel_h, g.kernel_w});
  return for_grad_input ? grouped.permute({0, 3, 4, 2, 1}).contiguous()
                        : grouped.permute({0, 3, 4, 1, 2}).contiguous();
}

// first = grad * activation'(result) and second = grad * grad_output * activation''(result)
// (either may be undefined: not computed) over `count` dense elements in one storage order.
void launch_activation_terms(const at::Tensor& grad, const at::Tensor& grad_output,
                             const at::Tensor& result, const at::Tensor& first,
                             const at::Tensor& second, Activation activation,
                             double negative_slope, const Device& device) {
  const int64_t count = result.numel();
  if (count == 0 || (!first.defined() && !second.defined())) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, result.scalar_type(),
                                  "fastgan_conv_transpose2d_activation_terms_cuda", [&] {
    auto data_or_null = [](const at::Tensor& t) {
      return t.defined() ? t.mutable_data_ptr<scalar_t>() : nullptr;
    };
    activation_terms_kernel<scalar_t>
        <<<static_cast<unsigned>(grid_stride_blocks(count, device)), kThreads, 0,
           device.stream>>>(count, grad.const_data_ptr<scalar_t>(),
                            grad_output.defined() ? grad_output.const_data_ptr<scalar_t>()
                                                  : nullptr,
                            result.const_data_ptr<scalar_t>(), data_or_null(first),
                            data_or_null(second), activation, negative_slope);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// A GatherConvolution problem (its channels_fastest flags derived here) on a rows x columns x
// gemms grid of tiles.
template <typename scalar_t>
void launch_gather_convolution(const char* op, GatherConvolution<scalar_t> problem, int64_t rows,
                               int64_t columns, int64_t gemms, const Device& device) {
  problem.src_channels_fastest = problem.src.channels_fastest();
  problem.dst_channels_fastest = problem.dst.channels_fastest();
  with_math<scalar_t>(device, [&](auto math) {
    launch_gemm<typename decltype(math)::type>(op, problem, ceil_div(rows, kTileM),
                                               ceil_div(columns, kTileN), gemms, device);
  });
}

// ------------------------------------------------------------------------------------------------
// The ops

at::Tensor conv_transpose2d(const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias_opt, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef output_padding,
                            int64_t groups, at::IntArrayRef dilation,
                            c10::string_view activation_name, double negative_slope) {
  constexpr const char* op = "fastgan::conv_transpose2d";
  const at::Tensor bias = bias_opt.value_or(at::Tensor());
  const Geometry g = check_and_describe(op, input, weight, bias, stride, padding, output_padding,
                                        groups, dilation);
  check_cuda(op, input);
  check_geometry(op, g);
  const Activation activation = checked_activation(op, activation_name, negative_slope);
  c10::cuda::CUDAGuard guard(input.device());

  at::Tensor out = empty_in_layout_of(input, g.batch, g.out_channels, g.out_h, g.out_w);
  if (out.numel() == 0) return out;
  const at::Tensor packed = pack_weight(weight, g, false);
  const at::Tensor bias_dense = bias.defined() ? bias.contiguous() : bias;
  const Device device = current_device(input);
  // Every phase has at most ceil(out / stride) positions per axis.
  const int64_t most_rows =
      g.batch * ceil_div(g.out_h, g.stride_h) * ceil_div(g.out_w, g.stride_w);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "fastgan_conv_transpose2d_cuda", [&] {
    launch_gather_convolution<scalar_t>(
        op,
        {strided<const scalar_t>(input), packed.const_data_ptr<scalar_t>(),
         bias_dense.defined() ? bias_dense.const_data_ptr<scalar_t>() : nullptr,
         strided<scalar_t>(out), g, true, g.in_per_group(), g.out_per_group(), activation,
         negative_slope, false, false},
        most_rows, g.out_per_group(), g.groups * g.stride_h * g.stride_w, device);
  });
  return out;
}

// The gradient at the pre-activation, g = grad_output * activation'(result), dense in the
// layout of `like`; grad_output itself when there is no activation.
at::Tensor preactivation_gradient(const at::Tensor& grad_output, const at::Tensor& result,
                                  Activation activation, double negative_slope,
                                  const at::Tensor& like, const Device& device) {
  if (activation == Activation::kNone) return grad_output;
  const auto format = stored_channels_last(like) ? at::MemoryFormat::ChannelsLast
                                                 : at::MemoryFormat::Contiguous;
  const at::Tensor go = grad_output.contiguous(format), res = result.contiguous(format);
  at::Tensor grad = at::empty_like(go);
  launch_activation_terms(go, at::Tensor(), res, grad, at::Tensor(), activation, negative_slope,
                          device);
  return grad;
}

// Partial sums of grad_weight: enough splits of each (group, tap) reduction for about two waves
// of blocks, each split at least kMinStepsPerSplit reduction steps, within the grid's and a
// workspace's limits.
constexpr int64_t kMinStepsPerSplit = 8;
constexpr int64_t kMaxWorkspace = int64_t{1} << 26;  // elements

int64_t weight_gradient_splits(const Geometry& g, const Device& device) {
  const int64_t tiles = ceil_div(g.in_per_group(), kTileM) * ceil_div(g.out_per_group(), kTileN);
  const int64_t gemms = g.groups * g.taps();
  const int64_t steps = ceil_div(g.batch * g.in_h * g.in_w, kTileK);
  int64_t splits = std::min(ceil_div(2 * int64_t{device.multiprocessors}, tiles * gemms),
                            ceil_div(steps, kMinStepsPerSplit));
  splits = std::min(splits, 65535 / std::max<int64_t>(1, gemms));
  splits = std::min(splits, kMaxWorkspace / std::max<int64_t>(1, gemms * g.in_per_group() *
                                                                     g.out_per_group()));
  return std::max<int64_t>(1, splits);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_transpose2d_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& result_opt, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef output_padding, int64_t groups, at::IntArrayRef dilation,
    c10::string_view activation_name, double negative_slope, std::array<bool, 3> output_mask) {
  constexpr const char* op = "fastgan::conv_transpose2d_backward";
  const Geometry g = check_and_describe(op, input, weight, at::Tensor(), stride, padding,
                                        output_padding, groups, dilation);
  check_cuda(op, input);
  check_geometry(op, g);
  const Activation activation = checked_activation(op, activation_name, negative_slope);
  const at::Tensor result = result_opt.value_or(at::Tensor());
  check_backward_tensors(op, grad_output, result, input, g, activation, activation_name);
  c10::cuda::CUDAGuard guard(input.device());

  const bool want_input = output_mask[0], want_weight = output_mask[1], want_bias = output_mask[2];
  // Outputs not asked for are distinct empty tensors (outputs must not alias).
  at::Tensor grad_input = input.new_empty({0}), grad_weight = input.new_empty({0}),
             grad_bias = input.new_empty({0});
  if (want_input) grad_input = empty_in_layout_of(input, g.batch, g.in_channels, g.in_h, g.in_w);
  if (want_weight) grad_weight = at::empty(weight.sizes(), weight.options());
  if (!want_input && !want_weight && !want_bias) return {grad_input, grad_weight, grad_bias};
  if (grad_output.numel() == 0) {
    // No output pixels (an empty batch or no output channels): every gradient is zero.
    if (want_input) grad_input.zero_();
    if (want_weight) grad_weight.zero_();
    if (want_bias) grad_bias = at::zeros({g.out_channels}, input.options());
    return {grad_input, grad_weight, grad_bias};
  }
  const Device device = current_device(input);
  const at::Tensor grad = preactivation_gradient(grad_output, result, activation, negative_slope,
                                                 input, device);
  if (want_bias) {
    grad_bias = grad.sum({0, 2, 3}, false, at::toOpMathType(input.scalar_type()))
                    .to(input.scalar_type());
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "fastgan_conv_transpose2d_backward_cuda", [&] {
    if (want_input && grad_input.numel() > 0) {
      const at::Tensor packed = pack_weight(weight, g, true);
      launch_gather_convolution<scalar_t>(
          op,
          {strided<const scalar_t>(grad), packed.const_data_ptr<scalar_t>(), nullptr,
           strided<scalar_t>(grad_input), g, false, g.out_per_group(), g.in_per_group(),
           Activation::kNone, 0.0, false, false},
          g.batch * g.in_h * g.in_w, g.in_per_group(), g.groups, device);
    }
    if (want_weight && grad_weight.numel() > 0) {
      const int64_t splits = weight_gradient_splits(g, device);
      with_math<scalar_t>(device, [&](auto math) {
        using Math = typename decltype(math)::type;
        using acc_t = typename Math::acc_t;
        const at::Tensor partial = at::empty(
            {splits * g.groups * g.taps() * g.in_per_group() * g.out_per_group()},
            input.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
        WeightGradient<scalar_t> problem{strided<const scalar_t>(input),
                                         strided<const scalar_t>(grad),
                                         partial.data_ptr(),
                                         g,
                                         g.in_per_group(),
                                         g.out_per_group(),
                                         splits,
                                         false,
                                         false};
        problem.x_channels_fastest = problem.x.channels_fastest();
        problem.g_channels_fastest = problem.g_out.channels_fastest();
        launch_gemm<Math>(op, problem, ceil_div(g.in_per_group(), kTileM),
                          ceil_div(g.out_per_group(), kTileN), g.groups * g.taps() * splits,
                          device);
        sum_partials_kernel<scalar_t, acc_t>
            <<<static_cast<unsigned>(grid_stride_blocks(grad_weight.numel(), device)), kThreads,
               0, device.stream>>>(partial.const_data_ptr<acc_t>(),
                                   grad_weight.mutable_data_ptr<scalar_t>(), g, splits);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
  });
  return {grad_input, grad_weight, grad_bias};
}

std::tuple<at::Tensor, at::Tensor> conv_transpose2d_activation_double_backward(
    const at::Tensor& grad_preactivation, const at::Tensor& grad_output, const at::Tensor& result,
    c10::string_view activation_name, double negative_slope, std::array<bool, 2> output_mask) {
  constexpr const char* op = "fastgan::conv_transpose2d_activation_double_backward";
  const ActivationDoubleBackward a = prepare_activation_double_backward(
      op, grad_preactivation, grad_output, result, activation_name, negative_slope, output_mask);
  check_cuda(op, result);
  c10::cuda::CUDAGuard guard(result.device());
  // Outputs not asked for are empty: not computed.
  auto wanted = [](const at::Tensor& t, bool want) { return want ? t : at::Tensor(); };
  launch_activation_terms(a.grad_preactivation, a.grad_output, a.result,
                          wanted(a.grad_grad_output, output_mask[0]),
                          wanted(a.grad_result, output_mask[1]), a.activation, negative_slope,
                          current_device(result));
  return {a.grad_grad_output, a.grad_result};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  register_kernels(m, &conv_transpose2d, &conv_transpose2d_backward,
                   &conv_transpose2d_activation_double_backward);
}

}  // namespace cuda
}  // namespace fastgan
