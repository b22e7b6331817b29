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

Security (README "Security"): ``ssl`` takes an ``ssl.SSLContext`` for a node
with ``rpc.tls`` (load a client certificate into it for ``rpc.client-ca``),
``token`` the secret of a node with ``rpc.token-file`` (sent with ``auth`` on
every connection, before anything else), ``unix_path`` a node's
``rpc.unix-path`` instead of host and port::

    ctx = ssl.create_default_context(cafile="ca.pem")
    ctx.load_cert_chain("client.pem", "client.key")     # with rpc.client-ca
    c = Client("node.example", 7400, ssl=ctx, token=open("token").read().strip())
    c = Client(unix_path="/run/pyvisor/rpc.sock")

Reconnecting: when the connection drops (the node restarted, the network
broke), the requests that were in flight raise ConnectionError, and the next
request connects again, retrying with back-off (0.1 s doubling to 2 s) for up
to ``reconnect`` seconds (default 10; 0: never, the client stays closed). With
``resend_idempotent=True``, an ``execute(..., idempotent=True)`` whose
connection dropped before its answer is sent once more on the new connection
instead of raising (running it twice must be harmless: that is what
idempotent says).
"""

import asyncio
import itertools
import socket
import time

import msgpack

__all__ = ["Client", "AsyncClient", "RemoteError", "Stream", "AsyncStream"]


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


def _execute_params(command, args, session, timeout_ms, idempotent, stream=False):
    """The params of an ``execute`` request (docs/protocol.md)."""
    options = {"stream": True} if stream else {}
    if session is not None:
        options["session"] = session
    if timeout_ms is not None:
        options["timeout_ms"] = int(timeout_ms)
    if idempotent is not None:
        options["idempotent"] = bool(idempotent)
    return [command, args, options] if options else [command, args]


def _delays(reconnect):
    """The waits before each connection attempt: none before the first, then
    0.1 s doubling up to 2 s, for up to `reconnect` seconds in all."""
    deadline = time.monotonic() + reconnect
    delay = 0.0
    while True:
        left = deadline - time.monotonic()
        if delay > 0 and left <= 0:
            return
        yield max(0.0, min(delay, left))
        delay = 0.1 if delay == 0 else min(delay * 2, 2.0)


def _is_idempotent_execute(method, params):
    return method == "execute" and len(params) >= 3 and isinstance(params[2], dict) \
        and params[2].get("idempotent") is True


def _messages(unpacker):
    """Each complete message fed so far: ("response", msgid, error, result)
    or ("chunk", msgid, value, None) for a stream's chunk notification."""
    for msg in unpacker:
        if not isinstance(msg, list):
            continue
        if len(msg) == 4 and msg[0] == 1:
            yield "response", msg[1], msg[2], msg[3]
        elif len(msg) == 3 and msg[0] == 2 and msg[1] == "chunk" and isinstance(msg[2], list) \
                and len(msg[2]) == 2:
            yield "chunk", msg[2][0], msg[2][1], None


class Stream:
    """The chunks of one streaming ``execute`` (Client.stream), as they come:
    iterate it; ``result`` is the handler's return value once the iteration
    ended; an error that ended the stream (after the chunks before it) is
    raised by the iteration. Leaving it early (``break``, ``close()``, the
    ``with`` block) cancels the request on the node."""

    def __init__(self, client, msgid):
        self._client = client
        self.msgid = msgid
        self.result = None
        self._over = False

    def __iter__(self):
        return self

    def __next__(self):
        if self._over:
            raise StopIteration
        c = self._client
        while True:
            chunks = c._chunks.get(self.msgid)
            if chunks:
                return chunks.pop(0)
            if self.msgid in c._done or c._sock is None:
                self._over = True
                c._chunks.pop(self.msgid, None)
                self.result = c.receive(self.msgid)
                raise StopIteration
            c._read_some()

    def close(self):
        """Stops taking chunks: cancels the request if it still runs."""
        if self._over:
            return
        self._over = True
        c = self._client
        c.cancel(self.msgid)
        c._chunks.pop(self.msgid, None)
        try:
            c.receive(self.msgid)
        except (RemoteError, ConnectionError):
            pass
        c._chunks.pop(self.msgid, None)

    cancel = close

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncStream:
    """The chunks of one streaming ``execute`` (AsyncClient.stream), for
    ``async for`` (the request goes out at the first iteration, or when the
    stream is awaited or entered with ``async with``); ``result`` as for
    Stream. Cancelling the task that iterates, or ``aclose()``, cancels the
    request on the node. The client holds at most 64 chunks of it that were
    not taken yet: then it stops reading its connection until some are (the
    node then holds the generator back)."""

    def __init__(self, client, params, timeout):
        self._client = client
        self._params = params
        self.msgid = None
        self.result = None
        self._future = None
        self._queue = None
        self._timeout = timeout
        self._over = False

    async def _start(self):
        if self.msgid is None:
            self.msgid, self._future, self._queue = await self._client._open_stream(self._params)
        return self

    def __await__(self):
        return self._start().__await__()

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self._over:
            raise StopAsyncIteration
        await self._start()
        try:
            while True:
                if not self._queue.empty():
                    return self._queue.get_nowait()
                if self._future.done():
                    self._over = True
                    self._client._forget(self.msgid)
                    error, self.result = self._future.result()
                    if error is not None:
                        raise RemoteError(error)
                    raise StopAsyncIteration
                getter = asyncio.ensure_future(self._queue.get())
                try:
                    await asyncio.wait_for(asyncio.wait({getter, self._future},
                                                        return_when=asyncio.FIRST_COMPLETED),
                                           self._timeout)
                finally:
                    if not getter.done():
                        getter.cancel()
                if getter.done() and not getter.cancelled():
                    return getter.result()
        except (asyncio.CancelledError, asyncio.TimeoutError):
            self._client._cancel_stream(self)
            raise

    async def aclose(self):
        """Stops taking chunks: cancels the request if it still runs."""
        if not self._over and self.msgid is not None:
            self._client._cancel_stream(self)
        self._over = True

    async def __aenter__(self):
        return await self._start()

    async def __aexit__(self, *exc):
        await self.aclose()


def _where(address, unix_path):
    return "unix:" + unix_path if unix_path else "%s:%d" % address


class Client:
    def __init__(self, host="127.0.0.1", port=7400, timeout=60.0, reconnect=10.0,
                 resend_idempotent=False, ssl=None, token=None, unix_path=None,
                 server_hostname=None):
        self._address = (host, port)
        self._ssl = ssl
        self._token = token
        self._unix_path = unix_path
        self._server_hostname = server_hostname or host
        self._timeout = timeout
        self._reconnect = reconnect
        self._resend = resend_idempotent
        self._closed = False
        self._sock = None
        self._ids = itertools.count(1)
        self._done = {}
        # msgid -> (method, params) of the requests sent on this connection
        # and not answered yet: what a drop fails (or resends).
        self._sent = {}
        # msgid -> chunks received and not yet taken, of the streams in flight.
        self._chunks = {}
        self._connect()

    def _connect(self):
        if self._unix_path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(self._timeout)
                sock.connect(self._unix_path)
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_connection(self._address, timeout=self._timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                try:
                    sock = self._ssl.wrap_socket(sock, server_hostname=self._server_hostname)
                except OSError:
                    sock.close()
                    raise
        self._sock = sock
        self._unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        # Reused for every request and read: a large message is packed into
        # and received through memory touched before, not fresh pages that
        # fault in one by one (what a new bytes object of 16 MiB costs).
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=False)
        self._inbox = bytearray(1 << 20)
        if self._token is not None:
            # First on every connection; a wrong token raises RemoteError
            # ``unauthenticated`` (and the node closes the connection).
            try:
                self.receive(self.send("auth", [self._token]))
            except RemoteError:
                self._sock.close()
                self._sock = None
                raise

    def _ensure_connected(self):
        if self._sock is not None:
            return
        if self._closed or self._reconnect <= 0:
            raise ConnectionError("the connection to the node is closed")
        last = None
        for wait in _delays(self._reconnect):
            time.sleep(wait)
            try:
                self._connect()
                return
            except OSError as e:
                last = e
        raise ConnectionError("cannot reconnect to %s within %s s: %s"
                              % (_where(self._address, self._unix_path), self._reconnect, last))

    def _drop(self, why):
        """The connection is over: what was in flight on it fails."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        lost, self._sent = self._sent, {}
        for msgid, request in lost.items():
            self._done[msgid] = (ConnectionError(why), request)

    def close(self):
        self._closed = True
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- raw protocol -------------------------------------------------------------

    def send(self, method, params):
        """Sends a request without waiting; returns its msgid."""
        self._ensure_connected()
        params = list(params)
        msgid = next(self._ids) & 0xFFFFFFFF
        try:
            self._packer.pack([0, msgid, method, params])
            with self._packer.getbuffer() as frame:
                self._sock.sendall(frame)
        except OSError as e:
            self._sent[msgid] = (method, params)
            self._drop("the connection dropped while sending: %s" % e)
            return msgid
        finally:
            # Also after a value that cannot be packed (that error is the
            # caller's): the next request starts from an empty buffer.
            self._packer.reset()
        self._sent[msgid] = (method, params)
        return msgid

    def _read_some(self):
        """One read from the socket: its responses and chunks filed."""
        try:
            n = self._sock.recv_into(self._inbox)
        except socket.timeout:
            raise
        except OSError as e:
            self._drop("the connection dropped: %s" % e)
            return
        if not n:
            self._drop("the node closed the connection")
            return
        with memoryview(self._inbox) as view:
            self._unpacker.feed(view[:n])
        for kind, i, x, result in _messages(self._unpacker):
            if kind == "chunk":
                if i in self._chunks:
                    self._chunks[i].append(x)
                continue
            self._sent.pop(i, None)
            self._done[i] = (x, result)

    def receive(self, msgid, _resent=False):
        """Waits for the response to `msgid`; returns its result or raises."""
        while msgid not in self._done:
            if self._sock is None:
                raise ConnectionError("request %d is not in flight" % msgid)
            self._read_some()
        error, result = self._done.pop(msgid)
        if isinstance(error, ConnectionError):
            method, params = result
            if self._resend and not _resent and _is_idempotent_execute(method, params):
                return self.receive(self.send(method, params), _resent=True)
            raise error
        if error is not None:
            raise RemoteError(error)
        return result

    def call(self, method, *params):
        return self.receive(self.send(method, params))

    def cancel(self, msgid):
        """Cancels request `msgid` (sent with send()) on the node: answered
        `cancelled` if it was still queued or running; nothing if it was
        answered already."""
        if self._sock is not None and msgid in self._sent:
            self._sock.sendall(msgpack.packb([2, "cancel", [msgid]], use_bin_type=True))

    def pipeline(self, requests):
        """Sends all (method, params) pairs, then collects their outcomes in
        order: a result, or the RemoteError (or ConnectionError) instance."""
        ids = [self.send(m, p) for m, p in requests]
        out = []
        for i in ids:
            try:
                out.append(self.receive(i))
            except (RemoteError, ConnectionError) as e:
                out.append(e)
        return out

    # -- methods --------------------------------------------------------------------

    def ping(self):
        return self.call("ping")

    def execute(self, command, args=None, session=None, timeout_ms=None, idempotent=None):
        return self.call("execute", *_execute_params(command, args, session, timeout_ms,
                                                     idempotent))

    def stream(self, command, args=None, session=None, timeout_ms=None):
        """Runs a streaming command (a generator handler): a Stream of its
        chunks as they are produced, then its return value (``result``)::

            with c.stream("llm.tokens", {"prompt": p}) as s:
                for token in s:
                    print(token, end="")
            s.result
        """
        msgid = self.send("execute", _execute_params(command, args, session, timeout_ms, None,
                                                     stream=True))
        self._chunks[msgid] = []
        return Stream(self, msgid)

    def end_session(self, session):
        return self.call("session.end", session)

    def stats(self):
        return self.call("stats")


class AsyncClient:
    """An asyncio client: one connection, any number of requests in flight."""

    def __init__(self, reader, writer, timeout, address=None, reconnect=10.0,
                 resend_idempotent=False, options=None):
        self._timeout = timeout
        self._address = address
        # How to connect again: ssl, token, unix_path, server_hostname.
        self._options = options or {}
        self._reconnect = reconnect if address is not None else 0
        self._resend = resend_idempotent
        self._ids = itertools.count(1)
        self._closed = None  # set by close(): for good
        self._connecting = asyncio.Lock()
        self._attach(reader, writer)

    def _attach(self, reader, writer):
        self._reader = reader
        self._writer = writer
        self._unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self._pending = {}
        self._streams = {}  # msgid -> the queue of its chunks not yet taken
        self._broken = None  # why this connection ended
        self._reading = asyncio.get_running_loop().create_task(self._read())

    @staticmethod
    async def _open(address, options):
        if options.get("unix_path"):
            return await asyncio.open_unix_connection(options["unix_path"])
        ctx = options.get("ssl")
        reader, writer = await asyncio.open_connection(
            *address, ssl=ctx,
            server_hostname=(options.get("server_hostname") or address[0]) if ctx else None)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    async def _authenticate(self):
        """First on every connection when there is a token; a wrong one
        raises RemoteError ``unauthenticated``."""
        if self._options.get("token") is not None:
            await self.call("auth", self._options["token"])

    @classmethod
    async def connect(cls, host="127.0.0.1", port=7400, timeout=60.0, reconnect=10.0,
                      resend_idempotent=False, ssl=None, token=None, unix_path=None,
                      server_hostname=None):
        options = {"ssl": ssl, "token": token, "unix_path": unix_path,
                   "server_hostname": server_hostname}
        reader, writer = await cls._open((host, port), options)
        client = cls(reader, writer, timeout, (host, port), reconnect, resend_idempotent,
                     options)
        try:
            await client._authenticate()
        except BaseException:
            await client.close()
            raise
        return client

    async def _ensure_connected(self):
        if self._closed is not None:
            raise self._closed
        if self._broken is None:
            return
        if self._reconnect <= 0:
            raise self._broken
        async with self._connecting:  # concurrent callers reconnect once
            if self._broken is None:
                return
            last = self._broken
            for wait in _delays(self._reconnect):
                await asyncio.sleep(wait)
                try:
                    self._writer.close()
                    self._attach(*await self._open(self._address, self._options))
                except OSError as e:
                    last = e
                    continue
                # No await between _attach and auth's send: auth is the
                # first message on the new connection, before any caller's.
                try:
                    await self._authenticate()
                    return
                except OSError as e:
                    last = e
            raise ConnectionError("cannot reconnect to %s within %s s: %s"
                                  % (_where(self._address, self._options.get("unix_path")),
                                     self._reconnect, last))

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
                for kind, i, x, result in _messages(self._unpacker):
                    if kind == "chunk":
                        queue = self._streams.get(i)
                        if queue is not None:
                            await queue.put(x)  # full: reading waits for the consumer
                        continue
                    future = self._pending.pop(i, None)
                    if future is not None and not future.done():
                        future.set_result((x, result))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the connection is over: nothing more will come on it
            if self._broken is None:
                self._broken = e if isinstance(e, ConnectionError) else ConnectionError(str(e))
            self._fail_pending(self._broken)

    def _fail_pending(self, error):
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    # -- raw protocol -------------------------------------------------------------

    async def call(self, method, *params, timeout=..., _resent=False):
        """Sends one request and waits for its result (or raises)."""
        await self._ensure_connected()
        msgid = next(self._ids) & 0xFFFFFFFF
        future = asyncio.get_running_loop().create_future()
        pending, writer = self._pending, self._writer
        pending[msgid] = future
        try:
            writer.write(msgpack.packb([0, msgid, method, list(params)], use_bin_type=True))
            await writer.drain()
            error, result = await asyncio.wait_for(
                future, self._timeout if timeout is ... else timeout)
        except (asyncio.CancelledError, asyncio.TimeoutError):
            # Nobody waits for it any more: the node need not run it.
            if self._broken is None and method == "execute" and not writer.is_closing():
                writer.write(msgpack.packb([2, "cancel", [msgid]], use_bin_type=True))
            raise
        except (ConnectionError, OSError) as e:
            if self._resend and not _resent and _is_idempotent_execute(method, list(params)):
                return await self.call(method, *params, timeout=timeout, _resent=True)
            raise e if isinstance(e, ConnectionError) else ConnectionError(str(e))
        finally:
            pending.pop(msgid, None)  # a late answer is dropped
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

    def stream(self, command, args=None, session=None, timeout_ms=None, timeout=...):
        """Runs a streaming command (a generator handler): an AsyncStream of
        its chunks as they are produced, then its return value
        (``result``); ``timeout`` (seconds) bounds each wait for the next
        chunk or the end::

            async for token in c.stream("llm.tokens", {"prompt": p}):
                print(token, end="")
            async with c.stream("llm.tokens", {"prompt": p}) as s:
                async for token in s:
                    ...
            s.result
        """
        params = _execute_params(command, args, session, timeout_ms, None, stream=True)
        return AsyncStream(self, params, self._timeout if timeout is ... else timeout)

    async def _open_stream(self, params):
        """Sends a stream's request; its msgid, response future and chunk queue."""
        await self._ensure_connected()
        msgid = next(self._ids) & 0xFFFFFFFF
        future = asyncio.get_running_loop().create_future()
        queue = asyncio.Queue(64)
        self._pending[msgid] = future
        self._streams[msgid] = queue
        try:
            self._writer.write(msgpack.packb([0, msgid, "execute", params], use_bin_type=True))
            await self._writer.drain()
        except (ConnectionError, OSError) as e:
            self._forget(msgid)
            raise e if isinstance(e, ConnectionError) else ConnectionError(str(e))
        return msgid, future, queue

    def _forget(self, msgid):
        self._pending.pop(msgid, None)
        self._streams.pop(msgid, None)

    def _cancel_stream(self, stream):
        """The consumer is done with `stream` before its end: the node need
        not run it; what else comes for it is dropped."""
        stream._over = True
        self._forget(stream.msgid)
        while not stream._queue.empty():  # a reader waiting to put goes on
            stream._queue.get_nowait()
        if self._broken is None and not self._writer.is_closing():
            self._writer.write(msgpack.packb([2, "cancel", [stream.msgid]], use_bin_type=True))

    async def end_session(self, session):
        return await self.call("session.end", session)

    async def stats(self):
        return await self.call("stats")
