// Unit tests of the RPC endpoint's TLS (node/rpc_tls.hpp) and its token
// file (node/gateway.hpp), issue #30 (who may reach the endpoint at all is
// in node_config_test.cpp): a
// client and a server channel talk through memory only, with certificates
// made in-process (tests/support/test_certificates.hpp), so every path
// (handshake, data both ways, refused client certificates, garbage, close)
// is checked without a socket or a timer.
#include "support/catch_caf.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <vector>

#include <openssl/ssl.h>

#include "messages/error_code.hpp"
#include "node/gateway.hpp"
#include "node/rpc_tls.hpp"
#include "support/test_certificates.hpp"

using namespace pyvisor;
using pyvisor::test::test_certificates;

namespace {

const test_certificates& certs() {
  return pyvisor::test::shared_certificates();
}

/// A client-side SSL_CTX that trusts the test CA, with an optional
/// certificate of its own and a protocol version pinned.
struct client_context {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());

  explicit client_context(const std::string& cert = {}, const std::string& key = {},
                          int version = 0) {
    SSL_CTX_load_verify_locations(ctx, certs().ca_cert.c_str(), nullptr);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
    if (!cert.empty()) {
      SSL_CTX_use_certificate_file(ctx, cert.c_str(), SSL_FILETYPE_PEM);
      SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM);
    }
    if (version != 0) {
      SSL_CTX_set_min_proto_version(ctx, version);
      SSL_CTX_set_max_proto_version(ctx, version);
    }
  }
  ~client_context() {
    SSL_CTX_free(ctx);
  }
};

std::shared_ptr<tls_server_context> server_context(bool client_ca = false) {
  tls_settings s;
  s.certificate = certs().server_cert;
  s.key = certs().server_key;
  if (client_ca)
    s.client_ca = certs().ca_cert;
  std::string error;
  auto ctx = tls_server_context::make(s, error);
  INFO(error);
  REQUIRE(ctx != nullptr);
  return ctx;
}

/// Two ends and the bytes in flight between them.
struct tls_pair {
  tls_channel client;
  tls_channel server;
  std::vector<char> to_server, to_client, client_plain, server_plain;
  bool client_ok = true, server_ok = true;

  tls_pair(SSL_CTX* client_ctx, std::shared_ptr<tls_server_context> server_ctx)
    : client(client_ctx, false), server(std::move(server_ctx)) {
  }

  /// Moves bytes both ways until neither side has any to send.
  void pump() {
    for (int round = 0; round < 20 && (!to_server.empty() || !to_client.empty()); ++round) {
      std::vector<char> in;
      in.swap(to_server);
      if (!in.empty() && server_ok)
        server_ok = server.receive(in.data(), in.size(), server_plain, to_client);
      in.clear();
      in.swap(to_client);
      if (!in.empty() && client_ok)
        client_ok = client.receive(in.data(), in.size(), client_plain, to_server);
    }
  }

  void handshake() {
    client.start(to_server);
    pump();
  }
};

std::string text(const std::vector<char>& v) {
  return {v.begin(), v.end()};
}

} // namespace

TEST_CASE("a TLS channel pair handshakes and carries data both ways",
          "[unit][node][tls]") {
  for (int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    INFO("version " << version);
    client_context cc{{}, {}, version};
    tls_pair p{cc.ctx, server_context()};
    p.handshake();
    REQUIRE(p.client.established());
    REQUIRE(p.server.established());
    CHECK(p.server.describe().find(version == TLS1_3_VERSION ? "TLSv1.3" : "TLSv1.2")
          != std::string::npos);
    // Larger than a record and a piece (256 KiB): split and joined again.
    std::string big(600 * 1024, 'x');
    for (size_t i = 0; i < big.size(); ++i)
      big[i] = static_cast<char>(i * 7 + i / 1000);
    p.client.send(big.data(), big.size(), p.to_server);
    p.pump();
    CHECK(text(p.server_plain) == big);
    p.server.send("pong", 4, p.to_client);
    p.pump();
    CHECK(text(p.client_plain) == "pong");
    // close_notify: the peer learns no more plaintext comes.
    p.server.shutdown(p.to_client);
    p.pump();
    CHECK(p.client.peer_closed());
    CHECK(p.client_ok);
  }
}

TEST_CASE("a handshake fed a byte at a time completes", "[unit][node][tls]") {
  client_context cc;
  tls_pair p{cc.ctx, server_context()};
  p.client.start(p.to_server);
  for (int round = 0; round < 50 && !(p.client.established() && p.server.established());
       ++round) {
    std::vector<char> in;
    in.swap(p.to_server);
    for (char c : in)
      REQUIRE(p.server.receive(&c, 1, p.server_plain, p.to_client));
    in.clear();
    in.swap(p.to_client);
    for (char c : in)
      REQUIRE(p.client.receive(&c, 1, p.client_plain, p.to_server));
  }
  CHECK(p.server.established());
  CHECK(p.client.established());
}

TEST_CASE("older protocols than TLS 1.2 are refused", "[unit][node][tls]") {
  client_context cc{{}, {}, TLS1_1_VERSION};
  // Debian's default security level would keep the client from offering
  // TLS 1.1 at all; at level 0 it does, and the server must say no.
  SSL_CTX_set_security_level(cc.ctx, 0);
  tls_pair p{cc.ctx, server_context()};
  p.client.start(p.to_server);
  REQUIRE_FALSE(p.to_server.empty()); // a TLS 1.1 ClientHello
  p.pump();
  CHECK_FALSE(p.server_ok);
  CHECK_FALSE(p.server.established());
  CHECK(p.server.error().find("unsupported protocol") != std::string::npos);
}

TEST_CASE("client certificates: signed served, none or foreign refused with a reason",
          "[unit][node][tls]") {
  auto ctx = server_context(true);
  REQUIRE(ctx->verifies_clients());
  {
    client_context cc{certs().client_cert, certs().client_key};
    tls_pair p{cc.ctx, ctx};
    p.handshake();
    CHECK(p.server.established());
    CHECK(p.server.describe().find("CN=client") != std::string::npos);
  }
  {
    client_context cc;
    tls_pair p{cc.ctx, ctx};
    p.handshake();
    CHECK_FALSE(p.server_ok);
    CHECK_FALSE(p.server.established());
    CHECK(p.server.error().find("did not return a certificate") != std::string::npos);
  }
  {
    client_context cc{certs().rogue_cert, certs().rogue_key};
    tls_pair p{cc.ctx, ctx};
    p.handshake();
    CHECK_FALSE(p.server_ok);
    CHECK(p.server.error().find("certificate verify failed") != std::string::npos);
  }
}

TEST_CASE("garbage ends a TLS channel with a reason, and nothing is passed on",
          "[unit][node][tls]") {
  SECTION("instead of a handshake") {
    tls_channel server{server_context()};
    std::vector<char> plain, out;
    // What a plaintext MessagePack-RPC client sends first.
    const char ping[] = "\x94\x00\x01\xa4ping\x90";
    bool ok = server.receive(ping, sizeof(ping) - 1, plain, out);
    // OpenSSL reads 0x94 as an SSLv2 record of 5120 bytes and waits for
    // them (rpc.handshake-timeout ends such a connection); nothing is
    // passed on meanwhile, and the rest of that "record" fails it.
    CHECK(ok);
    CHECK(plain.empty());
    std::string junk(8192, '\x16');
    ok = server.receive(junk.data(), junk.size(), plain, out);
    CHECK_FALSE(ok);
    CHECK(plain.empty());
    CHECK_FALSE(server.error().empty());
    CHECK_FALSE(server.established());
  }
  SECTION("after the handshake") {
    client_context cc;
    tls_pair p{cc.ctx, server_context()};
    p.handshake();
    REQUIRE(p.server.established());
    std::string junk = "\x17\x03\x03\x00\x20" + std::string(32, 'z'); // a forged record
    CHECK_FALSE(p.server.receive(junk.data(), junk.size(), p.server_plain, p.to_client));
    CHECK(p.server_plain.empty());
    CHECK(p.server.error().find("TLS read failed") != std::string::npos);
    // Once failed, it stays failed.
    CHECK_FALSE(p.server.receive("x", 1, p.server_plain, p.to_client));
  }
}

TEST_CASE("tls_server_context::make names the key at fault", "[unit][node][tls]") {
  auto problem = [](tls_settings s) {
    std::string error;
    auto ctx = tls_server_context::make(s, error);
    CHECK(ctx == nullptr);
    return error;
  };
  auto ok = [] {
    tls_settings s;
    s.certificate = certs().server_cert;
    s.key = certs().server_key;
    return s;
  };
  auto s = ok();
  s.certificate.clear();
  CHECK(problem(s).find("needs rpc.certificate") != std::string::npos);
  s = ok();
  s.key.clear();
  CHECK(problem(s).find("needs rpc.key") != std::string::npos);
  s = ok();
  s.certificate = certs().not_pem;
  CHECK(problem(s).find("cannot use rpc.certificate=" + certs().not_pem) == 0);
  s = ok();
  s.certificate = "/nonexistent/cert.pem";
  CHECK(problem(s).find("cannot use rpc.certificate=/nonexistent/cert.pem") == 0);
  s = ok();
  s.key = certs().rogue_key;
  CHECK(problem(s).find("it does not belong to rpc.certificate") != std::string::npos);
  s = ok();
  s.key = certs().server_key_encrypted;
  CHECK(problem(s).find("give rpc.key-passphrase") != std::string::npos);
  s.key_passphrase = "wrong";
  CHECK(problem(s).find("rpc.key-passphrase is wrong") != std::string::npos);
  s.key_passphrase = test_certificates::passphrase;
  std::string error;
  CHECK(tls_server_context::make(s, error) != nullptr);
  s = ok();
  s.client_ca = certs().not_pem;
  CHECK(problem(s).find("cannot use rpc.client-ca=") == 0);
}

// -- the token file --------------------------------------------------------------

namespace {

std::string write_file(const std::string& name, const std::string& content) {
  auto path = certs().dir + "/" + name;
  std::ofstream{path, std::ios::binary} << content;
  return path;
}

std::string message_of(const caf::expected<std::string>& x) {
  REQUIRE_FALSE(x);
  return info_of(x.error()).message;
}

} // namespace

TEST_CASE("a token file is read without its trailing whitespace, never quoted",
          "[unit][node][tls]") {
  auto path = write_file("token", "s3cret token\n\r\n ");
  auto token = read_token_file(path);
  REQUIRE(token);
  CHECK(*token == "s3cret token");
  CHECK(message_of(read_token_file(write_file("empty", " \n")))
          .find("is empty") != std::string::npos);
  auto big = write_file("big", std::string(5000, 'a'));
  auto msg = message_of(read_token_file(big));
  CHECK(msg.find("rpc.token-file=" + big) == 0);
  CHECK(msg.find("larger than 4096") != std::string::npos);
  CHECK(msg.find("aaaa") == std::string::npos);
  CHECK(message_of(read_token_file(certs().dir + "/missing")).find("cannot open it") !=
        std::string::npos);
  ::unlink(path.c_str());
  ::unlink(big.c_str());
  ::unlink((certs().dir + "/empty").c_str());
}
