// The caf-openssl mend: a component apart from the library, linked only by
// what publishes or connects over TLS through CAF's OpenSSL module (the
// node; an embedding application that asks for it by linking
// pyvisor::caf_openssl_mend). It defines SSL_accept, SSL_connect, SSL_read,
// SSL_write and the three SSL_CTX_* calls that read credential files in the
// program: the dynamic linker resolves
// libcaf_openssl's calls to these first, and they pass every call on to
// libssl (dlsym RTLD_NEXT), changing only calls that come from
// libcaf_openssl (return address checked with dladdr, cached per thread).
// A program that does not link this component keeps its own SSL_* calls
// untouched (tests/unit/actors/cluster/openssl_mend_test.cpp checks it).
//
// It relies on ELF symbol interposition: the program's definitions must win
// over libssl's, which holds when this object is linked into the
// executable (not into a shared library loaded later).
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "actors/cluster/caf_openssl_mend.hpp"
#include "actors/cluster/interposition.hpp"
#include "messages/log.hpp"

namespace pyvisor {
namespace {

std::string peer_of(SSL* ssl) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  auto fd = SSL_get_fd(ssl);
  if (fd < 0 || ::getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    return "an unknown peer";
  char host[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (addr.ss_family == AF_INET) {
    auto in = reinterpret_cast<sockaddr_in*>(&addr);
    ::inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
    port = ntohs(in->sin_port);
  } else if (addr.ss_family == AF_INET6) {
    auto in6 = reinterpret_cast<sockaddr_in6*>(&addr);
    ::inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
    port = ntohs(in6->sin6_port);
  }
  return std::string{host} + ":" + std::to_string(port);
}

/// Logs a TLS handshake that failed for a reason of TLS (not a connection
/// that was merely slow or closed): who, and why as OpenSSL says it.
void log_refused(SSL* ssl, bool accepting) {
  char reason[256] = "unknown reason";
  if (auto code = ERR_peek_last_error())
    ERR_error_string_n(code, reason, sizeof(reason));
  std::string subject;
  if (auto cert = SSL_get0_peer_certificate(ssl)) {
    char buf[256];
    X509_NAME_oneline(X509_get_subject_name(cert), buf, sizeof(buf));
    subject = std::string{" (certificate "} + buf + ")";
  }
  auto verify = SSL_get_verify_result(ssl);
  std::string detail = verify == X509_V_OK
                         ? ""
                         : std::string{" ("} + X509_verify_cert_error_string(verify) + ")";
  // A peer decides how often this happens: one line per 10 s at most for
  // each reason (a flood of one kind does not hide another), and a bounded
  // number of reasons kept apart.
  static std::mutex mtx;
  static std::map<std::pair<bool, std::string>, log_throttle> throttles;
  std::lock_guard<std::mutex> guard{mtx};
  auto key = std::make_pair(accepting, std::string{reason} + detail);
  if (throttles.size() >= 64 && throttles.count(key) == 0)
    key.second = "(other reasons)";
  auto n = throttles[key].due();
  if (n == 0)
    return;
  if (accepting)
    log().warn("TLS: refused {}{}: {}{} ({} such refusal(s) since the last such line)",
               peer_of(ssl), subject, reason, detail, n);
  else
    log().warn("TLS: handshake with {}{} failed: {}{} ({} such failure(s) since the last "
               "such line)",
               peer_of(ssl), subject, reason, detail, n);
}

} // namespace
} // namespace pyvisor

// Two things CAF 0.17.6's OpenSSL module does not do, done where it calls
// into OpenSSL (the dynamic linker resolves libcaf_openssl's calls to the
// program's definitions first; calls from anywhere else pass through
// untouched):
// - The error queue: OpenSSL wants each thread's error queue empty before
//   an SSL call, because SSL_get_error reads it; CAF never empties it (only
//   its compiled-out logging would). Whatever one call left there made the
//   next SSL_read on that thread - any connection's - look failed, and CAF
//   closed that connection. Measured here with OpenSSL 3.0: every TLS 1.3
//   connection closed at its first message after the handshake, and with
//   TLS 1.2 a front with a valid certificate lost its connection whenever
//   a client without one was refused. Each call from CAF now starts with an
//   empty queue, and both hold.
// - Refusals: it runs the handshake inside its multiplexer and reports a
//   refused peer only to its own logger, without the peer's address (it
//   passes no verify callback). Each handshake step's result is seen here on
//   its way back to CAF, unchanged, and refusals are logged once per
//   connection.
namespace {

bool called_by_caf_openssl(void* return_address) {
  return pyvisor::interposition::called_from(return_address, "libcaf_openssl");
}

int handshake_step(SSL* ssl, int (*real)(SSL*), bool accepting, void* caller) {
  if (!called_by_caf_openssl(caller))
    return real(ssl);
  ERR_clear_error();
  auto ret = real(ssl);
  // CAF calls the step again after a failure it already saw (once from
  // try_accept, once from its read loop): log each connection once.
  thread_local SSL* last_refused = nullptr;
  if (ret <= 0 && ssl != last_refused && SSL_get_error(ssl, ret) == SSL_ERROR_SSL) {
    last_refused = ssl;
    pyvisor::log_refused(ssl, accepting);
  }
  return ret;
}

} // namespace

// Exported whatever the build's default visibility (-fvisibility=hidden in
// the sanitizer tree): interposing is the point, and a hidden definition
// would leave libcaf_openssl calling libssl's own.
#define PYVISOR_INTERPOSE extern "C" __attribute__((visibility("default")))

PYVISOR_INTERPOSE int SSL_accept(SSL* ssl) {
  static auto real = pyvisor::interposition::next_symbol<int (*)(SSL*)>("SSL_accept");
  return handshake_step(ssl, real, true, __builtin_return_address(0));
}

PYVISOR_INTERPOSE int SSL_connect(SSL* ssl) {
  static auto real = pyvisor::interposition::next_symbol<int (*)(SSL*)>("SSL_connect");
  return handshake_step(ssl, real, false, __builtin_return_address(0));
}

PYVISOR_INTERPOSE int SSL_read(SSL* ssl, void* buf, int num) {
  static auto real = pyvisor::interposition::next_symbol<int (*)(SSL*, void*, int)>("SSL_read");
  if (called_by_caf_openssl(__builtin_return_address(0)))
    ERR_clear_error();
  return real(ssl, buf, num);
}

PYVISOR_INTERPOSE int SSL_write(SSL* ssl, const void* buf, int num) {
  static auto real = pyvisor::interposition::next_symbol<int (*)(SSL*, const void*, int)>("SSL_write");
  if (called_by_caf_openssl(__builtin_return_address(0)))
    ERR_clear_error();
  return real(ssl, buf, num);
}

// -- credentials, read once ----------------------------------------------------
// CAF's session::create_ssl_context makes a new SSL_CTX for every connection
// and loads openssl.certificate, .key and .cafile/.capath into it from their
// files, throwing (uncaught, in its multiplexer) when a load fails. Here each
// file is loaded once into an object kept for the process's life, and every
// later context gets that object; a load that fails is logged and answered
// as done, so that CAF carries on with a context that lacks it and the
// handshake fails: that connection, not the process (a peer without our
// certificate, or we without a trusted CA, is refused: it fails closed).
namespace pyvisor {
namespace {

using chain_file_fn = int (*)(SSL_CTX*, const char*);
using key_file_fn = int (*)(SSL_CTX*, const char*, int);
using verify_locations_fn = int (*)(SSL_CTX*, const char*, const char*);

struct credential_cache {
  std::mutex mtx;
  /// Per certificate file: a context holding the certificate and its chain.
  std::map<std::string, SSL_CTX*> chains;
  std::map<std::pair<std::string, int>, EVP_PKEY*> keys;
  std::map<std::pair<std::string, std::string>, X509_STORE*> stores;
  log_throttle failures;
};

credential_cache& credentials() {
  static auto* cache = new credential_cache; // kept for the process's life
  return *cache;
}

std::string openssl_reason() {
  char reason[256] = "unknown reason";
  if (auto code = ERR_peek_last_error())
    ERR_error_string_n(code, reason, sizeof(reason));
  ERR_clear_error();
  return reason;
}

chain_file_fn real_chain_file() {
  static auto f = interposition::next_symbol<chain_file_fn>("SSL_CTX_use_certificate_chain_file");
  return f;
}

key_file_fn real_key_file() {
  static auto f = interposition::next_symbol<key_file_fn>("SSL_CTX_use_PrivateKey_file");
  return f;
}

verify_locations_fn real_verify_locations() {
  static auto f = interposition::next_symbol<verify_locations_fn>("SSL_CTX_load_verify_locations");
  return f;
}

// Each loader holds the cache's lock, loads into a scratch context with the
// real libssl function, and keeps what it loaded; `why` gets OpenSSL's reason
// on failure.

SSL_CTX* chain_of(credential_cache& c, const std::string& file, std::string& why) {
  if (auto i = c.chains.find(file); i != c.chains.end())
    return i->second;
  auto* scratch = SSL_CTX_new(TLS_method());
  if (scratch == nullptr || real_chain_file()(scratch, file.c_str()) != 1) {
    why = openssl_reason();
    SSL_CTX_free(scratch);
    return nullptr;
  }
  return c.chains[file] = scratch;
}

/// Runs `load` on a scratch context and keeps what `take` gets out of it
/// (with a reference of its own) in `cache` under `key`.
template <class Map, class Load, class Take>
typename Map::mapped_type keep_loaded(Map& cache, const typename Map::key_type& key, Load load,
                                      Take take, std::string& why) {
  if (auto i = cache.find(key); i != cache.end())
    return i->second;
  auto* scratch = SSL_CTX_new(TLS_method());
  typename Map::mapped_type loaded = nullptr;
  if (scratch != nullptr && load(scratch) == 1)
    loaded = take(scratch);
  if (loaded == nullptr)
    why = openssl_reason();
  SSL_CTX_free(scratch);
  if (loaded != nullptr)
    cache[key] = loaded;
  return loaded;
}

EVP_PKEY* key_of(credential_cache& c, const std::string& file, int type, pem_password_cb* cb,
                 void* userdata, std::string& why) {
  return keep_loaded(
    c.keys, {file, type},
    [&](SSL_CTX* scratch) {
      SSL_CTX_set_default_passwd_cb(scratch, cb);
      SSL_CTX_set_default_passwd_cb_userdata(scratch, userdata);
      return real_key_file()(scratch, file.c_str(), type);
    },
    [](SSL_CTX* scratch) {
      auto* key = SSL_CTX_get0_privatekey(scratch);
      if (key != nullptr)
        EVP_PKEY_up_ref(key);
      return key;
    },
    why);
}

X509_STORE* store_of(credential_cache& c, const std::string& cafile, const std::string& capath,
                     std::string& why) {
  return keep_loaded(
    c.stores, {cafile, capath},
    [&](SSL_CTX* scratch) {
      return real_verify_locations()(scratch, cafile.empty() ? nullptr : cafile.c_str(),
                                     capath.empty() ? nullptr : capath.c_str());
    },
    [](SSL_CTX* scratch) {
      auto* store = SSL_CTX_get_cert_store(scratch);
      if (store != nullptr)
        X509_STORE_up_ref(store);
      return store;
    },
    why);
}

void log_load_failure(credential_cache& c, const char* what, const std::string& file,
                      const std::string& why) {
  if (auto n = c.failures.due())
    log().error("TLS: cannot load {} '{}' ({}): {} connection(s) failed for it", what, file,
                why, n);
}

int pass_phrase(char* buf, int size, int, void* userdata) {
  auto& phrase = *static_cast<const std::string*>(userdata);
  auto n = std::min<size_t>(phrase.size(), static_cast<size_t>(size));
  std::memcpy(buf, phrase.data(), n);
  return static_cast<int>(n);
}

} // namespace

std::string caf_openssl_mend::preload(const std::string& certificate, const std::string& key,
                                      const std::string& passphrase, const std::string& cafile,
                                      const std::string& capath) {
  auto& c = credentials();
  std::lock_guard<std::mutex> guard{c.mtx};
  std::string why;
  if (!certificate.empty() && chain_of(c, certificate, why) == nullptr)
    return "cannot load the certificate '" + certificate + "' (openssl.certificate): " + why;
  if (!key.empty()) {
    // CAF sets its passphrase callback only when a passphrase is set: the
    // same here, so that an encrypted key without one fails alike.
    auto phrase = passphrase;
    if (key_of(c, key, SSL_FILETYPE_PEM, passphrase.empty() ? nullptr : pass_phrase,
               passphrase.empty() ? nullptr : &phrase, why)
        == nullptr)
      return "cannot load the private key '" + key + "' (openssl.key, openssl.passphrase): "
             + why;
  }
  if ((!cafile.empty() || !capath.empty()) && store_of(c, cafile, capath, why) == nullptr)
    return "cannot load the trusted CA certificates '" + cafile + capath
           + "' (openssl.cafile, openssl.capath): " + why;
  return {};
}

} // namespace pyvisor

PYVISOR_INTERPOSE int SSL_CTX_use_certificate_chain_file(SSL_CTX* ctx, const char* file) {
  if (!called_by_caf_openssl(__builtin_return_address(0)))
    return pyvisor::real_chain_file()(ctx, file);
  auto& c = pyvisor::credentials();
  std::lock_guard<std::mutex> guard{c.mtx};
  std::string why;
  if (auto* loaded = pyvisor::chain_of(c, file, why)) {
    SSL_CTX_use_certificate(ctx, SSL_CTX_get0_certificate(loaded));
    STACK_OF(X509)* chain = nullptr;
    SSL_CTX_get0_chain_certs(loaded, &chain);
    if (chain != nullptr)
      SSL_CTX_set1_chain(ctx, chain);
  } else {
    pyvisor::log_load_failure(c, "the certificate", file, why);
  }
  return 1;
}

PYVISOR_INTERPOSE int SSL_CTX_use_PrivateKey_file(SSL_CTX* ctx, const char* file, int type) {
  if (!called_by_caf_openssl(__builtin_return_address(0)))
    return pyvisor::real_key_file()(ctx, file, type);
  auto& c = pyvisor::credentials();
  std::lock_guard<std::mutex> guard{c.mtx};
  std::string why;
  // A key not loaded yet is read with the callback CAF set on this context.
  if (auto* key = pyvisor::key_of(c, file, type, SSL_CTX_get_default_passwd_cb(ctx),
                                  SSL_CTX_get_default_passwd_cb_userdata(ctx), why))
    SSL_CTX_use_PrivateKey(ctx, key);
  else
    pyvisor::log_load_failure(c, "the private key", file, why);
  return 1;
}

PYVISOR_INTERPOSE int SSL_CTX_load_verify_locations(SSL_CTX* ctx, const char* cafile,
                                                    const char* capath) {
  if (!called_by_caf_openssl(__builtin_return_address(0)))
    return pyvisor::real_verify_locations()(ctx, cafile, capath);
  auto& c = pyvisor::credentials();
  std::lock_guard<std::mutex> guard{c.mtx};
  std::string why;
  std::string file = cafile ? cafile : "", path = capath ? capath : "";
  if (auto* store = pyvisor::store_of(c, file, path, why))
    SSL_CTX_set1_cert_store(ctx, store);
  else
    pyvisor::log_load_failure(c, "the trusted CA certificates", file + path, why);
  return 1;
}
