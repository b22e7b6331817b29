#include "node/rpc_tls.hpp"

#include <algorithm>
#include <climits>
#include <cstring>

#include <openssl/err.h>
#include <openssl/x509.h>

namespace pyvisor {

namespace {

/// OpenSSL's oldest queued error as text, and the queue emptied.
std::string take_openssl_error() {
  std::string result;
  while (auto code = ERR_get_error()) {
    if (result.empty()) {
      char buf[256];
      ERR_error_string_n(code, buf, sizeof(buf));
      result = buf;
    }
  }
  return result;
}

/// Gives OpenSSL the key's passphrase; without one, an encrypted key fails
/// to load (OpenSSL's default would prompt on the terminal).
int passphrase_cb(char* buf, int size, int, void* user) {
  auto* phrase = static_cast<const std::string*>(user);
  if (phrase == nullptr || phrase->empty() || size <= 0)
    return 0;
  auto n = std::min(static_cast<int>(phrase->size()), size);
  std::memcpy(buf, phrase->data(), static_cast<size_t>(n));
  return n;
}

/// Plaintext and records move through OpenSSL in pieces of this size: a
/// memory BIO grows by reallocating (and clearing) its buffer, so one
/// SSL_write of a 60 MiB result would copy it several times over.
constexpr size_t piece = size_t{256} << 10;

} // namespace

// -- tls_server_context ---------------------------------------------------------

std::shared_ptr<tls_server_context> tls_server_context::make(const tls_settings& settings,
                                                             std::string& error) {
  ERR_clear_error();
  std::shared_ptr<tls_server_context> result{new tls_server_context};
  auto* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr) {
    error = "cannot create an OpenSSL context: " + take_openssl_error();
    return nullptr;
  }
  result->ctx_ = ctx;
  auto fail = [&](const std::string& key, const std::string& value, const std::string& what) {
    auto reason = take_openssl_error();
    error = "cannot use " + key + "=" + value + ": " + what
            + (reason.empty() ? std::string{} : " (" + reason + ")");
    return nullptr;
  };
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE
                             | SSL_OP_NO_COMPRESSION);
  // Nothing is kept between connections (no resumption): a connection's
  // cost is its own, and an idle one gives its record buffers back.
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_num_tickets(ctx, 0);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  // Used while loading only: the string lives until make() returns.
  SSL_CTX_set_default_passwd_cb(ctx, passphrase_cb);
  SSL_CTX_set_default_passwd_cb_userdata(ctx, const_cast<std::string*>(&settings.key_passphrase));
  if (settings.certificate.empty()) {
    error = "rpc.tls needs rpc.certificate (the node's PEM certificate chain) and rpc.key";
    return nullptr;
  }
  if (settings.key.empty()) {
    error = "rpc.tls needs rpc.key (the private key of rpc.certificate, PEM)";
    return nullptr;
  }
  if (SSL_CTX_use_certificate_chain_file(ctx, settings.certificate.c_str()) != 1)
    return fail("rpc.certificate", settings.certificate, "not a readable PEM certificate");
  if (SSL_CTX_use_PrivateKey_file(ctx, settings.key.c_str(), SSL_FILETYPE_PEM) != 1) {
    // OpenSSL checks the key against the certificate as it loads it.
    if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH)
      return fail("rpc.key", settings.key, "it does not belong to rpc.certificate");
    return fail("rpc.key", settings.key,
                settings.key_passphrase.empty()
                  ? "not a readable PEM private key (if it is encrypted, give rpc.key-passphrase)"
                  : "not a readable PEM private key, or rpc.key-passphrase is wrong");
  }
  if (SSL_CTX_check_private_key(ctx) != 1)
    return fail("rpc.key", settings.key, "it does not belong to rpc.certificate");
  SSL_CTX_set_default_passwd_cb_userdata(ctx, nullptr);
  if (!settings.client_ca.empty()) {
    if (SSL_CTX_load_verify_locations(ctx, settings.client_ca.c_str(), nullptr) != 1)
      return fail("rpc.client-ca", settings.client_ca, "not a readable PEM CA certificate");
    // Tells clients which CAs are accepted (their library picks the
    // matching certificate).
    if (auto* names = SSL_load_client_CA_file(settings.client_ca.c_str()))
      SSL_CTX_set_client_CA_list(ctx, names);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    result->verifies_clients_ = true;
  }
  ERR_clear_error();
  return result;
}

tls_server_context::~tls_server_context() {
  SSL_CTX_free(ctx_);
}

// -- tls_channel ----------------------------------------------------------------

tls_channel::tls_channel(std::shared_ptr<tls_server_context> ctx)
  : tls_channel(ctx->get(), true) {
  ctx_ = std::move(ctx);
}

tls_channel::tls_channel(SSL_CTX* ctx, bool server) {
  ssl_ = SSL_new(ctx);
  in_ = BIO_new(BIO_s_mem());
  out_ = BIO_new(BIO_s_mem());
  // An empty input BIO means "wait for more", not end of stream.
  BIO_set_mem_eof_return(in_, -1);
  BIO_set_mem_eof_return(out_, -1);
  SSL_set_bio(ssl_, in_, out_); // owned by ssl_ from now on
  if (server)
    SSL_set_accept_state(ssl_);
  else
    SSL_set_connect_state(ssl_);
}

tls_channel::~tls_channel() {
  SSL_free(ssl_);
}

void tls_channel::start(std::vector<char>& out) {
  ERR_clear_error();
  auto rc = SSL_do_handshake(ssl_);
  if (rc == 1)
    established_ = true;
  else if (auto e = SSL_get_error(ssl_, rc); e != SSL_ERROR_WANT_READ)
    fail("handshake", e);
  drain(out);
}

bool tls_channel::receive(const char* data, size_t n, std::vector<char>& plain,
                          std::vector<char>& out) {
  if (failed_)
    return false;
  ERR_clear_error();
  while (n > 0) {
    auto len = static_cast<int>(std::min(n, size_t{INT_MAX}));
    auto written = BIO_write(in_, data, len);
    if (written <= 0) {
      error_ = "cannot buffer TLS input";
      failed_ = true;
      return false;
    }
    data += written;
    n -= static_cast<size_t>(written);
  }
  if (!established_) {
    auto rc = SSL_do_handshake(ssl_);
    if (rc != 1) {
      auto e = SSL_get_error(ssl_, rc);
      if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
        fail("handshake", e);
      drain(out);
      return !failed_;
    }
    established_ = true;
  }
  // Everything the records complete, in pieces written straight into
  // `plain`'s tail.
  while (!peer_closed_) {
    auto before = plain.size();
    plain.resize(before + 16384);
    auto rc = SSL_read(ssl_, plain.data() + before, 16384);
    if (rc > 0) {
      plain.resize(before + static_cast<size_t>(rc));
      continue;
    }
    plain.resize(before);
    auto e = SSL_get_error(ssl_, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
      break;
    if (e == SSL_ERROR_ZERO_RETURN)
      peer_closed_ = true;
    else
      fail("read", e);
    break;
  }
  drain(out);
  return !failed_;
}

void tls_channel::send(const char* data, size_t n, std::vector<char>& out) {
  if (!established_ || failed_ || shut_down_)
    return;
  ERR_clear_error();
  // About 22 bytes of record overhead per 16 KiB.
  out.reserve(out.size() + n + n / 512 + 64);
  while (n > 0) {
    auto len = std::min(n, piece);
    auto rc = SSL_write(ssl_, data, static_cast<int>(len));
    if (rc <= 0) {
      fail("write", SSL_get_error(ssl_, rc));
      break;
    }
    data += rc;
    n -= static_cast<size_t>(rc);
    drain(out);
  }
}

void tls_channel::shutdown(std::vector<char>& out) {
  if (shut_down_ || failed_ || !established_)
    return;
  shut_down_ = true;
  ERR_clear_error();
  SSL_shutdown(ssl_);
  drain(out);
  ERR_clear_error();
}

void tls_channel::drain(std::vector<char>& out) {
  while (auto pending = BIO_ctrl_pending(out_)) {
    auto before = out.size();
    out.resize(before + pending);
    auto rc = BIO_read(out_, out.data() + before, static_cast<int>(pending));
    out.resize(before + static_cast<size_t>(std::max(rc, 0)));
    if (rc <= 0)
      break;
  }
}

void tls_channel::fail(const char* what, int ssl_error) {
  failed_ = true;
  auto reason = take_openssl_error();
  auto verify = SSL_get_verify_result(ssl_);
  if (verify != X509_V_OK)
    reason += std::string{reason.empty() ? "" : ": "} + "certificate "
              + X509_verify_cert_error_string(verify);
  if (reason.empty())
    reason = ssl_error == SSL_ERROR_SYSCALL ? "unexpected end of the TLS stream"
                                            : "SSL error " + std::to_string(ssl_error);
  error_ = std::string{"TLS "} + what + " failed: " + reason;
}

std::string tls_channel::describe() const {
  if (!established_)
    return "TLS handshake not complete";
  std::string result = SSL_get_version(ssl_);
  result += " ";
  result += SSL_get_cipher_name(ssl_);
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
  auto* cert = SSL_get1_peer_certificate(ssl_);
#else
  auto* cert = SSL_get_peer_certificate(ssl_);
#endif
  if (cert != nullptr) {
    char subject[256];
    X509_NAME_oneline(X509_get_subject_name(cert), subject, sizeof(subject));
    result += ", client ";
    result += subject;
    X509_free(cert);
  }
  return result;
}

} // namespace pyvisor
