// The gradient penalty's reduction and its derivative on the CPU: one vectorized, parallel pass
// each. Both walk the storage of a dense tensor directly (NCHW, channels_last or any other dense
// order: the sum of squares does not care), and copy only tensors with gaps or overlaps.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../gradient_penalty.h"
#include "tuning.h"

namespace fastgan {
namespace cpu {
namespace {

using namespace fastgan::gradient_penalty;

template <typename scalar_t>
using Vec = at::vec::Vectorized<scalar_t>;

// The sum is split into chunks of this many elements, each summed in scalar_t vectors and then
// added in double, in chunk order: accurate, and independent of the number of threads.
constexpr int64_t kChunk = 1 << 14;

void check_cpu(const char* op, const at::Tensor& grad) {
  TORCH_CHECK(grad.scalar_type() == at::kFloat || grad.scalar_type() == at::kDouble, op,
              ": the CPU kernels support float32 and float64 grad, got ", grad.scalar_type());
}

// `t` itself when its elements fill a contiguous block of memory in some order, else a copy.
at::Tensor dense(const at::Tensor& t) {
  return t.is_non_overlapping_and_dense() ? t : t.contiguous();
}

template <typename scalar_t>
double sum_of_squares(const scalar_t* data, int64_t begin, int64_t end) {
  using V = Vec<scalar_t>;
  constexpr int64_t width = V::size();
  V acc[kPenaltyAccumulators];
  for (auto& a : acc) a = V(scalar_t(0));
  int64_t i = begin;
  for (; i + kPenaltyAccumulators * width <= end; i += kPenaltyAccumulators * width) {
    for (int k = 0; k < kPenaltyAccumulators; ++k) {
      const V g = V::loadu(data + i + k * width);
      acc[k] = at::vec::fmadd(g, g, acc[k]);
    }
  }
  for (; i < end; i += width) {  // loadu with a count zero-fills the lanes past the end
    const V g = V::loadu(data + i, std::min(width, end - i));
    acc[0] = at::vec::fmadd(g, g, acc[0]);
  }
  static_assert(kPenaltyAccumulators == 4, "the lanes' sum below adds four accumulators");
  scalar_t lanes[width];
  (acc[0] + acc[1] + (acc[2] + acc[3])).store(lanes);
  double total = 0;
  for (int64_t l = 0; l < width; ++l) total += static_cast<double>(lanes[l]);
  return total;
}

at::Tensor gradient_penalty_forward(const at::Tensor& grad, double scale) {
  constexpr const char* op = "fastgan::gradient_penalty";
  check_grad(op, grad);
  check_cpu(op, grad);
  const at::Tensor g = dense(grad);
  const int64_t numel = g.numel();
  const int64_t chunks = (numel + kChunk - 1) / kChunk;
  std::vector<double> partial(chunks, 0.0);
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "gradient_penalty", [&] {
    const scalar_t* data = g.const_data_ptr<scalar_t>();
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t chunk = begin; chunk < end; ++chunk) {
        const int64_t first = chunk * kChunk;
        partial[chunk] = sum_of_squares(data, first, std::min(numel, first + kChunk));
      }
    });
  });
  double total = 0;
  for (double p : partial) total += p;
  return at::scalar_tensor(penalty<double>(total, scale, g.size(0)),
                           g.options().dtype(accumulation_type(g.scalar_type())));
}

at::Tensor gradient_penalty_backward(const at::Tensor& grad_out, const at::Tensor& grad,
                                     double scale) {
  constexpr const char* op = "fastgan::gradient_penalty_backward";
  check_grad(op, grad);
  check_grad_penalty(op, grad_out, grad);
  check_cpu(op, grad);
  const at::Tensor g = dense(grad);
  at::Tensor result = at::empty_like(g);  // a dense input's strides are kept
  const double factor = derivative_factor<double>(scale, g.size(0), grad_out.item<double>());
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "gradient_penalty_backward", [&] {
    using V = Vec<scalar_t>;
    constexpr int64_t width = V::size();
    const scalar_t* in = g.const_data_ptr<scalar_t>();
    scalar_t* out = result.mutable_data_ptr<scalar_t>();
    const V k(static_cast<scalar_t>(factor));
    at::parallel_for(0, g.numel(), at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; i += width) {
        const int64_t count = std::min(width, end - i);
        (V::loadu(in + i, count) * k).store(out + i, count);
      }
    });
  });
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("gradient_penalty", &gradient_penalty_forward);
  m.impl("gradient_penalty_backward", &gradient_penalty_backward);
}

}  // namespace cpu
}  // namespace fastgan
