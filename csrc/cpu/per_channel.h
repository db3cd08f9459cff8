// Per-channel "reduce, then map" passes over (N, C, *) tensors on the CPU, native for channels-first
// and channels-last storage, parallel over channels and vectorized with at::vec. Each channel (or
// block of channels) is reduced and then mapped by one thread right away, so the second read of
// its elements comes from that core's cache rather than memory. Ops supply the per-element math as
// functors on Vectorized values.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <array>

#include "../channel_layout.h"

namespace fastgan {
namespace cpu {

template <typename scalar_t>
using Vec = at::vec::Vectorized<scalar_t>;

// Partial sums stay in scalar_t vectors for at most this many elements per lane, then move into
// double: fast and accurate for any N * S.
constexpr int64_t kFlushElements = 1024;

// For each channel c, in one task:
//   1. K sums over its elements of accumulate(Vec acc[K], const Vec in[I], const Vec coef[P]),
//   2. finish(c, const double sums[K]) sets the channel's coefficients (coefficients[p][c],
//      including those that the map reads),
//   3. map(const Vec in[I], const Vec coef[P], Vec out[O]) for all its elements.
// in[i] holds elements of inputs[i] and coef[p] the matching channels' coefficients[p]. K == 0 skips
// the reduction; O == 0 the map. The summation order depends only on the shape, never on the
// thread count.
template <typename scalar_t, int K, int I, int P, int O, typename Accumulate, typename Finish,
          typename Map>
void reduce_then_map(const ChannelLayout& layout, const std::array<const scalar_t*, I>& inputs,
                     const std::array<scalar_t*, P>& coefficients,
                     const std::array<scalar_t*, O>& outputs, const Accumulate& accumulate,
                     const Finish& finish, const Map& map) {
  using V = Vec<scalar_t>;
  constexpr int64_t width = V::size();
  const int64_t C = layout.channels, per_channel = layout.per_channel();

  // One vector of `count` (<= width) elements at `offset`: reduction lanes past `count` are kept.
  auto accumulate_at = [&](V* acc, int64_t offset, const V* coef, int64_t count) {
    V in[I];
    for (int i = 0; i < I; ++i) in[i] = V::loadu(inputs[i] + offset, count);
    if (count == width) {
      accumulate(acc, in, coef);
      return;
    }
    V updated[K > 0 ? K : 1];
    std::copy(acc, acc + K, updated);
    accumulate(updated, in, coef);
    for (int k = 0; k < K; ++k) acc[k] = V::set(acc[k], updated[k], count);
  };
  auto map_at = [&](int64_t offset, const V* coef, int64_t count) {
    V in[I], out[O > 0 ? O : 1];
    for (int i = 0; i < I; ++i) in[i] = V::loadu(inputs[i] + offset, count);
    map(in, coef, out);
    for (int o = 0; o < O; ++o) out[o].store(outputs[o] + offset, count);
  };
  auto flush = [](V* acc, double (*totals)[width]) {
    for (int k = 0; k < K; ++k) {
      scalar_t lanes[width];
      acc[k].store(lanes);
      for (int64_t l = 0; l < width; ++l) totals[k][l] += static_cast<double>(lanes[l]);
      acc[k] = V(scalar_t(0));
    }
  };

  if (!layout.channels_last) {
    // A channel is N rows of S contiguous elements, one row per sample.
    const int64_t S = layout.spatial;
    at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        V coef[P];
        for (int p = 0; p < P; ++p) coef[p] = V(coefficients[p][c]);
        double totals[K > 0 ? K : 1][width] = {};
        if (K > 0 && per_channel > 0) {
          V acc[K > 0 ? K : 1];
          for (int k = 0; k < K; ++k) acc[k] = V(scalar_t(0));
          int64_t pending = 0;
          for (int64_t n = 0; n < layout.batch; ++n) {
            const int64_t row = (n * C + c) * S;
            for (int64_t i = 0; i < S; i += width) {
              accumulate_at(acc, row + i, coef, std::min(width, S - i));
            }
            pending += S;
            if (pending >= kFlushElements * width) {
              flush(acc, totals);
              pending = 0;
            }
          }
          flush(acc, totals);
        }
        double sums[K > 0 ? K : 1];
        for (int k = 0; k < K; ++k) {
          sums[k] = 0;
          for (int64_t l = 0; l < width; ++l) sums[k] += totals[k][l];
        }
        finish(c, sums);
        if (O == 0) continue;
        for (int p = 0; p < P; ++p) coef[p] = V(coefficients[p][c]);
        for (int64_t n = 0; n < layout.batch; ++n) {
          const int64_t row = (n * C + c) * S;
          for (int64_t i = 0; i < S; i += width) map_at(row + i, coef, std::min(width, S - i));
        }
      }
    });
    return;
  }

  // Channels-last: rows of C channels, one per sample and position. A task owns a block of `width`
  // channels, one per vector lane, and walks down all rows.
  const int64_t blocks = (C + width - 1) / width;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t c0 = block * width, count = std::min(width, C - c0);
      V coef[P];
      for (int p = 0; p < P; ++p) coef[p] = V::loadu(coefficients[p] + c0, count);
      double totals[K > 0 ? K : 1][width] = {};
      if (K > 0 && per_channel > 0) {
        V acc[K > 0 ? K : 1];
        for (int k = 0; k < K; ++k) acc[k] = V(scalar_t(0));
        for (int64_t r = 0; r < per_channel; ++r) {
          accumulate_at(acc, r * C + c0, coef, count);
          if ((r + 1) % kFlushElements == 0) flush(acc, totals);
        }
        flush(acc, totals);
      }
      for (int64_t l = 0; l < count; ++l) {
        double sums[K > 0 ? K : 1];
        for (int k = 0; k < K; ++k) sums[k] = totals[k][l];
        finish(c0 + l, sums);
      }
      if (O == 0) continue;
      for (int p = 0; p < P; ++p) coef[p] = V::loadu(coefficients[p] + c0, count);
      for (int64_t r = 0; r < per_channel; ++r) map_at(r * C + c0, coef, count);
    }
  });
}

}  // namespace cpu
}  // namespace fastgan
