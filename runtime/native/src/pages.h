// Resident pages of memory-mapped weight files (engines/openvino.py, drop_mapped_pages): OpenVINO maps
// a graph's weights (an ONNX graph's external data) and keeps the mapping for the compiled model's
// life, although its CPU plugin copies the weights of its kernels into its own buffers while
// compiling and never reads those pages again. Dropping them keeps one copy of the weights resident.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace gligen {

// Drops this process's resident pages of read-only shared mappings of `files` (Linux
// madvise(MADV_DONTNEED): the pages are the file's bytes, a later read faults the same bytes back
// in; writable or private mappings are left alone). Returns the bytes of the mappings advised
// (0 off Linux); throws std::runtime_error when madvise fails for another reason than the mapping
// having gone meanwhile.
std::size_t drop_mapped_pages(const std::vector<std::string>& files);

// Around a compile: drops the mapped pages of `files` every `interval` from a thread, and once
// more when it goes out of scope, so the weights as stored and the plugin's copy of them are never
// resident together.
class MappedPagesDropped {
 public:
  explicit MappedPagesDropped(std::vector<std::string> files,
                              std::chrono::milliseconds interval = std::chrono::milliseconds(500));
  ~MappedPagesDropped();
  MappedPagesDropped(const MappedPagesDropped&) = delete;
  MappedPagesDropped& operator=(const MappedPagesDropped&) = delete;

 private:
  std::vector<std::string> files_;
  std::mutex lock_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread worker_;
};

}  // namespace gligen
