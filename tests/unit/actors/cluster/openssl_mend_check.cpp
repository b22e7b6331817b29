// Which SSL_* functions libcaf_openssl calls: built twice, linked with
// pyvisor alone (PYVISOR_EXPECT_MENDED=0: libssl's own) and with
// pyvisor::caf_openssl_mend too (=1: the mend's definitions, in the program,
// come first). A shared library's call binds to what the global scope
// finds, so that is what is asked (dlsym(RTLD_DEFAULT)), not the address the
// program itself sees: a hidden definition would fool the latter. Exits 0
// when the expectation holds for every interposed function.
#include <dlfcn.h>

#include <cstdio>
#include <cstring>

#include <openssl/ssl.h>

#include "pyvisor/pool.hpp"

int main() {
  // Linking pyvisor for real: a symbol of the library is used.
  volatile auto keep = &pyvisor::add_pool_types;
  (void) keep;
  // Linking libssl for real too, as the node does through CAF.
  volatile auto keep_ssl = &SSL_read;
  (void) keep_ssl;
  int wrong = 0;
  for (const char* name : {"SSL_accept", "SSL_connect", "SSL_read", "SSL_write"}) {
    Dl_info info{};
    auto fn = dlsym(RTLD_DEFAULT, name);
    if (fn == nullptr || dladdr(fn, &info) == 0 || info.dli_fname == nullptr) {
      std::printf("%s: not found\n", name);
      return 2;
    }
    bool from_libssl = std::strstr(info.dli_fname, "libssl") != nullptr;
    std::printf("%s comes from %s\n", name, info.dli_fname);
    if (from_libssl != (PYVISOR_EXPECT_MENDED == 0))
      ++wrong;
  }
  return wrong == 0 ? 0 : 1;
}
