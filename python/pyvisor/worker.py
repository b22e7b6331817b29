"""The pyvisor worker loop: serves requests from a pyvisor node over pipes.

Started by the node as ``python3 -c "...pyvisor.worker.main()" --in-fd 3
--out-fd 4 --control-fd 5 [--module NAME ...]`` (``python3 -m pyvisor.worker`` works too);
the protocol is specified in docs/protocol.md. The
protocol runs on its own file descriptors, so ``print()`` and logging in user
code go to stdout/stderr, which the node logs, tagged with this worker.

Exit codes: 0 after EOF on the request pipe; 3 when msgpack is missing;
4 when a user module fails to import or an on_start hook raises (reported
in the hello frame first);
5 when the node sent a frame whose request id cannot be read. A request whose
*args* Python cannot decode (invalid UTF-8 in a str, a map keyed by a map, a
malformed timestamp) is answered ``bad_request`` and the worker keeps serving:
the frame is well-formed, only the caller's value is not.
"""

import os
import sys

EXIT_NO_MSGPACK = 3
EXIT_IMPORT_FAILED = 4
EXIT_PROTOCOL = 5

try:
    import msgpack
except ImportError:
    sys.stderr.write(
        "pyvisor: the interpreter %s has no 'msgpack' module; install it "
        "(on Debian: apt-get install python3-msgpack, then use /usr/bin/python3) "
        "or set pool.python to an interpreter that has it\n" % sys.executable
    )
    sys.stderr.flush()
    os._exit(EXIT_NO_MSGPACK)

import importlib
import struct
import types

import pyvisor
import pyvisor.builtins  # noqa: F401  (registers the built-in commands)

_HEADER = struct.Struct(">I")


def _safe_str(obj):
    """str(obj), or a description when its __str__ itself raises."""
    try:
        return str(obj)
    except BaseException as exc:  # noqa: BLE001  a user's __str__ may do anything
        try:
            return "<%s: str() failed with %s>" % (type(obj).__name__, type(exc).__name__)
        except BaseException:  # noqa: BLE001
            return "<unprintable>"


def _error_map(exc, code=None):
    import traceback  # only on errors: keeps the worker's start-up short

    try:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except BaseException:  # noqa: BLE001  formatting calls the exception's __str__
        tb = "".join(traceback.format_tb(exc.__traceback__))
    # Only pyvisor's own exceptions choose their code (SystemExit.code, for
    # one, is an exit status; OSError and HTTP errors have codes of their own).
    if code is None and isinstance(exc, (pyvisor.Error, pyvisor.Interrupted)):
        code = getattr(exc, "code", None)
    if not isinstance(code, str):
        code = None
    return {
        "code": code or "python_error",
        "type": type(exc).__name__,
        "message": _safe_str(exc),
        "traceback": tb,
    }


def _concurrency():
    """pool.worker-concurrency, as the node passes it ($PYVISOR_CONCURRENCY)."""
    try:
        return max(1, int(os.environ.get("PYVISOR_CONCURRENCY", "1")))
    except ValueError:
        return 1


def interrupted(rid, reason):
    return pyvisor.Interrupted(
        "request %d was interrupted (%s)" % (rid, "timed out" if reason == "timeout"
                                             else "cancelled"), reason)


def _window_of(req, ctl):
    """A request's stream window, [chunks, bytes] (both positive), or None:
    no stream asked for, or no control socket to take credit from."""
    window = req.get("stream")
    if ctl is not None and isinstance(window, list) and len(window) == 2 \
            and all(isinstance(n, int) and n > 0 for n in window):
        return window
    return None


class StreamWindow:
    """How far a stream may run ahead of its consumer (docs/protocol.md,
    "Streams"): at most `chunks` chunks and `size` bytes sent and not taken,
    one chunk always. The sequential worker and the event loop wait on it
    each in their own way."""

    def __init__(self, window):
        from collections import deque

        self.chunks, self.size = window
        self.pending = deque()  # sizes of the chunks sent and not taken, oldest first
        self.held = 0
        self.sent = 0

    def has_room(self, taken):
        """Whether another chunk may go, the consumer having taken `taken`."""
        while self.sent - len(self.pending) < taken and self.pending:
            self.held -= self.pending.popleft()
        return not self.pending or (len(self.pending) < self.chunks and self.held < self.size)

    def sent_one(self, size):
        self.sent += 1
        self.pending.append(size)
        self.held += size


def _raw_bytes(value):
    """`value` as a flat view of its bytes when it is bytes-like, else None
    (str and the other msgpack types are packed as such)."""
    t = type(value)
    if t is bytes or t is bytearray or t is memoryview:
        view = memoryview(value)
    elif t in _PACKED_AS_SUCH:
        return None
    else:
        try:
            view = memoryview(value)
        except TypeError:
            return None
    if not view.c_contiguous:
        return None
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


_PACKED_AS_SUCH = (str, int, float, bool, type(None), list, dict, tuple)


def _bin_header(n):
    if n < 256:
        return bytes((0xc4, n))
    if n < 65536:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def _is_async(obj):
    return isinstance(obj, (types.CoroutineType, types.AsyncGeneratorType))


def _bad_request(rid, message):
    return {
        "id": rid,
        "ok": False,
        "error": {"code": "bad_request", "type": "BadRequest", "message": message,
                  "traceback": ""},
    }


def _salvage(body):
    """The request fields of a frame Python cannot decode: walks the
    top-level map with a streaming unpacker, skipping the args value and
    reading strings as bytes (a caller's command name may be invalid UTF-8)."""
    up = msgpack.Unpacker(raw=True, strict_map_key=False)
    up.feed(body)
    req = {}
    for _ in range(up.read_map_header()):
        key = up.unpack()
        if key == b"args":
            up.skip()
            continue
        value = up.unpack()
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        req[key.decode("utf-8", "replace") if isinstance(key, bytes) else key] = value
    return req


class Worker:
    """One worker process: the session table and the two protocol pipes."""

    def __init__(self, in_fd, out_fd, control_fd=None):
        self.inp = os.fdopen(in_fd, "rb", buffering=1 << 16)
        self.out_fd = out_fd
        self.sessions = {}
        self.served = 0
        self._packer = msgpack.Packer(use_bin_type=True)
        # The interrupt and revoke protocol (docs/protocol.md, "Control"):
        # `started` is the id of the latest request begun (ids grow in pipe
        # order, so a larger id has not started and can still be revoked);
        # `running` is true only while its handler may be interrupted.
        self.ctl = control_fd
        self.started = 0
        self.running = False
        self.interrupted_id = None
        self.revoked = set()
        # The request whose chunks go out now (docs/protocol.md, "Streams")
        # and how many of them its consumer has taken.
        self.streaming = None
        self.taken = 0
        # The event loop (pyvisor.aio), made when the first async handler
        # runs, or at start with pool.worker-concurrency > 1.
        self.aio = None
        self.concurrency = _concurrency()
        # The shared rings (pyvisor.shared), given with the control socket:
        # large values go through them instead of the pipes.
        self.rings = None
        if control_fd is not None:
            from pyvisor import shared

            self.rings = shared.open_rings()

    def enable_control(self):
        """Interrupts (SIGUSR1 after a control message) and stack dumps
        (SIGUSR2, faulthandler, onto the control socket). False without a
        control socket."""
        if self.ctl is None:
            return False
        import faulthandler
        import signal

        os.set_blocking(self.ctl, False)
        signal.signal(signal.SIGUSR1, self._on_control)
        faulthandler.register(signal.SIGUSR2, file=self.ctl, all_threads=True, chain=False)
        return True

    def _on_control(self, signum, frame):
        """Runs in the main thread between bytecodes, so `started` and
        `running` cannot change under it: a revoke takes only requests not
        begun, an interrupt hits only the request it names, and only while
        its handler runs (never the next request, never the serve loop).
        With an event loop serving several requests (pyvisor.aio), only the
        interrupt of the sync handler running now is raised here; the rest
        of the messages are handled by the loop, between its callbacks."""
        if self.aio is not None and self.aio.concurrent:
            self._interrupt_if_due(self.aio.take_control(self._read_packets()))
            return
        self._interrupt_if_due(self._handle_control(self._read_packets()))

    def _read_packets(self):
        """Every control message waiting on the socket, decoded."""
        msgs = []
        while True:
            try:
                data = os.read(self.ctl, 1 << 16)
            except InterruptedError:
                continue
            except OSError:  # BlockingIOError: nothing more
                break
            if not data:
                break
            try:
                msg = msgpack.unpackb(data, raw=False)
            except Exception:  # noqa: BLE001  not ours to answer
                continue
            if isinstance(msg, dict):
                msgs.append(msg)
        return msgs

    def _read_control(self):
        return self._handle_control(self._read_packets())

    def _revocable(self, rid):
        """Whether request `rid` has not begun (and so may be revoked)."""
        if self.aio is not None and self.aio.concurrent:
            return self.aio.revocable(rid)
        return rid > self.started

    def _handle_control(self, msgs):
        """Answers revokes, notes what streams' consumers have taken, and
        returns the interrupts asked for: {id: reason}."""
        interrupts = {}
        for msg in msgs:
            ids = msg.get("revoke")
            if isinstance(ids, list):
                taken = [i for i in ids if isinstance(i, int) and self._revocable(i)]
                try:
                    os.write(self.ctl, self._packer.pack({"revoked": taken}))
                except OSError:
                    taken = []  # the node did not hear it: they still run
                self.revoked.update(taken)
                if self.aio is not None:
                    self.aio.revoked(taken)
            t = msg.get("interrupt")
            reason = "timeout" if msg.get("reason") == "timeout" else "cancelled"
            for i in (t if isinstance(t, list) else [t]):
                if isinstance(i, int):
                    interrupts[i] = reason
            credit = msg.get("credit")
            n = msg.get("taken")
            if isinstance(credit, int) and isinstance(n, int):
                if credit == self.streaming and n > self.taken:
                    self.taken = n
                if self.aio is not None:
                    self.aio.credit(credit, n)
        return interrupts

    def _interrupt_if_due(self, interrupts):
        """Interrupts what `interrupts` ({id: reason}) names and runs: an
        async request is cancelled as a task; the sync handler running now
        gets pyvisor.Interrupted raised (once per request)."""
        if self.aio is not None:
            self.aio.interrupt(interrupts)
        target = self.started
        if target in interrupts and self.running and self.interrupted_id != target:
            self.interrupted_id = target
            raise interrupted(target, interrupts[target])

    def _stream(self, rid, gen, window):
        """Sends each value `gen` yields as a chunk of request `rid`, while
        the consumer has taken enough of them (window: at most `chunks`
        chunks and `size` bytes sent and not taken, one chunk always); waits
        for the node's credit otherwise, interruptible. Returns the
        generator's return value. However it ends (an interrupt, an
        exception, a value that cannot be packed), the generator is closed:
        GeneratorExit at its yield, so that its `finally` runs."""
        import select

        room = StreamWindow(window)
        self.streaming, self.taken = rid, 0
        try:
            while True:
                try:
                    value = next(gen)
                except StopIteration as stop:
                    return stop.value
                while not room.has_room(self.taken):
                    # The node writes credit without a signal; a SIGUSR1
                    # handler that took it first leaves it noted, seen at
                    # the next turn.
                    if select.select([self.ctl], [], [], 0.02)[0]:
                        self._interrupt_if_due(self._read_control())
                room.sent_one(self.send_value(rid, value, chunk=True))
        finally:
            self.streaming = None
            gen.close()

    def write_raw(self, data):
        view = memoryview(data)
        while view:
            n = os.write(self.out_fd, view)
            view = view[n:]

    def write_frame(self, body):
        """Writes one frame of `body`, its length before it."""
        self.write_raw(_HEADER.pack(len(body)) + body)

    def write_pieces(self, pieces):
        """Writes `pieces` (bytes-like) in order, as one piece would be."""
        views = [memoryview(p).cast("B") for p in pieces]
        while views:
            n = os.writev(self.out_fd, views)
            while views and n >= views[0].nbytes:
                n -= views[0].nbytes
                views.pop(0)
            if views and n:
                views[0] = views[0][n:]

    def send(self, obj):
        self.write_frame(self._packer.pack(obj))

    def send_value(self, rid, value, chunk=False):
        """Writes the reply of request `rid` whose result is `value` (with
        `chunk`: a chunk of its stream) and returns the value's packed size.
        A bytes-like value (bytes, bytearray, memoryview, anything
        C-contiguous with the buffer protocol, e.g. a numpy array) travels
        as msgpack bin without being copied into a msgpack buffer; a value
        of at least the shared threshold goes through the shared ring when
        it has room, copied there once. Raises before writing anything if
        `value` cannot be packed."""
        raw = _raw_bytes(value)
        if raw is None:
            pieces = (self._packer.pack(value),)
            size = len(pieces[0])
        else:
            pieces = (_bin_header(raw.nbytes), raw)
            size = len(pieces[0]) + raw.nbytes
        rings = self.rings
        if rings is not None and size >= rings[2]:
            out = rings[1]
            pos = out.reserve(size)
            if pos is not None:
                dst = out.at(pos, size)
                at = len(pieces[0])
                dst[:at] = pieces[0]
                if len(pieces) > 1:
                    dst[at:] = pieces[1]
                frame = {"id": rid, "chunk": None} if chunk else {"id": rid, "ok": True,
                                                                  "result": None}
                frame["shm"] = [pos, size]
                self.send(frame)
                return size
        # {id: rid, chunk: value} or {id: rid, ok: true, result: value},
        # the value's bytes after it.
        rid = self._packer.pack(rid)
        prefix = (b"\x82\xa2id" + rid + b"\xa5chunk") if chunk else (
            b"\x83\xa2id" + rid + b"\xa2ok\xc3\xa6result")
        if size < (1 << 16):
            # Small: one buffer, one write (the common case, kept cheap).
            body = prefix + b"".join(pieces)
            self.write_raw(_HEADER.pack(len(body)) + body)
        else:
            self.write_pieces((_HEADER.pack(len(prefix) + size) + prefix,) + pieces)
        return size

    def read_frame(self):
        """The next request, None at EOF; a request whose args cannot be
        decoded comes back with an "undecodable" entry instead of "args".
        Raises only when not even the request's id can be read."""
        header = self.inp.read(4)
        if len(header) < 4:
            return None
        (size,) = _HEADER.unpack(header)
        body = self.inp.read(size)
        if len(body) < size:
            return None
        return self.decode_frame(body)

    def decode_frame(self, body):
        """A request frame's body as read_frame returns it; args in the
        shared ring are decoded from there (and that part of it freed)."""
        try:
            req = msgpack.unpackb(body, raw=False, strict_map_key=False)
        except Exception as exc:  # noqa: BLE001
            req = _salvage(body)
            if not isinstance(req.get("id"), int):
                raise
            req["undecodable"] = "the request cannot be decoded by Python: %s: %s" % (
                type(exc).__name__, _safe_str(exc))
            return req
        ref = req.pop("shm", None) if isinstance(req, dict) else None
        if ref is not None:
            ring = self.rings[0]
            pos, length = ref
            view = ring.view(pos, length)
            try:
                req["args"] = msgpack.unpackb(view, raw=False, strict_map_key=False)
            except Exception as exc:  # noqa: BLE001
                req["undecodable"] = "the request cannot be decoded by Python: %s: %s" % (
                    type(exc).__name__, _safe_str(exc))
            finally:
                view.release()
                ring.release(pos, length)
        return req

    def handle(self, req):
        """Runs request `req` to its reply (one at a time: the sequential
        worker). An async handler runs on the worker's event loop."""
        prepared = self.begin(req)
        if isinstance(prepared, dict):
            return prepared
        rid, ctx, obj = prepared
        try:
            return self.event_loop().run_one(rid, obj, _window_of(req, self.ctl))
        finally:
            self.served += 1

    def event_loop(self):
        if self.aio is None:
            from pyvisor import aio  # asyncio only for those who use it

            self.aio = aio.EventLoop(self, concurrent=False)
        return self.aio

    def begin(self, req):
        """Starts request `req`: runs a sync handler (a sync generator too,
        unless the worker serves from its event loop) to its reply, a dict;
        for what the event loop runs (a coroutine, an async generator, and
        there a sync generator) returns (id, ctx, the object)."""
        rid = req.get("id")
        name = req.get("cmd")
        session_id = req.get("session")
        if "undecodable" in req:
            return _bad_request(rid, req["undecodable"])
        fn = pyvisor.lookup(name)
        if fn is None:
            return {
                "id": rid,
                "ok": False,
                "error": {
                    "code": "unknown_command",
                    "type": "UnknownCommand",
                    "message": "no command %r in this worker (known: %s)"
                    % (name, ", ".join(pyvisor.commands())),
                    "traceback": "",
                },
            }
        session = None
        if session_id is not None:
            session = self.sessions.get(session_id)
            if session is None:
                session = self.sessions[session_id] = {}
        deadline = req.get("deadline")
        # A number from the node (docs/protocol.md); not checked per request.
        ctx = pyvisor.Context(session_id, session, self, deadline, rid)
        self.started = rid
        try:
            try:
                self.running = True
                result = fn(req.get("args"), ctx)
                if _is_async(result):
                    return rid, ctx, result
                if isinstance(result, types.GeneratorType):
                    if self.aio is not None and self.aio.concurrent:
                        # Paced on the loop, so that its wait for credit
                        # holds up no other request.
                        return rid, ctx, result
                    # A streaming handler: its chunks go out as it yields
                    # when the caller asked for a stream (and the node can
                    # pace it), else they are its result, as one list.
                    window = _window_of(req, self.ctl)
                    if window is not None:
                        result = self._stream(rid, result, window)
                    else:
                        gen = result
                        try:
                            result = list(gen)
                        finally:
                            gen.close()
            finally:
                # Cleared first: an interrupt can no longer be raised from
                # here on (see _on_control).
                self.running = False
        except BaseException as exc:  # noqa: BLE001
            # The caller gets it and the worker keeps serving, whatever the
            # handler raised: sys.exit() (SystemExit), KeyboardInterrupt,
            # pyvisor.Interrupted, an exception whose __str__ raises too.
            self.served += 1
            return {"id": rid, "ok": False, "error": _error_map(exc)}
        self.served += 1
        return {"id": rid, "ok": True, "result": result}

    def reply(self, reply):
        """Writes `reply`; one whose result cannot be packed (or whose
        packing raises) is answered with that error instead."""
        try:
            if reply.get("ok") is True and "result" in reply and len(reply) == 3:
                self.send_value(reply["id"], reply["result"])
            else:
                self.send(reply)
        except BaseException as exc:  # noqa: BLE001
            self.send({"id": reply["id"], "ok": False, "error": _error_map(exc)})

    def serve(self):
        revoked = self.revoked  # the same set the signal handler adds to
        while True:
            try:
                req = self.read_frame()
            except Exception as exc:
                sys.stderr.write("pyvisor: undecodable request frame: %s\n" % exc)
                return EXIT_PROTOCOL
            if req is None:
                return 0
            rid = req.get("id")
            # Begun from here: a revoke can no longer take it. Stored before
            # the check, so a revoke that runs in between is seen by it.
            self.started = rid
            if revoked and rid in revoked:
                revoked.discard(rid)  # revoked: never run, never answered
                continue
            try:
                reply = self.handle(req)
            except BaseException as exc:  # noqa: BLE001  e.g. a session id that is a list
                reply = {"id": req.get("id"), "ok": False, "error": _error_map(exc)}
            self.reply(reply)


def _parse_args(argv):
    """--in-fd N --out-fd N [--module NAME ...]: the node's fixed command
    line. Parsed by hand because importing argparse costs more than the rest
    of the worker's start-up."""
    opts = {"in_fd": 3, "out_fd": 4, "control_fd": None, "module": []}
    it = iter(argv)
    for arg in it:
        value = next(it, None)
        if value is None:
            raise SystemExit("pyvisor.worker: %s needs a value" % arg)
        if arg == "--in-fd":
            opts["in_fd"] = int(value)
        elif arg == "--out-fd":
            opts["out_fd"] = int(value)
        elif arg == "--control-fd":
            opts["control_fd"] = int(value)
        elif arg == "--module":
            opts["module"].append(value)
        else:
            raise SystemExit("pyvisor.worker: unknown argument %s" % arg)
    return opts


# A line on stderr that starts with this mark is a `logging` record:
# MARK levelno US logger-name US text (one line per line of the record; the
# node logs it at that level, tagged with the worker and pid).
LOG_MARK = "\x1fpyvisor-log\x1f"


def _route_logging(logging):
    """Sends `logging` records to the node's log with their level and logger
    name, unless the user configured logging already (the root logger has
    handlers). The root level follows the node's ($PYVISOR_LOG_LEVEL)."""
    root = logging.getLogger()
    if root.handlers:
        return

    class NodeHandler(logging.Handler):
        def emit(self, record):
            try:
                text = self.format(record)
                out = "".join("%s%d\x1f%s\x1f%s\n" % (LOG_MARK, record.levelno, record.name, line)
                              for line in (text.splitlines() or [""]))
                sys.stderr.write(out)
                sys.stderr.flush()
            except Exception:  # noqa: BLE001
                self.handleError(record)

    handler = NodeHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    try:
        root.setLevel(int(os.environ.get("PYVISOR_LOG_LEVEL", "20")))
    except ValueError:
        root.setLevel(20)


class _LoggingHook:
    """Routes logging to the node the moment something imports it: importing
    `logging` up front would cost every worker's start-up about 10 ms, and
    most user modules never log."""

    def find_spec(self, name, path=None, target=None):
        if name != "logging":
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(name)
        loader = getattr(spec, "loader", None)
        if spec is None or loader is None or isinstance(loader, type):
            return spec
        run = loader.exec_module

        def exec_module(module):
            run(module)
            _route_logging(module)

        loader.exec_module = exec_module
        return spec


def route_logging():
    """Makes `logging` records reach the node's log (see _route_logging),
    now if logging is imported already, else when it is."""
    if "logging" in sys.modules:
        _route_logging(sys.modules["logging"])
    elif not any(isinstance(f, _LoggingHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _LoggingHook())


def guard_process_group():
    """Forks a guard that kills this worker's process group as soon as the
    worker is gone, however it ends: processes that user code starts
    (os.fork, subprocess, multiprocessing) stay in the group and must not
    outlive the worker. The node kills the group too when it reaps the
    worker; the guard covers the node's own SIGKILL, after which the worker
    dies of its parent-death signal and nobody else is left to do it (that
    signal is not inherited by the worker's children). Forked before any
    user module is imported, while the worker has a single thread."""
    # Only a worker that leads its own process group (as the node starts it)
    # has a group to guard; one started by hand shares its shell's.
    if not hasattr(os, "pidfd_open") or os.getpgrp() != os.getpid():
        return
    try:
        pidfd = os.pidfd_open(os.getpid())
    except OSError:
        return
    if os.fork() != 0:
        os.close(pidfd)
        return
    try:
        # Nothing of the worker is kept open here: not the protocol pipes
        # (fds 3, 4), not its stdout/stderr (the node's log pipes).
        os.closerange(0, pidfd)
        os.closerange(pidfd + 1, 1 << 16)
        import select

        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        while not poller.poll():
            pass
    finally:
        os.killpg(os.getpgrp(), 9)  # SIGKILL, this guard included
        os._exit(0)


def send_start_failure(worker, exc, message):
    """The hello that tells the node why this worker cannot start, with the
    traceback of `exc`."""
    err = _error_map(exc)
    err["message"] = message
    worker.send({"hello": False, "pid": os.getpid(), "error": err})


def import_user_module(worker, name):
    """Imports one user module; False (after telling the node) if it fails."""
    try:
        importlib.import_module(name)
        return True
    except BaseException as exc:  # noqa: BLE001  SystemExit at import is a failure too
        send_start_failure(worker, exc, "importing user module %r failed: %s: %s" % (
            name, type(exc).__name__, _safe_str(exc)))
        return False


def serve_imported(worker):
    """What every worker does once its modules are imported (spawned, or
    forked from a template that imported them): the on_start hooks, the
    hello, then requests until EOF. Returns the exit code."""
    limit = os.environ.get("PYVISOR_MAX_MEMORY")
    if limit:
        # pool.max-memory: a hard limit of this process's data; an
        # allocation beyond it raises MemoryError in the handler.
        import resource

        try:
            resource.setrlimit(resource.RLIMIT_DATA, (int(limit), int(limit)))
        except (ValueError, OSError) as exc:
            send_start_failure(worker, exc, "pool.max-memory=%s cannot be applied: %s" % (
                limit, _safe_str(exc)))
            return EXIT_IMPORT_FAILED
    try:
        pyvisor.run_on_start()
    except BaseException as exc:  # noqa: BLE001
        send_start_failure(worker, exc, "an on_start hook failed: %s: %s" % (
            type(exc).__name__, _safe_str(exc)))
        return EXIT_IMPORT_FAILED
    hello = {
        "hello": True,
        "pid": os.getpid(),
        "python": sys.version.split()[0],
        "commands": pyvisor.commands(),
    }
    if worker.enable_control():
        hello["control"] = True
    if worker.rings is not None:
        hello["shm"] = True
    if worker.concurrency > 1:
        # Several requests at once, on the event loop (pyvisor.aio); the
        # node then learns what began from "started" frames.
        from pyvisor import aio

        worker.aio = aio.EventLoop(worker, concurrent=True)
        hello["concurrency"] = worker.concurrency
        worker.send(hello)
        return worker.aio.serve()
    worker.send(hello)
    return worker.serve()


def main(argv=None):
    opts = _parse_args(sys.argv[1:] if argv is None else argv)
    guard_process_group()
    route_logging()
    worker = Worker(opts["in_fd"], opts["out_fd"], opts["control_fd"])
    for name in opts["module"]:
        if not import_user_module(worker, name):
            return EXIT_IMPORT_FAILED
    return serve_imported(worker)


if __name__ == "__main__":
    sys.exit(main())
