// pyvisor::wire: the frame codec of the pipe protocol between a worker actor
// and its Python process (specified in docs/protocol.md).
//
// A frame is a 4-byte big-endian length followed by that many bytes holding
// one msgpack map. This header knows nothing of actors: it encodes request
// frames (splicing the caller's already-packed argument bytes in unchanged),
// decodes reply and hello frames (cutting the raw bytes of `result` out of the
// frame instead of re-encoding them), and splits a byte stream into frames.
//
// Guarantees: decoding never throws, never reads past the given bytes and
// never allocates more than a small multiple of the frame's size (element
// counts are bounded by the frame length); every failure is reported as a
// reason string, which callers turn into error_code::protocol_error.

#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pyvisor/wire_limits.hpp"

namespace pyvisor::wire {

/// An error as a Python worker reports it.
struct remote_error {
  /// One of the runtime's error code names, or empty (means python_error).
  std::string code;
  std::string type;
  std::string message;
  std::string traceback;
};

enum class frame_type { reply, hello, chunk, started };

/// A decoded frame from Python: a reply to a request, one chunk of a
/// streaming request's output (docs/protocol.md, "Streams"), a concurrent
/// worker's notice that a request began ("Concurrent workers") or the hello
/// frame.
struct frame {
  frame_type type = frame_type::reply;
  /// Reply and chunk: the request id. Hello: 0.
  uint64_t id = 0;
  /// Reply: whether the command succeeded. Hello: whether start-up succeeded.
  bool ok = false;
  /// Reply with ok: the raw msgpack bytes of `result`; chunk: of `chunk`.
  std::vector<char> result;
  /// Reply or chunk whose value is in the worker's shared ring (`shm:
  /// [pos, len]`, docs/protocol.md "Shared memory"): where; `result` is
  /// filled from there before anyone else sees the frame.
  bool shared = false;
  uint64_t shared_pos = 0;
  uint64_t shared_len = 0;
  /// Reply without ok, or a failed hello.
  remote_error error;
  /// Hello only.
  int64_t pid = 0;
  std::string python;
  std::vector<std::string> commands;
  /// Hello only: the worker speaks the control protocol (interrupts,
  /// revokes, stack dumps; docs/protocol.md, "Control").
  bool control = false;
  /// Hello only: the worker mapped both shared rings (fds 6 and 7) and
  /// takes and sends large values through them.
  bool shared_memory = false;
  /// Hello only: requests the worker may run at once (1: one at a time, in
  /// pipe order; more: it says which began, with started frames).
  uint32_t concurrency = 1;
};

/// How much of a stream's output may be sent and not yet taken by its
/// consumer: at most `chunks` chunks and `bytes` bytes (one chunk always).
struct stream_window {
  uint64_t chunks = 16;
  uint64_t bytes = uint64_t{4} << 20;
};

/// Where a value of a frame lies in a shared ring instead of the frame.
struct shared_ref {
  uint64_t pos = 0;
  uint64_t len = 0;
};

/// Appends a complete request frame (length prefix included) to `out`.
/// `args` must hold exactly one msgpack value; it is copied verbatim, or,
/// with `shared`, left out: the frame says where the worker finds it.
/// `deadline`: when the caller stops waiting, in CLOCK_MONOTONIC seconds
/// (the worker's time.monotonic()); 0 leaves it out. `stream`: the caller
/// takes a generator's values as chunks, paced by this window (none: a
/// generator's values come back as one list).
void append_request(std::vector<char>& out, uint64_t id, std::string_view cmd,
                    const std::vector<char>& args, std::string_view session,
                    double deadline = 0, const stream_window* stream = nullptr,
                    const shared_ref* shared = nullptr);

/// Appends a credit message (node -> worker, control socket, sent without a
/// signal): the consumer of stream `id` has taken `taken` of its chunks so
/// far.
void append_credit(std::vector<char>& out, uint64_t id, uint64_t taken);

/// Appends a chunk frame; used by tests and by workers written in C++.
void append_chunk(std::vector<char>& out, uint64_t id, const std::vector<char>& value);

/// Appends one control message (node -> worker, no length prefix: the
/// control socket keeps message boundaries): take back the requests
/// `revoke` if not begun, interrupt request `interrupt` (0: none) if it
/// runs, for `reason` ("timeout" or "cancelled").
void append_control(std::vector<char>& out, const std::vector<uint64_t>& revoke,
                    uint64_t interrupt = 0, std::string_view reason = "cancelled");

/// As above, interrupting each of `interrupts` that runs (a concurrent
/// worker may run several).
void append_control(std::vector<char>& out, const std::vector<uint64_t>& revoke,
                    const std::vector<uint64_t>& interrupts, std::string_view reason);

/// Appends a started frame; used by tests and by workers written in C++.
void append_started(std::vector<char>& out, uint64_t id);

/// A control message as a worker reads it (append_control's fields).
struct control_message {
  std::vector<uint64_t> revoke;
  /// The first of `interrupts` (0: none).
  uint64_t interrupt = 0;
  std::vector<uint64_t> interrupts;
  std::string reason;
  /// A credit (append_credit): the stream's request id (0: none) and what
  /// its consumer has taken.
  uint64_t credit = 0;
  uint64_t taken = 0;
};

/// Decodes a control message (node -> worker); nothing if malformed.
std::optional<control_message> decode_control(const char* data, size_t size) noexcept;

/// Whether a packet from a worker's control socket is a message (a msgpack
/// map) rather than stack-dump text (faulthandler's, ASCII).
bool is_control_message(const char* data, size_t size) noexcept;

/// The ids of a worker's {revoked: [ids]} answer; nothing for any other
/// or malformed message.
std::optional<std::vector<uint64_t>> decode_revoked(const char* data, size_t size) noexcept;

/// Appends a reply frame; used by tests and by workers written in C++.
void append_reply(std::vector<char>& out, uint64_t id, const std::vector<char>& result);

/// Appends an error reply frame; used by tests and by workers written in C++.
void append_error_reply(std::vector<char>& out, uint64_t id, const remote_error& err);

/// Appends a successful hello frame; used by tests.
void append_hello(std::vector<char>& out, int64_t pid, std::string_view python,
                  const std::vector<std::string>& commands);

/// Decodes one frame body (without its length prefix) into `out`.
/// Returns an empty string on success, otherwise the reason it is invalid.
std::string decode(const char* data, size_t size, frame& out);

/// Returns whether `data` holds exactly one well-formed msgpack value.
bool is_single_msgpack_value(const char* data, size_t size) noexcept;

/// Splits a byte stream into frames and decodes them. Once a frame is
/// oversized or invalid, the reader is broken: the stream cannot be
/// resynchronised, so it rejects all further input.
class frame_reader {
public:
  explicit frame_reader(size_t max_frame_size = default_max_frame_size)
    : max_frame_size_(max_frame_size) {
    // nop
  }

  /// Consumes `size` bytes, calling `on_frame(frame&&)` for each complete
  /// frame. Returns false once the stream is broken (see error()).
  template <class OnFrame>
  bool feed(const char* data, size_t size, OnFrame&& on_frame) {
    if (!error_.empty())
      return false;
    buf_.insert(buf_.end(), data, data + size);
    size_t pos = 0;
    while (buf_.size() - pos >= 4) {
      auto len = read_length(buf_.data() + pos);
      if (len > max_frame_size_) {
        error_ = "frame of " + std::to_string(len) + " bytes exceeds the limit of "
                 + std::to_string(max_frame_size_) + " bytes";
        return false;
      }
      if (buf_.size() - pos - 4 < len) {
        // Room for the whole frame at once: growing by doubling would copy
        // a large frame several times.
        buf_.reserve(pos + 4 + len);
        break;
      }
      frame f;
      auto reason = decode(buf_.data() + pos + 4, len, f);
      if (!reason.empty()) {
        error_ = std::move(reason);
        return false;
      }
      pos += 4 + len;
      on_frame(std::move(f));
    }
    buf_.erase(buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(pos));
    return true;
  }

  /// Bytes received but not yet forming a complete frame.
  size_t buffered() const noexcept {
    return buf_.size();
  }

  const std::string& error() const noexcept {
    return error_;
  }

private:
  static size_t read_length(const char* p) noexcept {
    auto b = reinterpret_cast<const unsigned char*>(p);
    return (size_t{b[0]} << 24) | (size_t{b[1]} << 16) | (size_t{b[2]} << 8) | size_t{b[3]};
  }

  size_t max_frame_size_;
  std::vector<char> buf_;
  std::string error_;
};

} // namespace pyvisor::wire
