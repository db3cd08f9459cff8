// The CUDA built-ins fastgan's kernels use, emulated on the CPU (see emulation.py): each thread
// block runs as one std::thread per CUDA thread joined by a std::barrier at __syncthreads (a
// thread that returns leaves the barrier, like an exited CUDA thread), __shared__ variables are
// statics shared by those threads, warp shuffles exchange values through the barrier, and WMMA
// fragments are whole matrices that every thread of a warp computes redundantly. This checks the
// kernels' index logic, tiling, fragment layouts and warp/block reductions; it says nothing about
// timing, the memory model or the real WMMA implementation.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/extension.h>

#include <algorithm>
#include <array>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string_view>
#include <thread>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(x)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#ifndef EMULATED_CUDA_ARCH
#define EMULATED_CUDA_ARCH 700
#endif
#define __CUDA_ARCH__ EMULATED_CUDA_ARCH
#define C10_CUDA_CHECK(x) (void)(x)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() (void)0

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
inline std::barrier<>* block_barrier = nullptr;
inline void __syncthreads() { block_barrier->arrive_and_wait(); }

// Every live thread of the block must take part (the kernels shuffle in whole warps, all warps
// alike). Values travel as doubles, which hold the float and double values exactly.
inline std::vector<double> shuffle_slots;
template <typename T>
T __shfl_down_sync(unsigned, T value, unsigned offset) {
  const unsigned tid = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  shuffle_slots[tid] = static_cast<double>(value);
  __syncthreads();
  const unsigned source = tid % 32 + offset < 32 ? tid + offset : tid;
  const T result = static_cast<T>(shuffle_slots[source]);
  __syncthreads();
  return result;
}

using cudaStream_t = void*;
enum { cudaDevAttrMultiProcessorCount, cudaDevAttrComputeCapabilityMajor };
inline int emulated_multiprocessors = 132;
inline int emulated_blocks_per_multiprocessor = 1;
template <typename Kernel>
int cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, Kernel, int, size_t) {
  *blocks = emulated_blocks_per_multiprocessor;
  return 0;
}
inline int cudaDeviceGetAttribute(int* value, int attribute, int) {
  *value = attribute == cudaDevAttrMultiProcessorCount ? emulated_multiprocessors
                                                       : EMULATED_CUDA_ARCH / 100;
  return 0;
}
namespace c10 {
namespace cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
struct EmulatedStream {
  cudaStream_t stream() const { return nullptr; }
};
inline EmulatedStream getCurrentCUDAStream(int) { return {}; }
}  // namespace cuda
}  // namespace c10

// Half types as floats holding the rounded values (the kernels only convert into them).
struct __half {
  float v;
};
struct __nv_bfloat16 {
  float v;
};
inline __half __float2half_rn(float f) { return {f}; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {f}; }
inline float to_float(float f) { return f; }
inline float to_float(__half h) { return h.v; }
inline float to_float(__nv_bfloat16 h) { return h.v; }

namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision {
struct tf32 {};
}
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr int num_elements = rows * cols;
  float x[rows * cols];  // (r, c) at r * cols + c
};

inline void check_aligned(const void* p) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) throw std::runtime_error("WMMA: pointer not 32-byte aligned");
}

template <typename F>
void fill_fragment(F& f, float v) {
  for (auto& e : f.x) e = v;
}

template <typename Use, int M, int N, int K, typename T, typename Layout, typename P>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const P* p, unsigned ld) {
  using F = fragment<Use, M, N, K, T, Layout>;
  check_aligned(p);
  for (int r = 0; r < F::rows; ++r) {
    for (int c = 0; c < F::cols; ++c) {
      f.x[r * F::cols + c] =
          to_float(std::is_same_v<Layout, col_major> ? p[c * ld + r] : p[r * ld + c]);
    }
  }
}

template <int M, int N, int K, typename TA, typename TB>
void mma_sync(fragment<accumulator, M, N, K, float>& d,
              const fragment<matrix_a, M, N, K, TA, col_major>& a,
              const fragment<matrix_b, M, N, K, TB, row_major>& b,
              const fragment<accumulator, M, N, K, float>& c) {
  float out[M * N];
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j) {
      float sum = c.x[i * N + j];
      for (int k = 0; k < K; ++k) sum += a.x[i * K + k] * b.x[k * N + j];
      out[i * N + j] = sum;
    }
  }
  std::copy(out, out + M * N, d.x);
}

template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ld,
                       layout_t layout) {
  check_aligned(p);
  if (layout != mem_row_major) throw std::runtime_error("WMMA emulation: row-major stores only");
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j) p[i * ld + j] = f.x[i * N + j];
  }
}

inline float __float_to_tf32(float f) { return f; }
}  // namespace wmma
}  // namespace nvcuda

// kernel<<<grid, block, 0, stream>>>(args...), one block after another.
template <typename Kernel, typename... Args>
void emulate_launch(dim3 grid, dim3 block_shape, int, cudaStream_t, Kernel kernel, Args... args) {
  gridDim = grid;
  blockDim = block_shape;
  const unsigned threads = block_shape.x * block_shape.y * block_shape.z;
  shuffle_slots.assign(threads, 0.0);
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        std::barrier<> barrier(threads);
        block_barrier = &barrier;
        std::vector<std::thread> block;
        for (unsigned t = 0; t < threads; ++t) {
          block.emplace_back([&, t] {
            threadIdx = dim3(t % block_shape.x, t / block_shape.x % block_shape.y,
                             t / (block_shape.x * block_shape.y));
            blockIdx = dim3(x, y, z);
            kernel(args...);
            barrier.arrive_and_drop();
          });
        }
        for (auto& thread : block) thread.join();
      }
    }
  }
}
