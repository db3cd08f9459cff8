// Per-channel reductions and element-wise maps over (N, C, *) tensors on the CPU, native for both
// channels-first and channels-last storage, parallel and vectorized with at::vec. Ops supply the
// per-element math as a functor on Vectorized values.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <array>
#include <vector>

namespace fastgan {
namespace cpu {

template <typename scalar_t>
using Vec = at::vec::Vectorized<scalar_t>;

// An (N, C, S...) tensor seen as N x C x S (S = product of the spatial sizes), stored densely either
// channels-first (N, C, S) or channels-last (N, S, C). `channels_last` says how the kernels walk it;
// a channels-first tensor with S == 1 is walked as channels-last (rows of C), which is the same
// memory.
struct ChannelLayout {
  int64_t batch, channels, spatial;
  bool stored_channels_last;
  bool channels_last;
  int64_t rows() const { return channels_last ? batch * spatial : batch * channels; }
  int64_t row_length() const { return channels_last ? channels : spatial; }
};

// (0, 2, 3, ..., 1): the permutation that makes a channels-last tensor contiguous.
inline std::vector<int64_t> channels_last_order(int64_t dim) {
  std::vector<int64_t> order{0};
  for (int64_t d = 2; d < dim; ++d) order.push_back(d);
  order.push_back(1);
  return order;
}

// The input's own storage order when it is dense in either order (so NCHW and channels_last both
// run without copies); anything else is copied to channels-first. fastgan/ops/_layout.py mirrors
// this for the fake kernels.
inline ChannelLayout choose_layout(const at::Tensor& input) {
  const int64_t batch = input.size(0), channels = input.size(1);
  int64_t spatial = 1;
  for (int64_t d = 2; d < input.dim(); ++d) spatial *= input.size(d);
  const bool stored_channels_last =
      !input.is_contiguous() && input.permute(channels_last_order(input.dim())).is_contiguous();
  return {batch, channels, spatial, stored_channels_last, stored_channels_last || spatial == 1};
}

// `t` (shaped like the input) stored densely in `layout`'s order; no copy when it already is.
inline at::Tensor to_layout(const at::Tensor& t, const ChannelLayout& layout) {
  if (!layout.stored_channels_last) return t.contiguous();
  const auto order = channels_last_order(t.dim());
  std::vector<int64_t> inverse(order.size());
  for (size_t i = 0; i < order.size(); ++i) inverse[order[i]] = static_cast<int64_t>(i);
  return t.permute(order).contiguous().permute(inverse);
}

// Partial sums are kept in scalar_t vectors for at most this many elements per lane, then added
// into double: fast and accurate for any N * S.
constexpr int64_t kFlushElements = 1024;

// Adds K per-channel sums over all elements: fn(Vec acc[K], const Vec in[I], const Vec coef[P])
// accumulates one vector of elements, where in[i] are the elements of inputs[i] and coef[p] the
// matching channels' values of coefficients[p] (C values each). sums is K x C. The summation order
// depends only on the shape, never on the thread count.
template <typename scalar_t, int K, int I, int P, typename Fn>
void reduce_per_channel(const ChannelLayout& layout,
                        const std::array<const scalar_t*, I>& inputs,
                        const std::array<const scalar_t*, P>& coefficients, double* sums,
                        const Fn& fn) {
  using V = Vec<scalar_t>;
  constexpr int64_t width = V::size();
  const int64_t C = layout.channels;
  std::fill(sums, sums + K * C, 0.0);
  if (layout.batch * layout.spatial == 0) return;

  auto add_lanes = [](const V& v, double& total) {
    scalar_t lanes[width];
    v.store(lanes);
    for (int64_t i = 0; i < width; ++i) total += static_cast<double>(lanes[i]);
  };
  // Accumulates `count` (<= width) elements; lanes past `count` are left untouched.
  auto accumulate = [&](V* acc, int64_t offset, const V* coef, int64_t count) {
    V in[I > 0 ? I : 1];
    for (int i = 0; i < I; ++i) in[i] = V::loadu(inputs[i] + offset, count);
    if (count == width) {
      fn(acc, in, coef);
      return;
    }
    V updated[K];
    std::copy(acc, acc + K, updated);
    fn(updated, in, coef);
    for (int k = 0; k < K; ++k) acc[k] = V::set(acc[k], updated[k], count);
  };

  if (!layout.channels_last) {
    // One task per channel, walking its N rows of S contiguous elements.
    const int64_t S = layout.spatial;
    at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        V coef[P > 0 ? P : 1];
        for (int p = 0; p < P; ++p) coef[p] = V(coefficients[p][c]);
        double total[K] = {};
        V acc[K];
        for (int k = 0; k < K; ++k) acc[k] = V(scalar_t(0));
        int64_t pending = 0;
        for (int64_t n = 0; n < layout.batch; ++n) {
          const int64_t row = (n * C + c) * S;
          for (int64_t i = 0; i < S; i += width) accumulate(acc, row + i, coef, std::min(width, S - i));
          pending += S;
          if (pending >= kFlushElements * width || n + 1 == layout.batch) {
            for (int k = 0; k < K; ++k) {
              add_lanes(acc[k], total[k]);
              acc[k] = V(scalar_t(0));
            }
            pending = 0;
          }
        }
        for (int k = 0; k < K; ++k) sums[k * C + c] = total[k];
      }
    });
    return;
  }

  // Channels-last: rows of C channels. A fixed number of row blocks (independent of the thread
  // count, for determinism) each keep K x C partial sums, added up in block order at the end.
  const int64_t rows = layout.rows();
  const int64_t blocks = std::min<int64_t>(rows, 16);
  const int64_t rows_per_block = (rows + blocks - 1) / blocks;
  const int64_t padded = (C + width - 1) / width * width;
  std::vector<double> partial(blocks * K * C, 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> acc_buffer(K * padded);
    for (int64_t block = begin; block < end; ++block) {
      double* block_sums = partial.data() + block * K * C;
      std::fill(acc_buffer.begin(), acc_buffer.end(), scalar_t(0));
      const int64_t first = block * rows_per_block, last = std::min(rows, first + rows_per_block);
      for (int64_t r = first; r < last; ++r) {
        for (int64_t c = 0; c < C; c += width) {
          const int64_t count = std::min(width, C - c);
          V coef[P > 0 ? P : 1];
          for (int p = 0; p < P; ++p) coef[p] = V::loadu(coefficients[p] + c, count);
          V acc[K];
          for (int k = 0; k < K; ++k) acc[k] = V::loadu(acc_buffer.data() + k * padded + c);
          accumulate(acc, r * C + c, coef, count);
          for (int k = 0; k < K; ++k) acc[k].store(acc_buffer.data() + k * padded + c);
        }
        if ((r - first + 1) % kFlushElements == 0 || r + 1 == last) {
          for (int k = 0; k < K; ++k) {
            for (int64_t c = 0; c < C; ++c) block_sums[k * C + c] += acc_buffer[k * padded + c];
          }
          std::fill(acc_buffer.begin(), acc_buffer.end(), scalar_t(0));
        }
      }
    }
  });
  for (int64_t block = 0; block < blocks; ++block) {
    for (int64_t j = 0; j < K * C; ++j) sums[j] += partial[block * K * C + j];
  }
}

// Element-wise map: fn(const Vec in[I], const Vec coef[P], Vec out[O]) for every vector of elements,
// with coef[p] the matching channels' values of coefficients[p].
template <typename scalar_t, int I, int P, int O, typename Fn>
void map_per_channel(const ChannelLayout& layout, const std::array<const scalar_t*, I>& inputs,
                     const std::array<const scalar_t*, P>& coefficients,
                     const std::array<scalar_t*, O>& outputs, const Fn& fn) {
  using V = Vec<scalar_t>;
  constexpr int64_t width = V::size();
  const int64_t length = layout.row_length();
  if (layout.rows() * length == 0) return;

  auto apply = [&](int64_t offset, const V* coef, int64_t count) {
    V in[I], out[O];
    for (int i = 0; i < I; ++i) in[i] = V::loadu(inputs[i] + offset, count);
    fn(in, coef, out);
    for (int o = 0; o < O; ++o) out[o].store(outputs[o] + offset, count);
  };
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / length);
  at::parallel_for(0, layout.rows(), grain, [&](int64_t begin, int64_t end) {
    V coef[P > 0 ? P : 1];
    for (int64_t r = begin; r < end; ++r) {
      if (!layout.channels_last) {
        const int64_t c = r % layout.channels;
        for (int p = 0; p < P; ++p) coef[p] = V(coefficients[p][c]);
        for (int64_t i = 0; i < length; i += width) apply(r * length + i, coef, std::min(width, length - i));
      } else {
        for (int64_t c = 0; c < length; c += width) {
          const int64_t count = std::min(width, length - c);
          for (int p = 0; p < P; ++p) coef[p] = V::loadu(coefficients[p] + c, count);
          apply(r * length + c, coef, count);
        }
      }
    }
  });
}

}  // namespace cpu
}  // namespace fastgan
