#include "actors/process/shared_ring.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

static_assert(std::atomic<uint64_t>::is_always_lock_free,
              "the ring's tail is shared with another process: it must be lock-free");

namespace pyvisor {

std::unique_ptr<shared_ring> shared_ring::create(size_t capacity, const char* name,
                                                 std::string& error) {
  auto page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  capacity = (capacity + page - 1) / page * page;
  int fd = memfd_create(name, MFD_CLOEXEC);
  if (fd < 0) {
    error = std::string{"memfd_create: "} + std::strerror(errno);
    return nullptr;
  }
  // Sparse: a page costs memory only once a payload touched it, and then it
  // stays (reused, so later copies take no page faults).
  if (ftruncate(fd, static_cast<off_t>(header_size + capacity)) != 0) {
    error = std::string{"ftruncate of the shared ring: "} + std::strerror(errno);
    ::close(fd);
    return nullptr;
  }
  void* p = mmap(nullptr, header_size + capacity, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    error = std::string{"mmap of the shared ring: "} + std::strerror(errno);
    ::close(fd);
    return nullptr;
  }
  return std::unique_ptr<shared_ring>{new shared_ring(fd, static_cast<char*>(p), capacity)};
}

shared_ring::~shared_ring() {
  munmap(base_, header_size + capacity_);
  ::close(fd_);
}

int64_t shared_ring::reserve(size_t len) noexcept {
  if (broken_ || len == 0 || len > capacity_)
    return -1;
  auto tail = this->tail().load(std::memory_order_acquire);
  // The consumer may only move forward, and never past what was reserved;
  // a worker that says otherwise cannot be trusted with this ring.
  if (tail < seen_tail_ || tail > head_) {
    broken_ = true;
    return -1;
  }
  seen_tail_ = tail;
  auto pos = head_;
  if (pos % capacity_ + len > capacity_)
    pos += capacity_ - pos % capacity_; // never wraps: start over at the front
  // What is still unreleased is [tail, head_): the new bytes must end
  // within one capacity of its start (anything fits an empty ring).
  if (tail != head_ && pos + len - tail > capacity_)
    return -1;
  head_ = pos + len;
  return static_cast<int64_t>(pos);
}

bool shared_ring::take(uint64_t pos, size_t len, std::vector<char>& out) {
  if (len > capacity_ || pos < consumed_ || pos % capacity_ + len > capacity_
      || pos > (uint64_t{1} << 62))
    return false;
  auto from = base_ + header_size + pos % capacity_;
  out.assign(from, from + len);
  consumed_ = pos + len;
  tail().store(consumed_, std::memory_order_release);
  return true;
}

uint64_t shared_ring::held() const noexcept {
  return head_ - tail().load(std::memory_order_acquire);
}

} // namespace pyvisor
