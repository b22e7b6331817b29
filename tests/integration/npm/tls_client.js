// The npm MessagePack-RPC client (msgpack5rpc) over Node's tls.connect, as
// the README's Security section shows it; driven by
// tests/integration/node/test_security.py.
//
//   node tls_client.js PORT CA_PEM CERT_PEM KEY_PEM TOKEN
//
// Calls auth [TOKEN], then execute ["echo", ...] twice (pipelined), and
// prints one JSON line: {"protocol", "auth": [err, result], "echo": [...]}.
"use strict";
const fs = require("fs");
const tls = require("tls");
const Session = require("msgpack5rpc");

const [port, ca, cert, key, token] = process.argv.slice(2);
const sock = tls.connect({host: "localhost", port: Number(port), ca: fs.readFileSync(ca),
                          cert: fs.readFileSync(cert), key: fs.readFileSync(key)});
const session = new Session();
const out = {echo: []};
const call = (method, args) =>
  new Promise((resolve) => session.request(method, args, (err, res) => resolve([err, res])));
const plain = (v) => (Buffer.isBuffer(v) ? v.toString() : v);

sock.on("secureConnect", async () => {
  out.protocol = sock.getProtocol();
  session.attach(sock, sock);
  out.auth = await call("auth", [token]);
  if (out.auth[0] === null) {
    const replies = await Promise.all([call("execute", ["echo", {n: 1}]),
                                       call("execute", ["echo", "x".repeat(100000)])]);
    out.echo = replies.map(([err, res]) => [err, typeof res === "string" ? res.length : res]);
  } else {
    out.auth[0] = {code: plain(out.auth[0].code), message: plain(out.auth[0].message)};
  }
  console.log(JSON.stringify(out));
  sock.end();
});
sock.on("error", (e) => {
  console.log(JSON.stringify({error: e.message}));
  process.exit(2);
});
setTimeout(() => {
  console.log(JSON.stringify({error: "no answer within 20 s"}));
  process.exit(3);
}, 20000).unref();
