#include "support/test_certificates.hpp"

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <tuple>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <unistd.h>

namespace pyvisor::test {

namespace {

void check(bool ok, const char* what) {
  if (!ok)
    throw std::runtime_error(std::string{"test certificates: "} + what);
}

EVP_PKEY* make_key() {
  auto* key = EVP_EC_gen("P-256");
  check(key != nullptr, "EVP_EC_gen");
  return key;
}

void add_extension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  auto* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  check(ext != nullptr, "X509V3_EXT_conf_nid");
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

/// A certificate for `key` named `cn`, signed by `issuer_key` (its own key
/// when `issuer` is null: self-signed).
X509* make_cert(EVP_PKEY* key, const char* cn, X509* issuer, EVP_PKEY* issuer_key, bool ca,
                long serial) {
  auto* cert = X509_new();
  X509_set_version(cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), serial);
  X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert), 86400);
  X509_set_pubkey(cert, key);
  auto* name = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn), -1, -1, 0);
  X509_set_issuer_name(cert, issuer ? X509_get_subject_name(issuer) : name);
  auto* signer = issuer ? issuer : cert;
  if (ca) {
    add_extension(cert, signer, NID_basic_constraints, "critical,CA:TRUE");
    add_extension(cert, signer, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    add_extension(cert, signer, NID_basic_constraints, "CA:FALSE");
    add_extension(cert, signer, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1");
  }
  check(X509_sign(cert, issuer_key ? issuer_key : key, EVP_sha256()) > 0, "X509_sign");
  return cert;
}

void write_cert(const std::string& path, X509* cert) {
  auto* f = std::fopen(path.c_str(), "w");
  check(f != nullptr, "fopen");
  check(PEM_write_X509(f, cert) == 1, "PEM_write_X509");
  std::fclose(f);
}

void write_key(const std::string& path, EVP_PKEY* key, const char* passphrase = nullptr) {
  auto* f = std::fopen(path.c_str(), "w");
  check(f != nullptr, "fopen");
  int ok = passphrase
             ? PEM_write_PrivateKey(f, key, EVP_aes_256_cbc(), nullptr, 0, nullptr,
                                    const_cast<char*>(passphrase))
             : PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr);
  check(ok == 1, "PEM_write_PrivateKey");
  std::fclose(f);
}

} // namespace

test_certificates::test_certificates() {
  char templ[] = "/tmp/pyvisor-certs-XXXXXX";
  check(mkdtemp(templ) != nullptr, "mkdtemp");
  dir = templ;
  ca_cert = dir + "/ca.pem";
  server_cert = dir + "/server.pem";
  server_key = dir + "/server.key";
  server_key_encrypted = dir + "/server-enc.key";
  client_cert = dir + "/client.pem";
  client_key = dir + "/client.key";
  rogue_cert = dir + "/rogue.pem";
  rogue_key = dir + "/rogue.key";
  not_pem = dir + "/not.pem";
  auto* ca_key = make_key();
  auto* ca = make_cert(ca_key, "pyvisor test CA", nullptr, nullptr, true, 1);
  write_cert(ca_cert, ca);
  long serial = 2;
  for (auto [cn, cert_path, key_path] :
       {std::tuple{"server", &server_cert, &server_key},
        std::tuple{"client", &client_cert, &client_key}}) {
    auto* key = make_key();
    auto* cert = make_cert(key, cn, ca, ca_key, false, serial++);
    write_cert(*cert_path, cert);
    write_key(*key_path, key);
    if (cert_path == &server_cert)
      write_key(server_key_encrypted, key, passphrase);
    X509_free(cert);
    EVP_PKEY_free(key);
  }
  auto* rogue_k = make_key();
  auto* rogue = make_cert(rogue_k, "rogue", nullptr, nullptr, false, 99);
  write_cert(rogue_cert, rogue);
  write_key(rogue_key, rogue_k);
  X509_free(rogue);
  EVP_PKEY_free(rogue_k);
  X509_free(ca);
  EVP_PKEY_free(ca_key);
  auto* f = std::fopen(not_pem.c_str(), "w");
  check(f != nullptr, "fopen");
  std::fputs("this is not PEM\n", f);
  std::fclose(f);
}

test_certificates::~test_certificates() {
  for (auto* path : {&ca_cert, &server_cert, &server_key, &server_key_encrypted, &client_cert,
                     &client_key, &rogue_cert, &rogue_key, &not_pem})
    ::unlink(path->c_str());
  ::rmdir(dir.c_str());
}

const test_certificates& shared_certificates() {
  static test_certificates instance;
  return instance;
}

} // namespace pyvisor::test
