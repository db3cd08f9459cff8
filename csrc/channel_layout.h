// How per-channel ops (BatchNorm) see an (N, C, *) tensor, shared by the CPU and CUDA backends so
// both pick the same storage order (fastgan/ops/batch_norm_leaky_relu.py mirrors it for the fake
// kernels).
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace fastgan {

// An (N, C, S...) tensor seen as N x C x S (S = product of the spatial sizes), stored densely either
// channels-first (N, C, S) or channels-last (N, S, C). `channels_last` says how kernels walk it: a
// channels-first tensor with S == 1 is walked as channels-last (rows of C), the same memory.
// `instance`: each sample's channels have statistics of their own (instance normalization), N * C
// of them, numbered n * C + c; otherwise each channel's statistics span the batch (batch
// normalization).
struct ChannelLayout {
  int64_t batch, channels, spatial;
  bool stored_channels_last;
  bool channels_last;
  bool instance = false;
  int64_t per_channel() const { return batch * spatial; }
  int64_t statistics() const { return instance ? batch * channels : channels; }
  int64_t per_statistic() const { return instance ? spatial : batch * spatial; }
};

// (0, 2, 3, ..., 1): the permutation that makes a channels-last tensor contiguous.
inline std::vector<int64_t> channels_last_order(int64_t dim) {
  std::vector<int64_t> order{0};
  for (int64_t d = 2; d < dim; ++d) order.push_back(d);
  order.push_back(1);
  return order;
}

// The input's own storage order when it is dense in either order (NCHW and channels_last both run
// without copies); anything else is copied to channels-first.
inline ChannelLayout choose_layout(const at::Tensor& input, bool instance = false) {
  int64_t spatial = 1;
  for (int64_t d = 2; d < input.dim(); ++d) spatial *= input.size(d);
  const bool stored_channels_last =
      !input.is_contiguous() && input.permute(channels_last_order(input.dim())).is_contiguous();
  return {input.size(0), input.size(1), spatial, stored_channels_last,
          stored_channels_last || spatial == 1, instance};
}

// `t` (shaped like the input) stored densely in `layout`'s order; no copy when it already is.
inline at::Tensor to_layout(const at::Tensor& t, const ChannelLayout& layout) {
  if (!layout.stored_channels_last) return t.contiguous();
  const auto order = channels_last_order(t.dim());
  std::vector<int64_t> inverse(order.size());
  for (size_t i = 0; i < order.size(); ++i) inverse[order[i]] = static_cast<int64_t>(i);
  return t.permute(order).contiguous().permute(inverse);
}

}  // namespace fastgan
