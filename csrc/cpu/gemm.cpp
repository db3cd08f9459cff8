// fastgan's float32 matrix product: B packed into panels of two vectors' width, A read in place
// (broadcast one value at a time, any strides), and a tile of C accumulated in registers over a
// block of the depth (the BLIS scheme without A's packing, which the kernels' short depths do
// not repay). benchmarks/README.md's product table (the `convt` suite) compares its rate with
// MKL's and oneDNN's.
#include "gemm.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "parallel.h"
#include "tuning.h"

namespace fastgan {
namespace cpu {
namespace {

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#define FASTGAN_OWN_GEMM 1

// The vector registers, by intrinsics rather than at::vec: GCC keeps an array of at::vec's
// Vectorized in memory across the depth loop, an array of __m512 in registers.
#if defined(CPU_CAPABILITY_AVX512)
using Register = __m512;
constexpr int kLanes = 16;
inline Register zero() { return _mm512_setzero_ps(); }
inline Register load(const float* p) { return _mm512_loadu_ps(p); }
inline void store(float* p, Register r) { _mm512_storeu_ps(p, r); }
inline Register broadcast(float value) { return _mm512_set1_ps(value); }
inline Register fmadd(Register a, Register b, Register c) { return _mm512_fmadd_ps(a, b, c); }
inline Register add(Register a, Register b) { return _mm512_add_ps(a, b); }
#else
using Register = __m256;
constexpr int kLanes = 8;
inline Register zero() { return _mm256_setzero_ps(); }
inline Register load(const float* p) { return _mm256_loadu_ps(p); }
inline void store(float* p, Register r) { _mm256_storeu_ps(p, r); }
inline Register broadcast(float value) { return _mm256_set1_ps(value); }
inline Register fmadd(Register a, Register b, Register c) { return _mm256_fmadd_ps(a, b, c); }
inline Register add(Register a, Register b) { return _mm256_add_ps(a, b); }
#endif

// A tile of C in registers: kTileRows rows of two vectors, 24 of AVX-512's 32 vector registers
// (12 of AVX2's 16), which leaves room for B's two vectors and A's broadcast value.
constexpr int kTileRows = kLanes == 16 ? 12 : 6;
constexpr int kTileCols = 2 * kLanes;

// A matrix as its first value and strides, in elements.
struct Matrix {
  const float* data;
  int64_t row_stride, col_stride;
  const float* at(int64_t row, int64_t col) const {
    return data + row * row_stride + col * col_stride;
  }
};

float* aligned(std::vector<float>& buffer, int64_t size) {
  buffer.resize(size + 64 / sizeof(float));
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buffer.data()) + 63) &
                                  ~uintptr_t(63));
}

// B's rows [0, depth) and columns [0, cols) as panels of kTileCols columns, each depth x
// kTileCols, the columns past `cols` zero.
void pack_panels(const Matrix& b, int64_t depth, int64_t cols, float* panels) {
  for (int64_t j0 = 0; j0 < cols; j0 += kTileCols, panels += depth * kTileCols) {
    const int64_t width = std::min<int64_t>(kTileCols, cols - j0);
    if (width < kTileCols) std::fill(panels, panels + depth * kTileCols, 0.f);
    if (b.col_stride == 1 && width == kTileCols) {
      // Vector copies: a memcpy of a size not known at compile time is a call, which halves
      // the rate of products whose panels are repacked often.
      for (int64_t k = 0; k < depth; ++k) {
        store(panels + k * kTileCols, load(b.at(k, j0)));
        store(panels + k * kTileCols + kLanes, load(b.at(k, j0) + kLanes));
      }
    } else if (b.col_stride == 1) {
      for (int64_t k = 0; k < depth; ++k) {
        std::copy_n(b.at(k, j0), width, panels + k * kTileCols);
      }
    } else if (b.row_stride == 1 && width == kTileCols) {
      // B stored transposed (columns contiguous): square blocks transposed in registers.
      const int64_t whole = depth / kLanes * kLanes;
      for (int64_t k = 0; k < whole; k += kLanes) {
        for (int64_t j = 0; j < kTileCols; j += kLanes) {
          at::vec::transpose_mxn<float, kLanes, kLanes>(b.at(k, j0 + j), b.col_stride,
                                                        panels + k * kTileCols + j, kTileCols);
        }
      }
      for (int64_t j = 0; j < kTileCols; ++j) {
        for (int64_t k = whole; k < depth; ++k) panels[k * kTileCols + j] = *b.at(k, j0 + j);
      }
    } else {  // Walk down B's columns, nearer its storage order when they are contiguous.
      for (int64_t j = 0; j < width; ++j) {
        const float* column = b.at(0, j0 + j);
        for (int64_t k = 0; k < depth; ++k) panels[k * kTileCols + j] = column[k * b.row_stride];
      }
    }
  }
}

// The first `cols` columns of Rows rows of C (row stride ldc) = or += Rows rows of A (a_row apart,
// the depth a_step apart) @ one panel of B.
template <int Rows>
void tile_product(int64_t depth, const float* a, int64_t a_row, int64_t a_step,
                  const float* panel, float* c, int64_t ldc, bool accumulate, int cols) {
  Register left[Rows], right[Rows];
  for (int i = 0; i < Rows; ++i) left[i] = right[i] = zero();
  for (int64_t k = 0; k < depth; ++k, a += a_step, panel += kTileCols) {
    const Register b_left = load(panel), b_right = load(panel + kLanes);
#pragma GCC unroll 16
    for (int i = 0; i < Rows; ++i) {
      const Register value = broadcast(a[i * a_row]);
      left[i] = fmadd(value, b_left, left[i]);
      right[i] = fmadd(value, b_right, right[i]);
    }
  }
  if (cols == kTileCols) {
    for (int i = 0; i < Rows; ++i) {
      float* row = c + i * ldc;
      if (accumulate) {
        left[i] = add(left[i], load(row));
        right[i] = add(right[i], load(row + kLanes));
      }
      store(row, left[i]);
      store(row + kLanes, right[i]);
    }
    return;
  }
  alignas(64) float tile[Rows][kTileCols];
  for (int i = 0; i < Rows; ++i) {
    store(tile[i], left[i]);
    store(tile[i] + kLanes, right[i]);
  }
  for (int i = 0; i < Rows; ++i) {
    float* row = c + i * ldc;
    for (int j = 0; j < cols; ++j) row[j] = accumulate ? row[j] + tile[i][j] : tile[i][j];
  }
}

// tile_product for the last `rows` (< kTileRows) rows of A: a tile of exactly that many, so that
// no multiply-add is spent on rows past A's end (64 rows: a sixth 12-row tile of which 8 rows
// were padding, a ninth of the products' work).
template <int Rows = kTileRows - 1>
void edge_product(int rows, int64_t depth, const float* a, int64_t a_row, int64_t a_step,
                  const float* panel, float* c, int64_t ldc, bool accumulate, int cols) {
  if constexpr (Rows > 1) {
    if (rows < Rows) {
      edge_product<Rows - 1>(rows, depth, a, a_row, a_step, panel, c, ldc, accumulate, cols);
      return;
    }
  }
  tile_product<Rows>(depth, a, a_row, a_step, panel, c, ldc, accumulate, cols);
}

// B as block_product reads it: a matrix that it packs a depth block at a time, or (`packed` not
// null) panels packed beforehand over the whole depth (see pack_b).
struct RightOperand {
  Matrix matrix;
  const float* packed;
};

// C[rows, cols] = or += A[rows, depth] @ B[depth, cols] on this thread.
void block_product(const Matrix& a, const RightOperand& b, float* c, int64_t ldc, int64_t rows,
                   int64_t cols, int64_t depth, bool accumulate) {
  thread_local std::vector<float> panel_buffer;
  const int64_t panel_cols = (cols + kTileCols - 1) / kTileCols * kTileCols;
  float* buffer = b.packed != nullptr
                      ? nullptr
                      : aligned(panel_buffer, std::min(depth, kGemmDepthBlock) * panel_cols);
  if (depth == 0 && !accumulate) {
    for (int64_t i = 0; i < rows; ++i) std::fill(c + i * ldc, c + i * ldc + cols, 0.f);
  }
  for (int64_t p0 = 0; p0 < depth; p0 += kGemmDepthBlock) {
    const int64_t block_depth = std::min(kGemmDepthBlock, depth - p0);
    const bool add = accumulate || p0 > 0;
    const float* panels = buffer;
    int64_t panel_stride = block_depth * kTileCols;
    if (b.packed != nullptr) {
      panels = b.packed + p0 * kTileCols;
      panel_stride = depth * kTileCols;
    } else {
      const Matrix& m = b.matrix;
      pack_panels({m.at(p0, 0), m.row_stride, m.col_stride}, block_depth, cols, buffer);
    }
    const int64_t whole_rows = rows / kTileRows * kTileRows;
    const int last_rows = static_cast<int>(rows - whole_rows);
    for (int64_t j0 = 0; j0 < cols; j0 += kTileCols) {
      const float* panel = panels + j0 / kTileCols * panel_stride;
      const int width = static_cast<int>(std::min<int64_t>(kTileCols, cols - j0));
      for (int64_t i0 = 0; i0 < whole_rows; i0 += kTileRows) {
        tile_product<kTileRows>(block_depth, a.at(i0, p0), a.row_stride, a.col_stride, panel,
                                c + i0 * ldc + j0, ldc, add, width);
      }
      if (last_rows > 0) {
        edge_product(last_rows, block_depth, a.at(whole_rows, p0), a.row_stride, a.col_stride,
                     panel, c + whole_rows * ldc + j0, ldc, add, width);
      }
    }
  }
}

// The chunks a product's depth is cut into (1: none). Products with few blocks of C, and so few
// tasks, are cut where they are deep. The cut depends on the shape alone, so that every entry is
// the same sum whatever the thread count.
int64_t depth_chunks(int64_t blocks_of_c, int64_t depth) {
  if (blocks_of_c >= kGemmFewBlocks) return 1;
  return std::clamp<int64_t>(depth / kGemmDepthChunk, 1, kGemmMostDepthChunks);
}

// out = or += a @ b, each product's depth cut into `chunks`: every chunk's product goes into a
// buffer of its own, in parallel, then the buffers are added up in chunk order.
void chunked_products(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                      int64_t chunks, bool accumulate) {
  const bool batched = out.dim() == 3;
  const int64_t batch = batched ? out.size(0) : 1;
  const int64_t rows = out.size(-2), cols = out.size(-1), depth = a.size(-1);
  const int64_t chunk_depth = (depth + chunks - 1) / chunks, area = rows * cols;
  // Every entry is written by its chunk's product (accumulate off): no zero fill.
  const std::unique_ptr<float[]> partials(new float[batch * chunks * area]);
  const float* a_data = a.const_data_ptr<float>();
  const float* b_data = b.const_data_ptr<float>();
  const int64_t a_batch = batched ? a.stride(0) : 0, b_batch = batched ? b.stride(0) : 0;
  parallel_tasks(batch * chunks, area * chunk_depth, [&](int64_t task) {
    const int64_t product = task / chunks, p0 = task % chunks * chunk_depth;
    const Matrix a_chunk{a_data + product * a_batch + p0 * a.stride(-1), a.stride(-2),
                         a.stride(-1)};
    const Matrix b_chunk{b_data + product * b_batch + p0 * b.stride(-2), b.stride(-2),
                         b.stride(-1)};
    block_product(a_chunk, {b_chunk, nullptr}, partials.get() + task * area, cols, rows, cols,
                  std::min(chunk_depth, depth - p0), false);
  });
  float* out_data = out.mutable_data_ptr<float>();
  const int64_t out_batch = batched ? out.stride(0) : 0, ldc = out.stride(-2);
  parallel_tasks(batch * rows, cols * chunks, [&](int64_t task) {
    const int64_t product = task / rows, row = task % rows;
    float* c = out_data + product * out_batch + row * ldc;
    const float* first = partials.get() + product * chunks * area + row * cols;
    for (int64_t j = 0; j < cols; ++j) {
      float sum = accumulate ? c[j] + first[j] : first[j];
      for (int64_t chunk = 1; chunk < chunks; ++chunk) sum += first[chunk * area + j];
      c[j] = sum;
    }
  });
}

// out = or += a @ B by fastgan's kernel, B given by `b` or, when `packed` is not null, packed
// (pack_b) with out's columns. `may_decline`: false (nothing done) where ATen's suits it better.
bool products(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
              const float* packed, bool accumulate, bool may_decline) {
  const bool batched = out.dim() == 3;
  const int64_t batch = batched ? out.size(0) : 1;
  const int64_t rows = out.size(-2), cols = out.size(-1), depth = a.size(-1);
  if (batch == 0 || rows == 0 || cols == 0) return true;
  const int threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  // Tasks: column blocks of each product, and row blocks where there are too few of those to
  // share among the threads. B's panels are packed once per task, so rows stay in one block
  // where they can (their packing costs 1 / rows of the multiply-adds). Column blocks are whole
  // panels.
  const int64_t col_blocks = (cols + kGemmColumnBlock - 1) / kGemmColumnBlock;
  const int64_t col_block =
      ((cols + col_blocks - 1) / col_blocks + kTileCols - 1) / kTileCols * kTileCols;
  const int64_t wanted = 4 * static_cast<int64_t>(threads);
  int64_t row_blocks = 1;
  if (batch * col_blocks < wanted) {
    const int64_t most = std::max<int64_t>(1, rows / (4 * kTileRows));
    row_blocks = std::min(most, (wanted + batch * col_blocks - 1) / (batch * col_blocks));
  }
  const int64_t tasks = batch * col_blocks * row_blocks;
  if (packed == nullptr) {
    const int64_t chunks = depth_chunks(
        batch * col_blocks * std::max<int64_t>(1, rows / (4 * kTileRows)), depth);
    if (chunks > 1) {
      chunked_products(out, a, b, chunks, accumulate);
      return true;
    }
  }
  // A deep product of small matrices: ATen's splits the depth among the threads.
  if (may_decline && tasks < threads) return false;
  const int64_t rows_per_block = (rows + row_blocks - 1) / row_blocks;
  const int64_t row_block = (rows_per_block + kTileRows - 1) / kTileRows * kTileRows;
  const int64_t panel_stride = depth * kTileCols;
  const int64_t packed_batch = (cols + kTileCols - 1) / kTileCols * panel_stride;
  const float* a_data = a.const_data_ptr<float>();
  const float* b_data = packed != nullptr ? nullptr : b.const_data_ptr<float>();
  float* out_data = out.mutable_data_ptr<float>();
  const int64_t a_batch = batched ? a.stride(0) : 0, out_batch = batched ? out.stride(0) : 0;
  const int64_t b_batch = batched && packed == nullptr ? b.stride(0) : 0, ldc = out.stride(-2);
  parallel_tasks(tasks, row_block * col_block * depth, [&](int64_t task) {
    const int64_t product = task / (col_blocks * row_blocks);
    const int64_t i0 = task / col_blocks % row_blocks * row_block;
    const int64_t j0 = task % col_blocks * col_block;
    if (i0 >= rows || j0 >= cols) return;
    const Matrix a_rows{a_data + product * a_batch + i0 * a.stride(-2), a.stride(-2),
                        a.stride(-1)};
    const RightOperand b_cols =
        packed != nullptr
            ? RightOperand{{}, packed + product * packed_batch + j0 / kTileCols * panel_stride}
            : RightOperand{{b_data + product * b_batch + j0 * b.stride(-1), b.stride(-2),
                            b.stride(-1)},
                           nullptr};
    block_product(a_rows, b_cols, out_data + product * out_batch + i0 * ldc + j0, ldc,
                  std::min(row_block, rows - i0), std::min(col_block, cols - j0), depth,
                  accumulate);
  });
  return true;
}

// Runs the product by fastgan's kernel; false (nothing done) where ATen's suits it better.
bool own_matmul(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                bool accumulate) {
  if (!own_gemm().load(std::memory_order_relaxed) || out.scalar_type() != at::kFloat ||
      a.scalar_type() != at::kFloat || b.scalar_type() != at::kFloat || !out.device().is_cpu() ||
      out.stride(-1) != 1) {
    return false;
  }
  return products(out, a, b, nullptr, accumulate, /*may_decline=*/true);
}

constexpr int64_t kPanelWidth = kTileCols;

#else

bool own_matmul(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool) { return false; }

constexpr int64_t kPanelWidth = 0;

#endif

}  // namespace

int64_t panel_width(at::ScalarType dtype) {
  return dtype == at::kFloat && own_gemm().load(std::memory_order_relaxed) ? kPanelWidth : 0;
}

int64_t packed_size(int64_t depth, int64_t cols, int64_t width) {
  return (cols + width - 1) / width * depth * width;
}

void pack_b(const at::Tensor& b, float* panels) {
#ifdef FASTGAN_OWN_GEMM
  TORCH_CHECK(b.dim() == 2 && b.scalar_type() == at::kFloat, "pack_b: b must be a 2-D float32 "
              "matrix, got ", b.sizes(), " ", b.scalar_type());
  pack_panels({b.const_data_ptr<float>(), b.stride(0), b.stride(1)}, b.size(0), b.size(1),
              panels);
#else
  TORCH_CHECK(false, "pack_b: this build has no fastgan matrix kernel (", b.sizes(), ")");
#endif
}

void matrix_product_packed(const at::Tensor& out, const at::Tensor& a, const at::Tensor& panels) {
  TORCH_CHECK(out.dim() == a.dim() && (out.dim() == 2 || out.dim() == 3) &&
                  out.size(-2) == a.size(-2) && (out.dim() == 2 || out.size(0) == a.size(0)),
              "matrix_product_packed: sizes ", out.sizes(), " = ", a.sizes(), " @ packed B");
  const int64_t batch = out.dim() == 3 ? out.size(0) : 1;
  TORCH_CHECK(kPanelWidth > 0 && out.scalar_type() == at::kFloat &&
                  a.scalar_type() == at::kFloat && panels.scalar_type() == at::kFloat &&
                  out.stride(-1) == 1 && panels.is_contiguous() &&
                  panels.numel() == batch * packed_size(a.size(-1), out.size(-1), kPanelWidth),
              "matrix_product_packed: float32 operands, out with contiguous rows and ", batch,
              " packed B of ", a.size(-1), " x ", out.size(-1), " expected");
#ifdef FASTGAN_OWN_GEMM
  products(out, a, at::Tensor(), panels.const_data_ptr<float>(), false, /*may_decline=*/false);
#endif
}

void matrix_product(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                bool accumulate) {
  TORCH_CHECK(out.dim() == a.dim() && a.dim() == b.dim() && (out.dim() == 2 || out.dim() == 3),
              "matrix_product: out, a and b must all be 2-D or all 3-D");
  TORCH_CHECK(a.size(-1) == b.size(-2) && out.size(-2) == a.size(-2) &&
                  out.size(-1) == b.size(-1) &&
                  (out.dim() == 2 || (out.size(0) == a.size(0) && a.size(0) == b.size(0))),
              "matrix_product: sizes ", out.sizes(), " = ", a.sizes(), " @ ", b.sizes(),
              " do not match");
  if (own_matmul(out, a, b, accumulate)) return;
  at::Tensor result = out;
  if (out.dim() == 2) {
    if (accumulate) {
      result.addmm_(a, b);
    } else {
      at::mm_out(result, a, b);
    }
  } else if (accumulate) {
    result.baddbmm_(a, b);
  } else {
    at::bmm_out(result, a, b);
  }
}

std::atomic<bool>& own_gemm() {
  static std::atomic<bool> enabled{true};
  return enabled;
}

bool own_gemm_built() {
#ifdef FASTGAN_OWN_GEMM
  return true;
#else
  return false;
#endif
}

}  // namespace cpu
}  // namespace fastgan
