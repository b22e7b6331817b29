#include "node/rpc_framer.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>

#include <msgpack.hpp>

namespace pyvisor {

namespace {

/// Checks what msgpack-c's parser reports against the limits; collects
/// nothing. Returning false stops the parser (PARSE_STOP_VISITOR).
struct limit_visitor : msgpack::null_visitor {
  size_t max_size = 0;
  size_t max_depth = 0;
  size_t depth = 0;
  std::string error;
  bool too_large = false;

  bool open(uint64_t min_bytes, const char* what, uint32_t n) {
    if (min_bytes > max_size) {
      too_large = true;
      error = std::string{"message declares "} + what + " of " + std::to_string(n)
              + " elements, more than rpc.max-message-size (" + std::to_string(max_size)
              + " bytes) can hold";
      return false;
    }
    if (++depth > max_depth) {
      error = "message nests deeper than " + std::to_string(max_depth) + " levels";
      return false;
    }
    return true;
  }
  bool start_array(uint32_t n) {
    return open(n, "an array", n);
  }
  bool end_array() {
    --depth;
    return true;
  }
  bool start_map(uint32_t n) {
    return open(uint64_t{n} * 2, "a map", n);
  }
  bool end_map() {
    --depth;
    return true;
  }
  void parse_error(size_t, size_t) {
    error = "input is not msgpack (invalid type byte)";
  }
};

/// The framer's bytes. Grown with realloc: for large blocks glibc moves the
/// pages (mremap) instead of copying them, so a 60 MiB message does not stall
/// the I/O thread shared by every connection with a copy at each doubling,
/// as std::vector's growth would.
class byte_buffer {
public:
  byte_buffer() = default;
  byte_buffer(const byte_buffer&) = delete;
  byte_buffer& operator=(const byte_buffer&) = delete;
  ~byte_buffer() {
    std::free(data_);
  }

  char* data() noexcept {
    return data_;
  }
  const char* data() const noexcept {
    return data_;
  }
  size_t size() const noexcept {
    return size_;
  }

  /// Room for `n` bytes in all, at once (no growth, so no copy, later).
  void reserve(size_t n) {
    if (n > cap_) {
      auto grown = static_cast<char*>(std::realloc(data_, n));
      if (grown == nullptr)
        throw std::bad_alloc();
      data_ = grown;
      cap_ = n;
    }
  }

  void append(const char* p, size_t n) {
    if (size_ + n > cap_) {
      auto cap = std::max(size_ + n, cap_ * 2);
      auto grown = static_cast<char*>(std::realloc(data_, cap));
      if (grown == nullptr)
        throw std::bad_alloc();
      data_ = grown;
      cap_ = cap;
    }
    std::memcpy(data_ + size_, p, n);
    size_ += n;
  }

  void erase_front(size_t n) {
    std::memmove(data_, data_ + n, size_ - n);
    size_ -= n;
  }

  /// Frees a large block once it is empty.
  void shrink_if_empty() {
    if (size_ == 0 && cap_ > (size_t{1} << 20)) {
      std::free(data_);
      data_ = nullptr;
      cap_ = 0;
    }
  }

private:
  char* data_ = nullptr;
  size_t size_ = 0;
  size_t cap_ = 0;
};

} // namespace

// msgpack-c's streaming parser, over a buffer the framer owns. msgpack-c's
// own `msgpack::parse` drives this context the same way (detail::parse_helper)
// but starts afresh on every call; `msgpack::parser` keeps the state but
// discards the bytes it has parsed, and the gateway needs a message's bytes
// whole (arguments are forwarded as raw bytes). Keeping the context here
// gives both: state across reads, the message in one piece.
struct rpc_framer::impl : msgpack::detail::context<rpc_framer::impl> {
  limit_visitor v;
  byte_buffer buf;
  /// Start of the current message in buf.
  size_t begin = 0;
  /// How far the parser has got (it resumes here).
  size_t off = 0;
  /// The message found by the last next().
  size_t msg_begin = 0;
  size_t msg_size = 0;
  bool failed = false;
  status failure = status::need_more;

  limit_visitor& visitor() {
    return v;
  }

  /// Drops the messages already taken: what moves is at most the part of
  /// the unfinished message that followed them, so the cost stays linear;
  /// a large block is given back once empty.
  void compact() {
    buf.erase_front(begin);
    off -= begin;
    begin = 0;
    buf.shrink_if_empty();
  }

  /// The parser stopped inside a long str or bin (its 32-bit header just
  /// before `off`): the buffer is made large enough for the whole body now,
  /// within the message limit, so that a large message is received into one
  /// block instead of one grown (and copied) by doubling. Only a hint: a
  /// header misread here costs at most an early allocation.
  void reserve_for_body() {
    if (off < begin + 5)
      return;
    auto p = reinterpret_cast<const unsigned char*>(buf.data() + off - 5);
    if (p[0] != 0xc6 && p[0] != 0xdb) // bin 32, str 32
      return;
    size_t len = (size_t{p[1]} << 24) | (size_t{p[2]} << 16) | (size_t{p[3]} << 8) | p[4];
    auto end = off + len + 64; // a little beyond: the options that follow
    if (len >= (size_t{1} << 20) && end - begin <= v.max_size + 64)
      buf.reserve(end);
  }

  status fail(status s, std::string why) {
    failed = true;
    failure = s;
    if (!why.empty())
      v.error = std::move(why);
    return s;
  }
};

rpc_framer::rpc_framer(size_t max_message_size, size_t max_depth) : impl_(new impl) {
  impl_->v.max_size = max_message_size;
  impl_->v.max_depth = max_depth;
}

rpc_framer::~rpc_framer() = default;
rpc_framer::rpc_framer(rpc_framer&&) noexcept = default;
rpc_framer& rpc_framer::operator=(rpc_framer&&) noexcept = default;

void rpc_framer::append(const char* data, size_t n) {
  auto& d = *impl_;
  if (d.failed || n == 0)
    return;
  if (d.begin > 0)
    d.compact();
  d.buf.append(data, n);
}

rpc_framer::status rpc_framer::next() {
  auto& d = *impl_;
  if (d.failed)
    return d.failure;
  if (d.begin == d.buf.size() && d.begin > 0)
    d.compact(); // everything taken: the last message is no longer needed
  if (d.off == d.buf.size())
    return status::need_more;
  // Never parse past the limit: a message that has not ended within
  // max_message_size bytes is too large, whatever follows.
  auto limit = std::min(d.buf.size(), d.begin + d.v.max_size);
  msgpack::parse_return ret;
  try {
    ret = d.execute(d.buf.data(), limit, d.off);
  } catch (const std::exception& e) {
    return d.fail(status::malformed, std::string{"input is not msgpack: "} + e.what());
  }
  switch (ret) {
    case msgpack::PARSE_SUCCESS:
    case msgpack::PARSE_EXTRA_BYTES:
      d.msg_begin = d.begin;
      d.msg_size = d.off - d.begin;
      d.begin = d.off;
      return status::message;
    case msgpack::PARSE_CONTINUE:
      if (limit < d.buf.size())
        return d.fail(status::too_large,
                      "message exceeds rpc.max-message-size (" + std::to_string(d.v.max_size)
                        + " bytes) and is not complete");
      d.reserve_for_body();
      return status::need_more;
    case msgpack::PARSE_STOP_VISITOR:
      return d.fail(d.v.too_large ? status::too_large : status::malformed, {});
    default:
      return d.fail(status::malformed, d.v.error.empty() ? "input is not msgpack" : std::string{});
  }
}

const char* rpc_framer::data() const noexcept {
  return impl_->buf.data() + impl_->msg_begin;
}

size_t rpc_framer::size() const noexcept {
  return impl_->msg_size;
}

const std::string& rpc_framer::error() const noexcept {
  return impl_->v.error;
}

size_t rpc_framer::buffered() const noexcept {
  return impl_->buf.size() - impl_->begin;
}

bool rpc_framer::in_message() const noexcept {
  return buffered() > 0;
}

const char* rpc_framer::pending_data() const noexcept {
  return impl_->buf.data() + impl_->begin;
}

} // namespace pyvisor
