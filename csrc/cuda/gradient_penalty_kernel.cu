// The gradient penalty's reduction and its derivative on CUDA. The penalty is two launches on the
// current stream: per-block partial sums of squares (float accumulation for half and bfloat16,
// double for double), then one block that adds them in a fixed order (a deterministic result)
// and writes the penalty. The derivative is one element-wise pass that reads the upstream
// gradient on the device: nothing is read back to the host.
//
// UNVERIFIED ON A GPU: this file is compiled (scripts/cuda_check.sh) and its kernels are run on the
// CPU by scripts/cuda_emulation/emulate_gradient_penalty.py, but it has not been run on CUDA
// hardware.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "../gradient_penalty.h"

namespace fastgan {
namespace cuda {
namespace {

using namespace fastgan::gradient_penalty;

constexpr int kThreads = 256;      // threads per block, for every kernel
constexpr int64_t kMaxBlocks = 1024;  // partial sums of the reduction (grid-stride beyond)

template <typename acc_t>
__device__ acc_t block_sum(acc_t value) {
  __shared__ acc_t shared[kThreads];
  shared[threadIdx.x] = value;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) shared[threadIdx.x] += shared[threadIdx.x + half];
    __syncthreads();
  }
  return shared[0];
}

template <typename scalar_t, typename acc_t>
__global__ void partial_sums_of_squares(const scalar_t* __restrict__ grad, int64_t numel,
                                        acc_t* __restrict__ partial) {
  acc_t sum = acc_t(0);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < numel;
       i += stride) {
    sum += square(static_cast<acc_t>(grad[i]));
  }
  const acc_t total = block_sum(sum);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

template <typename acc_t>
__global__ void finish_penalty(const acc_t* __restrict__ partial, int64_t blocks, acc_t scale,
                               int64_t batch, acc_t* __restrict__ out) {
  acc_t sum = acc_t(0);
  for (int64_t b = threadIdx.x; b < blocks; b += kThreads) sum += partial[b];
  const acc_t total = block_sum(sum);
  if (threadIdx.x == 0) *out = penalty(total, scale, batch);
}

template <typename scalar_t, typename acc_t>
__global__ void scale_by_penalty_gradient(const scalar_t* __restrict__ grad, int64_t numel,
                                          acc_t scale, int64_t batch,
                                          const acc_t* __restrict__ grad_penalty,
                                          scalar_t* __restrict__ out) {
  const acc_t factor = derivative_factor(scale, batch, *grad_penalty);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < numel;
       i += stride) {
    out[i] = static_cast<scalar_t>(static_cast<acc_t>(grad[i]) * factor);
  }
}

void check_cuda(const char* op, const at::Tensor& grad) {
  const auto dtype = grad.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                  dtype == at::kBFloat16,
              op, ": the CUDA kernels support float32, float64, float16 and bfloat16 grad, got ",
              dtype);
}

// `t` itself when its elements fill a contiguous block of memory in some order, else a copy.
at::Tensor dense(const at::Tensor& t) {
  return t.is_non_overlapping_and_dense() ? t : t.contiguous();
}

int64_t blocks_for(int64_t numel) {
  return std::max<int64_t>(1, std::min(kMaxBlocks, (numel + kThreads - 1) / kThreads));
}

at::Tensor gradient_penalty_forward(const at::Tensor& grad, double scale) {
  constexpr const char* op = "fastgan::gradient_penalty";
  check_grad(op, grad);
  check_cuda(op, grad);
  c10::cuda::CUDAGuard guard(grad.device());
  const auto options = grad.options().dtype(accumulation_type(grad.scalar_type()));
  const int64_t batch = grad.size(0);
  if (grad.numel() == 0) {
    return at::scalar_tensor(penalty<double>(0.0, scale, batch), options);
  }
  const at::Tensor g = dense(grad);
  const int64_t numel = g.numel(), blocks = blocks_for(numel);
  at::Tensor partial = at::empty({blocks}, options);
  at::Tensor out = at::empty({}, options);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(grad.get_device()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(),
                                  "fastgan_gradient_penalty_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    partial_sums_of_squares<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
        g.const_data_ptr<scalar_t>(), numel, partial.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    finish_penalty<acc_t><<<1, kThreads, 0, stream>>>(partial.const_data_ptr<acc_t>(), blocks,
                                                      static_cast<acc_t>(scale), batch,
                                                      out.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor gradient_penalty_backward(const at::Tensor& grad_out, const at::Tensor& grad,
                                     double scale) {
  constexpr const char* op = "fastgan::gradient_penalty_backward";
  check_grad(op, grad);
  check_grad_penalty(op, grad_out, grad);
  check_cuda(op, grad);
  c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor g = dense(grad);
  at::Tensor result = at::empty_like(g);  // a dense input's strides are kept
  const int64_t numel = g.numel();
  if (numel == 0) return result;
  const auto accumulation = accumulation_type(g.scalar_type());
  const at::Tensor grad_penalty = grad_out.reshape({}).to(accumulation);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(grad.get_device()).stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(),
                                  "fastgan_gradient_penalty_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t blocks = std::min<int64_t>((numel + kThreads - 1) / kThreads, 65535);
    scale_by_penalty_gradient<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
        g.const_data_ptr<scalar_t>(), numel, static_cast<acc_t>(scale), g.size(0),
        grad_penalty.const_data_ptr<acc_t>(), result.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("gradient_penalty", &gradient_penalty_forward);
  m.impl("gradient_penalty_backward", &gradient_penalty_backward);
}

}  // namespace cuda
}  // namespace fastgan
