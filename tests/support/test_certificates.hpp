// Certificates made in-process for TLS tests and the TLS fuzz target.
//
// A unit test must not shell out to the openssl CLI, and a fuzz target must
// start in milliseconds, so this makes EC P-256 keys and X.509 certificates
// with OpenSSL's API and writes them as PEM files into a directory of its
// own (removed when the set is destroyed): a CA, a server and a client
// certificate it signed (subjectAltName localhost and 127.0.0.1), a
// self-signed "rogue" one, and the server's key once more, encrypted.

#pragma once

#include <string>

namespace pyvisor::test {

/// PEM files in a temporary directory that lives as long as this object.
class test_certificates {
public:
  /// Passphrase of `server_key_encrypted`.
  static constexpr const char* passphrase = "sesame";

  test_certificates();
  ~test_certificates();
  test_certificates(const test_certificates&) = delete;
  test_certificates& operator=(const test_certificates&) = delete;

  std::string dir;
  std::string ca_cert;
  std::string server_cert, server_key, server_key_encrypted;
  std::string client_cert, client_key;
  std::string rogue_cert, rogue_key;
  /// A file that exists and is not PEM.
  std::string not_pem;
};

/// One set for the whole process, made on first use.
const test_certificates& shared_certificates();

} // namespace pyvisor::test
