"""A small client for a pyvisor node's MessagePack-RPC endpoint.

    from pyvisor.client import Client, RemoteError

    with Client("127.0.0.1", 7400) as c:
        c.ping()                                   # "pong"
        c.execute("echo", {"x": 1})                # {"x": 1}
        c.execute("session.put", {"key": "k", "value": 1}, session="s1")
        c.execute("session.get", {"key": "k"}, session="s1")   # 1
        c.stats()["workers"]
        c.end_session("s1")
        # several requests on the wire at once, results in request order:
        c.pipeline([("execute", ["ping", None]), ("stats", [])])

Errors come back as RemoteError with ``code`` (one of the runtime's error
codes, or unknown_method / bad_request), ``message`` and, for Python errors,
``type`` and ``details`` (the traceback). A Client is not thread-safe; use one
per thread. Only the standard library and msgpack are needed.
"""

import itertools
import socket

import msgpack

__all__ = ["Client", "RemoteError"]


class RemoteError(Exception):
    """An error response from the node."""

    def __init__(self, error):
        if not isinstance(error, dict):
            error = {"code": "protocol_error", "message": repr(error)}
        self.code = error.get("code")
        self.message = error.get("message", "")
        self.type = error.get("type")
        self.details = error.get("details")
        super().__init__("%s: %s" % (self.code, self.message))


class Client:
    def __init__(self, host="127.0.0.1", port=7400, timeout=60.0):
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self._ids = itertools.count(1)
        self._done = {}

    def close(self):
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- raw protocol -------------------------------------------------------------

    def send(self, method, params):
        """Sends a request without waiting; returns its msgid."""
        msgid = next(self._ids) & 0xFFFFFFFF
        self._sock.sendall(msgpack.packb([0, msgid, method, list(params)], use_bin_type=True))
        return msgid

    def receive(self, msgid):
        """Waits for the response to `msgid`; returns its result or raises."""
        while msgid not in self._done:
            data = self._sock.recv(1 << 16)
            if not data:
                raise ConnectionError("the node closed the connection")
            self._unpacker.feed(data)
            for msg in self._unpacker:
                if isinstance(msg, list) and len(msg) == 4 and msg[0] == 1:
                    self._done[msg[1]] = (msg[2], msg[3])
        error, result = self._done.pop(msgid)
        if error is not None:
            raise RemoteError(error)
        return result

    def call(self, method, *params):
        return self.receive(self.send(method, params))

    def pipeline(self, requests):
        """Sends all (method, params) pairs, then collects their outcomes in
        order: a result, or the RemoteError instance."""
        ids = [self.send(m, p) for m, p in requests]
        out = []
        for i in ids:
            try:
                out.append(self.receive(i))
            except RemoteError as e:
                out.append(e)
        return out

    # -- methods --------------------------------------------------------------------

    def ping(self):
        return self.call("ping")

    def execute(self, command, args=None, session=None, timeout_ms=None, idempotent=None):
        options = {}
        if session is not None:
            options["session"] = session
        if timeout_ms is not None:
            options["timeout_ms"] = int(timeout_ms)
        if idempotent is not None:
            options["idempotent"] = bool(idempotent)
        params = [command, args, options] if options else [command, args]
        return self.call("execute", *params)

    def end_session(self, session):
        return self.call("session.end", session)

    def stats(self):
        return self.call("stats")
