// pyvisor::shared_ring: one direction of the shared memory between the node
// and one of its Python workers (docs/protocol.md, "Shared memory").
//
// A ring is a memfd the node creates per worker and direction, mapped by
// both processes, that carries the payloads of large frames: the producer
// copies a payload in at a position it reserves and writes a small frame on
// the pipe that names the position and length; the consumer copies it out
// as it reads that frame (frames are read in pipe order, so the ring is
// freed in the order it was filled) and publishes how far it has consumed.
// Nothing else is shared: the producer's reserve position stays private.
//
// Layout: one page of header, whose first 8 bytes are the consumer's `tail`
// (a position in the cumulative byte stream, little-endian u64, naturally
// aligned: one store), then `capacity` bytes of data. A payload never wraps:
// one that does not fit before the end starts at the next multiple of the
// capacity.
//
// Guarantees:
// - A producer never overwrites what the consumer has not released, and
//   never blocks: reserve() says "no room" and the caller sends the payload
//   in the frame instead.
// - Either side may be hostile (the worker runs user code): the node checks
//   every position a worker names and every tail it publishes, copies a
//   payload out before it looks at it, and a worker that lies hurts only its
//   own requests. A ring is created per worker: no worker can map another's
//   (the descriptor is close-on-exec and reaches only its own child).
// - Dying mid-transfer leaks nothing: the ring is unmapped and its
//   descriptor closed with its owner (python_process), whatever the child
//   did; the kernel frees the memfd once the child's mapping is gone too.
//
// Ownership: python_process owns both rings of its worker. The node writes
// the ring to the worker only from worker_link::submit, under the link's
// lock, which also orders the frames (reservation order is pipe order); it
// reads the ring from the worker only on the process's I/O thread.

#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace pyvisor {

class shared_ring {
public:
  /// Header bytes before the data (a page, so the data is page aligned).
  static constexpr size_t header_size = 4096;

  /// Creates a ring of `capacity` data bytes (rounded up to a page), its
  /// memfd named `name`; nothing if the kernel refuses (`error` says why).
  static std::unique_ptr<shared_ring> create(size_t capacity, const char* name,
                                             std::string& error);

  ~shared_ring();

  shared_ring(const shared_ring&) = delete;
  shared_ring& operator=(const shared_ring&) = delete;

  /// The memfd (close-on-exec), for the child.
  int fd() const noexcept {
    return fd_;
  }

  size_t capacity() const noexcept {
    return capacity_;
  }

  /// Producer: a position for `len` bytes, or -1 when they do not fit now
  /// (the consumer has not released enough, `len` exceeds the capacity, or
  /// it published a tail that cannot be true: the ring is then never used
  /// again). Write the bytes at data(pos) before the frame naming them.
  int64_t reserve(size_t len) noexcept;

  /// The address of position `pos` (as reserve() gave it, or a consumer's
  /// validated one).
  char* data(uint64_t pos) noexcept {
    return base_ + header_size + pos % capacity_;
  }

  /// Consumer: copies the `len` bytes at `pos` into `out` and releases them
  /// and everything before them. False (nothing copied, nothing released)
  /// when the producer named bytes it cannot have written: outside the
  /// ring, wrapping its end, or before what was consumed already.
  bool take(uint64_t pos, size_t len, std::vector<char>& out);

  /// Bytes reserved and not yet released (what the ring holds now).
  uint64_t held() const noexcept;

private:
  shared_ring(int fd, char* base, size_t capacity) noexcept
    : fd_(fd), base_(base), capacity_(capacity) {
    // nop
  }

  std::atomic<uint64_t>& tail() noexcept {
    return *reinterpret_cast<std::atomic<uint64_t>*>(base_);
  }
  const std::atomic<uint64_t>& tail() const noexcept {
    return *reinterpret_cast<const std::atomic<uint64_t>*>(base_);
  }

  int fd_;
  char* base_;
  size_t capacity_;
  /// Producer: the end of the last reservation; the last tail seen.
  uint64_t head_ = 0;
  uint64_t seen_tail_ = 0;
  bool broken_ = false;
  /// Consumer: how far it has released.
  uint64_t consumed_ = 0;
};

} // namespace pyvisor
