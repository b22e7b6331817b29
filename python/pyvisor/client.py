"""Clients for a pyvisor node's MessagePack-RPC endpoint: a blocking one
(``Client``) and an asyncio one (``AsyncClient``).

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

The asyncio client sends each request as soon as it is made, so requests on
one connection run concurrently (the node answers them as they complete)::

    from pyvisor.client import AsyncClient

    async with await AsyncClient.connect("127.0.0.1", 7400) as c:
        a, b = await asyncio.gather(c.execute("echo", 1), c.execute("echo", 2))
        await c.execute("session.put", {"key": "k", "value": 1}, session="s1")

Its methods are those of Client, as coroutines; ``timeout`` (seconds, per
request, None: wait forever) raises ``asyncio.TimeoutError``. When the
connection ends, every request still waiting raises ConnectionError.

Cancelling: a request whose awaiting task is cancelled (``task.cancel()``,
``asyncio.wait_for`` running out, the client's own ``timeout``) is cancelled
on the node too: still queued it never runs, running it is interrupted
(``pyvisor.Interrupted`` in its handler). With Client, ``cancel(msgid)``
cancels a request sent with ``send()``; its ``receive()`` then raises
RemoteError ``cancelled`` (unless its answer was already on the way).
"""

import asyncio
import itertools
import socket

import msgpack

__all__ = ["Client", "AsyncClient", "RemoteError"]


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


def _execute_params(command, args, session, timeout_ms, idempotent):
    """The params of an ``execute`` request (docs/protocol.md)."""
    options = {}
    if session is not None:
        options["session"] = session
    if timeout_ms is not None:
        options["timeout_ms"] = int(timeout_ms)
    if idempotent is not None:
        options["idempotent"] = bool(idempotent)
    return [command, args, options] if options else [command, args]


def _responses(unpacker):
    """The (msgid, error, result) of each complete response fed so far."""
    for msg in unpacker:
        if isinstance(msg, list) and len(msg) == 4 and msg[0] == 1:
            yield msg[1], msg[2], msg[3]


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
            for i, error, result in _responses(self._unpacker):
                self._done[i] = (error, result)
        error, result = self._done.pop(msgid)
        if error is not None:
            raise RemoteError(error)
        return result

    def call(self, method, *params):
        return self.receive(self.send(method, params))

    def cancel(self, msgid):
        """Cancels request `msgid` (sent with send()) on the node: answered
        `cancelled` if it was still queued or running; nothing if it was
        answered already."""
        self._sock.sendall(msgpack.packb([2, "cancel", [msgid]], use_bin_type=True))

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
        return self.call("execute", *_execute_params(command, args, session, timeout_ms,
                                                     idempotent))

    def end_session(self, session):
        return self.call("session.end", session)

    def stats(self):
        return self.call("stats")


class AsyncClient:
    """An asyncio client: one connection, any number of requests in flight."""

    def __init__(self, reader, writer, timeout):
        self._reader = reader
        self._writer = writer
        self._timeout = timeout
        self._unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self._ids = itertools.count(1)
        self._pending = {}
        self._closed = None
        self._reading = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(cls, host="127.0.0.1", port=7400, timeout=60.0):
        reader, writer = await asyncio.open_connection(host, port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer, timeout)

    async def close(self):
        if self._closed is None:
            self._closed = ConnectionError("the client closed the connection")
        self._reading.cancel()
        self._fail_pending(self._closed)
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def _read(self):
        try:
            while True:
                data = await self._reader.read(1 << 16)
                if not data:
                    raise ConnectionError("the node closed the connection")
                self._unpacker.feed(data)
                for i, error, result in _responses(self._unpacker):
                    future = self._pending.pop(i, None)
                    if future is not None and not future.done():
                        future.set_result((error, result))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the connection is over: nothing more will come
            if self._closed is None:
                self._closed = e if isinstance(e, ConnectionError) else ConnectionError(str(e))
            self._fail_pending(self._closed)

    def _fail_pending(self, error):
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    # -- raw protocol -------------------------------------------------------------

    async def call(self, method, *params, timeout=...):
        """Sends one request and waits for its result (or raises)."""
        if self._closed is not None:
            raise self._closed
        msgid = next(self._ids) & 0xFFFFFFFF
        future = asyncio.get_running_loop().create_future()
        self._pending[msgid] = future
        try:
            self._writer.write(msgpack.packb([0, msgid, method, list(params)], use_bin_type=True))
            await self._writer.drain()
            error, result = await asyncio.wait_for(
                future, self._timeout if timeout is ... else timeout)
        except (asyncio.CancelledError, asyncio.TimeoutError):
            # Nobody waits for it any more: the node need not run it.
            if self._closed is None and method == "execute" and not self._writer.is_closing():
                self._writer.write(msgpack.packb([2, "cancel", [msgid]], use_bin_type=True))
            raise
        finally:
            self._pending.pop(msgid, None)  # a late answer is dropped
        if error is not None:
            raise RemoteError(error)
        return result

    # -- methods --------------------------------------------------------------------

    async def ping(self):
        return await self.call("ping")

    async def execute(self, command, args=None, session=None, timeout_ms=None, idempotent=None,
                      timeout=...):
        return await self.call("execute", *_execute_params(command, args, session, timeout_ms,
                                                           idempotent), timeout=timeout)

    async def end_session(self, session):
        return await self.call("session.end", session)

    async def stats(self):
        return await self.call("stats")
