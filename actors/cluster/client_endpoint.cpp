#include "actors/cluster/client_endpoint.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <utility>
#include <memory>
#include <map>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "caf/actor_system.hpp"
#include "caf/actor_system_config.hpp"
#include "caf/exit_reason.hpp"
#include "caf/io/middleman.hpp"
#include "caf/mailbox_element.hpp"
#include "caf/openssl/manager.hpp"
#include "caf/openssl/publish.hpp"
#include "caf/typed_event_based_actor.hpp"

#include "messages/log.hpp"

namespace pyvisor {

void add_cluster_types(caf::actor_system_config& cfg) {
  add_pool_types(cfg);
  cfg.add_message_type<client_actor>("pyvisor::client_actor");
}

namespace {

/// The endpoint as a class: its enqueue sees every message before the
/// mailbox does, which is the only place where CAF 0.17 lets an actor turn
/// away an exit message with reason `kill` (scheduled_actor::categorize
/// quits on it whatever the exit handler says) or a forged response (a
/// peer may send any message id, and the ids of the endpoint's own requests
/// to the pool are sequential).
class client_endpoint : public client_actor::base {
public:
  client_endpoint(caf::actor_config& cfg, pool_actor pool)
    : client_actor::base(cfg), pool_(std::move(pool)) {
  }

  const char* name() const override {
    return "pyvisor.client_endpoint";
  }

  void enqueue(caf::mailbox_element_ptr ptr, caf::execution_unit* eu) override {
    if (ptr && !from_this_process(*ptr)) {
      auto& content = ptr->content();
      const char* what = nullptr;
      if (ptr->mid.is_response())
        what = "a response to a request it never sent";
      else if (content.match_elements<caf::exit_msg>())
        what = "an exit message";
      else if (content.match_elements<caf::down_msg>())
        what = "a down message";
      else if (content.match_elements<caf::error>())
        what = "an error message";
      else if (content.match_elements<chunk_atom, uint64_t, payload>())
        what = "a stream chunk";
      if (what) {
        // The first ones, then every 10000th: a peer may send millions.
        if (++ignored_ <= 10 || ignored_ % 10000 == 0)
          log().warn("client endpoint: ignored {} from {} ({} ignored so far)", what,
                     sender_name(*ptr), ignored_.load());
        return;
      }
    }
    client_actor::base::enqueue(std::move(ptr), eu);
  }

  behavior_type make_behavior() override {
    monitor(pool_);
    set_down_handler([this](caf::down_msg& dm) {
      if (dm.source == pool_.address())
        quit(dm.reason);
    });
    // Local exit and error messages have no business here either: the
    // endpoint ends with its pool, and nothing it requests has a timeout.
    set_exit_handler([](caf::exit_msg&) {});
    set_error_handler([](caf::error&) {});
    return {
      [this](execute& x) -> caf::result<payload> {
        // At the pool the endpoint is the requester of every peer's
        // requests: a tag of its own (never 0, which would mean all of
        // them) stands for the peer's.
        if (x.tag == 0)
          return relay<payload>(std::move(x));
        auto key = std::make_pair(caf::actor_cast<caf::actor_addr>(current_sender()), x.tag);
        auto own = ++next_tag_;
        tags_[key] = own;
        if (x.stream)
          streams_[own] = key;
        x.tag = own;
        auto rp = make_response_promise<payload>();
        request(pool_, caf::infinite, std::move(x))
          .then(
            [this, rp, key, own](payload& p) mutable {
              forget_tag(key, own);
              rp.deliver(std::move(p));
            },
            [this, rp, key, own](caf::error& err) mutable {
              forget_tag(key, own);
              rp.deliver(std::move(err));
            });
        return rp;
      },
      [this](cancel_atom, uint64_t tag) {
        auto who = caf::actor_cast<caf::actor_addr>(current_sender());
        for (auto i = tags_.lower_bound({who, tag == 0 ? 1 : tag}); i != tags_.end(); ++i) {
          if (i->first.first != who || (tag != 0 && i->first.second != tag))
            break;
          send(pool_, cancel_atom::value, i->second);
        }
      },
      [this](taken_atom, uint64_t tag, uint64_t n) {
        auto who = caf::actor_cast<caf::actor_addr>(current_sender());
        if (auto i = tags_.find({who, tag}); tag != 0 && i != tags_.end())
          send(pool_, taken_atom::value, i->second, n);
      },
      [this](chunk_atom, uint64_t own, payload& p) {
        // Only local senders get here (enqueue): a worker of the pool.
        auto i = streams_.find(own);
        if (i == streams_.end())
          return;
        // As the endpoint (the front checks who sends its chunks).
        if (auto peer = caf::actor_cast<caf::actor>(i->second.first))
          caf::send_as(caf::actor_cast<caf::actor>(this), peer, chunk_atom::value,
                       i->second.second, std::move(p));
      },
      [this](end_session_atom, std::string& id) -> caf::result<bool> {
        return relay<bool>(end_session_atom::value, std::move(id));
      },
      [this](status_atom) -> caf::result<pool_stats> {
        return relay<pool_stats>(status_atom::value);
      },
    };
  }

private:
  /// Asks the pool and answers with what it says: the reply leaves this
  /// process from the endpoint, never from the pool or a worker.
  template <class T, class... Ts>
  caf::result<T> relay(Ts&&... xs) {
    auto rp = make_response_promise<T>();
    request(pool_, caf::infinite, std::forward<Ts>(xs)...)
      .then([rp](T& x) mutable { rp.deliver(std::move(x)); },
            [rp](caf::error& err) mutable { rp.deliver(std::move(err)); });
    return rp;
  }

  bool from_this_process(const caf::mailbox_element& x) const {
    return x.sender != nullptr && x.sender->node() == home_system().node();
  }

  static std::string sender_name(const caf::mailbox_element& x) {
    if (x.sender == nullptr)
      return "an anonymous sender";
    return "actor " + std::to_string(x.sender->id()) + " on node " + to_string(x.sender->node());
  }

  void forget_tag(const std::pair<caf::actor_addr, uint64_t>& key, uint64_t own) {
    auto i = tags_.find(key);
    if (i != tags_.end() && i->second == own)
      tags_.erase(i);
    streams_.erase(own);
  }

  pool_actor pool_;
  /// (peer, its tag) -> the endpoint's tag at the pool, while in flight.
  std::map<std::pair<caf::actor_addr, uint64_t>, uint64_t> tags_;
  /// The endpoint's tag of a stream -> (peer, its tag): where its chunks go.
  std::map<uint64_t, std::pair<caf::actor_addr, uint64_t>> streams_;
  uint64_t next_tag_ = 0;
  /// Messages turned away (enqueue runs on any thread).
  std::atomic<uint64_t> ignored_{0};
};

} // namespace

client_actor spawn_client_endpoint(caf::actor_system& sys, pool_actor pool) {
  return sys.spawn<client_endpoint>(std::move(pool));
}

// The address rules the node and the cluster front share: parse_peer
// (declared in cluster.hpp) and is_loopback.
bool parse_peer(const std::string& peer, std::string& host, uint16_t& port) {
  std::string h;
  std::string p;
  if (!peer.empty() && peer.front() == '[') {
    auto close = peer.find(']');
    if (close == std::string::npos || close + 1 >= peer.size() || peer[close + 1] != ':')
      return false;
    h = peer.substr(1, close - 1);
    p = peer.substr(close + 2);
  } else {
    auto colon = peer.rfind(':');
    if (colon == std::string::npos || peer.find(':') != colon)
      return false;
    h = peer.substr(0, colon);
    p = peer.substr(colon + 1);
  }
  if (h.empty() || p.empty() || p.size() > 5
      || !std::all_of(p.begin(), p.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return false;
  auto n = std::stoul(p);
  if (n == 0 || n > 65535)
    return false;
  host = h;
  port = static_cast<uint16_t>(n);
  return true;
}

bool is_loopback(const std::string& host) {
  if (host == "localhost" || host == "::1")
    return true;
  in_addr a{};
  if (::inet_pton(AF_INET, host.c_str(), &a) == 1)
    return (ntohl(a.s_addr) >> 24) == 127;
  return false;
}

std::string check_tls_files(const caf::actor_system_config& sys_cfg) {
  struct named {
    const char* key;
    const std::string& value;
  };
  for (auto [key, value] : {named{"openssl.certificate", sys_cfg.openssl_certificate},
                            named{"openssl.key", sys_cfg.openssl_key},
                            named{"openssl.cafile", sys_cfg.openssl_cafile}})
    if (value.empty())
      return std::string{"TLS needs "} + key
             + " (with openssl.certificate, openssl.key and openssl.cafile: this node's "
               "certificate, its private key and the CA that signed every node's and "
               "client's certificate)";
  // Load them now: CAF loads them for each connection and throws on its I/O
  // thread when it cannot, which would end the process at the first peer.
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx{SSL_CTX_new(TLS_method()), SSL_CTX_free};
  auto fail = [&](const char* key, const std::string& value) {
    char reason[256] = "unknown reason";
    if (auto code = ERR_get_error())
      ERR_error_string_n(code, reason, sizeof(reason));
    ERR_clear_error();
    return std::string{"cannot use "} + key + "=" + value + ": " + reason;
  };
  if (!ctx)
    return "cannot create an OpenSSL context";
  if (!sys_cfg.openssl_passphrase.empty())
    SSL_CTX_set_default_passwd_cb_userdata(
      ctx.get(), const_cast<char*>(sys_cfg.openssl_passphrase.c_str()));
  if (SSL_CTX_use_certificate_chain_file(ctx.get(), sys_cfg.openssl_certificate.c_str()) != 1)
    return fail("openssl.certificate", sys_cfg.openssl_certificate);
  if (SSL_CTX_use_PrivateKey_file(ctx.get(), sys_cfg.openssl_key.c_str(), SSL_FILETYPE_PEM) != 1)
    return fail("openssl.key", sys_cfg.openssl_key);
  if (SSL_CTX_check_private_key(ctx.get()) != 1)
    return fail("openssl.key", sys_cfg.openssl_key + " (does not match openssl.certificate)");
  if (SSL_CTX_load_verify_locations(ctx.get(), sys_cfg.openssl_cafile.c_str(), nullptr) != 1)
    return fail("openssl.cafile", sys_cfg.openssl_cafile);
  return {};
}

std::string check_publish_config(const caf::actor_system_config& sys_cfg,
                                 const publish_config& cfg) {
  if (cfg.tls)
    return check_tls_files(sys_cfg);
  if (!cfg.insecure && !is_loopback(cfg.host))
    return "publish.host=" + (cfg.host.empty() ? std::string{"(all addresses)"} : cfg.host)
           + " is not a loopback address, and publishing there without TLS lets anyone who "
             "reaches it run code on this node: set publish.tls=true (with "
             "openssl.certificate, openssl.key, openssl.cafile) or, on a network you trust, "
             "publish.insecure=true";
  return {};
}

caf::expected<uint16_t> publish_pool(caf::actor_system& sys, pool_actor pool,
                                     const publish_config& cfg) {
  if (auto problem = check_publish_config(sys.config(), cfg); !problem.empty())
    return make_error(error_code::bad_request, problem);
  if (cfg.tls && !sys.has_openssl_manager())
    return make_error(error_code::bad_request,
                      "publish.tls needs CAF's OpenSSL module: "
                      "cfg.load<caf::openssl::manager>() before starting the actor system");
  auto endpoint = spawn_client_endpoint(sys, std::move(pool));
  const char* host = cfg.host.empty() ? nullptr : cfg.host.c_str();
  auto port = cfg.tls ? caf::openssl::publish(endpoint, cfg.port, host, true)
                      : sys.middleman().publish(endpoint, cfg.port, host, true);
  if (!port)
    caf::anon_send_exit(endpoint, caf::exit_reason::user_shutdown);
  return port;
}

} // namespace pyvisor

