// libFuzzer target: what a network client can send to a TLS endpoint
// (node/rpc_tls.hpp). The first byte chooses the mode and how the rest is
// cut into reads: either it is fed to a fresh server channel as the client's
// first bytes (a ClientHello and what follows), or a real client completes a
// handshake first and the rest arrives after it (forged records, alerts,
// renegotiation attempts). The channel must fail cleanly or carry on; it
// must never yield plaintext that no authenticated peer sent, nor crash, leak
// or loop. Certificates are made in-process once (support/test_certificates).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <openssl/ssl.h>

#include "node/rpc_tls.hpp"
#include "support/test_certificates.hpp"

namespace {

struct fixture {
  pyvisor::test::test_certificates certs;
  std::shared_ptr<pyvisor::tls_server_context> server;
  SSL_CTX* client = SSL_CTX_new(TLS_client_method());

  fixture() {
    pyvisor::tls_settings s;
    s.certificate = certs.server_cert;
    s.key = certs.server_key;
    std::string error;
    server = pyvisor::tls_server_context::make(s, error);
    if (!server)
      __builtin_trap();
    SSL_CTX_load_verify_locations(client, certs.ca_cert.c_str(), nullptr);
  }
};

fixture& the_fixture() {
  static fixture f;
  return f;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0)
    return 0;
  auto& fx = the_fixture();
  bool after_handshake = (data[0] & 0x80) != 0;
  size_t chunk = (data[0] & 0x7f) + 1;
  auto* bytes = reinterpret_cast<const char*>(data + 1);
  size_t n = size - 1;
  pyvisor::tls_channel server{fx.server};
  std::vector<char> plain, out;
  if (after_handshake) {
    pyvisor::tls_channel client{fx.client, false};
    std::vector<char> to_server, to_client, client_plain;
    client.start(to_server);
    for (int round = 0; round < 10 && !(server.established() && client.established());
         ++round) {
      if (!server.receive(to_server.data(), to_server.size(), plain, to_client))
        __builtin_trap(); // a real client's handshake must succeed
      to_server.clear();
      client.receive(to_client.data(), to_client.size(), client_plain, to_server);
      to_client.clear();
    }
    if (!server.established())
      __builtin_trap();
  }
  for (size_t pos = 0; pos < n; pos += chunk) {
    auto len = std::min(chunk, n - pos);
    if (!server.receive(bytes + pos, len, plain, out))
      break;
    out.clear();
    // Without the session keys no record can decrypt: nothing the input
    // says is plaintext.
    if (!plain.empty())
      __builtin_trap();
  }
  server.send("x", 1, out);
  server.shutdown(out);
  return 0;
}
