// GradientCache: see gradient_cache.h for why it exists.
#include "gradient_cache.h"

#include <cstdlib>
#include <new>

#ifdef _WIN32
#include <malloc.h>
#endif
#ifdef __linux__
#include <sys/mman.h>
#endif

namespace fastaevb {
namespace {

constexpr size_t kPage = size_t{4} << 10, kHugePage = size_t{2} << 20;

// Block sizes are rounded so that a step of the same shape finds its block again, and so that
// aligned_alloc's size is a multiple of the alignment.
size_t block_bytes(size_t bytes) {
  const size_t unit = bytes >= kHugePage ? kHugePage : kPage;
  return (bytes + unit - 1) / unit * unit;
}

// MSVC has no std::aligned_alloc; its aligned blocks go back through _aligned_free.
void release(void* block) {
#ifdef _WIN32
  _aligned_free(block);
#else
  std::free(block);
#endif
}

void* allocate(size_t bytes) {
  const size_t alignment = bytes >= kHugePage ? kHugePage : kPage;
#ifdef _WIN32
  void* block = _aligned_malloc(bytes, alignment);
#else
  void* block = std::aligned_alloc(alignment, bytes);
#endif
  if (block == nullptr) throw std::bad_alloc();
#ifdef __linux__
  // Advice only: where transparent huge pages are off the pages are 4 KB.
  if (bytes >= kHugePage) madvise(block, bytes, MADV_HUGEPAGE);
#endif
  return block;
}

}  // namespace

GradientCache& GradientCache::instance() {
  static GradientCache* cache = new GradientCache();  // leaked on purpose, see the header
  return *cache;
}

torch::Tensor GradientCache::empty_like(const torch::Tensor& like) {
  const size_t wanted = static_cast<size_t>(like.numel()) * like.element_size();
  if (wanted < kMinBytes) return at::empty_like(like, at::MemoryFormat::Contiguous);
  const size_t bytes = block_bytes(wanted);
  return torch::from_blob(
      take(bytes), like.sizes(), [this, bytes](void* block) { give_back(block, bytes); }, like.options());
}

void* GradientCache::take(size_t bytes) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = idle_.rbegin(); it != idle_.rend(); ++it) {  // the most recently freed first
      if (it->first == bytes) {
        void* block = it->second;
        idle_.erase(std::next(it).base());
        return block;
      }
    }
  }
  return allocate(bytes);
}

void GradientCache::give_back(void* block, size_t bytes) {
  void* released = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    idle_.emplace_back(bytes, block);
    if (idle_.size() > kMaxIdleBlocks) {
      released = idle_.front().second;
      idle_.erase(idle_.begin());
    }
  }
  if (released != nullptr) release(released);
}

void GradientCache::empty() {
  std::vector<std::pair<size_t, void*>> idle;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    idle.swap(idle_);
  }
  for (const auto& entry : idle) release(entry.second);
}

size_t GradientCache::idle_bytes() {
  std::lock_guard<std::mutex> lock(mutex_);
  size_t total = 0;
  for (const auto& entry : idle_) total += entry.first;
  return total;
}

}  // namespace fastaevb
