// Per-channel "reduce, then map" passes over (N, C, *) tensors on the CPU, native for channels-first
// and channels-last storage, parallel and vectorized with at::vec. Channels-first tensors are
// walked channel by channel (reduce a channel, then map it) or in storage order (reduce every
// channel, then map), as walk_channels says; channels-last ones are walked a few rows at a time,
// close to storage order. Ops supply the per-element math as functors on Vectorized values of
// the compute type: the storage type itself, or float for bfloat16 and float16 storage.
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
#include "tuning.h"

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

// Storage-order reductions split the rows (channels-last) or samples (channels-first) into this
// many blocks, for a result independent of the thread count.
constexpr int64_t kRowBlocks = 16;

// Channels-last reductions flush their partial sums between tiles of kSumTileRows rows.
static_assert(kFlushElements % kSumTileRows == 0, "flushes fall on tile boundaries");

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

// acc[k] += the K sums of the `size` contiguous elements from `offset`: its full vectors, then
// its tail.
template <typename scalar_t, int K, int I, typename Accumulate>
inline void accumulate_contiguous(Vec<scalar_t>* acc, const std::array<const scalar_t*, I>& inputs,
                                  int64_t offset, int64_t size, const Vec<scalar_t>* coef,
                                  const Accumulate& accumulate) {
  constexpr int64_t width = Vec<scalar_t>::size();
  const int64_t full = size / width * width;
  if (full > 0) {
    accumulate_run<scalar_t, K, I>(acc, inputs, offset, width, full / width, width, 0, coef,
                                   accumulate);
  }
  if (full < size) {
    accumulate_run<scalar_t, K, I>(acc, inputs, offset + full, width, 1, size - full, 0, coef,
                                   accumulate);
  }
}

// map over the `size` contiguous elements from `offset`: its full vectors, then its tail.
template <typename scalar_t, int I, int O, typename Map>
inline void map_contiguous(const std::array<const scalar_t*, I>& inputs,
                           const std::array<scalar_t*, O>& outputs, int64_t offset, int64_t size,
                           const Vec<scalar_t>* coef, const Map& map) {
  constexpr int64_t width = Vec<scalar_t>::size();
  const int64_t full = size / width * width;
  if (full > 0) {
    map_run<scalar_t, I, O>(inputs, outputs, offset, width, full / width, width, 0, coef, map);
  }
  if (full < size) {
    map_run<scalar_t, I, O>(inputs, outputs, offset + full, width, 1, size - full, 0, coef, map);
  }
}

// Per-block partial sums (blocks x `count` doubles, laid out block after block) added up in
// block order: the same result for any thread count.
inline void add_blocks(const std::vector<double>& partial, int64_t count, double* sums) {
  for (size_t first = 0; first < partial.size(); first += count) {
    for (int64_t j = 0; j < count; ++j) sums[j] += partial[first + j];
  }
}

// The lanes of `v`, added up in double.
template <typename V>
inline double lane_sum(const V& v) {
  typename V::value_type lanes[V::size()];
  v.store(lanes);
  double total = 0;
  for (int64_t l = 0; l < V::size(); ++l) total += static_cast<double>(lanes[l]);
  return total;
}

// fn(offset, steps, count, n) for channel c's runs of a channels-first tensor: sample n's row of S
// contiguous elements (a stride of C * S after the previous sample's), its full vectors and then
// its tail.
template <typename Fn>
void for_each_channel_run(const ChannelLayout& layout, int64_t width, int64_t c, const Fn& fn) {
  const int64_t S = layout.spatial, full = S / width * width;
  for (int64_t n = 0; n < layout.batch; ++n) {
    const int64_t row = (n * layout.channels + c) * S;
    if (full > 0) fn(row, full / width, width, n);
    if (full < S) fn(row + full, 1, S - full, n);
  }
}

// sums[k] = the K sums of channel c of a channels-first tensor. The hardware prefetcher restarts
// at each row, so the walk prefetches kPrefetchBytes of rows ahead, reaching from the channel's
// last rows into the next channel's first ones, which a task takes next.
template <typename scalar_t, int K, int I, int P, typename Accumulate>
void channel_sums(const ChannelLayout& layout, const std::array<const scalar_t*, I>& inputs,
                  const std::array<opmath_t<scalar_t>*, P>& coefficients,
                  const Accumulate& accumulate, int64_t c, double* sums) {
  using V = Vec<scalar_t>;
  using T = opmath_t<scalar_t>;
  constexpr int64_t width = V::size();
  const int64_t N = layout.batch, S = layout.spatial, row_stride = layout.channels * S;
  const int64_t row_bytes = std::max<int64_t>(1, S * static_cast<int64_t>(sizeof(scalar_t)));
  const int64_t ahead = std::min(N, std::max<int64_t>(1, kPrefetchBytes / row_bytes));
  V coef[P], acc[K];
  for (int p = 0; p < P; ++p) coef[p] = V(coefficients[p][c]);
  for (int k = 0; k < K; ++k) acc[k] = V(T(0));
  for (int k = 0; k < K; ++k) sums[k] = 0;
  // Rows of at most a vector: one strided run, moved into double every kFlushElements rows (a call
  // per row would cost more than the row's few elements).
  if (S <= width) {
    for (int64_t first = 0; first < N; first += kFlushElements) {
      accumulate_run<scalar_t, K, I>(acc, inputs, (first * layout.channels + c) * S, row_stride,
                                     std::min(kFlushElements, N - first), S, ahead * row_stride,
                                     coef, accumulate);
      for (int k = 0; k < K; ++k) {
        sums[k] += lane_sum(acc[k]);
        acc[k] = V(T(0));
      }
    }
    return;
  }
  int64_t pending = 0;
  for_each_channel_run(layout, width, c, [&](int64_t offset, int64_t steps, int64_t count,
                                             int64_t n) {
    const int64_t prefetch = n + ahead < N ? ahead * row_stride : (ahead - N) * row_stride + S;
    accumulate_run<scalar_t, K, I>(acc, inputs, offset, width, steps, count, prefetch, coef,
                                   accumulate);
    pending += steps * count;
    if (pending >= kFlushElements * width) {
      for (int k = 0; k < K; ++k) {
        sums[k] += lane_sum(acc[k]);
        acc[k] = V(T(0));
      }
      pending = 0;
    }
  });
  for (int k = 0; k < K; ++k) sums[k] += lane_sum(acc[k]);
}

// map over channel c of a channels-first tensor, prefetching the next sample's row.
template <typename scalar_t, int I, int P, int O, typename Map>
void map_channel(const ChannelLayout& layout, const std::array<const scalar_t*, I>& inputs,
                 const std::array<opmath_t<scalar_t>*, P>& coefficients,
                 const std::array<scalar_t*, O>& outputs, const Map& map, int64_t c) {
  using V = Vec<scalar_t>;
  V coef[P];
  for (int p = 0; p < P; ++p) coef[p] = V(coefficients[p][c]);
  const int64_t row_stride = layout.channels * layout.spatial;
  if (layout.spatial <= V::size()) {  // rows of at most a vector: one strided run, as above
    map_run<scalar_t, I, O>(inputs, outputs, c * layout.spatial, row_stride, layout.batch,
                            layout.spatial, row_stride, coef, map);
    return;
  }
  for_each_channel_run(layout, V::size(), c, [&](int64_t offset, int64_t steps, int64_t count,
                                                 int64_t) {
    map_run<scalar_t, I, O>(inputs, outputs, offset, V::size(), steps, count, row_stride, coef,
                            map);
  });
}

// sums[k * C + c] = the K sums of channel c of a channels-first tensor with rows of at least
// kStorageOrderSumsRowBytes, walked in storage order: one task per row (sample n, channel c), or
// per piece of kFlushElements vectors of a longer row, each task's sums in double, added up per
// channel in task order.
template <typename scalar_t, int K, int I, int P, typename Accumulate>
void storage_order_sums(const ChannelLayout& layout, const std::array<const scalar_t*, I>& inputs,
                        const std::array<opmath_t<scalar_t>*, P>& coefficients,
                        const Accumulate& accumulate, double* sums) {
  using V = Vec<scalar_t>;
  using T = opmath_t<scalar_t>;
  constexpr int64_t width = V::size(), piece = kFlushElements * width;
  const int64_t C = layout.channels, S = layout.spatial, rows = layout.batch * C;
  const int64_t pieces = std::max<int64_t>(1, (S + piece - 1) / piece), tasks = rows * pieces;
  std::vector<double> partial(tasks * K);
  parallel_tasks(tasks, std::min(S, piece), [&](int64_t task) {
    const int64_t row = task / pieces, first = task % pieces * piece;
    V coef[P], acc[K];
    for (int p = 0; p < P; ++p) coef[p] = V(coefficients[p][row % C]);
    for (int k = 0; k < K; ++k) acc[k] = V(T(0));
    accumulate_contiguous<scalar_t, K, I>(acc, inputs, row * S + first,
                                          std::min(S, first + piece) - first, coef, accumulate);
    for (int k = 0; k < K; ++k) partial[task * K + k] = lane_sum(acc[k]);
  });
  std::fill(sums, sums + K * C, 0.0);
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t c = task / pieces % C;
    for (int k = 0; k < K; ++k) sums[k * C + c] += partial[task * K + k];
  }
}

// sums[k * C + c] = the K sums of channel c of a channels-first tensor with rows shorter than
// kStorageOrderSumsRowBytes, walked in storage order: the samples are split into a fixed number
// of blocks (and the channels into groups when there are few samples). Each task keeps its
// channels' K sums as vectors, so a row costs no horizontal sum, and moves them into double every
// kFlushElements per lane; the blocks' sums are added per channel in block order.
template <typename scalar_t, int K, int I, int P, typename Accumulate>
void sample_block_sums(const ChannelLayout& layout, const std::array<const scalar_t*, I>& inputs,
                       const std::array<opmath_t<scalar_t>*, P>& coefficients,
                       const Accumulate& accumulate, double* sums) {
  using V = Vec<scalar_t>;
  using T = opmath_t<scalar_t>;
  constexpr int64_t width = V::size();
  const int64_t N = layout.batch, C = layout.channels, S = layout.spatial;
  std::fill(sums, sums + K * C, 0.0);
  if (N == 0 || C == 0) return;
  const int64_t row_lanes = (S + width - 1) / width;
  const int64_t blocks = std::min<int64_t>(N, kRowBlocks);
  const int64_t groups = std::min<int64_t>(C, (kRowBlocks + blocks - 1) / blocks);
  const int64_t block_samples = (N + blocks - 1) / blocks;
  const int64_t group_channels = (C + groups - 1) / groups;
  std::vector<double> partial(blocks * K * C, 0.0);  // [block][k][c]; each group owns channels
  parallel_tasks(blocks * groups, block_samples * group_channels * S, [&](int64_t task) {
    const int64_t block = task / groups, group = task % groups;
    const int64_t first_sample = block * block_samples;
    const int64_t last_sample = std::min(N, first_sample + block_samples);
    const int64_t first_channel = std::min(C, group * group_channels);
    const int64_t last_channel = std::min(C, first_channel + group_channels);
    std::vector<V> acc((last_channel - first_channel) * K, V(T(0)));
    double* block_sums = partial.data() + block * K * C;
    auto flush = [&] {
      for (int64_t c = first_channel; c < last_channel; ++c) {
        for (int k = 0; k < K; ++k) {
          V& channel_acc = acc[(c - first_channel) * K + k];
          block_sums[k * C + c] += lane_sum(channel_acc);
          channel_acc = V(T(0));
        }
      }
    };
    int64_t pending = 0;  // elements per lane since the last flush
    for (int64_t n = first_sample; n < last_sample; ++n) {
      if (pending + row_lanes > kFlushElements) {
        flush();
        pending = 0;
      }
      for (int64_t c = first_channel; c < last_channel; ++c) {
        V coef[P];
        for (int p = 0; p < P; ++p) coef[p] = V(coefficients[p][c]);
        accumulate_contiguous<scalar_t, K, I>(acc.data() + (c - first_channel) * K, inputs,
                                              (n * C + c) * S, S, coef, accumulate);
      }
      pending += row_lanes;
    }
    flush();
  });
  add_blocks(partial, K * C, sums);
}

// Channels-last: acc[g] += the K sums of channel vector g of the G side by side from channel c
// (the last of `count` channels), over `rows` rows of C from first_row. Lanes past `count` collect
// values that are never read.
template <typename scalar_t, int G, int K, int I, int P, typename Accumulate>
inline void accumulate_columns(Vec<scalar_t> (&acc)[G][K],
                               const std::array<const scalar_t*, I>& inputs,
                               const std::array<opmath_t<scalar_t>*, P>& coefficients, int64_t C,
                               int64_t first_row, int64_t rows, int64_t c, int64_t count,
                               const Accumulate& accumulate) {
  using V = Vec<scalar_t>;
  constexpr int64_t width = V::size();
  V coef[G][P], in[I];
  for (int g = 0; g < G; ++g) {
    const int64_t lanes = g + 1 < G ? width : count;
    for (int p = 0; p < P; ++p) coef[g][p] = V::loadu(coefficients[p] + c + g * width, lanes);
  }
  for (int64_t row = first_row; row < first_row + rows; ++row) {
    for (int g = 0; g < G; ++g) {
      const int64_t lanes = g + 1 < G ? width : count;
      for (int i = 0; i < I; ++i) in[i] = load(inputs[i] + row * C + c + g * width, lanes);
      accumulate(acc[g], in, coef[g]);
    }
  }
}

// Channels-last: sums[k * C + c] = the K sums of channel c. Rows of C channels, one per sample and
// position; a channel is a column. The rows are split into a fixed number of blocks, each walked
// kSumTileRows rows at a time: down the rows, kSumGroupVectors channel vectors side by side (their
// coefficients and accumulators in registers), then the next group; the last few vectors one at a
// time. Each block keeps K x C partial sums; the blocks' sums are added up in block order.
template <typename scalar_t, int K, int I, int P, typename Accumulate>
void channels_last_sums(const ChannelLayout& layout, const std::array<const scalar_t*, I>& inputs,
                        const std::array<opmath_t<scalar_t>*, P>& coefficients,
                        const Accumulate& accumulate, double* sums) {
  using V = Vec<scalar_t>;
  using T = opmath_t<scalar_t>;
  constexpr int64_t width = V::size();
  constexpr int G = kSumGroupVectors;
  const int64_t C = layout.channels, rows = layout.per_channel();
  const int64_t padded = (C + width - 1) / width * width;
  std::fill(sums, sums + K * C, 0.0);
  if (rows == 0) return;
  const int64_t blocks = std::min<int64_t>(rows, kRowBlocks);
  const int64_t rows_per_block = (rows + blocks - 1) / blocks;
  std::vector<double> partial(blocks * K * C, 0.0);
  at::parallel_for(0, blocks, grain_for(rows_per_block * C), [&](int64_t begin, int64_t end) {
    // [k][c]: the sums since the last flush, in the compute type
    std::vector<T> acc_buffer(K * padded);
    // Loads acc[g][k] (V[vectors][K]) from acc_buffer, or stores it there, from channel c.
    auto transfer = [&](auto& acc, int64_t c, bool load) {
      constexpr int vectors = std::extent_v<std::remove_reference_t<decltype(acc)>>;
      for (int g = 0; g < vectors; ++g) {
        for (int k = 0; k < K; ++k) {
          T* at = acc_buffer.data() + k * padded + c + g * width;
          if (load) acc[g][k] = V::loadu(at);
          else acc[g][k].store(at);
        }
      }
    };
    for (int64_t block = begin; block < end; ++block) {
      double* block_sums = partial.data() + block * K * C;
      const int64_t first = block * rows_per_block, last = std::min(rows, first + rows_per_block);
      std::fill(acc_buffer.begin(), acc_buffer.end(), T(0));
      for (int64_t tile = first; tile < last; tile += kSumTileRows) {
        const int64_t tile_rows = std::min(last, tile + kSumTileRows) - tile;
        int64_t c = 0;
        for (; c + G * width <= C; c += G * width) {
          V acc[G][K];
          transfer(acc, c, true);
          accumulate_columns<scalar_t, G, K, I, P>(acc, inputs, coefficients, C, tile, tile_rows,
                                                   c, width, accumulate);
          transfer(acc, c, false);
        }
        for (; c < C; c += width) {  // the last few vectors, one at a time
          V acc[1][K];
          transfer(acc, c, true);
          accumulate_columns<scalar_t, 1, K, I, P>(acc, inputs, coefficients, C, tile, tile_rows,
                                                   c, std::min(width, C - c), accumulate);
          transfer(acc, c, false);
        }
        const int64_t done = tile + tile_rows - first;
        if (done % kFlushElements == 0 || tile + tile_rows == last) {
          for (int k = 0; k < K; ++k) {
            for (int64_t j = 0; j < C; ++j) block_sums[k * C + j] += acc_buffer[k * padded + j];
          }
          std::fill(acc_buffer.begin(), acc_buffer.end(), T(0));
        }
      }
    }
  });
  add_blocks(partial, K * C, sums);
}

// Channels-last map over rows of G whole channel vectors, in storage order, with the rows'
// coefficients loaded once per task of kRegisterTileRows rows into local vectors (registers, or the
// stack for the backward maps' six and ten per channel) rather than per vector from the arrays.
template <int G, typename scalar_t, int I, int P, int O, typename Map>
void map_rows_in_registers(const ChannelLayout& layout,
                           const std::array<const scalar_t*, I>& inputs,
                           const std::array<opmath_t<scalar_t>*, P>& coefficients,
                           const std::array<scalar_t*, O>& outputs, const Map& map) {
  using V = Vec<scalar_t>;
  constexpr int64_t width = V::size(), C = G * width;
  const int64_t rows = layout.per_channel();
  const int64_t tiles = (rows + kRegisterTileRows - 1) / kRegisterTileRows;
  parallel_tasks(tiles, C * kRegisterTileRows, [&](int64_t tile) {
    V coef[G][P];
    for (int g = 0; g < G; ++g) {
      for (int p = 0; p < P; ++p) coef[g][p] = V::loadu(coefficients[p] + g * width);
    }
    const int64_t first = tile * kRegisterTileRows;
    const int64_t last = std::min(rows, first + kRegisterTileRows);
    for (int64_t offset = first * C; offset < last * C; offset += C) {
      for (int g = 0; g < G; ++g) {
        V in[I], out[O > 0 ? O : 1];
        for (int i = 0; i < I; ++i) in[i] = load(inputs[i] + offset + g * width, width);
        map(in, coef[g], out);
        for (int o = 0; o < O; ++o) store(out[o], outputs[o] + offset + g * width, width);
      }
    }
  });
}

// map over every element, in storage order: channels-first rows of S elements share one channel's
// coefficients; channels-last rows hold one element of every channel.
template <typename scalar_t, int I, int P, int O, typename Map>
void map_in_storage_order(const ChannelLayout& layout,
                          const std::array<const scalar_t*, I>& inputs,
                          const std::array<opmath_t<scalar_t>*, P>& coefficients,
                          const std::array<scalar_t*, O>& outputs, const Map& map) {
  using V = Vec<scalar_t>;
  constexpr int64_t width = V::size();
  const int64_t C = layout.channels;
  if (!layout.channels_last) {
    const int64_t S = layout.spatial;
    at::parallel_for(0, layout.batch * C, grain_for(S), [&](int64_t begin, int64_t end) {
      // The channel counts along with the row: a division per row is dear in a short-row map.
      for (int64_t row = begin, c = begin % C; row < end; ++row, c = c + 1 == C ? 0 : c + 1) {
        V coef[P];
        for (int p = 0; p < P; ++p) coef[p] = V(coefficients[p][c]);
        map_contiguous<scalar_t, I, O>(inputs, outputs, row * S, S, coef, map);
      }
    });
    return;
  }
  // Rows of exactly 4 or 8 whole vectors (64 or 128 float channels).
  if (C == 4 * width) {
    map_rows_in_registers<4, scalar_t, I, P, O>(layout, inputs, coefficients, outputs, map);
    return;
  }
  if (C == 8 * width) {
    map_rows_in_registers<8, scalar_t, I, P, O>(layout, inputs, coefficients, outputs, map);
    return;
  }
  // kTileRows rows per task, walked one channel vector at a time down the rows (its coefficients
  // loaded once), or in storage order (each vector's coefficients loaded from the cached arrays)
  // when rows hold at least kStorageOrderRowVectors whole vectors and the map reads and writes at
  // least kStorageOrderMapBytes.
  const int64_t rows = layout.per_channel(), tiles = (rows + kTileRows - 1) / kTileRows;
  const int64_t map_bytes = (I + O) * rows * C * static_cast<int64_t>(sizeof(scalar_t));
  const bool storage_order = C % width == 0 && C >= kStorageOrderRowVectors * width &&
                             map_bytes >= kStorageOrderMapBytes;
  parallel_tasks(tiles, C * kTileRows, [&](int64_t tile) {
    const int64_t first = tile * kTileRows, steps = std::min(rows, first + kTileRows) - first;
    if (storage_order) {
      const scalar_t* at[I];
      scalar_t* to[O > 0 ? O : 1];
      for (int i = 0; i < I; ++i) at[i] = inputs[i] + first * C;
      for (int o = 0; o < O; ++o) to[o] = outputs[o] + first * C;
      V coef[P], in[I], out[O > 0 ? O : 1];
      for (int64_t offset = 0, c = 0; offset < steps * C; offset += width) {
        for (int p = 0; p < P; ++p) coef[p] = V::loadu(coefficients[p] + c);
        for (int i = 0; i < I; ++i) in[i] = load(at[i] + offset, width);
        map(in, coef, out);
        for (int o = 0; o < O; ++o) store(out[o], to[o] + offset, width);
        c = c + width == C ? 0 : c + width;
      }
      return;
    }
    for (int64_t c = 0; c < C; c += width) {
      const int64_t count = std::min(width, C - c);
      V coef[P];
      for (int p = 0; p < P; ++p) coef[p] = V::loadu(coefficients[p] + c, count);
      map_run<scalar_t, I, O>(inputs, outputs, first * C + c, C, steps, count, 0, coef, map);
    }
  });
}

// Whether a channels-first reduce_then_map walks channel by channel (reduce a channel, then map it
// while it is still in this core's caches) rather than in storage order (reduce every channel,
// then map everything row after row). Each wins somewhere:
// - storage order for one or two inputs with long rows, up to a size: the channel walk's re-reads
//   miss, since a channel's rows lie a power of two apart in most networks and share cache sets;
// - the channel walk for three inputs (the double backward; with long rows, storage order in both
//   passes ties with it), for short rows (per-row coefficient set-up dominates a storage-order
//   row), and beyond that size (the storage-order second pass comes from memory).
inline bool walk_channels(const ChannelLayout& layout, int inputs, int64_t bytes_per_element) {
  if (layout.channels_last) return false;
  const int64_t row_bytes = layout.spatial * bytes_per_element;
  const int64_t input_bytes = layout.batch * layout.channels * row_bytes * inputs;
  return inputs >= kChannelWalkInputs || row_bytes < kChannelWalkRowBytes ||
         input_bytes > kStorageOrderMaxBytes;
}

// For each channel c (a layout without instance statistics):
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
void reduce_then_map_per_channel(const ChannelLayout& layout,
                                 const std::array<const scalar_t*, I>& inputs,
                                 const std::array<opmath_t<scalar_t>*, P>& coefficients,
                                 const std::array<scalar_t*, O>& outputs,
                                 const Accumulate& accumulate, const Finish& finish,
                                 const Map& map) {
  const int64_t C = layout.channels;
  if constexpr (K > 0 && O > 0) {
    if (walk_channels(layout, I, sizeof(scalar_t))) {
      parallel_tasks(C, layout.per_channel(), [&](int64_t c) {
        double channel[K];
        channel_sums<scalar_t, K, I, P>(layout, inputs, coefficients, accumulate, c, channel);
        if (!finish_accepts(finish, c, channel)) {
          channel_sums<scalar_t, K, I, P>(layout, inputs, coefficients, accumulate, c, channel);
          finish(c, channel);
        }
        map_channel<scalar_t, I, P, O>(layout, inputs, coefficients, outputs, map, c);
      });
      return;
    }
  }
  // sums[k * C + c]: the K sums of every channel, with the current coefficients.
  std::vector<double> sums(std::max(K, 1) * C, 0.0);
  auto reduce_all = [&] {
    if constexpr (K > 0) {
      if (layout.channels_last) {
        channels_last_sums<scalar_t, K, I, P>(layout, inputs, coefficients, accumulate,
                                              sums.data());
      } else if (layout.spatial * static_cast<int64_t>(sizeof(scalar_t)) >=
                 kStorageOrderSumsRowBytes) {
        storage_order_sums<scalar_t, K, I, P>(layout, inputs, coefficients, accumulate,
                                              sums.data());
      } else {
        sample_block_sums<scalar_t, K, I, P>(layout, inputs, coefficients, accumulate,
                                             sums.data());
      }
    }
  };
  auto sums_of = [&](int64_t c) {
    std::array<double, (K > 0 ? K : 1)> result{};
    for (int k = 0; k < K; ++k) result[k] = sums[k * C + c];
    return result;
  };
  reduce_all();
  std::vector<int64_t> again;
  for (int64_t c = 0; c < C; ++c) {
    if (!finish_accepts(finish, c, sums_of(c).data())) again.push_back(c);
  }
  if (!again.empty()) {
    reduce_all();
    for (int64_t c : again) finish(c, sums_of(c).data());
  }
  if constexpr (O > 0) {
    if (layout.per_channel() > 0) {
      map_in_storage_order<scalar_t, I, P, O>(layout, inputs, coefficients, outputs, map);
    }
  }
}

// reduce_then_map_per_channel over the layout's statistics channels (ChannelLayout::statistics):
// with instance statistics, `finish` and the coefficients see channel n * C + c of sample n.
// Channels-first (N, C, S) is then (1, N * C, S) in the same memory; channels-last samples are
// each a (1, S, C) tensor of their own.
template <typename scalar_t, int K, int I, int P, int O, typename Accumulate, typename Finish,
          typename Map>
void reduce_then_map(const ChannelLayout& layout, const std::array<const scalar_t*, I>& inputs,
                     const std::array<opmath_t<scalar_t>*, P>& coefficients,
                     const std::array<scalar_t*, O>& outputs, const Accumulate& accumulate,
                     const Finish& finish, const Map& map) {
  if (!layout.instance) {
    reduce_then_map_per_channel<scalar_t, K, I, P, O>(layout, inputs, coefficients, outputs,
                                                      accumulate, finish, map);
    return;
  }
  const int64_t N = layout.batch, C = layout.channels, S = layout.spatial;
  if (!layout.stored_channels_last) {
    const ChannelLayout merged{1, N * C, S, false, S == 1};
    reduce_then_map_per_channel<scalar_t, K, I, P, O>(merged, inputs, coefficients, outputs,
                                                      accumulate, finish, map);
    return;
  }
  const ChannelLayout sample{1, C, S, true, true};
  auto shifted = [](auto pointers, int64_t by) {
    for (auto& pointer : pointers) pointer += by;
    return pointers;
  };
  auto run_sample = [&](int64_t n) {
    reduce_then_map_per_channel<scalar_t, K, I, P, O>(
        sample, shifted(inputs, n * S * C), shifted(coefficients, n * C),
        shifted(outputs, n * S * C), accumulate,
        [&](int64_t c, const double* sums) { return finish(n * C + c, sums); }, map);
  };
  // When the threads divide the batch, each thread walks whole samples (their passes run serially
  // inside the parallel region); otherwise the samples go one after another, each sample's two
  // passes shared out among the threads. The summation order is the same either way.
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  if (threads > 1 && N % threads == 0) {
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) run_sample(n);
    });
    return;
  }
  for (int64_t n = 0; n < N; ++n) run_sample(n);
}

}  // namespace cpu
}  // namespace fastgan
