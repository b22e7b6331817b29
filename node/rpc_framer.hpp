// pyvisor::rpc_framer: cuts the byte stream of one RPC connection into
// complete msgpack messages, however TCP split it.
//
// Guarantees:
// - The same stream yields the same messages and the same verdict whatever
//   the sizes of the reads it arrived in (a header split after any byte, an
//   array whose count exceeds the first read: all fine).
// - Linear cost: msgpack-c's streaming parser keeps its state between reads,
//   so every byte is examined once (a string or binary body is examined when
//   it is complete, not on every read).
// - Limits come from the configuration only: a message larger than
//   `max_message_size` is `too_large` as soon as that many bytes of it have
//   arrived (or as soon as a container header declares more elements than
//   the limit could hold); nesting deeper than `max_depth` and bytes that are
//   not msgpack are `malformed`. Both are final: the stream cannot be
//   resynchronised after them.
// The framer owns the bytes it was given; a message it returns stays valid
// until the next call of `append` or `next`.

#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace pyvisor {

class rpc_framer {
public:
  enum class status : uint8_t {
    /// No complete message buffered; append more.
    need_more,
    /// A complete message: see data() and size().
    message,
    /// The current message exceeds max_message_size (final).
    too_large,
    /// The stream is not msgpack, or nests too deep (final).
    malformed,
  };

  static constexpr size_t default_max_depth = 512;

  explicit rpc_framer(size_t max_message_size, size_t max_depth = default_max_depth);
  ~rpc_framer();
  rpc_framer(rpc_framer&&) noexcept;
  rpc_framer& operator=(rpc_framer&&) noexcept;

  /// Adds the next `n` bytes of the stream.
  void append(const char* data, size_t n);

  /// Looks for the next complete message.
  status next();

  /// The message found by the last `next` (status::message).
  const char* data() const noexcept;
  size_t size() const noexcept;

  /// Why the stream failed (too_large, malformed).
  const std::string& error() const noexcept;

  /// Bytes of input held: the unfinished message and any message not yet
  /// taken by `next`.
  size_t buffered() const noexcept;

  /// Whether part of a message has arrived and not all of it.
  bool in_message() const noexcept;

  /// The start of the current (unfinished or failed) message, e.g. to read
  /// a msgid from it; buffered() bytes long.
  const char* pending_data() const noexcept;

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace pyvisor
