// Parallel loops over tasks of known size, shared by the CPU kernels.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace fastgan {
namespace cpu {

// The grain of at::parallel_for over tasks of `work` elements each: small tasks go several to a
// thread, since starting a parallel region costs microseconds.
inline int64_t grain_for(int64_t work) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(work, 1));
}

// fn(task) for every task in [0, count), in parallel; each task is about `work` elements.
template <typename Fn>
void parallel_tasks(int64_t count, int64_t work, const Fn& fn) {
  at::parallel_for(0, count, grain_for(work), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) fn(task);
  });
}

}  // namespace cpu
}  // namespace fastgan
