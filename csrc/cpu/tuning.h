// The machine-tuned constants of the CPU kernels, in one place. Each was chosen by timing the
// kernels; under each, one line of reason and the benchmark that shows its effect. On another
// machine, run that benchmark before and after changing a value (with the same --threads; see
// python benchmarks/run.py --help). The code that reads a constant says what it controls.
#pragma once

#include <cstdint>

namespace fastgan {
namespace cpu {

// ------------------------------------------------------------------------------------------------
// Transposed convolution (conv_transpose2d_*.cpp)

// Images of at least this many input pixels run one per task, all steps on one thread: each
// image's GEMMs are big enough alone, and its Z or G_col stays in cache. Smaller ones run in blocks.
//   python benchmarks/run.py --only convt
constexpr int64_t kImagePixels = 256;

// Entries of Z or G_col per block of small images, and at most of Winograd's V, M or dM (8 MiB
// of float32): blocks of 16 images rather than 8 give the backward's GEMMs rows enough to run
// faster, while 32 (16 MiB) put a DCGAN-64 training step's peak memory above PyTorch's own (the
// blocks are scratch that oneDNN's direct convolutions do not need).
//   python benchmarks/run.py --only convt memory
constexpr int64_t kBlockEntries = 1 << 21;

// The Winograd path's blocks shrink to as many entries as U has, down to this many (4 MiB of
// float32): a block's V and M then stay in L3 between the transforms and the GEMMs, while a
// large U (512 x 256 channels: 3.3 M entries) is still read once per 2 M entries of operands.
// Against blocks of kBlockEntries for every layer, the 128 -> 64 generator layer and the
// 64 -> 128 discriminator layer gain most.
//   python benchmarks/run.py --only convt r1   ("fastgan's kernels alone"; the r1 conv table)
constexpr int64_t kWinogradLeastBlockEntries = 1 << 20;

// The Winograd path runs whole images, or whole blocks of tiles, on one thread each (per-thread
// blocks of half the size) where each thread's blocks have at least this many tiles (GEMM rows):
// the 128 -> 64 generator layer at batch 64, blocks of 32 - 40 tiles, ran 9 ms forward and 17 ms
// backward in every state of the machine against 9 - 16 and 17 - 26 ms with each step shared out
// among the threads (timed side by side in one loop).
//   python benchmarks/run.py --only convt r1   ("fastgan's kernels alone"; the r1 conv table)
constexpr int64_t kWinogradLeastThreadBlockTiles = 16;

// The stride-1 (3x3) Winograd path's blocks are smaller: its transforms of wide images are
// memory-bound. With 64 - 128 channels, blocks of 256 K - 512 K entries run up to 1.5 times
// faster than of 1 M or more, and fewer leave the GEMMs too few rows; with 256 channels (a
// ResNet generator's residual blocks), whose U has 2.4 M entries, blocks of 1 M - 2 M entries
// read it less often and run 5-15% faster than of 512 K (timed side by side in one process, the
// operands of a dozen layers taking turns so that none stays in cache).
//   python benchmarks/run.py --only cyclegan   (its convolution table)
constexpr int64_t kWinograd3x3LeastBlockEntries = 1 << 18;
constexpr int64_t kWinograd3x3MostBlockEntries = 1 << 20;

// NCHW operands with fewer output channels per group take the planar path: the row orientation's
// epilogue vectorizes over the channels, and fewer than one float32 vector of them waste it.
//   python benchmarks/run.py --only convt   (the 64 -> 3 layer)
constexpr int64_t kPlanarChannels = 16;

// Winograd's transforms cost more than its GEMMs save with fewer channels (their work per GEMM
// multiply-add grows as 1 / channels) or fewer tiles in the batch (every GEMM reads all of U, 6.25
// times the weight, at one multiply-add per value and tile).
//   python benchmarks/run.py --only convt r1   (generator layers; discriminator convolutions)
constexpr int64_t kWinogradMinChannels = 64;
constexpr int64_t kWinogradMinTiles = 64;

// Nor with operands (tiles x (C_in + C_out) entries per product) smaller than this ratio times U
// (C_in x C_out per product), which the GEMMs read from memory: there the exact sub-pixel GEMM
// path is the faster (the 512 -> 256 generator layer at batch 64, 64 tiles; at 128 -> 64
// channels Winograd still wins with as few tiles).
//   python benchmarks/run.py --only convt r1   (the 512 -> 256 layer; the 256 -> 512 one)
struct Ratio {
  int64_t num, den;
};
constexpr Ratio kWinogradTilesOverU{3, 2};

// ------------------------------------------------------------------------------------------------
// Matrix products (gemm.cpp)

// The depth of B's packed panels per pass: 256 rows of a 32-wide AVX-512 panel are 32 KiB, which
// stays in L1 while the tiles of A's rows stream past it.
//   python benchmarks/run.py --only convt   (the product table)
constexpr int64_t kGemmDepthBlock = 256;

// Columns of C per task: the panels of B one task packs (512 KiB at the depth above) fit in L2.
//   python benchmarks/run.py --only convt   (the product table)
constexpr int64_t kGemmColumnBlock = 512;

// A deep product with fewer blocks of C than this (a 1x1 input's gradient: 64 x 100 over a depth
// of 8192) has its depth cut into chunks of kGemmDepthChunk, at most kGemmMostDepthChunks of them,
// so that the threads have tasks.
//   python benchmarks/run.py --only convt   (the first generator layer)
constexpr int64_t kGemmFewBlocks = 4;
constexpr int64_t kGemmDepthChunk = 1024;
constexpr int64_t kGemmMostDepthChunks = 8;

// ------------------------------------------------------------------------------------------------
// Per-channel passes (per_channel.h: the BatchNorm + LeakyReLU kernels)

// Bytes of rows a channels-first reduction prefetches ahead: one row ahead (256 bytes for an 8x8
// map) leaves the reduction waiting on memory.
//   python benchmarks/run.py --only bn   (64x256x8x8)
constexpr int64_t kPrefetchBytes = 2048;

// Channels-last reductions walk this many rows at a time, this many channel vectors side by side
// (their accumulators in registers): faster sums than 4 rows one vector at a time, 16-512 channels.
//   python benchmarks/run.py --only bn   (NHWC rows)
constexpr int64_t kSumTileRows = 32;
constexpr int kSumGroupVectors = 4;

// Channels-last maps take this many rows per task.
//   python benchmarks/run.py --only bn   (NHWC rows)
constexpr int64_t kTileRows = 4;

// A channels-last map walks in storage order, rather than one channel vector at a time down its
// rows, when rows hold at least this many whole vectors and it reads and writes at least this many
// bytes: the vector-at-a-time walk stalls on loads from L3 or memory, and wins from nearer caches.
//   python benchmarks/run.py --only bn   (NHWC rows)
constexpr int64_t kStorageOrderRowVectors = 8;
constexpr int64_t kStorageOrderMapBytes = int64_t(16) << 20;

// Rows of exactly 4 or 8 whole vectors walk in storage order with the coefficients loaded into
// local vectors once per task of this many rows: loading them per vector from the arrays, the walk
// ran at half the speed of a channels-first map over the same bytes (16 vectors: slower this way).
//   python benchmarks/run.py --only bn   (NHWC, 64 and 128 channels)
constexpr int64_t kRegisterTileRows = 64;

// A channels-first storage-order reduction sums rows of at least this many bytes one by one (each
// row's sums moved into double), shorter ones by blocks of samples (sums kept in vectors across
// rows): moving a short row's sums costs more than summing it.
//   python benchmarks/run.py --only bn   (NCHW, 32x32 against 16x16 and 8x8 maps)
constexpr int64_t kStorageOrderSumsRowBytes = 4096;

// walk_channels: channels-first ops walk channel by channel with rows shorter than this many bytes
// (per-row coefficient set-up dominates a short storage-order row), with this many inputs or more
// (the double backward: the channel walk's second read comes from cache), or with more input bytes
// than this (a storage-order second pass would come from memory); in storage order otherwise.
//   python benchmarks/run.py --only bn   (rows and inputs; for the size, add a shape of more than
//   48 MiB, e.g. (64, 256, 32, 32), to SHAPES in benchmarks/bench_batch_norm_leaky_relu.py)
constexpr int64_t kChannelWalkRowBytes = 256;
constexpr int kChannelWalkInputs = 3;
constexpr int64_t kStorageOrderMaxBytes = int64_t(48) << 20;

// ------------------------------------------------------------------------------------------------
// Gradient penalty (gradient_penalty_kernel.cpp)

// Independent vector accumulators per chunk of the sum of squares, so that consecutive fused
// multiply-adds do not wait on each other.
//   python benchmarks/run.py --only r1
constexpr int kPenaltyAccumulators = 4;

}  // namespace cpu
}  // namespace fastgan
