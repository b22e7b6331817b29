// What the CAF mends (caf_openssl_mend.cpp, caf_io_mend.cpp) share to
// interpose a function for calls that come from one of CAF's libraries only:
// the next definition of a symbol (the one the program's definition hides)
// and whether a return address lies in a given library. Private to the mends.
#pragma once

#include <dlfcn.h>

#include <array>
#include <cstring>
#include <tuple>

namespace pyvisor::interposition {

template <class F>
F next_symbol(const char* name) {
  return reinterpret_cast<F>(::dlsym(RTLD_NEXT, name));
}

/// True if `return_address` lies in a loaded object whose file name holds
/// `library` (e.g. "libcaf_io"). Few call sites ask, each about once per
/// thread: the answers are kept per thread.
inline bool called_from(void* return_address, const char* library) {
  thread_local std::array<std::tuple<void*, const char*, bool>, 32> known{};
  thread_local size_t count = 0;
  for (size_t i = 0; i < count; ++i)
    if (std::get<0>(known[i]) == return_address && std::get<1>(known[i]) == library)
      return std::get<2>(known[i]);
  Dl_info info{};
  bool result = ::dladdr(return_address, &info) != 0 && info.dli_fname != nullptr
                && std::strstr(info.dli_fname, library) != nullptr;
  if (count < known.size())
    known[count++] = {return_address, library, result};
  return result;
}

/// True if the definition the dynamic linker gives everyone for `symbol` is
/// not the one in `library`: this program's interposer is the one in use.
inline bool interposed(const char* symbol, const char* library) {
  Dl_info info{};
  auto* found = ::dlsym(RTLD_DEFAULT, symbol);
  return found != nullptr && ::dladdr(found, &info) != 0 && info.dli_fname != nullptr
         && std::strstr(info.dli_fname, library) == nullptr;
}

} // namespace pyvisor::interposition
