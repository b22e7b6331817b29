// The caf-openssl mend's one entry point (caf_openssl_mend.cpp says what the
// mend changes in CAF 0.17.6's OpenSSL module and why). With the mend linked,
// libcaf_openssl no longer reads its certificate, key and CA files for each
// connection (it did: descriptors ran out under a flood of idle connections,
// the load failed, and CAF's uncaught exception aborted the node): each file
// is read once, the first time it is asked for or by preload(), and every
// connection's context gets the loaded objects. A file that cannot be loaded
// then fails the connection that asked for it (its handshake), never the
// process.
#pragma once

#include <string>

namespace pyvisor::caf_openssl_mend {

/// Loads the credentials CAF's openssl.* keys name (empty: not set), so that
/// no connection reads a file. Returns what failed, in words (empty: all
/// loaded).
std::string preload(const std::string& certificate, const std::string& key,
                    const std::string& passphrase, const std::string& cafile,
                    const std::string& capath);

} // namespace pyvisor::caf_openssl_mend
