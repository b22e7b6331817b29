#include "node/gateway.hpp"

#include <atomic>
#include <array>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <unordered_map>

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "caf/actor_system.hpp"
#include "caf/io/broker.hpp"
#include "caf/io/middleman.hpp"
#include "caf/scoped_actor.hpp"

#include "node/drain_gate.hpp"
#include "node/rpc_framer.hpp"
#include "node/rpc_request.hpp"
#include "node/rpc_sockets.hpp"
#include "messages/log.hpp"
#include "messages/utf8.hpp"
#include "pyvisor/payload.hpp"

namespace pyvisor {

namespace {

using port_atom = caf::atom_constant<caf::atom("gw_port")>;

using packer = msgpack::packer<detail::vector_writer>;

using detail::pack_str;

/// An error as the RPC protocol carries it ({code, message, type, details}).
struct rpc_error {
  std::string code;
  std::string message;
  std::string type;
  std::string details;
};

rpc_error rpc_error_of(error_code code, std::string message) {
  return {to_string(code), std::move(message), "", ""};
}

rpc_error to_rpc_error(const caf::error& err) {
  auto info = info_of(err);
  return {to_string(info.code), info.message, info.python_type, info.traceback};
}

// -- one connection -------------------------------------------------------------

/// What all connections of one gateway share. Connection brokers run in the
/// middleman's I/O thread today; the counters are atomic so that this stays
/// correct if they ever run elsewhere.
struct gateway_shared {
  gateway_config cfg;
  /// SHA-256 of the token (token_file), compared in constant time; guarded
  /// by token_mtx (replaced on reload_token_atom).
  std::mutex token_mtx;
  std::array<unsigned char, SHA256_DIGEST_LENGTH> token_digest{};
  std::atomic<bool> token_required{false};
  std::atomic<size_t> buffered_input{0};
  /// Response bytes not yet written, over all connections.
  std::atomic<size_t> pending_output{0};
  /// A client decides how often these happen: logged at most every 10 s.
  std::mutex warnings_mtx;
  log_throttle closing_warning, stop_reading_warning;
  /// A line per refused connection, up to 20 every 10 s.
  log_throttle refused_warning{std::chrono::seconds(10), 20};

  /// Logs `why` unless a line of `kind` went out less than 10 s ago (then
  /// it is counted into the next one).
  void warn(log_throttle& kind, const char* what, const std::string& peer, size_t owed,
            const std::string& why) {
    std::lock_guard<std::mutex> guard{warnings_mtx};
    if (auto n = kind.due())
      log().warn("rpc: {} from {} ({} time(s) since the last such line; {} replies still owed): {}",
                 what, peer, n, owed, why);
  }

  /// Logs a connection refused while being admitted (TLS handshake, auth):
  /// who and why, up to 20 lines every 10 s (the rest counted into the
  /// next line).
  void refused(const std::string& peer, const std::string& why) {
    std::lock_guard<std::mutex> guard{warnings_mtx};
    if (auto n = refused_warning.due())
      log().warn("rpc: refused a connection from {}: {}{}", peer, why,
                 n > 1 ? " (and " + std::to_string(n - 1) + " more since the last such line)"
                       : std::string{});
  }

  void set_token(const std::string& token) {
    std::lock_guard<std::mutex> guard{token_mtx};
    SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(),
           token_digest.data());
    token_required = true;
  }

  /// Whether `given` is the token. Both sides are hashed first, so that
  /// the comparison takes the same time whatever `given` is (its length
  /// included).
  bool token_matches(const std::string& given) {
    std::array<unsigned char, SHA256_DIGEST_LENGTH> digest{};
    SHA256(reinterpret_cast<const unsigned char*>(given.data()), given.size(), digest.data());
    std::lock_guard<std::mutex> guard{token_mtx};
    return CRYPTO_memcmp(digest.data(), token_digest.data(), digest.size()) == 0;
  }
};

using gateway_shared_ptr = std::shared_ptr<gateway_shared>;

struct connection_state {
  pool_actor pool;
  gateway_shared_ptr shared;
  /// Hears when this connection is admitted (acceptor_state::entry).
  caf::actor acceptor;
  /// Who is at the other end, for log lines (never the token).
  std::string peer;
  /// TLS on this connection (null: plaintext).
  std::unique_ptr<tls_channel> tls;
  /// TLS: responses' plaintext, encrypted into CAF's write buffer at each
  /// flush; and what the last read decrypted to, before the framer takes it.
  std::vector<char> plain_out, plain_in;
  /// TLS: close_notify went out; the connection closes once it is written.
  bool tls_closing = false;
  /// The connection gave the token (or none is asked for).
  bool authenticated = false;
  /// TLS established (if any) and authenticated: the acceptor was told.
  bool admitted = false;
  /// The connection as CAF accepted it: read from only.
  caf::io::connection_handle in;
  /// A second descriptor of the same socket, written to only. CAF 0.17
  /// drops a connection's scribe (and with it everything still to be
  /// written) when a read returns EOF, so a client that half-closes after
  /// sending would lose its replies; the writing end outlives that.
  caf::io::connection_handle out;
  rpc_framer framer;
  /// Bytes of this connection counted in shared->buffered_input.
  size_t held = 0;
  /// Complete messages taken from the input so far.
  uint64_t completed = 0;
  /// The unfinished message (the one after `partial_after` completed ones)
  /// began arriving at `partial_since`; one timer per connection checks it
  /// against message_timeout (a timer per message would pile up: CAF keeps
  /// each until it fires).
  uint64_t partial_after = std::numeric_limits<uint64_t>::max();
  caf::actor_clock::time_point partial_since;
  bool timer_pending = false;
  /// Response bytes handed to CAF and not yet written to the socket.
  size_t pending_output = 0;
  bool reading = true;
  bool closed = false;
  /// Input ended with requests still running: the first byte of the next
  /// response went out ahead as a probe (see probe_peer), so that next
  /// response is written without it.
  bool probe_sent = false;
  /// Requests sent to the pool and not yet answered; closed by drain_atom.
  drain_gate requests;
  /// This connection's streams in flight (execute with {"stream": true}),
  /// by their tag at the pool: the msgid their chunks name, and how many
  /// chunks came and were acknowledged to the pool (taken_atom) so far.
  struct open_stream {
    uint32_t msgid = 0;
    uint64_t received = 0;
    uint64_t taken = 0;
  };
  std::unordered_map<uint64_t, open_stream> streams;

  explicit connection_state(const gateway_config& cfg) : framer(cfg.max_message_size) {
    // nop
  }

  ~connection_state() {
    if (shared)
      shared->pending_output -= pending_output;
  }

  /// Response bytes not yet written are `n` now (also gateway-wide).
  void set_pending_output(size_t n) {
    shared->pending_output += n;
    shared->pending_output -= pending_output;
    pending_output = n;
  }
};

using conn_ptr = std::shared_ptr<connection_state>;

using message_timeout_atom = caf::atom_constant<caf::atom("gw_msg_to")>;
/// Timer: has the connection been admitted within handshake_timeout?
using handshake_timeout_atom = caf::atom_constant<caf::atom("gw_hs_to")>;
/// To the acceptor: this connection is admitted (TLS up, token given).
using admitted_atom = caf::atom_constant<caf::atom("gw_admit")>;
/// Timer: has the client that closed its input gone (probe_peer)?
using probe_atom = caf::atom_constant<caf::atom("gw_probe")>;

/// How often a connection whose input ended looks whether its client is
/// still there while its requests run.
constexpr auto probe_interval = std::chrono::milliseconds(50);

/// Counts what the framer holds now toward the gateway-wide input cap.
void account(connection_state& st) {
  auto now = st.framer.buffered();
  if (now >= st.held)
    st.shared->buffered_input += now - st.held;
  else
    st.shared->buffered_input -= st.held - now;
  st.held = now;
}

/// Input ends on this connection: whatever it buffered is freed and no
/// longer counts toward the gateway-wide cap.
void release_input(connection_state& st) {
  st.reading = false;
  st.framer = rpc_framer{0};
  account(st);
}

/// Cuts the connection off at once (both ends); what is owed is dropped.
void close_connection(caf::io::broker* self, connection_state& st, const std::string& why) {
  if (st.closed)
    return;
  st.closed = true;
  if (!why.empty()) {
    st.shared->warn(st.shared->closing_warning, "closing a connection", st.peer,
                    st.requests.in_flight(),
                    why);
    ++st.shared->cfg.counters->cut_off;
  }
  self->quit();
}

/// Where a response's bytes are written: CAF's write buffer, or under TLS
/// the plaintext that encrypt_pending() moves there.
std::vector<char>& out_buffer(caf::io::broker* self, connection_state& st) {
  return st.tls ? st.plain_out : self->wr_buf(st.out);
}

/// TLS: encrypts what out_buffer() holds into CAF's write buffer.
void encrypt_pending(caf::io::broker* self, connection_state& st) {
  if (!st.tls || st.plain_out.empty())
    return;
  st.tls->send(st.plain_out.data(), st.plain_out.size(), self->wr_buf(st.out));
  st.plain_out.clear();
}

/// Writes bytes the TLS layer made (handshake records, alerts,
/// close_notify) that are already in CAF's write buffer beyond `before`.
void flush_records(caf::io::broker* self, connection_state& st, size_t before) {
  auto size = self->wr_buf(st.out).size();
  if (size <= before)
    return;
  st.set_pending_output(st.pending_output + size - before);
  self->flush(st.out);
}

/// Closes the connection once input has ended and every reply it is owed
/// has been written out (under TLS, a close_notify after them).
void finish_if_done(caf::io::broker* self, connection_state& st) {
  if (st.reading || st.requests.in_flight() > 0 || st.pending_output > 0)
    return;
  if (st.tls && st.tls->established() && !st.tls_closing && !st.closed) {
    st.tls_closing = true;
    auto before = self->wr_buf(st.out).size();
    st.tls->shutdown(self->wr_buf(st.out));
    flush_records(self, st, before);
    if (st.pending_output > 0)
      return; // data_transferred_msg comes back here
  }
  // Quitting closes both ends; nothing is left to write, so the reading
  // end's FIN (CAF shuts the socket down on close) cannot cut a reply.
  close_connection(self, st, "");
}

/// Hands what was written to the socket; a client that leaves more than
/// rpc.max-pending-output unread is cut off.
void flush_or_cut_off(caf::io::broker* self, connection_state& st) {
  encrypt_pending(self, st);
  self->flush(st.out);
  if (st.pending_output > st.shared->cfg.max_pending_output)
    close_connection(self, st,
                     "the client left more than "
                       + std::to_string(st.shared->cfg.max_pending_output)
                       + " bytes of responses unread (rpc.max-pending-output)");
}

/// Results from this size on are handed to CAF's write buffer instead of
/// copied into it when possible (see write_response).
constexpr size_t large_result = size_t{1} << 20;

void write_response(caf::io::broker* self, connection_state& st, uint32_t msgid,
                    const rpc_error* err, std::vector<char>* result) {
  if (st.closed)
    return;
  auto& out = out_buffer(self, st);
  auto before = out.size();
  detail::vector_writer w{out};
  packer pk{w};
  pk.pack_array(4);
  if (st.probe_sent) {
    // Sent ahead by probe_peer: every response starts with this byte.
    out.erase(out.begin() + static_cast<std::ptrdiff_t>(before));
    st.probe_sent = false;
  }
  pk.pack_uint8(1);
  pk.pack_uint32(msgid);
  if (err != nullptr) {
    size_t n = 2 + (err->type.empty() ? 0 : 1) + (err->details.empty() ? 0 : 1);
    pk.pack_map(static_cast<uint32_t>(n));
    // The message may quote the client's own bytes (a method or command
    // name): a str must be valid UTF-8 for strict decoders.
    pack_str(pk, "code");
    pack_str(pk, err->code);
    pack_str(pk, "message");
    pack_str(pk, as_valid_utf8(err->message));
    if (!err->type.empty()) {
      pack_str(pk, "type");
      pack_str(pk, as_valid_utf8(err->type));
    }
    if (!err->details.empty()) {
      pack_str(pk, "details");
      pack_str(pk, as_valid_utf8(err->details));
    }
    pk.pack_nil();
  } else {
    pk.pack_nil();
  }
  st.set_pending_output(st.pending_output + out.size() - before);
  st.shared->cfg.counters->bytes_sent += out.size() - before;
  if (result != nullptr) {
    // The result's bytes as the worker produced them, never re-encoded. A
    // large one is not copied on the I/O thread (which every connection
    // shares): once the header is handed to the socket, CAF's write buffer
    // is usually empty and simply takes the result's memory.
    auto size = result->size();
    if (st.tls) {
      // Encrypted from where it is (the header first): no staging copy.
      encrypt_pending(self, st);
      st.tls->send(result->data(), size, self->wr_buf(st.out));
    } else if (size >= large_result)
      self->flush(st.out);
    auto& rest = self->wr_buf(st.out);
    if (st.tls) {
      // written above
    } else if (size >= large_result && rest.empty()) {
      rest.swap(*result);
    } else {
      rest.reserve(rest.size() + size);
      rest.insert(rest.end(), result->begin(), result->end());
    }
    st.set_pending_output(st.pending_output + size);
    st.shared->cfg.counters->bytes_sent += size;
  }
  flush_or_cut_off(self, st);
}

/// The pool hears that this connection's streams were taken (the worker
/// may send more) while what is written waits little for the socket: a
/// client that reads slowly holds back its streams' generators, and the
/// node holds at most a window of each.
void credit_streams(caf::io::broker* self, connection_state& st) {
  auto below = std::min(size_t{1} << 20, st.shared->cfg.max_pending_output / 4);
  if (st.closed || st.pending_output > below)
    return;
  for (auto& [tag, s] : st.streams)
    if (s.received > s.taken) {
      s.taken = s.received;
      self->send(st.pool, taken_atom::value, tag, s.taken);
    }
}

/// Writes chunk `value` of the stream answering `msgid`: the notification
/// [2, "chunk", [msgid, value]], the value's bytes as the worker made them.
void write_chunk(caf::io::broker* self, connection_state& st, uint32_t msgid,
                 const std::vector<char>& value) {
  auto& out = out_buffer(self, st);
  auto before = out.size();
  detail::vector_writer w{out};
  packer pk{w};
  pk.pack_array(3);
  pk.pack_uint8(2);
  pack_str(pk, "chunk");
  pk.pack_array(2);
  pk.pack_uint32(msgid);
  out.insert(out.end(), value.begin(), value.end());
  st.set_pending_output(st.pending_output + out.size() - before);
  st.shared->cfg.counters->bytes_sent += out.size() - before;
  flush_or_cut_off(self, st);
}

void respond_error(caf::io::broker* self, connection_state& st, uint32_t msgid, rpc_error err) {
  write_response(self, st, msgid, &err, nullptr);
}

/// Writes the response to `msgid`; `result` may be taken (moved from).
void respond(caf::io::broker* self, connection_state& st, uint32_t msgid,
             std::vector<char>&& result) {
  write_response(self, st, msgid, nullptr, &result);
}

/// Input on this connection cannot go on: answers `msgid` (if any) with `code`, stops reading and releases what was
/// buffered; the connection closes once its replies are out.
void stop_reading(caf::io::broker* self, connection_state& st, std::optional<uint32_t> msgid,
                  error_code code, const std::string& why) {
  if (!st.reading || st.closed)
    return;
  st.shared->warn(st.shared->stop_reading_warning, "no more input taken from a connection", st.peer,
                  st.requests.in_flight(), why);
  ++st.shared->cfg.counters->cut_off;
  if (msgid)
    respond_error(self, st, *msgid, rpc_error_of(code, why));
  self->halt(st.in);
  release_input(st);
  finish_if_done(self, st);
}

/// Bytes CAF reads at once from a connection, before and after it is
/// admitted.
constexpr size_t admission_read_size = 4096;
constexpr size_t read_size = 65536;

/// Tells the acceptor once the connection's TLS (if any) is established
/// and its token (if asked for) given: it is no longer among those a new
/// connection may displace.
void admit_if_ready(caf::io::broker* self, connection_state& st) {
  if (st.admitted || !st.authenticated || (st.tls && !st.tls->established()))
    return;
  st.admitted = true;
  self->configure_read(st.in, caf::io::receive_policy::at_most(read_size));
  self->send(st.acceptor, admitted_atom::value);
}

/// The connection failed its admission (`why`, logged with the peer): no
/// more input; it closes once what it is owed (an `unauthenticated`
/// answer, a TLS alert) is written.
void refuse(caf::io::broker* self, connection_state& st, const std::string& why) {
  st.shared->refused(st.peer, why);
  ++st.shared->cfg.counters->refused_admission;
  if (st.reading) {
    self->halt(st.in);
    release_input(st);
  }
  finish_if_done(self, st);
}

void finished_one(caf::io::broker* self, const conn_ptr& st) {
  st->requests.leave();
  finish_if_done(self, *st);
}

/// Sends a request to the pool and writes its outcome as the response to
/// `msgid` (none for a notification); `encode` turns the result into bytes
/// (and may take them from it); `stream`: the request's tag when it is a
/// stream of this connection's (0: none), whose chunks end with its
/// response.
template <class Result, class Encode, class... Ts>
void forward(caf::io::broker* self, conn_ptr st, uint32_t msgid, bool notification,
             uint64_t stream, Encode encode, Ts&&... xs) {
  st->requests.enter();
  self->request(st->pool, caf::infinite, std::forward<Ts>(xs)...)
    .then(
      [self, st, msgid, notification, stream, encode](Result& result) {
        if (stream != 0)
          st->streams.erase(stream);
        if (!notification)
          respond(self, *st, msgid, encode(result));
        finished_one(self, st);
      },
      [self, st, msgid, notification, stream](caf::error& err) {
        if (stream != 0)
          st->streams.erase(stream);
        if (!notification)
          respond_error(self, *st, msgid, to_rpc_error(err));
        finished_one(self, st);
      });
}


/// Handles one complete message [0, end) of the buffer. Returns false when
/// the connection must be closed (no msgid to answer to).
bool handle_message(caf::io::broker* self, conn_ptr st, const char* data, size_t size) {
  using verdict = rpc_message::verdict;
  auto m = decode_rpc_message(data, size);
  bool is_auth = m.what == verdict::call && m.method == "auth";
  if (!st->authenticated || (is_auth && st->shared->token_required)) {
    // With a token, a connection's first message must be `auth` with it;
    // anything else ends the connection after its answer.
    if (is_auth && st->shared->token_matches(m.token)) {
      st->authenticated = true;
      if (!m.notification)
        respond(self, *st, m.msgid, pack(true).bytes);
      admit_if_ready(self, *st);
      return true;
    }
    bool answerable = m.what == verdict::reject || (m.what == verdict::call && !m.notification);
    if (answerable)
      respond_error(self, *st, m.msgid,
                    rpc_error_of(error_code::unauthenticated,
                                 is_auth ? "wrong token; the connection is closed"
                                         : "this node needs a token: call auth [token] first "
                                           "(rpc.token-file); the connection is closed"));
    refuse(self, *st, is_auth ? "a wrong token" : "a message before auth");
    return true;
  }
  switch (m.what) {
    case verdict::close:
      return false;
    case verdict::ignore:
      return true;
    case verdict::reject:
      respond_error(self, *st, m.msgid, rpc_error_of(error_code::bad_request, std::move(m.error)));
      return true;
    case verdict::call:
      break;
  }
  auto msgid = m.msgid;
  auto notification = m.notification;
  if (st->requests.closed()) {
    if (!notification)
      respond_error(self, *st, msgid,
                    rpc_error_of(error_code::shutting_down, "the node is shutting down"));
    return true;
  }
  if (m.method == "ping") {
    // "pong" only while the pool can serve: a health check must be able to
    // tell a node that listens from one that works.
    forward<bool>(self, st, msgid, notification, 0,
                  [](bool) { return pack(std::string{"pong"}).bytes; }, health_atom::value);
  } else if (m.method == "execute" && st->pending_output > 0
             && st->shared->pending_output > st->shared->cfg.max_pending_output_total) {
    // Clients leave this much unread: no new results for one that is among
    // them until it reads (one that reads everything is served).
    if (!notification)
      respond_error(self, *st, msgid,
                    rpc_error_of(error_code::overloaded,
                                 "the node holds " + std::to_string(st->shared->pending_output)
                                   + " bytes of responses clients have not read "
                                     "(rpc.max-pending-output-total), some of them this "
                                     "connection's; read them, then retry"));
  } else if (m.method == "execute") {
    // Tagged with its msgid (+1: 0 names no request) so that a cancel of
    // this connection can name it.
    if (!notification)
      m.request.tag = uint64_t{msgid} + 1;
    // A notification has no msgid for chunks to name: it runs as a call.
    uint64_t stream = 0;
    if (m.request.stream && notification)
      m.request.stream = false;
    else if (m.request.stream && !st->streams.count(m.request.tag))
      st->streams[stream = m.request.tag].msgid = msgid;
    else
      m.request.stream = false; // the same msgid twice: the first one streams
    forward<payload>(self, st, msgid, notification, stream,
                     [](payload& result) { return std::move(result.bytes); },
                     std::move(m.request));
  } else if (m.method == "session.end") {
    forward<bool>(self, st, msgid, notification, 0, [](bool) { return pack(true).bytes; },
                  end_session_atom::value, std::move(m.session_id));
  } else if (m.method == "cancel") {
    // This connection's request: the broker is its requester at the pool.
    // Unknown or answered already: nothing happens.
    self->send(st->pool, cancel_atom::value, uint64_t{m.cancel_id} + 1);
    if (!notification)
      respond(self, *st, msgid, pack(true).bytes);
  } else if (m.method == "auth") {
    // No token asked for (or given already): nothing to check.
    if (!notification)
      respond(self, *st, msgid, pack(true).bytes);
  } else if (m.method == "stats") {
    forward<pool_stats>(self, st, msgid, notification, 0,
                        [](const pool_stats& x) { return pack(x).bytes; }, status_atom::value);
  } else if (!notification) {
    respond_error(self, *st, msgid,
                  rpc_error_of(error_code::unknown_method,
                               "no method '" + m.method
                                 + "' (known: ping, execute, cancel, session.end, stats, auth)"));
  }
  return true;
}

/// The msgid of the message the input stopped in, if it can be read.
std::optional<uint32_t> current_msgid(const connection_state& st) {
  return read_msgid(st.framer.pending_data(), st.framer.buffered());
}

/// Takes every complete message out of the input and handles it; stops
/// reading when the input cannot go on.
void consume_input(caf::io::broker* self, const conn_ptr& st) {
  using status = rpc_framer::status;
  auto& cfg = st->shared->cfg;
  for (;;) {
    switch (st->framer.next()) {
      case status::message:
        ++st->completed;
        ++st->shared->cfg.counters->messages;
        if (!handle_message(self, st, st->framer.data(), st->framer.size())) {
          stop_reading(self, *st, std::nullopt, error_code::bad_request,
                       "malformed message without a readable msgid");
          return;
        }
        if (!st->reading || st->closed)
          return;
        continue;
      case status::too_large:
      case status::malformed:
        stop_reading(self, *st, current_msgid(*st), error_code::bad_request, st->framer.error());
        return;
      case status::need_more:
        break;
    }
    break;
  }
  account(*st);
  if (!st->framer.in_message())
    return;
  if (st->shared->buffered_input > cfg.max_buffered_input) {
    stop_reading(self, *st, current_msgid(*st), error_code::overloaded,
                 "the node holds more than " + std::to_string(cfg.max_buffered_input)
                   + " bytes of unfinished messages across its connections"
                     " (rpc.max-buffered-input); retry later");
    return;
  }
  if (st->partial_after != st->completed) {
    // A new unfinished message: it began with this read.
    st->partial_after = st->completed;
    st->partial_since = self->clock().now();
  }
  if (!st->timer_pending) {
    st->timer_pending = true;
    self->delayed_send(self, cfg.message_timeout, message_timeout_atom::value);
  }
}

/// The message timer: stops reading if the unfinished message has taken
/// longer than message_timeout, else waits for what is left of it.
void check_message_timeout(caf::io::broker* self, const conn_ptr& st) {
  st->timer_pending = false;
  if (!st->reading || !st->framer.in_message() || st->partial_after != st->completed)
    return; // nothing unfinished now; the next one arms the timer again
  auto timeout = st->shared->cfg.message_timeout;
  auto elapsed = self->clock().now() - st->partial_since;
  if (elapsed < timeout) {
    st->timer_pending = true;
    self->delayed_send(self, timeout - elapsed, message_timeout_atom::value);
    return;
  }
  stop_reading(self, *st, current_msgid(*st), error_code::bad_request,
               "message not complete after "
                 + std::to_string(
                   std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count())
                 + " ms (rpc.message-timeout)");
}

/// A client's input ended (EOF) while its requests run: it half-closed and
/// waits for its replies, or it closed and is gone; TCP cannot tell the two
/// apart until something is written. So the first byte of the next response
/// (0x94, the array header every response starts with) is written now: a
/// half-closed client just reads it early, a closed socket answers it with a
/// reset, which the timer sees (POLLERR/POLLHUP on the writing end). A gone
/// client's connection then closes, and the pool cancels its requests.
void probe_peer(caf::io::broker* self, const conn_ptr& st) {
  if (st->closed || st->requests.in_flight() == 0)
    return;
  // Not while it streams: a chunk would follow the response's first byte.
  // Its next chunk's write finds a gone client instead.
  if (!st->probe_sent && st->pending_output == 0 && st->streams.empty()) {
    out_buffer(self, *st).push_back(static_cast<char>(0x94));
    st->set_pending_output(st->pending_output + 1);
    encrypt_pending(self, *st);
    self->flush(st->out);
    st->probe_sent = true;
  }
  if (st->probe_sent) {
    pollfd p{static_cast<int>(st->out.id()), POLLOUT, 0};
    if (::poll(&p, 1, 0) > 0 && (p.revents & (POLLERR | POLLHUP)) != 0) {
      log().info("rpc: {} left with {} requests running; cancelling them", st->peer,
                 st->requests.in_flight());
      close_connection(self, *st, "");
      return;
    }
  }
  self->delayed_send(self, probe_interval, probe_atom::value);
}

/// Input ended: the replies still owed are delivered on the writing end
/// before the connection closes.
void end_of_input(caf::io::broker* self, const conn_ptr& st) {
  if (st->framer.in_message())
    log().info("rpc: {} closed its connection in the middle of a message", st->peer);
  release_input(*st);
  finish_if_done(self, *st);
  probe_peer(self, st);
}

/// Bytes read from a TLS connection: the handshake's, or records whose
/// plaintext goes to the framer.
void receive_tls(caf::io::broker* self, const conn_ptr& st, const std::vector<char>& buf) {
  auto& tls = *st->tls;
  bool was_established = tls.established();
  st->plain_in.clear();
  auto before = self->wr_buf(st->out).size();
  bool ok = tls.receive(buf.data(), buf.size(), st->plain_in, self->wr_buf(st->out));
  flush_records(self, *st, before);
  if (!ok) {
    if (!was_established) {
      refuse(self, *st, tls.error());
    } else {
      // A forged or corrupt record: nothing more can be read or written.
      st->shared->warn(st->shared->closing_warning, "closing a connection", st->peer,
                       st->requests.in_flight(), tls.error());
      close_connection(self, *st, "");
    }
    return;
  }
  if (!was_established && tls.established()) {
    log().debug("rpc: {}: {}", st->peer, tls.describe());
    admit_if_ready(self, *st);
  }
  if (!st->plain_in.empty()) {
    st->framer.append(st->plain_in.data(), st->plain_in.size());
    consume_input(self, st);
  }
  if (tls.peer_closed() && st->reading && !st->closed)
    end_of_input(self, st);
}

caf::behavior connection(caf::io::broker* self, caf::io::connection_handle hdl, pool_actor pool,
                         gateway_shared_ptr shared, caf::actor acceptor, bool unix_socket) {
  auto st = std::make_shared<connection_state>(shared->cfg);
  st->pool = std::move(pool);
  st->shared = std::move(shared);
  st->acceptor = std::move(acceptor);
  st->in = hdl;
  st->peer = describe_peer(static_cast<int>(hdl.id()));
  // Local clients are few and long-lived; their uid/pid is worth a line.
  if (unix_socket)
    log().info("rpc: connection from {}", st->peer);
  else
    log().debug("rpc: connection from {}", st->peer);
  ++st->shared->cfg.counters->open;
  self->attach_functor([st, unix_socket](const caf::error&) {
    release_input(*st);
    --st->shared->cfg.counters->open;
    if (unix_socket)
      log().info("rpc: connection from {} closed", st->peer);
  });
  // The writing end: a duplicate of the socket's descriptor (CAF 0.17's
  // default multiplexer names a connection by its descriptor).
  auto fd = ::fcntl(static_cast<int>(hdl.id()), F_DUPFD_CLOEXEC, 0);
  if (fd < 0) {
    log().warn("rpc: refusing a connection: cannot duplicate its socket ({})",
               std::strerror(errno));
    self->quit();
    return {};
  }
  auto out = self->add_scribe(fd);
  st->out = out;
  // CAF keeps a read buffer of this size per connection, zeroed when it
  // grows: small until the connection is admitted (a TLS handshake and an
  // auth are a few KiB), so that a thousand half-open handshakes cost little.
  self->configure_read(hdl, caf::io::receive_policy::at_most(admission_read_size));
  // Reports how much of what we wrote is still waiting for the socket.
  self->ack_writes(st->out, true);
  if (!unix_socket && st->shared->cfg.tls)
    st->tls = std::make_unique<tls_channel>(st->shared->cfg.tls);
  st->authenticated = !st->shared->token_required;
  admit_if_ready(self, *st);
  if (!st->admitted)
    self->delayed_send(self, st->shared->cfg.handshake_timeout, handshake_timeout_atom::value);
  return {
    [self, st](const caf::io::new_data_msg& msg) {
      if (!st->reading)
        return;
      st->shared->cfg.counters->bytes_received += msg.buf.size();
      if (st->tls) {
        receive_tls(self, st, msg.buf);
        return;
      }
      st->framer.append(msg.buf.data(), msg.buf.size());
      consume_input(self, st);
    },
    [self, st](handshake_timeout_atom) {
      if (st->admitted || st->closed)
        return;
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                  st->shared->cfg.handshake_timeout)
                  .count();
      st->shared->refused(st->peer, (st->tls && !st->tls->established()
                                       ? "no TLS handshake within "
                                       : "no auth within ")
                                      + std::to_string(ms) + " ms (rpc.handshake-timeout)");
      ++st->shared->cfg.counters->refused_admission;
      close_connection(self, *st, "");
    },
    [self, st](message_timeout_atom) { check_message_timeout(self, st); },
    [self, st](const caf::io::data_transferred_msg& msg) {
      st->set_pending_output(msg.remaining);
      credit_streams(self, *st);
      finish_if_done(self, *st);
    },
    [self, st](chunk_atom, uint64_t tag, payload& p) {
      // A chunk that comes after its response (it raced a cancel or a
      // deadline) finds no stream: dropped, never sent after the response.
      auto i = st->streams.find(tag);
      if (i == st->streams.end() || st->closed)
        return;
      ++i->second.received;
      write_chunk(self, *st, i->second.msgid, p.bytes);
      credit_streams(self, *st);
    },
    [self, st](const caf::io::connection_closed_msg& msg) {
      if (msg.handle == st->out) {
        // Writing failed: the client is gone, nobody reads the replies.
        close_connection(self, *st, "");
        return;
      }
      // End of input (a close or a half-close).
      end_of_input(self, st);
    },
    [self, st](probe_atom) { probe_peer(self, st); },
    [self, st](drain_atom) {
      // Answered now or by finished_one once the last request completes.
      st->requests.close(self->make_response_promise());
    },
  };
}

// -- the acceptor ---------------------------------------------------------------

struct acceptor_state {
  /// Open connections in the order they came; `admitted` once they said so
  /// (admitted_atom): the others may be displaced at max_connections.
  struct entry {
    caf::actor actor;
    bool admitted = false;
  };
  std::vector<entry> connections;
  /// Connections refused for max_connections since the last warning.
  log_throttle refused_warning, displaced_warning;
  caf::io::accept_handle doorman;
  /// The Unix socket's (valid only with cfg.unix_path).
  caf::io::accept_handle unix_doorman;
  bool has_unix = false;
  uint16_t port = 0;
  caf::error bind_error;
  /// Connections still draining; closed by drain_atom.
  drain_gate connection_drains;
};

/// The acceptor's listening sockets: TCP (unless cfg.tcp is false) and the
/// Unix socket; the first failure in `st->bind_error`.
void listen(caf::io::broker* self, acceptor_state& st, const gateway_config& cfg) {
  if (cfg.tcp) {
    auto res = self->add_tcp_doorman(cfg.port, cfg.host.c_str(), true);
    if (!res) {
      st.bind_error = res.error();
      return;
    }
    st.doorman = res->first;
    st.port = res->second;
  }
  if (!cfg.unix_path.empty()) {
    std::string why;
    auto fd = listen_unix(cfg.unix_path, cfg.unix_mode, why);
    if (fd < 0) {
      st.bind_error = make_error(error_code::bad_request, why);
      return;
    }
    st.unix_doorman = self->add_doorman(fd);
    st.has_unix = true;
  }
}

caf::behavior acceptor(caf::io::broker* self, pool_actor pool, gateway_config cfg) {
  auto st = std::make_shared<acceptor_state>();
  auto shared = std::make_shared<gateway_shared>();
  shared->cfg = cfg;
  if (!cfg.token_file.empty()) {
    if (auto token = read_token_file(cfg.token_file))
      shared->set_token(*token);
    else
      st->bind_error = token.error();
  }
  if (!st->bind_error)
    listen(self, *st, cfg);
  // However the acceptor ends, its connections end with it, and so does
  // its socket file.
  self->attach_functor([st, path = cfg.unix_path](const caf::error&) {
    for (auto& c : st->connections)
      caf::anon_send_exit(c.actor, caf::exit_reason::kill);
    if (st->has_unix)
      ::unlink(path.c_str());
  });
  auto find = [st](const caf::actor_addr& who) {
    return std::find_if(st->connections.begin(), st->connections.end(),
                        [&](const acceptor_state::entry& e) { return e.actor.address() == who; });
  };
  self->set_down_handler([st, find](caf::down_msg& dm) {
    if (auto i = find(dm.source); i != st->connections.end())
      st->connections.erase(i);
  });
  return {
    [self, st, pool, shared](const caf::io::new_connection_msg& msg) {
      auto& counters = *shared->cfg.counters;
      ++counters.accepted;
      if (st->connection_drains.closed()) {
        self->close(msg.handle);
        ++counters.refused;
        return;
      }
      auto& cs = st->connections;
      if (cs.size() >= shared->cfg.max_connections) {
        // Connections that have not finished their handshake (or auth) make
        // room first, the oldest of them: clients that never finish one
        // cannot lock out those that do.
        auto i = std::find_if(cs.begin(), cs.end(),
                              [](const acceptor_state::entry& e) { return !e.admitted; });
        if (i != cs.end()) {
          caf::anon_send_exit(i->actor, caf::exit_reason::kill);
          cs.erase(i);
          ++counters.refused_admission;
          if (auto n = st->displaced_warning.due())
            log().warn("rpc: closed {} connection(s) still in their TLS handshake or before "
                       "auth to admit new ones: {} are open (rpc.max-connections)",
                       n, cs.size() + 1);
        } else {
          // Accepted and closed at once: the client learns immediately, and
          // the listening socket never stays readable (a busy loop).
          self->close(msg.handle);
          ++counters.refused;
          if (auto n = st->refused_warning.due())
            log().warn("rpc: refused {} connection(s): {} are open (rpc.max-connections)", n,
                       cs.size());
          return;
        }
      }
      bool unix_socket = st->has_unix && msg.source == st->unix_doorman;
      auto c = self->fork(connection, msg.handle, pool, shared,
                          caf::actor_cast<caf::actor>(self), unix_socket);
      self->monitor(c);
      cs.push_back({c, false});
    },
    [self, st, find](admitted_atom) {
      if (auto i = find(caf::actor_cast<caf::actor_addr>(self->current_sender()));
          i != st->connections.end())
        i->admitted = true;
    },
    [shared](reload_token_atom) -> caf::result<bool> {
      if (shared->cfg.token_file.empty())
        return true;
      auto token = read_token_file(shared->cfg.token_file);
      if (!token)
        return token.error();
      shared->set_token(*token);
      return true;
    },
    [st](port_atom) -> caf::result<uint16_t> {
      if (st->bind_error)
        return st->bind_error;
      return st->port;
    },
    [self, st](drain_atom) {
      if (self->valid(st->doorman))
        self->close(st->doorman);
      if (st->has_unix)
        self->close(st->unix_doorman);
      // A connection that ends meanwhile (error) has nothing left to drain.
      for (auto& e : st->connections) {
        st->connection_drains.enter();
        self->request(e.actor, caf::infinite, drain_atom::value)
          .then([st](bool) { st->connection_drains.leave(); },
                [st](caf::error&) { st->connection_drains.leave(); });
      }
      st->connection_drains.close(self->make_response_promise());
    },
  };
}

} // namespace

caf::expected<std::string> read_token_file(const std::string& path) {
  auto fail = [&](const std::string& why) {
    return make_error(error_code::bad_request, "rpc.token-file=" + path + ": " + why);
  };
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return fail(std::string{"cannot open it: "} + std::strerror(errno));
  std::string token;
  char buf[4097];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof(buf))) > 0 && token.size() <= 4096)
    token.append(buf, static_cast<size_t>(n));
  ::close(fd);
  if (n < 0)
    return fail(std::string{"cannot read it: "} + std::strerror(errno));
  if (token.size() > 4096)
    return fail("larger than 4096 bytes: a token file holds the token only");
  while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back())))
    token.pop_back();
  if (token.empty())
    return fail("it is empty (write a long random token to it, e.g. `openssl rand -hex 32`)");
  return token;
}

caf::expected<std::pair<caf::actor, uint16_t>> spawn_gateway(caf::actor_system& sys,
                                                            pool_actor pool,
                                                            gateway_config cfg) {
  // Past the descriptor limit, accept() fails and CAF's doorman retries it
  // in a busy loop: serve only as many connections as descriptors allow.
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY) {
    size_t open_now = 0;
    if (auto* d = ::opendir("/proc/self/fd")) {
      while (::readdir(d) != nullptr)
        ++open_now;
      ::closedir(d);
    }
    // Headroom for workers started later (pipes, pidfds) and CAF itself.
    size_t reserve = open_now + 256;
    size_t allowed = lim.rlim_cur > reserve ? (lim.rlim_cur - reserve) / 2 : 0;
    if (cfg.max_connections > allowed) {
      log().warn("rpc.max-connections={} needs about {} file descriptors, the limit is {} "
                 "(ulimit -n, LimitNOFILE): serving at most {} connections",
                 cfg.max_connections, 2 * cfg.max_connections + reserve, lim.rlim_cur,
                 allowed);
      cfg.max_connections = allowed;
    }
  }
  if (!cfg.counters)
    cfg.counters = std::make_shared<gateway_counters>();
  auto gw = sys.middleman().spawn_broker(acceptor, std::move(pool), cfg);
  caf::scoped_actor self{sys};
  caf::expected<std::pair<caf::actor, uint16_t>> result{caf::error{}};
  self->request(gw, std::chrono::seconds(10), port_atom::value)
    .receive([&](uint16_t port) { result = std::make_pair(gw, port); },
             [&](caf::error& err) { result = std::move(err); });
  if (!result)
    caf::anon_send_exit(gw, caf::exit_reason::kill);
  return result;
}

} // namespace pyvisor
