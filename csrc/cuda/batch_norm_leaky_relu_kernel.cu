// Fused BatchNorm + LeakyReLU on CUDA. Every op is at most three launches on the current stream:
// a per-channel reduction into partial sums, a per-channel kernel that combines them and evaluates
// the header's coefficients, and one element-wise pass. Channels-first (N, C, S) and channels-last
// (N, S, C) storage both run natively, and nothing is ever read back to the host. Training's
// forward adds a re-sum pass (two launches) for the channels whose shifted sums were inaccurate.
//
// Every pass computes y = (x - mean) * scale + bias: float32 then rounds the small x - mean rather
// than a large x * scale (exact for constant channels, accurate when |mean| >> std), and the
// backward passes' constants go with x - mean too (the header's centered_* coefficients).
//
// UNVERIFIED ON A GPU: this file is compiled (scripts/cuda_check.sh) and its kernels are run on the
// CPU by scripts/cuda_emulation/emulate_batch_norm_leaky_relu.py, but its kernels as they stand
// have not been run on CUDA hardware.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "../batch_norm_leaky_relu.h"
#include "../channel_layout.h"

namespace fastgan {
namespace cuda {
namespace {

using namespace fastgan::bn_lrelu;

constexpr int kThreads = 256;  // threads per block, for every kernel
constexpr int kWarp = 32;

// ------------------------------------------------------------------------------------------------
// Device helpers

// A fixed-size array that can be passed to a kernel by value.
template <typename P, int N>
struct Pointers {
  P value[N];
};

// Explicit fma, so that every pass rounds y = xc * scale + bias identically (same activation mask).
template <typename T>
__device__ __forceinline__ T fused_multiply_add(T a, T b, T c) {
  if constexpr (std::is_same_v<T, double>) {
    return ::fma(a, b, c);
  } else {
    return ::fmaf(a, b, c);
  }
}

// Kahan-compensated running sum: a thread's serial float sum stays accurate to a few ulps however
// many elements it adds. Double accumulation is accurate enough uncompensated.
template <typename T>
struct RunningSum {
  T sum = T(0), compensation = T(0);
  __device__ void add(T value) {
    if constexpr (std::is_same_v<T, double>) {
      sum += value;
    } else {
      const T corrected = value - compensation;
      const T total = sum + corrected;
      compensation = (total - sum) - corrected;
      sum = total;
    }
  }
  __device__ T value() const { return sum - compensation; }
};

// V consecutive elements, loaded and stored as one vector access.
template <typename scalar_t, int V>
struct alignas(sizeof(scalar_t) * V) Pack {
  scalar_t value[V];
};

// Elements [offset, offset + V) in op-math type; a null pointer (an absent input) reads as zeros.
template <int V, typename scalar_t, typename T>
__device__ __forceinline__ void load(const scalar_t* data, int64_t offset, T (&out)[V]) {
  if (data == nullptr) {
#pragma unroll
    for (int v = 0; v < V; ++v) out[v] = T(0);
    return;
  }
  const Pack<scalar_t, V> pack = *reinterpret_cast<const Pack<scalar_t, V>*>(data + offset);
#pragma unroll
  for (int v = 0; v < V; ++v) out[v] = static_cast<T>(pack.value[v]);
}

template <int V, typename scalar_t, typename T>
__device__ __forceinline__ void store(scalar_t* data, int64_t offset, const T (&in)[V]) {
  Pack<scalar_t, V> pack;
#pragma unroll
  for (int v = 0; v < V; ++v) pack.value[v] = static_cast<scalar_t>(in[v]);
  *reinterpret_cast<Pack<scalar_t, V>*>(data + offset) = pack;
}

// ------------------------------------------------------------------------------------------------
// Per-channel state

// Per-channel inputs as device pointers; a null weight reads as 1, a null bias as 0.
template <typename T>
struct ChannelParams {
  const T* mean;
  const T* var;
  const T* weight;
  const T* bias;
  T eps;
};

// y = (x - mean) * scale + bias.
template <typename T>
struct ChannelState {
  T mean, invstd, weight, scale, bias;
};

// noinline: a single instance of this code serves every kernel, so the reductions and the
// element-wise passes derive bit-identical scale and agree on the activation mask.
template <typename T>
__device__ __noinline__ ChannelState<T> channel_state(ChannelParams<T> params, int64_t c) {
  const T mean = params.mean[c];
  const T invstd = inverse_std(params.var[c], params.eps);
  const T weight = params.weight != nullptr ? params.weight[c] : T(1);
  const T bias = params.bias != nullptr ? params.bias[c] : T(0);
  return {mean, invstd, weight, affine(mean, invstd, weight, bias).scale, bias};
}

// leaky_relu'(y) for xc = x - mean.
template <typename T>
__device__ __forceinline__ T activation_grad(T xc, T scale, T bias, T slope) {
  return leaky_relu_grad(fused_multiply_add(xc, scale, bias), slope);
}

// Writes a channel's P coefficients to coefficients[p * channels + c].
template <typename T, int P>
__device__ __forceinline__ void store_coefficients(T* coefficients, int64_t channels, int64_t c,
                                                   const T (&values)[P]) {
#pragma unroll
  for (int p = 0; p < P; ++p) coefficients[p * channels + c] = values[p];
}

// ------------------------------------------------------------------------------------------------
// Reductions. An op has K sums over I inputs: channel(c) gives the per-channel constants, and
// accumulate(constants, elements, sums) adds one element of each input. The reductions can be
// restricted to the channels c with selected[c] (the other channels' sums are not written).

// Sums of d and d^2, d = x - shift (see moments_from_shifted_sums). The shift is the channel's
// first element, or in a re-sum, center[c] (the mean from the first sums).
template <typename scalar_t>
struct StatsReduce {
  using T = at::opmath_type<scalar_t>;
  static constexpr int K = 2, I = 1;
  const scalar_t* x;
  int64_t channel_stride;  // x[c * channel_stride] is channel c's first element
  const T* center;         // null for the first sums
  struct Channel {
    T shift;
  };
  __device__ Channel channel(int64_t c) const {
    return {center != nullptr ? center[c] : static_cast<T>(x[c * channel_stride])};
  }
  __device__ void accumulate(const Channel& ch, const T (&in)[I], RunningSum<T> (&acc)[K]) const {
    const T d = in[0] - ch.shift;
    acc[0].add(d);
    acc[1].add(d * d);
  }
};

// sum(g) and sum(g * (x - mean)) over inputs (x, grad_output), g = grad_output * leaky_relu'(y);
// the double backward's reduction adds sum(ggi), sum(ggi * xc) and sum(ggi * g) over a third input,
// grad_grad_input (the five sums of DoubleBackwardSums).
template <typename scalar_t, bool kDoubleBackward>
struct GradientReduce {
  using T = at::opmath_type<scalar_t>;
  static constexpr int K = kDoubleBackward ? 5 : 2, I = kDoubleBackward ? 3 : 2;
  ChannelParams<T> params;
  T slope;
  using Channel = ChannelState<T>;
  __device__ Channel channel(int64_t c) const { return channel_state(params, c); }
  __device__ void accumulate(const Channel& ch, const T (&in)[I], RunningSum<T> (&acc)[K]) const {
    const T xc = in[0] - ch.mean;
    const T g = in[1] * activation_grad(xc, ch.scale, ch.bias, slope);
    acc[0].add(g);
    acc[1].add(g * xc);
    if constexpr (kDoubleBackward) {
      acc[2].add(in[2]);
      acc[3].add(in[2] * xc);
      acc[4].add(in[2] * g);
    }
  }
};

// Each column's (threadIdx.x) K sums added over the block's rows (threadIdx.y) in a fixed tree,
// written to partial[(k * channels + c) * splits + split]. blockDim.y is a power of two.
template <typename T, int K>
__device__ void store_block_sums(const RunningSum<T> (&acc)[K], T* partial, int64_t c,
                                 int64_t channels, int64_t split, int64_t splits) {
  __shared__ T shared[K][kThreads];
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
#pragma unroll
  for (int k = 0; k < K; ++k) shared[k][tid] = acc[k].value();
  __syncthreads();
  for (int rows = blockDim.y / 2; rows > 0; rows /= 2) {
    if (threadIdx.y < rows) {
#pragma unroll
      for (int k = 0; k < K; ++k) shared[k][tid] += shared[k][tid + rows * blockDim.x];
    }
    __syncthreads();
  }
  if (threadIdx.y == 0 && c < channels) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      partial[(k * channels + c) * splits + split] = shared[k][threadIdx.x];
    }
  }
}

// Loads in flight per thread and input: enough bytes outstanding to cover memory latency without
// spending too many registers.
template <int V>
constexpr int kUnroll = V >= 8 ? 1 : (V >= 4 ? 2 : 4);

// Channels-first: block (1, kThreads) per (channel, split). The channel's N * S elements are packs
// of V along S; thread t of split b takes packs b * kThreads + t + j * splits * kThreads, tracked
// as (row n, pack s in row) with carries instead of divisions.
template <typename Op, typename scalar_t, int V>
__global__ void __launch_bounds__(kThreads)
    reduce_channels_first_kernel(Op op, Pointers<const scalar_t*, Op::I> in, int64_t batch,
                                 int64_t channels, int64_t spatial, const bool* selected,
                                 at::opmath_type<scalar_t>* partial) {
  using T = at::opmath_type<scalar_t>;
  constexpr int K = Op::K, I = Op::I, U = kUnroll<V>;
  const int64_t c = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
  if (selected != nullptr && !selected[c]) return;  // the whole block
  const auto ch = op.channel(c);
  RunningSum<T> acc[K];
  const int64_t row_packs = spatial / V, step = splits * kThreads;
  const int64_t step_n = step / row_packs, step_s = step % row_packs;
  const int64_t first = split * kThreads + threadIdx.y;
  int64_t n = first / row_packs, s = first % row_packs;
  while (n < batch) {
    T values[U][I][V];
    bool valid[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      valid[u] = n < batch;
      if (valid[u]) {
        const int64_t offset = (n * channels + c) * spatial + s * V;
#pragma unroll
        for (int i = 0; i < I; ++i) load<V>(in.value[i], offset, values[u][i]);
      }
      s += step_s;
      n += step_n;
      if (s >= row_packs) {
        s -= row_packs;
        ++n;
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (!valid[u]) continue;
#pragma unroll
      for (int v = 0; v < V; ++v) {
        T element[I];
#pragma unroll
        for (int i = 0; i < I; ++i) element[i] = values[u][i][v];
        op.accumulate(ch, element, acc);
      }
    }
  }
  store_block_sums(acc, partial, c, channels, split, splits);
}

// Channels-last: threads run along C (coalesced), block rows and grid rows (splits) along N * S.
template <typename Op, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    reduce_channels_last_kernel(Op op, Pointers<const scalar_t*, Op::I> in, int64_t rows,
                                int64_t channels, const bool* selected,
                                at::opmath_type<scalar_t>* partial) {
  using T = at::opmath_type<scalar_t>;
  constexpr int K = Op::K, I = Op::I, U = kUnroll<1>;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  RunningSum<T> acc[K];
  // Every thread stays for store_block_sums' barriers.
  if (c < channels && (selected == nullptr || selected[c])) {
    const auto ch = op.channel(c);
    const int64_t step = static_cast<int64_t>(gridDim.y) * blockDim.y;
    for (int64_t r = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; r < rows;
         r += U * step) {
      T values[U][I][1];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t row = r + u * step;
        if (row < rows) {
#pragma unroll
          for (int i = 0; i < I; ++i) load<1>(in.value[i], row * channels + c, values[u][i]);
        }
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (r + u * step >= rows) continue;
        T element[I];
#pragma unroll
        for (int i = 0; i < I; ++i) element[i] = values[u][i][0];
        op.accumulate(ch, element, acc);
      }
    }
  }
  store_block_sums(acc, partial, c, channels, blockIdx.y, gridDim.y);
}

// ------------------------------------------------------------------------------------------------
// Per-channel finalization: one warp per channel adds the channel's partial sums in a fixed order
// (lane-strided, then a shuffle tree); lane 0 hands the K totals to the op. A null `partial` means
// all sums are zero (empty batch, or sums the outputs do not need). Only the selected channels are
// finalized when `selected` is not null.

template <typename Op, typename T>
__global__ void __launch_bounds__(kThreads)
    finalize_kernel(Op op, const T* partial, int64_t splits, int64_t channels,
                    const bool* selected) {
  constexpr int K = Op::K;
  const int lane = threadIdx.x % kWarp;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * (kThreads / kWarp) + threadIdx.x / kWarp;
  // Whole warps leave: the shuffles below see full warps.
  if (c >= channels || (selected != nullptr && !selected[c])) return;
  T sums[K] = {};
#pragma unroll
  for (int k = 0; k < K; ++k) {
    RunningSum<T> sum;
    if (partial != nullptr) {
      const T* channel_partial = partial + (k * channels + c) * splits;
      for (int64_t j = lane; j < splits; j += kWarp) sum.add(channel_partial[j]);
    }
    T value = sum.value();
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      value += __shfl_down_sync(0xffffffffu, value, offset);
    }
    sums[k] = value;
  }
  if (lane == 0) op(c, sums);
}

// coefficients (3, C): mean, scale, bias. In training the statistics come first, from `stats`'s
// sums (in double): they are written to batch_mean / batch_var, which params.mean / params.var then
// point to, and, after the first sums, resum[c] says whether they must be summed again around the
// mean. The mean's rounding to T goes into the bias, y = (x - mean_T) * scale + bias +
// (mean_T - mean) * scale, so the output is as accurate as with the unrounded mean. (The backward
// passes, given mean_T, take the bias unchanged: their activation masks are bit-identical to each
// other, and to the forward's except where |y| <= |mean_T - mean| * scale, as on the CPU.)
template <typename scalar_t>
struct ForwardFinalize {
  using T = at::opmath_type<scalar_t>;
  static constexpr int K = 2;
  ChannelParams<T> params;
  T* coefficients;
  int64_t channels;
  // Training only (null otherwise).
  T* batch_mean;
  T* batch_var;
  StatsReduce<scalar_t> stats;  // the reduction that gave the sums: their shifts
  bool* resum;                  // null in a re-sum
  double count;
  __device__ void operator()(int64_t c, const T* sums) const {
    double mean_rounding = 0;  // mean_T - mean
    if (batch_mean != nullptr) {
      const double shift = stats.channel(c).shift;  // read before batch_mean[c] (a re-sum's shift)
      const Moments<double> m = moments_from_shifted_sums<double>(count, shift, sums[0], sums[1]);
      batch_mean[c] = static_cast<T>(m.mean);
      batch_var[c] = static_cast<T>(m.var);
      mean_rounding = static_cast<double>(batch_mean[c]) - m.mean;
      if (resum != nullptr) resum[c] = !shifted_sums_accurate(m, shift);
    }
    const ChannelState<T> st = channel_state(params, c);
    const T bias = static_cast<T>(st.bias + mean_rounding * st.scale);
    store_coefficients(coefficients, channels, c, {st.mean, st.scale, bias});
  }
};

// coefficients (6, C): mean, scale, bias, then grad_input's grad, input, constant (centered).
// grad_weight and grad_bias are written where not null.
template <typename T>
struct BackwardFinalize {
  static constexpr int K = 2;
  ChannelParams<T> params;
  bool training;
  T count;
  T* coefficients;
  int64_t channels;
  T* grad_weight;
  T* grad_bias;
  __device__ void operator()(int64_t c, const T* sums) const {
    const ChannelState<T> st = channel_state(params, c);
    const BackwardCoefficients<T> k =
        centered_backward_coefficients(training, count, st.invstd, st.weight, sums[0], sums[1]);
    store_coefficients(coefficients, channels, c,
                       {st.mean, st.scale, st.bias, k.grad, k.input, k.constant});
    if (grad_weight != nullptr) grad_weight[c] = st.invstd * sums[1];
    if (grad_bias != nullptr) grad_bias[c] = sums[0];
  }
};

// coefficients (10, C): mean, scale, bias, then go_ggi, go_x, go_const, x_ggi, x_g, x_x, x_const
// (centered).
// grad_grad_weight / grad_grad_bias read as zero where null; grad_weight is written where not null.
template <typename T>
struct DoubleBackwardFinalize {
  static constexpr int K = 5;
  ChannelParams<T> params;
  bool training;
  T count;
  const T* grad_grad_weight;
  const T* grad_grad_bias;
  T* coefficients;
  int64_t channels;
  T* grad_weight;
  __device__ void operator()(int64_t c, const T* sums) const {
    const ChannelState<T> st = channel_state(params, c);
    const T ggw = grad_grad_weight != nullptr ? grad_grad_weight[c] : T(0);
    const T ggb = grad_grad_bias != nullptr ? grad_grad_bias[c] : T(0);
    const DoubleBackwardSums<T> s{sums[0], sums[1], sums[2], sums[3], sums[4]};
    const DoubleBackwardCoefficients<T> k = centered_double_backward_coefficients(
        training, count, st.invstd, st.weight, ggw, ggb, s);
    store_coefficients(coefficients, channels, c,
                       {st.mean, st.scale, st.bias, k.go_ggi, k.go_x, k.go_const, k.x_ggi, k.x_g,
                        k.x_x, k.x_const});
    if (grad_weight != nullptr) grad_weight[c] = k.grad_weight;
  }
};

// ------------------------------------------------------------------------------------------------
// Element-wise passes: op(coefficients of the element's channel, I inputs, O outputs).

// Coefficients 0, 1, 2 are mean, scale and bias: y = fma(x - mean, scale, bias) in every pass.
template <typename T>
struct ForwardMap {
  static constexpr int I = 1, O = 1, P = 3;
  T slope;
  __device__ void operator()(const T (&k)[P], const T (&in)[I], T (&out)[O]) const {
    out[0] = leaky_relu(fused_multiply_add(in[0] - k[0], k[1], k[2]), slope);
  }
};

template <typename T>
struct BackwardMap {
  static constexpr int I = 2, O = 1, P = 6;
  T slope;
  __device__ void operator()(const T (&k)[P], const T (&in)[I], T (&out)[O]) const {
    const T xc = in[0] - k[0];
    const T g = in[1] * activation_grad(xc, k[1], k[2], slope);
    out[0] = fused_multiply_add(g, k[3], fused_multiply_add(xc, k[4], k[5]));
  }
};

template <typename T>
struct DoubleBackwardMap {
  static constexpr int I = 3, O = 2, P = 10;
  T slope;
  __device__ void operator()(const T (&k)[P], const T (&in)[I], T (&out)[O]) const {
    const T xc = in[0] - k[0];
    const T activation = activation_grad(xc, k[1], k[2], slope);
    const T g = in[1] * activation;
    out[0] = activation * fused_multiply_add(in[2], k[3], fused_multiply_add(xc, k[4], k[5]));
    out[1] = fused_multiply_add(in[2], k[6],
                                fused_multiply_add(g, k[7], fused_multiply_add(xc, k[8], k[9])));
  }
};

// Pack p (V elements) belongs to channel group (p / period) % cycle: channels-first period = S / V,
// cycle = C, group = the channel; channels-last period = 1, cycle = C / V, group = channel / V.
struct MapShape {
  int64_t packs, period, cycle, channels;
  int64_t step, step_inner, step_group;  // the grid stride in packs, split like p
};

// Grid-stride loop; (inner, group) advance with carries instead of a division per pack. Null
// outputs are not written.
template <typename Op, typename scalar_t, int V, bool kChannelsLast>
__global__ void __launch_bounds__(kThreads)
    map_kernel(Op op, Pointers<const scalar_t*, Op::I> in, Pointers<scalar_t*, Op::O> out,
               const at::opmath_type<scalar_t>* coefficients, MapShape shape) {
  using T = at::opmath_type<scalar_t>;
  constexpr int I = Op::I, O = Op::O, P = Op::P;
  int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t inner = p % shape.period, group = (p / shape.period) % shape.cycle;
  for (; p < shape.packs; p += shape.step) {
    T values[I][V], results[O][V];
#pragma unroll
    for (int i = 0; i < I; ++i) load<V>(in.value[i], p * V, values[i]);
    T k[P];
#pragma unroll
    for (int v = 0; v < V; ++v) {
      if (kChannelsLast || v == 0) {
        const int64_t c = kChannelsLast ? group * V + v : group;
#pragma unroll
        for (int j = 0; j < P; ++j) k[j] = coefficients[j * shape.channels + c];
      }
      T element[I], result[O];
#pragma unroll
      for (int i = 0; i < I; ++i) element[i] = values[i][v];
      op(k, element, result);
#pragma unroll
      for (int o = 0; o < O; ++o) results[o][v] = result[o];
    }
#pragma unroll
    for (int o = 0; o < O; ++o) {
      if (out.value[o] != nullptr) store<V>(out.value[o], p * V, results[o]);
    }
    inner += shape.step_inner;
    group += shape.step_group;
    if (inner >= shape.period) {
      inner -= shape.period;
      ++group;
    }
    if (group >= shape.cycle) group -= shape.cycle;
  }
}

// ------------------------------------------------------------------------------------------------
// Host: launches

struct Launch {
  cudaStream_t stream;
  int multiprocessors;
};

Launch current_launch(const at::Tensor& input) {
  int multiprocessors = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount,
                                        input.get_device()));
  return {c10::cuda::getCurrentCUDAStream(input.get_device()).stream(), multiprocessors};
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks of kThreads that fill the device once (one full wave) for `kernel`.
template <typename Kernel>
int64_t wave_blocks(Kernel kernel, const Launch& launch) {
  int per_multiprocessor = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_multiprocessor, kernel,
                                                               kThreads, 0));
  return static_cast<int64_t>(std::max(per_multiprocessor, 1)) * launch.multiprocessors;
}

template <typename P, int N>
bool aligned(const Pointers<P, N>& pointers, size_t bytes) {
  for (int i = 0; i < N; ++i) {
    if (reinterpret_cast<uintptr_t>(pointers.value[i]) % bytes != 0) return false;
  }
  return true;
}

// 16-byte vector accesses.
template <typename scalar_t>
constexpr int kPackWidth = static_cast<int>(16 / sizeof(scalar_t));

// Each thread should have at least this many packs (or rows) to reduce before a grid is split
// further: fewer and the partial sums cost more than they save.
constexpr int64_t kMinPacksPerThread = 4;

// Partial sums (K, C, splits) of a reduction, or none.
template <typename T>
struct Partials {
  at::Tensor sums;
  int64_t splits = 0;
  const T* data() const { return sums.defined() ? sums.const_data_ptr<T>() : nullptr; }
};

template <typename Op, typename scalar_t, int V>
Partials<at::opmath_type<scalar_t>> reduce_channels_first(const Op& op,
                                                         const Pointers<const scalar_t*, Op::I>& in,
                                                         const ChannelLayout& layout,
                                                         const at::TensorOptions& options,
                                                         const Launch& launch,
                                                         const bool* selected) {
  using T = at::opmath_type<scalar_t>;
  const auto kernel = reduce_channels_first_kernel<Op, scalar_t, V>;
  const int64_t C = layout.channels, packs = layout.per_channel() / V;
  const int64_t splits =
      std::clamp<int64_t>(std::min(ceil_div(wave_blocks(kernel, launch), C),
                                   ceil_div(packs, kThreads * kMinPacksPerThread)),
                          1, 65535);
  Partials<T> partials{at::empty({Op::K * C * splits}, options), splits};
  kernel<<<dim3(static_cast<unsigned>(C), static_cast<unsigned>(splits)), dim3(1, kThreads), 0,
           launch.stream>>>(op, in, layout.batch, C, layout.spatial, selected,
                            partials.sums.template mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return partials;
}

template <typename Op, typename scalar_t>
Partials<at::opmath_type<scalar_t>> reduce_channels_last(const Op& op,
                                                        const Pointers<const scalar_t*, Op::I>& in,
                                                        const ChannelLayout& layout,
                                                        const at::TensorOptions& options,
                                                        const Launch& launch,
                                                        const bool* selected) {
  using T = at::opmath_type<scalar_t>;
  const auto kernel = reduce_channels_last_kernel<Op, scalar_t>;
  const int64_t C = layout.channels, rows = layout.per_channel();
  int64_t width = 1;  // threads along C: a power of two, at most a warp
  while (width < kWarp && width < C) width *= 2;
  const int64_t height = kThreads / width, columns = ceil_div(C, width);
  const int64_t splits =
      std::clamp<int64_t>(std::min(ceil_div(wave_blocks(kernel, launch), columns),
                                   ceil_div(rows, height * kMinPacksPerThread)),
                          1, 65535);
  Partials<T> partials{at::empty({Op::K * C * splits}, options), splits};
  kernel<<<dim3(static_cast<unsigned>(columns), static_cast<unsigned>(splits)),
           dim3(static_cast<unsigned>(width), static_cast<unsigned>(height)), 0, launch.stream>>>(
      op, in, rows, C, selected, partials.sums.template mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return partials;
}

// Per-channel sums of the reduction `op` over inputs `in` (laid out as `layout`, numel > 0), for
// the channels c with selected[c] (all channels when it is null).
template <typename Op, typename scalar_t>
Partials<at::opmath_type<scalar_t>> reduce_per_channel(const Op& op,
                                                       const Pointers<const scalar_t*, Op::I>& in,
                                                       const ChannelLayout& layout,
                                                       const at::TensorOptions& options,
                                                       const Launch& launch,
                                                       const bool* selected = nullptr) {
  if (layout.channels_last) return reduce_channels_last(op, in, layout, options, launch, selected);
  constexpr int W = kPackWidth<scalar_t>;
  if (layout.spatial % W == 0 && aligned(in, W * sizeof(scalar_t))) {
    return reduce_channels_first<Op, scalar_t, W>(op, in, layout, options, launch, selected);
  }
  return reduce_channels_first<Op, scalar_t, 1>(op, in, layout, options, launch, selected);
}

template <typename Op, typename T>
void finalize_per_channel(const Op& op, const Partials<T>& partials, int64_t channels,
                          const Launch& launch, const bool* selected = nullptr) {
  if (channels == 0) return;
  constexpr int64_t warps = kThreads / kWarp;
  finalize_kernel<Op, T><<<static_cast<unsigned>(ceil_div(channels, warps)), kThreads, 0,
                           launch.stream>>>(op, partials.data(), partials.splits, channels,
                                            selected);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename Op, typename scalar_t, int V>
void map_packs(const Op& op, const Pointers<const scalar_t*, Op::I>& in,
               const Pointers<scalar_t*, Op::O>& out, const at::opmath_type<scalar_t>* coefficients,
               const ChannelLayout& layout, const Launch& launch) {
  MapShape shape;
  shape.channels = layout.channels;
  shape.packs = layout.batch * layout.channels * layout.spatial / V;
  shape.period = layout.channels_last ? 1 : layout.spatial / V;
  shape.cycle = layout.channels_last ? layout.channels / V : layout.channels;
  const auto kernel = layout.channels_last ? map_kernel<Op, scalar_t, V, true>
                                           : map_kernel<Op, scalar_t, V, false>;
  const int64_t blocks = std::min(ceil_div(shape.packs, kThreads), wave_blocks(kernel, launch));
  shape.step = blocks * kThreads;
  shape.step_inner = shape.step % shape.period;
  shape.step_group = shape.step / shape.period % shape.cycle;
  kernel<<<static_cast<unsigned>(blocks), kThreads, 0, launch.stream>>>(op, in, out, coefficients,
                                                                         shape);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The element-wise pass `op` over all elements (laid out as `layout`, numel > 0); vectorized when
// packs of kPackWidth elements never straddle a channel boundary and every pointer is aligned.
template <typename Op, typename scalar_t>
void map_per_channel(const Op& op, const Pointers<const scalar_t*, Op::I>& in,
                     const Pointers<scalar_t*, Op::O>& out,
                     const at::opmath_type<scalar_t>* coefficients, const ChannelLayout& layout,
                     const Launch& launch) {
  constexpr int W = kPackWidth<scalar_t>;
  const int64_t run = layout.channels_last ? layout.channels : layout.spatial;
  const size_t bytes = W * sizeof(scalar_t);
  if (run % W == 0 && aligned(in, bytes) && aligned(out, bytes)) {
    map_packs<Op, scalar_t, W>(op, in, out, coefficients, layout, launch);
  } else {
    map_packs<Op, scalar_t, 1>(op, in, out, coefficients, layout, launch);
  }
}

// ------------------------------------------------------------------------------------------------
// Host: the ops

// Instance statistics are the CPU kernels' (fastgan.ops.instance_norm_leaky_relu views
// channels-first CUDA input as one sample of N * C channels, and runs channels-last input per
// sample).
void check_cuda(const char* op, const at::Tensor& input, bool instance) {
  const auto dtype = input.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                  dtype == at::kBFloat16,
              op, ": the CUDA kernels support float32, float64, float16 and bfloat16 input, got ",
              dtype);
  TORCH_CHECK(!instance, op, ": instance=True is implemented on the CPU only");
}

// Checked once here so that grid dimensions (channels on gridDim.x) cannot overflow.
void check_channels(const char* op, const ChannelLayout& layout) {
  TORCH_CHECK(layout.channels <= std::numeric_limits<int32_t>::max(), op,
              ": at most 2^31 - 1 channels are supported, got ", layout.channels);
}

at::Tensor dense(const at::Tensor& t) { return t.defined() ? t.contiguous() : t; }

template <typename T>
const T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

template <typename T>
T* mutable_data_or_null(const at::Tensor& t) {
  return t.defined() ? t.mutable_data_ptr<T>() : nullptr;
}

// mean, var, weight and bias must already be dense.
template <typename T>
ChannelParams<T> channel_params(const at::Tensor& mean, const at::Tensor& var,
                                const at::Tensor& weight, const at::Tensor& bias, double eps) {
  return {mean.const_data_ptr<T>(), var.const_data_ptr<T>(), data_or_null<T>(weight),
          data_or_null<T>(bias), static_cast<T>(eps)};
}

// Training computes and returns the batch statistics (mean, biased var; zeros for an empty batch)
// and updates the running ones when given; evaluation normalizes with the running ones and returns
// two empty tensors.
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_leaky_relu(
    const at::Tensor& input, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, bool training, double momentum, double eps,
    double negative_slope, bool instance) {
  constexpr const char* op = "fastgan::batch_norm_leaky_relu";
  const at::Tensor w = weight.value_or(at::Tensor()), b = bias.value_or(at::Tensor());
  const at::Tensor m = running_mean.value_or(at::Tensor()), v = running_var.value_or(at::Tensor());
  check_cuda(op, input, instance);
  const auto opmath = at::toOpMathType(input.scalar_type());
  check_forward_inputs(op, input, m, v, w, b, training, momentum, eps, instance);
  c10::cuda::CUDAGuard guard(input.device());
  const ChannelLayout layout = choose_layout(input);
  check_channels(op, layout);
  const int64_t C = layout.channels;
  const auto options = input.options().dtype(opmath);
  const at::Tensor x = to_layout(input, layout);
  at::Tensor out = at::empty_like(x);
  if (x.numel() == 0) {
    if (!training) return {out, at::empty({0}, options), at::empty({0}, options)};
    return {out, at::zeros({C}, options), at::zeros({C}, options)};
  }
  at::Tensor batch_mean = at::empty({training ? C : 0}, options);
  at::Tensor batch_var = at::empty({training ? C : 0}, options);
  const at::Tensor mean_d = training ? batch_mean : dense(m.to(opmath));
  const at::Tensor var_d = training ? batch_var : dense(v.to(opmath));
  const at::Tensor w_d = dense(w), b_d = dense(b);
  at::Tensor coefficients = at::empty({3, C}, options);
  const Launch launch = current_launch(input);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "fastgan_batch_norm_leaky_relu_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* data = x.const_data_ptr<scalar_t>();
    const Pointers<const scalar_t*, 1> in{{data}};
    T* coef = coefficients.mutable_data_ptr<T>();
    const auto params = channel_params<T>(mean_d, var_d, w_d, b_d, eps);
    if (!training) {
      finalize_per_channel(ForwardFinalize<scalar_t>{params, coef, C}, Partials<T>{}, C, launch);
    } else {
      // Sums shifted by each channel's first element; then, for the channels where that shift
      // was an outlier (usually none: both launches then do next to nothing), sums shifted by
      // the mean they gave.
      const int64_t channel_stride = layout.channels_last ? 1 : layout.spatial;
      T* mean_data = batch_mean.mutable_data_ptr<T>();
      const at::Tensor resum = at::empty({C}, options.dtype(at::kBool));
      const StatsReduce<scalar_t> first_sums{data, channel_stride, nullptr};
      ForwardFinalize<scalar_t> finalization{params,     coef,        C,
                                             mean_data,  batch_var.mutable_data_ptr<T>(),
                                             first_sums, resum.mutable_data_ptr<bool>(),
                                             static_cast<double>(layout.per_channel())};
      finalize_per_channel(finalization,
                           reduce_per_channel(first_sums, in, layout, options, launch), C, launch);
      const bool* selected = resum.const_data_ptr<bool>();
      finalization.stats.center = mean_data;
      finalization.resum = nullptr;
      finalize_per_channel(
          finalization,
          reduce_per_channel(finalization.stats, in, layout, options, launch, selected), C,
          launch, selected);
    }
    map_per_channel(ForwardMap<T>{static_cast<T>(negative_slope)}, in,
                    Pointers<scalar_t*, 1>{{out.mutable_data_ptr<scalar_t>()}}, coef, layout,
                    launch);
  });
  if (training && m.defined()) {
    // As torch: lerp towards the batch statistics, the variance unbiased. As on the CPU, computed
    // in the wider of the two dtypes and rounded once to the running statistic's own.
    const double count = static_cast<double>(layout.per_channel());
    auto update = [&](const at::Tensor& running, const at::Tensor& batch) {
      const auto dtype = at::promote_types(running.scalar_type(), batch.scalar_type());
      at::Tensor value = running.to(dtype);  // running itself when already in dtype
      value.lerp_(batch.to(dtype), momentum);
      if (!value.is_same(running)) running.copy_(value);
    };
    update(m, batch_mean);
    update(v, batch_var * (count / (count - 1)));
  }
  return {out, batch_mean, batch_var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_leaky_relu_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean,
    const at::Tensor& var, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, bool training, double eps, double negative_slope,
    std::array<bool, 3> output_mask, bool instance) {
  constexpr const char* op = "fastgan::batch_norm_leaky_relu_backward";
  const at::Tensor w = weight.value_or(at::Tensor()), b = bias.value_or(at::Tensor());
  check_cuda(op, input, instance);
  const auto opmath = at::toOpMathType(input.scalar_type());
  check_backward_inputs(op, grad_output, input, mean, var, w, b, eps, instance);
  c10::cuda::CUDAGuard guard(input.device());
  // As on the CPU: grad_weight / grad_bias only exist for a defined weight / bias, and outputs not
  // asked for are returned empty.
  const bool want_input = output_mask[0];
  const bool want_weight = output_mask[1] && w.defined(), want_bias = output_mask[2] && b.defined();
  // Separate empty tensors: outputs of an op must not alias each other.
  auto empty = [&] { return input.new_empty({0}); };
  if (!want_input && !want_weight && !want_bias) return {empty(), empty(), empty()};
  const ChannelLayout layout = choose_layout(input);
  check_channels(op, layout);
  const int64_t C = layout.channels;
  const at::Tensor x = to_layout(input, layout), go = to_layout(grad_output, layout);
  const at::Tensor mean_d = dense(mean), var_d = dense(var), w_d = dense(w), b_d = dense(b);
  const auto options = input.options().dtype(opmath);
  at::Tensor grad_input = want_input ? at::empty_like(x) : at::Tensor();
  at::Tensor grad_weight = want_weight ? at::empty({C}, options) : at::Tensor();
  at::Tensor grad_bias = want_bias ? at::empty({C}, options) : at::Tensor();
  at::Tensor coefficients = at::empty({6, C}, options);
  // grad_input needs the sums only in training, where the statistics depend on the input.
  const bool need_sums =
      (want_weight || want_bias || (training && want_input)) && input.numel() > 0;
  const Launch launch = current_launch(input);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "fastgan_batch_norm_leaky_relu_backward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const auto params = channel_params<T>(mean_d, var_d, w_d, b_d, eps);
    const T slope = static_cast<T>(negative_slope);
    const Pointers<const scalar_t*, 2> in{{x.const_data_ptr<scalar_t>(),
                                           go.const_data_ptr<scalar_t>()}};
    const T count = static_cast<T>(layout.per_channel());
    const auto partials =
        need_sums ? reduce_per_channel(GradientReduce<scalar_t, false>{params, slope}, in, layout,
                                       options, launch)
                  : Partials<T>{};
    T* coef = coefficients.mutable_data_ptr<T>();
    finalize_per_channel(
        BackwardFinalize<T>{params, training, count, coef, C, mutable_data_or_null<T>(grad_weight),
                            mutable_data_or_null<T>(grad_bias)},
        partials, C, launch);
    if (want_input && x.numel() > 0) {
      map_per_channel(BackwardMap<T>{slope}, in,
                      Pointers<scalar_t*, 1>{{grad_input.mutable_data_ptr<scalar_t>()}}, coef,
                      layout, launch);
    }
  });
  auto or_empty = [&](const at::Tensor& t) { return t.defined() ? t : empty(); };
  return {or_empty(grad_input), or_empty(grad_weight), or_empty(grad_bias)};
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
  check_cuda(op, input, instance);
  const auto opmath = at::toOpMathType(input.scalar_type());
  const at::Tensor ggi_in = grad_grad_input.value_or(at::Tensor());
  const at::Tensor ggw_in = grad_grad_weight.value_or(at::Tensor());
  const at::Tensor ggb_in = grad_grad_bias.value_or(at::Tensor());
  check_double_backward_inputs(op, ggi_in, ggw_in, ggb_in, grad_output, input, mean, var, w, b,
                               eps, instance);
  c10::cuda::CUDAGuard guard(input.device());
  // As on the CPU: grad_weight only exists for a defined weight; outputs not asked for are empty.
  const bool want_grad_output = output_mask[0], want_input = output_mask[1];
  const bool want_weight = output_mask[2] && w.defined();
  // Separate empty tensors: outputs of an op must not alias each other.
  auto empty = [&] { return input.new_empty({0}); };
  if (!want_grad_output && !want_input && !want_weight) return {empty(), empty(), empty()};
  const ChannelLayout layout = choose_layout(input);
  check_channels(op, layout);
  const int64_t C = layout.channels;
  const at::Tensor x = to_layout(input, layout), go = to_layout(grad_output, layout);
  // An undefined grad_grad_input is zero: the kernels read a null pointer as zeros.
  const at::Tensor ggi = ggi_in.defined() ? to_layout(ggi_in, layout) : at::Tensor();
  const at::Tensor mean_d = dense(mean), var_d = dense(var), w_d = dense(w), b_d = dense(b);
  const at::Tensor ggw = dense(ggw_in), ggb = dense(ggb_in);
  const auto options = input.options().dtype(opmath);
  at::Tensor grad_grad_out = want_grad_output ? at::empty_like(x) : at::Tensor();
  at::Tensor grad_input = want_input ? at::empty_like(x) : at::Tensor();
  at::Tensor grad_weight = want_weight ? at::empty({C}, options) : at::Tensor();
  at::Tensor coefficients = at::empty({10, C}, options);
  // In evaluation only grad_weight depends on the sums (see double_backward_coefficients).
  const bool need_sums =
      (want_weight || (training && (want_grad_output || want_input))) && input.numel() > 0;
  const Launch launch = current_launch(input);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "fastgan_batch_norm_leaky_relu_double_backward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const auto params = channel_params<T>(mean_d, var_d, w_d, b_d, eps);
    const T slope = static_cast<T>(negative_slope);
    const Pointers<const scalar_t*, 3> in{{x.const_data_ptr<scalar_t>(),
                                           go.const_data_ptr<scalar_t>(),
                                           data_or_null<scalar_t>(ggi)}};
    const T count = static_cast<T>(layout.per_channel());
    const auto partials =
        need_sums ? reduce_per_channel(GradientReduce<scalar_t, true>{params, slope}, in, layout,
                                       options, launch)
                  : Partials<T>{};
    T* coef = coefficients.mutable_data_ptr<T>();
    finalize_per_channel(
        DoubleBackwardFinalize<T>{params, training, count, data_or_null<T>(ggw),
                                  data_or_null<T>(ggb), coef, C,
                                  mutable_data_or_null<T>(grad_weight)},
        partials, C, launch);
    if ((want_grad_output || want_input) && x.numel() > 0) {
      map_per_channel(DoubleBackwardMap<T>{slope}, in,
                      Pointers<scalar_t*, 2>{{mutable_data_or_null<scalar_t>(grad_grad_out),
                                              mutable_data_or_null<scalar_t>(grad_input)}},
                      coef, layout, launch);
    }
  });
  auto or_empty = [&](const at::Tensor& t) { return t.defined() ? t : empty(); };
  return {or_empty(grad_grad_out), or_empty(grad_input), or_empty(grad_weight)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("batch_norm_leaky_relu", &batch_norm_leaky_relu);
  m.impl("batch_norm_leaky_relu_backward", &batch_norm_leaky_relu_backward);
  m.impl("batch_norm_leaky_relu_double_backward", &batch_norm_leaky_relu_double_backward);
}

}  // namespace cuda
}  // namespace fastgan
