// TLS for the MessagePack-RPC endpoint, over memory BIOs.
//
// CAF 0.17's brokers hand the gateway raw bytes and take raw bytes to write,
// so TLS runs beside the socket rather than on it: what arrives is fed to a
// tls_channel, which yields the plaintext (for the framer) and whatever the
// protocol must send back (handshake records, alerts); what the gateway
// writes is encrypted into bytes for CAF's write buffer. Nothing here knows
// CAF or blocks: the channel is pure state, tested without sockets
// (tests/unit/node/rpc_tls_test.cpp) and fuzzed (tests/fuzz/fuzz_rpc_tls.cpp).
//
// A tls_server_context is loaded once at start (the node refuses to start
// when it cannot be: the message names the key) and shared by every
// connection; each connection owns its tls_channel. TLS 1.2 and 1.3 only, no
// renegotiation, no session cache (nothing kept between connections). With
// a client CA, a client without a certificate signed by it fails the
// handshake; error() says why, for the log.

#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include <openssl/ssl.h>

namespace pyvisor {

/// Where the endpoint's credentials come from (the rpc.* keys).
struct tls_settings {
  /// PEM certificate chain of the node (rpc.certificate).
  std::string certificate;
  /// PEM private key (rpc.key); encrypted keys need `key_passphrase`.
  std::string key;
  std::string key_passphrase;
  /// PEM CA certificate(s) client certificates must be signed by
  /// (rpc.client-ca); empty: no client certificate asked for.
  std::string client_ca;
};

/// The server side's SSL_CTX, loaded once.
class tls_server_context {
public:
  /// Loads the certificate, key and CA; null and `error` (naming the rpc.*
  /// key at fault) when one cannot be used.
  static std::shared_ptr<tls_server_context> make(const tls_settings& settings,
                                                  std::string& error);

  ~tls_server_context();
  tls_server_context(const tls_server_context&) = delete;
  tls_server_context& operator=(const tls_server_context&) = delete;

  SSL_CTX* get() const noexcept {
    return ctx_;
  }

  /// Whether clients must present a certificate.
  bool verifies_clients() const noexcept {
    return verifies_clients_;
  }

private:
  tls_server_context() = default;
  SSL_CTX* ctx_ = nullptr;
  bool verifies_clients_ = false;
};

/// One TLS connection's state machine over memory buffers.
class tls_channel {
public:
  /// A server end (the gateway's connections).
  explicit tls_channel(std::shared_ptr<tls_server_context> ctx);

  /// An end of either kind on a context of the caller's (tests, clients).
  tls_channel(SSL_CTX* ctx, bool server);

  ~tls_channel();
  tls_channel(const tls_channel&) = delete;
  tls_channel& operator=(const tls_channel&) = delete;

  /// Starts a client's handshake (its first flight to `out`). A server
  /// waits for the client's.
  void start(std::vector<char>& out);

  /// Takes `n` bytes read from the socket: appends the plaintext they
  /// complete to `plain` and what must be sent back to `out`. Returns false
  /// once the connection cannot go on (a failed handshake, a corrupt or
  /// forged record, an alert): error() says why; `out` may then hold an
  /// alert worth sending before closing.
  bool receive(const char* data, size_t n, std::vector<char>& plain, std::vector<char>& out);

  /// Encrypts `n` bytes of plaintext into `out`. Only once established().
  void send(const char* data, size_t n, std::vector<char>& out);

  /// Appends a close_notify alert to `out` (once).
  void shutdown(std::vector<char>& out);

  /// The handshake has completed.
  bool established() const noexcept {
    return established_;
  }

  /// The peer sent close_notify: no more plaintext comes.
  bool peer_closed() const noexcept {
    return peer_closed_;
  }

  /// Why receive() returned false.
  const std::string& error() const noexcept {
    return error_;
  }

  /// Version and cipher, and the client certificate's subject if any
  /// ("TLSv1.3 TLS_AES_256_GCM_SHA384, client CN=..."), once established.
  std::string describe() const;

private:
  /// Moves what OpenSSL wrote to the outgoing BIO into `out`.
  void drain(std::vector<char>& out);

  /// Records why the connection failed (OpenSSL's error queue, the
  /// certificate verification result).
  void fail(const char* what, int ssl_error);

  std::shared_ptr<tls_server_context> ctx_;
  SSL* ssl_ = nullptr;
  /// Bytes from the network (read by OpenSSL) and to it (written by it).
  BIO* in_ = nullptr;
  BIO* out_ = nullptr;
  bool established_ = false;
  bool peer_closed_ = false;
  bool failed_ = false;
  bool shut_down_ = false;
  std::string error_;
};

} // namespace pyvisor
