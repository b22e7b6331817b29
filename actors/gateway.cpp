#include "actors/gateway.hpp"

#include <memory>

#include "caf/actor_system.hpp"
#include "caf/io/broker.hpp"
#include "caf/io/middleman.hpp"
#include "caf/scoped_actor.hpp"

#include "actors/rpc_request.hpp"
#include "messages/log.hpp"
#include "messages/msgpack_cursor.hpp"
#include "messages/payload.hpp"

namespace pyvisor {

namespace {

using port_atom = caf::atom_constant<caf::atom("gw_port")>;

using packer = msgpack::packer<detail::vector_writer>;

void pack_str(packer& pk, std::string_view s) {
  pk.pack_str(static_cast<uint32_t>(s.size()));
  pk.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
}

struct rpc_error {
  std::string code;
  std::string message;
  std::string type;
  std::string details;
};

rpc_error to_rpc_error(const caf::error& err) {
  auto info = info_of(err);
  return {to_string(info.code), info.message, info.python_type, info.traceback};
}

// -- one connection -------------------------------------------------------------

struct connection_state {
  pool_actor pool;
  gateway_config cfg;
  caf::io::connection_handle hdl;
  std::vector<char> buf;
  /// Response bytes handed to CAF and not yet written to the socket.
  size_t pending_output = 0;
  bool closed = false;
  size_t in_flight = 0;
  bool draining = false;
  std::vector<caf::response_promise> drain_waiters;
};

using conn_ptr = std::shared_ptr<connection_state>;

void close_connection(caf::io::broker* self, connection_state& st, const std::string& why) {
  if (st.closed)
    return;
  st.closed = true;
  log().warn("rpc: closing a connection: {}", why);
  self->close(st.hdl);
  self->quit();
}

void write_response(caf::io::broker* self, connection_state& st, uint32_t msgid,
                    const rpc_error* err, const std::vector<char>* result) {
  if (st.closed)
    return;
  auto& out = self->wr_buf(st.hdl);
  auto before = out.size();
  detail::vector_writer w{out};
  packer pk{w};
  pk.pack_array(4);
  pk.pack_uint8(1);
  pk.pack_uint32(msgid);
  if (err != nullptr) {
    size_t n = 2 + (err->type.empty() ? 0 : 1) + (err->details.empty() ? 0 : 1);
    pk.pack_map(static_cast<uint32_t>(n));
    pack_str(pk, "code");
    pack_str(pk, err->code);
    pack_str(pk, "message");
    pack_str(pk, err->message);
    if (!err->type.empty()) {
      pack_str(pk, "type");
      pack_str(pk, err->type);
    }
    if (!err->details.empty()) {
      pack_str(pk, "details");
      pack_str(pk, err->details);
    }
    pk.pack_nil();
  } else {
    pk.pack_nil();
    // The result's bytes as the worker produced them.
    out.insert(out.end(), result->begin(), result->end());
  }
  st.pending_output += out.size() - before;
  self->flush(st.hdl);
  if (st.pending_output > st.cfg.max_pending_output)
    close_connection(self, st,
                     "the client left more than " + std::to_string(st.cfg.max_pending_output)
                       + " bytes of responses unread (rpc.max-pending-output)");
}

void respond_error(caf::io::broker* self, connection_state& st, uint32_t msgid, rpc_error err) {
  write_response(self, st, msgid, &err, nullptr);
}

void respond(caf::io::broker* self, connection_state& st, uint32_t msgid,
             const std::vector<char>& result) {
  write_response(self, st, msgid, nullptr, &result);
}

void finished_one(conn_ptr st) {
  if (--st->in_flight == 0 && st->draining) {
    for (auto& rp : st->drain_waiters)
      rp.deliver(true);
    st->drain_waiters.clear();
  }
}

/// Sends a request to the pool and writes its outcome as the response to
/// `msgid` (none for a notification); `encode` turns the result into bytes.
template <class Result, class Encode, class... Ts>
void forward(caf::io::broker* self, conn_ptr st, uint32_t msgid, bool notification,
             Encode encode, Ts&&... xs) {
  ++st->in_flight;
  self->request(st->pool, caf::infinite, std::forward<Ts>(xs)...)
    .then(
      [self, st, msgid, notification, encode](Result& result) {
        if (!notification)
          respond(self, *st, msgid, encode(result));
        finished_one(st);
      },
      [self, st, msgid, notification](caf::error& err) {
        if (!notification)
          respond_error(self, *st, msgid, to_rpc_error(err));
        finished_one(st);
      });
}

std::vector<char> pack_stats(const pool_stats& s) {
  std::vector<char> out;
  detail::vector_writer w{out};
  packer pk{w};
  pk.pack_map(12);
  pack_str(pk, "state");
  pack_str(pk, s.state);
  pack_str(pk, "last_failure");
  pack_str(pk, s.last_failure);
  pack_str(pk, "pool_restarts");
  pk.pack(s.pool_restarts);
  pack_str(pk, "workers");
  pk.pack_array(static_cast<uint32_t>(s.workers.size()));
  for (auto& ws : s.workers) {
    pk.pack_map(7);
    pack_str(pk, "id");
    pk.pack(ws.id);
    pack_str(pk, "pid");
    pk.pack(ws.pid);
    pack_str(pk, "state");
    pack_str(pk, ws.state);
    pack_str(pk, "in_flight");
    pk.pack(ws.in_flight);
    pack_str(pk, "served");
    pk.pack(ws.served);
    pack_str(pk, "restarts");
    pk.pack(ws.restarts);
    pack_str(pk, "started_at");
    pk.pack(ws.started_at);
  }
  pack_str(pk, "sessions");
  pk.pack(s.sessions);
  pack_str(pk, "queue");
  pk.pack(s.queue);
  pack_str(pk, "replies");
  pk.pack(s.replies);
  pack_str(pk, "restarts");
  pk.pack(s.restarts);
  pack_str(pk, "retries");
  pk.pack(s.retries);
  pack_str(pk, "requeued");
  pk.pack(s.requeued);
  pack_str(pk, "recycled");
  pk.pack(s.recycled);
  pack_str(pk, "latency_us");
  pk.pack_map(3);
  pack_str(pk, "p50");
  pk.pack(s.p50_us);
  pack_str(pk, "p90");
  pk.pack(s.p90_us);
  pack_str(pk, "p99");
  pk.pack(s.p99_us);
  return out;
}

/// Handles one complete message [0, end) of the buffer. Returns false when
/// the connection must be closed (no msgid to answer to).
bool handle_message(caf::io::broker* self, conn_ptr st, const char* data, size_t size) {
  using verdict = rpc_message::verdict;
  auto m = decode_rpc_message(data, size);
  switch (m.what) {
    case verdict::close:
      return false;
    case verdict::ignore:
      return true;
    case verdict::reject:
      respond_error(self, *st, m.msgid, {"bad_request", std::move(m.error), "", ""});
      return true;
    case verdict::call:
      break;
  }
  auto msgid = m.msgid;
  auto notification = m.notification;
  if (st->draining) {
    if (!notification)
      respond_error(self, *st, msgid, {"shutting_down", "the node is shutting down", "", ""});
    return true;
  }
  if (m.method == "ping") {
    // "pong" only while the pool can serve: a health check must be able to
    // tell a node that listens from one that works.
    forward<bool>(self, st, msgid, notification,
                  [](bool) { return pack(std::string{"pong"}).bytes; }, health_atom::value);
  } else if (m.method == "execute") {
    forward<payload>(self, st, msgid, notification,
                     [](const payload& result) -> const std::vector<char>& {
                       return result.bytes;
                     },
                     std::move(m.request));
  } else if (m.method == "session.end") {
    forward<bool>(self, st, msgid, notification, [](bool) { return pack(true).bytes; },
                  end_session_atom::value, std::move(m.session_id));
  } else if (m.method == "stats") {
    forward<pool_stats>(self, st, msgid, notification,
                        [](const pool_stats& x) { return pack_stats(x); }, status_atom::value);
  } else if (!notification) {
    respond_error(self, *st, msgid,
                  {"unknown_method",
                   "no method '" + m.method + "' (known: ping, execute, session.end, stats)", "",
                   ""});
  }
  return true;
}

caf::behavior connection(caf::io::broker* self, caf::io::connection_handle hdl, pool_actor pool,
                         gateway_config cfg) {
  auto st = std::make_shared<connection_state>();
  st->pool = std::move(pool);
  st->cfg = std::move(cfg);
  st->hdl = hdl;
  self->configure_read(hdl, caf::io::receive_policy::at_most(65536));
  // Reports how much of what we wrote is still waiting for the socket.
  self->ack_writes(hdl, true);
  auto close = [self, st](const std::string& why) { close_connection(self, *st, why); };
  return {
    [self, st, close](const caf::io::new_data_msg& msg) {
      st->buf.insert(st->buf.end(), msg.buf.begin(), msg.buf.end());
      size_t pos = 0;
      while (pos < st->buf.size()) {
        // Find the end of one complete msgpack value.
        size_t end = 0;
        try {
          msgpack_cursor probe{st->buf.data() + pos, st->buf.size() - pos};
          probe.next();
          end = probe.offset();
        } catch (const msgpack::insufficient_bytes&) {
          break;
        } catch (const std::exception& e) {
          close(std::string{"input is not msgpack: "} + e.what());
          return;
        }
        if (end > st->cfg.max_message_size) {
          close("message of " + std::to_string(end) + " bytes exceeds rpc.max-message-size");
          return;
        }
        if (!handle_message(self, st, st->buf.data() + pos, end)) {
          close("malformed message without a readable msgid");
          return;
        }
        pos += end;
      }
      st->buf.erase(st->buf.begin(), st->buf.begin() + static_cast<std::ptrdiff_t>(pos));
      if (st->buf.size() > st->cfg.max_message_size)
        close("incomplete message exceeds rpc.max-message-size");
    },
    [st](const caf::io::data_transferred_msg& msg) { st->pending_output = msg.remaining; },
    [self](const caf::io::connection_closed_msg&) { self->quit(); },
    [self, st](drain_atom) {
      // Answered now or by finished_one once the last request completes.
      auto rp = self->make_response_promise();
      st->draining = true;
      if (st->in_flight == 0)
        rp.deliver(true);
      else
        st->drain_waiters.push_back(rp);
    },
  };
}

// -- the acceptor ---------------------------------------------------------------

struct acceptor_state {
  std::vector<caf::actor> connections;
  caf::io::accept_handle doorman;
  uint16_t port = 0;
  caf::error bind_error;
  bool draining = false;
};

caf::behavior acceptor(caf::io::broker* self, pool_actor pool, gateway_config cfg) {
  auto st = std::make_shared<acceptor_state>();
  auto res = self->add_tcp_doorman(cfg.port, cfg.host.c_str(), true);
  if (!res) {
    st->bind_error = res.error();
  } else {
    st->doorman = res->first;
    st->port = res->second;
  }
  // However the acceptor ends, its connections end with it.
  self->attach_functor([st](const caf::error&) {
    for (auto& c : st->connections)
      caf::anon_send_exit(c, caf::exit_reason::kill);
  });
  self->set_down_handler([st](caf::down_msg& dm) {
    auto& cs = st->connections;
    cs.erase(std::remove_if(cs.begin(), cs.end(),
                            [&](const caf::actor& a) { return a.address() == dm.source; }),
             cs.end());
  });
  return {
    [self, st, pool, cfg](const caf::io::new_connection_msg& msg) {
      if (st->draining) {
        self->close(msg.handle);
        return;
      }
      auto c = self->fork(connection, msg.handle, pool, cfg);
      self->monitor(c);
      st->connections.push_back(c);
    },
    [st](port_atom) -> caf::result<uint16_t> {
      if (st->bind_error)
        return st->bind_error;
      return st->port;
    },
    [self, st](drain_atom) {
      auto rp = self->make_response_promise();
      st->draining = true;
      self->close(st->doorman);
      if (st->connections.empty()) {
        rp.deliver(true);
        return;
      }
      auto pending = std::make_shared<size_t>(st->connections.size());
      for (auto& c : st->connections)
        self->request(c, caf::infinite, drain_atom::value)
          .then([rp, pending](bool) mutable {
            if (--*pending == 0)
              rp.deliver(true);
          },
                [rp, pending](caf::error&) mutable {
                  if (--*pending == 0)
                    rp.deliver(true);
                });
    },
  };
}

} // namespace

caf::expected<std::pair<caf::actor, uint16_t>> spawn_gateway(caf::actor_system& sys,
                                                            pool_actor pool,
                                                            gateway_config cfg) {
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
