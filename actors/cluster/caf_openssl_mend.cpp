// The caf-openssl mend: a component apart from the library, linked only by
// what publishes or connects over TLS through CAF's OpenSSL module (the
// node; an embedding application that asks for it by linking
// pyvisor::caf_openssl_mend). It defines SSL_accept, SSL_connect, SSL_read
// and SSL_write in the program: the dynamic linker resolves
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

#include <array>
#include <cstring>
#include <string>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

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
  if (accepting)
    log().warn("TLS: refused {}{}: {}{}", peer_of(ssl), subject, reason, detail);
  else
    log().warn("TLS: handshake with {}{} failed: {}{}", peer_of(ssl), subject, reason, detail);
}

template <class F>
F next_symbol(const char* name) {
  return reinterpret_cast<F>(::dlsym(RTLD_NEXT, name));
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
  // Few call sites, each asked about once per thread.
  thread_local std::array<std::pair<void*, bool>, 16> known{};
  thread_local size_t count = 0;
  for (size_t i = 0; i < count; ++i)
    if (known[i].first == return_address)
      return known[i].second;
  Dl_info info{};
  bool result = ::dladdr(return_address, &info) != 0 && info.dli_fname != nullptr
                && std::strstr(info.dli_fname, "libcaf_openssl") != nullptr;
  if (count < known.size())
    known[count++] = {return_address, result};
  return result;
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
  static auto real = pyvisor::next_symbol<int (*)(SSL*)>("SSL_accept");
  return handshake_step(ssl, real, true, __builtin_return_address(0));
}

PYVISOR_INTERPOSE int SSL_connect(SSL* ssl) {
  static auto real = pyvisor::next_symbol<int (*)(SSL*)>("SSL_connect");
  return handshake_step(ssl, real, false, __builtin_return_address(0));
}

PYVISOR_INTERPOSE int SSL_read(SSL* ssl, void* buf, int num) {
  static auto real = pyvisor::next_symbol<int (*)(SSL*, void*, int)>("SSL_read");
  if (called_by_caf_openssl(__builtin_return_address(0)))
    ERR_clear_error();
  return real(ssl, buf, num);
}

PYVISOR_INTERPOSE int SSL_write(SSL* ssl, const void* buf, int num) {
  static auto real = pyvisor::next_symbol<int (*)(SSL*, const void*, int)>("SSL_write");
  if (called_by_caf_openssl(__builtin_return_address(0)))
    ERR_clear_error();
  return real(ssl, buf, num);
}
