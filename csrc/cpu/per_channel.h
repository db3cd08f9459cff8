// Per-channel "reduce, then map" passes over (N, C, *) tensors on the CPU, native for channels-first
// and channels-last storage, parallel and vectorized with at::vec. Channels-first: one task per
// channel reduces it and maps it right away, so the second read comes from that core's cache
// (with nothing to reduce, the map runs in storage order instead).
// Channels-last: a channel is a column, so whole rows are streamed twice (reduce, then map). Ops
// supply the per-element math as functors on Vectorized values of the compute type: the storage
// type itself, or float for bfloat16 and float16 storage.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <array>
#include <type_traits>
#include <vector>

#include "../channel_layout.h"
#include "parallel.h"

namespace fastgan {
namespace cpu {

// The compute type of scalar_t storage (float for bfloat16 and float16) and its vectors.
template <typename scalar_t>
using opmath_t = at::opmath_type<scalar_t>;
template <typename scalar_t>
using Vec = at::vec::Vectorized<opmath_t<scalar_t>>;

// `count` (<= Vec::size()) elements at `data`, as a vector of the compute type.
template <typename scalar_t>
inline Vec<scalar_t> load(const scalar_t* data, int64_t count) {
  using V = Vec<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, opmath_t<scalar_t>>) {
    return V::loadu(data, count);
  } else {
    V result;
    if (count == V::size()) {
      at::vec::load_to_float(data, result);
    } else {
      scalar_t part[V::size()] = {};
      std::copy(data, data + count, part);
      at::vec::load_to_float(part, result);
    }
    return result;
  }
}

// The first `count` lanes of `value`, rounded to scalar_t, to `data`.
template <typename scalar_t>
inline void store(const Vec<scalar_t>& value, scalar_t* data, int64_t count) {
  if constexpr (std::is_same_v<scalar_t, opmath_t<scalar_t>>) {
    value.store(data, count);
  } else {
    // One vector's conversion; its lanes land in the low half of the scalar_t vector.
    const at::vec::VectorizedN<float, 1> wide(value);
    at::vec::convert<scalar_t, 1, float, 1>(wide).store(data, count);
  }
}

// Partial sums stay in compute-type vectors for at most this many elements per lane, then move
// into double: fast and accurate for any N * S.
constexpr int64_t kFlushElements = 1024;

// Channels-first reductions prefetch this many bytes of rows ahead. One row ahead is too little for
// small maps (an 8x8 row is 256 bytes): at 64x256x8x8 the reduction then waits on memory.
constexpr int64_t kPrefetchBytes = 2048;

// Channels-last reductions split the rows into this many blocks, walked in tiles of rows.
constexpr int64_t kRowBlocks = 16;
constexpr int64_t kTileRows = 32;

// Calls finish(c, sums); false when it returned false: it updated the coefficients that the
// reduction reads and asks for the channel's sums again. A void finish always accepts.
template <typename Finish>
bool finish_accepts(const Finish& finish, int64_t c, const double* sums) {
  if constexpr (std::is_same_v<decltype(finish(c, sums)), bool>) {
    return finish(c, sums);
  } else {
    finish(c, sums);
    return true;
  }
}

// `steps` vectors of `count` (<= width) elements, the s-th at offset + s * stride in every input:
// acc[k] += their K sums (lanes past `count` are kept). The accumulators and pointers are locals,
// so they stay in registers through the loop.
template <typename scalar_t, int K, int I, typename Accumulate>
inline void accumulate_run(Vec<scalar_t>* acc, const std::array<const scalar_t*, I>& inputs,
                           int64_t offset, int64_t stride, int64_t steps, int64_t count,
                           int64_t prefetch_ahead, const Vec<scalar_t>* coef,
                           const Accumulate& accumulate) {
  using V = Vec<scalar_t>;
  V sums[K > 0 ? K : 1], in[I];
  for (int k = 0; k < K; ++k) sums[k] = acc[k];
  const scalar_t* at[I];
  for (int i = 0; i < I; ++i) at[i] = inputs[i] + offset;
  if (count == V::size()) {
    for (int64_t s = 0; s < steps; ++s) {
      for (int i = 0; i < I; ++i) {
        if (prefetch_ahead) __builtin_prefetch(at[i] + prefetch_ahead);
        in[i] = load(at[i], V::size());
        at[i] += stride;
      }
      accumulate(sums, in, coef);
    }
  } else {
    for (int64_t s = 0; s < steps; ++s) {
      for (int i = 0; i < I; ++i) {
        in[i] = load(at[i], count);
        at[i] += stride;
      }
      V updated[K > 0 ? K : 1];
      for (int k = 0; k < K; ++k) updated[k] = sums[k];
      accumulate(updated, in, coef);
      for (int k = 0; k < K; ++k) sums[k] = V::set(sums[k], updated[k], count);
    }
  }
  for (int k = 0; k < K; ++k) acc[k] = sums[k];
}

// map over `steps` vectors of `count` elements, placed as in accumulate_run.
template <typename scalar_t, int I, int O, typename Map>
inline void map_run(const std::array<const scalar_t*, I>& inputs,
                    const std::array<scalar_t*, O>& outputs, int64_t offset, int64_t stride,
                    int64_t steps, int64_t count, int64_t prefetch_ahead,
                    const Vec<scalar_t>* coef, const Map& map) {
  using V = Vec<scalar_t>;
  const scalar_t* at[I];
  scalar_t* to[O > 0 ? O : 1];
  for (int i = 0; i < I; ++i) at[i] = inputs[i] + offset;
  for (int o = 0; o < O; ++o) to[o] = outputs[o] + offset;
  V in[I], out[O > 0 ? O : 1];
  for (int64_t s = 0; s < steps; ++s) {
    for (int i = 0; i < I; ++i) {
      if (prefetch_ahead) __builtin_prefetch(at[i] + prefetch_ahead);
      in[i] = load(at[i], count);
      at[i] += stride;
    }
    map(in, coef, out);
    for (int o = 0; o < O; ++o) {
      store(out[o], to[o], count);
      to[o] += stride;
    }
  }
}

// For each channel c:
//   1. K sums over its elements of accumulate(Vec acc[K], const Vec in[I], const Vec coef[P]),
//   2. finish(c, const double sums[K]) sets the channel's coefficients (coefficients[p][c],
//      including those that the map reads); a finish returning false is given the channel's sums
//      once more, reduced with the coefficients it set, and its second answer is final,
//   3. map(const Vec in[I], const Vec coef[P], Vec out[O]) for all its elements.
// in[i] holds elements of inputs[i] and coef[p] the matching channels' coefficients[p]. K == 0 skips
// the reduction; O == 0 the map. The summation order depends only on the shape, never on the
// thread count.
template <typename scalar_t, int K, int I, int P, int O, typename Accumulate, typename Finish,
          typename Map>
void reduce_then_map(const ChannelLayout& layout, const std::array<const scalar_t*, I>& inputs,
                     const std::array<opmath_t<scalar_t>*, P>& coefficients,
                     const std::array<scalar_t*, O>& outputs, const Accumulate& accumulate,
                     const Finish& finish, const Map& map) {
  using V = Vec<scalar_t>;
  using T = opmath_t<scalar_t>;
  constexpr int64_t width = V::size();
  const int64_t C = layout.channels, per_channel = layout.per_channel();
  auto flush = [](V* acc, double (*totals)[width]) {
    for (int k = 0; k < K; ++k) {
      T lanes[width];
      acc[k].store(lanes);
      for (int64_t l = 0; l < width; ++l) totals[k][l] += static_cast<double>(lanes[l]);
      acc[k] = V(T(0));
    }
  };

  if (!layout.channels_last) {
    // A channel is N rows of S contiguous elements, one row per sample, a stride apart: the
    // hardware prefetcher restarts at each row, so the passes prefetch the next samples' rows.
    const int64_t S = layout.spatial, row_stride = C * S;
    const int64_t full = S / width * width, N = layout.batch;
    // The reduction prefetches kPrefetchBytes of rows ahead (from memory); from a channel's last
    // rows it reaches into the next channel's first ones, which a task takes next. The map
    // re-reads the channel from cache, one row ahead.
    const int64_t row_bytes = std::max<int64_t>(1, S * static_cast<int64_t>(sizeof(scalar_t)));
    const int64_t ahead = std::min(N, std::max<int64_t>(1, kPrefetchBytes / row_bytes));
    auto reduce_prefetch = [&](int64_t n) {
      return n + ahead < N ? ahead * row_stride : (ahead - N) * row_stride + S;
    };
    // Runs over channel c's rows (sample n): the full vectors, then the tail.
    auto for_each_run = [&](int64_t c, auto&& run) {
      for (int64_t n = 0; n < N; ++n) {
        const int64_t row = n * row_stride + c * S;
        if (full > 0) run(row, full / width, width, n);
        if (full < S) run(row + full, 1, S - full, n);
      }
    };
    // The K sums of channel c, with its current coefficients.
    auto reduce_channel = [&](int64_t c, double* sums) {
      V coef[P];
      for (int p = 0; p < P; ++p) coef[p] = V(coefficients[p][c]);
      double totals[K > 0 ? K : 1][width] = {};
      if (K > 0 && per_channel > 0) {
        V acc[K > 0 ? K : 1];
        for (int k = 0; k < K; ++k) acc[k] = V(T(0));
        int64_t pending = 0;
        for_each_run(c, [&](int64_t offset, int64_t steps, int64_t count, int64_t n) {
          accumulate_run<scalar_t, K, I>(acc, inputs, offset, width, steps, count,
                                         reduce_prefetch(n), coef, accumulate);
          pending += steps * count;
          if (pending >= kFlushElements * width) {
            flush(acc, totals);
            pending = 0;
          }
        });
        flush(acc, totals);
      }
      for (int k = 0; k < K; ++k) {
        sums[k] = 0;
        for (int64_t l = 0; l < width; ++l) sums[k] += totals[k][l];
      }
    };
    if constexpr (K == 0) {
      // Nothing to reduce, so no reason to walk channel by channel: the map runs in storage
      // order, row after row, which the hardware prefetchers follow.
      const double no_sums[1] = {};
      for (int64_t c = 0; c < C; ++c) finish(c, no_sums);
      if (O == 0) return;
      parallel_tasks(N * C, S, [&](int64_t row) {
        V coef[P];
        for (int p = 0; p < P; ++p) coef[p] = V(coefficients[p][row % C]);
        if (full > 0) {
          map_run<scalar_t, I, O>(inputs, outputs, row * S, width, full / width, width, 0, coef,
                                  map);
        }
        if (full < S) {
          map_run<scalar_t, I, O>(inputs, outputs, row * S + full, width, 1, S - full, 0, coef,
                                  map);
        }
      });
      return;
    }
    parallel_tasks(C, per_channel, [&](int64_t c) {
      double sums[K > 0 ? K : 1] = {};
      reduce_channel(c, sums);
      if (!finish_accepts(finish, c, sums)) {
        reduce_channel(c, sums);
        finish(c, sums);
      }
      if (O == 0) return;
      V coef[P];
      for (int p = 0; p < P; ++p) coef[p] = V(coefficients[p][c]);
      for_each_run(c, [&](int64_t offset, int64_t steps, int64_t count, int64_t) {
        map_run<scalar_t, I, O>(inputs, outputs, offset, width, steps, count, row_stride, coef,
                                map);
      });
    });
    return;
  }

  // Channels-last: rows of C channels, one per sample and position. A channel's elements are a
  // column, so both passes stream whole rows instead, in tiles of rows small enough for L1: down
  // a tile, one channel vector at a time (its coefficients and accumulators in registers), the
  // tile's other channels then read from cache. The reduction runs in a fixed number of row
  // blocks (for a result independent of the thread count) with K x C partial sums each, added up
  // in block order, then `finish` for every channel, then the map.
  const int64_t rows = per_channel;
  const int64_t padded = (C + width - 1) / width * width;
  auto for_each_vector = [&](auto&& body) {
    for (int64_t c = 0; c < C; c += width) body(c, std::min(width, C - c));
  };
  auto load_coefficients = [&](V* coef, int64_t c, int64_t count) {
    for (int p = 0; p < P; ++p) coef[p] = V::loadu(coefficients[p] + c, count);
  };
  std::vector<double> sums(std::max<int64_t>(K, 1) * C, 0.0);
  // sums[k * C + c]: the K sums of every channel, with the current coefficients.
  auto reduce_all = [&] {
    std::fill(sums.begin(), sums.end(), 0.0);
    if (K == 0 || rows == 0) return;
    const int64_t blocks = std::min<int64_t>(rows, kRowBlocks);
    const int64_t rows_per_block = (rows + blocks - 1) / blocks;
    std::vector<double> partial(blocks * K * C, 0.0);
    at::parallel_for(0, blocks, grain_for(rows_per_block * C), [&](int64_t begin, int64_t end) {
      std::vector<T> acc_buffer(std::max<int64_t>(K, 1) * padded);
      for (int64_t block = begin; block < end; ++block) {
        double* block_sums = partial.data() + block * K * C;
        const int64_t first = block * rows_per_block, last = std::min(rows, first + rows_per_block);
        std::fill(acc_buffer.begin(), acc_buffer.end(), T(0));
        for (int64_t tile = first; tile < last; tile += kTileRows) {
          const int64_t tile_end = std::min(last, tile + kTileRows);
          for_each_vector([&](int64_t c, int64_t count) {
            V coef[P], acc[K > 0 ? K : 1];
            load_coefficients(coef, c, count);
            for (int k = 0; k < K; ++k) acc[k] = V::loadu(acc_buffer.data() + k * padded + c);
            accumulate_run<scalar_t, K, I>(acc, inputs, tile * C + c, C, tile_end - tile, count,
                                           0, coef, accumulate);
            for (int k = 0; k < K; ++k) acc[k].store(acc_buffer.data() + k * padded + c);
          });
          if ((tile_end - first) % kFlushElements == 0 || tile_end == last) {
            for (int k = 0; k < K; ++k) {
              for (int64_t c = 0; c < C; ++c) block_sums[k * C + c] += acc_buffer[k * padded + c];
            }
            std::fill(acc_buffer.begin(), acc_buffer.end(), T(0));
          }
        }
      }
    });
    for (int64_t block = 0; block < blocks; ++block) {
      for (int64_t j = 0; j < K * C; ++j) sums[j] += partial[block * K * C + j];
    }
  };
  reduce_all();
  auto channel_sums = [&](int64_t c) {
    std::array<double, (K > 0 ? K : 1)> result{};
    for (int k = 0; k < K; ++k) result[k] = sums[k * C + c];
    return result;
  };
  std::vector<int64_t> again;
  for (int64_t c = 0; c < C; ++c) {
    if (!finish_accepts(finish, c, channel_sums(c).data())) again.push_back(c);
  }
  if (!again.empty()) {
    reduce_all();
    for (int64_t c : again) finish(c, channel_sums(c).data());
  }
  if (O == 0 || rows == 0) return;
  const int64_t tiles = (rows + kTileRows - 1) / kTileRows;
  parallel_tasks(tiles, C * kTileRows, [&](int64_t tile) {
    const int64_t first = tile * kTileRows, steps = std::min(rows, first + kTileRows) - first;
    for_each_vector([&](int64_t c, int64_t count) {
      V coef[P];
      load_coefficients(coef, c, count);
      map_run<scalar_t, I, O>(inputs, outputs, first * C + c, C, steps, count, 0, coef, map);
    });
  });
}

}  // namespace cpu
}  // namespace fastgan
