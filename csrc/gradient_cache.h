// Decoder-sized gradient buffers of the C++ loss node, kept for the next step instead of going
// back to malloc.
//
// Why: a training step allocates the decoder gradient (B x D values, 313 KB at the paper's size,
// 5 MB at L=16) and frees it when the optimizer clears .grad. For blocks past 128 KB glibc either
// maps fresh pages (mmap) or grows and trims the top of its heap, so each step faults the buffer
// in again, 4 KB at a time: measured 220-320 faults and 0.3-0.5 ms per step at L=16, B=100 in a
// fresh process, about a third of the step (docs/performance.md). Reused blocks are already
// resident. Blocks of 2 MB and more are 2 MB aligned and advised as transparent huge pages, so
// the first touch of a new one faults 2 MB at a time.
//
// At most kMaxIdleBlocks freed blocks are kept (oldest released first); empty() releases them
// all (fastaevb.empty_cache()). Smaller gradients come from torch's allocator, whose memory glibc
// reuses without faults.
#pragma once

#include <torch/types.h>

#include <cstddef>
#include <mutex>
#include <utility>
#include <vector>

namespace fastaevb {

class GradientCache {
 public:
  static constexpr size_t kMinBytes = size_t{128} << 10;  // glibc's default mmap threshold
  static constexpr size_t kMaxIdleBlocks = 4;

  // The process-wide cache. Never destroyed: tensors freed at exit still hand their blocks back.
  static GradientCache& instance();

  // An uninitialized contiguous tensor like `like`, for a gradient the kernel writes whole.
  torch::Tensor empty_like(const torch::Tensor& like);
  // Releases every idle block to the system.
  void empty();
  // Bytes held in idle blocks.
  size_t idle_bytes();

 private:
  void* take(size_t bytes);
  void give_back(void* block, size_t bytes);

  std::mutex mutex_;
  std::vector<std::pair<size_t, void*>> idle_;  // (bytes, block), oldest first
};

}  // namespace fastaevb
