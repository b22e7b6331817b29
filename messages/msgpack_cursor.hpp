// pyvisor::msgpack_cursor: walks a buffer of msgpack values one value at a
// time and tells where each one lies, so that callers can cut a value out
// as raw bytes (arguments, results) instead of decoding and re-encoding it.
//
// Containers are entered by reading their header (array_header/map_header);
// every other value is parsed or skipped whole by msgpack-c. Parsed objects
// reference the buffer, which must outlive them. Truncated input throws
// msgpack::insufficient_bytes; invalid input throws another
// std::exception. Element counts are bounded by the buffer size, so a forged
// header cannot make msgpack-c allocate more than the input could hold.

#pragma once

#include <cstddef>
#include <utility>

#include <msgpack.hpp>

namespace pyvisor {

class msgpack_cursor {
public:
  msgpack_cursor(const char* data, size_t size) : data_(data), size_(size) {
    // nop
  }

  /// Reads an array header; false (and nothing consumed) if the next value
  /// is not an array.
  bool array_header(size_t& n) {
    return header(0x90, 0xdc, 0xdd, n);
  }

  /// Reads a map header; false (and nothing consumed) if the next value is
  /// not a map.
  bool map_header(size_t& n) {
    return header(0x80, 0xde, 0xdf, n);
  }

  /// Parses the next value.
  msgpack::object_handle next() {
    return msgpack::unpack(data_, size_, off_, reference_all, nullptr, limit());
  }

  /// Skips the next value and returns its byte range [first, second).
  /// Walks the bytes with msgpack-c's parser and builds nothing, so skipping
  /// a list of millions of elements allocates nothing.
  std::pair<size_t, size_t> skip() {
    auto begin = off_;
    skip_visitor v;
    if (!msgpack::parse(data_, size_, off_, v)) {
      off_ = begin;
      if (v.truncated)
        throw msgpack::insufficient_bytes("truncated value");
      if (v.too_deep)
        throw msgpack::depth_size_overflow("depth size overflow");
      throw msgpack::parse_error("parse error");
    }
    return {begin, off_};
  }

  size_t offset() const noexcept {
    return off_;
  }

  bool at_end() const noexcept {
    return off_ >= size_;
  }

  const char* data() const noexcept {
    return data_;
  }

private:
  static constexpr size_t max_depth = 512;

  struct skip_visitor : msgpack::null_visitor {
    size_t depth = 0;
    bool truncated = false;
    bool too_deep = false;
    bool open() {
      too_deep = ++depth > max_depth;
      return !too_deep;
    }
    bool start_array(uint32_t) {
      return open();
    }
    bool end_array() {
      --depth;
      return true;
    }
    bool start_map(uint32_t) {
      return open();
    }
    bool end_map() {
      --depth;
      return true;
    }
    void insufficient_bytes(size_t, size_t) {
      truncated = true;
    }
  };

  static bool reference_all(msgpack::type::object_type, std::size_t, void*) {
    return true;
  }

  msgpack::unpack_limit limit() const {
    auto n = size_ > 0xffffffffu ? std::size_t{0xffffffffu} : size_;
    return msgpack::unpack_limit(n, n, n, n, n, max_depth);
  }

  bool header(unsigned fix, unsigned x16, unsigned x32, size_t& n) {
    if (off_ >= size_)
      throw msgpack::insufficient_bytes("no value left");
    auto p = reinterpret_cast<const unsigned char*>(data_) + off_;
    auto left = size_ - off_;
    if ((p[0] & 0xf0) == fix) {
      n = p[0] & 0x0f;
      off_ += 1;
      return true;
    }
    if (p[0] == x16) {
      if (left < 3)
        throw msgpack::insufficient_bytes("truncated header");
      n = (size_t{p[1]} << 8) | p[2];
      off_ += 3;
      return true;
    }
    if (p[0] == x32) {
      if (left < 5)
        throw msgpack::insufficient_bytes("truncated header");
      n = (size_t{p[1]} << 24) | (size_t{p[2]} << 16) | (size_t{p[3]} << 8) | p[4];
      off_ += 5;
      return true;
    }
    return false;
  }

  const char* data_;
  size_t size_;
  size_t off_ = 0;
};

} // namespace pyvisor
