// Which SSL_read a program calls: built twice, linked with pyvisor alone
// (PYVISOR_EXPECT_MENDED=0: the program keeps libssl's own SSL_* functions)
// and with pyvisor::caf_openssl_mend too (=1: the mend's definitions, in
// the program, come first). Exits 0 when the expectation holds.
#include <dlfcn.h>

#include <cstdio>
#include <cstring>

#include <openssl/ssl.h>

#include "pyvisor/pool.hpp"

int main() {
  // Linking pyvisor for real: a symbol of the library is used.
  volatile auto keep = &pyvisor::add_pool_types;
  (void) keep;
  Dl_info info{};
  auto fn = reinterpret_cast<void*>(&SSL_read);
  if (dladdr(fn, &info) == 0 || info.dli_fname == nullptr) {
    std::puts("SSL_read: not found by dladdr");
    return 2;
  }
  bool from_libssl = std::strstr(info.dli_fname, "libssl") != nullptr;
  std::printf("SSL_read comes from %s\n", info.dli_fname);
  return from_libssl == (PYVISOR_EXPECT_MENDED == 0) ? 0 : 1;
}
