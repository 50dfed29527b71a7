#include "pages.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>

#ifdef __linux__
#include <climits>
#include <sys/mman.h>
#endif

namespace gligen {

std::size_t drop_mapped_pages(const std::vector<std::string>& files) {
#ifdef __linux__
  std::set<std::string> names;
  for (const auto& f : files) {
    char buf[PATH_MAX];
    if (realpath(f.c_str(), buf) != nullptr) names.insert(buf);
  }
  if (names.empty()) return 0;
  std::ifstream maps("/proc/self/maps");
  std::size_t advised = 0;
  std::string line;
  while (std::getline(maps, line)) {
    // range perms offset dev inode path
    std::istringstream in(line);
    std::string range, perms, offset, dev, inode, path;
    if (!(in >> range >> perms >> offset >> dev >> inode)) continue;
    std::getline(in >> std::ws, path);
    if (perms.size() < 4 || perms[1] == 'w' || perms[3] != 's' || names.count(path) == 0) continue;
    const auto dash = range.find('-');
    const auto start = std::strtoull(range.substr(0, dash).c_str(), nullptr, 16);
    const auto end = std::strtoull(range.substr(dash + 1).c_str(), nullptr, 16);
    if (madvise(reinterpret_cast<void*>(start), end - start, MADV_DONTNEED) == 0) {
      advised += end - start;
    } else if (errno != ENOMEM && errno != EINVAL) {  // ENOMEM / EINVAL: unmapped meanwhile
      throw std::runtime_error("madvise on " + path + ": " + std::strerror(errno));
    }
  }
  return advised;
#else
  (void)files;
  return 0;
#endif
}

MappedPagesDropped::MappedPagesDropped(std::vector<std::string> files, std::chrono::milliseconds interval)
    : files_(std::move(files)) {
#ifdef __linux__
  worker_ = std::thread([this, interval] {
    std::unique_lock<std::mutex> g(lock_);
    while (!wake_.wait_for(g, interval, [this] { return stop_; })) {
      g.unlock();
      try {
        drop_mapped_pages(files_);
      } catch (const std::exception&) {
        // a failed drop only leaves pages resident; the final drop in the destructor reports nothing either
      }
      g.lock();
    }
  });
#else
  (void)interval;
#endif
}

MappedPagesDropped::~MappedPagesDropped() {
  if (worker_.joinable()) {
    {
      std::lock_guard<std::mutex> g(lock_);
      stop_ = true;
    }
    wake_.notify_all();
    worker_.join();
  }
  try {
    drop_mapped_pages(files_);
  } catch (const std::exception&) {
  }
}

}  // namespace gligen
